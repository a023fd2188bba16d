"""``orderbook export``: rows written a second, and peak memory, on a generated day.

Input: a generated archive (local folder, the datasets' own schemas, one Parquet file an hour):
one BTCUSDT-like spot ``depth@100ms`` stream (``--events`` an hour, 5..30 changed levels a side
per event, a third of them deletes, on a 0.01 tick grid around 65,000 with a drifting mid), a
REST snapshot of 1,000 levels a side just before the day, and ``--trades`` trades an hour.

Each format is exported in a child process (``orderbook export`` itself); printed: wall time,
rows written (CSV rows, or hftbacktest events), rows a second, and the child's peak RSS. Run
with ``--hours 6`` and ``--hours 24``: a bounded export has the same peak for both.

Usage: python benchmarks/backtest_export.py [--hours 24] [--events 36000] [--trades 20000] [--seed 1]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orderbook_core.buffer.hours import HOUR_US, hour_folder  # noqa: E402
from orderbook_core.buffer.levels import LEVEL, LEVELS  # noqa: E402

from orderbook_assets.archive import datasets  # noqa: E402

DAY = "2026-12-01"
T0 = 1_796_083_200_000_000
TICK = 0.01
STREAM = "btcusdt@depth@100ms"


def levels(prices: np.ndarray, qtys: np.ndarray, counts: np.ndarray) -> pa.ListArray:
    offsets = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    values = pa.StructArray.from_arrays([pa.array(prices), pa.array(qtys)], fields=list(LEVEL))
    return pa.ListArray.from_arrays(pa.array(offsets), values).cast(LEVELS)


def side(rng, n_events: int, mids: np.ndarray, sign: float) -> tuple[pa.ListArray, int]:
    counts = rng.integers(5, 31, n_events)
    total = int(counts.sum())
    mid = np.repeat(mids, counts)
    ticks = rng.integers(1, 400, total)
    prices = np.round(mid + sign * ticks * TICK, 2)
    qtys = np.round(rng.uniform(0.001, 3.0, total), 3)
    qtys[rng.random(total) < 1 / 3] = 0.0
    return levels(prices, qtys, counts), total


def generate(root: Path, hours: int, events: int, trades: int, seed: int) -> int:
    """Write the archive; returns the diff levels written."""
    rng = np.random.default_rng(seed)
    ts = pa.timestamp("us", tz="UTC")
    mid = 65_000.0
    snap_bids = np.round(mid - np.arange(1, 1001) * TICK, 2)
    snap_asks = np.round(mid + np.arange(1, 1001) * TICK, 2)
    rest = pa.table({
        "market": ["spot"], "symbol": ["BTCUSDT"], "stream": [STREAM],
        "recv_time": pa.array([T0 - 1_000_000], pa.int64()).cast(ts),
        "session_id": pa.array([None], pa.int64()), "seq": pa.array([None], pa.int64()),
        "last_update_id": [1_000],
        "bids": levels(snap_bids, np.full(1000, 1.0), np.array([1000])),
        "asks": levels(snap_asks, np.full(1000, 1.0), np.array([1000])),
        "reason": ["connect"], "event_time": pa.array([None], ts), "transaction_time": pa.array([None], ts),
    }).cast(datasets.DATASETS["depth_rest_snapshot"].schema)
    path = root / "depth_rest_snapshot" / hour_folder(T0 - HOUR_US) / "part.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(rest, path)
    u = 1_000
    total_levels = 0
    for h in range(hours):
        start = T0 + h * HOUR_US
        recv = start + np.sort(rng.integers(0, HOUR_US, events))
        mids = mid + np.cumsum(rng.normal(0, 0.5, events))
        mid = float(mids[-1])
        bids, nb = side(rng, events, mids, -1.0)
        asks, na = side(rng, events, mids, 1.0)
        total_levels += nb + na
        ids = np.arange(u + 1, u + 1 + events)
        u += events
        n = events
        upd = pa.table({
            "market": ["spot"] * n, "symbol": ["BTCUSDT"] * n, "stream": [STREAM] * n,
            "recv_time": pa.array(recv).cast(ts), "session_id": np.ones(n, np.int64),
            "seq": np.arange(n, dtype=np.int64), "event_time": pa.array(recv - 1_000).cast(ts),
            "transaction_time": pa.nulls(n, ts), "first_update_id": ids, "last_update_id": ids,
            "prev_update_id": pa.nulls(n, pa.int64()), "bids": bids, "asks": asks,
        }).cast(datasets.DATASETS["depth_update"].schema)
        path = root / "depth_update" / hour_folder(start) / "part.parquet"
        path.parent.mkdir(parents=True)
        pq.write_table(upd, path)
        trecv = start + np.sort(rng.integers(0, HOUR_US, trades))
        tr = pa.table({
            "market": ["spot"] * trades, "symbol": ["BTCUSDT"] * trades, "stream": ["btcusdt@trade"] * trades,
            "recv_time": pa.array(trecv).cast(ts), "session_id": np.ones(trades, np.int64),
            "seq": np.arange(trades, dtype=np.int64), "event_time": pa.array(trecv - 2_000).cast(ts),
            "trade_time": pa.array(trecv - 3_000).cast(ts),
            "trade_id": np.arange(h * trades, (h + 1) * trades, dtype=np.int64),
            "price": np.round(mid + rng.normal(0, 1, trades), 2), "qty": np.round(rng.uniform(0.001, 1, trades), 3),
            "is_buyer_maker": rng.random(trades) < 0.5,
        }).cast(datasets.DATASETS["trade"].schema)
        path = root / "trade" / hour_folder(start) / "part.parquet"
        path.parent.mkdir(parents=True)
        pq.write_table(tr, path)
    return total_levels


CHILD = ("import resource, sys; from orderbook_assets.analytics.query import main; rc = main(); "
         "print('peak_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)")


def run(archive: Path, out: Path, fmt: str) -> tuple[float, int, float]:
    t = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-c", CHILD, "export", "--format", fmt, "--date", DAY, "--archive", str(archive), "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    wall = time.perf_counter() - t
    if res.returncode:
        raise SystemExit(res.stderr)
    rows = sum(int(line.rsplit(": ", 1)[1].split()[0]) for line in res.stdout.splitlines() if line.endswith(" rows"))
    peak = int(res.stderr.rsplit("peak_kib ", 1)[1].split()[0])
    return wall, rows, peak / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hours", type=int, default=24)
    p.add_argument("--events", type=int, default=36_000, help="diff events an hour (depth@100ms: 36,000)")
    p.add_argument("--trades", type=int, default=20_000, help="trades an hour")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "archive"
        t = time.perf_counter()
        n_levels = generate(archive, args.hours, args.events, args.trades, args.seed)
        print(f"generated {args.hours} h: {args.hours * args.events:,} diff events ({n_levels:,} levels), "
              f"{args.hours * args.trades:,} trades in {time.perf_counter() - t:.1f} s")
        for fmt in ("tardis", "hftbacktest"):
            wall, rows, peak = run(archive, Path(tmp) / fmt, fmt)
            print(f"{fmt:12s} {wall:7.1f} s  {rows:>12,} rows  {rows / wall:>10,.0f} rows/s  "
                  f"peak RSS {peak:,.0f} MiB")


if __name__ == "__main__":
    main()
