"""How each decoded record type lands in its table: columns, dedup key, stream key.

One entry per dataset; the writer inserts with ``INSERT OR IGNORE`` on the dataset's
unique index (its dedup key, see :mod:`.schema`) and records every row the index
refused in ``dropped``, so any other ``seq`` gap in a session means lost data.
"""

from __future__ import annotations

from operator import attrgetter, itemgetter
from typing import Callable, NamedTuple

from orderbook_core import kinds
from orderbook_core.buffer.records import (
    DepthRestSnapshotRecord,
    DepthSyncRecord,
    OpenInterestRecord,
    Row,
    SilenceRecord,
    TradeGapRecord,
)


class RowTable(NamedTuple):
    table: str  # also the dataset name
    columns: tuple[str, ...]  # inserted after stream_id, in this order
    values: Callable[[Row], tuple]  # the record's values for ``columns``
    key: Callable[[Row], int]  # the record's dedup-key value (with its stream)
    #: One getter per column, by field position: the writer builds a batch's parameter rows
    #: column by column with ``zip(map(...), ...)``, no Python code run per row.
    getters: tuple[Callable[[Row], object], ...] = ()
    wide: Callable[[Row], int] | None = None  # the record's ``wide_values``, if it has one

    def params(self, stream_ids: dict[str, int], rows: list) -> zip:
        """The ``INSERT`` parameters of ``rows``: (stream_id, *columns) each, built in C."""
        return zip(map(stream_ids.__getitem__, map(STREAM, rows)), *(map(g, rows) for g in self.getters))


#: Fields every row type has at the same position: (stream, recv_us, session_id, seq, ...).
STREAM, RECV_US, SESSION_ID, SEQ = (itemgetter(i) for i in range(4))


def _table(record: type, table: str, columns: dict[str, str], key: str) -> RowTable:
    """``columns``: table column → field of ``record`` (a NamedTuple)."""
    fields = record._fields
    return RowTable(table, tuple(columns), attrgetter(*columns.values()), attrgetter(key),
                    tuple(itemgetter(fields.index(f)) for f in columns.values()),
                    itemgetter(fields.index("wide_values")) if "wide_values" in fields else None)


_COMMON = {"recv_us": "recv_us", "session_id": "session_id", "seq": "seq"}
#: Record type → its table, for every dataset that comes over a connection (``orderbook_core.kinds``).
ROW_TABLES: dict[type, RowTable] = {
    spec.record: _table(spec.record, spec.name, {**_COMMON, **spec.buffer_columns()}, spec.key_field)
    for spec in kinds.SPECS.values() if spec.ordered_id is not None
}
#: The datasets whose rows the writer stores, in a fixed order (one transaction, this order).
DATASETS = tuple(t.table for t in ROW_TABLES.values())


#: Rows that did not come over a connection as a message (no ``seq`` of their own): REST
#: snapshots, and the continuity rows the writer derives. Same shape as :data:`ROW_TABLES`;
#: ``key`` is unused but for ``depth_rest_snapshot`` (its dedup key is (market, symbol,
#: last_update_id), so a refused one leaves no seq gap to explain and goes to no ``dropped`` row).
OTHER_TABLES: dict[type, RowTable] = {
    DepthRestSnapshotRecord: _table(DepthRestSnapshotRecord, kinds.DEPTH_REST_SNAPSHOT.name, {
        "market": "market", "symbol": "symbol", "recv_us": "recv_us", **kinds.DEPTH_REST_SNAPSHOT.buffer_columns(),
    }, kinds.DEPTH_REST_SNAPSHOT.key_field),
    OpenInterestRecord: _table(OpenInterestRecord, kinds.OPEN_INTEREST.name, {
        "market": "market", "symbol": "symbol", "recv_us": "recv_us", **kinds.OPEN_INTEREST.buffer_columns(),
    }, kinds.OPEN_INTEREST.key_field),
    DepthSyncRecord: _table(DepthSyncRecord, "depth_sync", {
        "session_id": "session_id", "recv_us": "recv_us", "event": "event", "reason": "reason",
        "before_update_id": "before_update_id", "before_event_ms": "before_event_ms",
        "after_first_update_id": "after_first_update_id", "after_last_update_id": "after_last_update_id",
        "after_prev_update_id": "after_prev_update_id", "after_event_ms": "after_event_ms",
        "snapshot_update_id": "snapshot_update_id",
    }, "recv_us"),
    TradeGapRecord: _table(TradeGapRecord, "trade_gap", {
        "session_id": "session_id", "recv_us": "recv_us", "dataset": "dataset",
        "first_missing_id": "first_missing_id", "last_missing_id": "last_missing_id",
        "before_event_ms": "before_event_ms", "after_event_ms": "after_event_ms",
    }, "first_missing_id"),
    SilenceRecord: _table(SilenceRecord, "silence", {
        "recv_us": "recv_us", "event": "event", "since_us": "since_us", "end_us": "end_us", "reason": "reason",
        "ended_by": "ended_by",
    }, "since_us"),
}
