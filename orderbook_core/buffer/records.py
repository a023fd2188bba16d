"""The typed records that cross the writer queue and the spill into the buffer.

The event loop submits :class:`Frame`, :class:`Quarantined`, :class:`SessionOpen`,
:class:`SessionClose` and :class:`Event` items; the writer decodes frames into
:class:`DepthRecord` rows (a frame the loop had to decode itself arrives as a record). They are NamedTuples: typed and named, yet as cheap to make as
the tuples they replace, which matters at tens of thousands of frames a second.
:func:`to_spill` and :func:`from_spill` are their one on-disk form (marshal takes plain
tuples only).
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple, Union


class Frame(NamedTuple):
    """A received data frame, not yet decoded (the writer decodes it, once)."""

    raw: str | bytes
    recv_us: int
    session_id: int
    seq: int


#: The ``session_id`` (and seq 0) of a quarantined REST answer: it came over no connection, and
#: no session has this id (session ids are opening times in µs), so it explains no seq gap.
REST_SESSION = 0


class Quarantined(NamedTuple):
    """A frame (or a REST answer, session :data:`REST_SESSION`) that could not be used,
    kept with its raw bytes, the reason and what exactly was wrong."""

    recv_us: int
    session_id: int
    seq: int
    reason: str  # a QuarantineReason value (records cross the spill as plain tuples)
    raw: bytes
    detail: str = ""  # last, with a default: items spilled before it existed still load


class SessionOpen(NamedTuple):
    """A connection opened; its frames follow it through the queue (and the spill)."""

    session_id: int
    url: str
    streams_json: str
    opened_us: int
    market: str = "spot"  # the writer decodes the session's frames with this market's streams


class SessionClose(NamedTuple):
    session_id: int
    closed_us: int
    reason: str


class EventKind(str, Enum):
    """What an ``events`` row records (``Event.kind`` holds the value: records cross the spill as plain tuples)."""

    ROTATION_START = "rotation_start"
    ROTATION_END = "rotation_end"
    SERVER_SHUTDOWN = "server_shutdown"
    STALL = "stall"
    SPILL_START = "spill_start"
    SPILL_END = "spill_end"
    WRITE_FAILURES = "write_failures"
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    SUBSCRIBE_FAILED = "subscribe_failed"
    UNSUBSCRIBE_FAILED = "unsubscribe_failed"
    SYMBOLS_FAILED = "symbols_failed"


class Event(NamedTuple):
    """A stall, rotation, shutdown notice, spill or write-failure episode: gaps are data."""

    time_us: int
    session_id: int | None
    stream: str | None
    kind: str
    detail: str | None


class Stop(NamedTuple):
    """Ends the writer after everything submitted before it is committed."""


class DepthRecord(NamedTuple):
    """A validated partial-depth snapshot, ready for the ``depth_snapshot`` table.

    Exchange times are ms as Binance sends them; the USD-M fields are None on spot.
    """

    stream: str
    recv_us: int
    session_id: int
    seq: int
    update_id: int
    n_bids: int
    levels: bytes  # see buffer.levels
    wide_values: int  # values with more than 15 significant digits
    event_ms: int | None = None
    transaction_ms: int | None = None
    first_update_id: int | None = None
    prev_update_id: int | None = None


class DepthUpdateRecord(NamedTuple):
    """A validated diff-depth event (``depth_update``): changed levels, qty 0 removes one."""

    stream: str
    recv_us: int
    session_id: int
    seq: int
    event_ms: int
    transaction_ms: int | None  # USD-M only
    first_update_id: int  # U
    last_update_id: int  # u
    prev_update_id: int | None  # pu, USD-M only
    n_bids: int
    levels: bytes
    wide_values: int


class TradeRecord(NamedTuple):
    stream: str
    recv_us: int
    session_id: int
    seq: int
    event_ms: int
    trade_ms: int
    trade_id: int
    price: float
    qty: float
    is_buyer_maker: bool
    wide_values: int


class AggTradeRecord(NamedTuple):
    stream: str
    recv_us: int
    session_id: int
    seq: int
    event_ms: int
    trade_ms: int
    agg_trade_id: int
    first_trade_id: int
    last_trade_id: int
    price: float
    qty: float
    is_buyer_maker: bool
    wide_values: int


class BookTickerRecord(NamedTuple):
    stream: str
    recv_us: int
    session_id: int
    seq: int
    update_id: int
    best_bid: float
    best_bid_qty: float
    best_ask: float
    best_ask_qty: float
    event_ms: int | None  # USD-M only
    transaction_ms: int | None  # USD-M only
    wide_values: int


class MarkPriceRecord(NamedTuple):
    """A USD-M ``markPriceUpdate`` (``mark_price``). The funding fields are None for a delivery
    contract, which sends ``"r": ""`` and ``"T": 0`` (docs/binance-api.md section 8)."""

    stream: str
    recv_us: int
    session_id: int
    seq: int
    event_ms: int
    mark_price: float
    index_price: float
    estimated_settle_price: float
    funding_rate: float | None
    next_funding_ms: int | None
    wide_values: int


class LiquidationRecord(NamedTuple):
    """A USD-M ``forceOrder`` snapshot (``liquidation``): the latest liquidation order of its
    symbol in a second, so the dataset is a sample, never every liquidation."""

    stream: str
    recv_us: int
    session_id: int
    seq: int
    event_ms: int
    side: str  # BUY | SELL
    order_type: str  # e.g. LIMIT
    time_in_force: str  # e.g. IOC
    quantity: float  # original quantity
    price: float
    average_price: float
    status: str  # e.g. FILLED
    last_filled_quantity: float
    filled_quantity: float  # accumulated
    trade_ms: int
    wide_values: int


class DepthRestSnapshotRecord(NamedTuple):
    """A REST depth snapshot fetched to sync a diff stream (``depth_rest_snapshot``).

    ``stream`` is the key of the diff stream it serves; no session or seq: it did not
    come over a connection. ``reason`` is why it was fetched ('connect', 'gap').
    """

    stream: str
    market: str
    symbol: str  # upper case
    recv_us: int
    last_update_id: int
    n_bids: int
    levels: bytes
    reason: str
    event_ms: int | None  # USD-M only
    transaction_ms: int | None  # USD-M only


class OpenInterestRecord(NamedTuple):
    """One polled open-interest answer (``open_interest``): no session or seq, like a REST snapshot.

    ``stream`` is the series' key (``streams.open_interest_key``); ``time_ms`` is Binance's
    ``time`` (ms); ``open_interest`` its ``openInterest`` (contracts or base asset, as Binance counts).
    """

    stream: str
    market: str
    symbol: str  # upper case
    recv_us: int
    time_ms: int
    open_interest: float


class DepthSyncRecord(NamedTuple):
    """A diff stream's sync state changed (``depth_sync``; see buffer.schema step 3)."""

    stream: str
    session_id: int
    recv_us: int
    event: str  # 'break' | 'synced'
    reason: str  # 'connect' | 'gap' | 'snapshot'
    before_update_id: int | None
    before_event_ms: int | None
    after_first_update_id: int | None
    after_last_update_id: int | None
    after_prev_update_id: int | None
    after_event_ms: int | None
    snapshot_update_id: int | None


class TradeGapRecord(NamedTuple):
    """Trade or aggTrade ids that never arrived (``trade_gap``), inclusive range."""

    stream: str
    session_id: int
    recv_us: int
    dataset: str  # 'trade' | 'agg_trade'
    first_missing_id: int
    last_missing_id: int
    before_event_ms: int | None
    after_event_ms: int | None


class SilenceRecord(NamedTuple):
    """A subscription went silent or spoke again (``silence``; see buffer.schema step 4).

    ``event`` 'silent': ``since_us`` is the stream's last message (or its acknowledgement),
    ``end_us`` None. 'resumed': the same ``since_us`` and ``reason``, ``end_us`` the first
    message after it (or when no connection carried the stream any more, ``ended_by``).
    ``recv_us`` is when the collector decided: the row's hour and part go by it.
    """

    stream: str
    recv_us: int
    event: str  # 'silent' | 'resumed'
    since_us: int
    end_us: int | None
    reason: str  # feed.silence.Reason values
    ended_by: str | None  # feed.silence.End values; None on 'silent'


class SessionStreams(NamedTuple):
    """Streams added to a live session (a SUBSCRIBE for ``*``): the writer must know them
    before their first frame, which follows this record through the queue (and the spill)."""

    session_id: int
    time_us: int
    streams_json: str  # JSON list of the stream names added, on the session's market


#: A decoded market-data row, one type per dataset.
Row = Union[DepthRecord, DepthUpdateRecord, TradeRecord, AggTradeRecord, BookTickerRecord, MarkPriceRecord,
            LiquidationRecord]
Item = Union[
    Frame, Row, Quarantined, SessionOpen, SessionClose, Event, Stop,
    DepthRestSnapshotRecord, DepthSyncRecord, TradeGapRecord, SessionStreams, SilenceRecord, OpenInterestRecord,
]
#: The spill's type tags: append only, never reorder (spilled files name types by index).
_SPILLED: tuple[type, ...] = (
    Frame, Quarantined, SessionOpen, SessionClose, Event, Stop, DepthRecord,
    DepthUpdateRecord, TradeRecord, AggTradeRecord, BookTickerRecord,
    DepthRestSnapshotRecord, DepthSyncRecord, TradeGapRecord, SessionStreams, SilenceRecord,
    MarkPriceRecord, LiquidationRecord, OpenInterestRecord,
)
_TAG = {t: i for i, t in enumerate(_SPILLED)}


def to_spill(item: Item) -> tuple:
    return (_TAG[type(item)], *item)


def from_spill(data: tuple) -> Item:
    return _SPILLED[data[0]](*data[1:])
