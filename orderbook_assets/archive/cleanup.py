"""Free the buffer: delete rows of archived parts older than the retention period.

Every buffer table archived in parts (each dataset, and ``depth_sync``/``trade_gap``, whose rows
the coverage objects hold). Only parts in state ``archived`` (uploaded, verified by HEAD,
checks passed) are touched;
rows of any other part are never deleted. Each DELETE removes at most ``batch`` rows in its
own short transaction, because one large DELETE (with Debian's ``secure_delete``) stalls
the collector's writer for seconds. The WAL is checkpointed (PASSIVE, never waiting for the
writer) every few batches, and ``journal_size_limit`` truncates it back after a reset, so
it does not grow without bound. The statements are the buffer's (``orderbook_core.buffer.retention``).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from orderbook_core.buffer import now_us, reads, retention

from orderbook_assets.archive.crash import crash_point
from orderbook_core.buffer.ledger import ROUND_TABLES

log = logging.getLogger(__name__)

BATCH = retention.BATCH
CHECKPOINT_EVERY = 20  # batches
WAL_LIMIT_BYTES = 64 << 20


@dataclass
class CleanupResult:
    deleted: int = 0
    batches: int = 0
    parts: int = 0
    checkpoints: int = 0
    wal_bytes: int = 0


def has_rows(conn: sqlite3.Connection, hour_us: int, id_lo: int, id_hi: int, dataset: str) -> bool:
    return reads.has_rows(conn, dataset, reads.IdRange(hour_us, id_lo, id_hi))


def _drop_staged(conn: sqlite3.Connection, staging: Path, hour_us: int) -> None:
    for key in retention.archived_object_keys(conn, hour_us):
        (staging / key).unlink(missing_ok=True)


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
    retention.limit_wal(conn, WAL_LIMIT_BYTES)
    result = CleanupResult()
    eligible = [(d, *p) for d in ROUND_TABLES for p in retention.eligible_parts(conn, retention_hours, now, d)]
    for dataset, hour_us, id_lo, id_hi in eligible:
        if staging is not None:
            # Staged files a killed bars step left behind go with the rows they came from.
            _drop_staged(conn, staging, hour_us)
        if not has_rows(conn, hour_us, id_lo, id_hi, dataset):
            continue  # cleaned by an earlier run
        result.parts += 1
        while True:
            n = retention.delete_part_rows(conn, hour_us, id_lo, id_hi, batch, dataset=dataset)
            if n == 0:
                break
            result.deleted += n
            result.batches += 1
            crash_point("cleanup_batch")
            if result.batches % CHECKPOINT_EVERY == 0 or retention.wal_size(conn) > WAL_LIMIT_BYTES:
                retention.checkpoint(conn)
                result.checkpoints += 1
            if pause:
                time.sleep(pause)
    if result.batches:
        retention.checkpoint(conn)
        result.checkpoints += 1
    result.wal_bytes = retention.wal_size(conn)
    log.info("cleanup deleted %d rows of %d parts in %d batches", result.deleted, result.parts, result.batches)
    return result
