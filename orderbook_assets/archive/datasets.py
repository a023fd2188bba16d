"""The archive's datasets: their Arrow schemas, written once.

These are the columns docs/datasets.md promises analysts (names and types are a contract).
The DuckDB types of the analysts' views and empty typed views are derived from here
(:func:`duckdb_type`), never typed again.
"""

from __future__ import annotations

from typing import NamedTuple

import pyarrow as pa

from orderbook_core import kinds
from orderbook_core.buffer import ledger
from orderbook_core.buffer.levels import LEVEL, LEVELS  # noqa: F401  (the levels' Arrow form)

TS = kinds.TS

DEPTH = "depth_snapshot"
DEPTH_UPDATE = "depth_update"
DEPTH_REST = "depth_rest_snapshot"
TRADE = "trade"
AGG_TRADE = "agg_trade"
BOOK_TICKER = "book_ticker"
MARK_PRICE = "mark_price"
LIQUIDATION = "liquidation"
OPEN_INTEREST = "open_interest"
COVERAGE = ledger.COVERAGE
TOP_OF_BOOK_1S = "top_of_book_1s"
BOOK_SNAPSHOT = "book_snapshot"

#: The schema version of each dataset's newest schema (stored in every file's metadata).
SCHEMA_VERSIONS = {DEPTH: "2", COVERAGE: "2", BOOK_SNAPSHOT: "2"}


def _meta(dataset: str, version: str | None = None) -> dict[str, str]:
    return {"orderbook.dataset": dataset, "orderbook.schema_version": version or SCHEMA_VERSIONS.get(dataset, "1")}


def _f(name: str, t: pa.DataType, nullable: bool = False) -> pa.Field:
    return pa.field(name, t, nullable=nullable)


#: The columns every stream dataset starts with (DESIGN.md, "Datasets"). ``session_id`` and
#: ``seq`` are null only in ``depth_rest_snapshot``, which did not come over a connection.
COMMON = (
    _f("market", pa.string()),
    _f("symbol", pa.string()),
    _f("stream", pa.string()),
    _f("recv_time", TS),
    _f("session_id", pa.int64()),
    _f("seq", pa.int64()),
)
_NO_SESSION = (*COMMON[:4], _f("session_id", pa.int64(), True), _f("seq", pa.int64(), True))


def _schema(dataset: str, own: list[pa.Field], common=COMMON) -> pa.Schema:
    return pa.schema([*common, *own], metadata=_meta(dataset))


#: Schema version 1 of ``depth_snapshot`` (spot only, no market nor USD-M columns): parts
#: archived before version 2 keep it; readers use ``union_by_name`` (docs/datasets.md).
DEPTH_SCHEMA_V1 = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("stream", pa.string(), nullable=False),
        pa.field("recv_time", TS, nullable=False),
        pa.field("session_id", pa.int64(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("last_update_id", pa.int64(), nullable=False),
        pa.field("bids", LEVELS, nullable=False),
        pa.field("asks", LEVELS, nullable=False),
    ],
    metadata=_meta(DEPTH, "1"),
)

def _stream_schema(spec: kinds.DatasetSpec) -> pa.Schema:
    """A stream dataset's newest schema: the common columns, then its own (``orderbook_core.kinds``)."""
    return _schema(spec.name, spec.arrow_fields(), common=COMMON if spec.ordered_id else _NO_SESSION)


DEPTH_SCHEMA = _stream_schema(kinds.DEPTH_SNAPSHOT)
DEPTH_UPDATE_SCHEMA = _stream_schema(kinds.DEPTH_UPDATE)
DEPTH_REST_SCHEMA = _stream_schema(kinds.DEPTH_REST_SNAPSHOT)
TRADE_SCHEMA = _stream_schema(kinds.TRADE)
AGG_TRADE_SCHEMA = _stream_schema(kinds.AGG_TRADE)
BOOK_TICKER_SCHEMA = _stream_schema(kinds.BOOK_TICKER)
MARK_PRICE_SCHEMA = _stream_schema(kinds.MARK_PRICE)
LIQUIDATION_SCHEMA = _stream_schema(kinds.LIQUIDATION)
OPEN_INTEREST_SCHEMA = _stream_schema(kinds.OPEN_INTEREST)


class Dataset(NamedTuple):
    """An archived stream dataset: its name (also its buffer table and folder), its newest
    schema, its dedup key (DESIGN.md) and the id that must never go backwards in a session."""

    name: str
    schema: pa.Schema
    dedup: tuple[str, ...]
    ordered_id: str | None  # None: no session order (REST snapshots)

    @property
    def has_session(self) -> bool:
        return not self.schema.field("session_id").nullable

    @property
    def has_levels(self) -> bool:
        return "bids" in self.schema.names


#: Every archived stream dataset, in the order an hour is exported (``orderbook_core.kinds.SPECS``).
DATASETS: dict[str, Dataset] = {
    name: Dataset(name, _stream_schema(spec), spec.dedup, spec.ordered_id) for name, spec in kinds.SPECS.items()
}

#: Buffer tables whose rows are archived inside ``coverage`` (continuity as data), not as datasets.
CONTINUITY = ledger.CONTINUITY
DEPTH_SYNC, TRADE_GAP, SILENCE = CONTINUITY

COVERAGE_SCHEMA = pa.schema(
    [
        pa.field("record", pa.string(), nullable=False),
        pa.field("hour_start", TS, nullable=False),
        pa.field("part", pa.int32(), nullable=False),
        pa.field("session_id", pa.int64()),
        pa.field("stream", pa.string()),
        pa.field("start_time", TS),
        pa.field("end_time", TS),
        pa.field("seconds", pa.float64()),
        pa.field("first_recv_time", TS),
        pa.field("last_recv_time", TS),
        pa.field("messages", pa.int64()),
        pa.field("min_seq", pa.int64()),
        pa.field("max_seq", pa.int64()),
        pa.field("duplicates", pa.int64()),
        pa.field("quarantined", pa.int64()),
        pa.field("lost", pa.int64()),
        pa.field("close_reason", pa.string()),
        pa.field("as_of", TS, nullable=False),
        # schema version 2: continuity records (break, synced, resync, trade_gap)
        pa.field("market", pa.string()),
        pa.field("dataset", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("first_id", pa.int64()),
        pa.field("last_id", pa.int64()),
        pa.field("snapshot_id", pa.int64()),
    ],
    metadata=_meta(COVERAGE),
)

#: ``top_of_book_1s``: 1-second bars derived from ``depth_snapshot`` (written by ``derived.bars``).
#: Every column is non-null: a bar exists only for a second with at least one two-sided book.
BARS_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("bar_time", TS, nullable=False),  # start of the second
        pa.field("first_mid", pa.float64(), nullable=False),
        pa.field("max_mid", pa.float64(), nullable=False),
        pa.field("min_mid", pa.float64(), nullable=False),
        pa.field("last_mid", pa.float64(), nullable=False),
        pa.field("last_best_bid", pa.float64(), nullable=False),
        pa.field("last_best_ask", pa.float64(), nullable=False),
        pa.field("mean_spread", pa.float64(), nullable=False),
        pa.field("snapshots", pa.int64(), nullable=False),
    ],
    metadata=_meta(TOP_OF_BOOK_1S),
)

#: ``book_snapshot``: the top-N rebuilt book of every diff-depth stream at fixed interval points
#: (built by ``books.hour``). ``last_update_id`` is null while unknown, and ``bids``/``asks`` are
#: then empty. Dedup key (``market``, ``stream``, ``time``): stream names repeat across markets.
#: Schema version 2 adds ``known_levels``: how many leading levels both sides prove (N when
#: ``known``); ``bids``/``asks`` then hold only each side's proven leading levels, never levels
#: past the snapshots' horizon. Version 1 files (no ``known_levels``) read it as null with
#: ``union_by_name``; their ``known`` did not account for the horizon (docs/datasets.md).
BOOK_SNAPSHOT_SCHEMA = pa.schema(
    [
        _f("market", pa.string()),
        _f("symbol", pa.string()),
        _f("stream", pa.string()),
        _f("time", TS),
        _f("last_update_id", pa.int64(), True),
        _f("known", pa.bool_()),
        _f("known_levels", pa.int32()),
        _f("bids", LEVELS),
        _f("asks", LEVELS),
    ],
    metadata=_meta(BOOK_SNAPSHOT),
)

#: The Hive partition columns as DuckDB's ``hive_partitioning`` reads them in the views.
HIVE_COLUMNS = pa.schema([pa.field("date", pa.date32()), pa.field("hour", pa.int32())])

_DUCK = {
    pa.string(): "VARCHAR", pa.int64(): "BIGINT", pa.int32(): "INTEGER", pa.float64(): "DOUBLE",
    pa.bool_(): "BOOLEAN", pa.date32(): "DATE", TS: "TIMESTAMPTZ",
}


def duckdb_type(t: pa.DataType) -> str:
    """The DuckDB type DuckDB itself gives an Arrow column of type ``t``."""
    if pa.types.is_list(t):
        return duckdb_type(t.value_type) + "[]"
    if pa.types.is_struct(t):
        return "STRUCT(" + ", ".join(f"{f.name} {duckdb_type(f.type)}" for f in t) + ")"
    return _DUCK[t]
