"""The archive path on this machine: export speed, memory, size, buffer size, analyst query, writer stalls.

Figures (one table; every ratio is against a baseline measured in the same run, medians of repeats):
  1. export of one hour, end to end: the real pipeline step (plan the part, deterministic
     Parquet written + fsync'd + hashed back, put into a local folder store, HEAD verified)
     on N depth20 rows of simulator books stored through the collector's ``store_records``.
     Baselines on the same messages: raw JSON rows fetched from SQLite and turned into
     zstd Parquet by DuckDB's ``from_json``; a plain Python loop over the packed rows;
  2. peak RSS of exporting a 5,000,000-row hour in a subprocess (baseline: the same
     subprocess importing everything and opening the buffer, without exporting);
  3. Parquet bytes against the raw Binance JSON of the same messages (the real frame text
     the simulator sends, counted byte for byte), plus a lossless check on the values;
  4. buffer bytes per message after ``wal_checkpoint(TRUNCATE)`` (baseline: the raw JSON
     frames in SQLite with the same dedup index);
  5. analyst query: one day (24 hourly files) of one symbol, top of book at 1 s bars, via
     ``register_views`` on local files (baseline: the same query on one hour);
  6. writer stall p99: a collector ``Writer`` committing a steady 2,000 msg/s while an
     export runs on the same buffer in another process (baseline: without the export).

Generated inputs are cached under /tmp/orderbook-bench between runs.

Usage: python benchmarks/archive.py [--quick] [--rows 360000] [--big-rows 5000000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

import archive_data as ad  # noqa: E402

CACHE = Path(os.environ.get("ORDERBOOK_BENCH_CACHE", "/tmp/orderbook-bench"))
DEPTH_JSON_SCHEMA = '{"stream": "VARCHAR", "data": {"lastUpdateId": "BIGINT", "bids": "VARCHAR[][]", "asks": "VARCHAR[][]"}}'


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def rm_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def copy_db(src: Path, dst: Path) -> Path:
    rm_db(dst)
    shutil.copyfile(src, dst)
    return dst


# --------------------------------------------------------------------------- inputs


def hour_buffer(n_rows: int) -> tuple[Path, Path, dict]:
    """(packed buffer, raw-JSON buffer, meta) of one hour of ``n_rows`` messages, cached."""
    CACHE.mkdir(parents=True, exist_ok=True)
    base = CACHE / f"hour-{ad.BIG_VERSION}-{n_rows}"
    packed, raw, meta_path = Path(f"{base}.sqlite3"), Path(f"{base}-raw.sqlite3"), Path(f"{base}.json")
    if meta_path.exists() and packed.exists() and raw.exists():
        return packed, raw, json.loads(meta_path.read_text())
    print(f"generating {n_rows:,} simulator messages (cached in {CACHE}) ...", file=sys.stderr, flush=True)
    msgs = ad.generate(n_rows)
    rm_db(packed)
    store_s = ad.store_messages(packed, msgs)
    ad.checkpoint(packed)
    rm_db(raw)
    conn = sqlite3.connect(raw, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(
        "CREATE TABLE raw_json (id INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL, session_id INTEGER NOT NULL, "
        "seq INTEGER NOT NULL, recv_us INTEGER NOT NULL, update_id INTEGER NOT NULL, raw TEXT NOT NULL)"
    )
    conn.execute("CREATE UNIQUE INDEX raw_json_dedup ON raw_json (stream, update_id)")
    for i in range(0, len(msgs.frames), 2000):
        rows = []
        for frame, recv, sid, seq in msgs.frames[i : i + 2000]:
            text = frame.decode()
            stream = text[11 : text.index('"', 11)]
            uid = int(text[text.index('"lastUpdateId":') + 15 : text.index(",", text.index('"lastUpdateId":'))])
            rows.append((stream, sid, seq, recv, uid, text))
        conn.execute("BEGIN")
        conn.executemany("INSERT OR IGNORE INTO raw_json (stream, session_id, seq, recv_us, update_id, raw) VALUES (?,?,?,?,?,?)", rows)
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    meta = {"rows": len(msgs.frames), "json_bytes": msgs.json_bytes, "symbols": msgs.symbols,
            "store_rows_per_s": len(msgs.frames) / store_s}
    meta_path.write_text(json.dumps(meta))
    return packed, raw, meta


# --------------------------------------------------------------------------- 1. export


def export_once(src: Path, work: Path) -> tuple[float, object]:
    """The real step on a fresh copy of the buffer; returns (seconds, the part)."""
    from orderbook_assets.archive import pipeline
    from orderbook_assets.archive.store import LocalStore
    from orderbook_core import buffer

    db = copy_db(src, work / "export.sqlite3")
    shutil.rmtree(work / "archive", ignore_errors=True)
    shutil.rmtree(work / "staging", ignore_errors=True)
    conn = buffer.connect(db, synchronous="FULL")
    try:
        t0 = time.perf_counter()
        out = pipeline.export_and_upload(conn, LocalStore(work / "archive"), work / "staging", ad.BASE_HOUR_US)
        elapsed = time.perf_counter() - t0
    finally:
        conn.close()
    assert len(out.parts) == 1 and out.parts[0].state == "verified"
    return elapsed, out.parts[0]


def duckdb_json_baseline(raw: Path, n: int, out: Path) -> float:
    """Raw JSON rows from SQLite → DuckDB from_json → sorted zstd Parquet (the same schema)."""
    import duckdb
    import pyarrow as pa

    t0 = time.perf_counter()
    conn = sqlite3.connect(raw)
    rows = conn.execute("SELECT stream, recv_us, session_id, seq, raw FROM raw_json WHERE id <= ?", (n,)).fetchall()
    conn.close()
    cols = list(zip(*rows))
    del rows
    tbl = pa.table({
        "stream": pa.array(cols[0], pa.string()), "recv_us": pa.array(cols[1], pa.int64()),
        "session_id": pa.array(cols[2], pa.int64()), "seq": pa.array(cols[3], pa.int64()), "raw": pa.array(cols[4], pa.string()),
    })
    del cols
    con = duckdb.connect()
    con.register("raw_rows", tbl)
    con.execute(f"""
        COPY (
            SELECT upper(split_part(stream, '@', 1)) AS symbol, stream, make_timestamp(recv_us)::TIMESTAMPTZ AS recv_time,
                   session_id, seq, j.data.lastUpdateId AS last_update_id,
                   list_transform(j.data.bids, lambda x: {{'price': x[1]::DOUBLE, 'qty': x[2]::DOUBLE}}) AS bids,
                   list_transform(j.data.asks, lambda x: {{'price': x[1]::DOUBLE, 'qty': x[2]::DOUBLE}}) AS asks
            FROM (SELECT *, from_json(raw, '{DEPTH_JSON_SCHEMA}') AS j FROM raw_rows)
            ORDER BY symbol, recv_time, session_id, seq
        ) TO '{out}' (FORMAT parquet, COMPRESSION zstd)
    """)
    con.close()
    return n / (time.perf_counter() - t0)


def python_loop_baseline(packed: Path, n: int, out: Path) -> float:
    """Packed rows → per-row Python lists of dicts → Arrow → zstd Parquet."""
    import struct

    import pyarrow as pa
    import pyarrow.parquet as pq

    from orderbook_assets.archive.export import DEPTH_SCHEMA

    t0 = time.perf_counter()
    conn = sqlite3.connect(packed)
    # a cached buffer may predate the market column (schema step 2): its streams are spot
    has_market = "market" in {r[1] for r in conn.execute("PRAGMA table_info(streams)")}
    names = {sid: (name, sym.upper(), market) for sid, name, sym, market in conn.execute(
        f"SELECT stream_id, name, symbol, {'market' if has_market else chr(39) + 'spot' + chr(39)} FROM streams")}
    rows = conn.execute(
        "SELECT stream_id, recv_us, session_id, seq, update_id, n_bids, levels FROM depth_snapshot WHERE id <= ?", (n,)
    ).fetchall()
    conn.close()
    rows.sort(key=lambda r: (names[r[0]][1], r[1], r[2], r[3]))
    out_rows = []
    for sid, recv, session, seq, uid, n_bids, levels in rows:
        vals = struct.unpack(f"<{len(levels) // 8}d", levels)
        lv = [{"price": vals[i], "qty": vals[i + 1]} for i in range(0, len(vals), 2)]
        out_rows.append({"market": names[sid][2], "symbol": names[sid][1], "stream": names[sid][0], "recv_time": recv, "session_id": session,
                         "seq": seq, "last_update_id": uid, "bids": lv[:n_bids], "asks": lv[n_bids:]})
    table = pa.Table.from_pylist(out_rows, schema=DEPTH_SCHEMA)
    pq.write_table(table, out, compression="zstd")
    return n / (time.perf_counter() - t0)


def lossless(parquet: Path, raw: Path, sample: int = 20_000) -> bool:
    """Every price and quantity of the first ``sample`` messages, printed with 8 decimals,
    is the very string Binance sent."""
    import pyarrow.parquet as pq

    t = pq.read_table(parquet, columns=["stream", "last_update_id", "bids", "asks"])
    got = {}
    for stream, uid, bids, asks in zip(t["stream"].to_pylist(), t["last_update_id"].to_pylist(),
                                       t["bids"].to_pylist(), t["asks"].to_pylist()):
        got[(stream, uid)] = ([[f"{x['price']:.8f}", f"{x['qty']:.8f}"] for x in bids],
                              [[f"{x['price']:.8f}", f"{x['qty']:.8f}"] for x in asks])
    conn = sqlite3.connect(raw)
    ok = True
    for (text,) in conn.execute("SELECT raw FROM raw_json ORDER BY id LIMIT ?", (sample,)):
        msg = json.loads(text)
        want = (msg["data"]["bids"], msg["data"]["asks"])
        ok &= got.get((msg["stream"], msg["data"]["lastUpdateId"])) == want
    conn.close()
    return ok


# --------------------------------------------------------------------------- 2. memory


def child_export(path: str, out: str, mode: str) -> None:
    """Subprocess body: export the whole hour (mode=export) or only get ready (mode=idle)."""
    import pyarrow.parquet  # noqa: F401  (the idle baseline imports what the export imports)

    from orderbook_core.buffer import ledger
    from orderbook_assets.archive.export import write_part
    from orderbook_core import buffer

    conn = buffer.connect(path, synchronous="NORMAL", create=False)
    max_id = conn.execute("SELECT max_id FROM buffer_hours WHERE hour_us = ?", (ad.BASE_HOUR_US,)).fetchone()[0]
    part = ledger.Part(ledger.DEPTH, ad.BASE_HOUR_US, 1, 0, max_id, "planned")
    rows, elapsed = 0, 0.0
    if mode == "export":
        t0 = time.perf_counter()
        rows = write_part(conn, part, Path(out)).rows
        elapsed = time.perf_counter() - t0
    conn.close()
    print(json.dumps({"rows": rows, "seconds": elapsed, "maxrss_kb": peak_rss_kb()}))


def peak_rss_kb() -> int:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a
    child forked from a big parent would report the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_child(path: Path, out: Path, mode: str) -> dict:
    res = subprocess.run([sys.executable, __file__, "--child", mode, str(path), str(out)],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


#: The spot snapshot's columns (the cached source may predate the buffer's later columns).
_DEPTH_COLS = "id, stream_id, session_id, seq, recv_us, update_id, n_bids, levels"


def bytes_per_message_at_page_size(src: Path, dst: Path, page_size: int) -> float:
    """The buffer's depth rows re-inserted in id order, 2,000 a transaction, into a buffer
    created with another page size: what that setting alone would change."""
    from orderbook_core.buffer import SCHEMA

    rm_db(dst)
    conn = sqlite3.connect(dst, isolation_level=None)
    conn.execute(f"PRAGMA page_size = {page_size}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(SCHEMA)
    conn.execute("ATTACH ? AS src", (str(src),))
    top = conn.execute("SELECT max(id) FROM src.depth_snapshot").fetchone()[0]
    for lo in range(0, top, 2000):
        conn.execute("BEGIN")
        conn.execute(f"INSERT INTO depth_snapshot ({_DEPTH_COLS}) SELECT {_DEPTH_COLS} FROM src.depth_snapshot "
                     "WHERE id > ? AND id <= ?", (lo, lo + 2000))
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    n = conn.execute("SELECT count(*) FROM depth_snapshot").fetchone()[0]
    conn.close()
    return os.path.getsize(dst) / n


# --------------------------------------------------------------------------- 5. analyst query


BARS_SQL = """
SELECT time_bucket(INTERVAL 1 second, recv_time) AS bar,
       arg_min(mid, recv_time) AS first_mid, max(mid) AS max_mid, min(mid) AS min_mid,
       arg_max(mid, recv_time) AS last_mid, arg_max(best_bid, recv_time) AS last_bid,
       arg_max(best_ask, recv_time) AS last_ask, avg(spread) AS mean_spread, count(*) AS snapshots
FROM top_of_book
WHERE symbol = 'BTCUSDT' AND recv_time >= ?::TIMESTAMPTZ AND recv_time < ?::TIMESTAMPTZ
GROUP BY 1 ORDER BY 1
"""


def day_archive(rows_per_hour: int) -> Path:
    """24 hourly depth files of BTCUSDT (simulator books, 10 messages/s), exported by write_part; cached."""
    from orderbook_core.buffer import ledger
    from orderbook_assets.archive.export import object_key, write_part
    from orderbook_core import buffer

    root = CACHE / f"day-{ad.BIG_VERSION}-{rows_per_hour}"
    if (root / "done").exists():
        return root / "archive"
    print(f"generating a day of BTCUSDT ({24 * rows_per_hour:,} messages, cached) ...", file=sys.stderr, flush=True)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    db = root / "buffer.sqlite3"
    for h in range(24):
        hour = ad.BASE_HOUR_US + h * ad.HOUR_US
        msgs = ad.generate(rows_per_hour, n_symbols=1, seed=h, hour_us=hour, session_id=hour + 1)
        ad.store_messages(db, msgs)
        conn = buffer.connect(db, synchronous="NORMAL")
        part = ledger.plan_part(conn, hour)
        write_part(conn, part, root / "archive" / object_key(ledger.DEPTH, part))
        conn.close()
    (root / "done").write_text("ok")
    return root / "archive"


def query_times(archive: Path, repeats: int) -> tuple[float, float, int]:
    """Median seconds of the 1 s bars over the day and over one hour (fresh connection each time)."""
    import duckdb

    from orderbook_assets.analytics.views import register_views

    def run(lo_h: int, hi_h: int) -> tuple[float, int]:
        lo = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(ad.BASE_HOUR_US / 1e6 + lo_h * 3600))
        hi = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(ad.BASE_HOUR_US / 1e6 + hi_h * 3600))
        t0 = time.perf_counter()
        con = duckdb.connect()
        register_views(con, str(archive))
        n = len(con.execute(BARS_SQL, [lo, hi]).fetchall())
        con.close()
        return time.perf_counter() - t0, n

    day, hour = [], []
    bars = 0
    for _ in range(repeats):
        s, bars = run(0, 24)
        day.append(s)
        hour.append(run(5, 6)[0])
    return statistics.median(day), statistics.median(hour), bars


# --------------------------------------------------------------------------- 6. writer stalls


def writer_stalls(src: Path, work: Path, seconds: float, rate: int = 2000) -> tuple[list[float], list[float], float]:
    """Commit durations (s) of a Writer fed ``rate`` msg/s: without, then during, exports in another process."""
    from orderbook_core.buffer.records import Frame, SessionOpen
    from orderbook_collector.writer import thread as wmod
    from orderbook_collector.feed.protocol import build_streams

    db = copy_db(src, work / "stall.sqlite3")
    symbols = ["zzzusdt", "yyyusdt"]
    msgs = ad.generate(int(rate * seconds * 2.6), n_symbols=len(symbols), seed=99, session_id=ad.SESSION_ID + 1)
    frames = [(f.decode(), sid, seq) for f, _, sid, seq in msgs.frames]
    durations: list[tuple[float, float]] = []  # (start, duration)
    original = wmod.store_records

    def timed(*a, **k):
        t0 = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            durations.append((t0, time.perf_counter() - t0))

    wmod.store_records = timed
    w = wmod.Writer(db, build_streams(["zzzusdt", "yyyusdt"], ["depth20@100ms"]), synchronous="FULL",
                    commit_interval=0.02, busy_timeout_ms=5000, spill_dir=work / "spill")
    sid = frames[0][1]
    try:
        w.start()
        w.submit(SessionOpen(sid, "wss://bench", "[]", time.time_ns() // 1000))
        stop = threading.Event()

        def feed():
            i, t0 = 0, time.perf_counter()
            while not stop.is_set() and i < len(frames):
                due = int((time.perf_counter() - t0) * rate)
                while i < min(due, len(frames)):
                    raw, s, seq = frames[i]
                    w.submit(Frame(raw, time.time_ns() // 1000, s, seq))
                    i += 1
                time.sleep(0.005)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        time.sleep(1.0)  # warm up
        a0 = time.perf_counter()
        time.sleep(seconds)
        a1 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, __file__, "--child", "stall-export", str(db), str(work / "stall-out"),
                                 "--seconds", str(seconds)], stdout=subprocess.PIPE, text=True)
        started = proc.stdout.readline()  # the child says when its exports begin
        b0 = time.perf_counter()
        proc.wait()
        b1 = time.perf_counter()
        stop.set()
        feeder.join()
        exports = json.loads(proc.stdout.read().strip().splitlines()[-1])["exports"] if started else 0
    finally:
        w.stop()
        wmod.store_records = original
    base = [d for t, d in durations if a0 <= t < a1]
    during = [d for t, d in durations if b0 <= t < b1]
    return base, during, exports


def child_stall_export(path: str, out: str, seconds: float) -> None:
    """Subprocess body: the real export step once (plan, write, upload, verify), then write_part again until time is up."""
    from orderbook_assets.archive import pipeline
    from orderbook_assets.archive.export import object_key, write_part
    from orderbook_assets.archive.store import LocalStore
    from orderbook_core import buffer

    conn = buffer.connect(path, synchronous="FULL", create=False)
    print("start", flush=True)
    deadline = time.perf_counter() + seconds
    res = pipeline.export_and_upload(conn, LocalStore(Path(out) / "archive"), Path(out) / "staging", ad.BASE_HOUR_US)
    n = 1
    part = res.parts[0]
    while time.perf_counter() < deadline:
        write_part(conn, part, Path(out) / "again" / object_key("depth_snapshot", part))
        n += 1
    conn.close()
    print(json.dumps({"exports": n}), flush=True)


# --------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="smaller inputs, fewer repeats (about a minute once cached)")
    p.add_argument("--rows", type=int, help="rows in the exported hour (default 360,000; --quick 100,000)")
    p.add_argument("--big-rows", type=int, help="rows in the memory hour (default 5,000,000; --quick 1,000,000)")
    p.add_argument("--repeats", type=int, help="repeats of each timing (median reported)")
    p.add_argument("--child", nargs=3, metavar=("MODE", "BUFFER", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, default=8.0, help="length of each writer-stall phase")
    args = p.parse_args()
    if args.child:
        mode, path, out = args.child
        if mode == "stall-export":
            child_stall_export(path, out, args.seconds)
        else:
            child_export(path, out, mode)
        return
    n_rows = args.rows or (100_000 if args.quick else 360_000)
    big_rows = args.big_rows or (1_000_000 if args.quick else 5_000_000)
    repeats = args.repeats or (3 if args.quick else 5)
    seconds = 5.0 if args.quick else args.seconds
    sample_dj, sample_py = min(n_rows, 100_000), min(n_rows, 50_000)

    packed, raw, meta = hour_buffer(n_rows)
    big = ad.big_buffer(big_rows, CACHE)
    archive = day_archive(36_000)
    rows_table = []
    with tempfile.TemporaryDirectory(prefix="orderbook-bench-") as tmp:
        work = Path(tmp)
        # 1. export, interleaving the candidates so load from other processes hits them alike
        ours, dj, py = [], [], []
        part = None
        for _ in range(repeats):
            s, part = export_once(packed, work)
            ours.append(meta["rows"] / s)
            dj.append(duckdb_json_baseline(raw, sample_dj, work / "duck.parquet"))
            py.append(python_loop_baseline(packed, sample_py, work / "py.parquet"))
        ours_m, dj_m, py_m = statistics.median(ours), statistics.median(dj), statistics.median(py)
        pq_bytes = part.bytes
        pq_path = work / "archive" / part.object_key
        ok = lossless(pq_path, raw)
        duck_bytes = os.path.getsize(work / "duck.parquet") * meta["rows"] / sample_dj
        # 2. memory
        idle = run_child(big, work / "big.parquet", "idle")
        exp = run_child(big, work / "big.parquet", "export")
        # 4. buffer bytes
        # (the cached input buffer may predate a page-size change: measure with the current one)
        from orderbook_core.buffer import PAGE_SIZE

        packed_bpm = bytes_per_message_at_page_size(packed, work / "pages.sqlite3", PAGE_SIZE)
        default_page_bpm = bytes_per_message_at_page_size(packed, work / "pages4k.sqlite3", 4096)
        raw_bpm = os.path.getsize(raw) / meta["rows"]
        # 5. analyst query
        day_s, hour_s, bars = query_times(archive, repeats)
        # 6. writer stalls
        base, during, exports = writer_stalls(packed, work, seconds)

    mb = lambda kb: kb / 1024  # noqa: E731
    rows_table = [
        (f"export 1 h, {meta['rows']:,} depth20 rows, verified", ">= 100,000 rows/s", f"{ours_m:,.0f} rows/s", f"{dj_m:,.0f}", f"{ours_m / dj_m:.2f}"),
        ("  baseline: DuckDB from_json raw JSON", "~50,000 rows/s", f"{dj_m:,.0f} rows/s", "", ""),
        ("  baseline: plain Python loop", "~20,000 rows/s", f"{py_m:,.0f} rows/s", f"{py_m:,.0f}", f"{ours_m / py_m:.2f}"),
        (f"export of a {exp['rows']:,}-row hour", "-", f"{exp['rows'] / exp['seconds']:,.0f} rows/s", "", ""),
        (f"peak RSS, export of {exp['rows']:,} rows", "< 1,024 MB", f"{mb(exp['maxrss_kb']):,.0f} MB", f"{mb(idle['maxrss_kb']):,.0f}", f"{exp['maxrss_kb'] / idle['maxrss_kb']:.2f}"),
        ("Parquet vs raw JSON (simulator books)", ">= 40x", f"{meta['json_bytes'] / pq_bytes:.1f}x", f"{meta['json_bytes'] / duck_bytes:.1f}x", f"{duck_bytes / pq_bytes:.2f}"),
        ("  values identical to the JSON text", "yes", "yes" if ok else "NO", "", ""),
        ("buffer bytes per message (checkpointed)", "<= 800", f"{packed_bpm:,.0f}", f"{raw_bpm:,.0f}", f"{packed_bpm / raw_bpm:.2f}"),
        ("  same rows with SQLite's default 4 KiB pages", "-", f"{default_page_bpm:,.0f}", f"{raw_bpm:,.0f}", f"{default_page_bpm / raw_bpm:.2f}"),
        (f"1 s bars, 1 day 1 symbol ({bars:,} bars)", "< 1 s", f"{day_s:.3f} s", f"{hour_s:.3f}", f"{day_s / hour_s:.2f}"),
        (f"writer stall p99 during export (x{exports})", "< 100 ms", f"{pct(during, 99) * 1000:.1f} ms", f"{pct(base, 99) * 1000:.1f}", f"{pct(during, 99) / pct(base, 99):.2f}"),
        ("  writer stall max during export", "-", f"{max(during or [0]) * 1000:.1f} ms", f"{max(base or [0]) * 1000:.1f}", ""),
    ]
    print(f"{'figure':46} {'target':>18} {'measured':>16} {'baseline':>12} {'ratio':>6}")
    for r in rows_table:
        print(f"{r[0]:46} {r[1]:>18} {r[2]:>16} {r[3]:>12} {r[4]:>6}")
    print(f"(medians of {repeats}; baselines: DuckDB on {sample_dj:,} rows, Python on {sample_py:,}; "
          f"stall phases {seconds:.0f} s at 2,000 msg/s, {len(base)} / {len(during)} commits)")


if __name__ == "__main__":
    main()
