"""Silence as data: acknowledged subscriptions that deliver nothing, judged sans I/O.

Binance can acknowledge a subscription and then send nothing on it: a USD-M trade stream
on the ``/public`` route, or one stream stopped while the connection and its other streams
carry on. No disconnect, stall or continuity break records that; this module does, so a
known gap can be told apart from a silent loss (DESIGN.md, promise 4).

The detector is fed what the connection layer sees, with the caller's clock (integer µs):

* :meth:`Silence.subscribed` / :meth:`Silence.unsubscribed`: a connection opened with the
  streams in its URL (the handshake is their acknowledgement), a SUBSCRIBE or UNSUBSCRIBE
  was answered, a connection closed. A stream carried by two connections at once (a
  rotation's overlap) is watched until the last one lets it go.
* :meth:`Silence.message`: a frame of a stream arrived (its raw text is looked at only for
  partial depth whose symbol also has a diff stream: its update id tells a change).
* :meth:`Silence.due`: the periodic tick; returns the :class:`Silent` and :class:`Resumed`
  events since the last one.

What silence means depends on how a kind sends (``orderbook_core.streams.ON_CLOCK``):

* **On the clock** (partial depth, markPrice): a message every cadence whatever happens, so a stream
  with none for ``max(cadences × cadence, floor)`` is silent (:attr:`Reason.LATE`).
* **On change** (diff depth, trade, aggTrade, bookTicker, forceOrder): quiet is normal on an illiquid
  symbol, so only a contradiction or a never-delivered subscription counts. Every aggTrade
  is made of trades and every trade belongs to an aggTrade, so one of them arriving while
  the other stays quiet for ``grace`` is a contradiction (:attr:`Reason.AGG_TRADES_FLOW`,
  :attr:`Reason.TRADES_FLOW`); a bookTicker message or a partial-depth message with a new
  update id is a change of the book, which the symbol's diff stream must carry
  (:attr:`Reason.BOOK_CHANGES`). A stream that delivered nothing at all since it was
  acknowledged is suspicious after ``never`` (:attr:`Reason.NEVER_DELIVERED`), unless its kind
  is a sample that may rightly say nothing for hours (``streams.SAMPLED``: forceOrder).

Late and never-delivered are judged only while the market is alive (another stream of it
delivered within the window): when every stream stops together, that is a stall or a
disconnect, which the connection layer records and acts on, not a silence. A silence ends
(:class:`Resumed`) at the stream's next message, or when no connection carries it any more.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple, Union

from orderbook_core.streams import ON_CLOCK, SAMPLED, Kind, StreamSpec


class Reason(str, Enum):
    """Why a stream was judged silent (the value is what the buffer and coverage say)."""

    LATE = "late"  # a clock-driven stream missed its cadences
    AGG_TRADES_FLOW = "agg_trades_flow"  # trade stream quiet while the symbol's aggTrades arrive
    TRADES_FLOW = "trades_flow"  # aggTrade stream quiet while the symbol's trades arrive
    BOOK_CHANGES = "book_changes"  # diff depth quiet while bookTicker or partial depth shows the book change
    NEVER_DELIVERED = "never_delivered"  # nothing at all since the subscription was acknowledged
    POLL_FAILED = "poll_failed"  # a polled series (open interest) got no usable answer


class End(str, Enum):
    """How a silence ended."""

    MESSAGES = "messages"  # the stream delivered again
    UNSUBSCRIBED = "unsubscribed"  # no connection carries it any more (closed, or unsubscribed)


class Silent(NamedTuple):
    stream: str  # the stream key (``StreamSpec.key``)
    since_us: int  # its last message, or its acknowledgement if it never delivered
    reason: Reason
    at_us: int  # when it was judged


class Resumed(NamedTuple):
    stream: str
    at_us: int  # the first message after the silence (or when it stopped being watched)
    since_us: int  # the silence's start, as :class:`Silent` said
    reason: Reason
    end: End = End.MESSAGES


SilenceEvent = Union[Silent, Resumed]


@dataclass(frozen=True)
class Rules:
    """The thresholds (collector settings ``silence_*``), in µs."""

    cadences: int = 10  # a clock-driven stream is late after this many cadences ...
    floor_us: int = 5_000_000  # ... but never before this (jitter, a busy loop)
    grace_us: int = 5_000_000  # a contradiction counts once the other stream spoke this long ago
    never_us: int = 300_000_000  # an on-change stream with nothing since its acknowledgement

    def late_us(self, cadence_us: int) -> int:
        return max(self.cadences * cadence_us, self.floor_us)


#: For an on-change kind, the kinds of the same symbol and market whose messages prove it
#: must have spoken too (partial depth only when its update id moved).
WITNESSES: dict[Kind, tuple[Kind, ...]] = {
    Kind.TRADE: (Kind.AGG_TRADE,),
    Kind.AGG_TRADE: (Kind.TRADE,),
    Kind.DIFF_DEPTH: (Kind.BOOK_TICKER, Kind.PARTIAL_DEPTH),
}
_CONTRADICTION = {Kind.TRADE: Reason.AGG_TRADES_FLOW, Kind.AGG_TRADE: Reason.TRADES_FLOW,
                  Kind.DIFF_DEPTH: Reason.BOOK_CHANGES}
#: A partial-depth payload's update id: spot ``lastUpdateId``, USD-M ``u`` (str.find: a regex
#: costs microseconds a frame).
_MARKS = ('"lastUpdateId":', '"u":')
_MARKS_B = tuple(m.encode() for m in _MARKS)


def depth_version(raw: str | bytes | None) -> str | bytes | None:
    """The update id of a partial-depth frame, as text (compared, never computed with)."""
    if raw is None:
        return None
    marks, comma = (_MARKS_B, b",") if isinstance(raw, bytes) else (_MARKS, ",")
    for mark in marks:
        i = raw.find(mark)
        if i >= 0:
            i += len(mark)
            return raw[i:raw.find(comma, i)]
    return None


class _Watch:
    __slots__ = ("spec", "refs", "acked_us", "last_us", "version", "witness_us", "silent", "watchers",
                 "needs_version", "late_us", "grace_us", "market_last")

    def __init__(self, spec: StreamSpec, acked_us: int, rules: Rules, market_last: list) -> None:
        self.spec = spec
        self.market_last = market_last  # shared by the market's streams: [newest message of any]
        self.refs = 0
        self.acked_us = acked_us
        self.last_us: int | None = None
        self.version = None
        self.witness_us: int | None = None  # first witness message since our last one (or the ack)
        self.silent: Silent | None = None
        self.watchers: tuple[_Watch, ...] = ()  # streams our messages are witnesses for
        self.needs_version = False
        self.late_us = rules.late_us(spec.cadence_us)
        # A witness and the message it implies may arrive a cadence apart (diff depth batches).
        self.grace_us = max(rules.grace_us, 2 * spec.cadence_us)


class Silence:
    """The detector (see the module docstring). Not thread-safe: one event loop feeds it."""

    def __init__(self, rules: Rules = Rules()) -> None:
        self.rules = rules
        self._watch: dict[str, _Watch] = {}
        self._symbols: dict[tuple, list[_Watch]] = {}  # (market, symbol) -> its watched streams
        self._market_last: dict = {}  # market -> [newest message of any watched stream]
        self._events: list[SilenceEvent] = []

    # What the connection layer reports -----------------------------------------------------

    def subscribed(self, specs, at_us: int) -> None:
        """``specs`` were acknowledged on a connection at ``at_us``."""
        touched = set()
        for spec in specs:
            w = self._watch.get(spec.key)
            if w is None:
                w = self._watch[spec.key] = _Watch(spec, at_us, self.rules,
                                                   self._market_last.setdefault(spec.market, [None]))
                self._symbols.setdefault((spec.market, spec.symbol), []).append(w)
                touched.add((spec.market, spec.symbol))
            w.refs += 1
        for sym in touched:
            self._link(sym)

    def unsubscribed(self, keys, at_us: int) -> None:
        """A connection no longer carries the streams ``keys`` (closed, or UNSUBSCRIBE answered)."""
        touched = set()
        for key in keys:
            w = self._watch.get(key)
            if w is None:
                continue
            w.refs -= 1
            if w.refs > 0:
                continue  # another connection (a rotation's replacement) still carries it
            del self._watch[key]
            sym = (w.spec.market, w.spec.symbol)
            self._symbols[sym].remove(w)
            touched.add(sym)
            if w.silent is not None:
                self._events.append(Resumed(key, at_us, w.silent.since_us, w.silent.reason, End.UNSUBSCRIBED))
        for sym in touched:
            if self._symbols[sym]:
                self._link(sym)
            else:
                del self._symbols[sym]

    def message(self, key: str, at_us: int, raw: str | bytes | None = None) -> None:
        """A frame of ``key`` arrived at ``at_us`` (the hot path: a few attribute writes)."""
        w = self._watch.get(key)
        if w is None:
            return
        w.last_us = at_us
        w.witness_us = None
        w.market_last[0] = at_us
        if w.silent is not None:
            self._events.append(Resumed(key, at_us, w.silent.since_us, w.silent.reason))
            w.silent = None
        if w.watchers:
            if w.needs_version:
                version = depth_version(raw)
                changed = w.version is not None and version is not None and version != w.version
                w.version = version
                if not changed:
                    return
            for other in w.watchers:
                if other.witness_us is None and at_us - (other.last_us or other.acked_us) > other.grace_us:
                    other.witness_us = at_us

    # The tick ---------------------------------------------------------------------------

    def due(self, now_us: int) -> list[SilenceEvent]:
        """Judge every watched stream at ``now_us``; return the events since the last call."""
        for key, w in self._watch.items():
            if w.silent is not None:
                continue
            ref = w.acked_us if w.last_us is None else w.last_us
            reason = None
            if w.spec.type in ON_CLOCK:
                if now_us - ref >= w.late_us and self._alive(ref, w.spec.market, now_us, w.late_us):
                    reason = Reason.LATE
            elif w.witness_us is not None and now_us - w.witness_us >= w.grace_us:
                reason = _CONTRADICTION[w.spec.type]
            elif w.last_us is None and w.spec.type not in SAMPLED and now_us - ref >= self.rules.never_us \
                    and self._alive(ref, w.spec.market, now_us, self.rules.floor_us):
                reason = Reason.NEVER_DELIVERED
            if reason is not None:
                w.silent = Silent(key, ref, reason, now_us)
                self._events.append(w.silent)
        out, self._events = self._events, []
        return out

    @property
    def silent(self) -> dict[str, Silent]:
        """The streams silent now."""
        return {k: w.silent for k, w in self._watch.items() if w.silent is not None}

    # Internals --------------------------------------------------------------------------

    def _alive(self, ref_us: int, market, now_us: int, window_us: int) -> bool:
        """Another stream of the market delivered after ``ref_us`` (the judged stream's last word)
        and within the window: the connection is up and the silence is this stream's alone."""
        last = self._market_last[market][0]
        return last is not None and last > ref_us and last >= now_us - window_us

    def _link(self, sym: tuple) -> None:
        """Recompute which of the symbol's streams witness which."""
        streams = self._symbols[sym]
        for w in streams:
            w.watchers = tuple(o for o in streams if o is not w and w.spec.type in WITNESSES.get(o.spec.type, ()))
            w.needs_version = w.spec.type is Kind.PARTIAL_DEPTH and bool(w.watchers)
