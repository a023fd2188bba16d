"""The SQLite buffer: connection rules and the small helpers both sides share.

The buffer is the hand-off point between the collector (one writer thread) and
the archive (Dagster runs). Both sides open it through :func:`connect`, which
refuses to continue unless the database really is in WAL mode with the requested
``synchronous`` level, so a misconfigured file fails loudly at start-up instead of
silently losing the durability the README promises.

The tables, their owners and migrations are in :mod:`.schema`.
See docs/durability.md for what is on disk after a commit returns.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from orderbook_core.buffer.hours import HOUR_US, hour_of, now_us  # noqa: F401  (re-exported)
from orderbook_core.buffer.schema import migrate
from orderbook_core.buffer.transactions import transaction
from orderbook_core.errors import StorageError

log = logging.getLogger(__name__)

DEFAULT_BUSY_TIMEOUT_MS = 5_000
SYNCHRONOUS_LEVELS = ("NORMAL", "FULL")
#: A depth20 row is ~690 bytes, so 4 KiB pages waste ~16 % on each page's tail. Measured
#: on simulator books: 4 KiB 840, 8 KiB 755, 16 KiB 730 bytes a message; but each small
#: commit writes ~5 whole pages to the WAL (20, 41, 82 KB). 8 KiB meets the 800-byte
#: budget at half the write amplification of 16 KiB.
PAGE_SIZE = 8192



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
    migrate(conn)
    return conn


#: Where the collector keeps its buffer unless ``ORDERBOOK_BUFFER`` says otherwise.
DEFAULT_PATH = Path("data/buffer.sqlite3")


def connect_readonly(path: str | Path, timeout: float = 5.0) -> sqlite3.Connection:
    """A read-only connection to an existing buffer (metrics, the unarchived tail, freshness):
    it can never create the file, write, or take the write lock, so it never stalls the writer
    (WAL readers do not block it). ``timeout`` bounds the wait on a lock, in seconds.

    Raises:
        sqlite3.OperationalError: the file does not exist or is not a database.
    """
    return sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, timeout=timeout)


def stream_ids(conn: sqlite3.Connection, streams: list[tuple]) -> dict[str, int]:
    """Register (key, symbol, kind[, market]) streams and return key → stream_id.

    The key is ``StreamSpec.key``: the stream name, prefixed on markets other than spot.
    """
    with transaction(conn):
        conn.executemany(
            "INSERT OR IGNORE INTO streams (name, symbol, kind, market) VALUES (?, ?, ?, ?)",
            [(*s, "spot") if len(s) == 3 else s for s in streams],
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
