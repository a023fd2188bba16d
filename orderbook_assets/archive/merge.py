"""Merging several collectors' verified parts of one hour into the dataset analysts read.

A fleet records some streams on more than one collector (redundancy) and others on one
only (sharding). Each collector archives its own buffer under
``<archive>/hosts/collector=<id>/<dataset>/date=/hour=/`` (:func:`host_prefix`); the merge
writes ``<archive>/<dataset>/date=/hour=/fleet.parquet``:

- every message once, by the dataset's dedup key (:data:`DEDUP_KEYS`);
- of its copies, the earliest receive time is kept, with the collector that received it
  (ties: the collector id, then session and seq, so the choice follows from the rows alone);
- coverage: a stream's gap is an interval in which *no* collector received any message of
  it, found by the same rule as a single host's gaps (:func:`quality.find_gaps`) over the
  union of every copy's receive time.

The result is a pure function of the input rows (fixed order, fixed writer options), so a
re-run over the same parts writes the same bytes, and a re-run after a collector's late part
arrived replaces the object with the merge of all parts (``put_derived``: atomic, verified).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from orderbook_collector.buffer import HOUR_US, hour_folder
from orderbook_collector.errors import ConfigError, IntegrityError
from orderbook_collector.fsutil import fsync_dir, sha256_file

from orderbook_assets.archive import quality
from orderbook_assets.archive.datasets import COVERAGE, COVERAGE_SCHEMA, DEPTH, DEPTH_SCHEMA, TS
from orderbook_assets.archive.export import DEPTH_WRITER_OPTIONS, WRITER_OPTIONS
from orderbook_assets.archive.store import ArchiveStore

#: The column naming the collector that received a row (docs/datasets.md).
COLLECTOR = "collector"
#: Each stream dataset's dedup key (DESIGN.md, "Datasets"); the merge keeps one row per key.
DEDUP_KEYS: dict[str, tuple[str, ...]] = {
    "depth_snapshot": ("stream", "last_update_id"),
    "depth_update": ("stream", "last_update_id"),
    "depth_rest_snapshot": ("market", "symbol", "last_update_id"),
    "trade": ("stream", "trade_id"),
    "agg_trade": ("stream", "agg_trade_id"),
    "book_ticker": ("stream", "update_id"),
}
#: Within a collector's rows (session_id, seq) is unique, so this order is total.
ORDER = ("recv_time", COLLECTOR, "session_id", "seq")
MERGED_NAME = "fleet.parquet"
HOST_ID_RE = re.compile(r"[a-z0-9][a-z0-9_]{0,31}")


def check_host_id(value: str, setting: str = "ORDERBOOK_HOST_ID") -> str:
    """A host id usable in an asset key, a job name and a Hive folder; ConfigError otherwise."""
    if not HOST_ID_RE.fullmatch(value):
        raise ConfigError(setting, f"{value!r} is not a host id; use 1-32 lower-case letters, digits or underscores (it becomes part of job names), "
                                   "starting with a letter or digit, e.g. tokyo_1.")
    return value


def host_prefix(host: str) -> str:
    """Where a collector's own parts live, relative to the fleet's archive (a Hive level, so
    ``read_parquet(..., hive_partitioning = true)`` gives every row its ``collector``)."""
    return f"hosts/{COLLECTOR}={host}"


@dataclass(frozen=True)
class HostTable:
    """One collector's verified rows of the hour (the union of its parts)."""

    collector: str
    table: pa.Table


def merged_schema(dataset: str) -> pa.Schema:
    base = {DEPTH: DEPTH_SCHEMA}[dataset]
    return base.append(pa.field(COLLECTOR, pa.string(), nullable=False))


def merge_rows(dataset: str, hosts: list[HostTable]) -> pa.Table:
    """Every dedup key once, its earliest copy kept with the collector that received it,
    in the archive's order (symbol, recv_time, collector, session_id, seq)."""
    key = DEDUP_KEYS[dataset]
    schema = merged_schema(dataset)
    tables = [_tagged(h) for h in hosts if h.table.num_rows]
    if not tables:
        return schema.empty_table()
    union = pa.concat_tables(tables)
    con = duckdb.connect()
    try:
        con.register("u", union)
        part = ", ".join(key)
        order = ", ".join(ORDER)
        out = con.execute(
            f"SELECT * EXCLUDE (rn) FROM (SELECT *, row_number() OVER (PARTITION BY {part} ORDER BY {order}) AS rn "
            f"FROM u) WHERE rn = 1 ORDER BY symbol, {order}"
        ).arrow()
    finally:
        con.close()
    out = out.read_all() if isinstance(out, pa.RecordBatchReader) else out
    return out.select(schema.names).cast(schema)


def _tagged(h: HostTable) -> pa.Table:
    t = h.table.select([n for n in h.table.schema.names if n != COLLECTOR])
    return t.append_column(pa.field(COLLECTOR, pa.string(), nullable=False),
                           pa.array([h.collector] * t.num_rows, pa.string()))


def merged_gaps(hosts: list[HostTable], hour_us: int, end_us: int | None = None) -> list[quality.Gap]:
    """Gaps of the merged hour: intervals in which no collector received a message of a
    stream, by :func:`quality.find_gaps` over the union of every copy's receive time."""
    tables = [h.table.select(["stream", "recv_time"]) for h in hosts if h.table.num_rows]
    union = pa.concat_tables(tables) if tables else pa.table(
        {"stream": pa.array([], pa.string()), "recv_time": pa.array([], TS)})
    con = duckdb.connect()
    try:
        con.register("books", union)
        con.register("earlier", union.schema.empty_table())
        return quality.find_gaps(con, (hour_us, hour_us + HOUR_US if end_us is None else end_us))
    finally:
        con.close()


def coverage_table(hour_us: int, gaps: list[quality.Gap], collectors: list[str], as_of_us: int) -> pa.Table:
    """The merged hour's coverage: one ``gap`` row per merged gap (``collector`` null: every
    collector was silent) and one ``collector`` row per collector merged (its name)."""
    schema = COVERAGE_SCHEMA.append(pa.field(COLLECTOR, pa.string()))
    rows = []
    for g in gaps:
        rows.append({"record": "gap", "stream": g.stream, "start_time": g.start_us, "end_time": g.end_us,
                     "seconds": (g.end_us - g.start_us) / 1e6, COLLECTOR: None})
    for c in sorted(collectors):
        rows.append({"record": "collector", COLLECTOR: c})
    cols = {}
    for f in schema:
        if f.name == "hour_start":
            cols[f.name] = pa.array([hour_us] * len(rows), TS)
        elif f.name == "part":
            cols[f.name] = pa.array([0] * len(rows), pa.int32())
        elif f.name == "as_of":
            cols[f.name] = pa.array([as_of_us] * len(rows), TS)
        else:
            cols[f.name] = pa.array([r.get(f.name) for r in rows], f.type)
    return pa.table(cols, schema=schema)


def object_key(dataset: str, hour_us: int) -> str:
    return f"{dataset}/{hour_folder(hour_us)}/{MERGED_NAME}"


def write_table(table: pa.Table, path: Path, options: dict) -> tuple[int, str]:
    """Deterministic Parquet (fixed options and metadata), written atomically; (size, sha256)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        pq.write_table(table, f, **options)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return sha256_file(path)


@dataclass(frozen=True)
class PartRef:
    """A collector's verified part: where it is and what it must hash to."""

    collector: str
    object_key: str  # relative to the fleet's archive
    sha256: str


def read_verified(store: ArchiveStore, ref: PartRef) -> pa.Table:
    """The part's rows, after checking the downloaded bytes against the recorded SHA-256."""
    data = store.get(ref.object_key)
    if hashlib.sha256(data).hexdigest() != ref.sha256:
        raise IntegrityError(f"{ref.object_key} does not hash to the SHA-256 its collector verified ({ref.sha256})")
    return pq.read_table(pa.BufferReader(data))


@dataclass
class MergedHour:
    rows: int
    input_rows: dict[str, int]  # collector → rows read
    kept: dict[str, int]  # collector → rows kept (its copy was the earliest)
    gaps: list[quality.Gap]
    objects: dict[str, str]  # object key → sha256


def merge_hour(store: ArchiveStore, staging: Path, hour_us: int, refs: list[PartRef],
               end_us: int | None = None) -> MergedHour:
    """Read and verify every collector's parts of the hour, merge them, write and verify the
    merged depth and coverage objects (replacing an earlier merge of fewer parts)."""
    by_host: dict[str, list[pa.Table]] = {}
    for ref in sorted(refs, key=lambda r: (r.collector, r.object_key)):
        by_host.setdefault(ref.collector, []).append(read_verified(store, ref))
    hosts = [HostTable(c, pa.concat_tables(ts)) for c, ts in sorted(by_host.items())]
    merged = merge_rows(DEPTH, hosts)
    gaps = merged_gaps(hosts, hour_us, end_us)
    # as_of from the rows, not the clock: the same parts give the same bytes
    as_of_us = max((h.table.column("recv_time").cast(pa.int64()).to_numpy().max() for h in hosts if h.table.num_rows),
                   default=hour_us)
    objects = {}
    depth_options = dict(DEPTH_WRITER_OPTIONS)
    for dataset, table, options in (
        (DEPTH, merged, depth_options),
        (COVERAGE, coverage_table(hour_us, gaps, list(by_host), int(as_of_us)), dict(WRITER_OPTIONS)),
    ):
        key = object_key(dataset, hour_us)
        path = Path(staging) / "fleet" / key
        _, sha = write_table(table, path, options)
        store.put_derived(key, path, sha)
        objects[key] = sha
        path.unlink()
    kept = {}
    for c in merged.column(COLLECTOR).to_pylist():
        kept[c] = kept.get(c, 0) + 1
    return MergedHour(merged.num_rows, {h.collector: h.table.num_rows for h in hosts}, kept, gaps, objects)
