"""Realistic depth20 buffers for the archive benchmark.

Messages come from the simulator's :class:`~tools.simulator.exchange.Book` (slowly
changing books on a tick grid, Binance's decimal text), wrapped as combined-stream frames
exactly as the simulator sends them, decoded by the collector's :class:`Decoder` and stored
through the collector's real :func:`store_records`. The raw JSON bytes of every frame are
counted, not estimated.

The 5,000,000-row buffer for the memory figure would take many minutes that way, so
:func:`big_buffer` builds it from a pool of pre-packed realistic rows inserted in big
transactions (same schema, same ``buffer_hours`` bookkeeping), and caches it under /tmp.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orderbook_core import buffer  # noqa: E402
from orderbook_collector.feed.protocol import Decoder, build_streams  # noqa: E402
from tools.simulator.exchange import Book  # noqa: E402
from orderbook_core.buffer.records import SessionClose, SessionOpen
from orderbook_collector.writer.thread import store_records  # noqa: E402

#: 2026-11-23 10:00 UTC
HOUR_US = buffer.HOUR_US
BASE_HOUR_US = 1_795_428_000_000_000
SESSION_ID = BASE_HOUR_US - 5_000_000
CADENCE_US = 100_000  # depth20@100ms
SYMBOL_POOL = [
    "btcusdt", "ethusdt", "bnbusdt", "solusdt", "xrpusdt", "adausdt", "dogeusdt", "trxusdt",
    "linkusdt", "maticusdt", "dotusdt", "ltcusdt", "avaxusdt", "atomusdt", "uniusdt", "etcusdt",
]


def symbols_for(n: int) -> list[str]:
    out = list(SYMBOL_POOL[:n])
    while len(out) < n:
        out.append(f"sym{len(out)}usdt")
    return out


@dataclass
class Messages:
    """Frames of one hour: (raw frame, recv_us, session_id, seq), and their JSON bytes."""

    symbols: list[str]
    frames: list[tuple[bytes, int, int, int]]
    json_bytes: int


def generate(n_rows: int, n_symbols: int = 10, seed: int = 7, hour_us: int = BASE_HOUR_US,
             session_id: int = SESSION_ID, steps_per_msg: int = 1) -> Messages:
    """``n_rows`` depth20@100ms frames, ``n_symbols`` interleaved, in receive order within one hour.

    Every stream sends one message per 100 ms; the book moves ``steps_per_msg`` simulator
    steps between two messages (the simulator's base clock is 10 steps/s: 1).
    """
    symbols = symbols_for(n_symbols)
    books = [Book(s, seed=seed) for s in symbols]
    per_symbol = -(-n_rows // n_symbols)
    cadence = min(CADENCE_US, (HOUR_US - 1_000_000) // per_symbol)
    frames = []
    seq = 0
    total = 0
    for k in range(per_symbol):
        for j, (sym, book) in enumerate(zip(symbols, books)):
            if len(frames) == n_rows:
                break
            book.advance_to(book.step + steps_per_msg)
            name = f"{sym}@depth20@100ms"
            raw = b'{"stream":"' + name.encode() + b'","data":' + book.depth_payload(20) + b"}"
            total += len(raw)
            frames.append((raw, hour_us + 500_000 + k * cadence + j * 37, session_id, seq))
            seq += 1
    return Messages(symbols, frames, total)


def store_messages(path: Path, msgs: Messages, batch: int = 2000, synchronous: str = "NORMAL") -> float:
    """Decode and store the frames through the collector's path; returns seconds spent storing."""
    streams = build_streams(msgs.symbols, ["depth20@100ms"])
    dec = Decoder(streams)
    conn = buffer.connect(path, synchronous=synchronous)
    try:
        ids = buffer.stream_ids(conn, [(s.name, s.symbol, s.kind) for s in streams])
        sid = msgs.frames[0][2]
        ops = [SessionOpen(sid, "wss://bench", json.dumps([s.name for s in streams]), msgs.frames[0][1] - 1000)]
        elapsed = 0.0
        for i in range(0, len(msgs.frames), batch):
            chunk = [(raw.decode(), r, s, q) for raw, r, s, q in msgs.frames[i : i + batch]]
            recs = dec.decode_many(chunk)
            t0 = time.perf_counter()
            store_records(conn, ids, recs, ops=ops if i == 0 else ())
            elapsed += time.perf_counter() - t0
        store_records(conn, ids, [], ops=[SessionClose(sid, msgs.frames[-1][1] + 1000, "bench done")])
    finally:
        conn.close()
    return elapsed


def checkpoint(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


BIG_VERSION = "v1"


def big_buffer(n_rows: int, cache_dir: Path = Path("/tmp/orderbook-bench"), n_symbols: int = 10,
               pool: int = 50_000) -> Path:
    """A buffer holding one hour of ``n_rows`` depth20 rows, cached between runs.

    Rows are cycled from a pool of ``pool`` realistic books (decoded from simulator frames);
    recv time, seq and update id are unique and increasing, as the collector would store them.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"big-{BIG_VERSION}-{n_rows}-{n_symbols}.sqlite3"
    if path.exists():
        return path
    tmp = path.with_name(path.name + ".building")
    for p in (tmp, Path(str(tmp) + "-wal"), Path(str(tmp) + "-shm")):
        p.unlink(missing_ok=True)
    msgs = generate(min(pool, n_rows), n_symbols)
    streams = build_streams(msgs.symbols, ["depth20@100ms"])
    recs = Decoder(streams).decode_many([(raw.decode(), r, s, q) for raw, r, s, q in msgs.frames])
    conn = buffer.connect(tmp, synchronous="NORMAL")
    ids = buffer.stream_ids(conn, [(s.name, s.symbol, s.kind) for s in streams])
    # an hour: spread the rows evenly over it
    step_us = (HOUR_US - 1_000_000) // n_rows
    uid_base = {r.stream: r.update_id for r in recs[: len(streams)]}
    conn.execute("PRAGMA synchronous = OFF")
    with buffer.transaction(conn):
        conn.execute(
            "INSERT INTO sessions (session_id, url, streams, opened_us, closed_us, close_reason, messages) "
            "VALUES (?, 'wss://bench', '[]', ?, ?, 'bench done', ?)",
            (SESSION_ID, BASE_HOUR_US, BASE_HOUR_US + HOUR_US - 1, n_rows),
        )
    chunk = 200_000
    for lo in range(0, n_rows, chunk):
        rows = []
        for i in range(lo, min(lo + chunk, n_rows)):
            r = recs[i % len(recs)]
            rows.append((ids[r.stream], SESSION_ID, i, BASE_HOUR_US + 500_000 + i * step_us,
                         uid_base[r.stream] + 3 * i, r.n_bids, r.levels))
        with buffer.transaction(conn):
            conn.executemany(
                "INSERT INTO depth_snapshot (stream_id, session_id, seq, recv_us, update_id, n_bids, levels) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    with buffer.transaction(conn):
        conn.execute(
            "INSERT INTO buffer_hours (dataset, hour_us, min_id, max_id, rows) "
            "SELECT 'depth_snapshot', ?, min(id), max(id), count(*) FROM depth_snapshot", (BASE_HOUR_US,))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    os.replace(tmp, path)
    return path
