"""Buffer rows → Arrow → deterministic Parquet, without Dagster.

The bytes follow from the rows alone: rows sorted by (symbol, recv_time, session_id,
seq), fixed row groups, fixed writer options, fixed schema metadata. A re-run after a
crash therefore produces the same file and the same key, which is what lets a
conditional PUT (``If-None-Match: *``) plus a HEAD comparison replace any overwrite.

Two passes over the part's id range, each in short read statements (the range is
immutable: ids are never reused and cleanup only deletes archived parts):

1. the sort keys of every row (five integers a row), in id-range chunks → sorted once
   with ``np.lexsort`` into the global order and kept as numpy columns (40 bytes a row:
   200 MB for a 5,000,000-row hour);
2. per row group, only what pass 1 does not already hold: ``update_id``, ``n_bids`` and
   the packed ``levels`` blob, fetched by a rowid range when the group's ids are
   contiguous, else by a rowid list; turned into Arrow columns with numpy (blobs joined
   and reinterpreted as float64 pairs, fixed-shape books split by a reshape, no per-row
   Python loop, zero-copy ``Array.from_buffers``) and written as one row group.

Memory is bounded by the keys plus one row group, not by the hour's books.
Profiled with pyinstrument before these choices; see the README's benchmark section.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from orderbook_collector.buffer import hour_folder, levels, reads
from orderbook_collector.fsutil import fsync_dir, sha256_file

from orderbook_assets.archive.datasets import DEPTH_SCHEMA, LEVEL, LEVELS  # noqa: F401
from orderbook_assets.archive.ledger import Part

ROW_GROUP = 32_768
#: Reading keys this many ids at a time keeps every read statement short.
KEY_CHUNK = 200_000
#: Writer options: changing any of them changes the bytes of every future part.
WRITER_OPTIONS = dict(
    compression="zstd",
    compression_level=3,
    use_dictionary=["symbol", "stream"],
    write_statistics=True,
    version="2.6",
    data_page_version="1.0",
)

#: Every version of the depth dataset's writer options, by number; never edit a released one.
#: A part's bytes follow from its rows *and* the options it was first written with, so a
#: re-export must use that same version: :func:`write_part` takes it, and the pipeline finds a
#: part's version from the SHA-256 the ledger (or the store) already holds for it.
#:
#: 1: zstd level 1 with DELTA_BINARY_PACKED integers (recv_time, session_id, seq,
#:    last_update_id: they grow by small steps). Measured against the alternatives by
#:    benchmarks/encodings.py (docs/benchmarks.md): without the encoding files are 17-22 %
#:    larger, or need zstd 6 and 1.3x the write time for the same size. Spark 3.2's vectorized
#:    reader cannot decode it (its row reader can: docs/engines.md).
DEPTH_WRITER_VERSIONS: dict[int, dict] = {
    1: dict(
        WRITER_OPTIONS,
        compression_level=1,
        column_encoding={c: "DELTA_BINARY_PACKED" for c in ("recv_time", "session_id", "seq", "last_update_id")},
    ),
}
#: The version new parts are written with.
DEPTH_WRITER_VERSION = max(DEPTH_WRITER_VERSIONS)
#: The depth dataset's writer options for new parts (changing them means adding a version).
DEPTH_WRITER_OPTIONS = DEPTH_WRITER_VERSIONS[DEPTH_WRITER_VERSION]


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
    writer_version: int = 0  # the DEPTH_WRITER_VERSIONS entry it was written with

    @property
    def compression_ratio(self) -> float:
        return self.json_bytes / self.bytes if self.bytes else 0.0


def object_key(dataset: str, part: Part) -> str:
    """``<dataset>/date=YYYY-MM-DD/hour=HH/part-NNNN-<id_lo>-<id_hi>.parquet`` (relative to the archive)."""
    return f"{dataset}/{hour_folder(part.hour_us)}/part-{part.part:04d}-{part.id_lo}-{part.id_hi}.parquet"




def stream_table(conn: sqlite3.Connection) -> dict[int, tuple[str, str]]:
    """stream_id → (stream name, upper-case symbol)."""
    return {sid: (name, symbol.upper()) for sid, name, symbol in conn.execute("SELECT stream_id, name, symbol FROM streams")}


class Keys:
    """Pass 1's result: the part's rows as columns, in the archive's order."""

    __slots__ = ("id", "stream_id", "recv_us", "session_id", "seq")

    def __init__(self, id, stream_id, recv_us, session_id, seq):  # noqa: A002
        self.id, self.stream_id, self.recv_us, self.session_id, self.seq = id, stream_id, recv_us, session_id, seq

    def __len__(self) -> int:
        return len(self.id)


def read_keys(conn: sqlite3.Connection, part: Part) -> np.ndarray:
    """Pass 1: (id, stream_id, recv_us, session_id, seq) of the part's rows as an int64 array (id order)."""
    out = []
    lo = part.id_lo
    while lo < part.id_hi:
        hi = min(lo + KEY_CHUNK, part.id_hi)
        rows = conn.execute(
            f"SELECT id, stream_id, recv_us, session_id, seq FROM {part.dataset} WHERE {reads.PART_ROWS}",
            reads.IdRange(part.hour_us, lo, hi).params(),
        ).fetchall()
        if rows:
            out.append(np.array(rows, dtype=np.int64))
        del rows
        lo = hi
    return np.concatenate(out) if out else np.empty((0, 5), dtype=np.int64)


def sort_keys(keys: np.ndarray, streams: dict[int, tuple[str, str]]) -> Keys:
    """The keys in the archive's fixed order: symbol, recv_time, session_id, seq (ties: id).

    ``lexsort`` is stable and its keys are total up to (session_id, seq), which is unique
    in the buffer, so the order follows from the rows alone. Columns are reordered one at
    a time to keep the peak memory near one copy of the keys.
    """
    if len(keys) == 0:
        e = np.empty(0, dtype=np.int64)
        return Keys(e, e, e, e, e)
    symbols = sorted({sym for _, sym in streams.values()})
    rank = np.zeros(max(streams) + 1, dtype=np.int64)
    for sid, (_, sym) in streams.items():
        rank[sid] = symbols.index(sym)
    sym_rank = rank[keys[:, 1]]
    order = np.lexsort((keys[:, 4], keys[:, 3], keys[:, 2], sym_rank))
    del sym_rank
    return Keys(*(np.ascontiguousarray(keys[order, c]) for c in range(5)))


def sort_order(keys: np.ndarray, streams: dict[int, tuple[str, str]]) -> np.ndarray:
    """Ids in the archive's fixed order: symbol, recv_time, session_id, seq."""
    return sort_keys(keys, streams).id


class _StreamColumns:
    """stream_id → the symbol and stream columns, built by Arrow's ``take`` (no Python strings per row)."""

    def __init__(self, streams: dict[int, tuple[str, str]]):
        sids = sorted(streams)
        self.index = np.full(max(sids) + 1 if sids else 1, -1, dtype=np.int32)
        self.index[sids] = np.arange(len(sids), dtype=np.int32)
        self.names = _strings([streams[s][0] for s in sids])
        self.symbols = _strings([streams[s][1] for s in sids])
        self.name_len = np.array([len(streams[s][0]) for s in sids], dtype=np.int64)

    def take(self, stream_id: np.ndarray) -> tuple[pa.Array, pa.Array, np.ndarray]:
        idx = self.index[stream_id]
        if len(idx) and idx.min() < 0:
            raise RuntimeError("a buffer row names a stream missing from the streams table")
        ix = levels.as_arrow(idx, pa.int32())
        return self.symbols.take(ix), self.names.take(ix), self.name_len[idx]


def fetch_levels(conn: sqlite3.Connection, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[bytes]]:
    """(update_id, n_bids, levels) of the rows with these ids, in the order of ``ids``.

    One statement: a plain rowid range when the ids are contiguous (the common case of a
    single-symbol stretch), else a rowid lookup list; both return rows in id order, which
    is then mapped back to the requested order.
    """
    sorted_ids = np.sort(ids)
    n = len(ids)
    lo, hi = int(sorted_ids[0]), int(sorted_ids[-1])
    if hi - lo + 1 == n:
        cur = conn.execute(
            "SELECT update_id, n_bids, levels FROM depth_snapshot WHERE id >= ? AND id <= ?", (lo, hi)
        )
    else:
        cur = conn.execute(
            "SELECT update_id, n_bids, levels FROM depth_snapshot "
            "WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id",
            (json.dumps(sorted_ids.tolist()),),
        )
    rows = cur.fetchall()
    if len(rows) != n:
        raise RuntimeError(f"{n - len(rows)} rows of a planned part vanished from the buffer")
    uid_t, nb_t, blobs_t = zip(*rows)
    del rows
    uid = np.fromiter(uid_t, dtype=np.int64, count=n)
    n_bids = np.fromiter(nb_t, dtype=np.int64, count=n)
    if np.array_equal(sorted_ids, ids):
        return uid, n_bids, list(blobs_t)
    pos = np.searchsorted(sorted_ids, ids)
    return uid[pos], n_bids[pos], [blobs_t[i] for i in pos.tolist()]


def build_batch(keys: Keys, start: int, end: int, uid: np.ndarray, n_bids: np.ndarray, blobs: list[bytes],
                cols: _StreamColumns) -> tuple[pa.RecordBatch, int]:
    """One row group's Arrow batch (archive order) and the estimated JSON bytes of its messages."""
    symbol, stream, name_len = cols.take(keys.stream_id[start:end])
    bids, asks, json_bytes = levels_arrays(blobs, n_bids)
    json_bytes += int((60 + name_len + _digits(uid)).sum())
    batch = pa.RecordBatch.from_arrays(
        [
            symbol,
            stream,
            levels.as_arrow(keys.recv_us[start:end], DEPTH_SCHEMA.field("recv_time").type),
            levels.as_arrow(keys.session_id[start:end], pa.int64()),
            levels.as_arrow(keys.seq[start:end], pa.int64()),
            levels.as_arrow(uid, pa.int64()),
            bids,
            asks,
        ],
        schema=DEPTH_SCHEMA,
    )
    return batch, json_bytes


def levels_arrays(blobs: list[bytes], n_bids: np.ndarray) -> tuple[pa.ListArray, pa.ListArray, int]:
    """Packed level blobs → (bids, asks) through the buffer's codec, and the estimated JSON size
    of the levels (for the compression figure in the part's metadata)."""
    bids, asks, flat = levels.to_arrow(blobs, n_bids)
    # Binance writes each value as a string with 8 decimals: ["123.45000000","0.01000000"],
    # digits counted on every 8th value (an estimate for metadata; cheap and deterministic)
    sample = flat[::8]
    digits = int(_digits(sample).sum()) * len(flat) // len(sample) if len(sample) else 0
    json_bytes = digits + (len(flat) // 2) * (2 * 11 + 4)
    return bids, asks, json_bytes


def _strings(values: list[str]) -> pa.Array:
    data = [v.encode() for v in values]
    offsets = np.zeros(len(data) + 1, dtype=np.int32)
    np.cumsum([len(d) for d in data], out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), len(data), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))])


def _digits(values: np.ndarray) -> np.ndarray:
    """Digits before the decimal point of non-negative values (1 for values below 10); an estimate
    (float32 logarithms: a value a hair below a power of ten may count one digit more)."""
    return np.log10(np.maximum(values.astype(np.float32), np.float32(1.0))).astype(np.int64) + 1


def write_part(conn: sqlite3.Connection, part: Part, path: Path, version: int | None = None,
               *, options: dict | None = None) -> Exported:
    """Write the part's rows as Parquet to ``path`` (temp file, fsync, rename) and hash it back.

    ``version``: which :data:`DEPTH_WRITER_VERSIONS` entry to write with (default: the current
    :data:`DEPTH_WRITER_VERSION`; a re-export uses the one the part was first written with).
    ``options``: explicit writer options instead, for benchmarks comparing candidates; the
    product never passes them.
    """
    version = DEPTH_WRITER_VERSION if version is None else version
    options = DEPTH_WRITER_VERSIONS[version] if options is None else options
    streams = stream_table(conn)
    keys = sort_keys(read_keys(conn, part), streams)
    cols = _StreamColumns(streams)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    json_bytes = 0
    with open(tmp, "wb") as f:
        with pq.ParquetWriter(f, DEPTH_SCHEMA, **options) as writer:
            for start in range(0, len(keys), ROW_GROUP):
                end = min(start + ROW_GROUP, len(keys))
                uid, n_bids, blobs = fetch_levels(conn, keys.id[start:end])
                batch, jb = build_batch(keys, start, end, uid, n_bids, blobs, cols)
                del blobs
                json_bytes += jb
                writer.write_batch(batch, row_group_size=ROW_GROUP)
                del batch
            if len(keys) == 0:
                writer.write_table(DEPTH_SCHEMA.empty_table())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    size, digest = sha256_file(path)
    first = int(keys.recv_us.min()) if len(keys) else None
    last = int(keys.recv_us.max()) if len(keys) else None
    return Exported(path, len(keys), size, digest, first, last, json_bytes, version)


def write_part_as(conn: sqlite3.Connection, part: Part, path: Path, sha256: str,
                  tried: int | None = None) -> Exported | None:
    """Re-export a part whose bytes are already known (recorded in the ledger or stored):
    the part written with the writer version that gives exactly ``sha256``, newest version
    tried first (``tried``: a version already written and found different); None if no
    version does (the export is then not deterministic).

    A part first written under older writer options keeps those options for good, so it
    still verifies against its recorded hash after the options changed.
    """
    for version in sorted(DEPTH_WRITER_VERSIONS, reverse=True):
        if version == tried:
            continue
        exported = write_part(conn, part, path, version)
        if exported.sha256 == sha256:
            return exported
    return None
