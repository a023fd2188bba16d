"""/metrics: Prometheus text from prometheus_client, every series there from the start,
the archive's progress read from the buffer, a taken or bad address one sentence."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

from orderbook_core import buffer as buf
from orderbook_collector.metrics import Metrics, render
from support.procs import child_env, wait_for

STREAMS = ["btcusdt@depth20@100ms", "ethusdt@depth20@100ms"]


def parse(text: str) -> tuple[dict[str, float], dict[str, str], set[str]]:
    """(samples, TYPE per family, families with HELP)."""
    samples, types, helps = {}, {}, set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
        elif line.startswith("# HELP "):
            helps.add(line.split(" ", 3)[2])
        elif line:
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples, types, helps


def family_of(sample: str, types: dict[str, str]) -> str:
    base = sample.split("{")[0]
    for suffix in ("_bucket", "_sum", "_count", "_total", "_created", ""):
        if base.endswith(suffix) and base[: len(base) - len(suffix)] in types:
            return base[: len(base) - len(suffix)]
    raise AssertionError(f"{sample} has no # TYPE line")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_family_has_help_and_type_and_every_labelled_series_exists_before_any_message():
    samples, types, helps = parse(render(Metrics(STREAMS)).decode())
    for sample in samples:
        family = family_of(sample, types)
        assert family in helps, f"{family} has no # HELP"
    assert "process_cpu_seconds_total" in samples and "process_resident_memory_bytes" in samples
    for stream in STREAMS:  # a stream that never delivers is visible to an "age > X" alert
        assert f'orderbook_last_message_age_seconds{{stream="{stream}"}}' in samples
    assert 'orderbook_quarantined_total{reason="not_json"}' in samples
    assert 'orderbook_writer_errors_total{kind="disk_full"}' in samples
    assert types["orderbook_commit_latency_seconds"] == "histogram"


def test_archive_progress_comes_from_the_export_ledger(buffer_path):
    conn = buf.connect(buffer_path)
    hour = buf.hour_of(buf.now_us()) - 3 * buf.HOUR_US
    with buf.transaction(conn):
        conn.execute("INSERT INTO buffer_hours VALUES ('depth_snapshot', ?, 1, 10, 10)", (hour - buf.HOUR_US,))
    samples, _, _ = parse(render(Metrics(), buffer_path).decode())
    assert samples["orderbook_archive_newest_hour_timestamp_seconds"] == 0
    # Nothing archived yet: behind since the end of the oldest buffered hour, i.e. since `hour`.
    assert abs(samples["orderbook_archive_lag_seconds"] - (time.time() - hour / 1e6)) < 5
    with buf.transaction(conn):
        conn.execute(
            "INSERT INTO export_parts (dataset, hour_us, part, id_lo, id_hi, state, planned_us, updated_us) "
            "VALUES ('depth_snapshot', ?, 1, 1, 10, 'archived', 0, 0)", (hour,))
    conn.close()
    samples, _, _ = parse(render(Metrics(), buffer_path).decode())
    assert samples["orderbook_archive_newest_hour_timestamp_seconds"] == hour / 1e6
    assert abs(samples["orderbook_archive_lag_seconds"] - (time.time() - hour / 1e6 - 3600)) < 5


def test_a_collector_that_cannot_connect_shows_every_stream_ageing_and_counts_no_reconnect(tmp_path):
    port, dead = free_port(), free_port()  # nothing listens on `dead`: every attempt is refused
    proc = subprocess.Popen(
        [sys.executable, "-m", "orderbook_collector"],
        env=child_env(ORDERBOOK_SYMBOLS="btcusdt,ethusdt", ORDERBOOK_WS_URL=f"ws://127.0.0.1:{dead}",
                      ORDERBOOK_BUFFER=str(tmp_path / "b.sqlite3"), ORDERBOOK_METRICS_PORT=str(port)),
        stderr=subprocess.PIPE, text=True,
    )
    try:
        def scrape():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    return parse(r.read().decode())[0]
            except OSError:
                return None

        first = wait_for(lambda: (m := scrape()) and m["orderbook_connect_failures_total"] >= 2 and m,
                         timeout=30, what="failed connection attempts counted")
        assert first["orderbook_reconnects_total"] == 0
        ages = [f'orderbook_last_message_age_seconds{{stream="{s}"}}' for s in STREAMS]
        t0 = time.monotonic()
        later = wait_for(lambda: (m := scrape()) and m[ages[0]] > first[ages[0]] + 0.5 and m,
                         timeout=10, what="the ages growing")
        assert all(later[a] >= time.monotonic() - t0 for a in ages)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    line = next(x for x in err.splitlines() if "cannot connect" in x)
    assert f"127.0.0.1:{dead}" in line and "make demo" in line


def test_a_taken_metrics_port_is_one_sentence_and_exit_2(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        for setting, env in (("ORDERBOOK_METRICS_PORT", {"ORDERBOOK_METRICS_PORT": str(port)}),
                             ("ORDERBOOK_METRICS_HOST", {"ORDERBOOK_METRICS_PORT": "0",
                                                         "ORDERBOOK_METRICS_HOST": "no-such-host.invalid"})):
            proc = subprocess.run(
                [sys.executable, "-m", "orderbook_collector"],
                env=child_env(ORDERBOOK_WS_URL="ws://127.0.0.1:9", ORDERBOOK_BUFFER=str(tmp_path / "b.sqlite3"), **env),
                capture_output=True, text=True, timeout=60,
            )
            assert proc.returncode == 2, proc.stderr
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"orderbook-collector: {setting}: "), proc.stderr


def test_a_host_that_does_not_resolve_is_named_with_what_to_do(tmp_path):
    """``make run`` without Binance: the log names the host and suggests ``make demo``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "orderbook_collector"],
        env=child_env(ORDERBOOK_WS_URL="wss://stream.binance.invalid:9443", ORDERBOOK_METRICS_PORT="-1",
                      ORDERBOOK_BUFFER=str(tmp_path / "b.sqlite3")),
        stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stderr.readline()
        deadline = time.monotonic() + 30
        while "cannot connect" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert "WARNING" in line and "stream.binance.invalid:9443" in line, line
    assert "does not resolve" in line and "make demo" in line, line
