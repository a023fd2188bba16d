"""The hour's checks scale with the hour, and say exactly what the quadratic queries said.

``no_seq_gaps`` and ``trade_id_continuity`` were correlated subqueries: a count (or sum) per gap
over the explained seqs (recorded trade gaps) of its session (stream). In a session carrying
several kinds every other seq of one dataset belongs to another, so an hour had a gap per row
and an explained seq per gap: the check grew with the square of the hour (issue 22). The old
queries are kept here, verbatim, as the oracle the linear ones are compared with on literal
hours and on seeded random ones; a scaling test times both sizes n and 8n.
"""

from __future__ import annotations

import random
import time

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from orderbook_assets.archive import datasets as ds
from orderbook_assets.archive import quality

#: The queries before issue 22, as they ran (the oracle).
OLD_SEQ_GAPS_SQL = """
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
OLD_TRADE_GAPS_SQL = """
WITH s AS (
    SELECT market, stream, {uid} AS id, lag({uid}) OVER (PARTITION BY market, stream ORDER BY {uid}) AS prev
    FROM books
), g AS (
    SELECT market, stream, prev + 1 AS first_missing, id - 1 AS last_missing FROM s WHERE id > prev + 1
)
SELECT g.*, g.last_missing - g.first_missing + 1 - coalesce((
    SELECT sum(least(t.last_missing_id, g.last_missing) - greatest(t.first_missing_id, g.first_missing) + 1)
    FROM trade_gaps t
    WHERE t.dataset = '{dataset}' AND t.market = g.market AND t.stream = g.stream
      AND t.first_missing_id <= g.last_missing AND t.last_missing_id >= g.first_missing), 0) AS unexplained
FROM g ORDER BY market, stream, first_missing
"""


def _books(tmp_path, rows: list[tuple], name: str = "books") -> list[str]:
    """A Parquet file of (market, stream, session_id, seq, trade_id) rows, as the check step reads parts."""
    cols = list(zip(*rows)) if rows else [[]] * 5
    table = pa.table({"market": pa.array(cols[0], pa.string()), "stream": pa.array(cols[1], pa.string()),
                      "session_id": pa.array(cols[2], pa.int64()), "seq": pa.array(cols[3], pa.int64()),
                      "trade_id": pa.array(cols[4], pa.int64())})
    path = tmp_path / f"{name}.parquet"
    pq.write_table(table, path)
    return [str(path)]


def _explained(pairs: list[tuple[int | None, int | None]]) -> pa.Table:
    return pa.table({"session_id": pa.array([p[0] for p in pairs], pa.int64()),
                     "seq": pa.array([p[1] for p in pairs], pa.int64())})


def _trade_gaps(rows: list[tuple]) -> pa.Table:
    return pa.Table.from_pylist([dict(market=m, stream=s, dataset=d, first_missing_id=lo, last_missing_id=hi)
                                 for m, s, d, lo, hi in rows], schema=quality.TRADE_GAPS)


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple]:
    return [tuple(r) for r in con.execute(sql).fetchall()]


def old_result(con: duckdb.DuckDBPyConnection, name: str, sql: str, detail: dict[str, str]) -> quality.CheckResult:
    """The check's result as the old code built it from every gap row."""
    gaps = quality._rows(con.execute(sql))
    bad = [g for g in gaps if g["unexplained"] > 0]
    count = sum(g["unexplained"] for g in bad)
    return quality.CheckResult(name, quality.ERROR, count == 0, count, bad[:quality.EXAMPLES],
                               {detail["all"]: len(gaps), detail["explained"]: len(gaps) - len(bad)})


def both_seq_gaps(paths, explained) -> tuple[list[tuple], list[tuple], quality.CheckResult]:
    """(old rows, new rows, the check's result), having asserted the result equals the old one's."""
    con = quality.connect(paths, explained, schema=ds.TRADE_SCHEMA)
    try:
        result = quality.seq_gaps(con)
        assert result == old_result(con, "no_seq_gaps", OLD_SEQ_GAPS_SQL, {"all": "gaps", "explained": "explained_gaps"})
        return _rows(con, OLD_SEQ_GAPS_SQL), _rows(con, quality.SEQ_GAPS_SQL), result
    finally:
        con.close()


def both_trade_gaps(paths, gaps, dataset=ds.TRADE) -> tuple[list[tuple], list[tuple], quality.CheckResult]:
    d = ds.DATASETS[dataset]
    con = quality.connect(paths, schema=d.schema, trade_gaps=gaps)
    try:
        old_sql = OLD_TRADE_GAPS_SQL.format(uid="trade_id", dataset=dataset)
        result = quality.trade_id_continuity(con, d)
        expected = old_result(con, "trade_id_continuity", old_sql, {"all": "id_gaps", "explained": "recorded_gaps"})
        expected.detail["id_column"] = "trade_id"
        assert result == expected
        return _rows(con, old_sql), _rows(con, quality.TRADE_GAPS_SQL.format(uid="trade_id", dataset=dataset)), result
    finally:
        con.close()


# --------------------------------------------------------------------------- literal hours


def interleaved_session(session: int, kinds: list[str], n: int, skip: set[int] = frozenset(), seq0: int = 0):
    """(market, stream, session, seq, id) rows of one session carrying ``kinds`` in turn: the
    frame with seq k belongs to kind k mod len(kinds); seqs in ``skip`` were never stored."""
    rows = []
    for k in range(n):
        if seq0 + k in skip:
            continue
        kind = kinds[k % len(kinds)]
        rows.append(("spot", f"btcusdt@{kind}", session, seq0 + k, 1000 + k))
    return rows


def test_seq_gaps_of_interleaved_kinds_and_restarting_sessions_equal_the_old_query(tmp_path):
    """Session 7 carries depth, trades and bookTicker in turn, then restarts as session 8 (seq
    from 0 again). The trade dataset's gaps are the other kinds' seqs (explained), plus seq 10
    (a trade, lost, unexplained), seq 16-20 (explained except 19), and a gap before the restart
    that must not borrow session 8's explained seqs."""
    s7 = interleaved_session(7, ["depth@100ms", "trade", "bookTicker"], 30, skip={10, 16, 19})
    s8 = interleaved_session(8, ["depth@100ms", "trade", "bookTicker"], 12)
    trades = [r for r in s7 + s8 if r[1].endswith("@trade")]
    others = [(r[2], r[3]) for r in s7 + s8 if not r[1].endswith("@trade")]
    # seq 16 (a dropped duplicate) explained; 19 (a depth frame) lost with no trace
    explained = [p for p in others if p != (7, 18)] + [(7, 16), (7, 18), (7, 18), (8, 999), (9, 5)]
    old, new, result = both_seq_gaps(_books(tmp_path, trades), _explained(explained))
    assert new == old
    # literal: the gaps of the trade rows (seqs 1, 4, 7, 13, 22, 25, 28 of session 7; 1, 4, 7, 10 of 8)
    assert old == [
        (7, 2, 3, 0), (7, 5, 6, 0), (7, 8, 12, 1), (7, 14, 21, 1), (7, 23, 24, 0), (7, 26, 27, 0),
        (8, 2, 3, 0), (8, 5, 6, 0), (8, 8, 9, 0),
    ]
    assert (result.passed, result.count, result.detail) == (False, 2, {"gaps": 9, "explained_gaps": 7})


def test_seq_gaps_edges_equal_the_old_query(tmp_path):
    """Explained seqs equal to a stored seq, before the first and after the last, duplicated
    stored seqs, rows without a session or seq, a session with no explained seq at all."""
    books = [("spot", "a@trade", 1, s, s) for s in (3, 5, 5, 9, 10, 14)] + \
            [("spot", "a@trade", None, 1, 1), ("spot", "a@trade", None, 4, 2), ("spot", "a@trade", 2, None, 3),
             ("spot", "a@trade", 3, 0, 4), ("spot", "a@trade", 3, 5, 5)]
    explained = [(1, 1), (1, 3), (1, 4), (1, 5), (1, 7), (1, 12), (1, 13), (1, 20), (None, 2), (None, 3), (2, 1)]
    old, new, _ = both_seq_gaps(_books(tmp_path, books), _explained(explained))
    assert new == old
    assert old == [(1, 4, 4, 0), (1, 6, 8, 2), (1, 11, 13, 1), (3, 1, 4, 4), (None, 2, 3, 2)]


def test_seq_gaps_of_random_hours_equal_the_old_query(tmp_path):
    rng = random.Random(22)
    seen: set[str] = set()
    for case in range(25):
        books, explained = [], []
        for session in range(rng.randint(1, 3)):
            for seq in range(rng.randint(0, 60)):
                r = rng.random()
                if r < 0.45:
                    books.append(("spot", "x@trade", session, seq, seq))
                    if rng.random() < 0.05:  # a duplicate stored twice
                        books.append(("spot", "x@trade", session, seq, seq))
                elif r < 0.85:
                    explained.append((session, seq))
                if rng.random() < 0.05:  # explained twice, or explaining a stored seq
                    explained.append((session, seq))
        old, new, _ = both_seq_gaps(_books(tmp_path, books, f"b{case}"), _explained(explained))
        assert new == old, case
        seen.update("explained" if g[3] == 0 else "unexplained" for g in old)
    # the cases compared gaps of both sorts, not only empty lists
    assert seen == {"explained", "unexplained"}


def test_trade_id_continuity_equals_the_old_query_on_recorded_gaps(tmp_path):
    """Two streams and two markets: id gaps recorded exactly, partly, by several overlapping
    rows, by a row spanning two id gaps, by another dataset's row (not counted), by a row of
    the other market (not counted), and not at all."""
    ids = [1, 2, 3, 10, 11, 20, 30, 31, 40, 41, 50]
    books = [("spot", "btcusdt@trade", 1, k, t) for k, t in enumerate(ids)] + \
            [("usdm", "btcusdt@trade", 2, k, t) for k, t in enumerate([5, 9, 12])] + \
            [("spot", "ethusdt@trade", 1, 100 + k, t) for k, t in enumerate([7, 8, 12, 13, 20])]
    gaps = _trade_gaps([
        ("spot", "btcusdt@trade", "trade", 4, 9),      # exactly 4-9
        ("spot", "btcusdt@trade", "trade", 12, 15),    # part of 12-19
        ("spot", "btcusdt@trade", "trade", 14, 19),    # overlaps the one before: counted twice, as before
        ("spot", "btcusdt@trade", "trade", 21, 45),    # spans 21-29, 32-39 and 42-49 (and stored ids)
        ("spot", "btcusdt@trade", "agg_trade", 21, 29),  # another dataset's
        ("spot", "ethusdt@trade", "trade", 9, 11),     # exactly
        ("usdm", "ethusdt@trade", "trade", 14, 19),    # the other market's
        ("spot", "ethusdt@trade", "trade", 100, 200),  # no id gap there
    ])
    old, new, result = both_trade_gaps(_books(tmp_path, books), gaps)
    assert new == old
    assert old == [
        ("spot", "btcusdt@trade", 4, 9, 0), ("spot", "btcusdt@trade", 12, 19, -2),
        ("spot", "btcusdt@trade", 21, 29, 0), ("spot", "btcusdt@trade", 32, 39, 0),
        ("spot", "btcusdt@trade", 42, 49, 4),
        ("spot", "ethusdt@trade", 9, 11, 0), ("spot", "ethusdt@trade", 14, 19, 6),
        ("usdm", "btcusdt@trade", 6, 8, 3), ("usdm", "btcusdt@trade", 10, 11, 2),
    ]
    assert (result.passed, result.count) == (False, 15)


def test_trade_id_continuity_of_random_hours_equals_the_old_query(tmp_path):
    rng = random.Random(7)
    seen: set[str] = set()
    for case in range(25):
        books, recorded = [], []
        for stream in ("a@trade", "b@trade"):
            tid = rng.randint(0, 5)
            for k in range(rng.randint(0, 50)):
                step = 1 if rng.random() < 0.6 else rng.randint(2, 6)
                if step > 1 and rng.random() < 0.7:  # a recorded gap, sometimes off by a little
                    lo, hi = tid + 1 + rng.randint(-1, 1), tid + step - 1 + rng.randint(-1, 1)
                    if lo <= hi:
                        recorded.append(("spot", stream, "trade", lo, hi))
                tid += step
                books.append(("spot", stream, 1, k, tid))
            for _ in range(rng.randint(0, 3)):  # recorded gaps anywhere
                lo = rng.randint(0, tid + 5)
                recorded.append(("spot", stream, rng.choice(["trade", "agg_trade"]), lo, lo + rng.randint(0, 8)))
        old, new, _ = both_trade_gaps(_books(tmp_path, books, f"t{case}"), _trade_gaps(recorded))
        assert new == old, case
        seen.update("explained" if g[4] == 0 else "unexplained" for g in old)
    # the cases compared id gaps of both sorts, not only empty lists
    assert seen == {"explained", "unexplained"}


# --------------------------------------------------------------------------- scaling


def soak_hour(tmp_path, n: int, name: str) -> tuple[list[str], pa.Table, pa.Table]:
    """``n`` trade rows of the soak's shape: two sessions (the connection restarted halfway),
    each carrying 128 trade streams and as many diff streams in turn, so every other seq of
    the trades is a gap a diff row explains; and in each trade stream every other id missing,
    each recorded by a ``trade_gap`` row."""
    k = pc.cast(pa.array(range(n)), pa.int64())
    first_half = pc.less(k, n // 2)
    session = pc.if_else(first_half, 1, 2)
    seq = pc.multiply(pc.subtract(k, pc.if_else(first_half, 0, n // 2)), 2)  # from 0 again after the restart
    stream = pc.binary_join_element_wise("s", pc.cast(pc.bit_wise_and(k, 127), pa.string()), "@trade", "")
    within = pc.shift_right(k, 7)  # the row's rank in its stream
    table = pa.table({"market": pa.array(["spot"] * n, pa.string()), "stream": stream, "session_id": session,
                      "seq": seq, "recv_time": pc.cast(pc.multiply(k, 1000), pa.timestamp("us", tz="UTC")),
                      "trade_id": pc.add(pc.multiply(within, 2), 1)})
    path = tmp_path / f"{name}.parquet"
    pq.write_table(table, path)
    explained = pa.table({"session_id": session, "seq": pc.add(seq, 1)})
    missing = pc.multiply(pc.add(within, 1), 2)
    recorded = pa.table({"market": table["market"], "stream": stream, "dataset": pa.array(["trade"] * n, pa.string()),
                         "first_missing_id": missing, "last_missing_id": missing})
    return [str(path)], explained, recorded.cast(quality.TRADE_GAPS)


def check_seconds(paths, explained, recorded) -> float:
    """The best of three runs of every check of the trade dataset (the machine is shared)."""
    rows = pq.read_metadata(paths[0]).num_rows
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        results = quality.run_all(paths, buffer_rows=rows, archived_rows={"part-0001": rows}, explained=explained,
                                  dataset=ds.TRADE, trade_gaps=recorded)
        best = min(best, time.perf_counter() - t0)
        assert [r.name for r in results if not r.passed] == []
        by_name = {r.name: r for r in results}
        assert by_name["no_seq_gaps"].detail["gaps"] == rows - 2  # a gap per row, each explained
        assert by_name["trade_id_continuity"].detail["recorded_gaps"] == rows - 128  # one per id but the first
    return best


def test_checks_scale_with_the_hour_not_its_square(tmp_path):
    """8 times the rows take well under 20 times as long (a quadratic check takes 64 times:
    the former queries took 27 times as long here, on a loaded machine, and 60-80 when quiet)."""
    n = 15_000
    small = check_seconds(*soak_hour(tmp_path, n, "small"))
    large = check_seconds(*soak_hour(tmp_path, 8 * n, "large"))
    assert large / small < 20, (small, large)
