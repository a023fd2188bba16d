"""Freeing the buffer: which archived parts may go, deleting their rows, keeping the WAL small.

Only parts in state ``archived`` (uploaded, verified by HEAD, checks passed) are ever
touched, and the state is re-checked inside each delete's own write transaction. The
policy (retention, batches, pauses, checkpoints) is the archive's cleanup
(``orderbook_assets/archive/cleanup.py``); the statements are here.
"""

from __future__ import annotations

import os
import sqlite3

from orderbook_core.buffer.hours import HOUR_US
from orderbook_core.buffer.reads import PART_ROWS, IdRange
from orderbook_core.buffer.schema import PartState
from orderbook_core.buffer.transactions import transaction

#: The most rows one DELETE removes: one large DELETE (with Debian's ``secure_delete``) stalls
#: the collector's writer for seconds.
BATCH = 1000


def eligible_parts(conn: sqlite3.Connection, retention_hours: float, now: int,
                   dataset: str) -> list[tuple[int, int, int]]:
    """(hour_us, id_lo, id_hi) of archived parts of a buffer table whose rows are all older than
    the retention, by hour and part. ``retention_hours == 0`` means as soon as the part is archived.
    """
    cutoff = now - int(retention_hours * HOUR_US)
    return conn.execute(
        "SELECT hour_us, id_lo, id_hi FROM export_parts WHERE dataset = ? AND state = ? "
        "AND (? = 0 OR hour_us + ? <= ?) ORDER BY hour_us, part",
        (dataset, PartState.ARCHIVED, retention_hours, HOUR_US, cutoff),
    ).fetchall()


def delete_part_rows(conn: sqlite3.Connection, hour_us: int, id_lo: int, id_hi: int, batch: int = BATCH, *,
                     dataset: str) -> int:
    """Delete one batch of an archived part's rows in its own transaction; returns how many were
    deleted (0 when done, or when the part is not archived)."""
    if batch > BATCH:
        raise ValueError(f"batch must be at most {BATCH} rows")
    with transaction(conn):
        # The state is re-checked inside the write transaction: never a row of an unarchived part.
        cur = conn.execute(
            f"DELETE FROM {dataset} WHERE id IN ("
            f" SELECT id FROM {dataset} WHERE {PART_ROWS}"
            " AND EXISTS (SELECT 1 FROM export_parts p WHERE p.dataset = ? AND p.hour_us = ? AND p.state = ?"
            "             AND p.id_lo = ? AND p.id_hi = ?)"
            " LIMIT ?)",
            (*IdRange(hour_us, id_lo, id_hi).params(), dataset, hour_us, PartState.ARCHIVED, id_lo, id_hi, batch),
        )
    return cur.rowcount


def archived_object_keys(conn: sqlite3.Connection, hour_us: int) -> list[str]:
    """The object keys of the hour's archived parts, of every dataset and coverage."""
    return [key for (key,) in conn.execute(
        "SELECT object_key FROM export_parts WHERE hour_us = ? AND state = ?", (hour_us, PartState.ARCHIVED)
    ).fetchall()]


def limit_wal(conn: sqlite3.Connection, limit_bytes: int) -> None:
    """Truncate the WAL back to ``limit_bytes`` after each reset (``journal_size_limit``), so it
    does not keep the size of its largest burst."""
    conn.execute(f"PRAGMA journal_size_limit = {int(limit_bytes)}")


def wal_size(conn: sqlite3.Connection) -> int:
    """The buffer's WAL file size in bytes (0 if there is none)."""
    path = conn.execute("PRAGMA database_list").fetchone()[2]
    try:
        return os.path.getsize(path + "-wal")
    except OSError:
        return 0


def checkpoint(conn: sqlite3.Connection) -> None:
    """A PASSIVE checkpoint: copies what it can without waiting for the writer or readers."""
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
