"""Sustained ingest of the collector on this machine, with durability on.

Figures (printed as a table; ratios are against baselines measured in the same run):
  1. raw SQLite ceiling: batched INSERT OR IGNORE of the very rows the collector
     stores (same schema, WAL, synchronous=FULL, 2,000-row transactions), no network,
     no parsing: what this disk and SQLite can do at best;
  2. sustained ingest: frames from a separate process as fast as it sends, through the
     whole collector (receive, stamp, queue/spill, decode, commit): messages/s from the
     first frame received to the last one committed;
  3. latency at a paced 5,000 msg/s: receive-to-commit p50/p99 and event-loop lag p99.

Usage: python benchmarks/ingest.py [--count 200000] [--paced-seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from orderbook_core import buffer  # noqa: E402
from orderbook_collector.connection.collector import Collector  # noqa: E402
from orderbook_collector.config import Settings  # noqa: E402
from orderbook_collector.feed.protocol import Decoder, build_streams  # noqa: E402
from orderbook_collector.writer.thread import store_records  # noqa: E402

SYMBOLS = ["btcusdt", "ethusdt", "bnbusdt", "solusdt"]


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def raw_ceiling(n: int, workdir: Path) -> float:
    sys.path.insert(0, str(Path(__file__).parent))
    from blaster import templates

    streams = build_streams(SYMBOLS, ["depth20@100ms"])
    dec = Decoder(streams)
    frames = templates(SYMBOLS)
    recs = []
    for i in range(n):
        head, tail = frames[i % len(frames)]
        recs.append(dec.decode(f"{head}{50_000_000_000 + i}{tail}", 1_795_000_000_000_000 + i * 100, 1, i))
    conn = buffer.connect(workdir / "ceiling.sqlite3", synchronous="FULL")
    ids = buffer.stream_ids(conn, [(s.name, s.symbol, s.kind) for s in streams])
    rows = [(ids[r.stream], r.session_id, r.seq, r.recv_us, r.update_id, r.n_bids, r.levels) for r in recs]
    t0 = time.perf_counter()
    for i in range(0, n, 2000):
        with buffer.transaction(conn):
            conn.executemany(
                "INSERT OR IGNORE INTO depth_snapshot (stream_id, session_id, seq, recv_us, update_id, n_bids, levels) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows[i : i + 2000],
            )
    ceiling = n / (time.perf_counter() - t0)
    # The collector's full batch path on the same records (bookkeeping included), for reference.
    conn2 = buffer.connect(workdir / "ceiling2.sqlite3", synchronous="FULL")
    ids2 = buffer.stream_ids(conn2, [(s.name, s.symbol, s.kind) for s in streams])
    t0 = time.perf_counter()
    for i in range(0, n, 2000):
        store_records(conn2, ids2, recs[i : i + 2000])
    batch_path = n / (time.perf_counter() - t0)
    conn.close()
    conn2.close()
    return ceiling, batch_path


def start_blaster(rate: float, count: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "blaster.py"), "--rate", str(rate), "--count", str(count),
         "--symbols", ",".join(SYMBOLS)],
        stdout=subprocess.PIPE, text=True,
    )
    url = re.search(r"ws://\S+", proc.stdout.readline()).group(0)
    return proc, url


async def run_collector(url: str, path: Path, count: int, observe: bool) -> dict:
    latencies: list[int] = []

    def observer(records, commit_us):
        latencies.extend(commit_us - r.recv_us for r in records)

    settings = Settings(symbols=SYMBOLS, ws_url=url, buffer=path, metrics_port=-1, stall_cadences=10_000)
    c = Collector(settings, commit_observer=observer if observe else None)
    c.metrics.loop_lag_samples = []
    task = asyncio.create_task(c.run())
    t_first = None
    while c.metrics.messages < count:
        if t_first is None and c.metrics.frames > 0:
            t_first = time.perf_counter()
        await asyncio.sleep(0.005)
        if task.done():
            raise RuntimeError("collector stopped early")
    elapsed = time.perf_counter() - t_first
    c.stop("benchmark done")
    await task
    return {
        "rate": count / elapsed,
        "elapsed": elapsed,
        "spilled": c.metrics.spilled_items,
        "lat_p50_ms": pct(latencies, 50) / 1000,
        "lat_p99_ms": pct(latencies, 99) / 1000,
        "lag_p99_ms": pct(c.metrics.loop_lag_samples, 99) * 1000,
        "lag_max_ms": max(c.metrics.loop_lag_samples or [0]) * 1000,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--count", type=int, default=200_000)
    p.add_argument("--paced-rate", type=float, default=5000)
    p.add_argument("--paced-seconds", type=float, default=15)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ceiling, batch_path = raw_ceiling(min(args.count, 100_000), work)
        proc, url = start_blaster(0, args.count)
        try:
            full = asyncio.run(run_collector(url, work / "full.sqlite3", args.count, observe=False))
        finally:
            proc.kill()
        n_paced = int(args.paced_rate * args.paced_seconds)
        proc, url = start_blaster(args.paced_rate, n_paced)
        try:
            paced = asyncio.run(run_collector(url, work / "paced.sqlite3", n_paced, observe=True))
        finally:
            proc.kill()
        conn = buffer.connect(work / "full.sqlite3")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # count the database, not a transient WAL
        conn.close()
        size = os.path.getsize(work / "full.sqlite3")
    rows = [
        ("raw SQLite insert ceiling (same rows)", "-", f"{ceiling:,.0f} rows/s", "", ""),
        ("collector batch path, no network", "-", f"{batch_path:,.0f} rows/s", f"{ceiling:,.0f}", f"{batch_path / ceiling:.2f}"),
        ("sustained ingest, end to end", ">= 25,000 msg/s", f"{full['rate']:,.0f} msg/s", f"{ceiling:,.0f}", f"{full['rate'] / ceiling:.2f}"),
        ("  share of raw ceiling", ">= 0.70", f"{full['rate'] / ceiling:.2f}", "", ""),
        ("  frames spilled on the way", "-", f"{full['spilled']:,}", "", ""),
        (f"receive-to-commit p50 @ {args.paced_rate:,.0f}/s", "-", f"{paced['lat_p50_ms']:.1f} ms", "", ""),
        (f"receive-to-commit p99 @ {args.paced_rate:,.0f}/s", "<= 100 ms", f"{paced['lat_p99_ms']:.1f} ms", "", ""),
        (f"event-loop lag p99 @ {args.paced_rate:,.0f}/s", "<= 10 ms", f"{paced['lag_p99_ms']:.1f} ms", "", ""),
        (f"event-loop lag max @ {args.paced_rate:,.0f}/s", "-", f"{paced['lag_max_ms']:.1f} ms", "", ""),
        ("buffer bytes per message (checkpointed)", "<= 800", f"{size / args.count:,.0f}", "", ""),
    ]
    print(f"{'figure':45} {'target':>16} {'measured':>16} {'baseline':>12} {'ratio':>6}")
    for r in rows:
        print(f"{r[0]:45} {r[1]:>16} {r[2]:>16} {r[3]:>12} {r[4]:>6}")


if __name__ == "__main__":
    main()
