"""The SQLite buffer: schema, connection rules, the transaction helper, batch writes.

The buffer is the hand-off point between the collector (one writer thread) and
the archive (Dagster runs). Both sides open it through :func:`connect`, which
refuses to continue unless the database really is in WAL mode with the requested
``synchronous`` level, so a misconfigured file fails loudly at start-up instead of
silently losing the durability the README promises.

Tables (all times are integer microseconds since the epoch, UTC):

``streams``         stream_id ↔ stream name, symbol, kind.
``depth_snapshot``  one row per stored partial-depth message. ``id`` is
                    AUTOINCREMENT so ids are never reused, even after cleanup
                    deletes the newest rows: the export ledger relies on that.
                    ``levels`` packs float64 (price, qty) pairs, bids then asks.
                    The unique index on (stream_id, update_id) is the dedup key.
``buffer_hours``    per dataset and UTC hour: smallest and largest id and row
                    count, kept by the writer, so an export can find an hour's
                    rows by id range without an index on recv_us.
``sessions``        one row per WebSocket connection: the coverage ledger.
``dropped``         one row per message not stored because it was a duplicate,
                    so every seq gap in the stored rows is explained.
``quarantine``      frames that failed parsing or validation, raw bytes and reason.
``events``          stalls, rotations, serverShutdown notices, spill episodes and
                    write-failure episodes (disk full, locked); disconnects are in
                    ``sessions`` (close time and reason).
``spill_state``     how far the spill files have been replayed, committed with the rows.
``export_parts``    the archive's ledger: each part's id range and state.

See docs/durability.md for what is on disk after a commit returns.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from orderbook_collector.errors import StorageError, TransactionError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
HOUR_US = 3_600_000_000
DEFAULT_BUSY_TIMEOUT_MS = 5_000
SYNCHRONOUS_LEVELS = ("NORMAL", "FULL")
#: A depth20 row is ~690 bytes, so 4 KiB pages waste ~16 % on each page's tail. Measured
#: on simulator books: 4 KiB 840, 8 KiB 755, 16 KiB 730 bytes a message; but each small
#: commit writes ~5 whole pages to the WAL (20, 41, 82 KB). 8 KiB meets the 800-byte
#: budget at half the write amplification of 16 KiB.
PAGE_SIZE = 8192

SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    stream_id   INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    symbol      TEXT NOT NULL,
    kind        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS depth_snapshot (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id   INTEGER NOT NULL,
    session_id  INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    recv_us     INTEGER NOT NULL,
    update_id   INTEGER NOT NULL,
    n_bids      INTEGER NOT NULL,
    levels      BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS depth_snapshot_dedup ON depth_snapshot (stream_id, update_id);
CREATE TABLE IF NOT EXISTS buffer_hours (
    dataset     TEXT NOT NULL,
    hour_us     INTEGER NOT NULL,
    min_id      INTEGER NOT NULL,
    max_id      INTEGER NOT NULL,
    rows        INTEGER NOT NULL,
    PRIMARY KEY (dataset, hour_us)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sessions (
    session_id    INTEGER PRIMARY KEY,
    url           TEXT NOT NULL,
    streams       TEXT NOT NULL,
    opened_us     INTEGER NOT NULL,
    closed_us     INTEGER,
    close_reason  TEXT,
    first_recv_us INTEGER,
    last_recv_us  INTEGER,
    frames        INTEGER NOT NULL DEFAULT 0,
    messages      INTEGER NOT NULL DEFAULT 0,
    duplicates    INTEGER NOT NULL DEFAULT 0,
    quarantined   INTEGER NOT NULL DEFAULT 0,
    lost          INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS dropped (
    session_id  INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    stream_id   INTEGER NOT NULL,
    update_id   INTEGER NOT NULL,
    recv_us     INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS quarantine (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    recv_us     INTEGER NOT NULL,
    session_id  INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    raw         BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS quarantine_recv ON quarantine (recv_us);
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    time_us     INTEGER NOT NULL,
    session_id  INTEGER,
    stream      TEXT,
    kind        TEXT NOT NULL,
    detail      TEXT
);
CREATE INDEX IF NOT EXISTS events_time ON events (time_us);
CREATE TABLE IF NOT EXISTS spill_state (
    singleton   INTEGER PRIMARY KEY CHECK (singleton = 1),
    segment     TEXT NOT NULL,
    offset      INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS export_parts (
    dataset       TEXT NOT NULL,
    hour_us       INTEGER NOT NULL,
    part          INTEGER NOT NULL,
    id_lo         INTEGER NOT NULL,
    id_hi         INTEGER NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('planned', 'uploaded', 'verified', 'archived')),
    rows          INTEGER,
    bytes         INTEGER,
    sha256        TEXT,
    object_key    TEXT,
    first_recv_us INTEGER,
    last_recv_us  INTEGER,
    planned_us    INTEGER NOT NULL,
    updated_us    INTEGER NOT NULL,
    PRIMARY KEY (dataset, hour_us, part)
) WITHOUT ROWID;
"""


def now_us() -> int:
    return time.time_ns() // 1000


def hour_of(us: int) -> int:
    return us - us % HOUR_US


def connect(
    path: str | Path,
    *,
    synchronous: str = "FULL",
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
    create: bool = True,
) -> sqlite3.Connection:
    """Open the buffer in autocommit mode with WAL and the given ``synchronous`` level.

    Raises:
        StorageError: the file cannot be opened, or refuses WAL or the requested level.
    """
    level = synchronous.upper()
    if level not in SYNCHRONOUS_LEVELS:
        raise StorageError(f"synchronous must be one of {SYNCHRONOUS_LEVELS}, not {synchronous!r}")
    path = Path(path)
    if not create and not path.exists():
        raise StorageError(f"buffer {path} does not exist; start the collector first or fix ORDERBOOK_BUFFER")
    try:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: Python must never open transactions behind our back;
        # every write goes through transaction() with an explicit BEGIN IMMEDIATE.
        new = not path.exists() or path.stat().st_size == 0
        conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout_ms / 1000)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        if new:  # only possible before the first page is written (and before WAL)
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        conn.execute(f"PRAGMA synchronous = {level}")
        got = conn.execute("PRAGMA synchronous").fetchone()[0]
    except (sqlite3.Error, OSError) as exc:
        raise StorageError(f"cannot open buffer {path}: {exc}") from exc
    if mode.lower() != "wal":
        conn.close()
        raise StorageError(f"buffer {path} refused WAL mode (journal_mode is {mode!r})")
    if got != {"NORMAL": 1, "FULL": 2}[level]:
        conn.close()
        raise StorageError(f"buffer {path} refused synchronous={level}")
    _migrate(conn)
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StorageError(
            f"buffer schema version {version} is newer than this program ({SCHEMA_VERSION}); upgrade orderbook"
        )
    if version == SCHEMA_VERSION:
        return
    with transaction(conn):
        for stmt in SCHEMA.split(";"):
            if stmt.strip():
                conn.execute(stmt)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


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


def stream_ids(conn: sqlite3.Connection, streams: list[tuple[str, str, str]]) -> dict[str, int]:
    """Register (name, symbol, kind) triples and return name → stream_id."""
    with transaction(conn):
        conn.executemany(
            "INSERT OR IGNORE INTO streams (name, symbol, kind) VALUES (?, ?, ?)", streams
        )
    return dict(conn.execute("SELECT name, stream_id FROM streams"))


def stream_names(conn: sqlite3.Connection) -> dict[int, str]:
    return {sid: name for name, sid in conn.execute("SELECT name, stream_id FROM streams")}


def next_session_id(conn: sqlite3.Connection, now: int) -> int:
    """Session ids are the opening time in µs, kept strictly increasing across restarts."""
    last = conn.execute("SELECT max(session_id) FROM sessions").fetchone()[0] or 0
    return max(now, last + 1)


def close_orphan_sessions(conn: sqlite3.Connection) -> int:
    """Close sessions a killed collector left open; their end is the last message stored."""
    with transaction(conn):
        cur = conn.execute(
            "UPDATE sessions SET closed_us = coalesce(last_recv_us, opened_us), "
            "close_reason = 'collector stopped without closing (crash or kill)' "
            "WHERE closed_us IS NULL"
        )
    return cur.rowcount
