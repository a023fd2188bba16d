"""The buffer's connection rules and transaction helper."""

from __future__ import annotations

import sqlite3

import pytest

from orderbook_core import buffer
from orderbook_core.errors import StorageError, TransactionError


def test_connect_enforces_wal_and_synchronous(buffer_path):
    conn = buffer.connect(buffer_path, synchronous="FULL")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert conn.isolation_level is None
    assert conn.execute("PRAGMA user_version").fetchone()[0] == buffer.SCHEMA_VERSION
    with pytest.raises(StorageError, match="synchronous"):
        buffer.connect(buffer_path, synchronous="OFF")


def test_connect_refuses_newer_schema(buffer_path):
    buffer.connect(buffer_path).execute("PRAGMA user_version = 99")
    with pytest.raises(StorageError, match="newer than this program"):
        buffer.connect(buffer_path)


def test_transaction_rolls_back_on_any_exception_and_leaves_no_rows(buffer_path):
    conn = buffer.connect(buffer_path)
    with pytest.raises(KeyboardInterrupt):
        with buffer.transaction(conn):
            conn.execute("INSERT INTO streams (name, symbol, kind) VALUES ('a@depth5', 'a', 'depth5')")
            raise KeyboardInterrupt
    assert not conn.in_transaction
    assert conn.execute("SELECT count(*) FROM streams").fetchone()[0] == 0


def test_transaction_refuses_nesting_instead_of_joining(buffer_path):
    conn = buffer.connect(buffer_path)
    with buffer.transaction(conn):
        with pytest.raises(TransactionError, match="already open"):
            with buffer.transaction(conn):
                pass


def test_failed_commit_is_rolled_back_and_raised(buffer_path):
    conn = buffer.connect(buffer_path)
    conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    conn.execute("CREATE TABLE child (pid INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)")
    conn.execute("PRAGMA foreign_keys = ON")
    with pytest.raises(TransactionError, match="COMMIT failed"):
        with buffer.transaction(conn):
            conn.execute("INSERT INTO child VALUES (42)")  # violation only detected at COMMIT
    assert not conn.in_transaction
    assert conn.execute("SELECT count(*) FROM child").fetchone()[0] == 0


def test_busy_database_times_out_instead_of_hanging(buffer_path):
    conn = buffer.connect(buffer_path, busy_timeout_ms=100)
    other = sqlite3.connect(buffer_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            with buffer.transaction(conn):
                pass
    finally:
        other.execute("ROLLBACK")


def test_orphan_sessions_are_closed_at_their_last_message(buffer_path):
    conn = buffer.connect(buffer_path)
    conn.execute("INSERT INTO sessions (session_id, url, streams, opened_us, last_recv_us) VALUES (10, 'u', '[]', 10, 99)")
    assert buffer.close_orphan_sessions(conn) == 1
    closed, reason = conn.execute("SELECT closed_us, close_reason FROM sessions").fetchone()
    assert closed == 99 and "crash" in reason
    assert buffer.next_session_id(conn, 5) == 11


def test_new_buffers_use_8k_pages_and_old_ones_keep_theirs(tmp_path):
    assert buffer.connect(tmp_path / "new.sqlite3").execute("PRAGMA page_size").fetchone()[0] == 8192
    old = sqlite3.connect(tmp_path / "old.sqlite3")
    old.execute("CREATE TABLE t (x)")
    old.close()
    assert buffer.connect(tmp_path / "old.sqlite3").execute("PRAGMA page_size").fetchone()[0] == 4096
