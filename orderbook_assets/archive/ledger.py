"""The export ledger: parts of an hour and their states, in the buffer's ``export_parts`` table.

A *part* is the rows of one dataset and UTC hour with ``id_lo < id <= id_hi``. Its id
range is fixed in one ``BEGIN IMMEDIATE`` transaction before anything is written, so a
crash at any later point leaves a plan that a re-run completes with the very same rows,
hence the very same bytes and key. States only move forward::

    planned → uploaded → verified → archived

``uploaded``: the object was put (or found) and its size and SHA-256 are recorded.
``verified``: a HEAD of the object showed that size and SHA-256.
``archived``: the checks passed; cleanup may now delete the part's buffer rows.

Every depth part has a twin ``coverage`` part (same hour, number and id range), planned
in the same transaction.

Ids are AUTOINCREMENT, so never reused; the collector's writer, the only other writer,
assigns ids inside its own transactions, so when our ``BEGIN IMMEDIATE`` holds the write
lock every id up to ``buffer_hours.max_id`` is committed and later rows get larger ids.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from enum import Enum

from orderbook_collector.buffer import HOUR_US, now_us, reads, transaction

DEPTH = "depth_snapshot"
COVERAGE = "coverage"
class PartState(str, Enum):
    """A part's state in the ledger; it only moves forward, in this order."""

    PLANNED = "planned"
    UPLOADED = "uploaded"
    VERIFIED = "verified"
    ARCHIVED = "archived"


STATES = tuple(PartState)

_COLUMNS = (
    "dataset, hour_us, part, id_lo, id_hi, state, rows, bytes, sha256, object_key, "
    "first_recv_us, last_recv_us, planned_us, updated_us"
)


@dataclass(frozen=True)
class Part:
    dataset: str
    hour_us: int
    part: int
    id_lo: int
    id_hi: int
    state: PartState
    rows: int | None = None
    bytes: int | None = None
    sha256: str | None = None
    object_key: str | None = None
    first_recv_us: int | None = None
    last_recv_us: int | None = None
    planned_us: int = 0
    updated_us: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", PartState(self.state))

    @property
    def hour_end_us(self) -> int:
        return self.hour_us + HOUR_US

    @property
    def rows_range(self) -> reads.IdRange:
        """The buffer rows this part holds (see :mod:`orderbook_collector.buffer.reads`)."""
        return reads.IdRange(self.hour_us, self.id_lo, self.id_hi)

    def reached(self, state: PartState | str) -> bool:
        return STATES.index(self.state) >= STATES.index(PartState(state))


def plan_part(conn: sqlite3.Connection, hour_us: int, now: int | None = None) -> Part | None:
    """Plan the next depth part (and its coverage twin) of an hour; None if no new rows.

    One ``BEGIN IMMEDIATE``: next part number, ``id_lo`` = previous part's ``id_hi``
    (or 0), ``id_hi`` = ``buffer_hours.max_id`` for the hour.
    """
    now = now_us() if now is None else now
    with transaction(conn):
        row = conn.execute(
            "SELECT max_id FROM buffer_hours WHERE dataset = ? AND hour_us = ?", (DEPTH, hour_us)
        ).fetchone()
        last = conn.execute(
            "SELECT part, id_hi FROM export_parts WHERE dataset = ? AND hour_us = ? ORDER BY part DESC LIMIT 1",
            (DEPTH, hour_us),
        ).fetchone()
        number, id_lo = (last[0] + 1, last[1]) if last else (1, 0)
        if row is None or row[0] <= id_lo:
            return None
        id_hi = row[0]
        for dataset in (DEPTH, COVERAGE):
            conn.execute(
                "INSERT INTO export_parts (dataset, hour_us, part, id_lo, id_hi, state, planned_us, updated_us) "
                "VALUES (?, ?, ?, ?, ?, 'planned', ?, ?)",
                (dataset, hour_us, number, id_lo, id_hi, now, now),
            )
    return get_part(conn, DEPTH, hour_us, number)


def get_part(conn: sqlite3.Connection, dataset: str, hour_us: int, part: int) -> Part | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM export_parts WHERE dataset = ? AND hour_us = ? AND part = ?",
        (dataset, hour_us, part),
    ).fetchone()
    return Part(*row) if row else None


def parts(conn: sqlite3.Connection, dataset: str, hour_us: int, states: tuple[str, ...] = STATES) -> list[Part]:
    """The hour's parts of a dataset in the given states, by part number."""
    marks = ",".join("?" * len(states))
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM export_parts WHERE dataset = ? AND hour_us = ? AND state IN ({marks}) ORDER BY part",
        (dataset, hour_us, *states),
    ).fetchall()
    return [Part(*r) for r in rows]


def pending(conn: sqlite3.Connection, dataset: str, hour_us: int) -> list[Part]:
    """Parts not yet archived: what a run of this hour still has to finish."""
    return parts(conn, dataset, hour_us, STATES[:-1])


def advance(conn: sqlite3.Connection, part: Part, state: str, now: int | None = None, **fields: object) -> Part:
    """Move a part forward to ``state`` (setting ``fields``); a no-op if it is already there.

    Idempotent: re-running a step after a crash neither fails nor moves a part backwards.
    """
    target = STATES.index(PartState(state))
    before = [s.value for s in STATES[:target]]
    now = now_us() if now is None else now
    sets = "".join(f", {name} = ?" for name in fields)
    with transaction(conn):
        conn.execute(
            f"UPDATE export_parts SET state = ?, updated_us = ?{sets} "
            f"WHERE dataset = ? AND hour_us = ? AND part = ? AND state IN ({','.join('?' * len(before))})",
            (state, now, *fields.values(), part.dataset, part.hour_us, part.part, *before),
        )
    got = get_part(conn, part.dataset, part.hour_us, part.part)
    assert got is not None
    return got


def record_object(conn: sqlite3.Connection, part: Part, **fields: object) -> Part:
    """Set object facts (sha256, bytes, ...) on a part that is not archived, keeping its state."""
    sets = ", ".join(f"{name} = ?" for name in fields)
    with transaction(conn):
        conn.execute(
            f"UPDATE export_parts SET {sets}, updated_us = ? "
            "WHERE dataset = ? AND hour_us = ? AND part = ? AND state != 'archived'",
            (*fields.values(), now_us(), part.dataset, part.hour_us, part.part),
        )
    got = get_part(conn, part.dataset, part.hour_us, part.part)
    assert got is not None
    return got


def buffer_rows(conn: sqlite3.Connection, part: Part) -> int:
    """How many buffer rows belong to the part (its id range, within its hour)."""
    return reads.count_rows(conn, DEPTH, part.rows_range)


def late_hours(conn: sqlite3.Connection, before_us: int) -> list[tuple[int, int]]:
    """Hours ending at or before ``before_us`` that have parts and rows beyond the last one.

    Returns ``(hour_us, buffer max_id)`` pairs: the sensor's work list.
    """
    return conn.execute(
        "SELECT b.hour_us, b.max_id FROM buffer_hours b "
        "JOIN (SELECT hour_us, max(id_hi) AS hi FROM export_parts WHERE dataset = ? GROUP BY hour_us) p "
        "ON p.hour_us = b.hour_us "
        "WHERE b.dataset = ? AND b.max_id > p.hi AND b.hour_us + ? <= ? ORDER BY b.hour_us",
        (DEPTH, DEPTH, HOUR_US, before_us),
    ).fetchall()
