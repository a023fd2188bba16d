"""A simulated Binance spot market-data exchange on loopback.

Serves the WebSocket market streams and the REST depth snapshot on one port, with
books that evolve slowly and reproducibly, plus fault switches for tests, chaos runs,
benchmarks and offline demos::

    python -m tools.simulator --port 9443      # prints one line, then serves

    async with Exchange(symbols=["btcusdt"], seed=1, rate=50) as ex:
        async with connect(ex.ws_url + "/stream?streams=btcusdt@depth20@100ms") as ws: ...

Binance's protocol: ``/stream?streams=a/b`` (combined wrapper
``{"stream":..,"data":..}``), ``/ws/<name>`` (bare payloads), bare ``/ws`` or ``/stream`` plus
SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS / SET_PROPERTY / GET_PROPERTY with Binance's
nested error replies (codes 0-3). Streams: ``<sym>@depth5|10|20[@100ms]`` (partial depth)
and ``<sym>@depth[@100ms]`` (diff depth). More than ``max_incoming_per_sec`` client
frames in one second closes the connection with 1008 "Too many requests".
REST: ``GET /api/v3/depth``, ``/api/v3/time``, ``/api/v3/ping``.

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

Fault switches (``Exchange`` methods; the same over HTTP as ``POST /control/<name>?..``):
``disconnect(abrupt)``, ``stall(seconds)``, ``replay_on_next_connect(n)``,
``inject_malformed(kind)``, ``reject_connections(status, retry_after, count)``,
``server_shutdown(grace)``; ``GET /control/stats`` returns the counters. Malformed kinds,
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
``{"conn":N,"stream":..,"send_us":..,"last_update_id":..,"data":{..}}`` (plus
``"replay":true`` for replayed copies). Other lines carry ``"malformed":<kind>`` or
``"event":"serverShutdown"`` instead of ``last_update_id``/``data``.
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
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from orderbook_collector.feed.streams import MAX_STREAMS_PER_CONNECTION, Kind, Market, StreamSpec, parse_stream_name

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


#: The kinds the simulator serves today.
SERVED_KINDS = (Kind.PARTIAL_DEPTH, Kind.DIFF_DEPTH)


def parse_stream(name: str, symbols: Any) -> StreamSpec | None:
    """The spec of a served stream name on a listed symbol, else None (names are lower case)."""
    spec = parse_stream_name(name, Market.SPOT)
    if spec is None or spec.symbol not in symbols or spec.type not in SERVED_KINDS:
        return None
    return spec


class _Side:
    """One side of a book: sorted integer tick prices and their quantities (1e-8 units)."""

    def __init__(self, bid: bool):
        self.bid = bid
        self.prices: list[int] = []  # ascending for both sides
        self.qty: dict[int, int] = {}

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
        if price not in self.qty:
            bisect.insort(self.prices, price)
        self.qty[price] = qty

    def remove(self, price: int) -> None:
        del self.qty[price]
        self.prices.pop(bisect.bisect_left(self.prices, price))

    def top(self, n: int) -> list[tuple[int, int]]:
        prices = self.prices[-n:][::-1] if self.bid else self.prices[:n]
        return [(p, self.qty[p]) for p in prices]


class Book:
    """One symbol's book on a tick grid. ``step()`` changes it a little; same seed, same books."""

    MIN_LEVELS = 30

    def __init__(self, symbol: str, seed: int = 0, levels: int = 100, id_base: int | None = None):
        self.symbol = symbol
        self.rng = random.Random(f"{seed}/{symbol}")  # str seeds hash with sha512: stable
        mid, self.tick, self.lot = market_params(symbol)
        self.mean_lots = max(1, 5_000 * E8 * E8 // (self.lot * mid))  # ~5000 quote units a level
        self.levels = levels
        self.step = 0
        seeded_id = 40_000_000_000 + self.rng.randrange(10**9)  # drawn either way: same seed, same books
        self.last_id = seeded_id if id_base is None else id_base
        self.bids, self.asks = _Side(True), _Side(False)
        self.bids.set(mid // self.tick, self._fresh())
        self.asks.set(mid // self.tick + 1, self._fresh())
        self._refill({}, {})
        #: (step, U, u, bid changes, ask changes) per step, for the diff-depth streams
        self.diffs: deque[tuple[int, int, int, dict, dict]] = deque(maxlen=2000)
        self._cache: dict[int, tuple[int, bytes]] = {}
        self._px: dict[int, str] = {}

    def _fresh(self) -> int:
        return (1 + int(self.rng.expovariate(1.0) * self.mean_lots)) * self.lot

    def advance_to(self, step: int) -> None:
        while self.step < step:
            self._step()

    def _step(self) -> None:
        rng, cb, ca = self.rng, {}, {}
        for _ in range(rng.randint(1, 3)):
            bid = rng.random() < 0.5
            self._touch(self.bids if bid else self.asks, cb if bid else ca)
        if rng.random() < 0.06:
            self._shift(rng.random() < 0.5, cb, ca)
        if self.asks.best() - self.bids.best() > 3 and rng.random() < 0.3:
            bid = rng.random() < 0.5  # a wide spread attracts a new order inside it
            side = self.bids if bid else self.asks
            p = side.away(side.best(), -1)
            side.set(p, self._fresh())
            (cb if bid else ca)[p] = side.qty[p]
        self._refill(cb, ca)
        first = self.last_id + 1
        self.last_id += rng.randint(1, 50)
        self.step += 1
        self.diffs.append((self.step, first, self.last_id, cb, ca))

    def _touch(self, side: _Side, changes: dict) -> None:
        """Change one level near the top: mostly its quantity, sometimes add or remove one."""
        rng = self.rng
        rank = min(int(rng.expovariate(1 / 6)), len(side) - 1)
        p, r = side.price_at(rank), rng.random()
        if r < 0.1 and len(side) > self.MIN_LEVELS:
            side.remove(p)
            changes[p] = 0
        elif r < 0.2:
            q = side.away(p, 1)  # away from the spread: can never cross
            if q not in side.qty:
                side.set(q, self._fresh())
                changes[q] = side.qty[q]
        else:
            lots = max(1, int(side.qty[p] // self.lot * rng.uniform(0.5, 1.5)))
            side.set(p, lots * self.lot)
            changes[p] = lots * self.lot

    def _shift(self, up: bool, cb: dict, ca: dict) -> None:
        """The mid moves: the best level(s) of one side trade away, the other side follows."""
        eaten, follower = (self.asks, self.bids) if up else (self.bids, self.asks)
        ce, cf = (ca, cb) if up else (cb, ca)
        for _ in range(self.rng.randint(1, 2)):
            if len(eaten) > self.MIN_LEVELS:
                p = eaten.best()
                eaten.remove(p)
                ce[p] = 0
        p = follower.away(follower.best(), -1)
        if p not in follower.qty and follower.inside(p, eaten.best()):
            follower.set(p, self._fresh())
            cf[p] = follower.qty[p]

    def _refill(self, cb: dict, ca: dict) -> None:
        """Keep levels..levels+20 per side by adding or trimming at the deep end."""
        for side, changes in ((self.bids, cb), (self.asks, ca)):
            while len(side) < self.levels:
                p = side.away(side.worst(), self.rng.randint(1, 3))
                side.set(p, self._fresh())
                changes[p] = side.qty[p]
            while len(side) > self.levels + 20:
                p = side.worst()
                side.remove(p)
                changes[p] = 0

    def _levels(self, items) -> list[list[str]]:
        out = []
        for p, q in items:
            s = self._px.get(p)
            if s is None:
                if len(self._px) > 100_000:
                    self._px.clear()
                s = self._px[p] = fmt_e8(p * self.tick)
            out.append([s, fmt_e8(q)])
        return out

    def depth_payload(self, n: int) -> bytes:
        """Top-``n`` snapshot as Binance sends it; cached per step (all streams share it)."""
        hit = self._cache.get(n)
        if hit and hit[0] == self.step:
            return hit[1]
        data = orjson.dumps({
            "lastUpdateId": self.last_id,
            "bids": self._levels(self.bids.top(n)),
            "asks": self._levels(self.asks.top(n)),
        })
        self._cache[n] = (self.step, data)
        return data

    def diff_payload(self, since_step: int | None) -> bytes:
        """A depthUpdate merging the steps after ``since_step`` (only the last if None)."""
        picked = []
        for entry in reversed(self.diffs):
            if since_step is None and picked or since_step is not None and entry[0] <= since_step:
                break
            picked.append(entry)
        bids: dict[int, int] = {}
        asks: dict[int, int] = {}
        for _, _, _, cb, ca in reversed(picked):
            bids.update(cb)
            asks.update(ca)
        return orjson.dumps({
            "e": "depthUpdate", "E": time.time_ns() // 1_000_000, "s": self.symbol.upper(),
            "U": picked[-1][1], "u": picked[0][2],
            "b": self._levels(sorted(bids.items(), reverse=True)),
            "a": self._levels(sorted(asks.items())),
        })


@dataclass(eq=False, slots=True)
class _Msg:
    """One generated stream message; the same object goes to every subscriber."""

    stream: str
    last_update_id: int
    data: bytes
    combined: bytes


@dataclass(eq=False)
class _Stream:
    spec: StreamSpec
    ring: deque
    subs: dict = field(default_factory=dict)  # conn number -> _Conn
    task: asyncio.Task | None = None
    last_step: int = -1  # book step of the last message: ids never repeat, across restarts too


@dataclass(eq=False)
class _Conn:
    num: int
    ws: ServerConnection
    combined: bool
    replay: int = 0
    stalled_until: float = 0.0
    dropped: bool = False  # aborted as a slow consumer; ignore it until cleanup
    streams: dict = field(default_factory=dict)  # name -> None: an ordered set
    outbox: deque = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    recv_times: deque = field(default_factory=deque)


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
    ``@100ms`` streams and 1/s otherwise). ``max_incoming_per_sec=None`` lifts the 1008
    limit. ``control_http`` serves ``POST /control/<name>`` (see :meth:`_control_http`).
    """

    def __init__(
        self, symbols=("btcusdt", "ethusdt"), *, host: str = "127.0.0.1", port: int = 0,
        seed: int = 0, rate: float | None = None, sent_log: str | None = None,
        ping_interval: float | None = 20.0, ping_timeout: float | None = 60.0,
        max_incoming_per_sec: float | None = 5, shutdown_grace: float = 2.0,
        ring_size: int = 1000, book_levels: int = 100, max_outbox: int = 10_000,
        compression: str | None = None, control_http: bool = True, id_base: int | None = None,
    ):
        self.symbols = [s.strip().lower() for s in symbols if s.strip()]
        self.host, self.port = host, port
        self.rate = rate
        self.base_rate = float(rate) if rate else 10.0  # the book clock: steps per second
        self.sent_log_path = sent_log
        self.ping_interval, self.ping_timeout = ping_interval, ping_timeout
        self.max_incoming_per_sec = max_incoming_per_sec
        self.shutdown_grace = shutdown_grace
        self.ring_size, self.max_outbox = ring_size, max_outbox
        self.compression, self.control_enabled = compression, control_http
        if id_base is None:
            id_base = clock_id_base()
        self.books = {s: Book(s, seed, book_levels, id_base) for s in self.symbols}
        self.streams: dict[str, _Stream] = {}
        self.conns: dict[int, _Conn] = {}
        self.connections_accepted = 0
        self.sent_count: Counter[str] = Counter()  # data messages handed out, per stream
        self.malformed_sent = 0
        self.skipped_ticks = 0
        self._replay_next = 0
        self._reject: tuple[int, int, int] | None = None  # (status, retry_after, count)
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

    def stats(self) -> dict:
        return {
            "connections_accepted": self.connections_accepted, "connections_open": len(self.conns),
            "sent": dict(self.sent_count), "malformed_sent": self.malformed_sent,
            "skipped_ticks": self.skipped_ticks,
        }

    # ---- HTTP: REST, control, handshake checks ---------------------------------------

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        url = urllib.parse.urlsplit(request.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if url.path.startswith("/api/"):
            return self._rest(url.path, query)
        if url.path.startswith("/control/") and self.control_enabled:
            return self._control_http(url.path[len("/control/"):], query)
        if self._reject:
            status, retry_after, count = self._reject
            self._reject = (status, retry_after, count - 1) if count > 1 else None
            body = {"code": -1003, "msg": "Too many requests; IP banned or rate limited."}
            return _http(status, body, (("Retry-After", str(retry_after)),))
        streams = self._url_streams(url.path, query)
        if streams is None:
            return _http(404, {"code": -1000, "msg": f"Unknown path {url.path}"})
        bad = [s for s in streams if parse_stream(s, self.books) is None]
        if bad or len(streams) > MAX_STREAMS_PER_CONNECTION:
            return _http(400, {"code": -1121, "msg": f"Invalid stream: {(bad or ['too many'])[0]}"})
        return None

    @staticmethod
    def _url_streams(path: str, query: dict) -> list[str] | None:
        """Stream names in a handshake path, or None if the path is not a stream endpoint."""
        if path == "/stream":
            return [s for s in query.get("streams", "").split("/") if s]
        if path == "/ws" or path.startswith("/ws/"):
            return [s for s in path[4:].split("/") if s]
        return None

    def _rest(self, path: str, query: dict) -> Response:
        if path == "/api/v3/ping":
            return _http(200, {})
        if path == "/api/v3/time":
            return _http(200, {"serverTime": time.time_ns() // 1_000_000})
        if path != "/api/v3/depth":
            return _http(404, {"code": -1000, "msg": f"Unknown path {path}"})
        symbol = query.get("symbol", "")
        if not symbol:
            msg = "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."
            return _http(400, {"code": -1102, "msg": msg})
        book = self.books.get(symbol.lower())
        if book is None:
            return _http(400, {"code": -1121, "msg": "Invalid symbol."})
        try:
            limit = min(5000, int(query.get("limit", 100)))
            if limit < 1:
                raise ValueError
        except ValueError:
            return _http(400, {"code": -1100, "msg": "Illegal characters found in parameter 'limit'."})
        book.advance_to(self._book_step_now())
        return _http(200, book.depth_payload(limit), (("X-MBX-USED-WEIGHT-1M", "5"),))

    def _control_http(self, name: str, q: dict) -> Response:
        """``POST /control/<name>?arg=..`` (or named args) runs a fault switch; 200 {"ok":true}.

        disconnect?abrupt=0|1  stall?seconds=S  replay_on_next_connect?n=N
        inject_malformed?kind=K  reject_connections?status=429&retry_after=S&count=N
        server_shutdown?grace=S  stats (GET or POST: the counters)
        """
        arg = q.get("arg")
        try:
            if name == "stats":
                return _http(200, self.stats())
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
            else:
                return _http(404, {"ok": False, "error": f"unknown control {name!r}"})
        except ValueError as exc:
            return _http(400, {"ok": False, "error": str(exc)})
        return _http(200, {"ok": True})

    # ---- connections -----------------------------------------------------------------

    async def _handler(self, ws: ServerConnection) -> None:
        url = urllib.parse.urlsplit(ws.request.path)
        streams = self._url_streams(url.path, dict(urllib.parse.parse_qsl(url.query))) or []
        self.connections_accepted += 1
        conn = _Conn(self.connections_accepted, ws, combined=url.path == "/stream")
        conn.replay, self._replay_next = self._replay_next, 0
        self.conns[conn.num] = conn
        sender = asyncio.create_task(self._send_loop(conn))
        try:
            self._subscribe(conn, [parse_stream(s, self.books) for s in streams])
            await self._recv_loop(conn)
        except ConnectionClosed:
            pass
        finally:
            del self.conns[conn.num]
            for name in conn.streams:
                self.streams[name].subs.pop(conn.num, None)
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
        if self.max_incoming_per_sec is None:
            return False
        now, times = time.monotonic(), conn.recv_times
        times.append(now)
        while now - times[0] >= 1.0:
            times.popleft()
        return len(times) > self.max_incoming_per_sec

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
                        self.sent_count[msg.stream] += 1
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
        specs = [parse_stream(p, self.books) for p in params]
        if None in specs:  # the whole request is refused, nothing changes
            return self._reply(conn, _error(2, "Invalid request: invalid stream", rid))
        if method == "UNSUBSCRIBE":
            for spec in specs:
                if spec.name in conn.streams:
                    del conn.streams[spec.name]
                    self.streams[spec.name].subs.pop(conn.num, None)
            return self._reply(conn, {"result": None, "id": rid})
        if len(set(conn.streams) | {s.name for s in specs}) > MAX_STREAMS_PER_CONNECTION:
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

    def _subscribe(self, conn: _Conn, specs: list[StreamSpec]) -> None:
        """Join the global streams; a pending replay first re-sends their recent history."""
        for spec in specs:
            if spec.name in conn.streams:
                continue
            st = self.streams.get(spec.name)
            if st is None:
                st = self.streams[spec.name] = _Stream(spec, deque(maxlen=self.ring_size))
            if conn.replay:
                for msg in list(st.ring)[-conn.replay:]:
                    self._enqueue(conn, ("d", msg, True))
            conn.streams[spec.name] = None
            st.subs[conn.num] = conn
            if st.task is None:
                st.task = asyncio.create_task(self._run_stream(st))

    # ---- stream tickers --------------------------------------------------------------

    def _book_step_now(self) -> int:
        return int((asyncio.get_running_loop().time() - self._t0) * self.base_rate)

    async def _run_stream(self, st: _Stream) -> None:
        """Emit tick j at t0 + j/rate (a fixed grid: no drift); late ticks go out as a burst.

        More than one second behind, the oldest ticks are skipped (counted), as a
        timer-driven feed would. Stops when the last subscriber leaves.
        """
        rate = self.rate or 1e6 / st.spec.cadence_us
        loop = asyncio.get_running_loop()
        nxt = math.floor((loop.time() - self._t0) * rate) + 1
        since: int | None = None  # last book step sent (diff streams merge from there)
        cap = max(1, int(rate))  # at most one second of catch-up per burst
        try:
            while st.subs:
                due = math.floor((loop.time() - self._t0) * rate)
                if due - nxt + 1 > cap:
                    self.skipped_ticks += due - nxt + 1 - cap
                    nxt = due + 1 - cap
                for j in range(nxt, due + 1):
                    since = self._emit(st, int(j * self.base_rate / rate + 1e-9), since)
                nxt = max(nxt, due + 1)
                await asyncio.sleep(max(0.0, self._t0 + nxt / rate - loop.time()))
        finally:
            st.task = None

    def _emit(self, st: _Stream, step: int, since: int | None) -> int | None:
        book = self.books[st.spec.symbol]
        book.advance_to(step)
        if book.step <= st.last_step:
            self.skipped_ticks += 1  # a REST snapshot moved the book ahead: never repeat an id
            return since
        data = book.depth_payload(st.spec.levels) if st.spec.levels else book.diff_payload(since)
        st.last_step = book.step
        name = st.spec.name
        msg = _Msg(name, book.last_id, data, b'{"stream":"' + name.encode() + b'","data":' + data + b"}")
        st.ring.append(msg)
        now = time.monotonic()
        for conn in st.subs.values():
            if conn.stalled_until <= now:
                self._enqueue(conn, ("d", msg, False))
        return book.step

    # ---- sent log --------------------------------------------------------------------

    def _log_data(self, conn_num: int, msg: _Msg, send_us: int, replay: bool) -> None:
        if self._log_file is None:
            return
        head = (f'{{"conn":{conn_num},"stream":"{msg.stream}","send_us":{send_us},'
                f'"last_update_id":{msg.last_update_id},' + ('"replay":true,' if replay else ""))
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
        ring = self.streams[stream].ring if stream in self.streams else ()
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
    p.add_argument("--seed", type=int, default=0, help="the books' random seed (update ids start at the clock)")
    p.add_argument("--sent-log", default=None, help="append NDJSON of every frame sent")
    p.add_argument("--ping-interval", type=float, default=20.0)
    p.add_argument("--rate", type=float, default=None,
                   help="messages/s per stream (default: Binance cadence, 10/s @100ms, else 1/s)")
    p.add_argument("--max-incoming-per-sec", type=float, default=5.0, help="0 disables the 1008 limit")
    p.add_argument("--shutdown-grace", type=float, default=2.0)
    return p.parse_args(argv)


async def _amain(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ex = Exchange(
        args.symbols.split(","), host=args.host, port=args.port, seed=args.seed, rate=args.rate,
        sent_log=args.sent_log, ping_interval=args.ping_interval,
        max_incoming_per_sec=args.max_incoming_per_sec or None, shutdown_grace=args.shutdown_grace,
    )
    async with ex:
        print(f"simulator listening on {ex.ws_url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_amain(_parse_args(argv)))


if __name__ == "__main__":
    main()
