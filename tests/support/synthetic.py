"""Synthetic archives for the analysts' tests: realistic partial-depth books in the Hive layout.

The books are in ``depth_snapshot`` schema version 1 (spot, before USD-M), as parts archived
before the schema change are: the views must read them as well as new ones.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from orderbook_assets.analytics import views
from orderbook_assets.archive import datasets
from orderbook_core import buffer

HOUR_US = buffer.HOUR_US
T0 = 1_795_510_800_000_000  # 2026-11-24 09:00:00 UTC

# ----------------------------------------------------------------------------- synthetic books


def synthetic_depth(
    start_us: int = T0,
    seconds: float = 120,
    symbols: dict[str, float] | None = None,
    cadence_ms: int = 100,
    levels: int = 20,
    seed: int = 7,
    session_id: int = 1,
) -> pa.Table:
    """Realistic-looking partial-depth snapshots: a random-walk mid on a tick grid,
    mostly one-tick spreads, lognormal quantities; rows ordered by (symbol, recv_time)."""
    symbols = symbols or {"BTCUSDT": 97_000.0, "ETHUSDT": 3_500.0}
    rng = np.random.default_rng(seed)
    n = int(seconds * 1000 / cadence_ms)
    tables = []
    for k, (sym, price0) in enumerate(symbols.items()):
        tick = 0.01
        jitter = rng.integers(0, 2_000, n)  # receive-time jitter in µs
        recv = start_us + np.arange(n, dtype=np.int64) * cadence_ms * 1000 + jitter
        mid_ticks = np.round(price0 / tick + np.cumsum(rng.normal(0, price0 * 2e-6 / tick, n)))
        spread_ticks = 1 + (rng.random(n) < 0.15) * rng.integers(1, 6, n)
        best_bid = (mid_ticks - spread_ticks // 2) * tick
        best_ask = best_bid + spread_ticks * tick
        steps = np.arange(levels) * tick
        bid_px = np.round(best_bid[:, None] - steps, 2)
        ask_px = np.round(best_ask[:, None] + steps, 2)
        bid_q = np.round(rng.lognormal(-1.5, 1.0, (n, levels)), 5)
        ask_q = np.round(rng.lognormal(-1.5, 1.0, (n, levels)), 5)

        def lists(px, q):
            values = pa.StructArray.from_arrays(
                [pa.array(px.ravel()), pa.array(q.ravel())], fields=list(views.LEVEL)
            )
            return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * levels), values)

        stream = f"{sym.lower()}@depth{levels}@100ms"
        tables.append(pa.Table.from_arrays(
            [
                pa.array([sym] * n), pa.array([stream] * n),
                pa.array(recv).cast(pa.timestamp("us", tz="UTC")),
                pa.array(np.full(n, session_id, dtype=np.int64)),
                pa.array(np.arange(n, dtype=np.int64) * len(symbols) + k),
                pa.array(10_000_000 * (k + 1) + np.arange(n, dtype=np.int64) * 3),
                lists(bid_px, bid_q), lists(ask_px, ask_q),
            ],
            schema=datasets.DEPTH_SCHEMA_V1,
        ))
    return pa.concat_tables(tables)


def write_archive(table: pa.Table, root: Path, dataset: str = "depth_snapshot", part: int = 0) -> list[Path]:
    """Write ``table`` into the Hive layout, one file per UTC hour, as the archive job does."""
    us = table["recv_time"].cast(pa.int64()).to_numpy()
    hours = us - us % HOUR_US
    written = []
    for h in np.unique(hours):
        folder = root / dataset / views.hour_path(int(h))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"part-{part:04d}.parquet"
        pq.write_table(table.filter(pa.array(hours == h)), path, compression="zstd")
        written.append(path)
    return written


def make_buffer(path: Path, table: pa.Table, archived: list[tuple[int, int]] = ()) -> sqlite3.Connection:
    """A real buffer holding ``table``'s rows (ids 1..n in table order), with
    ``archived`` (first id, last id) ranges recorded as archived export parts (whose
    ledger ranges are half-open: ``id_lo = first id - 1``, see buffer.reads)."""
    conn = buffer.connect(path)
    names = sorted(set(table["stream"].to_pylist()))
    ids = buffer.stream_ids(conn, [(n, n.split("@")[0], n.split("@", 1)[1]) for n in names])
    cols = table.to_pydict()
    rows = []
    for i in range(table.num_rows):
        bids, asks = cols["bids"][i], cols["asks"][i]
        levels = np.array([[lv["price"], lv["qty"]] for lv in bids + asks], dtype="<f8").tobytes()
        us = int(table["recv_time"][i].value)
        rows.append((ids[cols["stream"][i]], cols["session_id"][i], cols["seq"][i], us,
                     cols["last_update_id"][i], len(bids), levels))
    with buffer.transaction(conn):
        conn.executemany(
            "INSERT INTO depth_snapshot (stream_id, session_id, seq, recv_us, update_id, n_bids, levels) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        conn.execute(
            "INSERT INTO buffer_hours SELECT 'depth_snapshot', recv_us - recv_us % ?, min(id), max(id), count(*) "
            "FROM depth_snapshot GROUP BY 2", (HOUR_US,))
        for part, (first, last) in enumerate(archived):
            hour = conn.execute("SELECT recv_us - recv_us % ? FROM depth_snapshot WHERE id = ?", (HOUR_US, first)).fetchone()[0]
            conn.execute(
                "INSERT INTO export_parts (dataset, hour_us, part, id_lo, id_hi, state, planned_us, updated_us) "
                "VALUES ('depth_snapshot', ?, ?, ?, ?, 'archived', 0, 0)", (hour, part, first - 1, last))
    return conn


def by_time(table: pa.Table) -> pa.Table:
    """Rows in the order the collector stores them (receive time)."""
    return table.sort_by([("recv_time", "ascending"), ("symbol", "ascending")])




def one_book(symbol: str, t_us: int, bids, asks, seq: int, uid: int, session_id: int = 1) -> dict:
    return {
        "symbol": symbol, "stream": f"{symbol.lower()}@depth5@100ms", "recv_time": t_us,
        "session_id": session_id, "seq": seq, "last_update_id": uid,
        "bids": [{"price": p, "qty": q} for p, q in bids], "asks": [{"price": p, "qty": q} for p, q in asks],
    }


def books(rows: list[dict]) -> pa.Table:
    cols = {k: [r[k] for r in rows] for k in datasets.DEPTH_SCHEMA_V1.names}
    cols["recv_time"] = pa.array(cols["recv_time"], pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    return pa.Table.from_pydict(cols, schema=datasets.DEPTH_SCHEMA_V1)
