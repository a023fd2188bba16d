"""The transaction helper: ``BEGIN IMMEDIATE`` … ``COMMIT``, rolling back loudly."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator

from orderbook_core.errors import TransactionError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, rolling back loudly on any failure.

    Rolls back on every ``BaseException`` (KeyboardInterrupt included) and when
    ``COMMIT`` itself fails, then raises; it never commits a half-done block.
    Nesting is refused rather than silently joined.

    Raises:
        TransactionError: a transaction was already open, or COMMIT failed.
    """
    if conn.in_transaction:
        raise TransactionError("a transaction is already open on this connection; nesting is not supported")
    conn.execute(f"BEGIN {mode}")
    try:
        yield conn
    except BaseException:
        _rollback(conn)
        raise
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        _rollback(conn)
        raise TransactionError(f"COMMIT failed and was rolled back: {exc}") from exc


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            log.exception("rollback failed")


@contextlib.contextmanager
def read_snapshot(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One read transaction (``BEGIN`` … ``COMMIT``): every read inside sees the same committed
    buffer, so the ledger and the rows agree; a WAL reader never blocks the writer.

    On an exception nothing is committed (a read has nothing to commit): closing the
    connection ends the transaction.
    """
    conn.execute("BEGIN")
    yield conn
    conn.execute("COMMIT")
