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
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
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
