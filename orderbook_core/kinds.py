"""One declarative spec per stream dataset: the one translation table between Binance's
payload keys, the buffer's columns, the typed records' fields and the archive's columns.

Each :class:`Field` names a value once: its dataset column (a contract, docs/datasets.md),
its type there (which fixes the Arrow type and nullability), the buffer column(s) that hold
it (the typed record's fields have the very same names: one name in code, ``event_ms``, for
what Binance calls ``E`` and the dataset ``event_time``), and its key in Binance's payload
per market. A :class:`DatasetSpec`
adds the dataset's dedup key, the id that must never go backwards in a session, and the
shape of its Binance payload per market (key order, event type). From these derive:

* the Arrow schemas of the stream datasets (``orderbook_assets.archive.datasets``),
* the export's buffer-column sources (``orderbook_assets.archive.export.SOURCES``),
* the writer's insert columns per record type (``orderbook_core.buffer.rows``),
* the replay encoder, rows back into Binance payloads (:func:`encode`).

Adding a stream kind means: a spec here, its decoder in :mod:`.payloads`, its buffer table
(a migration in :mod:`.buffer.schema`), and their tests. The common columns (``market``,
``symbol``, ``stream``, ``recv_time``, ``session_id``, ``seq``) come from the stream and the
session, not from a payload, and are not listed per dataset.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from orderbook_core.buffer.levels import LEVELS
from orderbook_core.buffer.records import (
    AggTradeRecord,
    BookTickerRecord,
    DepthRecord,
    DepthRestSnapshotRecord,
    DepthUpdateRecord,
    LiquidationRecord,
    MarkPriceRecord,
    OpenInterestRecord,
    TradeRecord,
)
from orderbook_core.streams import FUTURES as _FUTURES, Kind, Market

TS = pa.timestamp("us", tz="UTC")
SPOT, USDM, COINM = Market.SPOT, Market.USDM, Market.COINM


class Type(str, Enum):
    """A value's type in the archive, and how its buffer column becomes that."""

    INT = "int"  # int64, never null
    INT_NULL = "int?"
    MS = "ms"  # exchange ms in the buffer → timestamp[us, UTC]
    MS_NULL = "ms?"
    FLOAT = "float"
    FLOAT_NULL = "float?"
    BOOL = "bool"  # SQLite 0/1
    TEXT = "text"
    LEVELS = "levels"  # buffer ``n_bids, levels`` → the columns ``bids`` and ``asks``

    @property
    def arrow(self) -> pa.DataType:
        return _ARROW[self]

    @property
    def nullable(self) -> bool:
        return self in (Type.INT_NULL, Type.MS_NULL, Type.FLOAT_NULL)


_ARROW = {Type.INT: pa.int64(), Type.INT_NULL: pa.int64(), Type.MS: TS, Type.MS_NULL: TS, Type.FLOAT: pa.float64(),
          Type.FLOAT_NULL: pa.float64(),
          Type.BOOL: pa.bool_(), Type.TEXT: pa.string(), Type.LEVELS: LEVELS}


class Field(NamedTuple):
    """One value of a dataset, named once for every layer."""

    column: str  # the dataset's column (``bids`` for LEVELS, which also gives ``asks``)
    type: Type
    buffer: tuple[str, ...]  # the buffer column(s) holding it, also the record's field(s)
    #: Binance's key per market (LEVELS: bids key, asks key; ``"o.S"``: key ``S`` of the nested
    #: object ``o``); absent: not sent
    wire: dict[Market, str | tuple[str, str]]

    def arrow_fields(self) -> list[pa.Field]:
        if self.type is Type.LEVELS:
            return [pa.field("bids", LEVELS, nullable=False), pa.field("asks", LEVELS, nullable=False)]
        return [pa.field(self.column, self.type.arrow, nullable=self.type.nullable)]


class DatasetSpec(NamedTuple):
    """A stream dataset: its fields and what identifies and orders its rows."""

    name: str  # the dataset, its buffer table and its archive folder
    record: type  # the typed record the writer stores
    fields: tuple[Field, ...]  # its own columns, in the dataset's column order
    dedup: tuple[str, ...]  # the dedup key (DESIGN.md, "Datasets")
    ordered_id: str | None  # the id that never goes backwards within a session; None: no session
    key_field: str  # the record field the buffer's unique index holds (with the stream)
    event_type: dict[Market, str]  # Binance's ``e`` per market; absent: the payload has none
    #: Binance's keys in payload order ("s": the symbol); an entry (name, keys) is a nested object
    wire_order: dict[Market, tuple[str | tuple[str, tuple[str, ...]], ...]]
    tail: dict[Market, dict[str, Any]]  # constant keys Binance appends (spot trades' ``"M": true``)

    def field(self, column: str) -> Field:
        return next(f for f in self.fields if f.column == column)

    def arrow_fields(self) -> list[pa.Field]:
        return [a for f in self.fields for a in f.arrow_fields()]

    def buffer_columns(self) -> dict[str, str]:
        """Buffer column → record field (the same name), for the writer's ``INSERT``."""
        return {b: b for f in self.fields for b in f.buffer}


def _f(column: str, type_: str, buffer: str | tuple[str, ...] = "", **wire: str | tuple[str, str]) -> Field:
    buffer = (buffer,) if isinstance(buffer, str) else buffer
    buffer = buffer if buffer != ("",) else (column,)
    return Field(column, Type(type_), buffer, {Market(m): k for m, k in wire.items()})


_LEVELS_SPOT_REST = ("bids", "asks")
_LEVELS_DIFF = ("b", "a")
_LEVELS = _f("bids", "levels", ("n_bids", "levels"))
_EVENT_TIME_USDM = _f("event_time", "ms?", "event_ms", usdm="E")
_TRANSACTION_TIME_USDM = _f("transaction_time", "ms?", "transaction_ms", usdm="T")

DEPTH_SNAPSHOT = DatasetSpec(
    Kind.PARTIAL_DEPTH.dataset, DepthRecord,
    (_f("last_update_id", "int", "update_id", spot="lastUpdateId", usdm="u"),
     _LEVELS._replace(wire={SPOT: _LEVELS_SPOT_REST, USDM: _LEVELS_DIFF}),
     _EVENT_TIME_USDM, _TRANSACTION_TIME_USDM,
     _f("first_update_id", "int?", usdm="U"), _f("prev_update_id", "int?", usdm="pu")),
    ("market", "stream", "last_update_id"), "last_update_id", "update_id",
    {USDM: "depthUpdate"},
    {SPOT: ("lastUpdateId", "bids", "asks"), USDM: ("e", "E", "T", "s", "U", "u", "pu", "b", "a")},
    {},
)
DEPTH_UPDATE = DatasetSpec(
    Kind.DIFF_DEPTH.dataset, DepthUpdateRecord,
    (_f("event_time", "ms", "event_ms", spot="E", usdm="E"), _TRANSACTION_TIME_USDM,
     _f("first_update_id", "int", spot="U", usdm="U"), _f("last_update_id", "int", spot="u", usdm="u"),
     _f("prev_update_id", "int?", usdm="pu"), _LEVELS._replace(wire={SPOT: _LEVELS_DIFF, USDM: _LEVELS_DIFF})),
    ("market", "stream", "last_update_id"), "last_update_id", "last_update_id",
    {SPOT: "depthUpdate", USDM: "depthUpdate"},
    {SPOT: ("e", "E", "s", "U", "u", "b", "a"), USDM: ("e", "E", "T", "s", "U", "u", "pu", "b", "a")},
    {},
)
#: REST ``depth`` (fetched by the collector, no session): its wire is the REST answer.
DEPTH_REST_SNAPSHOT = DatasetSpec(
    "depth_rest_snapshot", DepthRestSnapshotRecord,
    (_f("last_update_id", "int", spot="lastUpdateId", usdm="lastUpdateId"),
     _LEVELS._replace(wire={SPOT: _LEVELS_SPOT_REST, USDM: _LEVELS_SPOT_REST}),
     _f("reason", "text"), _EVENT_TIME_USDM, _TRANSACTION_TIME_USDM),
    ("market", "symbol", "last_update_id"), None, "last_update_id",
    {},
    {SPOT: ("lastUpdateId", "bids", "asks"), USDM: ("lastUpdateId", "E", "T", "bids", "asks")},
    {},
)
TRADE = DatasetSpec(
    Kind.TRADE.dataset, TradeRecord,
    (_f("event_time", "ms", "event_ms", spot="E", usdm="E"),
     _f("trade_time", "ms", "trade_ms", spot="T", usdm="T"),
     _f("trade_id", "int", spot="t", usdm="t"), _f("price", "float", spot="p", usdm="p"),
     _f("qty", "float", spot="q", usdm="q"), _f("is_buyer_maker", "bool", spot="m", usdm="m")),
    ("market", "stream", "trade_id"), "trade_id", "trade_id",
    {SPOT: "trade", USDM: "trade"},
    {m: ("e", "E", "s", "t", "p", "q", "T", "m") for m in (SPOT, USDM)},
    {SPOT: {"M": True}},  # "ignore"; USD-M's examples have none
)
AGG_TRADE = DatasetSpec(
    Kind.AGG_TRADE.dataset, AggTradeRecord,
    (_f("event_time", "ms", "event_ms", spot="E", usdm="E"),
     _f("trade_time", "ms", "trade_ms", spot="T", usdm="T"),
     _f("agg_trade_id", "int", spot="a", usdm="a"), _f("first_trade_id", "int", spot="f", usdm="f"),
     _f("last_trade_id", "int", spot="l", usdm="l"), _f("price", "float", spot="p", usdm="p"),
     _f("qty", "float", spot="q", usdm="q"), _f("is_buyer_maker", "bool", spot="m", usdm="m")),
    ("market", "stream", "agg_trade_id"), "agg_trade_id", "agg_trade_id",
    {SPOT: "aggTrade", USDM: "aggTrade"},
    {m: ("e", "E", "s", "a", "p", "q", "f", "l", "T", "m") for m in (SPOT, USDM)},
    {SPOT: {"M": True}},
)
BOOK_TICKER = DatasetSpec(
    Kind.BOOK_TICKER.dataset, BookTickerRecord,
    (_f("update_id", "int", spot="u", usdm="u"), _f("best_bid", "float", spot="b", usdm="b"),
     _f("best_bid_qty", "float", spot="B", usdm="B"), _f("best_ask", "float", spot="a", usdm="a"),
     _f("best_ask_qty", "float", spot="A", usdm="A"), _EVENT_TIME_USDM, _TRANSACTION_TIME_USDM),
    ("market", "stream", "update_id"), "update_id", "update_id",
    {USDM: "bookTicker"},  # spot's bookTicker has no ``e`` nor ``E``
    {SPOT: ("u", "s", "b", "B", "a", "A"), USDM: ("e", "u", "E", "T", "s", "b", "B", "a", "A")},
    {},
)
#: The futures markets whose markPrice and forceOrder payloads these specs describe
#: (``streams.FUTURES``, in a fixed order; COIN-M's forceOrder adds ``o.ps``, the pair, sent from the symbol, not kept).
FUTURES = tuple(sorted(_FUTURES))


def _fut(column: str, type_: str, key: str, buffer: str = "") -> Field:
    """A field of a futures-only dataset, sent under ``key`` on every market of :data:`FUTURES`."""
    return _f(column, type_, buffer, **{m.value: key for m in FUTURES})


#: USD-M ``markPriceUpdate`` (docs/binance-api.md section 8), one row a message: on the clock
#: (3 s or 1 s), so ``E`` never repeats in a stream and is its dedup id. A delivery contract
#: sends ``"r": ""`` and ``"T": 0``: null funding rate and next funding time.
MARK_PRICE = DatasetSpec(
    Kind.MARK_PRICE.dataset, MarkPriceRecord,
    (_fut("event_time", "ms", "E", "event_ms"),
     _fut("mark_price", "float", "p"), _fut("index_price", "float", "i"),
     _fut("estimated_settle_price", "float", "P"), _fut("funding_rate", "float?", "r"),
     _fut("next_funding_time", "ms?", "T", "next_funding_ms")),
    ("market", "stream", "event_time"), "event_time", "event_ms",
    {m: "markPriceUpdate" for m in FUTURES},
    # COIN-M "Mark Price Stream" orders P before i (docs/binance-api.md section 8)
    {**{m: ("e", "E", "s", "p", "i", "P", "r", "T") for m in FUTURES}, COINM: ("e", "E", "s", "p", "P", "i", "r", "T")},
    {},
)
#: USD-M ``forceOrder`` (docs/binance-api.md section 8): the latest liquidation order of its
#: symbol in a second, so ``E`` never repeats in a stream and is its dedup id. A sample by
#: design (``orderbook_core.streams.SAMPLED``): never every liquidation. ``"o.S"``: key ``S``
#: of the nested order object ``o``.
LIQUIDATION = DatasetSpec(
    Kind.LIQUIDATION.dataset, LiquidationRecord,
    (_fut("event_time", "ms", "E", "event_ms"),
     _fut("side", "text", "o.S"), _fut("order_type", "text", "o.o"), _fut("time_in_force", "text", "o.f"),
     _fut("orig_qty", "float", "o.q", "quantity"), _fut("price", "float", "o.p"), _fut("avg_price", "float", "o.ap", "average_price"),
     _fut("status", "text", "o.X"), _fut("last_filled_qty", "float", "o.l", "last_filled_quantity"),
     _fut("filled_accum_qty", "float", "o.z", "filled_quantity"), _fut("trade_time", "ms", "o.T", "trade_ms")),
    ("market", "stream", "event_time"), "event_time", "event_ms",
    {m: "forceOrder" for m in FUTURES},
    {**{m: ("e", "E", ("o", ("s", "S", "o", "f", "q", "p", "ap", "X", "l", "z", "T"))) for m in FUTURES},
     # COIN-M's order adds its pair after the symbol (COIN-M "Liquidation Order Streams")
     COINM: ("e", "E", ("o", ("s", "ps", "S", "o", "f", "q", "p", "ap", "X", "l", "z", "T")))},
    {},
)

#: REST ``openInterest`` (polled by the collector, no session): its wire is the REST answer
#: (``orderbook_core.streams.OPEN_INTEREST``). Dedup (market, symbol, time): a poll answered with
#: the same transaction time is the same value.
OPEN_INTEREST = DatasetSpec(
    "open_interest", OpenInterestRecord,
    (_f("time", "ms", "time_ms", usdm="time"), _f("open_interest", "float", usdm="openInterest")),
    ("market", "symbol", "time"), None, "time_ms",
    {},
    {USDM: ("openInterest", "symbol", "time")},
    {},
)

#: COIN-M's payload key order where it differs from USD-M's ("COIN-M streams" examples): depth and
#: bookTicker add ``ps`` (the pair); every other key, and every value, is as on USD-M.
_COINM_ORDER = {
    DEPTH_SNAPSHOT.name: ("e", "E", "T", "s", "ps", "U", "u", "pu", "b", "a"),
    DEPTH_UPDATE.name: ("e", "E", "T", "s", "ps", "U", "u", "pu", "b", "a"),
    BOOK_TICKER.name: ("e", "u", "s", "b", "B", "a", "A", "T", "E", "ps"),
}


def _with_coinm(spec: DatasetSpec) -> DatasetSpec:
    """``spec`` with COIN-M's keys: USD-M's, in COIN-M's order (:data:`_COINM_ORDER`)."""
    fields = tuple(f._replace(wire={**f.wire, COINM: f.wire[USDM]}) if USDM in f.wire else f for f in spec.fields)
    event_type = {**spec.event_type, **({COINM: spec.event_type[USDM]} if USDM in spec.event_type else {})}
    order = {**spec.wire_order, COINM: _COINM_ORDER.get(spec.name, spec.wire_order[USDM])}
    return spec._replace(fields=fields, event_type=event_type, wire_order=order)


DEPTH_SNAPSHOT, DEPTH_UPDATE, DEPTH_REST_SNAPSHOT, TRADE, AGG_TRADE, BOOK_TICKER, OPEN_INTEREST = map(_with_coinm, (
    DEPTH_SNAPSHOT, DEPTH_UPDATE, DEPTH_REST_SNAPSHOT, TRADE, AGG_TRADE, BOOK_TICKER, OPEN_INTEREST))

#: Every stream dataset, in the order an hour is exported.
SPECS: dict[str, DatasetSpec] = {s.name: s for s in (
    DEPTH_SNAPSHOT, DEPTH_UPDATE, DEPTH_REST_SNAPSHOT, TRADE, AGG_TRADE, BOOK_TICKER, MARK_PRICE, LIQUIDATION,
    OPEN_INTEREST)}
#: The spec of each stream kind.
BY_KIND: dict[Kind, DatasetSpec] = {k: SPECS[k.dataset] for k in Kind}


def dec(x: float) -> str:
    """A price or quantity as Binance-style decimal text (no exponent; parses back to ``x``)."""
    return np.format_float_positional(x, trim="-")


def encode(spec: DatasetSpec, market: Market | str, row: dict, ms: Any) -> dict:
    """The Binance payload of one archived row (``row`` keyed by dataset column, as pyarrow's
    ``to_pylist`` gives it); ``ms`` turns a ``recv_time``-style timestamp value into exchange ms."""
    market = Market(market)
    by_key: dict[str, tuple[Field, int]] = {}
    for f in spec.fields:
        key = f.wire.get(market)
        if isinstance(key, tuple):
            by_key[key[0]], by_key[key[1]] = (f, 0), (f, 1)
        elif key is not None:
            by_key[key] = (f, 0)

    def obj(keys, prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in keys:
            if isinstance(key, tuple):  # a nested object: its keys are "<name>.<key>" in the fields
                out[key[0]] = obj(key[1], f"{key[0]}.")
            elif key == "e":
                out[key] = spec.event_type[market]
            elif key in ("s", "symbol"):  # the stream's symbol (``symbol`` in REST answers)
                out[key] = row["symbol"]
            elif key == "ps":  # COIN-M's pair: the symbol up to its contract (BTCUSD_PERP: BTCUSD)
                out[key] = row["symbol"].split("_", 1)[0]
            else:
                f, side = by_key[prefix + key]
                out[key] = _wire_value(f, row, side, ms)
        return out

    out = obj(spec.wire_order[market], "")
    out.update(spec.tail.get(market, {}))
    return out


def _wire_value(f: Field, row: dict, side: int, ms: Any) -> Any:
    t = f.type
    if t is Type.LEVELS:
        return [[dec(lv["price"]), dec(lv["qty"])] for lv in row["asks" if side else "bids"]]
    v = row[f.column]
    if t is Type.MS_NULL and v is None:  # markPrice of a delivery contract: "T": 0
        return 0
    if t in (Type.MS, Type.MS_NULL):
        return ms(v)
    if t is Type.FLOAT_NULL and v is None:  # markPrice of a delivery contract: "r": ""
        return ""
    if t in (Type.FLOAT, Type.FLOAT_NULL):
        return dec(v)
    return v
