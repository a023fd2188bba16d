"""`make run` / `make demo` validate every setting before starting anything: a bad one is one
sentence naming the setting and the command the user ran, exit 2, no traceback, nothing started."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from orderbook_core.streams import FUTURES, Kind, Market
from support.procs import ROOT, child_env
from tools import run


def run_launcher(tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess:
    for name in ("dagster.yaml", "workspace.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    return subprocess.run([sys.executable, "-m", "tools.run", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env=child_env(DAGSTER_PORT="0", ORDERBOOK_METRICS_PORT="0",
                                                    ORDERBOOK_SIMULATOR_PORT="0", **env))


@pytest.mark.parametrize(("args", "command"), [(("--simulator",), "make demo"), ((), "make run")])
def test_a_bad_stream_kind_is_one_line_naming_the_setting_and_the_command(tmp_path, args, command):
    result = run_launcher(tmp_path, *args, ORDERBOOK_STREAMS="depth20@100ms,nosuchkind")
    assert result.returncode == 2
    assert result.stdout == ""  # nothing announced: nothing started
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{command}: ORDERBOOK_STREAMS: "), lines
    assert "nosuchkind" in lines[0]
    assert not (tmp_path / "data").exists() and not (tmp_path / ".dagster_home").exists()


def test_an_archive_url_of_another_scheme_is_refused_before_anything_starts(tmp_path):
    result = run_launcher(tmp_path, ORDERBOOK_ARCHIVE_URL="ftp://host/x")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("make run: ORDERBOOK_ARCHIVE_URL: "), lines
    assert not (tmp_path / "data").exists() and not (tmp_path / ".dagster_home").exists()


@pytest.mark.parametrize(("setting", "value"), [("ORDERBOOK_BUFFER", "data/buffer.sqlite3"),
                                                ("ORDERBOOK_ARCHIVE_URL", "s3://real-bucket/books"),
                                                ("ORDERBOOK_ARCHIVE_URL", "ftp://host/x"),
                                                ("ORDERBOOK_DATA_SOURCE", "binance")])
def test_the_demo_refuses_an_exported_place_that_would_mix_real_and_simulated_data(tmp_path, setting, value):
    result = run_launcher(tmp_path, "--simulator", **{setting: value})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"make demo: {setting}: "), lines
    assert not (tmp_path / "data").exists()


def test_make_run_refuses_the_demos_simulated_marker(tmp_path):
    result = run_launcher(tmp_path, ORDERBOOK_DATA_SOURCE="simulated")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("make run: ORDERBOOK_DATA_SOURCE: is simulated"), lines


def test_demo_env_sourced_by_a_shell_gives_the_demo_world_and_the_demo_accepts_it_again(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = run._parse(["--simulator"])
    env = run._environment(args, {"PATH": os.environ["PATH"], "DAGSTER_HOME": str(tmp_path / ".dagster_home")})
    world = run.demo_world()
    assert {k: env[k] for k in world} == world
    assert world["ORDERBOOK_BUFFER"] == str(tmp_path / "data" / "demo" / "buffer.sqlite3")
    assert world["DAGSTER_HOME"] == str(tmp_path / "data" / "demo" / "dagster_home")
    assert world["ORDERBOOK_DATA_SOURCE"] == "simulated"
    run.write_demo_env(env)
    # As the docs tell a user to, in a real shell.
    shell = subprocess.run(["sh", "-c", "set -a; . data/demo/demo.env; set +a; env -0"], cwd=tmp_path,
                           env={"PATH": os.environ["PATH"]}, capture_output=True, text=True, check=True)
    sourced = dict(item.split("=", 1) for item in shell.stdout.split("\0") if "=" in item)
    assert {k: sourced[k] for k in world} == world
    # A user who sourced it and starts the demo again is not refused: it is the demo's own world.
    again = run._environment(args, sourced)
    assert {k: again[k] for k in world} == world


def test_the_demo_records_every_kind_on_every_market_and_open_interest_unless_told_otherwise(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = run._parse(["--simulator"])
    settings = run.check_settings(run._environment(args, {"PATH": os.environ["PATH"]}))
    kinds = {(spec.market, spec.type) for spec in settings.stream_specs()}
    # Every kind each market offers: spot has no mark price or liquidations.
    assert kinds == {(market, kind) for market in Market for kind in Kind
                     if market in FUTURES or kind not in (Kind.MARK_PRICE, Kind.LIQUIDATION)}
    assert 0 < settings.open_interest_seconds <= 10  # a few polls of each futures symbol within a minute
    assert len({spec.symbol for spec in settings.stream_specs()}) >= 2
    assert {"depth20@100ms", "depth@100ms"} <= {spec.kind for spec in settings.stream_specs()}
    # The user's own choice of symbols still wins, and the simulator serves them.
    own = run._environment(args, {"PATH": os.environ["PATH"], "ORDERBOOK_SYMBOLS": "dogeusdt",
                                  "ORDERBOOK_COINM_SYMBOLS": "solusd_perp", "ORDERBOOK_OPEN_INTEREST_SECONDS": "60"})
    own_settings = run.check_settings(own)
    assert "dogeusdt" in run.simulator_symbols(own_settings).split(",")
    # COIN-M's names go to the simulator's COIN-M books, not to spot's and USD-M's.
    assert "solusd_perp" in run.simulator_symbols(own_settings, coinm=True).split(",")
    assert "solusd_perp" not in run.simulator_symbols(own_settings).split(",")
    assert own_settings.open_interest_seconds == 60


HOUR = 3600


def test_the_demos_partitions_start_where_its_data_starts(tmp_path, monkeypatch):
    """Fresh: the current hour (not hundreds of "missing" hours since the project's default
    start); restarted: never later than its first start or its buffer's first hour."""
    from orderbook_assets.settings import PARTITIONS_START as START_ENV
    from orderbook_assets.settings import load
    from support.buffer_rows import BASE_HOUR_US, fill_buffer

    monkeypatch.chdir(tmp_path)
    args = run._parse(["--simulator"])
    now = (BASE_HOUR_US // 1_000_000) + 5 * HOUR + 1234  # 2026-11-23 15:20:34 UTC
    monkeypatch.setattr(run.time, "time", lambda: now)
    env = run._environment(args, {"PATH": os.environ["PATH"]})
    assert env[START_ENV] == "2026-11-23-15:00" == load(env).partitions_start  # a key the definitions accept
    run.write_demo_env(env)
    # The next day, restarted: the first start is kept (the hours it recorded stay partitions).
    monkeypatch.setattr(run.time, "time", lambda: now + 24 * HOUR)
    assert run._environment(args, {"PATH": os.environ["PATH"]})[START_ENV] == "2026-11-23-15:00"
    # A buffer holding older hours (demo.env removed, data kept): its first hour.
    (tmp_path / "data" / "demo" / "demo.env").unlink()
    fill_buffer(run.demo_world()["ORDERBOOK_BUFFER"], ["btcusdt"], BASE_HOUR_US + 2 * HOUR * 1_000_000 + 5, 10)
    assert run._environment(args, {"PATH": os.environ["PATH"]})[START_ENV] == "2026-11-23-12:00"
    # The user's own start wins.
    own = run._environment(args, {"PATH": os.environ["PATH"], START_ENV: "2026-11-01"})
    assert own[START_ENV] == "2026-11-01"


def test_make_run_keeps_the_projects_partitions_start(tmp_path, monkeypatch):
    from orderbook_assets.settings import PARTITIONS_START as START_ENV

    monkeypatch.chdir(tmp_path)
    assert START_ENV not in run._environment(run._parse([]), {"PATH": os.environ["PATH"]})
