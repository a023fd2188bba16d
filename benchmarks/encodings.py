"""Depth writer options compared on realistic books: size, write time, scan time, encodings used.

Every candidate writes the same part (one hour of depth20@100ms books of 10 symbols from
the simulator, stored through the collector's real path by ``archive_data``) with the
product's own :func:`write_part`; only the Parquet writer options differ. The baseline is
the shipped options (``DEPTH_WRITER_VERSIONS[1]``: zstd 1 + DELTA_BINARY_PACKED
integers), measured in the same run; ratios are candidate / baseline (below 1: smaller/faster).

The question it answers: does DELTA_BINARY_PACKED (unreadable by Spark 3.2's vectorized reader) earn its place?
The "encodings" column lists what a reader must support to read the file.

Two tables: the simulator's receive times (an exact 100 ms cadence, the best case for delta
encoding) and the same rows with receive times jittered by up to 5 ms, as a network makes them.

Usage: python benchmarks/encodings.py [--rows 360000] [--repeats 4] [--jitter-us 5000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

import archive_data as ad  # noqa: E402

CACHE = Path(os.environ.get("ORDERBOOK_BENCH_CACHE", "/tmp/orderbook-bench"))
INTS = ("recv_time", "session_id", "seq", "last_update_id")


def candidates() -> dict[str, dict]:
    from orderbook_assets.archive.export import DEPTH_WRITER_VERSIONS, WRITER_OPTIONS

    dbp = {c: "DELTA_BINARY_PACKED" for c in INTS}
    out = {"v1 shipped: zstd 1 + DBP (baseline)": DEPTH_WRITER_VERSIONS[1].options}
    for level in (1, 3, 4, 6, 9):
        out[f"zstd {level}, no DBP"] = dict(WRITER_OPTIONS, compression_level=level)
    for level in (3, 6):
        out[f"zstd {level} + DBP"] = dict(WRITER_OPTIONS, compression_level=level, column_encoding=dbp)
    for v, opts in DEPTH_WRITER_VERSIONS.items():
        if v != 1:
            out[f"v{v} (current)"] = opts.options
    return out


def buffer_of(n_rows: int) -> Path:
    """One hour of ``n_rows`` simulator depth20 messages in a real buffer (cached)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"encodings-{ad.BIG_VERSION}-{n_rows}.sqlite3"
    if path.exists():
        return path
    print(f"generating {n_rows:,} simulator messages (cached in {CACHE}) ...", file=sys.stderr, flush=True)
    tmp = path.with_name(path.name + ".building")
    for suffix in ("", "-wal", "-shm"):
        Path(str(tmp) + suffix).unlink(missing_ok=True)
    ad.store_messages(tmp, ad.generate(n_rows))
    ad.checkpoint(tmp)
    os.replace(tmp, path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=360_000, help="messages in the hour (360,000 = 10 symbols at 100 ms)")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--jitter-us", type=int, default=5_000, help="largest receive-time jitter of the second table")
    args = ap.parse_args()

    src = buffer_of(args.rows)
    work = Path(tempfile.mkdtemp(prefix="orderbook-enc-"))
    try:
        for label, jitter in (("receive times on the simulator's exact 100 ms cadence", 0),
                              (f"receive times jittered by 0-{args.jitter_us:,} µs (network jitter)", args.jitter_us)):
            rows = measure(src, work, args.repeats, jitter)
            report(label, rows, args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(src: Path, work: Path, repeats: int, jitter_us: int) -> list[tuple]:
    import duckdb
    import pyarrow.parquet as pq

    from orderbook_core.buffer import ledger
    from orderbook_assets.archive.export import write_part
    from orderbook_core import buffer

    db = work / "buffer.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    shutil.copyfile(src, db)
    conn = buffer.connect(db)
    if jitter_us:
        # Deterministic pseudo-random delays (Knuth's multiplicative hash of the id): real
        # receive times are not an exact cadence, which is what delta encoding likes best.
        # Below the 100 ms cadence, so each stream's order is unchanged.
        with buffer.transaction(conn):
            conn.execute("UPDATE depth_snapshot SET recv_us = recv_us + ((id * 2654435761) % ?)", (jitter_us,))
    part = ledger.plan_part(conn, ad.BASE_HOUR_US)
    assert part is not None
    cands = candidates()
    writes: dict[str, list[float]] = {name: [] for name in cands}
    scans: dict[str, list[float]] = {name: [] for name in cands}
    found: dict[str, tuple] = {}
    # Round-robin over the candidates, so that a busy machine slows them all alike.
    for r in range(repeats):
        for i, (name, opts) in enumerate(cands.items()):
            out = work / f"c{i}.parquet"
            t0 = time.perf_counter()
            exp = write_part(conn, part, out, options=opts)
            writes[name].append(time.perf_counter() - t0)
            con = duckdb.connect(config={"threads": 1})
            t0 = time.perf_counter()
            con.execute(f"SELECT sum(epoch_us(recv_time)), sum(seq), sum(last_update_id), "
                        f"sum(bids[1].price), count(*) FROM '{out}'").fetchall()
            scans[name].append(time.perf_counter() - t0)
            con.close()
            md = pq.ParquetFile(exp.path).metadata
            encs = sorted({e for g in range(md.num_row_groups) for c in range(md.num_columns)
                           for e in md.row_group(g).column(c).encodings})
            ints = sum(md.row_group(g).column(c).total_compressed_size for g in range(md.num_row_groups)
                       for c in range(md.num_columns) if md.row_group(g).column(c).path_in_schema in INTS)
            found[name] = (exp.bytes, ints, encs, exp.rows)
            out.unlink()
    rows = [(name, found[name][0], found[name][1], min(writes[name]), statistics.median(writes[name]),
             min(scans[name]), found[name][2], found[name][3]) for name in cands]
    conn.close()
    return rows


def report(label: str, rows: list[tuple], repeats: int) -> None:
    base = rows[0]
    print(f"\n{base[7]:,} depth20 rows, 10 symbols, one hour, {label}; {repeats} rounds; "
          "ratios against the baseline of this run (times: the fastest round, the median beside it)")
    print("| options | bytes | size ratio | integer columns bytes | write s (median) | write ratio | DuckDB scan s | encodings |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, size, ints, w, wmed, s, encs, _ in rows:
        print(f"| {name} | {size:,} | {size / base[1]:.3f} | {ints:,} | {w:.2f} ({wmed:.2f}) | {w / base[3]:.2f} | {s:.3f} | "
              f"{', '.join(encs)} |")


if __name__ == "__main__":
    main()
