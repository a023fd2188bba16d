"""Building ``book_snapshot`` from diff depth: speed against real time, and peak memory.

Input: hours of BTCUSDT-like spot ``depth@100ms`` (36,000 events an hour, 10..90 changed
levels a side per event, a third of them deletes, on a 0.01 tick grid around 65,000 with a
drifting mid) plus one REST snapshot of 5,000 levels a side at the start, as Arrow tables with
the dataset columns. Each hour is built from the previous hour's end state (serialized and
read back, as the archive job will), top 25 every second.

Prints per hour the build time and the ratio real time / build time (target >= 50x), and the
process's peak RSS before and after building (the input tables of one hour are generated
before the first figure, so the difference is the build's own); the baseline is the same
events only read into Python values, without a book.

Usage: python benchmarks/books.py [--hours 1] [--events 36000] [--seed 1]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orderbook_core.buffer.hours import HOUR_US  # noqa: E402
from orderbook_core.buffer.levels import LEVEL, LEVELS, as_arrow  # noqa: E402

from orderbook_assets.books.hour import HourState, Settings, build_hour, event_rows  # noqa: E402

TS = pa.timestamp("us", tz="UTC")
HOUR0 = 1_795_514_400_000_000
TICK = 0.01
STREAM = "btcusdt@depth@100ms"


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _list(prices: np.ndarray, qtys: np.ndarray, counts: np.ndarray) -> pa.ListArray:
    offsets = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    struct = pa.StructArray.from_arrays([as_arrow(prices, pa.float64()), as_arrow(qtys, pa.float64())],
                                        fields=list(LEVEL))
    return pa.ListArray.from_arrays(as_arrow(offsets, pa.int32()), struct, type=LEVELS)


def _side(rng: np.random.Generator, mids: np.ndarray, counts: np.ndarray, bid: bool) -> tuple[np.ndarray, np.ndarray]:
    n = int(counts.sum())
    mid = np.repeat(mids, counts)
    # most changes near the top, a long tail deeper (distance in ticks, geometric-ish)
    dist = np.floor(rng.exponential(120.0, n)).astype(np.int64) + 1
    ticks = np.round(mid / TICK).astype(np.int64) + np.where(bid, -dist, dist)
    prices = np.round(ticks * TICK, 2)
    qty = np.round(rng.exponential(0.4, n), 5) + 0.00001
    qty[rng.random(n) < 1 / 3] = 0.0
    return prices, qty


def make_hour(rng: np.random.Generator, hour_us: int, first_u: int, n: int, mid0: float) -> tuple[pa.Table, int, float]:
    """One hour of diff events (spot ids: U = previous u + 1), its last u and the last mid."""
    steps = rng.integers(1, 40, n)
    u = first_u - 1 + np.cumsum(steps)
    U = u - steps + 1
    mids = mid0 + np.cumsum(rng.normal(0, 0.5, n))
    nb, na = rng.integers(10, 91, n), rng.integers(10, 91, n)
    bp, bq = _side(rng, mids, nb, True)
    ap, aq = _side(rng, mids, na, False)
    recv = hour_us + (np.arange(n) * (HOUR_US // n)) + rng.integers(0, 5_000, n)
    t = pa.table({
        "market": pa.array(["spot"] * n), "symbol": pa.array(["BTCUSDT"] * n), "stream": pa.array([STREAM] * n),
        "recv_time": pa.array(recv, pa.int64()).cast(TS), "session_id": pa.array(np.ones(n, np.int64)),
        "seq": pa.array(np.arange(n, dtype=np.int64)), "event_time": pa.array(recv // 1000 * 1000).cast(TS),
        "transaction_time": pa.nulls(n, TS), "first_update_id": pa.array(U), "last_update_id": pa.array(u),
        "prev_update_id": pa.nulls(n, pa.int64()),
        "bids": _list(bp, bq, nb), "asks": _list(ap, aq, na),
    })
    return t, int(u[-1]), float(mids[-1])


def make_snapshot(rng: np.random.Generator, hour_us: int, lid: int, mid: float, levels: int = 5000) -> pa.Table:
    best = round(mid / TICK)
    bp = np.round((best - 1 - np.arange(levels)) * TICK, 2)
    ap = np.round((best + 1 + np.arange(levels)) * TICK, 2)
    bq, aq = np.round(rng.exponential(0.4, levels), 5) + 0.00001, np.round(rng.exponential(0.4, levels), 5) + 0.00001
    return pa.table({
        "market": ["spot"], "symbol": ["BTCUSDT"], "stream": [STREAM],
        "recv_time": pa.array([hour_us + 2_000_000], pa.int64()).cast(TS), "last_update_id": [lid],
        "bids": _list(bp, bq, np.array([levels])), "asks": _list(ap, aq, np.array([levels])),
        "reason": ["connect"], "event_time": pa.nulls(1, TS), "transaction_time": pa.nulls(1, TS),
    })


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hours", type=int, default=1)
    ap.add_argument("--events", type=int, default=36_000, help="diff events per hour (100 ms: 36,000)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    settings = Settings()  # top 25 every second
    u, mid = 10_000_000_000, 65_000.0
    snap = make_snapshot(rng, HOUR0, u, mid)
    state: HourState | None = None
    print(f"{args.events} events/hour, {settings.depth} levels every {settings.interval_us / 1e6:g} s")
    print("hour  events  levels/event  build_s  x_realtime  rows  state_KiB  rss_before_MiB  rss_peak_MiB")
    worst, best_s, base_s = float("inf"), float("inf"), float("inf")
    for h in range(args.hours):
        hour_us = HOUR0 + h * HOUR_US
        ups, last_u, mid = make_hour(rng, hour_us, u + 1, args.events, mid)
        snaps = snap if h == 0 else snap.slice(0, 0)
        lv = sum(int(pa.compute.sum(pa.compute.list_value_length(ups.column(c))).as_py()) for c in ("bids", "asks"))
        before = rss_mib()
        t0 = time.perf_counter()
        out = build_hour(hour_us, ups, snaps, state, settings)
        blob = out.state.to_bytes()
        state = HourState.from_bytes(blob)
        dt = time.perf_counter() - t0
        known = sum(out.table.column("known").to_pylist())
        assert known > 0.99 * out.table.num_rows, f"only {known} of {out.table.num_rows} points known"
        ratio = (HOUR_US / 1e6) / dt
        worst, best_s = min(worst, ratio), min(best_s, dt)
        t1 = time.perf_counter()  # baseline: the same events only read into Python values, no book
        for _ in event_rows(ups.sort_by([("last_update_id", "ascending")])):
            pass
        base_s = min(base_s, time.perf_counter() - t1)
        print(f"{h:>4}  {ups.num_rows:>6}  {lv / ups.num_rows:>12.1f}  {dt:>7.2f}  {ratio:>10.0f}  "
              f"{out.table.num_rows:>4}  {len(blob) / 1024:>9.0f}  {before:>14.0f}  {rss_mib():>12.0f}")
        u = last_u
        del ups, out
    print(f"worst hour: {worst:.0f}x real time (target >= 50x); peak RSS {rss_mib():.0f} MiB")
    print("figure | target | measured | baseline | ratio")
    print(f"book_snapshot hour, real time / build time (worst hour) | >= 50x | {worst:.0f}x | | ")
    print(f"fastest hour's build | - | {best_s:.2f} s | {base_s:.2f} s (events read, no book) | {best_s / base_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
