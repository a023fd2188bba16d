"""Round trip: the collector recording from ``orderbook replay`` and archiving again yields the
same messages (same keys, same values) as the original archive.

On this branch the collector archives partial depth (``depth_snapshot``); the other kinds join
the round trip when the collector archives them (the lead's merge of the stream-kinds work).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from orderbook_collector.buffer.hours import HOUR_US, hour_of

from orderbook_assets.archive import pipeline
from orderbook_assets.archive.store import LocalStore
from support.buffer_rows import open_buffer
from support.procs import ROOT, SimulatorProcess, child_env, start_collector, stored_count, wait_for

pytestmark = pytest.mark.slow
ROWS = 60


def record_and_archive(buffer: Path, ws_url: str, archive: Path, staging: Path, rows: int, **env: str) -> None:
    proc = start_collector(buffer, ws_url, symbols="btcusdt", **env)
    try:
        wait_for(lambda: stored_count(buffer) >= rows, timeout=90, what=f"{rows} rows in {buffer.name}")
    finally:
        proc.terminate()
        proc.wait(30)
    conn = open_buffer(buffer)
    try:
        hours = {hour_of(us) for (us,) in conn.execute("SELECT recv_us FROM depth_snapshot")}
        for h in sorted(hours):
            pipeline.export_and_upload(conn, LocalStore(archive), staging, h)
    finally:
        conn.close()


def messages(archive: Path, first: int | None = None) -> list[tuple]:
    con = duckdb.connect()
    rows = con.execute(
        f"SELECT stream, last_update_id, bids, asks FROM read_parquet('{archive}/depth_snapshot/**/*.parquet', "
        "hive_partitioning = true) ORDER BY stream, last_update_id").fetchall()
    return rows if first is None else rows[:first]


def test_collector_recording_from_replay_archives_the_same_messages(tmp_path: Path):
    original, again = tmp_path / "original", tmp_path / "again"
    with SimulatorProcess() as sim:
        record_and_archive(tmp_path / "b1.sqlite3", sim.ws_url, original, tmp_path / "s1", ROWS)
    first = messages(original)
    assert len(first) >= ROWS
    con = duckdb.connect()
    lo, hi = con.execute(
        f"SELECT epoch_us(min(recv_time)), epoch_us(max(recv_time)) + 1 FROM "
        f"read_parquet('{original}/depth_snapshot/**/*.parquet', hive_partitioning = true)").fetchone()
    assert hi - lo < HOUR_US
    cmd = [sys.executable, "-m", "orderbook_assets.analytics.query", "replay", "--archive", str(original),
           "--start", str(lo), "--end", str(hi), "--speed", "2", "--port", "0"]
    replay = subprocess.Popen(cmd, env=child_env(), stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = replay.stderr.readline()
        m = re.search(r"ws://127\.0\.0\.1:(\d+)", line)
        assert m, line
        record_and_archive(tmp_path / "b2.sqlite3", f"ws://127.0.0.1:{m.group(1)}", again, tmp_path / "s2", len(first))
    finally:
        replay.terminate()
        replay.wait(30)
    assert messages(again, len(first)) == first
