"""The archive's datasets: their Arrow schemas, written once.

These are the columns docs/datasets.md promises analysts (names and types are a contract).
The DuckDB types of the analysts' views and empty typed views are derived from here
(:func:`duckdb_type`), never typed again.
"""

from __future__ import annotations

import pyarrow as pa

from orderbook_collector.buffer.levels import LEVEL, LEVELS  # noqa: F401  (the levels' Arrow form)

SCHEMA_VERSION = "1"
TS = pa.timestamp("us", tz="UTC")

DEPTH = "depth_snapshot"
COVERAGE = "coverage"
TOP_OF_BOOK_1S = "top_of_book_1s"


def _meta(dataset: str) -> dict[str, str]:
    return {"orderbook.dataset": dataset, "orderbook.schema_version": SCHEMA_VERSION}


DEPTH_SCHEMA = pa.schema(
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
    metadata=_meta(DEPTH),
)

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
    ],
    metadata=_meta(COVERAGE),
)

#: ``top_of_book_1s``: 1-second bars derived from ``depth_snapshot`` (written by ``analytics.bars``).
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
