"""Strict decoding of each stream kind's payload into its typed record (sans-I/O).

One function per (kind, market) shape, fed the ``data`` object of a combined-stream frame.
Every check names what is wrong: the reason goes to the quarantine with the raw frame.
Prices and quantities arrive as decimal strings and become float64, exact up to 15
significant digits (longer ones are counted as ``wide_values``, not rejected).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from orderbook_collector.buffer import levels as packed
from orderbook_collector.buffer.records import (
    AggTradeRecord,
    BookTickerRecord,
    DepthRecord,
    DepthUpdateRecord,
    Row,
    TradeRecord,
)
from orderbook_collector.errors import FrameError
from orderbook_collector.feed.streams import Kind, Market, StreamSpec

_U63 = 1 << 63
#: A diff event carries the levels that changed; more than this on a side is not a book.
MAX_DIFF_LEVELS = 10_000


def decode_payload(spec: StreamSpec, data: dict, recv_us: int, session_id: int, seq: int, wide: int) -> Row:
    """The typed record of one payload of ``spec``'s stream.

    Raises:
        FrameError: the payload is not what the stream's kind sends on its market.
    """
    return _DECODERS[spec.type, spec.market](spec, data, recv_us, session_id, seq, wide)


def _uint(data: dict, key: str, what: str) -> int:
    v = data.get(key)
    if type(v) is not int or not 0 <= v < _U63:
        raise FrameError(f"{what} ({key!r}) missing or not a non-negative 64-bit integer")
    return v


def _number(data: dict, key: str, what: str, *, positive: bool) -> float:
    v = data.get(key)
    if not isinstance(v, str):
        raise FrameError(f"{what} ({key!r}) missing or not a decimal string")
    try:
        x = float(v)
    except ValueError:
        raise FrameError(f"{what} ({key!r}) is not a decimal number: {v[:30]!r}") from None
    if not math.isfinite(x) or x < 0 or (positive and x == 0):
        raise FrameError(f"{what} ({key!r}) must be {'positive' if positive else 'non-negative'} and finite")
    return x


def _bool(data: dict, key: str, what: str) -> bool:
    v = data.get(key)
    if type(v) is not bool:
        raise FrameError(f"{what} ({key!r}) missing or not true/false")
    return v


def _symbol(spec: StreamSpec, data: dict) -> None:
    s = data.get("s")
    if s != spec.symbol.upper():
        raise FrameError(f"payload symbol {s!r} is not the stream's {spec.symbol.upper()!r}")


def _event(data: dict, name: str) -> None:
    if data.get("e") != name:
        raise FrameError(f"event type {data.get('e')!r} is not {name!r}")


def pack_sides(bids: object, asks: object, limit: int) -> tuple[bytes, int]:
    """Validate both sides (``[price, qty]`` string pairs) and pack them; returns (levels, n_bids)."""
    if not isinstance(bids, list) or not isinstance(asks, list):
        raise FrameError("bids and asks must be lists")
    if len(bids) > limit or len(asks) > limit:
        raise FrameError(f"more than {limit} levels on a side")
    if not bids and not asks:
        return b"", 0
    try:
        arr = np.array(bids + asks, dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise FrameError("levels must be [price, qty] pairs of decimal numbers") from exc
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise FrameError("levels must be [price, qty] pairs of decimal numbers")
    if not math.isfinite(arr.sum()) or arr.min() < 0 or arr[:, 0].min() <= 0:
        raise FrameError("a price or quantity is negative, zero-priced or not finite")
    return packed.pack(arr), len(bids)


def _spot_partial(spec, data, recv_us, sid, seq, wide) -> DepthRecord:
    uid = _uint(data, "lastUpdateId", "last update id")
    levels, n_bids = pack_sides(data.get("bids"), data.get("asks"), spec.levels)
    return DepthRecord(spec.key, recv_us, sid, seq, uid, n_bids, levels, wide)


def _depth_update_ids(spec: StreamSpec, data: dict) -> tuple[int, int]:
    """(U, u) of a ``depthUpdate`` event of ``spec``'s symbol (diff depth, and USD-M partial depth)."""
    _event(data, "depthUpdate")
    _symbol(spec, data)
    first, last = _uint(data, "U", "first update id"), _uint(data, "u", "last update id")
    if first > last:
        raise FrameError(f"first update id {first} is after the last {last}")
    return first, last


def _usdm_partial(spec, data, recv_us, sid, seq, wide) -> DepthRecord:
    first, last = _depth_update_ids(spec, data)
    levels, n_bids = pack_sides(data.get("b"), data.get("a"), spec.levels)
    return DepthRecord(spec.key, recv_us, sid, seq, last, n_bids, levels, wide,
                       _uint(data, "E", "event time"), _uint(data, "T", "transaction time"),
                       first, _uint(data, "pu", "previous update id"))


def _diff(spec, data, recv_us, sid, seq, wide) -> DepthUpdateRecord:
    first, last = _depth_update_ids(spec, data)
    usdm = spec.market is Market.USDM
    levels, n_bids = pack_sides(data.get("b"), data.get("a"), MAX_DIFF_LEVELS)
    return DepthUpdateRecord(
        spec.key, recv_us, sid, seq, _uint(data, "E", "event time"),
        _uint(data, "T", "transaction time") if usdm else None, first, last,
        _uint(data, "pu", "previous update id") if usdm else None, n_bids, levels, wide,
    )


def _trade(spec, data, recv_us, sid, seq, wide) -> TradeRecord:
    _event(data, "trade")
    _symbol(spec, data)
    return TradeRecord(
        spec.key, recv_us, sid, seq, _uint(data, "E", "event time"), _uint(data, "T", "trade time"),
        _uint(data, "t", "trade id"), _number(data, "p", "price", positive=True),
        _number(data, "q", "quantity", positive=False), _bool(data, "m", "buyer is maker"), wide,
    )


def _agg_trade(spec, data, recv_us, sid, seq, wide) -> AggTradeRecord:
    _event(data, "aggTrade")
    _symbol(spec, data)
    first, last = _uint(data, "f", "first trade id"), _uint(data, "l", "last trade id")
    if first > last:
        raise FrameError(f"first trade id {first} is after the last {last}")
    return AggTradeRecord(
        spec.key, recv_us, sid, seq, _uint(data, "E", "event time"), _uint(data, "T", "trade time"),
        _uint(data, "a", "aggregate trade id"), first, last, _number(data, "p", "price", positive=True),
        _number(data, "q", "quantity", positive=False), _bool(data, "m", "buyer is maker"), wide,
    )


def _book_ticker(spec, data, recv_us, sid, seq, wide) -> BookTickerRecord:
    _symbol(spec, data)
    usdm = spec.market is Market.USDM
    if usdm:
        _event(data, "bookTicker")
    return BookTickerRecord(
        spec.key, recv_us, sid, seq, _uint(data, "u", "update id"),
        _number(data, "b", "best bid", positive=False), _number(data, "B", "best bid quantity", positive=False),
        _number(data, "a", "best ask", positive=False), _number(data, "A", "best ask quantity", positive=False),
        _uint(data, "E", "event time") if usdm else None, _uint(data, "T", "transaction time") if usdm else None,
        wide,
    )


_DECODERS: dict[tuple[Kind, Market], Callable[..., Row]] = {
    (Kind.PARTIAL_DEPTH, Market.SPOT): _spot_partial,
    (Kind.PARTIAL_DEPTH, Market.USDM): _usdm_partial,
    (Kind.DIFF_DEPTH, Market.SPOT): _diff,
    (Kind.DIFF_DEPTH, Market.USDM): _diff,
    (Kind.TRADE, Market.SPOT): _trade,
    (Kind.TRADE, Market.USDM): _trade,
    (Kind.AGG_TRADE, Market.SPOT): _agg_trade,
    (Kind.AGG_TRADE, Market.USDM): _agg_trade,
    (Kind.BOOK_TICKER, Market.SPOT): _book_ticker,
    (Kind.BOOK_TICKER, Market.USDM): _book_ticker,
}
