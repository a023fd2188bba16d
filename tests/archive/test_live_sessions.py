"""The archive treats a session without a close time as live, never as crashed."""

from __future__ import annotations

import duckdb

from orderbook_core.buffer import ledger
from orderbook_assets.archive import pipeline
from orderbook_assets.archive.store import LocalStore

from support.buffer_rows import BASE_HOUR_US, fill_buffer, open_buffer


def test_an_open_session_is_archived_as_open_and_the_buffer_keeps_it_open(tmp_path):
    path = tmp_path / "buffer.sqlite3"
    fill_buffer(path, ["btcusdt"], BASE_HOUR_US + 5_000_000, 100)  # the collector is still connected
    conn = open_buffer(path)
    store, staging = LocalStore(tmp_path / "archive"), tmp_path / "staging"
    pipeline.export_and_upload(conn, store, staging, BASE_HOUR_US)
    pipeline.check_parts(conn, store, staging, BASE_HOUR_US, ledger.DEPTH)
    pipeline.upload_coverage(conn, store, staging, BASE_HOUR_US)
    pipeline.mark_archived(conn, staging, BASE_HOUR_US)
    assert conn.execute("SELECT closed_us, close_reason FROM sessions").fetchall() == [(None, None)]
    conn.close()
    row = duckdb.sql(
        f"SELECT end_time, close_reason, seconds FROM read_parquet('{tmp_path}/archive/coverage/**/*.parquet') "
        "WHERE record = 'session'"
    ).fetchall()
    assert len(row) == 1 and row[0][0] is None and row[0][1] is None and row[0][2] > 0
