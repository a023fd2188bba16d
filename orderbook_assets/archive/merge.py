"""Merging several collectors' verified parts of one hour into the datasets analysts read.

A fleet records some streams on more than one collector (redundancy) and others on one
only (sharding). Each collector archives its own buffer under
``<archive>/hosts/collector=<id>/<dataset>/date=/hour=/`` (:func:`host_prefix`); the merge
writes, for every stream dataset of :data:`~orderbook_assets.archive.datasets.DATASETS` and
for ``coverage``, ``<archive>/<dataset>/date=/hour=/fleet.parquet``:

- every message once, by the dataset's dedup key (``Dataset.dedup``: it includes ``market``,
  since both markets have e.g. ``btcusdt@depth@100ms``);
- of its copies, the earliest receive time is kept, with the collector that received it
  (ties: the collector id, then session and seq, then the other scalar columns, so the choice
  follows from the rows alone);
- coverage (:func:`merge_coverage`): a depth stream's gap is an interval in which *no*
  collector received any message of it (the single-host rule, :func:`quality.find_gaps`,
  over the union of every copy's receive time); each collector's sessions and continuity
  records (``break``, ``synced``, ``resync``, ``trade_gap``) are kept with its ``collector``
  named; and the merged streams' own continuity is added with ``collector`` null: a
  ``break`` where the merged diff-depth events do not continue each other and a ``trade_gap``
  where trade ids are missing from every collector's copy (a merged stream is continuous
  wherever any collector's copy is).

One code path serves every dataset: schemas, dedup keys and writer options come from
``datasets`` and ``export``. The result is a pure function of the input rows (fixed order,
fixed writer options), so a re-run over the same parts writes the same bytes, and a re-run
after a collector's late part arrived replaces the object with the merge of all parts
(``put_derived``: atomic, verified).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from orderbook_core import continuity
from orderbook_core.buffer import HOUR_US, hour_folder
from orderbook_core.errors import ConfigError, IntegrityError

from orderbook_assets.archive import derived, quality
from orderbook_assets.archive.datasets import (AGG_TRADE, COVERAGE, COVERAGE_SCHEMA, DATASETS, DEPTH_UPDATE, TRADE,
                                               TS)
from orderbook_assets.archive.export import WRITER_OPTIONS, WRITER_VERSIONS, current_version
from orderbook_assets.archive.store import ArchiveStore

#: The column naming the collector that received a row (docs/datasets.md).
COLLECTOR = "collector"
#: Within a collector's rows (session_id, seq) is unique, so this order is total for rows that
#: came over a connection; REST snapshots (no session) are ordered by their other columns too.
ORDER = ("recv_time", COLLECTOR, "session_id", "seq")
#: Every merged dataset, in the order they are written (coverage last: it reads the others).
MERGED = (*DATASETS, COVERAGE)
MERGED_NAME = "fleet.parquet"
#: The merged ``coverage`` record naming each collector whose parts were merged.
COLLECTOR_RECORD = "collector"
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
    """One collector's verified rows of one dataset of the hour (the union of its parts)."""

    collector: str
    table: pa.Table


def base_schema(dataset: str) -> pa.Schema:
    return COVERAGE_SCHEMA if dataset == COVERAGE else DATASETS[dataset].schema


def merged_schema(dataset: str) -> pa.Schema:
    """The dataset's newest schema plus ``collector`` (null only for the merged coverage's own records)."""
    return base_schema(dataset).append(pa.field(COLLECTOR, pa.string(), nullable=dataset == COVERAGE))


def writer_options(dataset: str) -> dict:
    """The options of the dataset's newest writer version, ``collector`` dictionary-encoded too."""
    if dataset == COVERAGE:
        base = dict(WRITER_OPTIONS, use_dictionary=["record", "stream", "close_reason", "market", "dataset", "reason"])
    else:
        base = dict(WRITER_VERSIONS[dataset][current_version(dataset)].options)
    return dict(base, use_dictionary=[*base["use_dictionary"], COLLECTOR])


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A part's rows in ``schema`` (the newest): parts of an older schema version lack columns
    added since; those are null, except ``market``, which only spot parts lack (depth_snapshot
    version 1 predates USD-M)."""
    cols = []
    for f in schema:
        if f.name in table.schema.names:
            cols.append(table.column(f.name).cast(f.type))
        elif f.name == "market":
            cols.append(pa.array(["spot"] * table.num_rows, f.type))
        elif f.nullable:
            cols.append(pa.nulls(table.num_rows, f.type))
        else:
            raise IntegrityError(f"a part lacks the column {f.name!r} of {schema.metadata.get(b'orderbook.dataset')!r}")
    return pa.Table.from_arrays(cols, schema=schema)


def _tagged(dataset: str, h: HostTable) -> pa.Table:
    t = conform(h.table, base_schema(dataset))
    return t.append_column(pa.field(COLLECTOR, pa.string(), nullable=False),
                           pa.array([h.collector] * t.num_rows, pa.string()))


def _arrow(result) -> pa.Table:
    return result.read_all() if isinstance(result, pa.RecordBatchReader) else result


def merge_rows(dataset: str, hosts: list[HostTable]) -> pa.Table:
    """Every dedup key once, its earliest copy kept with the collector that received it,
    ordered by (market, symbol, recv_time, collector, session_id, seq, dedup key)."""
    d = DATASETS[dataset]
    schema = merged_schema(dataset)
    tables = [_tagged(dataset, h) for h in hosts if h.table.num_rows]
    if not tables:
        return schema.empty_table()
    union = pa.concat_tables(tables)
    scalars = [f.name for f in d.schema if not pa.types.is_list(f.type) and f.name not in (*ORDER, *d.dedup)]
    order = ", ".join(f"{c} NULLS LAST" for c in (*ORDER, *scalars))
    con = duckdb.connect()
    try:
        con.register("u", union)
        out = _arrow(con.execute(
            f"SELECT * EXCLUDE (rn) FROM (SELECT *, row_number() OVER (PARTITION BY {', '.join(d.dedup)} ORDER BY {order}) "
            f"AS rn FROM u) WHERE rn = 1 "
            f"ORDER BY market, symbol, {', '.join(f'{c} NULLS LAST' for c in ORDER)}, {', '.join(d.dedup)}"
        ).arrow())
    finally:
        con.close()
    return out.select(schema.names).cast(schema)


#: What the gap rule reads of a depth stream's rows (every stream dataset has these columns).
_GAP_COLUMNS = pa.schema([DATASETS[DEPTH_UPDATE].schema.field(c) for c in ("market", "stream", "recv_time")])


def merged_gaps(hosts: list[HostTable], hour_us: int, end_us: int | None = None) -> list[quality.Gap]:
    """Gaps of the merged hour: intervals in which no collector received a message of a depth
    stream, by :func:`quality.find_gaps` over the union of every copy's receive time.

    ``hosts``: the collectors' rows of the datasets whose silences are gaps
    (:data:`quality.GAP_DATASETS`), any of them, several tables per collector allowed."""
    empty = _GAP_COLUMNS.empty_table()
    tables = [conform(h.table, _GAP_COLUMNS) for h in hosts if h.table.num_rows]
    union = pa.concat_tables(tables) if tables else empty
    con = duckdb.connect()
    try:
        con.register("books", union)
        con.register("earlier", empty)
        return quality.find_gaps(con, (hour_us, hour_us + HOUR_US if end_us is None else end_us))
    finally:
        con.close()


def merged_continuity(merged: dict[str, pa.Table]) -> list[dict]:
    """The merged streams' own discontinuities within the hour (``collector`` null): a ``break``
    where a merged diff-depth event does not continue the previous one (``orderbook_core.continuity``),
    a ``trade_gap`` for ids no collector received. Same id columns as a
    collector's records: a break's first_id is the last update id before it, last_id the first after."""
    out: list[dict] = []
    con = duckdb.connect()
    try:
        if DEPTH_UPDATE in merged:
            con.register("d", merged[DEPTH_UPDATE])
            for market, stream, before_u, after_first, before_t, after_t, recv in con.execute(
                f"""
                WITH s AS (
                    SELECT market, stream, first_update_id, prev_update_id, last_update_id, event_time, recv_time,
                           lag(last_update_id) OVER w AS previous_u, lag(event_time) OVER w AS previous_t
                    FROM d WINDOW w AS (PARTITION BY market, stream ORDER BY last_update_id)
                )
                SELECT market, stream, previous_u, first_update_id, epoch_us(previous_t), epoch_us(event_time),
                       epoch_us(recv_time)
                FROM s WHERE previous_u IS NOT NULL
                  AND {continuity.break_sql()}
                ORDER BY market, stream, last_update_id
                """
            ).fetchall():
                out.append(dict(record="break", market=market, stream=stream, start_time=before_t, end_time=after_t,
                                first_recv_time=recv, reason="merged", first_id=before_u, last_id=after_first,
                                dataset=DEPTH_UPDATE))
        for name in (TRADE, AGG_TRADE):
            if name not in merged:
                continue
            uid = DATASETS[name].ordered_id
            con.register("t", merged[name])
            for market, stream, first, last, before_t, after_t, recv in con.execute(
                f"""
                WITH s AS (
                    SELECT market, stream, {uid} AS id, trade_time, recv_time,
                           lag({uid}) OVER w AS prev, lag(trade_time) OVER w AS prev_t
                    FROM t WINDOW w AS (PARTITION BY market, stream ORDER BY {uid})
                )
                SELECT market, stream, prev + 1, id - 1, epoch_us(prev_t), epoch_us(trade_time), epoch_us(recv_time)
                FROM s WHERE id > prev + 1 ORDER BY market, stream, id
                """
            ).fetchall():
                out.append(dict(record="trade_gap", market=market, stream=stream, start_time=before_t,
                                end_time=after_t, first_recv_time=recv, first_id=first, last_id=last,
                                messages=last - first + 1, dataset=name))
            con.unregister("t")
    finally:
        con.close()
    return out


def merge_coverage(hour_us: int, coverage: list[HostTable], gaps: list[quality.Gap], continuity: list[dict],
                   collectors: list[str], as_of_us: int) -> pa.Table:
    """The merged hour's coverage: every collector's records but its own gaps (its sessions and
    continuity, ``collector`` named), the merged gaps and continuity (``collector`` null: every
    collector was silent, no collector's copy continues), and one ``collector`` row per collector merged."""
    schema = merged_schema(COVERAGE)
    own = [t.filter(pc.not_equal(t["record"], "gap")) for t in (_tagged(COVERAGE, h) for h in coverage)]
    rows = [dict(record="gap", market=g.market, stream=g.stream, start_time=g.start_us, end_time=g.end_us,
                 seconds=(g.end_us - g.start_us) / 1e6) for g in gaps]
    rows += continuity
    rows += [dict(record=COLLECTOR_RECORD, **{COLLECTOR: c}) for c in sorted(collectors)]
    cols = {f.name: [r.get(f.name) for r in rows] for f in schema}
    cols["hour_start"] = [hour_us] * len(rows)
    cols["part"] = [0] * len(rows)
    cols["as_of"] = [as_of_us] * len(rows)
    fleet = pa.Table.from_pydict(cols, schema=schema)
    union = pa.concat_tables([fleet, *(t.cast(schema) for t in own)])
    con = duckdb.connect()
    try:
        con.register("u", union)
        # a fixed order (every column a scalar) makes the bytes a function of the rows
        rest = ", ".join(f"{n} NULLS LAST" for n in schema.names if n not in ("record", COLLECTOR))
        out = _arrow(con.execute(f"SELECT * FROM u ORDER BY record, {COLLECTOR} NULLS FIRST, {rest}").arrow())
    finally:
        con.close()
    return out.select(schema.names).cast(schema)


def object_key(dataset: str, hour_us: int) -> str:
    return f"{dataset}/{hour_folder(hour_us)}/{MERGED_NAME}"


@dataclass(frozen=True)
class PartRef:
    """A collector's verified part of a dataset: where it is and what it must hash to."""

    collector: str
    object_key: str  # relative to the fleet's archive
    sha256: str
    dataset: str


def read_verified(store: ArchiveStore, ref: PartRef) -> pa.Table:
    """The part's rows, after checking the downloaded bytes against the recorded SHA-256."""
    data = store.get(ref.object_key)
    if hashlib.sha256(data).hexdigest() != ref.sha256:
        raise IntegrityError(f"{ref.object_key} does not hash to the SHA-256 its collector verified ({ref.sha256})")
    return pq.read_table(pa.BufferReader(data))


@dataclass
class MergedDataset:
    rows: int
    input_rows: dict[str, int]  # collector → rows read
    kept: dict[str, int]  # collector → rows kept (its copy was the earliest); coverage: its records kept
    object_key: str
    sha256: str


@dataclass
class MergedHour:
    datasets: dict[str, MergedDataset]  # every name of MERGED
    gaps: list[quality.Gap]
    continuity: list[dict] = field(default_factory=list)  # the merged streams' own break/trade_gap records

    @property
    def objects(self) -> dict[str, str]:
        """object key → sha256 of every merged object."""
        return {d.object_key: d.sha256 for d in self.datasets.values()}


def _counts(values: list) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        if v is not None:
            out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def merge_hour(store: ArchiveStore, staging: Path, hour_us: int, refs: list[PartRef],
               end_us: int | None = None) -> MergedHour:
    """Read and verify every collector's parts of the hour, merge each dataset, write and verify
    the merged objects of every stream dataset and coverage (replacing an earlier merge of fewer
    parts). A dataset no collector has parts of is written empty, so every hour has each object."""
    unknown = {r.dataset for r in refs} - set(MERGED)
    if unknown:
        raise IntegrityError(f"parts of datasets the merge does not know: {sorted(unknown)}")
    by: dict[tuple[str, str], list[pa.Table]] = {}
    for ref in sorted(refs, key=lambda r: (r.dataset, r.collector, r.object_key)):
        by.setdefault((ref.dataset, ref.collector), []).append(read_verified(store, ref))
    collectors = sorted({c for _, c in by})

    def hosts(dataset: str) -> list[HostTable]:
        return [HostTable(c, pa.concat_tables([conform(t, base_schema(dataset)) for t in ts]))
                for (d, c), ts in sorted(by.items()) if d == dataset]

    tables: dict[str, pa.Table] = {}
    inputs: dict[str, dict[str, int]] = {}
    for name in DATASETS:
        hs = hosts(name)
        tables[name] = merge_rows(name, hs)
        inputs[name] = {h.collector: h.table.num_rows for h in hs}
    gap_hosts = [h for name in quality.GAP_DATASETS for h in hosts(name)]
    gaps = merged_gaps(gap_hosts, hour_us, end_us)
    continuity = merged_continuity(tables)
    cov_hosts = hosts(COVERAGE)
    inputs[COVERAGE] = {h.collector: h.table.num_rows for h in cov_hosts}
    # as_of from the rows, not the clock: the same parts give the same bytes
    lasts = [t.column("recv_time").cast(pa.int64()).to_numpy().max() for t in tables.values() if t.num_rows]
    as_of_us = int(max(lasts, default=hour_us))
    tables[COVERAGE] = merge_coverage(hour_us, cov_hosts, gaps, continuity, collectors, as_of_us)
    out: dict[str, MergedDataset] = {}
    for name in MERGED:
        table = tables[name]
        key = object_key(name, hour_us)
        sha = derived.publish_table(store, key, table, writer_options(name)).sha256
        if name == COVERAGE:  # the per-collector marker rows are the merge's, not the collector's
            table = table.filter(pc.not_equal(table["record"], COLLECTOR_RECORD))
        kept = _counts(table.column(COLLECTOR).to_pylist())
        out[name] = MergedDataset(tables[name].num_rows, inputs[name], kept, key, sha)
    return MergedHour(out, gaps, continuity)
