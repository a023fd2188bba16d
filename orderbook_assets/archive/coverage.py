"""The ``coverage`` dataset: sessions and gaps per archived part, without Dagster.

One Parquet object per depth part, beside it:
``coverage/date=YYYY-MM-DD/hour=HH/part-NNNN-<id_lo>-<id_hi>.parquet``. Two kinds of rows
(column ``record``): ``session`` (one per connection session overlapping the hour) and
``gap`` (one per interval of more than 5 cadences without a message of a stream, found
in the rows archived by the same run). Schema and usage: docs/datasets.md.

Session counters (duplicates, quarantined, lost, close) are a snapshot taken when the
part is exported, so unlike depth parts a coverage object is not a pure function of its
rows: the first one stored for a part wins, and a re-run that finds it keeps it.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from orderbook_collector.buffer import HOUR_US

from orderbook_collector.fsutil import fsync_dir, sha256_file

from orderbook_assets.archive.export import WRITER_OPTIONS
from orderbook_assets.archive.datasets import COVERAGE_SCHEMA, TS  # noqa: F401
from orderbook_assets.archive.ledger import Part
from orderbook_assets.archive.quality import Gap



def session_rows(conn: sqlite3.Connection, hour_us: int) -> list[tuple]:
    """Sessions overlapping the hour: (session_id, opened, closed, reason, duplicates, quarantined, lost)."""
    return conn.execute(
        "SELECT session_id, opened_us, closed_us, close_reason, duplicates, quarantined, lost FROM sessions "
        "WHERE opened_us < ? AND (closed_us IS NULL OR closed_us >= ?) ORDER BY session_id",
        (hour_us + HOUR_US, hour_us),
    ).fetchall()


def per_session_stats(con: duckdb.DuckDBPyConnection) -> dict[int, tuple]:
    """session_id → (first_us, last_us, messages, min_seq, max_seq) over the step's ``books``."""
    rows = con.execute(
        "SELECT session_id, epoch_us(min(recv_time)), epoch_us(max(recv_time)), count(*), min(seq), max(seq) "
        "FROM books GROUP BY session_id"
    ).fetchall()
    return {r[0]: r[1:] for r in rows}


def build_table(
    part: Part,
    sessions: list[tuple],
    stats: dict[int, tuple],
    gaps: list[Gap],
) -> pa.Table:
    """The coverage rows of a part, in a fixed order (sessions by id, then gaps by stream and start)."""
    cols: dict[str, list] = {f.name: [] for f in COVERAGE_SCHEMA}

    def add(**values: object) -> None:
        for name in cols:
            cols[name].append(values.get(name))

    common = dict(hour_start=part.hour_us, part=part.part, as_of=part.planned_us)
    for sid, opened, closed, reason, dups, quar, lost in sessions:
        first, last, messages, min_seq, max_seq = stats.get(sid, (None, None, 0, None, None))
        start = max(opened, part.hour_us)
        end = min(closed if closed is not None else part.planned_us, part.hour_us + HOUR_US)
        add(record="session", session_id=sid, start_time=opened, end_time=closed,
            seconds=max(0, end - start) / 1e6, first_recv_time=first, last_recv_time=last,
            messages=messages, min_seq=min_seq, max_seq=max_seq, duplicates=dups, quarantined=quar,
            lost=lost, close_reason=reason, **common)
    for stream, lo, hi in sorted(gaps):
        add(record="gap", stream=stream, start_time=lo, end_time=hi, seconds=(hi - lo) / 1e6, **common)
    return pa.Table.from_pydict(cols, schema=COVERAGE_SCHEMA)


def gaps_of(table: pa.Table) -> list[Gap]:
    """The gaps a coverage object records, back as typed data."""
    g = table.filter(pc.equal(table["record"], "gap"))
    return [
        Gap(stream, lo, hi)
        for stream, lo, hi in zip(
            g["stream"].to_pylist(),
            g["start_time"].cast(pa.int64()).to_pylist(),
            g["end_time"].cast(pa.int64()).to_pylist(),
        )
    ]


def write_table(table: pa.Table, path: Path) -> tuple[int, str]:
    """Write coverage Parquet atomically (temp, fsync, rename); return (size, sha256)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    options = dict(WRITER_OPTIONS, use_dictionary=["record", "stream", "close_reason"])
    with open(tmp, "wb") as f:
        pq.write_table(table, f, **options)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return sha256_file(path)
