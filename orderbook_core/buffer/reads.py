"""Which buffer rows belong where: the rows of a part, and the tail no archived part covers.

A *part* of a dataset's UTC hour is the rows of that dataset's table with
``id_lo < id <= id_hi`` and a receive time inside the hour. Ids are AUTOINCREMENT (never
reused) and the archive fixes a part's id range before exporting it, so the same part
always means the same rows. This module is the one place that says so; the export,
the checks, the cleanup and the analysts' tail all ask it.
"""

from __future__ import annotations

import json
import sqlite3
from typing import NamedTuple, Sequence

from orderbook_core.buffer.hours import HOUR_US
from orderbook_core.buffer.rows import DATASETS as _KEPT_IN_BUFFER_HOURS
from orderbook_core.buffer.schema import PartState

#: The WHERE clause of a part's rows; parameters from :meth:`IdRange.params`.
PART_ROWS = "id > ? AND id <= ? AND recv_us >= ? AND recv_us < ?"


class IdRange(NamedTuple):
    """Rows of one hour with ``id_lo < id <= id_hi`` (half-open, like a part)."""

    hour_us: int
    id_lo: int
    id_hi: int

    def params(self) -> tuple[int, int, int, int]:
        return (self.id_lo, self.id_hi, self.hour_us, self.hour_us + HOUR_US)


def count_rows(conn: sqlite3.Connection, table: str, rng: IdRange) -> int:
    return conn.execute(f"SELECT count(*) FROM {table} WHERE {PART_ROWS}", rng.params()).fetchone()[0]


def has_rows(conn: sqlite3.Connection, table: str, rng: IdRange) -> bool:
    return conn.execute(f"SELECT 1 FROM {table} WHERE {PART_ROWS} LIMIT 1", rng.params()).fetchone() is not None


def streams(conn: sqlite3.Connection) -> list[tuple[int, str, str, str]]:
    """Every registered stream: (stream_id, key, symbol, market); the key is ``StreamSpec.key``
    (the stream name, prefixed ``<market>:`` on markets other than spot)."""
    return conn.execute("SELECT stream_id, name, symbol, market FROM streams").fetchall()


def part_keys(conn: sqlite3.Connection, table: str, rng: IdRange, *, with_session: bool,
              ordered: bool = False) -> list[tuple[int, int, int, int, int]]:
    """(id, stream_id, recv_us, session_id, seq) of the rows of ``rng``: the keys an export sorts by.

    ``with_session`` False (rows with no session: REST snapshots) gives 0 for both session
    columns; ``ordered`` asks SQLite for id order in so many words (without it, the rowid range
    scan returns them in id order too).
    """
    session = "session_id, seq" if with_session else "0, 0"
    order = " ORDER BY id" if ordered else ""
    sql = f"SELECT id, stream_id, recv_us, {session} FROM {table} WHERE {PART_ROWS}{order}"
    return conn.execute(sql, rng.params()).fetchall()


def columns_in_id_range(conn: sqlite3.Connection, table: str, columns: Sequence[str], lo: int, hi: int) -> list[tuple]:
    """``columns`` (buffer columns, or lists of them) of the rows with ``lo <= id <= hi`` (inclusive,
    any hour), in id order."""
    return conn.execute(f"SELECT {', '.join(columns)} FROM {table} WHERE id >= ? AND id <= ?", (lo, hi)).fetchall()


def columns_of_ids(conn: sqlite3.Connection, table: str, columns: Sequence[str], ids: list[int]) -> list[tuple]:
    """``columns`` of the rows with these ids (one statement, a rowid lookup list), in id order;
    ids with no row give nothing."""
    return conn.execute(
        f"SELECT {', '.join(columns)} FROM {table} WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id",
        (json.dumps(ids),),
    ).fetchall()


def session_seqs(conn: sqlite3.Connection, table: str, rng: IdRange) -> list[tuple[int, int]]:
    """(session_id, seq) of the rows of ``rng`` (a table whose rows came over a session)."""
    return conn.execute(f"SELECT session_id, seq FROM {table} WHERE {PART_ROWS}", rng.params()).fetchall()


def hour_bounds(conn: sqlite3.Connection, dataset: str, hour_us: int) -> IdRange | None:
    """All of an hour's rows of a table as one range, or None if it has none.

    From ``buffer_hours`` for the tables the writer keeps there (:data:`rows.DATASETS`); for
    the others (REST snapshots, ``depth_sync``, ``trade_gap``: few rows) from the table itself.
    """
    if dataset in _KEPT_IN_BUFFER_HOURS:
        row = conn.execute(
            "SELECT min_id, max_id FROM buffer_hours WHERE dataset = ? AND hour_us = ?", (dataset, hour_us)
        ).fetchone()
    else:
        row = conn.execute(
            f"SELECT min(id), max(id) FROM {dataset} WHERE recv_us >= ? AND recv_us < ?", (hour_us, hour_us + HOUR_US)
        ).fetchone()
        row = row if row[0] is not None else None
    return IdRange(hour_us, row[0] - 1, row[1]) if row else None


def hours(conn: sqlite3.Connection, dataset: str) -> list[int]:
    """The hours holding rows of a table, in order."""
    if dataset in _KEPT_IN_BUFFER_HOURS:
        sql = "SELECT hour_us FROM buffer_hours WHERE dataset = ? ORDER BY hour_us"
        return [h for (h,) in conn.execute(sql, (dataset,))]
    sql = f"SELECT DISTINCT recv_us - recv_us % {HOUR_US} FROM {dataset} ORDER BY 1"
    return [h for (h,) in conn.execute(sql)]


def gaps_between(whole: IdRange, covered: list[IdRange]) -> list[IdRange]:
    """The parts of ``whole`` that no range in ``covered`` (same hour) holds, in id order."""
    out = []
    lo = whole.id_lo
    for c in sorted(covered, key=lambda r: r.id_lo):
        if c.id_lo > lo:
            out.append(IdRange(whole.hour_us, lo, min(c.id_lo, whole.id_hi)))
        lo = max(lo, c.id_hi)
        if lo >= whole.id_hi:
            break
    if lo < whole.id_hi:
        out.append(IdRange(whole.hour_us, lo, whole.id_hi))
    return [r for r in out if r.id_hi > r.id_lo]


def unarchived(conn: sqlite3.Connection, dataset: str) -> list[IdRange]:
    """Every hour's rows that no *archived* part of ``dataset`` covers, in hour and id order."""
    archived: dict[int, list[IdRange]] = {}
    for hour_us, lo, hi in conn.execute(
        "SELECT hour_us, id_lo, id_hi FROM export_parts WHERE dataset = ? AND state = ?", (dataset, PartState.ARCHIVED)
    ):
        archived.setdefault(hour_us, []).append(IdRange(hour_us, lo, hi))
    out: list[IdRange] = []
    for hour_us in hours(conn, dataset):
        whole = hour_bounds(conn, dataset, hour_us)
        if whole is not None:
            out += gaps_between(whole, archived.get(hour_us, []))
    return out
