"""Numbered migrations: a buffer made by an older program is brought up to date in place, rows kept."""

from __future__ import annotations

import sqlite3

import pytest

from orderbook_core import buffer
from orderbook_core.buffer import schema
from orderbook_core.errors import StorageError


def make_v1(path) -> None:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    (step, sql), = [m for m in schema.MIGRATIONS if m[0] == 1]
    for stmt in sql.split(";"):
        if stmt.strip():
            con.execute(stmt)
    con.execute("INSERT INTO streams (name, symbol, kind) VALUES ('btcusdt@depth20@100ms', 'btcusdt', 'depth20@100ms')")
    con.execute("INSERT INTO depth_snapshot (stream_id, session_id, seq, recv_us, update_id, n_bids, levels) "
                "VALUES (1, 1, 0, 5, 42, 0, x'')")
    con.execute("PRAGMA user_version = 1")
    con.close()


def test_a_version_1_buffer_is_migrated_in_place(tmp_path):
    path = tmp_path / "old.sqlite3"
    make_v1(path)
    conn = buffer.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION == 5
    assert conn.execute("SELECT update_id, event_ms, prev_update_id FROM depth_snapshot").fetchall() == [(42, None, None)]
    assert conn.execute("SELECT market FROM streams").fetchall() == [("spot",)]
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert set(schema.OWNER) <= tables
    conn.close()


def test_every_table_has_one_owner(tmp_path):
    conn = buffer.connect(tmp_path / "new.sqlite3")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} - {"sqlite_sequence"}
    assert tables == set(schema.OWNER)
    assert set(schema.OWNER.values()) == {"collector", "archive"}


def test_a_buffer_newer_than_the_program_is_refused(tmp_path):
    path = tmp_path / "future.sqlite3"
    buffer.connect(path).close()
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(StorageError, match="newer than this program"):
        buffer.connect(path)


def make_v4(path) -> None:
    """A buffer as a program of schema version 4 left it: steps 1 to 4, a trade row in it."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    for step, sql in schema.MIGRATIONS:
        if step <= 4:
            for stmt in sql.split(";"):
                if stmt.strip():
                    con.execute(stmt)
    con.execute("INSERT INTO streams (name, symbol, kind, market) VALUES ('usdm:btcusdt@aggTrade', 'btcusdt', "
                "'aggTrade', 'usdm')")
    con.execute("INSERT INTO agg_trade (stream_id, recv_us, session_id, seq, event_ms, trade_ms, agg_trade_id, "
                "first_trade_id, last_trade_id, price, qty, is_buyer_maker) VALUES (1, 5, 1, 0, 4, 3, 9, 1, 2, 1.5, 2, 0)")
    con.execute("PRAGMA user_version = 4")
    con.close()


def test_a_version_4_buffer_gains_the_mark_price_and_liquidation_tables(tmp_path):
    path = tmp_path / "v4.sqlite3"
    make_v4(path)
    conn = buffer.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 5
    assert conn.execute("SELECT agg_trade_id, price FROM agg_trade").fetchall() == [(9, 1.5)]
    conn.execute("INSERT INTO mark_price (stream_id, recv_us, session_id, seq, event_ms, mark_price, index_price, "
                 "estimated_settle_price, funding_rate, next_funding_ms) VALUES (2, 6, 1, 1, 7, 1.0, 1.0, 1.0, NULL, NULL)")
    with pytest.raises(sqlite3.IntegrityError):  # the dedup key: one row per stream and event time
        conn.execute("INSERT INTO mark_price (stream_id, recv_us, session_id, seq, event_ms, mark_price, index_price, "
                     "estimated_settle_price) VALUES (2, 8, 1, 2, 7, 2.0, 2.0, 2.0)")
    cols = [r[1] for r in conn.execute("PRAGMA table_info(liquidation)")]
    assert cols == ["id", "stream_id", "recv_us", "session_id", "seq", "event_ms", "side", "order_type",
                    "time_in_force", "quantity", "price", "average_price", "status", "last_filled_quantity",
                    "filled_quantity", "trade_ms"]
    conn.close()
