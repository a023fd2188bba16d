"""Buffer rows → Arrow → deterministic Parquet, without Dagster, for every stream dataset.

One code path serves every dataset: :data:`SOURCES` says, per dataset, which buffer
columns give each of its own Parquet columns and how they convert (ms → µs timestamps,
0/1 → bool, packed levels → ``list<struct>``); the common columns (market, symbol,
stream, recv_time, session_id, seq) come from the pass-1 keys and the ``streams`` table.

The bytes follow from the rows alone: rows sorted by (symbol, recv_time, session_id,
seq), fixed row groups, fixed writer options, fixed schema metadata. A re-run after a
crash therefore produces the same file and the same key, which is what lets a
conditional PUT (``If-None-Match: *``) plus a HEAD comparison replace any overwrite.

Two passes over the part's id range, each in short read statements (the range is
immutable: ids are never reused and cleanup only deletes archived parts):

1. the sort keys of every row (five integers a row), in id-range chunks → sorted once
   with ``np.lexsort`` into the global order and kept as numpy columns (40 bytes a row:
   200 MB for a 5,000,000-row hour);
2. per row group, only what pass 1 does not already hold (the dataset's own columns, e.g.
   ``update_id``, ``n_bids`` and the packed ``levels`` blob of a depth snapshot), fetched by a rowid range when the group's ids are
   contiguous, else by a rowid list; turned into Arrow columns with numpy (blobs joined
   and reinterpreted as float64 pairs, fixed-shape books split by a reshape, no per-row
   Python loop, zero-copy ``Array.from_buffers``) and written as one row group.

Memory is bounded by the keys plus one row group, not by the hour's books.
Profiled with pyinstrument before these choices; see the README's benchmark section.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from orderbook_core import kinds
from orderbook_core.buffer import hour_folder, levels, reads
from orderbook_core.fsutil import fsync_dir, sha256_file

from orderbook_assets.archive import datasets as ds
from orderbook_assets.archive.datasets import DEPTH_SCHEMA, LEVEL, LEVELS  # noqa: F401
from orderbook_core.buffer.ledger import Part

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



class WriterVersion(NamedTuple):
    """What fixes a part's bytes besides its rows: the schema it was written in and the options."""

    schema: pa.Schema
    options: dict


def _delta(*columns: str) -> dict[str, str]:
    return {c: "DELTA_BINARY_PACKED" for c in columns}


_DEPTH_V1_OPTIONS = dict(WRITER_OPTIONS, compression_level=1,
                         column_encoding=_delta("recv_time", "session_id", "seq", "last_update_id"))


def _options(dataset: ds.Dataset) -> dict:
    """The options of a dataset's first version: zstd 1, dictionaries for the repeated strings,
    DELTA_BINARY_PACKED for the integers that grow by small steps (as measured for depth)."""
    strings = [f.name for f in dataset.schema if f.name in ("market", "symbol", "stream", "reason")]
    ints = [f.name for f in dataset.schema
            if f.type in (pa.int64(), ds.TS) and f.name not in ("event_time", "trade_time", "transaction_time")]
    return dict(WRITER_OPTIONS, compression_level=1, use_dictionary=strings, column_encoding=_delta(*ints))


#: Every writer version of every dataset, by number; never edit a released one. A part's bytes
#: follow from its rows *and* the version it was first written with, so a re-export must use
#: that same version: :func:`write_part` takes it, and the pipeline finds a part's version from
#: the SHA-256 the ledger (or the store) already holds for it.
#:
#: ``depth_snapshot`` 1: schema version 1 (no market, no USD-M columns); zstd level 1 with
#: DELTA_BINARY_PACKED integers (recv_time, session_id, seq, last_update_id: they grow by small
#: steps). Measured by benchmarks/encodings.py (docs/benchmarks.md): without the encoding files
#: are 17-22 % larger, or need zstd 6 and 1.3x the write time. Spark 3.2's vectorized reader
#: cannot decode it (its row reader can: docs/engines.md).
#: ``depth_snapshot`` 2: schema version 2 (``market`` and the USD-M columns), same encodings.
#: Every other dataset 1: its first schema, :func:`_options`.
WRITER_VERSIONS: dict[str, dict[int, WriterVersion]] = {
    name: {1: WriterVersion(d.schema, _options(d))} for name, d in ds.DATASETS.items()
}
WRITER_VERSIONS[ds.DEPTH] = {
    1: WriterVersion(ds.DEPTH_SCHEMA_V1, _DEPTH_V1_OPTIONS),
    2: WriterVersion(ds.DEPTH_SCHEMA, dict(_DEPTH_V1_OPTIONS, use_dictionary=["market", "symbol", "stream"])),
}
#: The depth dataset's versions (the name benchmarks and older tests know).
DEPTH_WRITER_VERSIONS = WRITER_VERSIONS[ds.DEPTH]


def current_version(dataset: str) -> int:
    """The version new parts of ``dataset`` are written with: its newest."""
    return max(WRITER_VERSIONS[dataset])


#: The depth dataset's writer options for new parts (changing them means adding a version).
DEPTH_WRITER_OPTIONS = DEPTH_WRITER_VERSIONS[current_version(ds.DEPTH)].options


#: How a buffer column becomes a Parquet column (the spec's value types).
Kind = kinds.Type


class Source(NamedTuple):
    column: str  # Parquet column (``bids`` for LEVELS, which also gives ``asks``)
    sql: str  # buffer expression(s)
    kind: Kind


#: Per dataset: its buffer table (same name) → its own Parquet columns (``orderbook_core.kinds``).
SOURCES: dict[str, tuple[Source, ...]] = {
    name: tuple(Source(f.column, ", ".join(f.buffer), f.type) for f in spec.fields)
    for name, spec in kinds.SPECS.items()
}


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
    writer_version: int = 0  # the WRITER_VERSIONS entry of its dataset it was written with

    @property
    def compression_ratio(self) -> float:
        return self.json_bytes / self.bytes if self.bytes else 0.0


def object_key(dataset: str, part: Part) -> str:
    """``<dataset>/date=YYYY-MM-DD/hour=HH/part-NNNN-<id_lo>-<id_hi>.parquet`` (relative to the archive)."""
    return f"{dataset}/{hour_folder(part.hour_us)}/part-{part.part:04d}-{part.id_lo}-{part.id_hi}.parquet"




class StreamInfo(NamedTuple):
    name: str  # as subscribed, e.g. ``btcusdt@depth@100ms`` (the buffer key without ``usdm:``)
    symbol: str  # upper case
    market: str


def stream_table(conn: sqlite3.Connection) -> dict[int, StreamInfo]:
    """stream_id → (stream name as subscribed, upper-case symbol, market), from ``streams``."""
    out = {}
    for sid, key, symbol, market in reads.streams(conn):
        prefix = f"{market}:"
        out[sid] = StreamInfo(key[len(prefix):] if key.startswith(prefix) else key, symbol.upper(), market)
    return out


class Keys:
    """Pass 1's result: the part's rows as columns, in the archive's order."""

    __slots__ = ("id", "stream_id", "recv_us", "session_id", "seq")

    def __init__(self, id, stream_id, recv_us, session_id, seq):  # noqa: A002
        self.id, self.stream_id, self.recv_us, self.session_id, self.seq = id, stream_id, recv_us, session_id, seq

    def __len__(self) -> int:
        return len(self.id)


def read_keys(conn: sqlite3.Connection, part: Part) -> np.ndarray:
    """Pass 1: (id, stream_id, recv_us, session_id, seq) of the part's rows as an int64 array (id order).

    Rows without a session (REST snapshots) get 0 for both: their order is then by symbol,
    receive time and id.
    """
    out = []
    lo = part.id_lo
    with_session = ds.DATASETS[part.dataset].has_session
    while lo < part.id_hi:
        hi = min(lo + KEY_CHUNK, part.id_hi)
        rows = reads.part_keys(conn, part.dataset, reads.IdRange(part.hour_us, lo, hi), with_session=with_session)
        if rows:
            out.append(np.array(rows, dtype=np.int64))
        del rows
        lo = hi
    return np.concatenate(out) if out else np.empty((0, 5), dtype=np.int64)


def sort_keys(keys: np.ndarray, streams: dict[int, StreamInfo]) -> Keys:
    """The keys in the archive's fixed order: symbol, recv_time, session_id, seq (ties: id,
    the order pass 1 reads them in).

    ``lexsort`` is stable and its keys are total up to (session_id, seq), which is unique
    in the buffer, so the order follows from the rows alone. Columns are reordered one at
    a time to keep the peak memory near one copy of the keys.
    """
    if len(keys) == 0:
        e = np.empty(0, dtype=np.int64)
        return Keys(e, e, e, e, e)
    symbols = sorted({s.symbol for s in streams.values()})
    rank = np.zeros(max(streams) + 1, dtype=np.int64)
    for sid, s in streams.items():
        rank[sid] = symbols.index(s.symbol)
    sym_rank = rank[keys[:, 1]]
    order = np.lexsort((keys[:, 4], keys[:, 3], keys[:, 2], sym_rank))
    del sym_rank
    return Keys(*(np.ascontiguousarray(keys[order, c]) for c in range(5)))


def sort_order(keys: np.ndarray, streams: dict[int, StreamInfo]) -> np.ndarray:
    """Ids in the archive's fixed order: symbol, recv_time, session_id, seq."""
    return sort_keys(keys, streams).id


class _StreamColumns:
    """stream_id → the market, symbol and stream columns, built by Arrow's ``take`` (no Python strings per row)."""

    def __init__(self, streams: dict[int, StreamInfo]):
        sids = sorted(streams)
        self.index = np.full(max(sids) + 1 if sids else 1, -1, dtype=np.int32)
        self.index[sids] = np.arange(len(sids), dtype=np.int32)
        self.names = _strings([streams[s].name for s in sids])
        self.symbols = _strings([streams[s].symbol for s in sids])
        self.markets = _strings([streams[s].market for s in sids])
        self.name_len = np.array([len(streams[s].name) for s in sids], dtype=np.int64)

    def take(self, stream_id: np.ndarray) -> tuple[pa.Array, pa.Array, pa.Array, np.ndarray]:
        if len(stream_id) and (stream_id.max() >= len(self.index) or self.index[stream_id].min() < 0):
            raise RuntimeError("a buffer row names a stream missing from the streams table")
        idx = self.index[stream_id]
        ix = levels.as_arrow(idx, pa.int32())
        return self.markets.take(ix), self.symbols.take(ix), self.names.take(ix), self.name_len[idx]


def fetch_columns(conn: sqlite3.Connection, dataset: str, ids: np.ndarray) -> list[tuple]:
    """The dataset's own buffer columns (:data:`SOURCES`) of the rows with these ids, in the
    order of ``ids``, one tuple per SQL column.

    One statement: a plain rowid range when the ids are contiguous (the common case of a
    single-symbol stretch), else a rowid lookup list; both return rows in id order, which
    is then mapped back to the requested order.
    """
    sorted_ids = np.sort(ids)
    n = len(ids)
    lo, hi = int(sorted_ids[0]), int(sorted_ids[-1])
    cols = [src.sql for src in SOURCES[dataset]]
    if hi - lo + 1 == n:
        rows = reads.columns_in_id_range(conn, dataset, cols, lo, hi)
    else:
        rows = reads.columns_of_ids(conn, dataset, cols, sorted_ids.tolist())
    if len(rows) != n:
        raise RuntimeError(f"{n - len(rows)} rows of a planned part vanished from the buffer")
    columns = list(zip(*rows))
    del rows
    if np.array_equal(sorted_ids, ids):
        return columns
    pos = np.searchsorted(sorted_ids, ids)
    out = []
    for c in columns:  # reordered by numpy's fancy indexing (a C loop), not per value in Python
        arr = np.empty(n, dtype=object)
        arr[:] = c
        out.append(arr[pos])
    return out


def own_arrays(dataset: str, columns: list[tuple], n: int) -> tuple[dict[str, pa.Array], int]:
    """The dataset's own Parquet columns from :func:`fetch_columns`, and the estimated JSON
    bytes of their levels (0 without levels)."""
    out: dict[str, pa.Array] = {}
    json_bytes = 0
    i = 0
    schema = ds.DATASETS[dataset].schema
    for src in SOURCES[dataset]:
        k = src.kind
        if k is Kind.LEVELS:
            n_bids = np.fromiter(columns[i], dtype=np.int64, count=n)
            out["bids"], out["asks"], json_bytes = levels_arrays(list(columns[i + 1]), n_bids)
            i += 2
            continue
        values = columns[i]
        i += 1
        if k is Kind.INT:
            arr = levels.as_arrow(np.fromiter(values, dtype=np.int64, count=n), pa.int64())
        elif k is Kind.MS:
            arr = levels.as_arrow(np.fromiter(values, dtype=np.int64, count=n) * 1000, ds.TS)
        elif k is Kind.FLOAT:
            arr = levels.as_arrow(np.fromiter(values, dtype=np.float64, count=n), pa.float64())
        elif k is Kind.BOOL:
            arr = pa.array(np.fromiter(values, dtype=np.bool_, count=n))
        elif k is Kind.TEXT:
            arr = pa.array(values, pa.string())
        elif k is Kind.MS_NULL:
            arr = pc.multiply(pa.array(values, pa.int64()), 1000).cast(ds.TS)
        elif k is Kind.FLOAT_NULL:
            arr = pa.array(values, pa.float64())
        else:  # INT_NULL
            arr = pa.array(values, pa.int64())
        out[src.column] = arr.cast(schema.field(src.column).type) if arr.type != schema.field(src.column).type else arr
    return out, json_bytes


def build_batch(dataset: str, schema: pa.Schema, keys: Keys, start: int, end: int, columns: list[tuple],
                cols: _StreamColumns) -> tuple[pa.RecordBatch, int]:
    """One row group's Arrow batch (archive order, in ``schema``) and the estimated JSON bytes of its messages."""
    n = end - start
    market, symbol, stream, name_len = cols.take(keys.stream_id[start:end])
    own, json_bytes = own_arrays(dataset, columns, n)
    if json_bytes and "last_update_id" in own:
        uid = np.asarray(own["last_update_id"])
        json_bytes += int((60 + name_len + _digits(uid)).sum())
    if ds.DATASETS[dataset].has_session:
        session = levels.as_arrow(keys.session_id[start:end], pa.int64())
        seq = levels.as_arrow(keys.seq[start:end], pa.int64())
    else:
        session = seq = pa.nulls(n, pa.int64())
    arrays = {
        "market": market, "symbol": symbol, "stream": stream,
        "recv_time": levels.as_arrow(keys.recv_us[start:end], ds.TS), "session_id": session, "seq": seq, **own,
    }
    return pa.RecordBatch.from_arrays([arrays[f.name] for f in schema], schema=schema), json_bytes


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


def read_rows(conn: sqlite3.Connection, dataset: str, ranges: list[reads.IdRange],
              schema: pa.Schema | None = None) -> pa.Table:
    """The buffer rows of ``ranges`` as one Arrow table in the dataset's schema, in id order
    (the analysts' tail: the same conversion as the export, so tail and archive agree)."""
    schema = ds.DATASETS[dataset].schema if schema is None else schema
    streams = stream_table(conn)
    cols = _StreamColumns(streams)
    batches = []
    with_session = ds.DATASETS[dataset].has_session
    for rng in ranges:
        keys = np.array(reads.part_keys(conn, dataset, rng, with_session=with_session, ordered=True), dtype=np.int64)
        if len(keys) == 0:
            continue
        k = Keys(*(np.ascontiguousarray(keys[:, c]) for c in range(5)))
        for start in range(0, len(k), ROW_GROUP):
            end = min(start + ROW_GROUP, len(k))
            batch, _ = build_batch(dataset, schema, k, start, end, fetch_columns(conn, dataset, k.id[start:end]), cols)
            batches.append(batch)
    return pa.Table.from_batches(batches, schema=schema)


def write_table(table: pa.Table, path: Path, options: dict) -> tuple[int, str]:
    """Write a whole table as Parquet to ``path`` (temp file, fsync, rename); (size, sha256).

    Deterministic for fixed ``options``: the derived objects (coverage, the fleet merge) use it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        pq.write_table(table, f, **options)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return sha256_file(path)


def write_part(conn: sqlite3.Connection, part: Part, path: Path, version: int | None = None,
               *, options: dict | None = None) -> Exported:
    """Write the part's rows as Parquet to ``path`` (temp file, fsync, rename) and hash it back.

    ``version``: which :data:`WRITER_VERSIONS` entry of the part's dataset to write with
    (default: its newest; a re-export uses the one the part was first written with).
    ``options``: explicit writer options instead, for benchmarks comparing candidates; the
    product never passes them.
    """
    version = current_version(part.dataset) if version is None else version
    schema, chosen = WRITER_VERSIONS[part.dataset][version]
    options = chosen if options is None else options
    streams = stream_table(conn)
    keys = sort_keys(read_keys(conn, part), streams)
    cols = _StreamColumns(streams)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    json_bytes = 0
    with open(tmp, "wb") as f:
        with pq.ParquetWriter(f, schema, **options) as writer:
            for start in range(0, len(keys), ROW_GROUP):
                end = min(start + ROW_GROUP, len(keys))
                columns = fetch_columns(conn, part.dataset, keys.id[start:end])
                batch, jb = build_batch(part.dataset, schema, keys, start, end, columns, cols)
                del columns
                json_bytes += jb
                writer.write_batch(batch, row_group_size=ROW_GROUP)
                del batch
            if len(keys) == 0:
                writer.write_table(schema.empty_table())
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

    A part first written under older writer options (or an older schema) keeps them for
    good, so it still verifies against its recorded hash after they changed.
    """
    for version in sorted(WRITER_VERSIONS[part.dataset], reverse=True):
        if version == tried:
            continue
        exported = write_part(conn, part, path, version)
        if exported.sha256 == sha256:
            return exported
    return None
