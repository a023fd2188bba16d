"""Several markets in one collector: the environment form, the subscriptions file, and their errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from orderbook_collector.config import Subscription, load
from orderbook_core.errors import ConfigError
from orderbook_core.streams import Market
from support.procs import child_env


def exits_2_with(env: dict, setting: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load([], env)
    assert str(err.value).startswith(setting) and words in str(err.value)
    proc = subprocess.run([sys.executable, "-m", "orderbook_collector"], env=child_env(**env),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and setting in lines[0] and words in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("env, setting, words", [
    ({"ORDERBOOK_USDM_SYMBOLS": "btcusdt", "ORDERBOOK_USDM_STREAMS": "depth20@1000ms"},
     "ORDERBOOK_USDM_STREAMS", "'depth20@1000ms' is not a USD-M stream kind"),
    ({"ORDERBOOK_USDM_SYMBOLS": "btc_usdt"}, "ORDERBOOK_USDM_SYMBOLS", "not a Binance symbol"),
    ({"ORDERBOOK_USDM_SYMBOLS": "*,btcusdt"}, "ORDERBOOK_USDM_SYMBOLS", "give * alone"),
    ({"ORDERBOOK_USDM_WS_URL": "https://fstream.binance.com"}, "ORDERBOOK_USDM_WS_URL", "not a ws or wss URL"),
    ({"ORDERBOOK_USDM_REST_URL": "fapi.binance.com"}, "ORDERBOOK_USDM_REST_URL", "http or https"),
    ({"ORDERBOOK_STREAMS": "depth@500ms"}, "ORDERBOOK_STREAMS", "'depth@500ms' is not a spot stream kind"),
    ({"ORDERBOOK_SYMBOLS_REFRESH_SECONDS": "1"}, "ORDERBOOK_SYMBOLS_REFRESH_SECONDS", "out of range"),
])
def test_each_bad_market_setting_exits_2_with_one_sentence(tmp_path, env, setting, words):
    exits_2_with({"ORDERBOOK_BUFFER": str(tmp_path / "b.sqlite3"), **env}, setting, words)


def test_the_environment_form_records_usdm_beside_spot_with_its_defaults(tmp_path):
    s, _ = load([], {"ORDERBOOK_BUFFER": str(tmp_path / "b"), "ORDERBOOK_USDM_SYMBOLS": "btcusdt,ethusdt"})
    assert s.subscriptions() == [Subscription(Market.SPOT, ("btcusdt",), ("depth20@100ms",)),
                                 Subscription(Market.USDM, ("btcusdt", "ethusdt"), ("depth@100ms",))]
    assert (s.usdm_ws_url, s.usdm_rest_url) == ("wss://fstream.binance.com", "https://fapi.binance.com")
    assert [s.key for s in s.stream_specs()] == [
        "btcusdt@depth20@100ms", "usdm:btcusdt@depth@100ms", "usdm:ethusdt@depth@100ms"]
    s, _ = load([], {"ORDERBOOK_BUFFER": str(tmp_path / "b")})
    assert s.markets() == [Market.SPOT]  # empty ORDERBOOK_USDM_SYMBOLS: no futures


def test_connections_are_per_market_and_route_within_each_markets_limit(tmp_path):
    symbols = ",".join(f"sym{i:04d}" for i in range(250))
    s, _ = load([], {"ORDERBOOK_BUFFER": str(tmp_path / "b"), "ORDERBOOK_SYMBOLS": symbols,
                     "ORDERBOOK_STREAMS": "depth@100ms,trade,aggTrade,bookTicker", "ORDERBOOK_USDM_SYMBOLS": symbols,
                     "ORDERBOOK_USDM_STREAMS": "depth@100ms,aggTrade"})
    groups = [(g[0].market.value, g[0].route, len(g)) for g in s.connection_groups()]
    assert groups == [("spot", None, 1000), ("usdm", "public", 200), ("usdm", "public", 50),
                      ("usdm", "market", 200), ("usdm", "market", 50)]
    assert all({x.route for x in g} == {g[0].route} and {x.market for x in g} == {g[0].market}
               for g in s.connection_groups())


FILE = """
# spot books of two symbols, every spot trade, USD-M books of every perpetual
[[subscription]]
market = "spot"
symbols = ["btcusdt", "ethusdt"]
streams = ["depth20@100ms", "depth@100ms"]

[[subscription]]
market = "spot"
symbols = "*"
streams = ["trade"]

[[subscription]]
market = "usdm"
symbols = ["*"]
streams = ["depth@100ms", "bookTicker"]
"""


def test_the_subscriptions_file_holds_many_subscriptions(tmp_path):
    path = tmp_path / "subs.toml"
    path.write_text(FILE)
    s, _ = load(["--subscriptions", str(path)], {"ORDERBOOK_BUFFER": str(tmp_path / "b")})
    assert s.subscriptions() == [
        Subscription(Market.SPOT, ("btcusdt", "ethusdt"), ("depth20@100ms", "depth@100ms")),
        Subscription(Market.SPOT, ("*",), ("trade",)),
        Subscription(Market.USDM, ("*",), ("depth@100ms", "bookTicker")),
    ]
    assert len(s.stream_specs()) == 4  # the named ones; * streams come from exchangeInfo
    assert s.all_symbols_kinds(Market.SPOT) == ["trade"]
    assert s.all_symbols_kinds(Market.USDM) == ["depth@100ms", "bookTicker"]


@pytest.mark.parametrize("text, words", [
    ("[[subscription]\nmarket = 'spot'", "is not valid TOML"),
    ("title = 'x'", "unknown key 'title'"),
    ("", "has no [[subscription]] tables"),
    ("[[subscription]]\nmarket = 'coinf'\nsymbols = ['btcusd']\nstreams = ['depth']", "market 'coinf' is not spot, usdm or coinm"),
    ("[[subscription]]\nmarket = 'usdm'\nsymbols = ['btcusdt']\nstreams = ['depth20@1000ms']",
     "subscription 1: 'depth20@1000ms' is not a USD-M stream kind"),
    ("[[subscription]]\nmarket = 'spot'\nsymbols = ['btcusdt']", "subscription 1 has no 'streams'"),
    ("[[subscription]]\nmarket = 'spot'\nsymbols = 'btcusdt'\nstreams = ['trade']", "must be lists of strings"),
])
def test_a_bad_subscriptions_file_exits_2_naming_the_setting_the_file_and_the_table(tmp_path, text, words):
    path = tmp_path / "subs.toml"
    path.write_text(text)
    exits_2_with({"ORDERBOOK_BUFFER": str(tmp_path / "b"), "ORDERBOOK_SUBSCRIPTIONS": str(path)},
                 "ORDERBOOK_SUBSCRIPTIONS", words)


def test_the_file_and_the_environment_form_are_not_mixed(tmp_path):
    path = tmp_path / "subs.toml"
    path.write_text(FILE)
    exits_2_with({"ORDERBOOK_BUFFER": str(tmp_path / "b"), "ORDERBOOK_SUBSCRIPTIONS": str(path),
                  "ORDERBOOK_USDM_SYMBOLS": "btcusdt"}, "ORDERBOOK_SUBSCRIPTIONS", "set together with ORDERBOOK_USDM_SYMBOLS")
    exits_2_with({"ORDERBOOK_BUFFER": str(tmp_path / "b"), "ORDERBOOK_SUBSCRIPTIONS": str(tmp_path / "none.toml")},
                 "ORDERBOOK_SUBSCRIPTIONS", "cannot be read")
