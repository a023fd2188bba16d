"""Free the buffer: delete rows of archived parts older than the retention period.

Every buffer table archived in parts (each dataset, and ``depth_sync``/``trade_gap``, whose rows
the coverage objects hold). Only parts in state ``archived`` (uploaded, verified by HEAD,
checks passed) are touched;
rows of any other part are never deleted. Each DELETE removes at most ``batch`` rows in its
own short transaction, because one large DELETE (with Debian's ``secure_delete``) stalls
the collector's writer for seconds. The WAL is checkpointed (PASSIVE, never waiting for the
writer) every few batches, and ``journal_size_limit`` truncates it back after a reset, so
it does not grow without bound.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from orderbook_core.buffer import HOUR_US, now_us, reads, transaction
from orderbook_core.buffer.schema import PartState

from orderbook_assets.archive.crash import crash_point
from orderbook_core.buffer.ledger import ROUND_TABLES

log = logging.getLogger(__name__)

BATCH = 1000
CHECKPOINT_EVERY = 20  # batches
WAL_LIMIT_BYTES = 64 << 20


@dataclass
class CleanupResult:
    deleted: int = 0
    batches: int = 0
    parts: int = 0
    checkpoints: int = 0
    wal_bytes: int = 0


def eligible_parts(conn: sqlite3.Connection, retention_hours: float, now: int,
                   dataset: str) -> list[tuple[int, int, int]]:
    """(hour_us, id_lo, id_hi) of archived parts of a buffer table whose rows are all older than
    the retention. ``retention_hours == 0`` means as soon as the part is archived.
    """
    cutoff = now - int(retention_hours * HOUR_US)
    return conn.execute(
        "SELECT hour_us, id_lo, id_hi FROM export_parts WHERE dataset = ? AND state = ? "
        "AND (? = 0 OR hour_us + ? <= ?) ORDER BY hour_us, part",
        (dataset, PartState.ARCHIVED, retention_hours, HOUR_US, cutoff),
    ).fetchall()


def delete_part_rows(conn: sqlite3.Connection, hour_us: int, id_lo: int, id_hi: int, batch: int = BATCH, *,
                     dataset: str) -> int:
    """Delete one batch of a part's rows; returns how many were deleted (0 when done)."""
    if batch > BATCH:
        raise ValueError(f"batch must be at most {BATCH} rows")
    with transaction(conn):
        # The state is re-checked inside the write transaction: never a row of an unarchived part.
        cur = conn.execute(
            f"DELETE FROM {dataset} WHERE id IN ("
            f" SELECT id FROM {dataset} WHERE {reads.PART_ROWS}"
            " AND EXISTS (SELECT 1 FROM export_parts p WHERE p.dataset = ? AND p.hour_us = ? AND p.state = ?"
            "             AND p.id_lo = ? AND p.id_hi = ?)"
            " LIMIT ?)",
            (*reads.IdRange(hour_us, id_lo, id_hi).params(), dataset, hour_us, PartState.ARCHIVED, id_lo, id_hi, batch),
        )
    return cur.rowcount


def has_rows(conn: sqlite3.Connection, hour_us: int, id_lo: int, id_hi: int, dataset: str) -> bool:
    return reads.has_rows(conn, dataset, reads.IdRange(hour_us, id_lo, id_hi))


def _drop_staged(conn: sqlite3.Connection, staging: Path, hour_us: int) -> None:
    for (key,) in conn.execute(
        "SELECT object_key FROM export_parts WHERE hour_us = ? AND state = ?", (hour_us, PartState.ARCHIVED)
    ).fetchall():
        (staging / key).unlink(missing_ok=True)


def wal_size(conn: sqlite3.Connection) -> int:
    path = conn.execute("PRAGMA database_list").fetchone()[2]
    try:
        return os.path.getsize(path + "-wal")
    except OSError:
        return 0


def checkpoint(conn: sqlite3.Connection) -> None:
    """A PASSIVE checkpoint: copies what it can without waiting for the writer or readers."""
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def run(
    conn: sqlite3.Connection,
    retention_hours: float,
    *,
    now: int | None = None,
    batch: int = BATCH,
    pause: float = 0.002,
    staging: Path | None = None,
) -> CleanupResult:
    """Delete every eligible row in batches; ``pause`` seconds between batches let the writer in."""
    now = now_us() if now is None else now
    conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}")
    result = CleanupResult()
    eligible = [(d, *p) for d in ROUND_TABLES for p in eligible_parts(conn, retention_hours, now, d)]
    for dataset, hour_us, id_lo, id_hi in eligible:
        if staging is not None:
            # Staged files a killed bars step left behind go with the rows they came from.
            _drop_staged(conn, staging, hour_us)
        if not has_rows(conn, hour_us, id_lo, id_hi, dataset):
            continue  # cleaned by an earlier run
        result.parts += 1
        while True:
            n = delete_part_rows(conn, hour_us, id_lo, id_hi, batch, dataset=dataset)
            if n == 0:
                break
            result.deleted += n
            result.batches += 1
            crash_point("cleanup_batch")
            if result.batches % CHECKPOINT_EVERY == 0 or wal_size(conn) > WAL_LIMIT_BYTES:
                checkpoint(conn)
                result.checkpoints += 1
            if pause:
                time.sleep(pause)
    if result.batches:
        checkpoint(conn)
        result.checkpoints += 1
    result.wal_bytes = wal_size(conn)
    log.info("cleanup deleted %d rows of %d parts in %d batches", result.deleted, result.parts, result.batches)
    return result
