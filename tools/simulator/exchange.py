"""A simulated Binance market-data exchange (spot and USD-M futures) on loopback.

Serves the WebSocket market streams and the REST market data of both markets on one
port, with books that evolve slowly and reproducibly, plus fault switches for tests,
chaos runs, benchmarks and offline demos::

    python -m tools.simulator --port 9443      # prints one line, then serves

    async with Exchange(symbols=["btcusdt"], seed=1, rate=50) as ex:
        async with connect(ex.ws_url + "/stream?streams=btcusdt@depth20@100ms") as ws: ...

Binance's protocol: ``/stream?streams=a/b`` (combined wrapper
``{"stream":..,"data":..}``), ``/ws/<name>`` (bare payloads), bare ``/ws`` or ``/stream`` plus
SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS / SET_PROPERTY / GET_PROPERTY with Binance's
nested error replies (codes 0-3). More than ``max_incoming_per_sec`` client frames in one
second (5 on spot, 10 on USD-M by default) closes the connection with 1008 "Too many
requests". Binance's facts (stream names, routes, limits, weights) are the simulator's own,
in :mod:`tools.simulator.facts`, each with its source: never the product's, which the
simulator is there to test.

* Spot on ``/stream`` and ``/ws``: ``<sym>@depth5|10|20[@100ms]`` (``lastUpdateId,bids,asks``),
  ``<sym>@depth[@100ms]`` (``e,E,s,U,u,b,a``), ``@trade`` (``e,E,s,t,p,q,T,m,M``),
  ``@aggTrade`` (``e,E,s,a,p,q,f,l,T,m,M``), ``@bookTicker`` (``u,s,b,B,a,A``).
* USD-M on the routed paths ``/public/stream|ws`` (depth, bookTicker, trade) and
  ``/market/stream|ws`` (aggTrade), optionally behind ``/fstream``: ``@depth5|10|20[@100ms|@500ms]``
  (full top N as ``e,E,T,s,U,u,pu,b,a``), ``@depth[@100ms|@500ms]`` (the same fields, ``pu`` =
  previous ``u``), ``@bookTicker`` (adds ``e,E,T``), trade and aggTrade without ``M``. A
  stream on the other route is accepted (handshake, SUBSCRIBE) and listed but delivers
  nothing, as on Binance. The retired unrouted ``/fstream/stream`` and ``/fstream/ws``
  (Binance's ``fstream.binance.com/stream|ws``; the prefix tells them from spot's on this
  one port) behave the same way and serve what ``/public`` serves (depth, and trade, per
  binance/binance-public-data#472): an aggTrade there is silent.
* One book per market and symbol makes every stream agree: each book step changes the
  book, raises the update id and is kept (changes, undo, trades, top of book), so a
  REST snapshot plus diff events rebuild exactly :meth:`Exchange.book_state` at any kept
  id; trades are fills of taker orders against the best levels (they move the book),
  consecutive trade and aggTrade ids per symbol; bookTicker at every top-of-book change.
* USD-M on ``/market`` also: ``@markPrice`` / ``@markPrice@1s`` (``e,E,s,p,i,P,r,T``: the mark
  is the book's mid, the index a few ticks under it, a signed funding rate, the next 8-hourly
  funding time), on Binance's clock of 3 s or 1 s whatever ``rate`` says; ``@forceOrder``
  (``e,E,o:{s,S,o,f,q,p,ap,X,l,z,T}``): once a second at most, the latest fill since the last
  one as a filled IOC liquidation order, nothing when there was no fill. Their ``E`` never
  repeats within a stream.
* COIN-M (``coinm_symbols``, e.g. ``btcusd_perp``, dated ``btcusd_261225``) unrouted under
  ``/dstream/stream|ws`` (``dstream.binance.com``), REST under ``/dapi/v1``: every USD-M kind
  with COIN-M's payloads: depth and bookTicker add ``ps`` (the pair); ``markPriceUpdate`` in
  COIN-M's order ``e,E,s,p,P,i,r,T``, a delivery contract's ``"r": ""`` and ``"T": 0``;
  forceOrder's ``o`` adds ``ps`` after ``s`` (``facts.MARK_PRICE_KEYS``, ``FORCE_ORDER_KEYS``).
* REST: ``GET /api/v3/depth|time|ping|exchangeInfo`` and ``/fapi/v1/depth|time|ping|exchangeInfo``
  (USD-M depth limits 5..1000, with ``E`` and ``T``). Each market has Binance's weight
  budget (6000 and 2400 per minute; ``weight_budget`` overrides it): every answer carries
  ``X-MBX-USED-WEIGHT-1M``; over budget 429 with ``Retry-After`` until the window ends; a
  request before then is banned: 418 with ``Retry-After`` for ``ban_seconds``.
  ``exchangeInfo`` lists every symbol ever listed with ``status`` TRADING, or BREAK (spot) /
  SETTLING (USD-M) once delisted.

Choices where Binance is undocumented or where a simulator must pick:

* An invalid or unknown stream in the URL refuses the handshake with HTTP 400 and
  ``{"code":-1121,"msg":"Invalid stream: <name>"}``; an unknown path gets 404.
* Books are global: one ticker task per stream generates each message once and the same
  bytes go to every subscriber, so overlapping connections see identical messages.
  All streams of a symbol sample one book on a base clock (``rate`` or 10 steps/s);
  every step raises ``lastUpdateId`` by 1..50, so it never repeats within a stream; ids
  start at the wall clock in µs (:func:`clock_id_base`), so they never repeat across starts.
* ``stall(s)``: messages generated during the stall are dropped for the stalled
  connections (Binance does not queue forever); control replies and pings go on.
* A connection whose outbox exceeds ``max_outbox`` messages (a client that stopped
  reading) is aborted without a close frame, as a server dropping a slow consumer.
* "Sent" means handed to the transport: an abrupt disconnect can lose the last frames
  that the sent log lists, exactly as a real network can.
* permessage-deflate is off by default (``compression=None``): cheaper for benchmarks.
* Spot and USD-M books of a symbol are separate (different seeds), as on Binance.
* USD-M trade and aggTrade carry no ``M`` (Binance's futures examples show none).
* A delisted symbol's streams go quiet and its book stands still; subscriptions to it stay
  valid. A listed symbol gets a fresh book; a relisted one resumes where it stood.
* An unchanged book sends no depth message, so ``lastUpdateId`` never repeats in a stream.
* Both markets share one port: ``/ws`` and ``/stream`` are spot's, USD-M's are under
  ``/public``, ``/market`` or ``/fstream`` (see above).
* Partial-depth ``lastUpdateId`` (``partials_aligned=False``, the default): whether Binance's ever
  equals a diff event's ``u`` is undocumented, so here it never does: a partial stream ticks half
  a period after the diff streams and steps the book once more, so its id lies inside the next
  diff event. ``partials_aligned=True`` samples both at the same book steps (ids line up);
  ``partial_rate`` gives partial streams a cadence of their own.
* Book shape: ``book_levels`` a side (100 by default; thousands make books deeper than any REST
  snapshot), ``trend`` (the chance a step moves the mid one way: the top of book leaves the first
  snapshot's range) and ``jump`` (the chance a step eats 5-20 whole levels at once).

Fault switches (``Exchange`` methods; the same over HTTP as ``POST /control/<name>?..``):
``disconnect(abrupt)``, ``stall(seconds)``, ``replay_on_next_connect(n)``,
``inject_malformed(kind)``, ``reject_connections(status, retry_after, count)``,
``server_shutdown(grace)``, ``drop_diff(stream, market)`` (the next diff event goes to
nobody: clients see ``U`` > previous ``u`` + 1, or ``pu`` != previous ``u``),
``drop_trades(stream, n, market)`` (the next ``n`` trade or aggTrade messages: an id gap),
``list_symbol(symbol, market)``, ``delist_symbol(symbol, market)``, ``set_route(kind, route)``
(``POST /control/route?market=usdm&kind=trade&route=market``: USD-M serves ``kind`` on
``route`` from now on, open connections included, so a test can plant a wrong route and
correct it; ``Exchange.routes`` holds the current table),
``mute(stream, market)`` /
``unmute(stream, market)`` (the stream's messages go to nobody while every connection stays up
and the other streams flow: an acknowledged subscription that delivers nothing).
``rate_limit_together(retry_after, market)`` (Python only: the next REST requests, one per
``Retry-After``, are held until all have arrived, then all answered 429).
``POST /control/daily_files?folder=PATH&date=YYYY-MM-DD`` (``write_daily_files``) writes the
exchange's own daily ``trades`` and ``aggTrades`` files of a UTC day in Binance's layout, every
trade generated that day whether sent or not (see :mod:`tools.simulator.daily`).
``GET /control/book?symbol=S&market=M&update_id=N&limit=N`` returns the simulator's own
book at a kept id (default: now), best first: the oracle for processes. ``GET /control/stats``
returns the counters: connections, messages sent and dropped per market and stream,
silent (wrong-route) subscriptions, and per market REST ``requests``, ``weight``, ``used``,
``429`` and ``418`` (a test fails on any 429 its client caused). Malformed kinds,
each one frame to every current connection (``S`` = its first stream; the wrapper is
left out for a raw connection where noted):

* ``not_json``: text ``{"stream": garbage``
* ``binary``: a binary frame ``00 01 02 03 "malformed-binary" ff fe``
* ``wrong_types``: ``{"stream":S,"data":{"lastUpdateId":<S's last id>,"bids":[[65000.01,
  "0.50000000"],["64999.99000000","0.10000000","1"]],"asks":[[..]]}}`` (wrapper optional)
* ``unknown_stream``: a well-formed depth message for ``zzzusdt@depth20@100ms``
* ``oversize``: ``{"stream":S,"data":"xxx…"}``, exactly ``OVERSIZE_BYTES`` = 1.5 MiB
  (websockets' default ``max_size`` is 1 MiB: a client must raise it to receive this)
* ``error_reply``: ``{"error":{"code":2,"msg":"Invalid request: invalid stream"},"id":null}``
* ``missing_fields``: ``{"stream":S,"data":{"bids":[..],"asks":[..]}}`` (wrapper optional)

Sent log (``sent_log``): NDJSON, one line per frame handed to a connection. Data lines:
``{"conn":N,"market":"spot"|"usdm"|"coinm","stream":..,"kind":<dataset>,"send_us":..,"id":..,
"last_update_id":..,"data":{..}}``: ``id`` is the dataset's dedup id (``lastUpdateId`` or
``u``, trade ``t``, aggTrade ``a``, bookTicker ``u``, markPrice and forceOrder ``E``); ``last_update_id`` only on depth
kinds; plus ``"replay":true`` for replayed copies. Other lines carry ``"malformed":<kind>``
or ``"event":"serverShutdown"`` instead of ``last_update_id``/``data``; a dropped message
is a line ``{"market":..,"stream":..,"kind":..,"id":..,"fault":"dropped"}`` without ``conn``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import http
import logging
import math
import random
import signal
import time
import urllib.parse
import zlib
from collections import Counter, deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, NamedTuple

import orjson
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from . import daily
from .facts import (
    COINM_PERPETUAL,
    DEPTH_DEFAULT_LIMIT,
    FORCE_ORDER_KEYS,
    FORCE_ORDER_WINDOW_MS,
    MARK_PRICE_KEYS,
    MAX_INCOMING_PER_SEC,
    MAX_STREAMS,
    DEPTH_PATH,
    FUTURES,
    OPEN_INTEREST_PATH,
    REST_WEIGHT,
    REST_WEIGHT_PER_MINUTE,
    SERVED_KINDS,
    UNROUTED_AS,
    USDM_ROUTE,
    Kind,
    Market,
    Route,
    StreamSpec,
    depth_weight,
    kind_named,
    parse_stream_name,
)

log = logging.getLogger(__name__)

E8 = 10**8
#: Size of the ``oversize`` malformed frame: 1.5 MiB, over websockets' 1 MiB default.
OVERSIZE_BYTES = 3 << 19
MALFORMED_KINDS = (
    "not_json", "binary", "wrong_types", "unknown_stream", "oversize", "error_reply", "missing_fields",
)
_METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
_PRESETS = {  # symbol -> (mid, tick, lot), all in 1e-8 units
    "btcusdt": (65_000 * E8, E8 // 100, 1_000),
    "ethusdt": (3_500 * E8, E8 // 100, 10_000),
}


def fmt_e8(value: int) -> str:
    """Binance's decimal text for a fixed-point 1e-8 value: 123 -> "0.00000123"."""
    return f"{value // E8}.{value % E8:08d}"


def _pow10_floor(x: int) -> int:
    return 10 ** (len(str(max(1, x))) - 1)


def market_params(symbol: str) -> tuple[int, int, int]:
    """(mid, tick, lot) in 1e-8 units; unknown symbols get a stable derived market."""
    if symbol in _PRESETS:
        return _PRESETS[symbol]
    h = zlib.crc32(symbol.encode())
    mid = (100 + h % 900) * 10 ** ((h >> 12) % 5) * 10**5  # 0.1 .. 9990
    tick = max(1, _pow10_floor(mid // 10**5))  # relative tick 1e-5 .. 1e-4
    lot = max(1, _pow10_floor(E8 * E8 // (10 * mid)))  # a lot is worth ~0.1 quote units
    return mid, tick, lot


#: Binance serves USD-M on its own host; here both markets share one port, so USD-M's
#: paths may carry this prefix, which its retired unrouted ``/ws`` and ``/stream`` need.
USDM_PREFIX = "fstream"
#: COIN-M's paths carry this prefix here (``ws://host:port/dstream/stream?streams=...``): its own
#: host on Binance, unrouted (whether it adopted ``/public`` and ``/market`` is not settled).
COINM_PREFIX = "dstream"


def parse_stream(name: str, symbols: Any, market: Market = Market.SPOT) -> StreamSpec | None:
    """The spec of a served stream name on a known symbol of ``market``, else None (names are lower case)."""
    spec = parse_stream_name(name, market)
    if spec is None or spec.symbol not in symbols or spec.type not in SERVED_KINDS:
        return None
    return spec


class _Side:
    """One side of a book: sorted integer tick prices and their quantities (1e-8 units)."""

    def __init__(self, bid: bool):
        self.bid = bid
        self.prices: list[int] = []  # ascending for both sides
        self.qty: dict[int, int] = {}
        #: price -> quantity before the current step's first change of it (0: absent); None outside a step
        self.journal: dict[int, int] | None = None

    def __len__(self) -> int:
        return len(self.prices)

    def price_at(self, rank: int) -> int:
        return self.prices[-1 - rank] if self.bid else self.prices[rank]

    def best(self) -> int:
        return self.price_at(0)

    def worst(self) -> int:
        return self.prices[0] if self.bid else self.prices[-1]

    def away(self, price: int, ticks: int) -> int:
        """A price ``ticks`` further from the spread."""
        return price - ticks if self.bid else price + ticks

    def inside(self, price: int, other_best: int) -> bool:
        """True if a level at ``price`` would not cross the other side."""
        return price < other_best if self.bid else price > other_best

    def set(self, price: int, qty: int) -> None:
        if self.journal is not None:
            self.journal.setdefault(price, self.qty.get(price, 0))
        if price not in self.qty:
            bisect.insort(self.prices, price)
        self.qty[price] = qty

    def remove(self, price: int) -> None:
        if self.journal is not None:
            self.journal.setdefault(price, self.qty[price])
        del self.qty[price]
        self.prices.pop(bisect.bisect_left(self.prices, price))

    def top(self, n: int) -> list[tuple[int, int]]:
        prices = self.prices[-n:][::-1] if self.bid else self.prices[:n]
        return [(p, self.qty[p]) for p in prices]


@dataclass(frozen=True, slots=True)
class Trade:
    """One fill: a taker order against one maker order at one price (prices in ticks, qty in 1e-8)."""

    id: int
    price: int
    qty: int
    buyer_maker: bool


@dataclass(frozen=True, slots=True)
class AggTrade:
    """The fills of one taker order at one price: trade ids ``first``..``last``."""

    id: int
    price: int
    qty: int
    first: int
    last: int
    buyer_maker: bool


@dataclass(frozen=True, slots=True)
class Top:
    """Best bid and ask with their quantities: what bookTicker carries."""

    bid: int
    bid_qty: int
    ask: int
    ask_qty: int


@dataclass(slots=True)
class Step:
    """What one book step changed: update ids ``first_id``..``last_id`` cover exactly these changes."""

    step: int
    first_id: int
    last_id: int
    time_ms: int
    bids: dict[int, int]  # price -> new quantity, 0 deletes the level
    asks: dict[int, int]
    undo_bids: dict[int, int]  # price -> quantity before the step, 0 if absent (every price touched)
    undo_asks: dict[int, int]
    trades: list[Trade]
    aggs: list[AggTrade]
    top: Top | None  # the new top of book, if the step changed it


@dataclass(frozen=True, slots=True)
class BookState:
    """A whole book at one update id, as Binance's decimal strings (price -> quantity)."""

    last_update_id: int
    bids: dict[str, str]
    asks: dict[str, str]


class Book:
    """One symbol's book on a tick grid. ``step()`` changes it a little; same seed, same books.

    Every step that changes the book raises the update id and is kept as a :class:`Step`
    (changes, their undo, trades, top-of-book), so every stream of the symbol is cut from
    the same history and a past book can be rebuilt (:meth:`state_at`).
    """

    MIN_LEVELS = 30
    HISTORY = 2000  # steps kept: 200 s at the default 10 steps/s
    JUMP_LEVELS = (5, 20)  # a jump eats this many whole levels of one side

    def __init__(self, symbol: str, seed: int | str = 0, levels: int = 100, id_base: int | None = None,
                 trend: float = 0.0, jump: float = 0.0):
        """``levels`` a side (thousands make a book deeper than any REST snapshot); ``trend``: the
        chance a step moves the mid one way (up if positive, down if negative) on top of the random
        walk; ``jump``: the chance a step eats several whole levels at once (in the trend's
        direction, either way without one). Both 0 keep the historical books, seed for seed."""
        self.symbol = symbol
        self.trend, self.jump = trend, jump
        self.rng = random.Random(f"{seed}/{symbol}")  # str seeds hash with sha512: stable
        mid, self.tick, self.lot = market_params(symbol)
        self.mean_lots = max(1, 5_000 * E8 * E8 // (self.lot * mid))  # ~5000 quote units a level
        self.levels = levels
        self.step = 0  # steps made (each has its update ids); Step.step counts these
        self.clock = 0  # the book clock's step reached (extra steps do not move it)
        seeded_id = 40_000_000_000 + self.rng.randrange(10**9)  # drawn either way: same seed, same books
        self.last_id = seeded_id if id_base is None else id_base
        # trade ids follow the update ids' base, so they do not repeat across starts either;
        # they grow far slower than update ids, so a later start begins above an earlier run
        self.next_trade_id = self.last_id // 16
        self.next_agg_id = self.last_id // 32
        self.bids, self.asks = _Side(True), _Side(False)
        self.bids.set(mid // self.tick, self._fresh())
        self.asks.set(mid // self.tick + 1, self._fresh())
        self._refill()
        self.diffs: deque[Step] = deque(maxlen=self.HISTORY)
        self._cache: dict[int, tuple[int, bytes]] = {}
        self._px: dict[int, str] = {}
        #: called with (time_ms, trades, aggTrades) of every step that made trades: the daily files' record
        self.on_trades: Callable[[int, list[Trade], list[AggTrade]], None] | None = None

    def _fresh(self) -> int:
        return (1 + int(self.rng.expovariate(1.0) * self.mean_lots)) * self.lot

    def top(self) -> Top:
        b, a = self.bids.best(), self.asks.best()
        return Top(b, self.bids.qty[b], a, self.asks.qty[a])

    def advance_to(self, step: int, time_ms: int | None = None) -> None:
        """Run the book to clock ``step``; the steps made now are stamped ``time_ms`` (default: now)."""
        if self.clock >= step:
            return
        now = time.time_ns() // 1_000_000 if time_ms is None else time_ms
        while self.clock < step:
            self._step(now)
            self.clock += 1

    def extra_step(self, time_ms: int | None = None) -> None:
        """One step off the clock: the book changes between two clock steps (a partial-depth
        stream sampled here has a ``lastUpdateId`` inside the diff event that covers both)."""
        self._step(time.time_ns() // 1_000_000 if time_ms is None else time_ms)

    def skip_to(self, step: int) -> None:
        """Jump the clock without changing the book (a halted symbol resumes here)."""
        self.clock = max(self.clock, step)

    def _step(self, time_ms: int) -> None:
        rng = self.rng
        before = self.top()
        self.bids.journal, self.asks.journal = {}, {}
        trades: list[Trade] = []
        aggs: list[AggTrade] = []
        if rng.random() < 0.4:
            self._take(rng.random() < 0.5, 1 + int(rng.expovariate(1.0) * self.mean_lots * 0.4), trades, aggs)
        if rng.random() < 0.06:
            self._shift(rng.random() < 0.5, trades, aggs)
        if self.trend and rng.random() < abs(self.trend):
            self._shift(self.trend > 0, trades, aggs)
        if self.jump and rng.random() < self.jump:
            up = self.trend > 0 if self.trend else rng.random() < 0.5
            self._shift(up, trades, aggs, rng.randint(*self.JUMP_LEVELS))
        # quotes change after the trades, so every trade meets the book as the step found it
        for _ in range(rng.randint(1, 3)):
            self._touch(self.bids if rng.random() < 0.5 else self.asks)
        if self.asks.best() - self.bids.best() > 3 and rng.random() < 0.3:
            side = self.bids if rng.random() < 0.5 else self.asks  # a wide spread attracts an order inside it
            side.set(side.away(side.best(), -1), self._fresh())
        self._refill()
        ub, ua = self.bids.journal, self.asks.journal
        while True:
            cb = {p: self.bids.qty.get(p, 0) for p, q in ub.items() if self.bids.qty.get(p, 0) != q}
            ca = {p: self.asks.qty.get(p, 0) for p, q in ua.items() if self.asks.qty.get(p, 0) != q}
            if cb or ca:
                break
            # every step changes the book, so every step has its own update ids (an id never
            # moves without a change, and a step never leaves the id where it was)
            self._touch(self.bids if rng.random() < 0.5 else self.asks)
        self.bids.journal = self.asks.journal = None
        self.step += 1
        after = self.top()
        first = self.last_id + 1
        self.last_id += rng.randint(1, 50)
        self.diffs.append(Step(self.step, first, self.last_id, time_ms, cb, ca,
                               ub, ua, trades, aggs,
                               after if after != before else None))
        if self.on_trades is not None and trades:
            self.on_trades(time_ms, trades, aggs)

    def _touch(self, side: _Side) -> None:
        """Change one level near the top: mostly its quantity, sometimes add or remove one."""
        rng = self.rng
        rank = min(int(rng.expovariate(1 / 6)), len(side) - 1)
        p, r = side.price_at(rank), rng.random()
        if r < 0.1 and len(side) > self.MIN_LEVELS:
            side.remove(p)
        elif r < 0.2:
            q = side.away(p, 1)  # away from the spread: can never cross
            if q not in side.qty:
                side.set(q, self._fresh())
        else:
            side.set(p, max(1, int(side.qty[p] // self.lot * rng.uniform(0.5, 1.5))) * self.lot)

    def _take(self, buy: bool, lots: int, trades: list[Trade], aggs: list[AggTrade],
              whole_levels: int = 0) -> None:
        """A taker order: ``lots`` (or ``whole_levels`` best levels) against the other side.

        Each level it reaches fills as 1-3 maker orders (trades with consecutive ids) and
        one aggTrade; the filled quantity leaves the book, so trades move the book.
        """
        side = self.asks if buy else self.bids
        want = lots * self.lot
        while len(side) > self.MIN_LEVELS and (want > 0 or whole_levels > 0):
            p = side.best()
            avail = side.qty[p]
            fill = avail if whole_levels > 0 else min(want, avail)
            makers = max(1, min(self.rng.randint(1, 3), fill // self.lot))
            cut = sorted(self.rng.sample(range(1, fill // self.lot), makers - 1)) if makers > 1 else []
            bounds = [0, *(c * self.lot for c in cut), fill]
            first = self.next_trade_id
            for lo, hi in zip(bounds, bounds[1:]):
                trades.append(Trade(self.next_trade_id, p, hi - lo, not buy))
                self.next_trade_id += 1
            aggs.append(AggTrade(self.next_agg_id, p, fill, first, self.next_trade_id - 1, not buy))
            self.next_agg_id += 1
            if fill == avail:
                side.remove(p)
            else:
                side.set(p, avail - fill)
            want -= fill
            whole_levels -= 1

    def _shift(self, up: bool, trades: list[Trade], aggs: list[AggTrade], levels: int | None = None) -> None:
        """The mid moves: a taker eats the best level(s) of one side, the other side follows."""
        eaten, follower = (self.asks, self.bids) if up else (self.bids, self.asks)
        self._take(up, 0, trades, aggs, whole_levels=levels or self.rng.randint(1, 2))
        p = follower.away(follower.best(), -1)
        if p not in follower.qty and follower.inside(p, eaten.best()):
            follower.set(p, self._fresh())

    def _refill(self) -> None:
        """Keep levels..levels+20 per side by adding or trimming at the deep end."""
        for side in (self.bids, self.asks):
            while len(side) < self.levels:
                side.set(side.away(side.worst(), self.rng.randint(1, 3)), self._fresh())
            while len(side) > self.levels + 20:
                side.remove(side.worst())

    def px(self, price: int) -> str:
        s = self._px.get(price)
        if s is None:
            if len(self._px) > 100_000:
                self._px.clear()
            s = self._px[price] = fmt_e8(price * self.tick)
        return s

    def _levels(self, items) -> list[list[str]]:
        return [[self.px(p), fmt_e8(q)] for p, q in items]

    def depth_payload(self, n: int) -> bytes:
        """Top-``n`` snapshot as Binance sends it; cached per step (all streams share it)."""
        hit = self._cache.get(n)
        if hit and hit[0] == self.last_id:
            return hit[1]
        data = orjson.dumps({
            "lastUpdateId": self.last_id,
            "bids": self._levels(self.bids.top(n)),
            "asks": self._levels(self.asks.top(n)),
        })
        self._cache[n] = (self.last_id, data)
        return data

    def top_levels(self, n: int) -> tuple[list[list[str]], list[list[str]]]:
        return self._levels(self.bids.top(n)), self._levels(self.asks.top(n))

    def steps_since(self, since_step: int | None) -> list[Step]:
        """The kept steps after ``since_step``, oldest first (only the last one if None)."""
        if since_step is None:
            return list(self.diffs)[-1:]
        picked = []
        for entry in reversed(self.diffs):
            if entry.step <= since_step:
                break
            picked.append(entry)
        return picked[::-1]

    def merged_diff(self, steps: list[Step]) -> tuple[list[list[str]], list[list[str]]]:
        """The bid and ask levels a depthUpdate covering ``steps`` carries (last value wins)."""
        bids: dict[int, int] = {}
        asks: dict[int, int] = {}
        for s in steps:
            bids.update(s.bids)
            asks.update(s.asks)
        return self._levels(sorted(bids.items(), reverse=True)), self._levels(sorted(asks.items()))

    def diff_payload(self, since_step: int | None) -> bytes:
        """A spot depthUpdate merging the steps after ``since_step`` (only the last if None)."""
        steps = self.steps_since(since_step)
        b, a = self.merged_diff(steps)
        return orjson.dumps({
            "e": "depthUpdate", "E": time.time_ns() // 1_000_000, "s": self.symbol.upper(),
            "U": steps[0].first_id, "u": steps[-1].last_id, "b": b, "a": a,
        })

    def state_at(self, update_id: int) -> BookState:
        """The whole book right after update ``update_id`` (a step boundary still kept)."""
        bids, asks = dict(self.bids.qty), dict(self.asks.qty)
        at = self.last_id
        for s in reversed(self.diffs):
            if at <= update_id:
                break
            for book, undo in ((bids, s.undo_bids), (asks, s.undo_asks)):
                for p, q in undo.items():
                    if q:
                        book[p] = q
                    else:
                        book.pop(p, None)
            at = s.first_id - 1
        if at != update_id:
            raise LookupError(
                f"{self.symbol}: update id {update_id} is not a kept step boundary (book at {self.last_id})")
        return BookState(at, {self.px(p): fmt_e8(q) for p, q in bids.items()},
                         {self.px(p): fmt_e8(q) for p, q in asks.items()})


class SymbolStatus(str, Enum):
    """A symbol's ``status`` in ``exchangeInfo``."""

    TRADING = "TRADING"
    BREAK = "BREAK"  # spot: halted or delisted
    SETTLING = "SETTLING"  # USD-M: a delisted perpetual


#: The status a delisted symbol shows on each market.
DELISTED = {Market.SPOT: SymbolStatus.BREAK, Market.USDM: SymbolStatus.SETTLING, Market.COINM: SymbolStatus.SETTLING}


class StreamKey(NamedTuple):
    """Stream names repeat across markets (``btcusdt@depth`` is on both), so streams are keyed by both."""

    market: Market
    name: str


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A WebSocket handshake path: which market, which USD-M route, wrapper or not, streams in the URL."""

    market: Market
    route: Route | None  # on USD-M: public, market, or None on the retired unrouted paths; None on spot
    combined: bool
    streams: list[str]


@dataclass(eq=False, slots=True)
class _Msg:
    """One generated stream message; the same object goes to every subscriber."""

    stream: str
    last_update_id: int  # the book's update id once the event happened
    data: bytes
    combined: bytes
    market: Market = Market.SPOT
    kind: Kind = Kind.PARTIAL_DEPTH
    id: int = 0  # the dataset's dedup id: u / lastUpdateId, trade t, aggTrade a, bookTicker u, markPrice/forceOrder E


@dataclass(eq=False)
class _Stream:
    spec: StreamSpec
    ring: deque
    subs: dict = field(default_factory=dict)  # conn number -> _Conn
    task: asyncio.Task | None = None
    last_step: int = -1  # book step of the last message: ids never repeat, across restarts too
    last_id: int = 0  # book update id of the last depth message: an unchanged book sends none
    drop: int = 0  # the next ``drop`` messages are generated but sent to nobody (a fault)
    muted: bool = False  # every message is generated but sent to nobody until unmuted (a fault)
    last_ms: int = 0  # event time of the last markPrice / forceOrder message: each one's E is later


@dataclass(eq=False)
class _Conn:
    num: int
    ws: ServerConnection
    combined: bool
    market: Market = Market.SPOT
    route: Route | None = None
    replay: int = 0
    stalled_until: float = 0.0
    dropped: bool = False  # aborted as a slow consumer; ignore it until cleanup
    streams: dict = field(default_factory=dict)  # name -> None: an ordered set
    outbox: deque = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    recv_times: deque = field(default_factory=deque)


@dataclass(frozen=True, slots=True)
class Admission:
    """A weight limiter's verdict: 200, or 429/418 with ``Retry-After`` seconds."""

    status: int
    retry_after: int
    used: int


@dataclass
class WeightLimiter:
    """Binance's ``REQUEST_WEIGHT`` budget of one market (one IP here: loopback).

    A fixed window (a minute on Binance). Over budget: 429 until the window ends. A request
    inside that Retry-After earns a ban: 418 for ``ban`` seconds, as Binance escalates.
    """

    budget: int
    window: float = 60.0
    ban: float = 120.0
    used: int = 0
    window_start: float = 0.0
    limited_until: float = 0.0
    banned_until: float = 0.0
    requests: int = 0
    weight_total: int = 0
    others: int = 0  # weight other clients on the IP spend at the start of every window (a storm)
    rejected_429: int = 0
    rejected_418: int = 0

    def admit(self, weight: int, now: float) -> Admission:
        self.requests += 1
        if now >= self.window_start + self.window:
            self.window_start = now - (now - self.window_start) % self.window
            self.used = self.others
        if now < self.banned_until:
            self.rejected_418 += 1
            return Admission(418, math.ceil(self.banned_until - now), self.used)
        if now < self.limited_until:  # ignored a 429's Retry-After
            self.banned_until = now + self.ban
            self.rejected_418 += 1
            return Admission(418, math.ceil(self.ban), self.used)
        if self.used + weight > self.budget:
            self.limited_until = self.window_start + self.window
            self.rejected_429 += 1
            return Admission(429, max(1, math.ceil(self.limited_until - now)), self.used)
        self.used += weight
        self.weight_total += weight
        return Admission(200, 0, self.used)

    def stats(self) -> dict:
        return {"budget": self.budget, "used": self.used, "requests": self.requests,
                "weight": self.weight_total, "429": self.rejected_429, "418": self.rejected_418}


@dataclass
class _Together:
    """REST requests held by :meth:`Exchange.rate_limit_together` until all have arrived."""

    retry_after: list[int]
    arrived: int = 0
    all_in: asyncio.Event = field(default_factory=asyncio.Event)


_QUOTES = ("usdt", "usdc", "fdusd", "busd", "btc", "eth", "bnb", "try", "eur")


def _split_symbol(symbol: str) -> tuple[str, str]:
    """(base, quote) assets of a symbol, upper case; an unknown quote splits off the last 4 letters."""
    quote = next((q for q in _QUOTES if symbol.endswith(q) and len(symbol) > len(q)), symbol[-4:])
    return symbol[: -len(quote)].upper(), quote.upper()


def _contract_type(symbol: str) -> str:
    """A COIN-M symbol's ``contractType``: ``PERPETUAL`` for ``_perp``, else a quarter (dated contracts)."""
    return "PERPETUAL" if symbol.lower().endswith("_perp") else "CURRENT_QUARTER"


def _error(code: int, msg: str, rid: Any) -> dict:
    return {"error": {"code": code, "msg": msg}, "id": rid}


def _valid_id(rid: Any) -> bool:
    if rid is None:
        return True
    if type(rid) is int:
        return -(2**63) <= rid < 2**63
    return isinstance(rid, str) and len(rid) <= 36 and rid.isascii() and rid.isalnum()


def _http(status: int, obj: Any, headers: tuple = ()) -> Response:
    """A JSON response (``obj`` may be ready-made JSON bytes); the connection then closes."""
    body = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    st = http.HTTPStatus(status)
    hdrs = Headers([
        ("Content-Type", "application/json;charset=UTF-8"), ("Content-Length", str(len(body))),
        ("Connection", "close"), *headers,
    ])
    return Response(st.value, st.phrase, hdrs, body)


class Exchange:
    """The simulated exchange; ``async with Exchange(...) as ex`` starts and stops it.

    ``rate``: messages per second per stream (default: the Binance cadence, 10/s for
    ``@100ms`` streams and 1/s otherwise; event streams follow the book clock).
    ``max_incoming_per_sec=None`` lifts the 1008 limit (a number sets the spot limit;
    USD-M keeps Binance's proportion, twice as many). ``control_http`` serves
    ``POST /control/<name>`` (see :meth:`_control_http`). ``weight_budget`` overrides
    Binance's REST budgets per market (small ones for tests), ``weight_window`` the
    budget's window (60 s) and ``ban_seconds`` the 418 ban after an ignored 429.
    ``book_levels``, ``trend`` and ``jump`` shape the books (:class:`Book`);
    ``partials_aligned`` samples partial depth at the diff events' ids (default: inside a diff
    event, see the module) and ``partial_rate`` gives partial streams their own messages per second.
    """

    def __init__(
        self, symbols=("btcusdt", "ethusdt"), *, host: str = "127.0.0.1", port: int = 0,
        seed: int = 0, rate: float | None = None, sent_log: str | None = None,
        ping_interval: float | None = 20.0, ping_timeout: float | None = 60.0,
        max_incoming_per_sec: float | None = MAX_INCOMING_PER_SEC[Market.SPOT], shutdown_grace: float = 2.0,
        ring_size: int = 1000, book_levels: int = 100, max_outbox: int = 10_000,
        compression: str | None = None, control_http: bool = True, id_base: int | None = None,
        weight_budget: dict[Market, int] | None = None, weight_window: float = 60.0,
        ban_seconds: float = 120.0, trend: float = 0.0, jump: float = 0.0,
        partials_aligned: bool = False, partial_rate: float | None = None,
        trade_tape_limit: int = daily.DEFAULT_LIMIT, coinm_symbols=("btcusd_perp",),
    ):
        self.symbols = [s.strip().lower() for s in symbols if s.strip()]
        #: COIN-M's symbols (a pair and a contract: its names differ from spot's and USD-M's)
        self.coinm_symbols = [s.strip().lower() for s in coinm_symbols if s.strip()]
        self.host, self.port = host, port
        self.rate = rate
        self.base_rate = float(rate) if rate else 10.0  # the book clock: steps per second
        self.sent_log_path = sent_log
        self.ping_interval, self.ping_timeout = ping_interval, ping_timeout
        self.max_incoming_per_sec = max_incoming_per_sec
        self.shutdown_grace = shutdown_grace
        self.ring_size, self.max_outbox = ring_size, max_outbox
        self.compression, self.control_enabled = compression, control_http
        # ids start at the wall clock: a restarted simulator never repeats what it sent
        self.id_base = clock_id_base() if id_base is None else id_base
        self.seed, self.book_levels = seed, book_levels
        self.trend, self.jump = trend, jump
        # Binance does not say whether a partial snapshot's lastUpdateId is ever a diff event's u:
        # by default it is not here (the partial is cut one step inside the next diff event)
        self.partials_aligned, self.partial_rate = partials_aligned, partial_rate
        #: every trade each book generated, for the exchange's daily files (:meth:`write_daily_files`)
        self.tapes: dict[tuple[Market, str], daily.Tape] = {}
        self.trade_tape_limit = trade_tape_limit
        # one book per market and symbol (spot and futures books differ, as on Binance);
        # every stream and REST answer of a market is cut from that one book
        self.books: dict[Market, dict[str, Book]] = {m: {} for m in Market}
        self.listing: dict[Market, dict[str, SymbolStatus]] = {m: {} for m in Market}
        for m in Market:
            for sym in (self.coinm_symbols if m is Market.COINM else self.symbols):
                self.books[m][sym] = self._new_book(m, sym)
                self.listing[m][sym] = SymbolStatus.TRADING
        budgets = {**REST_WEIGHT_PER_MINUTE, **{Market(m): b for m, b in (weight_budget or {}).items()}}
        self.limiters = {m: WeightLimiter(budgets[m], weight_window, ban_seconds) for m in Market}
        self.streams: dict[StreamKey, _Stream] = {}
        self.conns: dict[int, _Conn] = {}
        self.connections_accepted = 0
        self.sent_count: dict[Market, Counter[str]] = {m: Counter() for m in Market}  # per stream
        self.dropped_count: dict[Market, Counter[str]] = {m: Counter() for m in Market}  # by drop faults
        self.silent_subscriptions = 0  # USD-M streams left silent by their route: accepted, never fed
        #: which USD-M route serves each kind: Binance's (facts.USDM_ROUTE) unless :meth:`set_route` planted another
        self.routes: dict[Kind, Route] = dict(USDM_ROUTE)
        self.malformed_sent = 0
        self.skipped_ticks = 0
        self._replay_next = 0
        self._reject: tuple[int, int, int] | None = None  # (status, retry_after, count)
        #: REST requests held until all have arrived, then answered 429 together (rate_limit_together)
        self._together: dict[Market, _Together] = {}
        #: open interest per (market, symbol), a walk from a seeded start; every answer given is
        #: logged in ``open_interest_sent`` (the oracle of the polled dataset)
        self._oi_rng = random.Random(seed)
        self._oi: dict[tuple[Market, str], float] = {}
        self.open_interest_sent: list[dict] = []
        self._oi_faults: deque[str] = deque()  # the next answers' faults: "error" (503) or "negative"
        self._server = None
        self._log_file = None
        self._log_buf: list[bytes] = []
        self._tasks: set[asyncio.Task] = set()
        self._t0 = 0.0

    # ---- lifecycle -------------------------------------------------------------------

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> "Exchange":
        self._t0 = asyncio.get_running_loop().time()
        if self.sent_log_path:
            self._log_file = open(self.sent_log_path, "ab", buffering=1 << 20)
            self._spawn(self._flush_loop())
        self._server = await serve(
            self._handler, self.host, self.port, process_request=self._process_request,
            ping_interval=self.ping_interval, ping_timeout=self.ping_timeout,
            compression=self.compression, close_timeout=2,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()  # closes every connection with 1001 going away
        await self._server.wait_closed()
        self._server = None
        pending = [st.task for st in self.streams.values() if st.task] + list(self._tasks)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._flush_log()
        if self._log_file:
            self._log_file.close()
            self._log_file = None

    async def __aenter__(self) -> "Exchange":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)  # keep a reference; asyncio holds tasks weakly
        task.add_done_callback(self._tasks.discard)
        return task

    def _new_book(self, market: Market, symbol: str) -> Book:
        seed = self.seed if market is Market.SPOT else f"{self.seed}/{market.value}"
        book = Book(symbol, seed, self.book_levels, self.id_base, self.trend, self.jump)
        tape = self.tapes[(market, symbol)] = daily.Tape(market, symbol, book.tick, self.trade_tape_limit)
        book.on_trades = tape.record
        return book

    def write_daily_files(self, folder: str, day: "daily.Date | str | None" = None) -> list[str]:
        """Write the exchange's daily trades and aggTrades files of ``day`` (UTC; default today)
        under ``folder/data/...`` as Binance lays them out, each with its ``.CHECKSUM``: every
        trade the books generated that day, sent or not (drops and mutes included), so far.
        Returns the zips' paths. ValueError if the day is no longer (or not wholly) kept."""
        return [str(p) for p in daily.write_day(self.tapes.values(), folder, _day(day))]

    async def _daily_files_http(self, q: dict) -> Response:
        """``POST /control/daily_files?folder=..&date=..``: the day is copied here, then written in
        a thread, so a large day does not stall the streams while it is written."""
        try:
            if not q.get("folder"):
                raise ValueError("daily_files needs folder=<where to write>")
            day = _day(q.get("date"))
            taken = daily.take(self.tapes.values(), day)
            paths = await asyncio.to_thread(daily.write_taken, taken, q["folder"], day)
        except (ValueError, OSError) as exc:
            return _http(400, {"ok": False, "error": str(exc)})
        return _http(200, {"ok": True, "files": [str(p) for p in paths]})

    def stats(self) -> dict:
        """Counters; ``rest.<market>`` has requests, weight and the 429 and 418 answers given."""
        return {
            "connections_accepted": self.connections_accepted, "connections_open": len(self.conns),
            "sent": {m.value: dict(c) for m, c in self.sent_count.items()},
            "dropped": {m.value: dict(c) for m, c in self.dropped_count.items()},
            "silent_subscriptions": self.silent_subscriptions,
            "malformed_sent": self.malformed_sent, "skipped_ticks": self.skipped_ticks,
            "rest": {m.value: lim.stats() for m, lim in self.limiters.items()},
        }

    def book_state(self, symbol: str, update_id: int | None = None, market: Market = Market.SPOT) -> BookState:
        """The simulator's own whole book of ``symbol`` at ``update_id`` (default: now), the
        oracle a rebuilt book must equal. LookupError if that id is not a kept step boundary."""
        book = self.books[Market(market)][symbol]
        return book.state_at(book.last_id if update_id is None else update_id)

    # ---- HTTP: REST, control, handshake checks ---------------------------------------

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        url = urllib.parse.urlsplit(request.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        for prefix, market in (("/api/", Market.SPOT), ("/fapi/", Market.USDM), ("/dapi/", Market.COINM)):
            if url.path.startswith(prefix) and market in self._together:
                return await self._rate_limited_together(market)
        if url.path.startswith("/api/"):
            return self._rest(Market.SPOT, url.path, query)
        if url.path.startswith("/fapi/"):
            return self._rest(Market.USDM, url.path, query)
        if url.path.startswith("/dapi/"):
            return self._rest(Market.COINM, url.path, query)
        if url.path == "/control/daily_files" and self.control_enabled:
            return await self._daily_files_http(query)
        if url.path.startswith("/control/") and self.control_enabled:
            return self._control_http(url.path[len("/control/"):], query)
        if self._reject:
            status, retry_after, count = self._reject
            self._reject = (status, retry_after, count - 1) if count > 1 else None
            body = {"code": -1003, "msg": "Too many requests; IP banned or rate limited."}
            return _http(status, body, (("Retry-After", str(retry_after)),))
        ep = self._endpoint(url.path, query)
        if ep is None:
            return _http(404, {"code": -1000, "msg": f"Unknown path {url.path}"})
        bad = [s for s in ep.streams if parse_stream(s, self.books[ep.market], ep.market) is None]
        if bad or len(ep.streams) > MAX_STREAMS[ep.market]:
            return _http(400, {"code": -1121, "msg": f"Invalid stream: {(bad or ['too many'])[0]}"})
        return None

    @staticmethod
    def _endpoint(path: str, query: dict) -> Endpoint | None:
        """The endpoint of a handshake path, or None if the path is not a stream endpoint.

        Spot: ``/stream``, ``/ws[/<names>]``. USD-M: the same under ``/public`` or ``/market``,
        optionally behind ``/fstream``; and the retired unrouted ``/fstream/stream|ws``.
        """
        market, route = Market.SPOT, None
        head, _, rest = path.lstrip("/").partition("/")
        if head == COINM_PREFIX:
            path = "/" + rest
            if path == "/stream":
                return Endpoint(Market.COINM, None, True, [s for s in query.get("streams", "").split("/") if s])
            if path == "/ws" or path.startswith("/ws/"):
                return Endpoint(Market.COINM, None, False, [s for s in path[4:].split("/") if s])
            return None
        if head == USDM_PREFIX:
            market, path = Market.USDM, "/" + rest
            head, _, rest = rest.partition("/")
        if head in tuple(Route):
            market, route, path = Market.USDM, Route(head), "/" + rest
        if path == "/stream":
            return Endpoint(market, route, True, [s for s in query.get("streams", "").split("/") if s])
        if path == "/ws" or path.startswith("/ws/"):
            return Endpoint(market, route, False, [s for s in path[4:].split("/") if s])
        return None

    def _rest(self, market: Market, path: str, query: dict) -> Response:
        """Binance's REST market data; every answer but 404 is weighed and carries the used weight."""
        depth = path == DEPTH_PATH[market]
        if not depth and path not in REST_WEIGHT:
            return _http(404, {"code": -1000, "msg": f"Unknown path {path}"})
        limit: int | None = None
        if depth:
            try:
                limit = int(query.get("limit", DEPTH_DEFAULT_LIMIT[market]))
            except ValueError:
                limit = None
            weight = depth_weight(market, limit or 0) if limit else None
            # a refused limit still costs a request: weigh it as the default
            weight = weight or depth_weight(market, DEPTH_DEFAULT_LIMIT[market])
        else:
            weight = REST_WEIGHT[path]
        verdict = self.limiters[market].admit(weight, time.monotonic())
        used = (("X-MBX-USED-WEIGHT-1M", str(verdict.used)),)
        if verdict.status == 429:
            msg = (f"Too much request weight used; current limit is {self.limiters[market].budget} request "
                   "weight per 1 MINUTE. Please use WebSocket Streams for live updates to avoid polling the API.")
            return _http(429, {"code": -1003, "msg": msg}, (("Retry-After", str(verdict.retry_after)), *used))
        if verdict.status == 418:
            until = (time.time_ns() // 1_000_000) + verdict.retry_after * 1000
            msg = (f"Way too much request weight used; IP banned until {until}. "
                   "Please use WebSocket Streams for live updates to avoid bans.")
            return _http(418, {"code": -1003, "msg": msg}, (("Retry-After", str(verdict.retry_after)), *used))
        now_ms = time.time_ns() // 1_000_000
        if path == OPEN_INTEREST_PATH.get(market):
            return self._open_interest(market, query.get("symbol", ""), now_ms, used)
        if path.endswith("/ping"):
            return _http(200, {}, used)
        if path.endswith("/time"):
            return _http(200, {"serverTime": now_ms}, used)
        if path.endswith("/exchangeInfo"):
            return _http(200, self._exchange_info(market, now_ms), used)
        symbol = query.get("symbol", "")
        if not symbol:
            msg = "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."
            return _http(400, {"code": -1102, "msg": msg}, used)
        book = self.books[market].get(symbol.lower())
        if book is None:
            return _http(400, {"code": -1121, "msg": "Invalid symbol."}, used)
        if limit is None or depth_weight(market, limit) is None:
            if market in FUTURES:
                return _http(400, {"code": -1130, "msg": "Data sent for parameter 'limit' is not valid."}, used)
            if limit is None or limit < 1:
                return _http(400, {"code": -1100, "msg": "Illegal characters found in parameter 'limit'."}, used)
        limit = min(5000, limit)
        if self.listing[market][book.symbol] is SymbolStatus.TRADING:
            book.advance_to(self._book_step_now())
        if market is Market.SPOT:
            return _http(200, book.depth_payload(limit), used)
        bids, asks = book.top_levels(limit)
        t = book.diffs[-1].time_ms if book.diffs else now_ms
        return _http(200, {"lastUpdateId": book.last_id, "E": now_ms, "T": t, "bids": bids, "asks": asks}, used)

    def _open_interest(self, market: Market, symbol: str, now_ms: int, used: tuple) -> Response:
        """A symbol's open interest now (USD-M REST "Open Interest"), unless a fault is planted."""
        if self.listing[market].get(symbol.lower()) is None:
            return _http(400, {"code": -1121, "msg": "Invalid symbol."}, used)
        fault = self._oi_faults.popleft() if self._oi_faults else None
        if fault == "error":
            self.open_interest_sent.append({"market": market.value, "openInterest": None, "symbol": symbol.upper(),
                                            "time": now_ms, "fault": fault})
            return _http(503, {"code": -1001, "msg": "Service Unavailable."}, used)
        key = (market, symbol.lower())
        oi = self._oi.get(key, 10_000.0 + self._oi_rng.randrange(0, 5_000_000) / 1000)
        self._oi[key] = oi = round(max(0.0, oi + self._oi_rng.randrange(-5000, 5001) / 1000), 3)
        body = {"openInterest": f"{-oi if fault == 'negative' else oi:.3f}", "symbol": symbol.upper(), "time": now_ms}
        if market is Market.COINM:  # COIN-M "Open Interest": the pair and contract type too, contracts counted
            body = {"symbol": symbol.upper(), "pair": symbol.split("_")[0].upper(),
                    "openInterest": f"{-round(oi) if fault == 'negative' else round(oi)}",
                    "contractType": _contract_type(symbol), "time": now_ms}
        self.open_interest_sent.append({"market": market.value, **body, "fault": fault})
        return _http(200, body, used)

    def fail_open_interest(self, n: int = 1, how: str = "error") -> None:
        """Spoil the next ``n`` open-interest answers: ``error`` answers 503, ``negative`` a negative value."""
        if how not in ("error", "negative") or n < 1:
            raise ValueError(f"fail_open_interest takes n >= 1 and how=error|negative, not {n}, {how!r}")
        self._oi_faults.extend([how] * n)

    def rate_limit_together(self, retry_after: list[int], market: Market = Market.USDM) -> None:
        """Hold the next ``len(retry_after)`` REST requests of ``market`` until all of them have
        arrived, then answer each 429 with its ``Retry-After``: every one is in flight while the
        others are answered. A request arriving inside the longest is banned (418) as usual."""
        if not retry_after or min(retry_after) < 1:
            raise ValueError(f"rate_limit_together takes Retry-After seconds of at least 1, not {retry_after}")
        self._together[Market(market)] = _Together(list(retry_after))

    async def _rate_limited_together(self, market: Market) -> Response:
        held = self._together[market]
        i = held.arrived
        held.arrived += 1
        if held.arrived == len(held.retry_after):
            del self._together[market]
            held.all_in.set()
        await held.all_in.wait()
        lim, retry_after = self.limiters[market], held.retry_after[i]
        lim.requests += 1
        lim.rejected_429 += 1
        lim.limited_until = max(lim.limited_until, time.monotonic() + retry_after)
        return _http(429, {"code": -1003, "msg": "Too much request weight used."},
                     (("Retry-After", str(retry_after)), ("X-MBX-USED-WEIGHT-1M", str(lim.budget))))

    def weight_storm(self, weight: int, market: Market = Market.USDM) -> None:
        """Other clients on this IP spend ``weight`` of the market's REST budget at the start of
        every window from now on (this one included; 0 ends the storm): every answer's
        ``X-MBX-USED-WEIGHT-1M`` counts it, and it leaves the rest of the budget to us."""
        lim = self.limiters[Market(market)]
        if not 0 <= weight <= lim.budget:
            raise ValueError(f"a storm of {weight} does not fit a budget of {lim.budget}")
        lim.used = max(0, lim.used + weight - lim.others)
        lim.others = weight

    def _exchange_info(self, market: Market, now_ms: int) -> dict:
        """Every symbol ever listed with its status (TRADING, or delisted: the list changes)."""
        symbols = []
        for sym, status in self.listing[market].items():
            base, quote = _split_symbol(sym)
            entry = {"symbol": sym.upper(), "status": status.value, "baseAsset": base, "quoteAsset": quote}
            if market is Market.USDM:
                entry.update(pair=sym.upper(), contractType="PERPETUAL")
            elif market is Market.COINM:  # COIN-M says contractStatus, not status (COIN-M "Exchange Information")
                pair = sym.split("_")[0].upper()
                entry = {"symbol": sym.upper(), "pair": pair, "contractType": _contract_type(sym),
                         "contractStatus": status.value, "baseAsset": pair[:-3], "quoteAsset": "USD",
                         "marginAsset": pair[:-3]}
            symbols.append(entry)
        limits = [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                   "limit": self.limiters[market].budget}]
        return {"timezone": "UTC", "serverTime": now_ms, "rateLimits": limits, "exchangeFilters": [],
                "symbols": symbols}

    def _control_book(self, q: dict, market: Market) -> Response:
        book = self.books[market].get(q.get("symbol", "").lower())
        if book is None:
            return _http(400, {"ok": False, "error": f"unknown symbol {q.get('symbol')!r} on {market.value}"})
        uid = q.get("update_id")
        try:
            state = book.state_at(book.last_id if uid is None else int(uid))
        except LookupError as exc:
            return _http(404, {"ok": False, "error": str(exc)})
        limit = int(q.get("limit", 5000))
        bids = sorted(state.bids.items(), key=lambda lv: -float(lv[0]))[:limit]
        asks = sorted(state.asks.items(), key=lambda lv: float(lv[0]))[:limit]
        return _http(200, {"lastUpdateId": state.last_update_id, "bids": bids, "asks": asks})

    def _control_http(self, name: str, q: dict) -> Response:
        """``POST /control/<name>?arg=..`` (or named args) runs a fault switch; 200 {"ok":true}.

        disconnect?abrupt=0|1  stall?seconds=S  replay_on_next_connect?n=N
        inject_malformed?kind=K  reject_connections?status=429&retry_after=S&count=N
        server_shutdown?grace=S  drop_diff?stream=NAME&market=spot|usdm
        drop_trades?stream=NAME&n=N&market=..  list_symbol?symbol=S&market=..  (no market: both)
        delist_symbol?symbol=S&market=..  route?market=usdm&kind=K&route=public|market
        fail_open_interest?n=N&how=error|negative  weight_storm?weight=W&market=.. (others' weight a window)
        mute?stream=NAME&market=..  unmute?stream=NAME&market=..
        daily_files?folder=PATH&date=YYYY-MM-DD (the exchange's daily trade files; default today)
        stats (GET or POST: the counters)
        book?symbol=S&market=..&update_id=N&limit=N (the simulator's book, best first; 404 if
        that id is not kept)
        """
        arg = q.get("arg")
        try:
            markets = [Market(q["market"])] if "market" in q else list(Market)
            if name == "stats":
                return _http(200, self.stats())
            if name == "book":
                return self._control_book(q, markets[0])
            if name == "disconnect":
                abrupt = q.get("abrupt", arg or "0").lower() in ("1", "true", "yes")
                self._spawn(self.disconnect(abrupt=abrupt))
            elif name == "stall":
                self.stall(float(q.get("seconds", arg or 5)))
            elif name == "replay_on_next_connect":
                self.replay_on_next_connect(int(q.get("n", arg or 10)))
            elif name == "inject_malformed":
                self.inject_malformed(q.get("kind", arg or ""))
            elif name == "reject_connections":
                self.reject_connections(
                    int(q.get("status", arg or 429)), int(q.get("retry_after", 1)), int(q.get("count", 1)))
            elif name == "server_shutdown":
                grace = q.get("grace", arg)
                self._spawn(self.server_shutdown(None if grace is None else float(grace)))
            elif name == "drop_diff":
                self.drop_diff(q.get("stream", arg or ""), markets[0])
            elif name == "drop_trades":
                self.drop_trades(q.get("stream", arg or ""), int(q.get("n", 1)), markets[0])
            elif name == "fail_open_interest":
                self.fail_open_interest(int(q.get("n", arg or 1)), q.get("how", "error"))
            elif name == "weight_storm":
                self.weight_storm(int(q.get("weight", arg or 0)), markets[0])
            elif name == "route":
                self.set_route(q.get("kind", arg or ""), q.get("route", ""), Market(q.get("market", "usdm")))
            elif name in ("mute", "unmute"):
                (self.mute if name == "mute" else self.unmute)(q.get("stream", arg or ""), markets[0])
            elif name in ("list_symbol", "delist_symbol"):
                if "market" not in q:  # every market whose names it fits: spot and USD-M, or COIN-M
                    sym = q.get("symbol", arg or "").lower()
                    markets = [m for m in Market if parse_stream_name(f"{sym}@trade", m)] or markets
                for m in markets:
                    (self.list_symbol if name == "list_symbol" else self.delist_symbol)(q.get("symbol", arg or ""), m)
            else:
                return _http(404, {"ok": False, "error": f"unknown control {name!r}"})
        except (ValueError, KeyError) as exc:
            return _http(400, {"ok": False, "error": str(exc)})
        return _http(200, {"ok": True})

    # ---- connections -----------------------------------------------------------------

    async def _handler(self, ws: ServerConnection) -> None:
        url = urllib.parse.urlsplit(ws.request.path)
        ep = self._endpoint(url.path, dict(urllib.parse.parse_qsl(url.query)))
        assert ep is not None  # _process_request refused every other path
        self.connections_accepted += 1
        conn = _Conn(self.connections_accepted, ws, ep.combined, ep.market, ep.route)
        conn.replay, self._replay_next = self._replay_next, 0
        self.conns[conn.num] = conn
        sender = asyncio.create_task(self._send_loop(conn))
        try:
            self._subscribe(conn, [parse_stream(s, self.books[conn.market], conn.market) for s in ep.streams])
            await self._recv_loop(conn)
        except ConnectionClosed:
            pass
        finally:
            del self.conns[conn.num]
            for name in conn.streams:
                self._leave(conn, name)
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)

    async def _recv_loop(self, conn: _Conn) -> None:
        async for raw in conn.ws:
            if self._over_limit(conn):
                await conn.ws.close(1008, "Too many requests")
                return
            self._control(conn, raw)

    def _over_limit(self, conn: _Conn) -> bool:
        """Sliding one-second window over client frames (pings are not visible here)."""
        limit = self.max_incoming_per_sec
        if limit is None:
            return False
        now, times = time.monotonic(), conn.recv_times
        times.append(now)
        while now - times[0] >= 1.0:
            times.popleft()
        if conn.market is not Market.SPOT:
            limit *= MAX_INCOMING_PER_SEC[conn.market] / MAX_INCOMING_PER_SEC[Market.SPOT]
        return len(times) > limit

    def _enqueue(self, conn: _Conn, item: tuple) -> None:
        if conn.dropped:
            return
        if len(conn.outbox) >= self.max_outbox:
            log.warning("conn %d: %d messages unsent, dropping the slow consumer", conn.num, len(conn.outbox))
            conn.dropped = True
            conn.ws.transport.abort()
            conn.outbox.clear()
            return
        conn.outbox.append(item)
        conn.wake.set()

    async def _send_loop(self, conn: _Conn) -> None:
        """The only writer of a connection, so data, replies and faults keep their order."""
        ws = conn.ws
        try:
            while True:
                while conn.outbox:
                    item = conn.outbox.popleft()
                    if ws.state is not State.OPEN:
                        return  # closing: what was not handed over is not logged as sent
                    send_us = time.time_ns() // 1000
                    if item[0] == "d":
                        _, msg, replay = item
                        if conn.stalled_until > time.monotonic():
                            continue  # queued before the stall began: dropped all the same
                        self._log_data(conn.num, msg, send_us, replay)
                        self.sent_count[msg.market][msg.stream] += 1
                        await ws.send(msg.combined if conn.combined else msg.data, text=True)
                    else:
                        _, frame, text, note = item
                        if note:
                            self._log_line({"conn": conn.num, "send_us": send_us, **note})
                        await ws.send(frame, text=text)
                conn.wake.clear()
                await conn.wake.wait()
        except ConnectionClosed:
            return

    # ---- control messages ------------------------------------------------------------

    def _reply(self, conn: _Conn, obj: dict) -> None:
        self._enqueue(conn, ("o", orjson.dumps(obj), True, None))

    def _control(self, conn: _Conn, raw: str | bytes) -> None:
        try:
            req = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return self._reply(conn, _error(3, f"Invalid JSON: {exc}", None))
        if not isinstance(req, dict):
            return self._reply(conn, _error(2, "Invalid request: expected a JSON object", None))
        rid = req.get("id")
        if not _valid_id(rid):
            msg = "Invalid request: request ID must be an unsigned integer"
            return self._reply(conn, _error(2, msg, None))
        method = req.get("method")
        if method is None:
            return self._reply(conn, _error(2, "Invalid request: missing field `method`", rid))
        if method not in _METHODS:
            expected = ", ".join(f"`{m}`" for m in _METHODS)
            msg = f"Invalid request: unknown variant `{method}`, expected one of {expected}"
            return self._reply(conn, _error(2, msg, rid))
        params = req.get("params", [])
        if not isinstance(params, list):
            return self._reply(conn, _error(2, "Invalid request: params must be an array", rid))
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            return self._control_subscribe(conn, method, params, rid)
        if method == "LIST_SUBSCRIPTIONS":
            return self._reply(conn, {"result": list(conn.streams), "id": rid})
        return self._control_property(conn, method, params, rid)

    def _control_subscribe(self, conn: _Conn, method: str, params: list, rid: Any) -> None:
        specs = [parse_stream(p, self.books[conn.market], conn.market) for p in params]
        if None in specs:  # the whole request is refused, nothing changes
            return self._reply(conn, _error(2, "Invalid request: invalid stream", rid))
        if method == "UNSUBSCRIBE":
            for spec in specs:
                if spec.name in conn.streams:
                    del conn.streams[spec.name]
                    self._leave(conn, spec.name)
            return self._reply(conn, {"result": None, "id": rid})
        if len(set(conn.streams) | {s.name for s in specs}) > MAX_STREAMS[conn.market]:
            return self._reply(conn, _error(2, "Invalid request: too many streams", rid))
        self._reply(conn, {"result": None, "id": rid})  # the reply precedes any data
        self._subscribe(conn, specs)

    def _control_property(self, conn: _Conn, method: str, params: list, rid: Any) -> None:
        want = 2 if method == "SET_PROPERTY" else 1
        if len(params) != want or not isinstance(params[0], str):
            return self._reply(conn, _error(2, "Invalid request: property name must be a string", rid))
        if params[0] != "combined":
            return self._reply(conn, _error(0, "Unknown property", rid))
        if method == "GET_PROPERTY":
            return self._reply(conn, {"result": conn.combined, "id": rid})
        if not isinstance(params[1], bool):
            return self._reply(conn, _error(1, "Invalid value type: expected Boolean", rid))
        conn.combined = params[1]
        self._reply(conn, {"result": None, "id": rid})

    def _stream(self, spec: StreamSpec) -> _Stream:
        key = StreamKey(spec.market, spec.name)
        st = self.streams.get(key)
        if st is None:
            st = self.streams[key] = _Stream(spec, deque(maxlen=self.ring_size))
        return st

    def _leave(self, conn: _Conn, name: str) -> None:
        st = self.streams.get(StreamKey(conn.market, name))
        if st is not None:
            st.subs.pop(conn.num, None)

    def _subscribe(self, conn: _Conn, specs: list[StreamSpec]) -> None:
        """Join the global streams; a pending replay first re-sends their recent history.

        On USD-M a stream subscribed on the other route is accepted and listed but never
        fed, as Binance does since the 2026-04-23 split.
        """
        for spec in specs:
            if spec.name in conn.streams:
                continue
            conn.streams[spec.name] = None
            if not self._serves(conn, spec):
                self.silent_subscriptions += 1
                continue
            st = self._stream(spec)
            if conn.replay:
                for msg in list(st.ring)[-conn.replay:]:
                    self._enqueue(conn, ("d", msg, True))
            self._join(conn, st)

    def _join(self, conn: _Conn, st: _Stream) -> None:
        st.subs[conn.num] = conn
        if st.task is None:
            st.task = asyncio.create_task(self._run_stream(st))

    def _serves(self, conn: _Conn, spec: StreamSpec) -> bool:
        """Whether ``conn`` receives ``spec``: always on spot; on USD-M only on the route that
        serves its kind (the unrouted paths count as ``UNROUTED_AS``)."""
        if conn.market is not Market.USDM:  # spot, and COIN-M unrouted
            return True
        return self.routes[spec.type] is (conn.route or UNROUTED_AS)

    # ---- stream tickers --------------------------------------------------------------

    def _book_step_now(self) -> int:
        return int((asyncio.get_running_loop().time() - self._t0) * self.base_rate)

    async def _run_stream(self, st: _Stream) -> None:
        """Emit tick j at t0 + j/rate (a fixed grid: no drift); late ticks go out as a burst.

        More than one second behind, the oldest ticks are skipped (counted), as a
        timer-driven feed would. Stops when the last subscriber leaves.
        """
        partial = st.spec.type is Kind.PARTIAL_DEPTH
        rate = ((self.partial_rate if partial else None) or self.rate
                or (1e6 / st.spec.cadence_us if st.spec.cadence_us else self.base_rate))
        if st.spec.type is Kind.MARK_PRICE:
            rate = 1e6 / st.spec.cadence_us  # Binance's own clock (3 s or 1 s), whatever the test's rate
        elif st.spec.type is Kind.FORCE_ORDER:
            rate = 1000 / FORCE_ORDER_WINDOW_MS  # at most one snapshot a window: the latest liquidation in it
        # misaligned partials tick half a period late and step the book once more: their
        # lastUpdateId falls inside the next diff event, never at its u
        phase = 0.5 if partial and not self.partials_aligned else 0.0
        loop = asyncio.get_running_loop()
        nxt = math.floor((loop.time() - self._t0) * rate - phase) + 1
        since: int | None = None  # last book step sent (diff streams merge from there)
        cap = max(1, int(rate))  # at most one second of catch-up per burst
        try:
            while st.subs:
                due = math.floor((loop.time() - self._t0) * rate - phase)
                if due - nxt + 1 > cap:
                    self.skipped_ticks += due - nxt + 1 - cap
                    nxt = due + 1 - cap
                for j in range(nxt, due + 1):
                    since = self._emit(st, int((j + phase) * self.base_rate / rate + 1e-9), since)
                nxt = max(nxt, due + 1)
                await asyncio.sleep(max(0.0, self._t0 + (nxt + phase) / rate - loop.time()))
        finally:
            st.task = None

    def _emit(self, st: _Stream, step: int, since: int | None) -> int | None:
        """Generate what ``st`` carries up to book ``step``; returns the last book step covered."""
        spec = st.spec
        if self.listing[spec.market][spec.symbol] is not SymbolStatus.TRADING:
            return since  # a halted symbol's book stands still and its streams send nothing
        book = self.books[spec.market][spec.symbol]
        book.advance_to(step)
        if spec.type is Kind.PARTIAL_DEPTH and not self.partials_aligned:
            book.extra_step()
        if book.step <= st.last_step:
            self.skipped_ticks += 1  # a REST snapshot moved the book ahead: never repeat an id
            return since
        st.last_step = book.step
        for msg in self._messages(st, book, since):
            self._publish(st, msg)
        return book.step

    def _messages(self, st: _Stream, book: Book, since: int | None) -> list[_Msg]:
        """The messages of ``st`` for the book steps after ``since``, in Binance's payloads."""
        spec, usdm = st.spec, st.spec.market in FUTURES  # COIN-M's payloads are USD-M's plus the pair
        coinm = spec.market is Market.COINM
        now_ms = time.time_ns() // 1_000_000
        sym = book.symbol.upper()
        steps = book.steps_since(since)
        out: list[_Msg] = []

        def msg(data: dict | bytes, last_id: int, key: int) -> None:
            raw = data if isinstance(data, bytes) else orjson.dumps(data)
            name = spec.name.encode()
            out.append(_Msg(spec.name, last_id, raw, b'{"stream":"' + name + b'","data":' + raw + b"}",
                            spec.market, spec.type, key))

        if spec.type in (Kind.PARTIAL_DEPTH, Kind.DIFF_DEPTH):
            if book.last_id == st.last_id or not steps:
                return out  # the book did not change since the last message
            prev_u = st.last_id or steps[0].first_id - 1
            first = prev_u + 1 if spec.type is Kind.PARTIAL_DEPTH else steps[0].first_id
            st.last_id = book.last_id
            if spec.type is Kind.PARTIAL_DEPTH and not usdm:
                msg(book.depth_payload(spec.levels), book.last_id, book.last_id)
                return out
            if spec.type is Kind.PARTIAL_DEPTH:
                b, a = book.top_levels(spec.levels)
            else:
                b, a = book.merged_diff(steps)
            head: dict = {"e": "depthUpdate", "E": now_ms}
            if usdm:
                head["T"] = steps[-1].time_ms
            head.update(s=sym, **({"ps": sym.split("_")[0]} if coinm else {}), U=first, u=book.last_id)
            if usdm:
                head["pu"] = first - 1 if spec.type is Kind.DIFF_DEPTH else prev_u
            msg({**head, "b": b, "a": a}, book.last_id, book.last_id)
            return out
        if spec.type in (Kind.MARK_PRICE, Kind.FORCE_ORDER):
            # E never repeats in a stream (Binance's are a cadence apart; here a late burst could
            # land two ticks in one ms): the datasets' dedup key is the event time
            event_ms = max(now_ms, st.last_ms + 1)
            body = self._derivative(spec, book, steps, event_ms)
            if body is not None:
                st.last_ms = event_ms
                msg(body, book.last_id, event_ms)
            return out
        # spot trade and aggTrade end with "M" (ignore); USD-M's have no "M"
        tail = {} if usdm else {"M": True}
        for s in steps:
            if spec.type is Kind.TRADE:
                for t in s.trades:
                    msg({"e": "trade", "E": now_ms, "s": sym, "t": t.id, "p": book.px(t.price),
                         "q": fmt_e8(t.qty), "T": s.time_ms, "m": t.buyer_maker, **tail}, s.last_id, t.id)
            elif spec.type is Kind.AGG_TRADE:
                for g in s.aggs:
                    msg({"e": "aggTrade", "E": now_ms, "s": sym, "a": g.id, "p": book.px(g.price),
                         "q": fmt_e8(g.qty), "f": g.first, "l": g.last, "T": s.time_ms, "m": g.buyer_maker,
                         **tail}, s.last_id, g.id)
            elif s.top is not None:  # bookTicker: every change of the best levels
                body = {"u": s.last_id, "s": sym, "b": book.px(s.top.bid), "B": fmt_e8(s.top.bid_qty),
                        "a": book.px(s.top.ask), "A": fmt_e8(s.top.ask_qty)}
                if coinm:  # COIN-M streams' order: e,u,s,b,B,a,A,T,E,ps
                    body = {"e": "bookTicker", **body, "T": s.time_ms, "E": now_ms, "ps": sym.split("_")[0]}
                elif usdm:
                    body = {"e": "bookTicker", "u": s.last_id, "E": now_ms, "T": s.time_ms, **body}
                msg(body, s.last_id, s.last_id)
        return out

    @staticmethod
    def _derivative(spec: StreamSpec, book: Book, steps: list[Step], event_ms: int) -> dict | None:
        """A markPriceUpdate (every tick) or a forceOrder (the latest fill of the steps since the
        last tick, as a liquidation order; None when there was none), in the market's key order
        (``facts.MARK_PRICE_KEYS``, ``facts.FORCE_ORDER_KEYS``: COIN-M's order adds the pair)."""
        sym = book.symbol.upper()
        pair = sym.split("_")[0]  # COIN-M's ``ps``: BTCUSD of BTCUSD_PERP
        if spec.type is Kind.MARK_PRICE:
            top = book.top()
            mark = (top.bid + top.ask) // 2
            index = mark - book.step % 3  # the index trails the mark by a few ticks
            rate = (book.step % 21 - 10) * 1000  # funding rate in 1e-8, -0.0001 .. 0.0001: signed
            funding_ms = 28_800_000  # funding every 8 hours, from midnight UTC
            # a COIN-M delivery contract has no funding: "r": "" and "T": 0
            delivery = spec.market is Market.COINM and book.symbol.split("_")[-1] != COINM_PERPETUAL
            body = {"e": "markPriceUpdate", "E": event_ms, "s": sym, "p": book.px(mark), "i": book.px(index),
                    "P": book.px(index), "r": "" if delivery else ("-" if rate < 0 else "") + fmt_e8(abs(rate)),
                    "T": 0 if delivery else (event_ms // funding_ms + 1) * funding_ms}
            return {k: body[k] for k in MARK_PRICE_KEYS[spec.market]}
        fills = [(s, t) for s in steps for t in s.trades]
        if not fills:
            return None
        s, t = fills[-1]
        # the liquidated position is closed by a taker order: sold when the buyer was the maker
        qty = fmt_e8(t.qty)
        order = {"s": sym, "ps": pair, "S": "SELL" if t.buyer_maker else "BUY", "o": "LIMIT", "f": "IOC", "q": qty,
                 "p": book.px(t.price - 5 if t.buyer_maker else t.price + 5), "ap": book.px(t.price),
                 "X": "FILLED", "l": qty, "z": qty, "T": s.time_ms}
        return {"e": "forceOrder", "E": event_ms, "o": {k: order[k] for k in FORCE_ORDER_KEYS[spec.market]}}

    def _publish(self, st: _Stream, msg: _Msg) -> None:
        if st.drop > 0:  # a drop fault: generated (ids advance) but sent to nobody
            st.drop -= 1
            self.dropped_count[msg.market][msg.stream] += 1
            self._log_line({"market": msg.market.value, "stream": msg.stream, "kind": msg.kind.dataset,
                            "id": msg.id, "fault": "dropped"})
            return
        if st.muted:  # silence: not sent, not kept for replays, not in the sent log
            return
        st.ring.append(msg)
        now = time.monotonic()
        for conn in st.subs.values():
            if conn.stalled_until <= now:
                self._enqueue(conn, ("d", msg, False))

    # ---- sent log --------------------------------------------------------------------

    def _log_data(self, conn_num: int, msg: _Msg, send_us: int, replay: bool) -> None:
        if self._log_file is None:
            return
        # depth lines keep "last_update_id" (their dedup id); "id" is every kind's dedup id
        depth = msg.kind in (Kind.PARTIAL_DEPTH, Kind.DIFF_DEPTH)
        head = (f'{{"conn":{conn_num},"market":"{msg.market.value}","stream":"{msg.stream}",'
                f'"kind":"{msg.kind.dataset}","send_us":{send_us},"id":{msg.id},'
                + (f'"last_update_id":{msg.last_update_id},' if depth else "")
                + ('"replay":true,' if replay else ""))
        self._log_buf.append(head.encode() + b'"data":' + msg.data + b"}\n")

    def _log_line(self, obj: dict) -> None:
        if self._log_file is not None:
            self._log_buf.append(orjson.dumps(obj) + b"\n")

    def _flush_log(self) -> None:
        if self._log_file is not None and self._log_buf:
            self._log_file.write(b"".join(self._log_buf))
            self._log_file.flush()
            self._log_buf.clear()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            self._flush_log()

    # ---- fault switches --------------------------------------------------------------

    async def disconnect(self, abrupt: bool = False, code: int = 1000, reason: str = "") -> None:
        """Close every current connection: a close frame, or (abrupt) a TCP abort (client: 1006)."""
        conns = list(self.conns.values())
        if abrupt:
            for c in conns:
                c.ws.transport.abort()
            return
        await asyncio.gather(*(c.ws.close(code, reason) for c in conns), return_exceptions=True)

    def stall(self, seconds: float) -> None:
        """Send no data to the current connections for ``seconds``; what is generated
        meanwhile is dropped for them (not queued), as Binance would not queue forever."""
        until = time.monotonic() + seconds
        for c in self.conns.values():
            c.stalled_until = until

    def replay_on_next_connect(self, n: int) -> None:
        """The next connection first gets the last ``n`` messages of each stream it subscribes to."""
        self._replay_next = n

    def reject_connections(self, status: int = 429, retry_after: int = 1, count: int = 1) -> None:
        """Refuse the next ``count`` WebSocket handshakes with ``status`` and ``Retry-After``."""
        http.HTTPStatus(status)  # ValueError for a status code that does not exist
        self._reject = (status, retry_after, count) if count > 0 else None

    def inject_malformed(self, kind: str) -> None:
        """Send one bad frame of ``kind`` (see MALFORMED_KINDS) to every current connection."""
        if kind not in MALFORMED_KINDS:
            raise ValueError(f"unknown malformed kind {kind!r}; expected one of {MALFORMED_KINDS}")
        for conn in list(self.conns.values()):
            frame, text, stream = self._malformed_frame(conn, kind)
            self.malformed_sent += 1
            self._enqueue(conn, ("o", frame, text, {"stream": stream, "malformed": kind}))

    def _malformed_frame(self, conn: _Conn, kind: str) -> tuple[bytes, bool, str | None]:
        stream = next(iter(conn.streams), f"{self.symbols[0]}@depth20@100ms")
        st = self.streams.get(StreamKey(conn.market, stream))
        ring = st.ring if st is not None else ()
        last_id = ring[-1].last_update_id if ring else 0

        def wrap(name: str, data: bytes) -> bytes:
            return b'{"stream":"' + name.encode() + b'","data":' + data + b"}"

        def wrap_own(data: bytes) -> bytes:  # how this connection receives data
            return wrap(stream, data) if conn.combined else data

        if kind == "not_json":
            return b'{"stream": garbage', True, stream
        if kind == "binary":
            return b"\x00\x01\x02\x03malformed-binary\xff\xfe", False, stream
        if kind == "error_reply":
            return b'{"error":{"code":2,"msg":"Invalid request: invalid stream"},"id":null}', True, None
        if kind == "wrong_types":  # a number for a price, a level with three entries
            bids = [[65000.01, "0.50000000"], ["64999.99000000", "0.10000000", "1"]]
            asks = [["65000.02000000", "0.30000000"]]
            data = orjson.dumps({"lastUpdateId": last_id, "bids": bids, "asks": asks})
            return wrap_own(data), True, stream
        if kind == "missing_fields":
            asks = [["65000.02000000", "0.30000000"]]
            data = orjson.dumps({"bids": [["65000.01000000", "0.50000000"]], "asks": asks})
            return wrap_own(data), True, stream
        if kind == "unknown_stream":
            data = orjson.dumps({
                "lastUpdateId": 40_000_000_001, "bids": [["1.00000000", "1.00000000"]],
                "asks": [["1.01000000", "1.00000000"]],
            })
            return wrap("zzzusdt@depth20@100ms", data), True, "zzzusdt@depth20@100ms"
        # oversize: a well-formed wrapper whose data is a string padded to 1.5 MiB in total
        head = b'{"stream":"' + stream.encode() + b'","data":"'
        return head + b"x" * (OVERSIZE_BYTES - len(head) - 2) + b'"}', True, stream

    async def server_shutdown(self, grace: float | None = None) -> None:
        """Announce ``serverShutdown`` to the current connections, keep serving them for
        ``grace`` s (the make-before-break window), then close them with 1001."""
        grace = self.shutdown_grace if grace is None else grace
        conns = list(self.conns.values())
        data = orjson.dumps({"e": "serverShutdown", "E": time.time_ns() // 1_000_000})
        note = {"stream": "!serverShutdown", "event": "serverShutdown"}
        for c in conns:
            frame = b'{"stream":"!serverShutdown","data":' + data + b"}" if c.combined else data
            self._enqueue(c, ("o", frame, True, note))
        await asyncio.sleep(grace)
        await asyncio.gather(*(c.ws.close(1001, "server shutdown") for c in conns), return_exceptions=True)

    def _fault_stream(self, name: str, market: Market, kinds: tuple[Kind, ...]) -> _Stream:
        market = Market(market)  # the caller's own Market enum is welcome
        spec = parse_stream(name, self.books[market], market)
        if spec is None or spec.type not in kinds:
            raise ValueError(f"{name!r} is not a {'/'.join(k.value for k in kinds)} stream on {market.value}")
        return self._stream(spec)  # created ahead of its first subscriber if need be

    def drop_diff(self, stream: str, market: Market = Market.SPOT) -> None:
        """Send the next diff event of ``stream`` to nobody: the next one a client sees has
        ``U`` > previous ``u`` + 1 (and on USD-M ``pu`` != previous ``u``)."""
        self._fault_stream(stream, market, (Kind.DIFF_DEPTH,)).drop += 1

    def drop_trades(self, stream: str, n: int, market: Market = Market.SPOT) -> None:
        """Send the next ``n`` messages of a trade or aggTrade stream to nobody: an id gap."""
        if n < 1:
            raise ValueError(f"n must be positive, not {n}")
        self._fault_stream(stream, market, (Kind.TRADE, Kind.AGG_TRADE)).drop += n

    def set_route(self, kind: Kind | str, route: Route | str, market: Market = Market.USDM) -> None:
        """Serve ``kind`` (e.g. "trade", "aggTrade", "depth20@100ms", "agg_trade") on USD-M
        ``route`` from now on, as if Binance moved it: a test plants a wrong route, then
        corrects it. Open connections follow at once: streams of that kind on the now wrong
        route stop receiving (still listed), those on the now right one start."""
        if Market(market) is not Market.USDM:
            raise ValueError(f"only USD-M routes its streams, not {Market(market).value}")
        k = kind if isinstance(kind, Kind) else kind_named(kind)
        if k not in SERVED_KINDS:
            raise ValueError(f"{kind!r} is not a stream kind served here")
        self.routes[k] = Route(route)
        for conn in self.conns.values():
            if conn.market is not Market.USDM:
                continue
            for name in conn.streams:
                spec = parse_stream_name(name, Market.USDM)
                if spec is None or spec.type is not k:
                    continue
                st = self.streams.get(StreamKey(Market.USDM, name))
                if self._serves(conn, spec):
                    self._join(conn, st or self._stream(spec))
                elif st is not None and st.subs.pop(conn.num, None) is not None:
                    self.silent_subscriptions += 1

    def mute(self, stream: str, market: Market = Market.SPOT) -> None:
        """Send ``stream`` to nobody until :meth:`unmute`; connections stay up, other streams flow."""
        self._fault_stream(stream, market, tuple(Kind)).muted = True

    def unmute(self, stream: str, market: Market = Market.SPOT) -> None:
        self._fault_stream(stream, market, tuple(Kind)).muted = False

    def list_symbol(self, symbol: str, market: Market = Market.SPOT) -> None:
        """List ``symbol`` (new: a fresh book; delisted: trading again, its book resumes)."""
        sym, market = symbol.strip().lower(), Market(market)
        if parse_stream_name(f"{sym}@trade", market) is None:
            raise ValueError(f"{symbol!r} is not a symbol")
        step = self._book_step_now()
        book = self.books[market].get(sym)
        if book is None:
            book = self.books[market][sym] = self._new_book(market, sym)
        book.skip_to(step)  # no history to make up for while it was not trading
        self.listing[market][sym] = SymbolStatus.TRADING

    def delist_symbol(self, symbol: str, market: Market = Market.SPOT) -> None:
        """Halt ``symbol``: exchangeInfo shows BREAK (spot) or SETTLING (USD-M), its streams go
        quiet; subscriptions stay valid (the symbol is still known)."""
        sym, market = symbol.strip().lower(), Market(market)
        if sym not in self.listing[market]:
            raise ValueError(f"{symbol!r} is not listed on {market.value}")
        self.listing[market][sym] = DELISTED[market]


def _day(day: "daily.Date | str | None") -> "daily.Date":
    """A UTC day from a date, its ISO text, or None (today)."""
    return daily.today() if day is None else day if isinstance(day, daily.Date) else daily.Date.fromisoformat(day)


def clock_id_base() -> int:
    """The first update id of a start: the wall clock in µs.

    Ids grow by at most 50 a step, far slower than a µs clock at any rate we serve
    (under 20,000 steps/s), so a restarted simulator always continues above the ids it
    sent before: a collector recording across restarts never sees its ids again.
    """
    return time.time_ns() // 1000


# ---- CLI ---------------------------------------------------------------------------------

def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.simulator",
                                description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--symbols", default="btcusdt,ethusdt", help="comma-separated, lower case")
    p.add_argument("--coinm-symbols", default="btcusd_perp", help="COIN-M's, comma-separated, lower case (btcusd_perp)")
    p.add_argument("--seed", type=int, default=0, help="the books' random seed (update ids start at the clock)")
    p.add_argument("--sent-log", default=None, help="append NDJSON of every frame sent")
    p.add_argument("--ping-interval", type=float, default=20.0)
    p.add_argument("--rate", type=float, default=None,
                   help="messages/s per stream (default: Binance cadence, 10/s @100ms, else 1/s)")
    p.add_argument("--max-incoming-per-sec", type=float, default=5.0, help="0 disables the 1008 limit")
    p.add_argument("--shutdown-grace", type=float, default=2.0)
    p.add_argument("--spot-weight-budget", type=int, default=REST_WEIGHT_PER_MINUTE[Market.SPOT],
                   help="REST weight per window on /api (Binance: 6000/min)")
    p.add_argument("--usdm-weight-budget", type=int, default=REST_WEIGHT_PER_MINUTE[Market.USDM],
                   help="REST weight per window on /fapi (Binance: 2400/min)")
    p.add_argument("--weight-window", type=float, default=60.0, help="seconds per weight window")
    p.add_argument("--ban-seconds", type=float, default=120.0, help="418 ban after a request inside a 429's Retry-After")
    p.add_argument("--book-levels", type=int, default=100, help="levels a side (thousands: deeper than any snapshot)")
    p.add_argument("--trend", type=float, default=0.0, help="chance a step moves the mid one way (sign: direction)")
    p.add_argument("--jump", type=float, default=0.0, help="chance a step eats 5-20 whole levels")
    p.add_argument("--partials-aligned", action="store_true",
                   help="partial depth sampled at the diff events' ids (default: inside a diff event)")
    p.add_argument("--trade-tape-limit", type=int, default=daily.DEFAULT_LIMIT,
                   help="trades kept per book and UTC day for POST /control/daily_files")
    return p.parse_args(argv)


async def _amain(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ex = Exchange(
        args.symbols.split(","), coinm_symbols=args.coinm_symbols.split(","),
        host=args.host, port=args.port, seed=args.seed, rate=args.rate,
        sent_log=args.sent_log, ping_interval=args.ping_interval,
        max_incoming_per_sec=args.max_incoming_per_sec or None, shutdown_grace=args.shutdown_grace,
        weight_budget={Market.SPOT: args.spot_weight_budget, Market.USDM: args.usdm_weight_budget},
        weight_window=args.weight_window, ban_seconds=args.ban_seconds, book_levels=args.book_levels,
        trend=args.trend, jump=args.jump, partials_aligned=args.partials_aligned,
        trade_tape_limit=args.trade_tape_limit,
    )
    async with ex:
        print(f"simulator listening on {ex.ws_url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_amain(_parse_args(argv)))


if __name__ == "__main__":
    main()
