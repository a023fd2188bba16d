"""The mark-price and liquidation checks on literal Parquet parts: values finite (ERROR), mark
price near the book's mid (WARN), and a mark-price stream's cadence in the gap rule."""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.parquet as pq

from orderbook_assets.archive import datasets as ds
from orderbook_assets.archive import quality

S = 1_000_000
T0 = 1_795_428_000 * S  # an hour's start


def part(tmp_path, name: str, dataset: str, rows: list[dict]) -> str:
    """A Parquet file of ``dataset`` from ``rows``; the columns a row leaves out get plain values."""
    schema = ds.DATASETS[dataset].schema
    plain = {"market": "usdm", "symbol": "BTCUSDT", "session_id": 1, "event_time": 0, "next_funding_time": None,
             "funding_rate": 0.0001, "trade_time": 0, "update_id": 1, "transaction_time": None}
    cols = {}
    for f in schema:
        values = []
        for i, r in enumerate(rows):
            v = r.get(f.name, plain.get(f.name, i if f.name == "seq" else 1.0 if pa.types.is_floating(f.type) else "X"))
            values.append(T0 + v if pa.types.is_timestamp(f.type) and v is not None else v)
        cols[f.name] = pa.array(values, pa.int64() if pa.types.is_timestamp(f.type) else f.type).cast(f.type)
    path = str(tmp_path / f"{name}.parquet")
    pq.write_table(pa.Table.from_pydict(cols, schema=schema), path)
    return path


def run(paths: list[str], dataset: str, mids: list[str] = ()) -> dict[str, quality.CheckResult]:
    n = sum(pq.read_metadata(p).num_rows for p in paths)
    return {r.name: r for r in quality.run_all(paths, buffer_rows=n, archived_rows={"p": n}, dataset=dataset,
                                               mids=list(mids))}


def mark(t: int, price: float, **kw) -> dict:
    return {"stream": "btcusdt@markPrice@1s", "recv_time": t, "event_time": t, "mark_price": price,
            "index_price": price, "estimated_settle_price": price, **kw}


def ticker(t: int, bid: float, ask: float, market: str = "usdm") -> dict:
    return {"stream": "btcusdt@bookTicker", "market": market, "recv_time": t, "update_id": t, "best_bid": bid,
            "best_ask": ask}


def test_clean_mark_prices_pass_every_check_and_are_compared_with_the_mid(tmp_path):
    marks = part(tmp_path, "m", ds.MARK_PRICE, [mark(S, 100.1), mark(2 * S, 99.9, funding_rate=-0.0003),
                                                mark(3 * S, 100.0, funding_rate=None)])  # a delivery contract: no rate
    mids = part(tmp_path, "t", ds.BOOK_TICKER, [ticker(S // 2, 99.9, 100.1)])
    got = run([marks], ds.MARK_PRICE, [mids])
    assert set(got) == set(quality.CHECKS[ds.MARK_PRICE])
    assert all(r.passed for r in got.values()), {n: r.examples for n, r in got.items() if not r.passed}
    assert got["mark_near_mid"].detail["compared"] == 3


def test_a_funding_rate_or_price_not_finite_fails(tmp_path):
    marks = part(tmp_path, "m", ds.MARK_PRICE, [mark(S, 100.0), mark(2 * S, 100.0, funding_rate=math.nan),
                                                mark(3 * S, 100.0, index_price=math.inf)])
    got = run([marks], ds.MARK_PRICE)["values_finite"]
    assert (got.passed, got.count, got.severity) == (False, 2, quality.ERROR)
    liq = part(tmp_path, "l", ds.LIQUIDATION, [{"stream": "btcusdt@forceOrder", "recv_time": S, "event_time": S,
                                                 "side": "SELL", "avg_price": -math.inf}])
    got = run([liq], ds.LIQUIDATION)["values_finite"]
    assert (got.passed, got.count) == (False, 1)


def test_a_mark_price_far_from_the_mid_warns_and_one_without_a_recent_ticker_is_not_compared(tmp_path):
    marks = part(tmp_path, "m", ds.MARK_PRICE, [
        mark(S, 100.0),  # at the mid
        mark(2 * S, 106.0),  # 6 % away: another symbol's value, a broken feed
        mark(20 * S, 150.0),  # the last bookTicker is 19.5 s older: nothing to compare with
    ])
    mids = part(tmp_path, "t", ds.BOOK_TICKER, [ticker(S // 2, 99.9, 100.1),
                                                ticker(S, 10.0, 10.2, market="spot")])  # spot's book is not USD-M's
    got = run([marks], ds.MARK_PRICE, [mids])["mark_near_mid"]
    assert (got.passed, got.count, got.severity, got.detail["compared"]) == (False, 1, quality.WARN, 2)
    assert got.examples[0]["mark_price"] == 106.0 and abs(got.examples[0]["distance"] - 0.06) < 1e-9


def test_a_mark_price_stream_has_its_cadence_and_a_force_order_stream_none():
    table = quality.cadences([("usdm", "btcusdt@markPrice"), ("usdm", "btcusdt@markPrice@1s"),
                              ("usdm", "btcusdt@forceOrder"), ("spot", "btcusdt@markPrice")])
    assert table.to_pylist() == [{"market": "usdm", "stream": "btcusdt@markPrice", "cadence_us": 3_000_000},
                                 {"market": "usdm", "stream": "btcusdt@markPrice@1s", "cadence_us": 1_000_000}]


def test_the_tolerance_is_5_percent_either_side_and_the_ticker_at_most_5_s_older(tmp_path):
    """The promise at its edges: 4.9 % from the mid (above or below) passes, 5.1 % warns; a
    ticker 5 s older is compared, one 5.1 s older is not. A looser or tighter constant fails here."""
    mid = 100.0
    marks = part(tmp_path, "m", ds.MARK_PRICE, [
        mark(S, mid * 1.049), mark(2 * S, mid * 0.951),  # inside, both sides
        mark(3 * S, mid * 1.051), mark(4 * S, mid * 0.949),  # outside, both sides
    ])
    mids = part(tmp_path, "t", ds.BOOK_TICKER, [ticker(S // 2, 99.9, 100.1)] +
                [ticker(t, 99.9, 100.1) for t in (S + S // 2, 2 * S + S // 2, 3 * S + S // 2)])
    got = run([marks], ds.MARK_PRICE, [mids])["mark_near_mid"]
    assert (got.passed, got.count, got.detail["compared"]) == (False, 2, 4), got
    assert sorted(round(e["mark_price"], 6) for e in got.examples) == [94.9, 105.1]

    window = part(tmp_path, "w", ds.MARK_PRICE, [mark(10 * S, 150.0), mark(10 * S + 100_000, 150.0)])
    one = part(tmp_path, "one", ds.BOOK_TICKER, [ticker(5 * S, 99.9, 100.1)])
    got = run([window], ds.MARK_PRICE, [one])["mark_near_mid"]
    # the first mark is exactly 5 s after the ticker (compared, far: warns); the second 5.1 s (not compared)
    assert (got.passed, got.count, got.detail["compared"]) == (False, 1, 1), got
