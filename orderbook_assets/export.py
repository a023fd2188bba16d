"""Buffer rows → Arrow → deterministic Parquet, without Dagster.

The bytes follow from the rows alone: rows sorted by (symbol, recv_time, session_id,
seq), fixed row groups, fixed writer options, fixed schema metadata. A re-run after a
crash therefore produces the same file and the same key, which is what lets a
conditional PUT (``If-None-Match: *``) plus a HEAD comparison replace any overwrite.

Two passes over the part's id range, each in short read statements (the range is
immutable: ids are never reused and cleanup only deletes archived parts):

1. the sort keys of every row (five integers a row) → the global order;
2. the rows themselves, fetched by id one row group at a time, turned into Arrow
   columns with numpy (the packed ``levels`` blobs are joined and reinterpreted as
   float64 pairs, no per-row Python loop) and written as one row group.

Memory is bounded by one row group, not by the hour.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .ledger import Part

ROW_GROUP = 32_768
#: Reading keys this many ids at a time keeps every read statement short.
KEY_CHUNK = 200_000
SCHEMA_VERSION = "1"

LEVEL = pa.struct([pa.field("price", pa.float64(), nullable=False), pa.field("qty", pa.float64(), nullable=False)])
LEVELS = pa.list_(pa.field("item", LEVEL, nullable=False))

DEPTH_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("stream", pa.string(), nullable=False),
        pa.field("recv_time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("session_id", pa.int64(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("last_update_id", pa.int64(), nullable=False),
        pa.field("bids", LEVELS, nullable=False),
        pa.field("asks", LEVELS, nullable=False),
    ],
    metadata={"orderbook.dataset": "depth_snapshot", "orderbook.schema_version": SCHEMA_VERSION},
)

#: Writer options: changing any of them changes the bytes of every future part.
WRITER_OPTIONS = dict(
    compression="zstd",
    compression_level=3,
    use_dictionary=["symbol", "stream"],
    write_statistics=True,
    version="2.6",
    data_page_version="1.0",
)


@dataclass(frozen=True)
class Exported:
    """A Parquet file written for a part, and what it holds."""

    path: Path
    rows: int
    bytes: int
    sha256: str
    first_recv_us: int | None
    last_recv_us: int | None
    json_bytes: int  # estimated size of the same messages as Binance JSON

    @property
    def compression_ratio(self) -> float:
        return self.json_bytes / self.bytes if self.bytes else 0.0


def object_key(dataset: str, part: Part, hour_start: datetime | None = None) -> str:
    """``<dataset>/date=YYYY-MM-DD/hour=HH/part-NNNN-<id_lo>-<id_hi>.parquet`` (relative to the archive)."""
    start = hour_start or datetime.fromtimestamp(part.hour_us / 1e6, tz=timezone.utc)
    return (
        f"{dataset}/date={start:%Y-%m-%d}/hour={start:%H}/"
        f"part-{part.part:04d}-{part.id_lo}-{part.id_hi}.parquet"
    )


def sha256_file(path: Path) -> tuple[int, str]:
    """(size, hex SHA-256) of a file, read back from disk."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def stream_table(conn: sqlite3.Connection) -> dict[int, tuple[str, str]]:
    """stream_id → (stream name, upper-case symbol)."""
    return {sid: (name, symbol.upper()) for sid, name, symbol in conn.execute("SELECT stream_id, name, symbol FROM streams")}


def read_keys(conn: sqlite3.Connection, part: Part) -> np.ndarray:
    """Pass 1: (id, stream_id, recv_us, session_id, seq) of the part's rows as an int64 array."""
    out = []
    lo = part.id_lo
    while lo < part.id_hi:
        hi = min(lo + KEY_CHUNK, part.id_hi)
        rows = conn.execute(
            "SELECT id, stream_id, recv_us, session_id, seq FROM depth_snapshot "
            "WHERE id > ? AND id <= ? AND recv_us >= ? AND recv_us < ?",
            (lo, hi, part.hour_us, part.hour_end_us),
        ).fetchall()
        if rows:
            out.append(np.array(rows, dtype=np.int64))
        lo = hi
    return np.concatenate(out) if out else np.empty((0, 5), dtype=np.int64)


def sort_order(keys: np.ndarray, streams: dict[int, tuple[str, str]]) -> np.ndarray:
    """Ids in the archive's fixed order: symbol, recv_time, session_id, seq."""
    if len(keys) == 0:
        return np.empty(0, dtype=np.int64)
    symbols = sorted({sym for _, sym in streams.values()})
    rank = {sid: symbols.index(sym) for sid, (_, sym) in streams.items()}
    sym_rank = np.vectorize(rank.__getitem__, otypes=[np.int64])(keys[:, 1])
    order = np.lexsort((keys[:, 4], keys[:, 3], keys[:, 2], sym_rank))
    return keys[order, 0]


def fetch_batch(conn: sqlite3.Connection, ids: np.ndarray, streams: dict[int, tuple[str, str]]) -> tuple[pa.RecordBatch, int]:
    """Pass 2: the rows with these ids, in this order, as an Arrow batch; plus estimated JSON bytes."""
    rows = conn.execute(
        "SELECT id, stream_id, session_id, seq, recv_us, update_id, n_bids, levels FROM depth_snapshot "
        "WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id",
        (json.dumps(ids.tolist()),),
    ).fetchall()
    if len(rows) != len(ids):
        raise RuntimeError(f"{len(ids) - len(rows)} rows of a planned part vanished from the buffer")
    cols = list(zip(*rows))
    got = np.array(cols[0], dtype=np.int64)
    # rows came back by id; put them in the archive order
    pos = np.searchsorted(got, ids)
    take = lambda c: np.array(c, dtype=np.int64)[pos]  # noqa: E731
    stream_id, session_id, seq, recv, uid, n_bids = (take(cols[i]) for i in range(1, 7))
    blobs = [cols[7][i] for i in pos]
    bids, asks, json_bytes = levels_arrays(blobs, n_bids)
    sids = sorted(streams)
    names = np.array([streams[s][0] for s in sids], dtype=object)
    syms = np.array([streams[s][1] for s in sids], dtype=object)
    idx = np.searchsorted(np.array(sids), stream_id)
    json_bytes += int((60 + np.vectorize(len)(names)[idx] + _digits(uid.astype(np.float64))).sum())
    batch = pa.RecordBatch.from_arrays(
        [
            pa.array(syms[idx], type=pa.string()),
            pa.array(names[idx], type=pa.string()),
            pa.array(recv, type=pa.timestamp("us", tz="UTC")),
            pa.array(session_id),
            pa.array(seq),
            pa.array(uid),
            bids,
            asks,
        ],
        schema=DEPTH_SCHEMA,
    )
    return batch, json_bytes


def levels_arrays(blobs: list[bytes], n_bids: np.ndarray) -> tuple[pa.ListArray, pa.ListArray, int]:
    """Packed level blobs → (bids, asks) list<struct<price, qty>> arrays, vectorised.

    Each blob holds little-endian float64 (price, qty) pairs, bids first; ``n_bids`` says
    where the asks start. Also returns the estimated JSON size of the levels.
    """
    n = len(blobs)
    counts = np.fromiter(map(len, blobs), dtype=np.int64, count=n) // 16
    flat = np.frombuffer(b"".join(blobs), dtype="<f8").reshape(-1, 2)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    is_bid = (np.arange(len(flat)) - starts) < np.repeat(n_bids, counts)
    n_asks = counts - n_bids

    def side(mask: np.ndarray, per_row: np.ndarray) -> pa.ListArray:
        vals = flat[mask]
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(per_row, out=offsets[1:])
        struct = pa.StructArray.from_arrays(
            [pa.array(vals[:, 0]), pa.array(vals[:, 1])], fields=list(LEVEL)
        )
        return pa.ListArray.from_arrays(pa.array(offsets), struct, type=LEVELS)

    # Binance writes each value as a string with 8 decimals: ["123.45000000","0.01000000"],
    json_bytes = int(_digits(flat).sum()) + len(flat) * (2 * 11 + 4)
    return side(is_bid, n_bids), side(~is_bid, n_asks), json_bytes


def _digits(values: np.ndarray) -> np.ndarray:
    """Digits before the decimal point of non-negative values (1 for values below 10)."""
    return np.floor(np.log10(np.maximum(values, 1.0))).astype(np.int64) + 1


def write_part(conn: sqlite3.Connection, part: Part, path: Path) -> Exported:
    """Write the part's rows as Parquet to ``path`` (temp file, fsync, rename) and hash it back."""
    streams = stream_table(conn)
    keys = read_keys(conn, part)
    ids = sort_order(keys, streams)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    json_bytes = 0
    with open(tmp, "wb") as f:
        with pq.ParquetWriter(f, DEPTH_SCHEMA, **WRITER_OPTIONS) as writer:
            for start in range(0, len(ids), ROW_GROUP):
                batch, jb = fetch_batch(conn, ids[start : start + ROW_GROUP], streams)
                json_bytes += jb
                writer.write_batch(batch, row_group_size=ROW_GROUP)
            if len(ids) == 0:
                writer.write_table(DEPTH_SCHEMA.empty_table())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    size, digest = sha256_file(path)
    first = int(keys[:, 2].min()) if len(keys) else None
    last = int(keys[:, 2].max()) if len(keys) else None
    return Exported(path, len(ids), size, digest, first, last, json_bytes)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
