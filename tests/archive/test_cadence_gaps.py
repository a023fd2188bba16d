"""Coverage gaps are judged against each stream's cadence as the kernel knows it
(orderbook_core.streams), market by market: an unsuffixed ``depth`` is 1000 ms on spot and
250 ms on USD-M, so the same 2 s silence is a gap on one market and not on the other."""

from __future__ import annotations

import duckdb
import pyarrow as pa

from orderbook_assets.archive import quality
from orderbook_assets.archive.datasets import TS

S = 1_000_000
LO = 1_700_000_000 * S


def gaps(rows: list[tuple[str, str, int]], window: tuple[int, int]) -> list[quality.Gap]:
    """find_gaps over ``rows`` (market, stream, recv µs), nothing archived earlier."""
    books = pa.table({"market": pa.array([r[0] for r in rows], pa.string()),
                      "stream": pa.array([r[1] for r in rows], pa.string()),
                      "recv_time": pa.array([r[2] for r in rows], TS)})
    con = duckdb.connect()
    try:
        con.register("books", books)
        con.register("earlier", books.schema.empty_table())
        return quality.find_gaps(con, window)
    finally:
        con.close()


def steady(market: str, stream: str, start_us: int, end_us: int, every_us: int) -> list[tuple[str, str, int]]:
    return [(market, stream, t) for t in range(start_us, end_us, every_us)]


def test_a_2_s_silence_of_an_unsuffixed_depth_stream_is_a_gap_on_usdm_not_on_spot():
    silent = (LO + 3 * S, LO + 5 * S)  # 2 s without a message on both markets
    rows = []
    for market, every in (("usdm", 250_000), ("spot", S)):
        rows += steady(market, "btcusdt@depth", LO, silent[0] + 1, every)
        rows += steady(market, "btcusdt@depth", silent[1], LO + 8 * S, every)
    found = gaps(rows, (LO, LO + 8 * S))
    # USD-M: 5 cadences are 1.25 s; spot: 5 s
    assert found == [quality.Gap("btcusdt@depth", silent[0], silent[1], "usdm")]


def test_the_cadence_table_comes_from_the_kernel():
    table = quality.cadences([("spot", "btcusdt@depth"), ("usdm", "btcusdt@depth"), ("usdm", "ethusdt@depth20@500ms"),
                              ("spot", "btcusdt@depth20@100ms"), ("spot", "btcusdt@trade"), ("spot", "btcusdt@depth@250ms"),
                              ("coinm", "btcusd_perp@depth"), ("optn", "btcusd_perp@depth")])
    # trades are event-driven; spot has no 250 ms depth; COIN-M depth is USD-M's; "optn" is no market
    assert table.to_pylist() == [
        {"market": "spot", "stream": "btcusdt@depth", "cadence_us": 1_000_000},
        {"market": "usdm", "stream": "btcusdt@depth", "cadence_us": 250_000},
        {"market": "usdm", "stream": "ethusdt@depth20@500ms", "cadence_us": 500_000},
        {"market": "spot", "stream": "btcusdt@depth20@100ms", "cadence_us": 100_000},
        {"market": "coinm", "stream": "btcusd_perp@depth", "cadence_us": 250_000},
    ]
