"""Realistic depth rows in a real SQLite buffer, for archive tests.

:func:`fill_buffer` stores slowly changing depth20 books on a tick grid through the
collector's own :func:`orderbook_collector.writer.thread.store_records` (so ``buffer_hours``,
session counters and ``dropped`` are kept exactly as in production) and returns what it
stored, so tests can compare archived values with what went in.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orderbook_core import buffer
from orderbook_core.buffer.records import DepthRecord
from orderbook_core.buffer.records import SessionClose, SessionOpen
from orderbook_collector.writer.thread import store_records

HOUR_US = buffer.HOUR_US
#: 2026-11-23 10:00 UTC
BASE_HOUR_US = 1_795_428_000_000_000


@dataclass
class Row:
    symbol: str  # upper case
    stream: str
    recv_us: int
    session_id: int
    seq: int
    update_id: int
    bids: list[tuple[float, float]]
    asks: list[tuple[float, float]]


def book(rng: random.Random, mid_ticks: int, tick: float, levels: int) -> tuple[list, list]:
    bids = [(round((mid_ticks - 1 - i) * tick, 8), round(rng.uniform(0.001, 5), 3)) for i in range(levels)]
    asks = [(round((mid_ticks + 1 + i) * tick, 8), round(rng.uniform(0.001, 5), 3)) for i in range(levels)]
    return bids, asks


def make_rows(
    symbols: list[str],
    start_us: int,
    count: int,
    cadence_us: int = 100_000,
    *,
    session_id: int,
    first_seq: int = 0,
    first_update_id: int = 1_000,
    levels: int = 20,
    seed: int = 1,
) -> list[Row]:
    """``count`` messages per symbol, every ``cadence_us``, interleaved in receive order."""
    rng = random.Random(seed)
    mids = {s: 6_700_000 + 1000 * i for i, s in enumerate(symbols)}
    rows = []
    seq = first_seq
    for k in range(count):
        for j, sym in enumerate(symbols):
            mids[sym] += rng.choice((-1, 0, 0, 0, 1))
            bids, asks = book(rng, mids[sym], 0.01, levels)
            rows.append(Row(sym.upper(), f"{sym}@depth20@100ms", start_us + k * cadence_us + j * 7,
                            session_id, seq, first_update_id + 3 * k, bids, asks))
            seq += 1
    return rows


def record(row: Row) -> DepthRecord:
    arr = np.array(row.bids + row.asks, dtype="<f8")
    return DepthRecord(row.stream, row.recv_us, row.session_id, row.seq, row.update_id, len(row.bids), arr.tobytes(), 0)


def open_buffer(path: str | Path):
    return buffer.connect(path, synchronous="NORMAL")


def store(conn, rows: list[Row], *, open_session: bool = True, close_at: int | None = None, batch: int = 2000) -> None:
    """Store rows through the collector's writer function, opening their sessions first."""
    streams = sorted({r.stream for r in rows})
    ids = buffer.stream_ids(conn, [(s, s.split("@")[0], s.split("@", 1)[1]) for s in streams])
    sessions = sorted({r.session_id for r in rows})
    ops = []
    if open_session:
        ops = [SessionOpen(sid, "wss://test", json.dumps(streams), min(r.recv_us for r in rows if r.session_id == sid))
               for sid in sessions]
    for i in range(0, len(rows), batch):
        store_records(conn, ids, [record(r) for r in rows[i : i + batch]], ops=ops if i == 0 else ())
    if close_at is not None:
        store_records(conn, ids, [], ops=[SessionClose(sid, close_at, "test closed") for sid in sessions])


def fill_buffer(
    path: str | Path,
    symbols: list[str],
    start_us: int,
    count: int,
    cadence_us: int = 100_000,
    *,
    session_id: int | None = None,
    first_seq: int = 0,
    first_update_id: int = 1_000,
    seed: int = 1,
    open_session: bool = True,
) -> list[Row]:
    """Store ``count`` books per symbol from ``start_us`` and return them."""
    sid = session_id if session_id is not None else start_us
    rows = make_rows(symbols, start_us, count, cadence_us, session_id=sid, first_seq=first_seq,
                     first_update_id=first_update_id, seed=seed)
    conn = open_buffer(path)
    try:
        store(conn, rows, open_session=open_session)
    finally:
        conn.close()
    return rows


def commit_loop(path: str, start_us: int, busy, stop, out) -> None:
    """A collector's writer in a process of its own (as in production, so no GIL is shared with
    the archive): commits 50 rows every few ms from ``start_us`` on and sends ``out`` the
    latency of each commit that overlapped ``busy``, then ``None`` when ``stop`` is set."""
    import time

    conn = buffer.connect(path, synchronous="NORMAL", busy_timeout_ms=5000)
    streams = ["btcusdt@depth20@100ms", "ethusdt@depth20@100ms"]
    ids = buffer.stream_ids(conn, [(s, s.split("@")[0], s.split("@", 1)[1]) for s in streams])
    store_records(conn, ids, [], ops=[SessionOpen(99, "wss://test", json.dumps(streams), start_us)])
    k = 0
    try:
        while not stop.is_set():
            rows = make_rows(["btcusdt", "ethusdt"], start_us + k * 10_000_000, 25, session_id=99,
                             first_seq=k * 50, first_update_id=10**8 + k * 100, seed=k)
            records = [record(r) for r in rows]
            overlapping = busy.is_set()
            t = time.perf_counter()
            store_records(conn, ids, records)  # the writer's whole transaction, as the collector times it
            elapsed = time.perf_counter() - t
            out.put(("commit", elapsed, overlapping or busy.is_set()))
            k += 1
            time.sleep(0.005)  # a collector's commit cadence, not synchronisation
    finally:
        conn.close()
        out.put(None)


#: A part's compression is what the promise is about: 36,000 depth20 rows (an hour of one stream
#: at 100 ms). Much smaller samples measure the file's fixed costs (footer, dictionaries, row
#: group headers) as much as the books: 3,600 rows of the same books compress 39.6x, 36,000 43.3x.
REALISTIC_ROWS = 36_000


def realistic_hour(path: str | Path, n_rows: int = REALISTIC_ROWS, n_symbols: int = 10) -> int:
    """Store ``n_rows`` depth20 messages of simulator books (slowly changing, on a tick grid, in
    Binance's decimal text) through the collector's decoder and writer function, in the hour at
    ``BASE_HOUR_US``; returns the exact byte size of those messages as Binance JSON frames.

    The same books as ``benchmarks/archive.py`` measures the README's figures on.
    """
    from benchmarks import archive_data

    assert archive_data.BASE_HOUR_US == BASE_HOUR_US
    msgs = archive_data.generate(n_rows, n_symbols)
    archive_data.store_messages(Path(path), msgs)
    return msgs.json_bytes
