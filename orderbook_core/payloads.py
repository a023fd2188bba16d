"""Strict decoding of each stream kind's payload into its typed record (sans-I/O).

One function per (kind, market) shape, fed the ``data`` object of a combined-stream frame,
and :func:`decode_rest_depth` for the REST depth snapshots that sync diff streams. Every
level of every payload, WebSocket or REST, goes through the one validator :func:`pack_sides`.
Every check raises :class:`~orderbook_core.errors.FrameError` with its
:class:`~orderbook_core.errors.QuarantineReason` and a detail naming what is wrong: both go
to the quarantine with the raw frame.
Prices and quantities arrive as decimal strings and become float64, exact up to 15
significant digits (longer ones are counted as ``wide_values``, not rejected).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

import numpy as np
import orjson

from orderbook_core.buffer import levels as packed
from orderbook_core.buffer.records import (
    AggTradeRecord,
    BookTickerRecord,
    DepthRecord,
    DepthRestSnapshotRecord,
    DepthUpdateRecord,
    LiquidationRecord,
    MarkPriceRecord,
    OpenInterestRecord,
    Row,
    TradeRecord,
)
from orderbook_core.errors import FrameError, QuarantineReason as Q
from orderbook_core.streams import FUTURES, Kind, Market, StreamSpec, open_interest_key

_U63 = 1 << 63
#: A diff event carries the levels that changed; more than this on a side is not a book.
MAX_DIFF_LEVELS = 10_000


# 16 characters hold 15 significant digits and a point: only longer number texts need a look.
_WIDE_RE = re.compile(r'"[0-9.]{17,}"')


def count_wide(raw: str) -> int:
    """How many quoted numbers in ``raw`` have more than 15 significant digits (float64 rounds them)."""
    if not _WIDE_RE.search(raw):
        return 0
    return sum(1 for m in _WIDE_RE.finditer(raw) if _significant_digits(m.group()[1:-1]) > 15)


def _significant_digits(text: str) -> int:
    try:
        digits = Decimal(text).normalize().as_tuple().digits
    except InvalidOperation:
        return 0
    return len(digits)


def decode_payload(spec: StreamSpec, data: dict, recv_us: int, session_id: int, seq: int, wide: int) -> Row:
    """The typed record of one payload of ``spec``'s stream.

    Raises:
        FrameError: the payload is not what the stream's kind sends on its market.
    """
    return _DECODERS[spec.type, spec.market](spec, data, recv_us, session_id, seq, wide)


def _uint(data: dict, key: str, what: str) -> int:
    v = data.get(key)
    if type(v) is not int or not 0 <= v < _U63:
        raise FrameError(Q.BAD_INTEGER, f"{what} ({key!r}) missing or not a non-negative 64-bit integer")
    return v


def _decimal(v: Any, key: str, what: str) -> float:
    """A Binance decimal string as a float (not yet checked for range)."""
    if not isinstance(v, str):
        raise FrameError(Q.BAD_DECIMAL, f"{what} ({key!r}) missing or not a decimal string")
    try:
        return float(v)
    except ValueError:
        raise FrameError(Q.BAD_DECIMAL, f"{what} ({key!r}) is not a decimal number: {v[:30]!r}") from None


def _number(data: dict, key: str, what: str, *, positive: bool) -> float:
    x = _decimal(data.get(key), key, what)
    if not math.isfinite(x) or x < 0 or (positive and x == 0):
        raise FrameError(Q.OUT_OF_RANGE, f"{what} ({key!r}) must be {'positive' if positive else 'non-negative'} and finite")
    return x


def _signed(data: dict, key: str, what: str) -> float | None:
    """A finite decimal that may be negative (a funding rate); ``""`` is None (no rate: Binance
    sends it for delivery contracts, docs/binance-api.md section 8)."""
    v = data.get(key)
    if v == "":
        return None
    x = _decimal(v, key, what)
    if not math.isfinite(x):
        raise FrameError(Q.OUT_OF_RANGE, f"{what} ({key!r}) must be finite")
    return x


_WORD_RE = re.compile(r"^[A-Z][A-Z_]{0,31}$")


def _word(data: dict, key: str, what: str, allowed: frozenset[str] | None = None) -> str:
    """An upper-case enum value of Binance's (side, order type, status): checked for shape, and
    against ``allowed`` where the set is closed."""
    v = data.get(key)
    if not isinstance(v, str) or not _WORD_RE.match(v) or (allowed is not None and v not in allowed):
        raise FrameError(Q.BAD_WORD, f"{what} ({key!r}) missing or not {' or '.join(sorted(allowed)) if allowed else 'an upper-case word'}: "
                         f"{str(v)[:30]!r}")
    return v


_SIDES = frozenset({"BUY", "SELL"})


def _bool(data: dict, key: str, what: str) -> bool:
    v = data.get(key)
    if type(v) is not bool:
        raise FrameError(Q.BAD_BOOLEAN, f"{what} ({key!r}) missing or not true/false")
    return v


def _symbol(spec: StreamSpec, data: dict) -> None:
    s = data.get("s")
    if s != spec.symbol.upper():
        raise FrameError(Q.WRONG_SYMBOL, f"payload symbol {s!r} is not the stream's {spec.symbol.upper()!r}")


def _event(data: dict, name: str) -> None:
    if data.get("e") != name:
        raise FrameError(Q.WRONG_EVENT, f"event type {data.get('e')!r} is not {name!r}")


def pack_sides(bids: object, asks: object, limit: int) -> tuple[bytes, int]:
    """Validate both sides (``[price, qty]`` string pairs) and pack them; returns (levels, n_bids)."""
    if not isinstance(bids, list) or not isinstance(asks, list):
        raise FrameError(Q.BAD_LEVELS, "bids and asks must be lists")
    if len(bids) > limit or len(asks) > limit:
        raise FrameError(Q.TOO_MANY_LEVELS, f"more than {limit} levels on a side")
    if not bids and not asks:
        return b"", 0
    try:
        arr = np.array(bids + asks, dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise FrameError(Q.BAD_LEVELS, "levels must be [price, qty] pairs of decimal numbers") from exc
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise FrameError(Q.BAD_LEVELS, "levels must be [price, qty] pairs of decimal numbers")
    if not math.isfinite(arr.sum()) or arr.min() < 0 or arr[:, 0].min() <= 0:
        raise FrameError(Q.OUT_OF_RANGE, "a price or quantity is negative, zero-priced or not finite")
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
        raise FrameError(Q.IDS_REVERSED, f"first update id {first} is after the last {last}")
    return first, last


def _usdm_partial(spec, data, recv_us, sid, seq, wide) -> DepthRecord:
    first, last = _depth_update_ids(spec, data)
    levels, n_bids = pack_sides(data.get("b"), data.get("a"), spec.levels)
    return DepthRecord(spec.key, recv_us, sid, seq, last, n_bids, levels, wide,
                       _uint(data, "E", "event time"), _uint(data, "T", "transaction time"),
                       first, _uint(data, "pu", "previous update id"))


def _diff(spec, data, recv_us, sid, seq, wide) -> DepthUpdateRecord:
    first, last = _depth_update_ids(spec, data)
    usdm = spec.market in FUTURES
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
        raise FrameError(Q.IDS_REVERSED, f"first trade id {first} is after the last {last}")
    return AggTradeRecord(
        spec.key, recv_us, sid, seq, _uint(data, "E", "event time"), _uint(data, "T", "trade time"),
        _uint(data, "a", "aggregate trade id"), first, last, _number(data, "p", "price", positive=True),
        _number(data, "q", "quantity", positive=False), _bool(data, "m", "buyer is maker"), wide,
    )


def _book_ticker(spec, data, recv_us, sid, seq, wide) -> BookTickerRecord:
    _symbol(spec, data)
    usdm = spec.market in FUTURES
    if usdm:
        _event(data, "bookTicker")
    return BookTickerRecord(
        spec.key, recv_us, sid, seq, _uint(data, "u", "update id"),
        _number(data, "b", "best bid", positive=False), _number(data, "B", "best bid quantity", positive=False),
        _number(data, "a", "best ask", positive=False), _number(data, "A", "best ask quantity", positive=False),
        _uint(data, "E", "event time") if usdm else None, _uint(data, "T", "transaction time") if usdm else None,
        wide,
    )


def _mark_price(spec, data, recv_us, sid, seq, wide) -> MarkPriceRecord:
    _event(data, "markPriceUpdate")
    _symbol(spec, data)
    rate = _signed(data, "r", "funding rate")
    next_funding = _uint(data, "T", "next funding time")
    return MarkPriceRecord(
        spec.key, recv_us, sid, seq, _uint(data, "E", "event time"), _number(data, "p", "mark price", positive=True),
        _number(data, "i", "index price", positive=False),
        _number(data, "P", "estimated settle price", positive=False),
        rate, next_funding or None,  # 0: a delivery contract has no next funding
        wide,
    )


def _liquidation(spec, data, recv_us, sid, seq, wide) -> LiquidationRecord:
    _event(data, "forceOrder")
    order = data.get("o")
    if type(order) is not dict:
        raise FrameError(Q.BAD_ORDER, "liquidation order ('o') missing or not an object")
    _symbol(spec, order)
    qty = _number(order, "q", "quantity", positive=True)
    last, filled = (_number(order, "l", "last filled quantity", positive=False),
                    _number(order, "z", "filled accumulated quantity", positive=False))
    if filled > qty or last > filled:
        raise FrameError(Q.OUT_OF_RANGE, f"filled quantities (last {last}, accumulated {filled}) exceed the order's {qty}")
    return LiquidationRecord(
        spec.key, recv_us, sid, seq, _uint(data, "E", "event time"), _word(order, "S", "side", _SIDES),
        _word(order, "o", "order type"), _word(order, "f", "time in force"), qty,
        _number(order, "p", "price", positive=True), _number(order, "ap", "average price", positive=False),
        _word(order, "X", "order status"), last, filled, _uint(order, "T", "trade time"), wide,
    )


def _rest_object(body: bytes, what: str) -> dict:
    """A REST answer's body as the JSON object it must be."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise FrameError(Q.NOT_JSON, str(exc)) from None
    if type(data) is not dict:
        raise FrameError(Q.NOT_OBJECT, f"{what} is not a JSON object")
    return data


def decode_rest_depth(spec: StreamSpec, body: bytes, recv_us: int, reason: str, limit: int) -> DepthRestSnapshotRecord:
    """The record of a REST depth snapshot (``body`` as the server sent it) fetched for ``spec``'s diff stream.

    Spot ``GET /api/v3/depth`` answers ``{"lastUpdateId", "bids", "asks"}`` with no time; USD-M
    ``GET /fapi/v1/depth`` adds ``E`` (message time) and ``T`` (transaction time), both required
    here (Binance's "Order Book" REST pages). ``limit`` is the levels per side asked for.
    ``reason`` is why it was fetched ('connect', 'gap').

    Raises:
        FrameError: the body is not a depth snapshot; its reason and detail are stored with the body in quarantine.
    """
    data = _rest_object(body, "depth snapshot")
    last_id = _uint(data, "lastUpdateId", "last update id")
    levels, n_bids = pack_sides(data.get("bids"), data.get("asks"), limit)
    usdm = spec.market in FUTURES
    return DepthRestSnapshotRecord(
        spec.key, spec.market.value, spec.symbol.upper(), recv_us, last_id, n_bids, levels, reason,
        _uint(data, "E", "message time") if usdm else None, _uint(data, "T", "transaction time") if usdm else None,
    )


def decode_open_interest(market: Market, symbol: str, body: bytes, recv_us: int) -> OpenInterestRecord:
    """The record of a polled open-interest answer (``body`` as the server sent it) for ``symbol``.

    ``GET /fapi/v1/openInterest`` answers ``{"openInterest": "10659.509", "symbol": "BTCUSDT",
    "time": 1589437530011}`` (USD-M REST "Open Interest"): the symbol must be the one asked for,
    the open interest a finite non-negative decimal string, the time a non-negative integer.

    Raises:
        FrameError: the body is not that answer; its reason is stored with the body in quarantine.
    """
    data = _rest_object(body, "open interest")
    asked = symbol.upper()
    if data.get("symbol") != asked:
        raise FrameError(Q.WRONG_SYMBOL, f"open interest of {str(data.get('symbol'))[:30]!r}, not of {asked!r} as asked")
    oi = _number(data, "openInterest", "open interest", positive=False)
    return OpenInterestRecord(open_interest_key(market, symbol), market.value, asked, recv_us,
                              _uint(data, "time", "time"), oi)


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
    (Kind.MARK_PRICE, Market.USDM): _mark_price,
    (Kind.LIQUIDATION, Market.USDM): _liquidation,
}
# COIN-M payloads are USD-M's with the pair (``ps``) added, which is not recorded.
_DECODERS.update({(kind, Market.COINM): f for (kind, m), f in list(_DECODERS.items()) if m is Market.USDM})


# The batch fast path ---------------------------------------------------------------------
#
# Most of a depth frame is its levels: 40 pairs of decimal strings in a depth20 snapshot.
# Parsing them into 80 ``str`` objects and 42 lists, then converting each string, costs far
# more than the rest of the collector. The fast path never makes those objects: it parses
# the frame's head (everything before the levels) with orjson, checks that the levels'
# tail has exactly the shape ``"bids":[["d","d"],...],"asks":[...]}}`` (with only digits
# and points inside the quotes), and turns the numbers of a whole batch into float64 with
# one orjson parse of ``[d,d,d,...]``. JSON numbers made of digits and one point are read
# exactly as ``float()`` reads them (correctly rounded), so the blob is byte for byte what
# the strict path packs. The numbers are read from the tail with its quotes turned into
# spaces and the rest of its punctuation dropped: a digit outside a value slot then stands
# next to a value with no comma between them, which the parse refuses. Anything else (other whitespace, key order, signs, exponents,
# malformed numbers, a zero price, an unknown key in the message) is left to the strict
# decoder, frame by frame: the fast path only ever accepts what the strict one accepts,
# and returns the same record.

_DIGITS = b"0123456789."
_TO_X = bytes.maketrans(_DIGITS, b"x" * len(_DIGITS))
_X17 = b"x" * 17  # a number text of 17+ characters may be wide: count_wide() decides
_QUOTE_TO_SPACE = bytes.maketrans(b'"', b" ")
_PAIR = b'["",""]'
_MAX_SHAPES = 4096


class _Strict(Exception):
    """Not a plain frame: the strict decoder takes it, and gives the reason if it is bad."""


class _Tail(NamedTuple):
    """The levels part of one kind's frames: its separator and what is not a number in it."""

    sep: bytes  # from the comma before the bids key
    asks_key: bytes
    strip: bytes  # every byte of the tail that is not a digit, point, comma or quote

    @classmethod
    def of(cls, bids: str, asks: str) -> _Tail:
        return cls(f',"{bids}":['.encode(), f'"{asks}":'.encode(), bytes(set(f'[]}}:{bids}{asks}'.encode())))

    def skeleton(self, n_bids: int, n_asks: int) -> bytes:
        return (self.sep[1:] + b",".join([_PAIR] * n_bids) + b"]," + self.asks_key + b"["
                + b",".join([_PAIR] * n_asks) + b"]}}")


_SNAPSHOT_TAIL = _Tail.of("bids", "asks")
_EVENT_TAIL = _Tail.of("b", "a")


class _Route(NamedTuple):
    """How the fast path treats one subscribed stream."""

    spec: StreamSpec
    key: str
    symbol: str  # upper case, as in payloads
    tail: _Tail | None  # None: a small event, parsed whole
    limit: int  # most levels a side


def _u(v: object) -> bool:
    return type(v) is int and 0 <= v < _U63


class FastPath:
    """Batch decoding of plain frames (see the comment above); everything else is left to the strict path."""

    def __init__(self, streams: Iterable[StreamSpec], max_frame_bytes: int):
        self.max_frame_bytes = max_frame_bytes
        self.routes: dict[str, _Route] = {}
        self._shapes: dict[bytes, tuple[int, int] | None] = {}
        self.add_streams(streams)

    def add_streams(self, streams: Iterable[StreamSpec]) -> None:
        for s in streams:
            if s.type is Kind.PARTIAL_DEPTH:
                tail, limit = (_SNAPSHOT_TAIL if s.market is Market.SPOT else _EVENT_TAIL), s.levels
            elif s.type is Kind.DIFF_DEPTH:
                tail, limit = _EVENT_TAIL, MAX_DIFF_LEVELS
            else:
                tail, limit = None, 0
            self.routes[s.name] = _Route(s, s.key, s.symbol.upper(), tail, limit)

    def _shape(self, tail: _Tail, skeleton: bytes) -> tuple[int, int] | None:
        """(bids, asks) of a levels tail's skeleton, or None if it is not exactly the plain shape."""
        shape = self._shapes.get(skeleton, False)
        if shape is not False:
            return shape
        pairs = skeleton.count(_PAIR)
        n_bids = skeleton[: max(skeleton.find(tail.asks_key), 0)].count(_PAIR)
        shape = (n_bids, pairs - n_bids) if tail.skeleton(n_bids, pairs - n_bids) == skeleton else None
        if len(self._shapes) >= _MAX_SHAPES:
            self._shapes.clear()
        self._shapes[skeleton] = shape
        return shape

    def decode_into(self, frames: list[tuple[str | bytes, int, int, int]], out: list) -> list[int]:
        """Fill ``out[i]`` for the frames the fast path takes; return the indexes of the others."""
        slow: list[int] = []
        routes = self.routes
        loads = orjson.loads
        # Levels frames wait for the batch's number conversion: (index, type, head, after, n_bids, start, n).
        waiting: list[tuple] = []
        numbers: list[bytes] = []
        texts: list[bytes] = []  # the rest of the taken frames' text, screened for wide numbers with the numbers
        n_values = 0
        for i, (raw, recv_us, sid, seq) in enumerate(frames):
            try:
                if type(raw) is not str or len(raw) > self.max_frame_bytes or not raw.startswith('{"stream":"'):
                    raise _Strict
                route = routes[raw[11 : raw.index('"', 11)]]
                b = raw.encode()
                tail = route.tail
                if tail is None:
                    msg = loads(b)
                    if len(msg) != 2 or msg["stream"] != route.spec.name:
                        raise _Strict
                    data = msg["data"]
                    spec = route.spec
                    if type(data) is not dict or ("e" in data and spec.type is Kind.BOOK_TICKER
                                                  and spec.market is Market.SPOT):
                        raise _Strict
                    out[i] = _DECODERS[spec.type, spec.market](spec, data, recv_us, sid, seq, 0)
                    texts.append(b)
                    continue
                cut = b.find(tail.sep)
                if cut < 0:
                    raise _Strict
                head_text = b[:cut]
                msg = loads(head_text + b"}}")
                if len(msg) != 2 or msg["stream"] != route.spec.name:
                    raise _Strict
                levels_tail = b[cut + 1 :]
                shape = self._shape(tail, levels_tail.translate(None, _DIGITS))
                if shape is None or shape[0] > route.limit or shape[1] > route.limit:
                    raise _Strict
                head, ctor, post = self._head(route, msg["data"], recv_us, sid, seq)
                n = 2 * (shape[0] + shape[1])
                if n:
                    nums = levels_tail.translate(_QUOTE_TO_SPACE, tail.strip)
                    numbers.append(nums if shape[0] and shape[1] else nums.strip(b" ,"))
                waiting.append((i, ctor, head, post, shape[0], n_values, n))
                n_values += n
                texts.append(head_text)
            except Exception:  # noqa: BLE001  (any surprise: the strict path decides, with its reason)
                slow.append(i)
        joined = b"[" + b",".join(numbers) + b"]"
        if waiting:
            slow += self._finish_levels(waiting, joined, n_values, out)
        if _X17 in joined.translate(_TO_X) or _X17 in b"".join(texts).translate(_TO_X):
            for i in set(range(len(frames))).difference(slow):
                wide = count_wide(frames[i][0])
                if wide:
                    out[i] = out[i]._replace(wide_values=wide)
        return slow

    @staticmethod
    def _head(route: _Route, data: dict, recv_us: int, sid: int, seq: int) -> tuple[tuple, type, tuple]:
        """Validate a levels frame's fields other than the levels: (fields before the levels, record type, after)."""
        spec = route.spec
        if spec.type is Kind.PARTIAL_DEPTH and spec.market is Market.SPOT:
            uid = data["lastUpdateId"]
            if "e" in data or not _u(uid):
                raise _Strict
            return (route.key, recv_us, sid, seq, uid), DepthRecord, ()
        first, last, event = data["U"], data["u"], data["E"]
        if (data["e"] != "depthUpdate" or data["s"] != route.symbol or not _u(first) or not _u(last)
                or first > last or not _u(event)):
            raise _Strict
        if spec.market in FUTURES:
            txn, prev = data["T"], data["pu"]
            if not _u(txn) or not _u(prev):
                raise _Strict
        else:
            txn = prev = None
        if spec.type is Kind.PARTIAL_DEPTH:
            return (route.key, recv_us, sid, seq, last), DepthRecord, (event, txn, first, prev)
        return (route.key, recv_us, sid, seq, event, txn, first, last, prev), DepthUpdateRecord, ()

    @staticmethod
    def _finish_levels(waiting: list[tuple], numbers: bytes, n_values: int, out: list) -> list[int]:
        """Convert the batch's numbers at once and build the levels records; return the frames left to the strict path."""
        try:
            values = orjson.loads(numbers)
            if len(values) != n_values:
                raise _Strict
            arr = np.array(values, dtype=np.float64)
        except Exception:  # noqa: BLE001  (a malformed number somewhere: every frame of it goes the strict way)
            return [w[0] for w in waiting]
        slow: list[int] = []
        bad = np.zeros(0, dtype=np.int64)
        if not np.isfinite(arr).all() or not (arr[0::2] > 0).all():  # prices are the even values
            bad = np.flatnonzero(~np.isfinite(arr) | (np.arange(len(arr)) % 2 == 0) & (arr <= 0))
        starts = np.fromiter((w[5] for w in waiting), dtype=np.int64, count=len(waiting)) if len(bad) else None
        bad_frames = set(np.searchsorted(starts, bad, side="right") - 1) if len(bad) else ()
        blob = arr.tobytes()
        for k, (i, ctor, head, post, n_bids, start, n) in enumerate(waiting):
            if k in bad_frames:
                slow.append(i)
                continue
            out[i] = ctor(*head, n_bids, blob[8 * start : 8 * (start + n)], 0, *post)
        return slow
