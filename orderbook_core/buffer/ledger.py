"""The export ledger: parts of an hour and their states, in the buffer's ``export_parts`` table.

A *part* is the rows of one dataset and UTC hour with ``id_lo < id <= id_hi``. Its id
range is fixed in one ``BEGIN IMMEDIATE`` transaction before anything is written, so a
crash at any later point leaves a plan that a re-run completes with the very same rows,
hence the very same bytes and key. States only move forward::

    planned → uploaded → verified → archived

``uploaded``: the object was put (or found) and its size and SHA-256 are recorded.
``verified``: a HEAD of the object showed that size and SHA-256.
``archived``: the checks passed; cleanup may now delete the part's buffer rows.

Parts are planned in *rounds*: one ``BEGIN IMMEDIATE`` plans, for every dataset and every
continuity table (``depth_sync``, ``trade_gap``: archived inside ``coverage``) with new rows
in the hour, its next part, plus one ``coverage`` part for the round (id range 0-0: it has
no rows of its own). A round's parts share their ``planned_us``, which is what links them;
the round is archived as a whole, once all its parts and its coverage are verified.
(Older ledgers: a coverage part with the id range of its depth twin; same link.)

Each part records its *location*, the normalised archive URL its object was uploaded to
(set with ``uploaded``), so a run pointed at another archive is refused before it plans or
reads anything instead of looking there for objects that are elsewhere (:func:`elsewhere`).
NULL is "unknown": parts planned, or recorded before the ledger kept locations.

Ids are AUTOINCREMENT, so never reused; the collector's writer, the only other writer,
assigns ids inside its own transactions, so when our ``BEGIN IMMEDIATE`` holds the write
lock every id up to ``buffer_hours.max_id`` is committed and later rows get larger ids.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import NamedTuple

from orderbook_core import kinds
from orderbook_core.buffer import reads
from orderbook_core.buffer.hours import HOUR_US, now_us
from orderbook_core.buffer.schema import PartState  # noqa: F401  (the ledger's states; re-exported)
from orderbook_core.buffer.transactions import transaction

#: The stream datasets, in the order a round plans them (``orderbook_core.kinds``).
DATASETS = tuple(kinds.SPECS)
DEPTH = kinds.DEPTH_SNAPSHOT.name
#: Buffer tables whose rows are archived inside ``coverage`` (continuity as data), not as datasets.
CONTINUITY = ("depth_sync", "trade_gap", "silence")
#: The derived dataset every round gets one part of (no rows of its own).
COVERAGE = "coverage"
#: The buffer tables whose rows parts hold, in the order a round plans them.
ROUND_TABLES = (*DATASETS, *CONTINUITY)

STATES = tuple(PartState)

_COLUMNS = (
    "dataset, hour_us, part, id_lo, id_hi, state, rows, bytes, sha256, object_key, "
    "first_recv_us, last_recv_us, planned_us, updated_us, location"
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
    location: str | None = None  # the archive URL the object went to; None: not yet uploaded, or unknown

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", PartState(self.state))

    @property
    def hour_end_us(self) -> int:
        return self.hour_us + HOUR_US

    @property
    def rows_range(self) -> reads.IdRange:
        """The buffer rows this part holds (see :mod:`orderbook_core.buffer.reads`)."""
        return reads.IdRange(self.hour_us, self.id_lo, self.id_hi)

    def reached(self, state: PartState | str) -> bool:
        return STATES.index(self.state) >= STATES.index(PartState(state))


def plan_round(conn: sqlite3.Connection, hour_us: int, now: int | None = None) -> list[Part]:
    """Plan the next round of an hour: a part per table with new rows, and its coverage part.

    One ``BEGIN IMMEDIATE``: per table, next part number, ``id_lo`` = its previous part's
    ``id_hi`` (or 0), ``id_hi`` = the hour's largest id. Returns the planned parts (coverage
    last), or ``[]`` if no table has new rows.
    """
    now = now_us() if now is None else now
    planned = []
    with transaction(conn):
        last_round = conn.execute("SELECT max(planned_us) FROM export_parts WHERE hour_us = ?", (hour_us,)).fetchone()[0]
        if last_round is not None:
            now = max(now, last_round + 1)  # a round is its planned_us: never two with one
        for table in ROUND_TABLES:
            whole = reads.hour_bounds(conn, table, hour_us)
            last = conn.execute(
                "SELECT part, id_hi FROM export_parts WHERE dataset = ? AND hour_us = ? ORDER BY part DESC LIMIT 1",
                (table, hour_us),
            ).fetchone()
            number, id_lo = (last[0] + 1, last[1]) if last else (1, 0)
            if whole is None or whole.id_hi <= id_lo:
                continue
            planned.append((table, number, id_lo, whole.id_hi))
        if planned:
            last = conn.execute(
                "SELECT max(part) FROM export_parts WHERE dataset = ? AND hour_us = ?", (COVERAGE, hour_us)
            ).fetchone()[0]
            planned.append((COVERAGE, (last or 0) + 1, 0, 0))
        for table, number, id_lo, id_hi in planned:
            conn.execute(
                "INSERT INTO export_parts (dataset, hour_us, part, id_lo, id_hi, state, planned_us, updated_us) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (table, hour_us, number, id_lo, id_hi, PartState.PLANNED.value, now, now),
            )
    return [get_part(conn, table, hour_us, number) for table, number, _, _ in planned]


def plan_part(conn: sqlite3.Connection, hour_us: int, now: int | None = None, *, dataset: str) -> Part | None:
    """Plan the hour's next round (:func:`plan_round`) and return its part of ``dataset``, if any."""
    return next((p for p in plan_round(conn, hour_us, now) if p.dataset == dataset), None)


def round_parts(conn: sqlite3.Connection, cover: Part) -> list[Part]:
    """The parts (every table but coverage) of the round a coverage part belongs to."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM export_parts WHERE hour_us = ? AND planned_us = ? AND dataset != ? "
        "ORDER BY dataset, part",
        (cover.hour_us, cover.planned_us, COVERAGE),
    ).fetchall()
    return [Part(*r) for r in rows]


def get_part(conn: sqlite3.Connection, dataset: str, hour_us: int, part: int) -> Part | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM export_parts WHERE dataset = ? AND hour_us = ? AND part = ?",
        (dataset, hour_us, part),
    ).fetchone()
    return Part(*row) if row else None


def parts(conn: sqlite3.Connection, dataset: str, hour_us: int, states: tuple[PartState, ...] = STATES) -> list[Part]:
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


def advance(conn: sqlite3.Connection, part: Part, state: PartState, now: int | None = None, **fields: object) -> Part:
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
            "WHERE dataset = ? AND hour_us = ? AND part = ? AND state != ?",
            (*fields.values(), now_us(), part.dataset, part.hour_us, part.part, PartState.ARCHIVED.value),
        )
    got = get_part(conn, part.dataset, part.hour_us, part.part)
    assert got is not None
    return got


def elsewhere(conn: sqlite3.Connection, hour_us: int, location: str) -> list[Part]:
    """The hour's parts recorded at another archive location than ``location`` (unknown ones excluded)."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM export_parts WHERE hour_us = ? AND location IS NOT NULL AND location != ? "
        "ORDER BY dataset, part",
        (hour_us, location),
    ).fetchall()
    return [Part(*r) for r in rows]


def relocate(conn: sqlite3.Connection, hour_us: int, location: str) -> int:
    """Record ``location`` for every part of the hour recorded elsewhere (its objects were found
    there, verified); returns how many parts moved. States and object facts stay as they are."""
    with transaction(conn):
        return conn.execute(
            "UPDATE export_parts SET location = ?, updated_us = ? "
            "WHERE hour_us = ? AND location IS NOT NULL AND location != ?",
            (location, now_us(), hour_us, location),
        ).rowcount


def buffer_rows(conn: sqlite3.Connection, part: Part) -> int:
    """How many buffer rows belong to the part (its id range, within its hour)."""
    return reads.count_rows(conn, part.dataset, part.rows_range)


def late_hours(conn: sqlite3.Connection, before_us: int) -> list[tuple[int, str]]:
    """Hours ending at or before ``before_us`` that have parts and rows beyond them in some dataset.

    Returns ``(hour_us, high-water mark)`` pairs, the mark naming each late dataset's buffer
    max id (``trade=812,depth_update=90331``): the sensor's work list and run keys.
    (REST snapshots are not in ``buffer_hours``; they come with diff-depth rows, which are.)
    """
    rows = conn.execute(
        "SELECT b.hour_us, b.dataset, b.max_id FROM buffer_hours b "
        "JOIN (SELECT DISTINCT hour_us FROM export_parts) h ON h.hour_us = b.hour_us "
        "LEFT JOIN (SELECT dataset, hour_us, max(id_hi) AS hi FROM export_parts GROUP BY dataset, hour_us) p "
        "ON p.hour_us = b.hour_us AND p.dataset = b.dataset "
        "WHERE b.max_id > coalesce(p.hi, 0) AND b.hour_us + ? <= ? ORDER BY b.hour_us, b.dataset",
        (HOUR_US, before_us),
    ).fetchall()
    marks: dict[int, list[str]] = {}
    for hour_us, dataset, max_id in rows:
        marks.setdefault(hour_us, []).append(f"{dataset}={max_id}")
    return [(hour_us, ",".join(m)) for hour_us, m in marks.items()]


# ---- is the archive keeping up? (the one definition; freshness checks and metrics read it) ----


#: Stream datasets whose rows are messages received over a connection (REST snapshots are our requests).
MESSAGE_DATASETS = tuple(name for name, spec in kinds.SPECS.items() if spec.ordered_id is not None)


class Progress(NamedTuple):
    """How far the archive has come on one buffer."""

    newest_archived_hour: int | None  # start (µs) of the newest hour with an archived part
    oldest_buffered_hour: int | None  # start (µs) of the oldest hour the buffer holds rows of


def newest_message_us(conn: sqlite3.Connection) -> int | None:
    """The receive time of the newest acknowledged message of any stream dataset (ids only grow,
    so each dataset's row with the highest id)."""
    newest = [conn.execute(f"SELECT recv_us FROM {d} ORDER BY id DESC LIMIT 1").fetchone() for d in MESSAGE_DATASETS]
    times = [r[0] for r in newest if r is not None]
    return max(times) if times else None


def unarchived_hours(conn: sqlite3.Connection, ended_before_us: int) -> list[int]:
    """Starts (µs) of the hours that ended at or before ``ended_before_us`` and still hold rows of
    some archived dataset beyond that dataset's archived parts."""
    return [h for (h,) in conn.execute(
        f"SELECT DISTINCT b.hour_us FROM buffer_hours b WHERE b.dataset IN ({', '.join('?' * len(DATASETS))}) "
        "AND b.rows > 0 AND b.hour_us + ? <= ? AND b.max_id > "
        "coalesce((SELECT max(p.id_hi) FROM export_parts p WHERE p.dataset = b.dataset AND p.hour_us = b.hour_us "
        "AND p.state = ?), -1) ORDER BY b.hour_us",
        (*DATASETS, HOUR_US, ended_before_us, PartState.ARCHIVED),
    )]


def progress(conn: sqlite3.Connection) -> Progress:
    newest = conn.execute("SELECT max(hour_us) FROM export_parts WHERE state = ?", (PartState.ARCHIVED,)).fetchone()[0]
    oldest = conn.execute("SELECT min(hour_us) FROM buffer_hours").fetchone()[0]
    return Progress(newest, oldest)
