"""Bad settings stop the start with one sentence naming the setting, exit status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from orderbook_collector.config import load
from orderbook_core.errors import ConfigError
from support.procs import child_env


@pytest.mark.parametrize(
    "env, setting, words",
    [
        ({"ORDERBOOK_STREAMS": "depth7"}, "ORDERBOOK_STREAMS", "not a spot stream kind"),
        ({"ORDERBOOK_STREAMS": "depth@250ms"}, "ORDERBOOK_STREAMS", "not a spot stream kind"),
        ({"ORDERBOOK_SYMBOLS": "btc-usdt"}, "ORDERBOOK_SYMBOLS", "not a Binance symbol"),
        ({"ORDERBOOK_SYMBOLS": ","}, "ORDERBOOK_SYMBOLS", "no symbol"),
        ({"ORDERBOOK_WS_URL": "http://example"}, "ORDERBOOK_WS_URL", "not a ws or wss URL"),
        ({"ORDERBOOK_WS_URL": "wss://host:99999"}, "ORDERBOOK_WS_URL", "invalid port"),
        ({"ORDERBOOK_REST_URL": "ftp://x"}, "ORDERBOOK_REST_URL", "http or https"),
        ({"ORDERBOOK_BUFFER": "/etc/hostname/buffer.sqlite3"}, "ORDERBOOK_BUFFER", "not writable"),
        ({"ORDERBOOK_BUFFER": "/"}, "ORDERBOOK_BUFFER", "is a directory"),
        ({"ORDERBOOK_SYNCHRONOUS": "OFF"}, "ORDERBOOK_SYNCHRONOUS", "FULL or NORMAL"),
        ({"ORDERBOOK_METRICS_PORT": "http"}, "ORDERBOOK_METRICS_PORT", "whole number"),
        ({"ORDERBOOK_QUEUE_SIZE": "1"}, "ORDERBOOK_QUEUE_SIZE", "out of range"),
    ],
)
def test_each_invalid_setting_exits_2_with_one_clear_sentence(tmp_path, env, setting, words):
    env = {"ORDERBOOK_BUFFER": str(tmp_path / "b.sqlite3"), **env}
    with pytest.raises(ConfigError) as err:
        load([], env)
    assert str(err.value).startswith(setting) and words in str(err.value)
    proc = subprocess.run(
        [sys.executable, "-m", "orderbook_collector"], env=child_env(**env), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and setting in lines[0] and words in lines[0]
    assert "Traceback" not in proc.stderr


def test_flags_override_the_environment(tmp_path):
    settings, _ = load(["--symbols", "ethusdt", "--buffer", str(tmp_path / "x.db")], {"ORDERBOOK_SYMBOLS": "btcusdt"})
    assert settings.symbols == ["ethusdt"] and settings.buffer == tmp_path / "x.db"
    assert [s.name for s in settings.stream_specs()] == ["ethusdt@depth20@100ms"]


def test_defaults_match_the_design(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings, _ = load([], {})
    assert settings.symbols == ["btcusdt"] and settings.streams == ["depth20@100ms"]
    assert settings.ws_url == "wss://stream.binance.com:9443"
    assert str(settings.buffer) == "data/buffer.sqlite3"
    assert settings.synchronous == "FULL"


def test_many_streams_are_split_across_connections(tmp_path):
    symbols = ",".join(f"sym{i:04d}" for i in range(600))
    settings, _ = load(["--buffer", str(tmp_path / "b"), "--symbols", symbols, "--streams", "depth5,depth20@100ms"], {})
    groups = settings.connection_groups()
    assert [len(g) for g in groups] == [1024, 176]
