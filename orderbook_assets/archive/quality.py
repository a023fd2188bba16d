"""Data-quality checks of archived parts of every stream dataset, in DuckDB, without Dagster.

Each check reads the verified Parquet files of the parts of one dataset being archived and
returns a :class:`CheckResult` with a count and a few examples. ERROR checks block marking
the parts archived; WARN checks are reported only. Which checks a dataset has: :data:`CHECKS`.

==========================  ========  =====================================================
check                       severity  fails when
==========================  ========  =====================================================
``no_duplicates``           ERROR     a dedup key (market, stream and the dataset's id; REST
                                      snapshots: market, symbol, last_update_id) or a
                                      (session_id, seq) repeats
``no_seq_gaps``             ERROR     a seq is missing inside a session and neither a
                                      recorded duplicate, a quarantined frame, another
                                      dataset's row nor another buffer row of the hour
                                      explains it
``update_id_monotonic``     ERROR     the dataset's update (or trade) id goes backwards
                                      within a session and stream
``depth_continuity``        ERROR     diff depth: an event does not continue the stream's
                                      previous one (spot ``U != u + 1``, USD-M
                                      ``pu != u``) and no ``depth_sync`` 'break' row
                                      records it
``trade_id_continuity``     ERROR     trade/aggTrade: ids skipped that no ``trade_gap`` row
                                      records
``coverage_gaps``           WARN      no depth message of a stream for more than 5 cadences
                                      (computed once by the coverage step, which stores them)
``books_sane``              WARN      a book is crossed (best bid >= best ask) or a side
                                      unsorted; bookTicker: crossed
``values_finite``           ERROR     mark price / liquidation: a price, quantity or funding
                                      rate is NaN or infinite (the collector refuses them:
                                      one here means the buffer or the export broke it)
``mark_near_mid``           WARN      a mark price further than :data:`MARK_MID_TOLERANCE`
                                      from the mid of the same market and symbol's latest
                                      bookTicker (within :data:`MARK_MID_WITHIN_US` before it)
``rows_reconciled``         ERROR     the archived rows differ from the buffer's rows of the part
==========================  ========  =====================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import NamedTuple

import duckdb
import pyarrow as pa

from orderbook_core import continuity
from orderbook_core.streams import EVENT_DRIVEN, Market, parse_stream_name
from orderbook_assets.archive import datasets as ds


_MARKETS = {m.value for m in Market}


class Severity(str, Enum):
    """ERROR blocks marking the hour archived; WARN is reported and does not."""

    ERROR = "ERROR"
    WARN = "WARN"


ERROR, WARN = Severity.ERROR, Severity.WARN
GAP_CADENCES = 5
EXAMPLES = 5

_BASE = {"no_duplicates": ERROR, "no_seq_gaps": ERROR, "update_id_monotonic": ERROR}
#: The checks of each dataset's parts (run by the check step, on the verified parts).
CHECKS: dict[str, dict[str, Severity]] = {
    ds.DEPTH: {**_BASE, "books_sane": WARN, "rows_reconciled": ERROR},
    ds.DEPTH_UPDATE: {**_BASE, "depth_continuity": ERROR, "rows_reconciled": ERROR},
    ds.DEPTH_REST: {"no_duplicates": ERROR, "books_sane": WARN, "rows_reconciled": ERROR},
    ds.TRADE: {**_BASE, "trade_id_continuity": ERROR, "rows_reconciled": ERROR},
    ds.AGG_TRADE: {**_BASE, "trade_id_continuity": ERROR, "rows_reconciled": ERROR},
    ds.BOOK_TICKER: {**_BASE, "books_sane": WARN, "rows_reconciled": ERROR},
    ds.MARK_PRICE: {**_BASE, "values_finite": ERROR, "mark_near_mid": WARN, "rows_reconciled": ERROR},
    ds.LIQUIDATION: {**_BASE, "values_finite": ERROR, "rows_reconciled": ERROR},
    ds.OPEN_INTEREST: {"no_duplicates": ERROR, "open_interest_sane": ERROR, "rows_reconciled": ERROR},
}
#: The float columns of each dataset that must be finite (nulls allowed where the column is).
FINITE = {
    ds.MARK_PRICE: ("mark_price", "index_price", "estimated_settle_price", "funding_rate"),
    ds.LIQUIDATION: ("orig_qty", "price", "avg_price", "last_filled_qty", "filled_accum_qty"),
}
#: How far a mark price may sit from the book's mid before ``mark_near_mid`` warns, as a
#: fraction of the mid. The mark price follows the contract's own price (index plus a decaying
#: premium, Binance "Mark Price" FAQ): a few per mille normally, a percent in a squeeze; 5 %
#: is a value from another symbol or a broken feed, not a market.
MARK_MID_TOLERANCE = 0.05
#: The bookTicker a mark price is compared with is the latest of its market and symbol at most
#: this long before it (µs): an older one says nothing about the book now.
MARK_MID_WITHIN_US = 5_000_000
#: The checks of the hour's coverage (computed once by the coverage step, which stores them).
COVERAGE_CHECKS = {"coverage_gaps": WARN}
#: The datasets whose silences are gaps (periodic depth and mark-price streams; trades,
#: bookTicker and liquidations are event-driven: a quiet market is not a gap, the sessions say
#: whether we were connected). Each stream's cadence comes from the kernel (:func:`cadences`).
GAP_DATASETS = (ds.DEPTH, ds.DEPTH_UPDATE, ds.MARK_PRICE)

#: The recorded continuity events the checks match against (from the buffer's ``depth_sync``
#: and ``trade_gap``, streams named as in the archive).
SYNC_BREAKS = pa.schema([("market", pa.string()), ("stream", pa.string()), ("session_id", pa.int64()),
                         ("after_last_update_id", pa.int64())])
TRADE_GAPS = pa.schema([("market", pa.string()), ("stream", pa.string()), ("dataset", pa.string()),
                        ("first_missing_id", pa.int64()), ("last_missing_id", pa.int64())])


class Gap(NamedTuple):
    """A stream silent for more than :data:`GAP_CADENCES` cadences, in µs."""

    stream: str
    start_us: int
    end_us: int
    market: str = "spot"


@dataclass
class CheckResult:
    name: str
    severity: Severity
    passed: bool
    count: int
    examples: list[dict] = field(default_factory=list)
    detail: dict = field(default_factory=dict)


def cadences(streams: list[tuple[str, str]]) -> pa.Table:
    """(market, stream, cadence_us) of each (market, stream name), from the kernel's facts
    (:mod:`orderbook_core.streams`: an unsuffixed ``depth`` is 1000 ms on spot, 250 ms on USD-M).
    A name the kernel does not know on its market, or an event-driven stream, gets no row:
    it has no nominal cadence to be silent against."""
    rows = []
    for market, stream in streams:
        s = parse_stream_name(stream, Market(market)) if market in _MARKETS else None
        if s is not None and s.cadence_us != EVENT_DRIVEN:
            rows.append((market, stream, s.cadence_us))
    return pa.table({"market": pa.array([r[0] for r in rows], pa.string()),
                     "stream": pa.array([r[1] for r in rows], pa.string()),
                     "cadence_us": pa.array([r[2] for r in rows], pa.int64())})


def _iso(value: object) -> object:
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat()
    return value


def _rows(cur: duckdb.DuckDBPyConnection) -> list[dict]:
    names = [d[0] for d in cur.description]
    return [{n: _iso(v) for n, v in zip(names, row)} for row in cur.fetchall()]


def connect(paths: list[str], explained: pa.Table | None = None, earlier: list[str] = (), *,
            schema: pa.Schema, breaks: pa.Table | None = None,
            trade_gaps: pa.Table | None = None) -> duckdb.DuckDBPyConnection:
    """One DuckDB connection for a step: view ``books`` over the files, ``earlier`` over the
    hour's parts archived by earlier runs, table ``explained`` (session_id, seq) of seqs
    accounted for outside the books, and the recorded ``breaks`` and ``trade_gaps``.

    Files are read by column name: parts written under an older schema (``depth_snapshot``
    version 1 has no ``market``) read with nulls for the columns they lack.
    """
    con = duckdb.connect()
    for name, files in (("books", paths), ("earlier", earlier)):
        if files:
            con.read_parquet(list(files), union_by_name=True).create_view(f"{name}_files")
            have = {r[0] for r in con.execute(f"DESCRIBE {name}_files").fetchall()}
            # Parts of depth_snapshot schema version 1 predate USD-M: every one of them is spot.
            market = "* REPLACE (coalesce(market, 'spot') AS market)" if "market" in have else "'spot' AS market, *"
            con.execute(f"CREATE VIEW {name} AS SELECT {market} FROM {name}_files")
        else:
            con.register(name, schema.empty_table())
    if explained is None:
        explained = pa.table({"session_id": pa.array([], pa.int64()), "seq": pa.array([], pa.int64())})
    con.register("explained_arrow", explained)
    con.execute("CREATE TABLE explained AS SELECT DISTINCT session_id, seq FROM explained_arrow")
    con.register("breaks", SYNC_BREAKS.empty_table() if breaks is None else breaks)
    con.register("trade_gaps", TRADE_GAPS.empty_table() if trade_gaps is None else trade_gaps)
    return con


def duplicates(con: duckdb.DuckDBPyConnection, dataset: ds.Dataset) -> CheckResult:
    key = ", ".join(dataset.dedup)
    by_key = _rows(con.execute(f"SELECT {key}, count(*) AS n FROM books GROUP BY ALL HAVING n > 1 ORDER BY ALL"))
    by_seq = _rows(con.execute(
        "SELECT session_id, seq, count(*) AS n FROM books WHERE session_id IS NOT NULL "
        "GROUP BY ALL HAVING n > 1 ORDER BY ALL"
    ))
    count = sum(r["n"] - 1 for r in by_key) + sum(r["n"] - 1 for r in by_seq)
    return CheckResult("no_duplicates", ERROR, count == 0, count, (by_key + by_seq)[:EXAMPLES],
                       {"dedup_key": list(dataset.dedup), "by_dedup_key": len(by_key), "by_session_seq": len(by_seq)})


#: Seq gaps within a session and the explained seqs inside each, in one sorted pass: the
#: session's book seqs and explained seqs are merged in seq order, each explained seq takes the
#: book seq at or before it (a running max), and a gap's explained seqs are those whose book
#: seq before is the gap's start. A correlated count per gap was quadratic when every other seq
#: of a session belongs to another dataset (a gap per row, an explained seq per gap).
SEQ_GAPS_SQL = """
WITH s AS (
    SELECT session_id, seq, lead(seq) OVER (PARTITION BY session_id ORDER BY seq) AS nxt FROM books
), g AS (
    SELECT session_id, seq + 1 AS first_missing, nxt - 1 AS last_missing FROM s WHERE nxt > seq + 1
), marks AS (
    SELECT session_id, seq, true AS book FROM books WHERE session_id IS NOT NULL AND seq IS NOT NULL
    UNION ALL
    SELECT session_id, seq, false FROM explained WHERE session_id IS NOT NULL AND seq IS NOT NULL
), placed AS (
    -- a book row sorts before an explained row of the same seq: that seq is no gap's
    SELECT session_id, seq, book,
           max(CASE WHEN book THEN seq END) OVER (PARTITION BY session_id ORDER BY seq, book DESC
                                                  ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS book_before
    FROM marks
), inside AS (
    SELECT session_id, book_before + 1 AS first_missing, count(*) AS n
    FROM placed WHERE NOT book AND book_before < seq GROUP BY ALL
)
SELECT g.session_id, g.first_missing, g.last_missing,
       g.last_missing - g.first_missing + 1 - coalesce(i.n, 0) AS unexplained
FROM g LEFT JOIN inside i ON i.session_id = g.session_id AND i.first_missing = g.first_missing
ORDER BY g.session_id, g.first_missing
"""


def _gap_totals(con: duckdb.DuckDBPyConnection, sql: str, order: str) -> tuple[int, int, int, list[dict]]:
    """(gaps, gaps with unexplained ids, unexplained ids, the first of those gaps in ``order``)
    of a gaps query with column ``unexplained``, counted in DuckDB: an hour can have a gap per
    row (explained), and only the unexplained ones are worth bringing into Python."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE gap_rows AS {sql}")
    try:
        total, bad, count = con.execute(
            "SELECT count(*), count(*) FILTER (unexplained > 0), "
            "coalesce(sum(unexplained) FILTER (unexplained > 0), 0) FROM gap_rows").fetchone()
        examples = _rows(con.execute(f"SELECT * FROM gap_rows WHERE unexplained > 0 ORDER BY {order} LIMIT {EXAMPLES}"))
    finally:
        con.execute("DROP TABLE gap_rows")
    return total, bad, int(count), examples


def seq_gaps(con: duckdb.DuckDBPyConnection) -> CheckResult:
    total, bad, count, examples = _gap_totals(con, SEQ_GAPS_SQL, "session_id, first_missing")
    return CheckResult("no_seq_gaps", ERROR, count == 0, count, examples,
                       {"gaps": total, "explained_gaps": total - bad})


def update_id_backwards(con: duckdb.DuckDBPyConnection, dataset: ds.Dataset) -> CheckResult:
    uid = dataset.ordered_id
    rows = _rows(con.execute(
        f"""
        SELECT session_id, stream, seq, recv_time, {uid}, prev_id FROM (
            SELECT *, lag({uid}) OVER (PARTITION BY session_id, market, stream ORDER BY seq) AS prev_id
            FROM books)
        WHERE {uid} < prev_id ORDER BY session_id, stream, seq
        """
    ))
    return CheckResult("update_id_monotonic", ERROR, not rows, len(rows), rows[:EXAMPLES], {"id_column": uid})


def depth_continuity(con: duckdb.DuckDBPyConnection) -> CheckResult:
    """Diff-depth events that do not continue their stream's previous event (by update id, over
    every session: overlapping sessions store each event once) and that no recorded 'break'
    (same stream, first new event) accounts for."""
    rows = _rows(con.execute(
        f"""
        WITH s AS (
            SELECT market, stream, session_id, seq, recv_time, first_update_id, last_update_id, prev_update_id,
                   lag(last_update_id) OVER (PARTITION BY market, stream ORDER BY last_update_id) AS previous_u
            FROM books
        )
        SELECT * FROM s
        WHERE previous_u IS NOT NULL
          AND {continuity.break_sql()}
          AND NOT EXISTS (SELECT 1 FROM breaks b WHERE b.market = s.market AND b.stream = s.stream
                          AND b.after_last_update_id = s.last_update_id)
        ORDER BY market, stream, last_update_id
        """
    ))
    recorded = con.execute("SELECT count(*) FROM breaks").fetchone()[0]
    return CheckResult("depth_continuity", ERROR, not rows, len(rows), rows[:EXAMPLES], {"recorded_breaks": recorded})


#: Trade-id gaps per stream and how many of their ids the recorded ``trade_gap`` rows cover
#: (summed over the recorded gaps, each counted for its overlap), without pairing every id gap
#: with every recorded gap of its stream: with F(x) the recorded gaps' ids at or below x,
#: counted once per recorded gap, a gap [a, b] has F(b) - F(a - 1) of them, and
#: F(x) = sum over recorded gaps with first <= x of (x - first + 1), minus the sum over those
#: with last < x of (x - last). Both sums are running counts and sums over the recorded gaps
#: sorted by first (and by last), looked up with ASOF joins: n log n in the hour's rows. A row
#: with first > last covers nothing (the collector never writes one).
TRADE_GAPS_SQL = """
WITH s AS (
    SELECT market, stream, {uid} AS id, lag({uid}) OVER (PARTITION BY market, stream ORDER BY {uid}) AS prev
    FROM books
), g AS (
    SELECT market, stream, prev + 1 AS first_missing, id - 1 AS last_missing FROM s WHERE id > prev + 1
), t AS (
    SELECT market, stream, first_missing_id AS lo, last_missing_id AS hi FROM trade_gaps
    WHERE dataset = '{dataset}' AND first_missing_id <= last_missing_id
), by_lo AS (  -- recorded gaps starting at or below k: how many, and the sum of their starts
    SELECT market, stream, k, sum(n) OVER w AS n, sum(total) OVER w AS total
    FROM (SELECT market, stream, lo AS k, count(*) AS n, sum(lo) AS total FROM t GROUP BY ALL)
    WINDOW w AS (PARTITION BY market, stream ORDER BY k ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
), by_hi AS (  -- recorded gaps ending at or below k
    SELECT market, stream, k, sum(n) OVER w AS n, sum(total) OVER w AS total
    FROM (SELECT market, stream, hi AS k, count(*) AS n, sum(hi) AS total FROM t GROUP BY ALL)
    WINDOW w AS (PARTITION BY market, stream ORDER BY k ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
), ends AS (  -- each id gap's two points x: its last id, and the id before its first
    SELECT market, stream, first_missing, last_missing, last_missing AS x, 1 AS sign FROM g
    UNION ALL SELECT market, stream, first_missing, last_missing, first_missing - 1, -1 FROM g
), f AS (
    SELECT e.market, e.stream, e.first_missing, e.last_missing,
           e.sign * (coalesce(l.n, 0) * (e.x + 1) - coalesce(l.total, 0)
                     - (coalesce(h.n, 0) * e.x - coalesce(h.total, 0))) AS covered
    FROM ends e
    ASOF LEFT JOIN by_lo l ON l.market = e.market AND l.stream = e.stream AND e.x >= l.k
    ASOF LEFT JOIN by_hi h ON h.market = e.market AND h.stream = e.stream AND e.x - 1 >= h.k
)
SELECT market, stream, first_missing, last_missing, last_missing - first_missing + 1 - sum(covered) AS unexplained
FROM f GROUP BY market, stream, first_missing, last_missing ORDER BY market, stream, first_missing
"""


def trade_id_continuity(con: duckdb.DuckDBPyConnection, dataset: ds.Dataset) -> CheckResult:
    """Trade (or aggTrade) ids skipped within a stream that no recorded ``trade_gap`` covers."""
    uid = dataset.ordered_id
    total, bad, count, examples = _gap_totals(con, TRADE_GAPS_SQL.format(uid=uid, dataset=dataset.name),
                                              "market, stream, first_missing")
    return CheckResult("trade_id_continuity", ERROR, count == 0, count, examples,
                       {"id_gaps": total, "recorded_gaps": total - bad, "id_column": uid})


def find_gaps(con: duckdb.DuckDBPyConnection, window: tuple[int, int]) -> list[Gap]:
    """Intervals longer than 5 cadences without a message, per stream, inside ``window``
    (µs; the hour, cut at the time the newest part was planned when the hour is still open).

    A stream's silence is measured from its last receive time in ``earlier`` (the hour's
    parts archived by earlier runs), else from the window's start. Each stream's cadence is
    the kernel's (:func:`cadences`), joined in as a table.
    """
    lo, hi = window
    con.execute(
        """
        CREATE OR REPLACE TEMP VIEW gap_streams AS
        SELECT DISTINCT coalesce(market, 'spot') AS market, stream FROM books
        UNION SELECT coalesce(market, 'spot'), stream FROM earlier
        """
    )
    con.register("gap_cadences", cadences(con.execute("SELECT market, stream FROM gap_streams").fetchall()))
    rows = con.execute(
        f"""
        WITH t AS (SELECT coalesce(market, 'spot') AS market, stream, epoch_us(recv_time) AS us FROM books),
        s AS (SELECT coalesce(market, 'spot') AS market, stream, max(epoch_us(recv_time)) AS us
              FROM earlier GROUP BY ALL),
        edges AS (
            SELECT market, stream, us FROM t
            UNION ALL SELECT st.market, st.stream, coalesce(s.us, {lo}) FROM gap_streams st LEFT JOIN s USING (market, stream)
            UNION ALL SELECT market, stream, {hi} FROM gap_streams
        ),
        d AS (
            SELECT market, stream, us AS gap_start_us,
                   lead(us) OVER (PARTITION BY market, stream ORDER BY us) AS gap_end_us
            FROM edges
        )
        SELECT stream, gap_start_us, gap_end_us, market
        FROM d JOIN gap_cadences c USING (market, stream)
        WHERE gap_end_us - gap_start_us > {GAP_CADENCES} * c.cadence_us
        ORDER BY stream, gap_start_us, market
        """
    ).fetchall()
    con.unregister("gap_cadences")
    con.execute("DROP VIEW gap_streams")
    return [Gap(*r) for r in rows]


def gaps_result(gaps: list[Gap]) -> CheckResult:
    """The ``coverage_gaps`` check of an hour's gaps (WARN: an outage is data, not an error)."""
    intervals = [
        {"market": g.market, "stream": g.stream, "gap_start": _iso(_ts(g.start_us)), "gap_end": _iso(_ts(g.end_us)),
         "seconds": (g.end_us - g.start_us) / 1e6}
        for g in gaps
    ]
    return CheckResult("coverage_gaps", WARN, not gaps, len(gaps), intervals[:EXAMPLES], {"intervals": intervals})


def _ts(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc)


def books_sane(con: duckdb.DuckDBPyConnection, dataset: ds.Dataset) -> CheckResult:
    if dataset.has_levels:
        sql = """
        WITH b AS (
            SELECT stream, session_id, seq, recv_time,
                   len(bids) > 0 AND len(asks) > 0 AND bids[1].price >= asks[1].price AS crossed,
                   list_transform(bids, lambda x: x.price) <> list_sort(list_transform(bids, lambda x: x.price), 'DESC')
                   OR list_transform(asks, lambda x: x.price) <> list_sort(list_transform(asks, lambda x: x.price), 'ASC')
                     AS unsorted,
                   bids[1].price AS best_bid, asks[1].price AS best_ask
            FROM books
        )
        SELECT * FROM b WHERE crossed OR unsorted ORDER BY stream, session_id, seq, recv_time
        """
    else:  # bookTicker: one level a side
        sql = """
        SELECT stream, session_id, seq, recv_time, best_bid >= best_ask AS crossed, false AS unsorted,
               best_bid, best_ask
        FROM books WHERE best_bid >= best_ask ORDER BY stream, session_id, seq
        """
    rows = _rows(con.execute(sql))
    crossed = sum(1 for r in rows if r["crossed"])
    unsorted = sum(1 for r in rows if r["unsorted"])
    return CheckResult("books_sane", WARN, not rows, len(rows), rows[:EXAMPLES],
                       {"crossed": crossed, "unsorted": unsorted})


def values_finite(con: duckdb.DuckDBPyConnection, dataset: str) -> CheckResult:
    cols = FINITE[dataset]
    bad = " OR ".join(f"NOT isfinite({c})" for c in cols)  # null is not a failure: isfinite(null) is null
    rows = _rows(con.execute(
        f"SELECT market, stream, session_id, seq, recv_time, {', '.join(cols)} FROM books WHERE {bad} "
        "ORDER BY market, stream, seq"))
    return CheckResult("values_finite", ERROR, not rows, len(rows), rows[:EXAMPLES], {"columns": list(cols)})


def mark_near_mid(con: duckdb.DuckDBPyConnection) -> CheckResult:
    """Mark prices further than :data:`MARK_MID_TOLERANCE` from the mid of the latest bookTicker
    of the same market and symbol (at most :data:`MARK_MID_WITHIN_US` older); a mark price with
    no such bookTicker is not compared (the detail counts those compared). Counted in DuckDB:
    only the examples come back (an hour of ``markPrice@1s`` under ``*`` is millions of rows)."""
    con.execute(
        f"""
        CREATE OR REPLACE TEMP VIEW mark_vs_mid AS
        WITH m AS (SELECT market, symbol, stream, session_id, seq, recv_time, mark_price FROM books),
        j AS (
            SELECT m.*, t.recv_time AS ticker_time, (t.best_bid + t.best_ask) / 2 AS mid
            FROM m ASOF LEFT JOIN mids t
              ON m.market = t.market AND m.symbol = t.symbol AND m.recv_time >= t.recv_time
        )
        SELECT *, abs(mark_price - mid) / mid AS distance FROM j
        WHERE mid > 0 AND epoch_us(recv_time) - epoch_us(ticker_time) <= {MARK_MID_WITHIN_US}
        """
    )
    compared, n_bad = con.execute(
        f"SELECT count(*), count(*) FILTER (WHERE distance > {MARK_MID_TOLERANCE}) FROM mark_vs_mid").fetchone()
    bad = _rows(con.execute(
        f"SELECT * FROM mark_vs_mid WHERE distance > {MARK_MID_TOLERANCE} "
        f"ORDER BY distance DESC, market, stream, seq LIMIT {EXAMPLES}"))
    return CheckResult("mark_near_mid", WARN, n_bad == 0, n_bad, bad,
                       {"compared": compared, "tolerance": MARK_MID_TOLERANCE})


def open_interest_sane(con: duckdb.DuckDBPyConnection) -> CheckResult:
    """Open interest is a count of open contracts: never negative, never NaN or infinite (the
    collector refuses such answers; a row that has one was not written by it)."""
    rows = _rows(con.execute(
        "SELECT market, symbol, recv_time, time, open_interest FROM books "
        "WHERE NOT isfinite(open_interest) OR open_interest < 0 ORDER BY market, symbol, recv_time"))
    return CheckResult("open_interest_sane", ERROR, not rows, len(rows), rows[:EXAMPLES], {})


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
    dataset: str,
    breaks: pa.Table | None = None,
    trade_gaps: pa.Table | None = None,
    mids: list[str] = (),
) -> list[CheckResult]:
    """Every check of ``dataset`` (:data:`CHECKS`) over the files, in that order; ``mids`` are the
    hour's bookTicker files the mark prices are compared with."""
    d = ds.DATASETS[dataset]
    con = connect(paths, explained, schema=d.schema, breaks=breaks, trade_gaps=trade_gaps)
    if "mark_near_mid" in CHECKS[dataset]:
        if mids:
            con.read_parquet(list(mids), union_by_name=True).create_view("mids")
        else:
            con.register("mids", ds.BOOK_TICKER_SCHEMA.empty_table())
    run = {
        "no_duplicates": lambda: duplicates(con, d),
        "no_seq_gaps": lambda: seq_gaps(con),
        "update_id_monotonic": lambda: update_id_backwards(con, d),
        "depth_continuity": lambda: depth_continuity(con),
        "trade_id_continuity": lambda: trade_id_continuity(con, d),
        "books_sane": lambda: books_sane(con, d),
        "values_finite": lambda: values_finite(con, dataset),
        "mark_near_mid": lambda: mark_near_mid(con),
        "open_interest_sane": lambda: open_interest_sane(con),
        "rows_reconciled": lambda: reconciled(con, buffer_rows, archived_rows),
    }
    try:
        return [run[name]() for name in CHECKS[dataset]]
    finally:
        con.close()
