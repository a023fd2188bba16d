"""The whole ``archive_hour`` run on an hour of many interleaved streams, step by step.

The soak's shape (issue 22): many diff-depth and trade streams (and a few partial-depth ones,
so ``top_of_book_1s`` draws its pictures) carried by a few connection sessions, each session
restarting halfway through the hour. One session carries every kind it subscribed, and its seq
counts frames across them: every other seq of one dataset belongs to another, which is what
made the hour's checks quadratic.

Printed, from one run of this script:
  * each step's seconds, from the run's own step events (STEP_START to STEP_SUCCESS);
  * the whole run minus a run of an empty hour (the fixed cost of a run: Dagster, imports);
  * the baseline measured in the same run: a plain DuckDB export of the same messages, their
    raw Binance JSON fetched from SQLite and turned into sorted zstd Parquet by ``from_json``
    (as ``archive.py`` measures the export), measured before and after the runs, the faster kept;
  * ratios: rows/s of the run against rows/s of the baseline, and each step's seconds over the
    baseline's seconds (so a step that grows with the square of the hour stands out).

The machine is shared: absolute seconds vary with the load, the same-run ratios much less.
Generated buffers are cached under /tmp/orderbook-bench.

Usage: python benchmarks/archive_hour.py [--rows 400000] [--symbols 300] [--partial 50] [--connections 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from orderbook_core import buffer  # noqa: E402
from orderbook_core.buffer.records import (DepthRecord, DepthUpdateRecord, SessionClose, SessionOpen,  # noqa: E402
                                           TradeRecord)

CACHE = Path(os.environ.get("ORDERBOOK_BENCH_CACHE", "/tmp/orderbook-bench"))
VERSION = "v2"
#: 2026-11-23 10:00 UTC, and the empty hour before it (the fixed cost of a run).
HOUR_US = 1_795_428_000_000_000
EMPTY_HOUR_US = HOUR_US - buffer.HOUR_US
CADENCE_US = 100_000
DIFF_LEVELS = 3  # levels a side a diff event changes
PARTIAL_LEVELS = 20


def _levels(mid: float, n: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    bids = [(round(mid - 0.01 * (k + 1), 2), 1.0 + k) for k in range(n)]
    asks = [(round(mid + 0.01 * (k + 1), 2), 2.0 + k) for k in range(n)]
    return bids, asks


def _text(side: list[tuple[float, float]]) -> str:
    return "[" + ",".join(f'["{p:.8f}","{q:.8f}"]' for p, q in side) + "]"


def generate(path: Path, rows: int, symbols: int, partial: int, connections: int) -> int:
    """Store the hour through the collector's ``store_records`` into ``path``, and the raw JSON
    of every message into table ``raw_json`` (the baseline's input); returns the rows stored."""
    from orderbook_collector.writer.thread import store_records

    per_tick = 2 * symbols + partial
    ticks = -(-rows // per_tick)
    syms = [f"s{i:04d}usdt" for i in range(symbols)]
    conn = buffer.connect(path, synchronous="NORMAL")
    conn.execute("CREATE TABLE raw_json (dataset TEXT NOT NULL, stream TEXT NOT NULL, recv_us INTEGER NOT NULL, "
                 "session_id INTEGER NOT NULL, seq INTEGER NOT NULL, raw TEXT NOT NULL)")
    # as frames arrive: each symbol's kinds one after the other, so every other seq of one
    # dataset's session belongs to another dataset
    kinds = [(s, k) for i, s in enumerate(syms)
             for k in ("depth@100ms", "trade", "depth20@100ms")[:3 if i < partial else 2]]
    ids = buffer.stream_ids(conn, [(f"{s}@{k}", s, k, "spot") for s, k in kinds])
    # each connection carries a slice of the symbols, every kind of them; it restarts halfway
    conn_of = {s: i % connections for i, s in enumerate(syms)}
    half = ticks // 2
    session = {c: HOUR_US + 1_000 + c for c in range(connections)}
    seq = {c: 0 for c in range(connections)}
    u = {s: 1_000_000 + 7 * i for i, s in enumerate(syms)}
    trade_id = {s: 50_000 + 11 * i for i, s in enumerate(syms)}
    opens = [SessionOpen(session[c], f"wss://bench/{c}", "[]", session[c]) for c in range(connections)]
    stored, batch, raw = 0, [], []

    def flush(ops=()):
        nonlocal batch, raw
        store_records(conn, ids, batch, ops=list(ops))
        with buffer.transaction(conn):
            conn.executemany("INSERT INTO raw_json VALUES (?, ?, ?, ?, ?, ?)", raw)
        batch, raw = [], []

    flush(opens)
    for k in range(ticks):
        if k == half:  # every connection restarts: a new session, seq from 0
            flush([SessionClose(session[c], HOUR_US + 1_000_000 + k * CADENCE_US, "bench restart")
                   for c in range(connections)])
            session = {c: session[c] + 1_000_000_000 for c in range(connections)}
            seq = {c: 0 for c in range(connections)}
            flush([SessionOpen(session[c], f"wss://bench/{c}", "[]", session[c]) for c in range(connections)])
        t0 = HOUR_US + 1_000_000 + k * CADENCE_US
        for j, (s, kind) in enumerate(kinds):
            if stored == rows:
                break
            c = conn_of[s]
            recv = t0 + j * 7
            ms = recv // 1000
            mid = 100.0 + (k % 13) * 0.01 + j % 17
            if kind == "depth@100ms":
                bids, asks = _levels(mid, DIFF_LEVELS)
                first, last = u[s] + 1, u[s] + 3
                u[s] = last
                batch.append(DepthUpdateRecord(f"{s}@{kind}", recv, session[c], seq[c], ms, None, first, last, None,
                                               len(bids), np.array(bids + asks, "<f8").tobytes(), 0))
                data = (f'{{"e":"depthUpdate","E":{ms},"s":"{s.upper()}","U":{first},"u":{last},'
                        f'"b":{_text(bids)},"a":{_text(asks)}}}')
                dataset = "depth_update"
            elif kind == "trade":
                trade_id[s] += 1
                batch.append(TradeRecord(f"{s}@{kind}", recv, session[c], seq[c], ms, ms - 1, trade_id[s], mid, 0.5,
                                         k % 2 == 0, 0))
                data = (f'{{"e":"trade","E":{ms},"s":"{s.upper()}","t":{trade_id[s]},"p":"{mid:.8f}",'
                        f'"q":"0.50000000","T":{ms - 1},"m":{"true" if k % 2 == 0 else "false"}}}')
                dataset = "trade"
            else:
                bids, asks = _levels(mid, PARTIAL_LEVELS)
                batch.append(DepthRecord(f"{s}@{kind}", recv, session[c], seq[c], u[s], len(bids),
                                         np.array(bids + asks, "<f8").tobytes(), 0))
                data = f'{{"lastUpdateId":{u[s]},"bids":{_text(bids)},"asks":{_text(asks)}}}'
                dataset = "depth_snapshot"
            raw.append((dataset, f"{s}@{kind}", recv, session[c], seq[c], f'{{"stream":"{s}@{kind}","data":{data}}}'))
            seq[c] += 1
            stored += 1
        if len(batch) >= 20_000:
            flush()
    flush([SessionClose(session[c], HOUR_US + 2_000_000 + ticks * CADENCE_US, "bench done")
           for c in range(connections)])
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return stored


def hour_buffer(rows: int, symbols: int, partial: int, connections: int) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"archive-hour-{VERSION}-{rows}-{symbols}-{partial}-{connections}.sqlite3"
    if not path.exists():
        print(f"generating {rows:,} messages (cached in {CACHE}) ...", file=sys.stderr, flush=True)
        tmp = path.with_name(path.name + ".building")
        for p in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            p.unlink(missing_ok=True)
        generate(tmp, rows, symbols, partial, connections)
        os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- baseline

JSON_SCHEMAS = {
    "depth_update": ('{"data": {"E": "BIGINT", "U": "BIGINT", "u": "BIGINT", "b": "VARCHAR[][]", "a": "VARCHAR[][]"}}',
                     "j.data.E AS event_ms, j.data.U AS first_update_id, j.data.u AS last_update_id, "
                     "list_transform(j.data.b, lambda x: {'price': x[1]::DOUBLE, 'qty': x[2]::DOUBLE}) AS bids, "
                     "list_transform(j.data.a, lambda x: {'price': x[1]::DOUBLE, 'qty': x[2]::DOUBLE}) AS asks"),
    "trade": ('{"data": {"E": "BIGINT", "t": "BIGINT", "p": "VARCHAR", "q": "VARCHAR", "T": "BIGINT", "m": "BOOLEAN"}}',
              "j.data.E AS event_ms, j.data.t AS trade_id, j.data.p::DOUBLE AS price, j.data.q::DOUBLE AS qty, "
              "j.data.T AS trade_ms, j.data.m AS is_buyer_maker"),
    "depth_snapshot": ('{"data": {"lastUpdateId": "BIGINT", "bids": "VARCHAR[][]", "asks": "VARCHAR[][]"}}',
                       "j.data.lastUpdateId AS last_update_id, "
                       "list_transform(j.data.bids, lambda x: {'price': x[1]::DOUBLE, 'qty': x[2]::DOUBLE}) AS bids, "
                       "list_transform(j.data.asks, lambda x: {'price': x[1]::DOUBLE, 'qty': x[2]::DOUBLE}) AS asks"),
}


def duckdb_baseline(src: Path, out: Path) -> float:
    """Seconds to turn the same messages' raw JSON (fetched from SQLite) into one sorted zstd
    Parquet file a dataset with DuckDB's ``from_json``."""
    import duckdb
    import pyarrow as pa

    t0 = time.perf_counter()
    conn = sqlite3.connect(src)
    con = duckdb.connect()
    for dataset, (schema, cols) in JSON_SCHEMAS.items():
        rows = conn.execute("SELECT stream, recv_us, session_id, seq, raw FROM raw_json WHERE dataset = ?",
                            (dataset,)).fetchall()
        if not rows:
            continue
        c = list(zip(*rows))
        del rows
        con.register("raw_rows", pa.table({
            "stream": pa.array(c[0], pa.string()), "recv_us": pa.array(c[1], pa.int64()),
            "session_id": pa.array(c[2], pa.int64()), "seq": pa.array(c[3], pa.int64()),
            "raw": pa.array(c[4], pa.string())}))
        del c
        con.execute(f"""
            COPY (
                SELECT upper(split_part(stream, '@', 1)) AS symbol, stream,
                       make_timestamp(recv_us)::TIMESTAMPTZ AS recv_time, session_id, seq, {cols}
                FROM (SELECT *, from_json(raw, '{schema}') AS j FROM raw_rows)
                ORDER BY symbol, recv_time, session_id, seq
            ) TO '{out / dataset}.parquet' (FORMAT parquet, COMPRESSION zstd)
        """)
        con.unregister("raw_rows")
    con.close()
    conn.close()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- archive_hour


def hour_key(hour_us: int) -> str:
    return datetime.fromtimestamp(hour_us / 1e6, tz=timezone.utc).strftime("%Y-%m-%d-%H:00")


def run_archive_hour(src: Path, work: Path, hour_us: int) -> tuple[float, dict[str, float], bool]:
    """One ``archive_hour`` run on a fresh copy of the buffer: (seconds, step → seconds, success)."""
    from dagster import DagsterInstance

    from orderbook_assets.definitions import defs

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copyfile(src, work / "buffer.sqlite3")
    os.environ["ORDERBOOK_BUFFER"] = str(work / "buffer.sqlite3")
    os.environ["ORDERBOOK_ARCHIVE_URL"] = str(work / "archive")
    instance = DagsterInstance.ephemeral()
    job = defs.resolve_job_def("archive_hour")
    t0 = time.perf_counter()
    result = job.execute_in_process(partition_key=hour_key(hour_us), instance=instance, raise_on_error=False,
                                    run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}})
    elapsed = time.perf_counter() - t0
    started, steps = {}, {}
    for entry in instance.all_logs(result.run_id):
        ev = entry.dagster_event
        if ev is None or ev.step_key is None:
            continue
        if ev.event_type_value == "STEP_START":
            started[ev.step_key] = entry.timestamp
        elif ev.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
            steps[ev.step_key] = entry.timestamp - started[ev.step_key]
    return elapsed, steps, result.success


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--symbols", type=int, default=300, help="symbols with a diff-depth and a trade stream each")
    ap.add_argument("--partial", type=int, default=50, help="of them, symbols with a depth20 stream too")
    ap.add_argument("--connections", type=int, default=2)
    args = ap.parse_args()
    src = hour_buffer(args.rows, args.symbols, args.partial, args.connections)
    with sqlite3.connect(src) as c:
        counts = dict(c.execute("SELECT dataset, count(*) FROM raw_json GROUP BY dataset").fetchall())
    rows = sum(counts.values())
    with tempfile.TemporaryDirectory(prefix="archive-hour-") as tmp:
        tmp = Path(tmp)
        (tmp / "baseline").mkdir()
        # the baseline before and after the runs, the faster kept: the machine's load moves it
        bases = [duckdb_baseline(src, tmp / "baseline")]
        empty_s, empty_steps, ok_empty = run_archive_hour(src, tmp / "empty", EMPTY_HOUR_US)
        whole_s, steps, ok = run_archive_hour(src, tmp / "hour", HOUR_US)
        bases.append(duckdb_baseline(src, tmp / "baseline"))
        base_s = min(bases)
    net = whole_s - empty_s
    load = os.getloadavg()
    print(f"hour: {rows:,} rows ({', '.join(f'{d} {n:,}' for d, n in sorted(counts.items()))}); "
          f"{args.symbols} symbols, {args.connections} connections restarting halfway; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (shared machine)")
    print(f"baseline, DuckDB from_json export of the same messages: {base_s:.2f} s, {rows / base_s:,.0f} rows/s "
          f"(best of {' and '.join(f'{b:.2f}' for b in bases)} s, before and after the runs)")
    print(f"archive_hour: {whole_s:.2f} s, empty hour {empty_s:.2f} s, net {net:.2f} s, {rows / net:,.0f} rows/s "
          f"= {base_s / net:.2f}x the baseline; run {'succeeded' if ok else 'FAILED'}"
          f"{'' if ok_empty else ' (empty hour run FAILED)'}")
    print(f"{'step':<28}{'seconds':>10}{'empty hour':>12}{'/ baseline':>12}")
    for step, s in sorted(steps.items(), key=lambda kv: -kv[1]):
        print(f"{step:<28}{s:>10.2f}{empty_steps.get(step, float('nan')):>12.2f}{s / base_s:>12.2f}")
    print(json.dumps({"rows": rows, "baseline_s": round(base_s, 3), "baselines_s": [round(b, 3) for b in bases],
                      "whole_s": round(whole_s, 3), "empty_s": round(empty_s, 3), "ratio": round(base_s / net, 3),
                      "steps": {k: round(v, 3) for k, v in steps.items()}, "success": ok}))


if __name__ == "__main__":
    main()
