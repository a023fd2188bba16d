"""Round trip: the collector recording from ``orderbook replay`` and archiving again yields the
same messages (same keys, same values) as the original archive.

The first test replays partial depth alone; the second every replayed kind (partial and diff
depth, trades, aggTrades, bookTicker) on spot and USD-M, the collector syncing its diff streams
from the replay's REST depth.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from orderbook_core.buffer.hours import HOUR_US, hour_of

from orderbook_assets.analytics.books import ArchiveReader
from orderbook_assets.analytics.replay import outages
from orderbook_assets.archive import datasets as ds
from orderbook_assets.archive import pipeline
from orderbook_assets.archive.store import LocalStore
from support.buffer_rows import open_buffer
from support.procs import ROOT, SimulatorProcess, child_env, query, start_collector, stored_count, wait_for

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
           "--start", str(lo), "--end", str(hi), "--speed", "2", "--port", "0", "--wait-for-subscribers"]
    replay = subprocess.Popen(cmd, env=child_env(), stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = replay.stderr.readline()
        m = re.search(r"ws://127\.0\.0\.1:(\d+)", line)
        assert m, line
        record_and_archive(tmp_path / "b2.sqlite3", f"ws://127.0.0.1:{m.group(1)}", again, tmp_path / "s2", len(first))
    finally:
        replay.terminate()
        replay.wait(30)
    assert messages(again) == first


# ---- every kind, spot and USD-M ------------------------------------------------------------

KINDS = "depth20@100ms,depth@100ms,trade,aggTrade,bookTicker"
#: The replayed datasets (depth_rest_snapshot is what the collector fetched, not a message).
REPLAYED = ("depth_snapshot", "depth_update", "trade", "agg_trade", "book_ticker")
#: Per dataset: the id ordering its messages within a stream (the dedup key's last column).
ORDER = {d: ds.DATASETS[d].dedup[-1] for d in REPLAYED}
#: The replay's --gap default: a silence of every stream this long is a disconnect.
GAP_US = 5_000_000
#: Columns that are the recording's, not the message's.
RECORDING = "recv_time, session_id, seq"


def every_kind_env(ws_url: str, rest_url: str) -> dict[str, str]:
    return dict(ORDERBOOK_STREAMS=KINDS, ORDERBOOK_REST_URL=rest_url, ORDERBOOK_USDM_SYMBOLS="btcusdt",
                ORDERBOOK_USDM_STREAMS=KINDS, ORDERBOOK_USDM_WS_URL=ws_url, ORDERBOOK_USDM_REST_URL=rest_url)


def counts(buffer: Path) -> dict[tuple[str, str], int]:
    """Rows per (dataset, market) in a buffer."""
    out = {}
    for d in REPLAYED:
        for market, n in query(buffer, f"SELECT s.market, count(*) FROM {d} JOIN streams s USING (stream_id) "
                                       "GROUP BY s.market"):
            out[(d, market)] = n
    return out


def last_ids(buffer: Path) -> dict[tuple[str, str, str], int]:
    """The newest id per (dataset, market, stream) in a buffer."""
    out = {}
    for d in REPLAYED:
        col = "update_id" if d == "depth_snapshot" else ds.DATASETS[d].ordered_id  # the buffer's column
        for market, name, last in query(buffer, f"SELECT s.market, s.name, max({col}) FROM {d} "
                                                "JOIN streams s USING (stream_id) GROUP BY s.stream_id"):
            out[(d, market, name)] = last
    return out


def archive_all(buffer: Path, archive: Path, staging: Path) -> None:
    conn = open_buffer(buffer)
    try:
        hours = {hour_of(us) for d in REPLAYED for (us,) in conn.execute(f"SELECT recv_us FROM {d}")}
        for h in sorted(hours):
            pipeline.export_and_upload(conn, LocalStore(archive), staging, h)
    finally:
        conn.close()


def archived(archive: Path, dataset: str) -> dict[tuple[str, str], list[tuple]]:
    """(market, stream) → the dataset's messages (every column but the recording's), in id order."""
    con = duckdb.connect()
    rel = con.execute(f"SELECT * EXCLUDE ({RECORDING}) FROM read_parquet('{archive}/{dataset}/**/*.parquet', "
                      f"union_by_name = true) ORDER BY market, stream, {ORDER[dataset]}")
    cols = [c[0] for c in rel.description]
    out: dict[tuple[str, str], list[tuple]] = {}
    for row in rel.fetchall():
        r = dict(zip(cols, row))
        out.setdefault((r["market"], r["stream"]), []).append(row)
    return out


def test_every_kind_on_both_markets_round_trips_through_replay(tmp_path: Path):
    original, again = tmp_path / "original", tmp_path / "again"
    b1, b2 = tmp_path / "b1.sqlite3", tmp_path / "b2.sqlite3"
    with SimulatorProcess() as sim:
        proc = start_collector(b1, sim.ws_url, symbols="btcusdt", **every_kind_env(sim.ws_url, sim.http_url))
        try:
            wait_for(lambda: len(counts(b1)) == 10 and min(counts(b1).values()) >= 10, timeout=120,
                     what="10 rows of every kind on both markets")
            # an outage: every connection lost at once, so the archive holds a gap the replay
            # turns into a disconnect; the collector reconnects and re-syncs as live
            before = counts(b1)
            sim.control("disconnect", abrupt="1")
            wait_for(lambda: all(n >= before[k] + 10 for k, n in counts(b1).items()), timeout=120,
                     what="10 more rows of every kind on both markets after the reconnect")
        finally:
            proc.terminate()
            proc.wait(30)
    archive_all(b1, original, tmp_path / "s1")
    first = {d: archived(original, d) for d in REPLAYED}
    assert {(d, m) for d in REPLAYED for (m, _) in first[d]} == {(d, m) for d in REPLAYED for m in ("spot", "usdm")}
    con = duckdb.connect()
    lo, hi = con.execute(
        "SELECT epoch_us(min(recv_time)), epoch_us(max(recv_time)) + 1 FROM read_parquet(["
        + ", ".join(f"'{original}/{d}/**/*.parquet'" for d in REPLAYED) + "], union_by_name = true)").fetchone()
    assert hi - lo < HOUR_US
    want_last = last_ids(b1)
    reader = ArchiveReader(str(original))
    try:
        cuts = outages(reader, lo, hi, GAP_US)
    finally:
        reader.close()
    assert cuts, "the recording's outage is a disconnect in the replay"
    cmd = [sys.executable, "-m", "orderbook_assets.analytics.query", "replay", "--archive", str(original),
           "--start", str(lo), "--end", str(hi), "--speed", "2", "--port", "0", "--wait-for-subscribers"]
    replay = subprocess.Popen(cmd, env=child_env(), stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = replay.stderr.readline()
        m = re.search(r"ws://127\.0\.0\.1:(\d+)", line)
        assert m, line
        url = f"127.0.0.1:{m.group(1)}"
        proc = start_collector(b2, f"ws://{url}", symbols="btcusdt", **every_kind_env(f"ws://{url}", f"http://{url}"))
        try:
            # the replay has delivered everything once every stream's newest message is stored again
            wait_for(lambda: last_ids(b2) == want_last, timeout=180, what="every stream's last message replayed")
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        replay.terminate()
        replay.wait(30)
    finished = re.search(r"replay finished: \d+ messages sent, (\d+) disconnects", replay.stderr.read())
    assert finished and int(finished.group(1)) == len(cuts), finished
    # the collector synced its diff streams from the replay's REST depth, on both markets
    assert {m for (m,) in query(b2, "SELECT DISTINCT s.market FROM depth_sync d JOIN streams s USING (stream_id) "
                                    "WHERE d.event = 'synced'")} == {"spot", "usdm"}
    archive_all(b2, again, tmp_path / "s2")
    # the replay held its clock until each stream had a subscriber (at the start, and after
    # the outage's disconnect until the collector had reconnected), so every archived message
    # came back: per dataset and stream, the same rows, every column but the recording's
    for d in REPLAYED:
        second = archived(again, d)
        assert set(second) == set(first[d]), d
        for key, rows in second.items():
            orig = first[d][key]
            assert len(rows) == len(orig), (d, key, len(rows), len(orig))
            assert rows == orig, (d, key)
