"""How each decoded record type lands in its table: columns, dedup key, stream key.

One entry per dataset; the writer inserts with ``INSERT OR IGNORE`` on the dataset's
unique index (its dedup key, see :mod:`.schema`) and records every row the index
refused in ``dropped``, so any other ``seq`` gap in a session means lost data.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Callable, NamedTuple

from orderbook_collector.buffer.records import (
    AggTradeRecord,
    BookTickerRecord,
    DepthRecord,
    DepthUpdateRecord,
    Row,
    TradeRecord,
)


class RowTable(NamedTuple):
    table: str  # also the dataset name
    columns: tuple[str, ...]  # inserted after stream_id, in this order
    values: Callable[[Row], tuple]  # the record's values for ``columns``
    key: Callable[[Row], int]  # the record's dedup-key value (with its stream)


def _table(table: str, columns: dict[str, str], key: str) -> RowTable:
    """``columns``: table column → record field."""
    return RowTable(table, tuple(columns), attrgetter(*columns.values()), attrgetter(key))


_COMMON = {"recv_us": "recv_us", "session_id": "session_id", "seq": "seq"}
ROW_TABLES: dict[type, RowTable] = {
    DepthRecord: _table("depth_snapshot", {
        **_COMMON, "update_id": "update_id", "n_bids": "n_bids", "levels": "levels",
        "event_ms": "event_time_ms", "transaction_ms": "transaction_time_ms",
        "first_update_id": "first_update_id", "prev_update_id": "prev_update_id",
    }, "update_id"),
    DepthUpdateRecord: _table("depth_update", {
        **_COMMON, "event_ms": "event_time_ms", "transaction_ms": "transaction_time_ms",
        "first_update_id": "first_update_id", "last_update_id": "last_update_id",
        "prev_update_id": "prev_update_id", "n_bids": "n_bids", "levels": "levels",
    }, "last_update_id"),
    TradeRecord: _table("trade", {
        **_COMMON, "event_ms": "event_time_ms", "trade_ms": "trade_time_ms", "trade_id": "trade_id",
        "price": "price", "qty": "qty", "is_buyer_maker": "is_buyer_maker",
    }, "trade_id"),
    AggTradeRecord: _table("agg_trade", {
        **_COMMON, "event_ms": "event_time_ms", "trade_ms": "trade_time_ms", "agg_trade_id": "agg_trade_id",
        "first_trade_id": "first_trade_id", "last_trade_id": "last_trade_id", "price": "price", "qty": "qty",
        "is_buyer_maker": "is_buyer_maker",
    }, "agg_trade_id"),
    BookTickerRecord: _table("book_ticker", {
        **_COMMON, "update_id": "update_id", "best_bid": "best_bid", "best_bid_qty": "best_bid_qty",
        "best_ask": "best_ask", "best_ask_qty": "best_ask_qty", "event_ms": "event_time_ms",
        "transaction_ms": "transaction_time_ms",
    }, "update_id"),
}
#: The datasets whose rows the writer stores, in a fixed order (one transaction, this order).
DATASETS = tuple(t.table for t in ROW_TABLES.values())
