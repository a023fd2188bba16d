"""Data-quality checks of archived depth parts, in DuckDB, without Dagster.

Each check reads the verified Parquet files of the parts being archived and returns a
:class:`CheckResult` with a count and a few examples. ERROR checks block marking the
parts archived; WARN checks are reported only.

========================  ========  =====================================================
check                     severity  fails when
========================  ========  =====================================================
``no_duplicates``         ERROR     a (stream, last_update_id) or (session_id, seq) repeats
``no_seq_gaps``           ERROR     a seq is missing inside a session and neither a
                                    recorded duplicate, a quarantined frame nor another
                                    buffer row of the hour explains it
``update_id_monotonic``   ERROR     last_update_id goes backwards within a session+stream
``coverage_gaps``         WARN      no message of a stream for more than 5 cadences (computed
                                    once by the coverage step, which stores the gaps)
``books_sane``            WARN      a book is crossed (best bid >= best ask) or a side unsorted
``rows_reconciled``       ERROR     the archived rows differ from the buffer's rows of the part
========================  ========  =====================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import NamedTuple

import duckdb
import pyarrow as pa

from orderbook_assets.archive.datasets import DEPTH_SCHEMA

class Severity(str, Enum):
    """ERROR blocks marking the hour archived; WARN is reported and does not."""

    ERROR = "ERROR"
    WARN = "WARN"


ERROR, WARN = Severity.ERROR, Severity.WARN
GAP_CADENCES = 5
EXAMPLES = 5

#: The checks of the depth parts (run by the check step, on the verified parts).
CHECKS = {
    "no_duplicates": ERROR,
    "no_seq_gaps": ERROR,
    "update_id_monotonic": ERROR,
    "books_sane": WARN,
    "rows_reconciled": ERROR,
}
#: The checks of the hour's coverage (computed once by the coverage step, which stores them).
COVERAGE_CHECKS = {"coverage_gaps": WARN}


class Gap(NamedTuple):
    """A stream silent for more than :data:`GAP_CADENCES` cadences, in µs."""

    stream: str
    start_us: int
    end_us: int


@dataclass
class CheckResult:
    name: str
    severity: Severity
    passed: bool
    count: int
    examples: list[dict] = field(default_factory=list)
    detail: dict = field(default_factory=dict)


def cadence_us(stream: str) -> int:
    """Nominal interval of a stream from its name: ``@100ms`` → 100 ms, else 1 s."""
    return 100_000 if stream.endswith("@100ms") else 1_000_000


def _iso(value: object) -> object:
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat()
    return value


def _rows(cur: duckdb.DuckDBPyConnection) -> list[dict]:
    names = [d[0] for d in cur.description]
    return [{n: _iso(v) for n, v in zip(names, row)} for row in cur.fetchall()]


def connect(paths: list[str], explained: pa.Table | None = None, earlier: list[str] = ()) -> duckdb.DuckDBPyConnection:
    """One DuckDB connection for a step: view ``books`` over the files, ``earlier`` over the
    hour's parts archived by earlier runs, and table ``explained`` (session_id, seq) of seqs
    accounted for outside the books."""
    con = duckdb.connect()
    for name, files in (("books", paths), ("earlier", earlier)):
        if files:
            con.read_parquet(list(files)).create_view(name)
        else:
            con.register(name, DEPTH_SCHEMA.empty_table())
    if explained is None:
        explained = pa.table({"session_id": pa.array([], pa.int64()), "seq": pa.array([], pa.int64())})
    con.register("explained_arrow", explained)
    con.execute("CREATE TABLE explained AS SELECT DISTINCT session_id, seq FROM explained_arrow")
    return con


def duplicates(con: duckdb.DuckDBPyConnection) -> CheckResult:
    by_uid = _rows(con.execute(
        "SELECT stream, last_update_id, count(*) AS n FROM books GROUP BY ALL HAVING n > 1 ORDER BY ALL"
    ))
    by_seq = _rows(con.execute(
        "SELECT session_id, seq, count(*) AS n FROM books GROUP BY ALL HAVING n > 1 ORDER BY ALL"
    ))
    count = sum(r["n"] - 1 for r in by_uid) + sum(r["n"] - 1 for r in by_seq)
    return CheckResult("no_duplicates", ERROR, count == 0, count, (by_uid + by_seq)[:EXAMPLES],
                       {"by_update_id": len(by_uid), "by_session_seq": len(by_seq)})


def seq_gaps(con: duckdb.DuckDBPyConnection) -> CheckResult:
    gaps = _rows(con.execute(
        """
        WITH s AS (
            SELECT session_id, seq, lead(seq) OVER (PARTITION BY session_id ORDER BY seq) AS nxt FROM books
        ), g AS (
            SELECT session_id, seq + 1 AS first_missing, nxt - 1 AS last_missing FROM s WHERE nxt > seq + 1
        )
        SELECT g.session_id, g.first_missing, g.last_missing,
               g.last_missing - g.first_missing + 1
                 - (SELECT count(*) FROM explained e
                    WHERE e.session_id = g.session_id AND e.seq BETWEEN g.first_missing AND g.last_missing)
                 AS unexplained
        FROM g ORDER BY g.session_id, g.first_missing
        """
    ))
    bad = [g for g in gaps if g["unexplained"] > 0]
    count = sum(g["unexplained"] for g in bad)
    return CheckResult("no_seq_gaps", ERROR, count == 0, count, bad[:EXAMPLES],
                       {"gaps": len(gaps), "explained_gaps": len(gaps) - len(bad)})


def update_id_backwards(con: duckdb.DuckDBPyConnection) -> CheckResult:
    rows = _rows(con.execute(
        """
        SELECT session_id, stream, seq, recv_time, last_update_id, prev_update_id FROM (
            SELECT *, lag(last_update_id) OVER (PARTITION BY session_id, stream ORDER BY seq) AS prev_update_id
            FROM books)
        WHERE last_update_id < prev_update_id ORDER BY session_id, stream, seq
        """
    ))
    return CheckResult("update_id_monotonic", ERROR, not rows, len(rows), rows[:EXAMPLES])


def find_gaps(con: duckdb.DuckDBPyConnection, window: tuple[int, int]) -> list[Gap]:
    """Intervals longer than 5 cadences without a message, per stream, inside ``window``
    (µs; the hour, cut at the time the newest part was planned when the hour is still open).

    A stream's silence is measured from its last receive time in ``earlier`` (the hour's
    parts archived by earlier runs), else from the window's start.
    """
    lo, hi = window
    rows = con.execute(
        f"""
        WITH t AS (SELECT stream, epoch_us(recv_time) AS us FROM books),
        s AS (SELECT stream, max(epoch_us(recv_time)) AS us FROM earlier GROUP BY stream),
        streams AS (SELECT DISTINCT stream FROM t UNION SELECT stream FROM s),
        edges AS (
            SELECT stream, us FROM t
            UNION ALL SELECT st.stream, coalesce(s.us, {lo}) FROM streams st LEFT JOIN s USING (stream)
            UNION ALL SELECT stream, {hi} FROM streams
        ),
        d AS (
            SELECT stream, us AS gap_start_us, lead(us) OVER (PARTITION BY stream ORDER BY us) AS gap_end_us,
                   CASE WHEN stream LIKE '%@100ms' THEN 100000 ELSE 1000000 END AS cadence_us
            FROM edges
        )
        SELECT stream, gap_start_us, gap_end_us
        FROM d WHERE gap_end_us - gap_start_us > {GAP_CADENCES} * cadence_us
        ORDER BY stream, gap_start_us
        """
    ).fetchall()
    return [Gap(*r) for r in rows]


def gaps_result(gaps: list[Gap]) -> CheckResult:
    """The ``coverage_gaps`` check of an hour's gaps (WARN: an outage is data, not an error)."""
    intervals = [
        {"stream": g.stream, "gap_start": _iso(_ts(g.start_us)), "gap_end": _iso(_ts(g.end_us)),
         "seconds": (g.end_us - g.start_us) / 1e6}
        for g in gaps
    ]
    return CheckResult("coverage_gaps", WARN, not gaps, len(gaps), intervals[:EXAMPLES], {"intervals": intervals})


def _ts(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc)


def books_sane(con: duckdb.DuckDBPyConnection) -> CheckResult:
    rows = _rows(con.execute(
        """
        WITH b AS (
            SELECT stream, session_id, seq, recv_time,
                   len(bids) > 0 AND len(asks) > 0 AND bids[1].price >= asks[1].price AS crossed,
                   list_transform(bids, lambda x: x.price) <> list_sort(list_transform(bids, lambda x: x.price), 'DESC')
                   OR list_transform(asks, lambda x: x.price) <> list_sort(list_transform(asks, lambda x: x.price), 'ASC')
                     AS unsorted,
                   bids[1].price AS best_bid, asks[1].price AS best_ask
            FROM books
        )
        SELECT * FROM b WHERE crossed OR unsorted ORDER BY stream, session_id, seq
        """
    ))
    crossed = sum(1 for r in rows if r["crossed"])
    unsorted = sum(1 for r in rows if r["unsorted"])
    return CheckResult("books_sane", WARN, not rows, len(rows), rows[:EXAMPLES],
                       {"crossed": crossed, "unsorted": unsorted})


def reconciled(con: duckdb.DuckDBPyConnection, buffer_rows: int, archived_rows: dict[str, int]) -> CheckResult:
    """Rows DuckDB reads from the parts vs the buffer's rows for the same id ranges."""
    read = con.execute("SELECT count(*) FROM books").fetchone()[0]
    recorded = sum(archived_rows.values())
    ok = read == buffer_rows == recorded
    diff = abs(read - buffer_rows) + abs(recorded - buffer_rows)
    return CheckResult("rows_reconciled", ERROR, ok, diff, [] if ok else [
        {"parquet_rows": read, "buffer_rows": buffer_rows, "ledger_rows": recorded}
    ], {"parquet_rows": read, "buffer_rows": buffer_rows, "parts": archived_rows})


def run_all(
    paths: list[str],
    *,
    buffer_rows: int,
    archived_rows: dict[str, int],
    explained: pa.Table | None = None,
) -> list[CheckResult]:
    con = connect(paths, explained)
    try:
        return [
            duplicates(con),
            seq_gaps(con),
            update_id_backwards(con),
            books_sane(con),
            reconciled(con, buffer_rows, archived_rows),
        ]
    finally:
        con.close()
