"""COIN-M's settings and facts, sans I/O where it can be: its symbols, its streams and keys, its
subscriptions-file market, ``*`` from its exchangeInfo (``contractStatus``), and its route as one switch."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request

import pytest

from orderbook_collector.config import Settings, load, read_subscriptions
from orderbook_collector.feed.symbols import trading_symbols
from orderbook_core.errors import ConfigError
from orderbook_core.streams import (DEPTH_PATH, EXCHANGE_INFO, OPEN_INTEREST, ROUTES, USDM_ROUTE, Market,
                                    depth_weight, parse_stream_name)
from support.procs import child_env
from tools.simulator.exchange import Exchange

COINM = Market.COINM


def env(tmp_path, **kw) -> dict:
    return {"ORDERBOOK_BUFFER": str(tmp_path / "b.sqlite3"), **kw}


def test_the_coinm_settings_and_their_defaults(tmp_path):
    s = load([], env(tmp_path))[0]
    assert (s.coinm_symbols, s.coinm_ws_url, s.coinm_rest_url) == ([], "wss://dstream.binance.com",
                                                                  "https://dapi.binance.com")
    assert [sub.market for sub in s.subscriptions()] == [Market.SPOT]  # empty: no COIN-M
    s = load([], env(tmp_path, ORDERBOOK_COINM_SYMBOLS="BTCUSD_PERP,ethusd_261225",
                     ORDERBOOK_COINM_STREAMS="depth@100ms,trade"))[0]
    coinm = [x for x in s.stream_specs() if x.market is COINM]
    assert [x.key for x in coinm] == ["coinm:btcusd_perp@depth@100ms", "coinm:btcusd_perp@trade",
                                      "coinm:ethusd_261225@depth@100ms", "coinm:ethusd_261225@trade"]
    assert {x.route for x in coinm} == {None}  # unrouted while COINM_ROUTED is False
    assert s.ws_base(COINM) == "wss://dstream.binance.com" and s.rest_base(COINM) == "https://dapi.binance.com"


@pytest.mark.parametrize("name, value, message", [
    ("ORDERBOOK_COINM_SYMBOLS", "btcusdt", "ORDERBOOK_COINM_SYMBOLS: 'btcusdt' is not a COIN-M symbol; use a pair "
                                           "and a contract such as btcusd_perp or btcusd_261225."),
    ("ORDERBOOK_COINM_STREAMS", "depth@1000ms", "ORDERBOOK_COINM_STREAMS: 'depth@1000ms' is not a COIN-M stream kind"),
    ("ORDERBOOK_COINM_WS_URL", "https://dstream.binance.com", "ORDERBOOK_COINM_WS_URL: 'https://dstream.binance.com' "
                                                              "is not a ws or wss URL; use e.g. wss://dstream.binance.com."),
    ("ORDERBOOK_COINM_DEPTH_SNAPSHOT_LIMIT", "30", "ORDERBOOK_COINM_DEPTH_SNAPSHOT_LIMIT: COIN-M depth snapshots do not "
                                                   "take limit=30"),
])
def test_a_bad_coinm_setting_is_one_sentence_naming_it(tmp_path, name, value, message):
    with pytest.raises(ConfigError) as e:
        load([], env(tmp_path, **{"ORDERBOOK_COINM_SYMBOLS": "btcusd_perp", name: value}))
    assert str(e.value).startswith(message), str(e.value)


def test_coinm_streams_take_mark_prices_and_liquidations_and_refuse_the_pair_streams(tmp_path):
    """COIN-M's "Mark Price Stream" and "Liquidation Order Streams" per symbol are recorded;
    the per-pair streams (``<pair>@markPrice``, ``<pair>@indexPrice``) are not: one sentence, exit 2."""
    s = load([], env(tmp_path, ORDERBOOK_COINM_SYMBOLS="btcusd_perp",
                     ORDERBOOK_COINM_STREAMS="markPrice,markPrice@1s,forceOrder"))[0]
    coinm = [x for x in s.stream_specs() if x.market is COINM]
    assert [(x.key, x.dataset, x.cadence_us, x.route) for x in coinm] == [
        ("coinm:btcusd_perp@markPrice", "mark_price", 3_000_000, None),
        ("coinm:btcusd_perp@markPrice@1s", "mark_price", 1_000_000, None),
        ("coinm:btcusd_perp@forceOrder", "liquidation", 0, None)]
    bad = env(tmp_path, ORDERBOOK_COINM_SYMBOLS="btcusd_perp", ORDERBOOK_COINM_STREAMS="markPrice@1s,indexPrice")
    sentence = ("ORDERBOOK_COINM_STREAMS: 'indexPrice' is not a COIN-M stream kind; use depth5, depth10, depth20 or "
                "depth (each optionally @100ms or @500ms), trade, aggTrade, markPrice, markPrice@1s, forceOrder or "
                "bookTicker (for example depth@100ms).")
    with pytest.raises(ConfigError) as e:
        load([], bad)
    assert str(e.value) == sentence
    proc = subprocess.run([sys.executable, "-m", "orderbook_collector"], env=child_env(**bad), capture_output=True,
                          text=True, timeout=60)
    assert (proc.returncode, proc.stderr.strip().splitlines()) == (2, ["orderbook-collector: " + sentence])


def test_the_subscriptions_file_takes_a_coinm_market(tmp_path):
    f = tmp_path / "subs.toml"
    f.write_text("[[subscription]]\nmarket = 'coinm'\nsymbols = '*'\nstreams = ['depth@100ms', 'bookTicker']\n")
    (sub,) = read_subscriptions(f)
    assert (sub.market, sub.symbols, sub.kinds, sub.all_symbols) == (COINM, ("*",), ("depth@100ms", "bookTicker"), True)
    f.write_text("[[subscription]]\nmarket = 'coinm'\nsymbols = ['btcusdt']\nstreams = ['trade']\n")
    with pytest.raises(ConfigError, match="subscription 1: 'btcusdt' is not a COIN-M symbol"):
        read_subscriptions(f)


def test_coinm_facts():
    assert DEPTH_PATH[COINM] == "/dapi/v1/depth" and EXCHANGE_INFO[COINM] == ("/dapi/v1/exchangeInfo", 1)
    assert OPEN_INTEREST[COINM] == ("/dapi/v1/openInterest", 1)
    assert [depth_weight(COINM, n) for n in (5, 50, 100, 500, 1000, 30, 5000)] == [2, 2, 5, 10, 20, None, None]
    assert parse_stream_name("btcusd_perp@depth@100ms", COINM).cadence_us == 100_000
    assert parse_stream_name("btcusd_perp@depth", COINM).cadence_us == 250_000
    for bad in ("btcusdt@trade", "btcusd_perp_x@trade", "BTCUSD_PERP@trade", "_perp@trade"):
        assert parse_stream_name(bad, COINM) is None, bad
    assert parse_stream_name("btcusd_perp@trade", Market.USDM) is None  # USD-M's names have no underscore here


def test_the_route_is_one_switch(monkeypatch):
    """If COIN-M turns out to route by kind, setting it in one place moves its streams (and connections)."""
    s = Settings(symbols=[], coinm_symbols=["btcusd_perp"], coinm_streams=["depth@100ms", "aggTrade"])
    assert [(g[0].market, g[0].route) for g in s.connection_groups()] == [(COINM, None)]
    monkeypatch.setitem(ROUTES, COINM, USDM_ROUTE)
    assert sorted((g[0].route, g[0].kind) for g in s.connection_groups()) == [("market", "aggTrade"),
                                                                            ("public", "depth@100ms")]


def test_star_follows_coinm_exchange_info_by_contract_status():
    async def main():
        async with Exchange(symbols=["btcusdt"], coinm_symbols=["btcusd_perp", "ethusd_261225"], seed=1) as ex:
            ex.delist_symbol("ethusd_261225", COINM)
            body = await asyncio.to_thread(lambda: urllib.request.urlopen(ex.rest_url + "/dapi/v1/exchangeInfo").read())
            return json.loads(body)

    info = asyncio.run(main())
    assert [(x["symbol"], x["contractStatus"], "status" in x) for x in info["symbols"]] == [
        ("BTCUSD_PERP", "TRADING", False), ("ETHUSD_261225", "SETTLING", False)]
    assert trading_symbols(info, COINM).symbols == {"btcusd_perp"}
