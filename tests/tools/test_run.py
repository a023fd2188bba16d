"""The README's run command: collector + dagster dev (+ simulator) start together and stop together,
whatever stops the launcher (Ctrl-C, SIGTERM, a closed terminal, SIGKILL)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from orderbook_core.streams import FUTURES, Kind, Market, build_streams, open_interest_key
from support.procs import ROOT, child_env, descendants, query, running, wait_for


#: What the demo records by default (tools/run.py DEMO_MIX), as keyed in the buffer: every stream
#: kind of each market, written out here rather than read from DEMO_MIX, so a kind dropped there fails
#: here; and the open-interest series of every futures symbol (pseudo-streams of their own).
DEMO_SYMBOLS = {Market.SPOT: ["btcusdt", "ethusdt", "solusdt"], Market.USDM: ["btcusdt", "ethusdt"],
                Market.COINM: ["btcusd_perp", "ethusd_perp"]}
_KINDS = ["depth20@100ms", "depth@100ms", "trade", "aggTrade", "bookTicker"]
DEMO_STREAMS = {spec.key for market, symbols in DEMO_SYMBOLS.items()
                for spec in build_streams(symbols, _KINDS + (["markPrice@1s", "forceOrder"] if market in FUTURES else []),
                                          market)}
DEMO_OPEN_INTEREST = {open_interest_key(market, symbol) for market in FUTURES for symbol in DEMO_SYMBOLS[market]}


def documented_queries() -> list[str]:
    """The SELECTs of docs/analysts.md's SQL examples over the views and of the ``orderbook query``
    commands of the README and docs/analysts.md; not those reading archive files directly
    (read_parquet: only after an hour is archived)."""
    texts = [(ROOT / "docs" / "analysts.md").read_text(), (ROOT / "README.md").read_text()]
    statements = [st.strip() for text in texts for block in re.findall(r"```sql\n(.*?)```", text, flags=re.S)
                  for st in block.split(";")]
    statements = [re.sub(r"^(--.*\n)+", "", st).strip() for st in statements]
    commands = [sql for text in texts for sql in re.findall(r'orderbook query[^"\n]*"([^"]+)"', text)]
    examples = [*commands, *statements]
    return list(dict.fromkeys(st for st in examples if st.upper().startswith("SELECT") and "read_parquet" not in st))


def answer(cwd, sql: str) -> list[str]:
    """Data rows of ``sql`` run as the docs run it on the demo: demo.env sourced, ``--with-tail``."""
    cmd = f'set -a; . data/demo/demo.env; set +a; exec "$0" -m orderbook_assets.analytics.query --with-tail --format csv "$1"'
    out = subprocess.run(["sh", "-c", cmd, sys.executable, sql], cwd=cwd, env=child_env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, (sql, out.stderr)
    return out.stdout.strip().splitlines()[1:]  # the header line off


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ui_up(port: int) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2).status == 200
    except OSError:
        return False


def launch(cwd, port: int, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tools.run", "--dagster-port", str(port), *args],
        cwd=cwd, env=child_env(ORDERBOOK_METRICS_PORT="0", **env),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )


def demo_folder(tmp_path):
    """A folder laid out like the repository root for the launcher (it reads both YAML files there)."""
    for name in ("dagster.yaml", "workspace.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


@pytest.mark.slow  # the whole product started (collector, dagster dev): make test, not test-fast
def test_run_starts_everything_and_ctrl_c_stops_everything(tmp_path):
    cwd = demo_folder(tmp_path)
    port = free_port()
    buffer = cwd / "data" / "demo" / "buffer.sqlite3"
    proc = launch(cwd, port, "--simulator", "--simulator-port", "0")
    examples = documented_queries()
    assert any("derivative_ticker" in sql for sql in examples) and len(examples) >= 5
    try:
        wait_for(lambda: buffer.exists() and set(recorded(buffer)) >= DEMO_STREAMS | DEMO_OPEN_INTEREST,
                 timeout=90, interval=0.5, what="the demo storing every stream and open-interest series")
        # Every documented example answers on the demo at once, before any hour is archived: each
        # view has rows (derivative_ticker's open interest too, the series being recorded).
        for sql in examples:
            assert answer(cwd, sql), f"no rows on the demo for the documented {sql!r}"
        assert "simulated" in subprocess.run(
            ["sh", "-c", 'set -a; . data/demo/demo.env; set +a; exec "$0" -m orderbook_assets.analytics.query '
             '--with-tail "SELECT 1"', sys.executable], cwd=cwd, env=child_env(), capture_output=True, text=True,
            timeout=120).stderr
        wait_for(lambda: ui_up(port), timeout=90, interval=0.5, what="the Dagster UI")
        # The repository's instance settings, in the demo's own instance.
        assert (cwd / "data" / "demo" / "dagster_home" / "dagster.yaml").exists()
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends
        assert proc.wait(45) == 0
        assert time.monotonic() - t0 < 30
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = proc.stdout.read()
    assert "Dagster UI on" in out
    # Started next to the repository's dagster.yaml, dagster dev used to say the file "will not be used".
    assert "will not be used" not in out
    # Warnings that are ours to quiet: Dagster's preview and "dg dev supersedes dagster dev".
    assert "PreviewWarning" not in out and "superseded" not in out
    # Nothing is left running: the collector closed its session, dagster dev its services.
    assert query(buffer, "SELECT close_reason FROM sessions")[-1][0] == "collector stopped"
    left = subprocess.run(["pgrep", "-f", f"-p {port}"], capture_output=True, text=True).stdout.split()
    assert not [p for p in left if int(p) != os.getpid()]


# The whole demo started and stopped, each way about 30 s: make test, not test-fast.
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM], ids=["SIGHUP", "SIGTERM"])
def test_the_demo_records_in_its_own_folder_and_any_stop_signal_stops_the_whole_tree(tmp_path, sig):
    cwd = demo_folder(tmp_path)
    port, sim_port = free_port(), free_port()
    started = time.time()
    proc = launch(cwd, port, "--simulator", ORDERBOOK_SIMULATOR_PORT=str(sim_port))
    demo_buffer = cwd / "data" / "demo" / "buffer.sqlite3"
    try:
        # A small but complete mix: every stream of the demo (symbols x kinds, three markets) has rows,
        # forceOrder's too (event-driven, but the simulator's fires within a second of any trade on the
        # symbol's book, and its trades come every few book steps), and every futures symbol's open
        # interest (polled every DEMO_OPEN_INTEREST_SECONDS).
        wait_for(lambda: demo_buffer.exists() and set(recorded(demo_buffer)) == DEMO_STREAMS | DEMO_OPEN_INTEREST,
                 timeout=90, interval=0.5, what="the demo storing every stream kind of three markets and every "
                                                "futures symbol's open interest in data/demo/")
        wait_for(lambda: ui_up(port), timeout=90, interval=0.5, what="the Dagster UI")
        tree = descendants(proc.pid)
        assert len(tree) >= 5  # simulator, collector, dagster dev, its webserver and daemon
        os.kill(proc.pid, sig)  # SIGHUP: the terminal was closed
        assert proc.wait(45) == 0
        wait_for(lambda: not running(tree), timeout=30, what="every process of the tree to stop")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert f"ws://127.0.0.1:{sim_port}" in proc.stdout.read()  # the simulator port is configurable
    assert not (cwd / "data" / "buffer.sqlite3").exists()  # the real buffer is untouched
    assert query(demo_buffer, "SELECT close_reason FROM sessions")[-1][0] == "collector stopped"
    # What the documented commands need to act on the demo's world, for the shell to source.
    env_file = (cwd / "data" / "demo" / "demo.env").read_text()
    for line in (f"ORDERBOOK_BUFFER={demo_buffer}", f"ORDERBOOK_ARCHIVE_URL={cwd / 'data' / 'demo' / 'archive'}",
                 f"DAGSTER_HOME={cwd / 'data' / 'demo' / 'dagster_home'}", "ORDERBOOK_DATA_SOURCE=simulated"):
        assert line in env_file.splitlines()
    # A fresh demo's partitions start at the hour it started, not at the project's default.
    hours = {time.strftime("%Y-%m-%d-%H:00", time.gmtime(t)) for t in (started, time.time())}
    [start] = [line.split("=", 1)[1] for line in env_file.splitlines() if line.startswith("ORDERBOOK_PARTITIONS_START=")]
    assert start in hours  # two hours only if the test ran across an hour's end


def recorded(buffer) -> list[str]:
    """The streams (open-interest series too) with at least one row in some dataset of the buffer."""
    union = " UNION ".join(f"SELECT stream_id FROM {dataset}" for dataset in [*(kind.dataset for kind in Kind),
                                                                              "open_interest"])
    return [name for (name,) in query(buffer, f"SELECT name FROM streams WHERE stream_id IN ({union})")]


@pytest.mark.slow
def test_a_launcher_killed_with_sigkill_leaves_nothing_recording(tmp_path):
    cwd = demo_folder(tmp_path)
    port = free_port()
    proc = launch(cwd, port, "--simulator", "--simulator-port", "0")
    demo_buffer = cwd / "data" / "demo" / "buffer.sqlite3"
    try:
        wait_for(lambda: ui_up(port), timeout=90, interval=0.5, what="the Dagster UI")
        tree = descendants(proc.pid)
        assert len(tree) >= 5
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        wait_for(lambda: not running(tree), timeout=45, what="every child to stop after the launcher died")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # The collector was told (SIGTERM from the kernel), so it closed its session itself.
    assert query(demo_buffer, "SELECT count(*) FROM sessions WHERE closed_us IS NULL")[0][0] == 0


@pytest.mark.parametrize("setting", ["DAGSTER_PORT", "ORDERBOOK_METRICS_PORT", "ORDERBOOK_SIMULATOR_PORT"])
def test_a_taken_port_is_one_sentence_exit_2_and_starts_nothing(tmp_path, setting):
    cwd = demo_folder(tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        ports = {"DAGSTER_PORT": str(free_port()), "ORDERBOOK_METRICS_PORT": "0", "ORDERBOOK_SIMULATOR_PORT": "0"}
        ports[setting] = str(taken)
        result = subprocess.run([sys.executable, "-m", "tools.run", "--simulator"], cwd=cwd,
                                env=child_env(**ports), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and f"{setting}: port {taken}" in lines[0] and "in use" in lines[0], lines
    assert not (cwd / "data").exists()  # nothing started, nothing recorded


def test_a_metrics_host_that_is_not_ours_is_one_sentence_naming_it(tmp_path):
    cwd = demo_folder(tmp_path)
    result = subprocess.run([sys.executable, "-m", "tools.run"], cwd=cwd, capture_output=True, text=True, timeout=60,
                            env=child_env(DAGSTER_PORT="0", ORDERBOOK_METRICS_HOST="no-such-host.invalid"))
    assert result.returncode == 2
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("make run: ORDERBOOK_METRICS_HOST: "), lines
