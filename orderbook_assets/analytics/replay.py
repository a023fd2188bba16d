"""``orderbook replay``: serve an archived time range as Binance's own streams, as if live.

Usage::

    orderbook replay [--archive URL] --start TIME --end TIME [--speed X] [--port N]
                     [--host 127.0.0.1] [--gap SECONDS] [--wait-for-subscribers]

Serves on one port (default 9443):

* WebSocket, Binance's combined-stream protocol: spot on ``/stream?streams=a/b`` and
  ``/ws/<name>``, USD-M on the routed ``/public/...`` and ``/market/...`` paths, COIN-M unrouted
  under ``/dstream/...`` (:data:`COINM_PREFIX`); frames
  ``{"stream":..,"data":..}`` whose payloads carry Binance's field names per kind, rebuilt
  from the dataset columns (prices and quantities as decimal strings, times in ms);
  SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS are answered.
* REST depth for the archived diff-depth snapshots: ``/api/v3/depth``, ``/fapi/v1/depth``, ``/dapi/v1/depth``
  (``symbol``, ``limit``) answer with the first ``depth_rest_snapshot`` received at or after
  the replay clock (else the last before it), cut to ``limit``; ``/api/v3/time``, ``/ping``.

The replay clock starts at ``--start`` when the first client connects and runs ``--speed``
times real time (0: as fast as the clients read). Each archived row is sent at its
``recv_time`` to every connection subscribed to its stream and market. Archived gaps become
disconnects: where a connection session ended with no other session overlapping it, and
where no replayed row arrived for more than ``--gap`` seconds, every connection is dropped
without a close frame (as a network loss looks); clients reconnect as they would live and
receive what comes after. Rows sent while no client is connected are lost, as live.

With ``--wait-for-subscribers`` nothing is lost: each archived row waits, the clock held, until
some connection carries its stream and market. A client that opens several connections (one per
market and route, as the collector does) then receives every archived message of the range, the
clock starting at the first row's subscription; after an archived outage the clock stays held
until the clients have reconnected and subscribed again, so the disconnect costs no row (the
archive has none inside the recorded gap).
"""

from __future__ import annotations

import argparse
import asyncio
import http
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from orderbook_core import kinds
from orderbook_core.streams import DEPTH_PATH, USDM_ROUTE, Market
from orderbook_core.errors import OrderbookError

from orderbook_assets.analytics.books import ArchiveReader, ArchivedRow, iter_events, to_us
from orderbook_assets.archive.location import Location

#: The stream datasets a replay sends, in tie order: every dataset that came over a connection
#: (``orderbook_core.kinds``; REST snapshots are answered over REST instead).
STREAM_DATASETS = tuple(name for name, spec in kinds.SPECS.items() if spec.ordered_id is not None)
_DEPTH_MARKET = {path: market for market, path in DEPTH_PATH.items()}
USDM_ROUTES = tuple(sorted(set(USDM_ROUTE.values())))
#: The path prefix COIN-M's streams are replayed under (its own host on Binance: point
#: ``ORDERBOOK_COINM_WS_URL`` at ``ws://<replay>/dstream``).
COINM_PREFIX = "dstream"
DEFAULT_PORT = 9443
#: Seconds a drop waits for a connection's unsent frames to reach the kernel before cutting it
#: anyway (a client that stopped reading must not stall a live-like replay).
DRAIN_TIMEOUT = 2.0
USER_ERROR = 2


class ReplayError(OrderbookError):
    """The replay cannot start; the message is one sentence."""


# ---- payloads ------------------------------------------------------------------------------


dec = kinds.dec  # a price or quantity as Binance-style decimal text (no exponent; parses back)


def _ms(us: int | None) -> int | None:
    return None if us is None else us // 1000


def _ts_ms(t: Any) -> int | None:
    return _ms(_us(t))


def _us(t: Any) -> int | None:
    return None if t is None else to_us(t)


def payload(dataset: str, market: str, row: dict) -> dict:
    """The Binance payload of one archived row (``row`` as ``pyarrow`` ``to_pylist`` gives it),
    shaped by the dataset's spec (``orderbook_core.kinds``)."""
    spec = kinds.SPECS.get(dataset)
    if spec is None or dataset == kinds.DEPTH_REST_SNAPSHOT.name:
        raise ValueError(f"no Binance payload for dataset {dataset!r}")
    return kinds.encode(spec, market, row, _ts_ms)


def rest_depth(market: str, row: dict, limit: int | None) -> dict:
    """A REST depth answer from a ``depth_rest_snapshot`` row, cut to ``limit`` levels a side."""
    n = limit or max(len(row["bids"]), len(row["asks"]))
    cut = {**row, "bids": row["bids"][:n], "asks": row["asks"][:n]}
    return kinds.encode(kinds.DEPTH_REST_SNAPSHOT, market, cut, _ts_ms)


# ---- the timeline --------------------------------------------------------------------------


class Message:
    __slots__ = ("recv_us", "market", "stream", "data")

    def __init__(self, recv_us: int, market: str, stream: str, data: bytes):
        self.recv_us, self.market, self.stream, self.data = recv_us, market, stream, data

    def frame(self) -> bytes:
        return b'{"stream":"' + self.stream.encode() + b'","data":' + self.data + b"}"


def messages(rows: Iterator[ArchivedRow]) -> Iterator[Message]:
    for r in rows:
        market = r.row.get("market") or Market.SPOT.value  # depth_snapshot parts written before it had the column
        yield Message(r.recv_time_us, market, r.row["stream"], orjson.dumps(payload(r.dataset, market, r.row)))


def outages(reader: ArchiveReader, start_us: int, end_us: int, gap_us: int) -> list[int]:
    """Receive times after which every client is dropped: the ends of connection sessions no
    other session overlaps, and the starts of silences longer than ``gap_us``."""
    parts = [f"SELECT recv_time, session_id FROM {reader._from(d)} WHERE recv_time >= {reader.ts()} "
             f"AND recv_time < {reader.ts()}" for d in STREAM_DATASETS if reader.has(d)]
    if not parts:
        return []
    params = [start_us, end_us] * len(parts)
    union = " UNION ALL ".join(parts)
    sessions = reader.con.execute(
        f"SELECT session_id, epoch_us(min(recv_time)), epoch_us(max(recv_time)) FROM ({union}) "
        "GROUP BY session_id ORDER BY 2", params).fetchall()
    cuts = set()
    for sid, _first, last in sessions:
        covered = any(o != sid and f <= last < l for o, f, l in sessions)
        later = any(f > last for _o, f, _l in sessions)
        if not covered and later:  # the last session's end is the range's end, not an outage
            cuts.add(last)
    silent = reader.con.execute(
        f"SELECT t FROM (SELECT epoch_us(recv_time) AS t, epoch_us(lead(recv_time) OVER (ORDER BY recv_time)) AS n "
        f"FROM ({union})) WHERE n - t > ?", params + [gap_us]).fetchall()
    cuts.update(t for (t,) in silent)
    return sorted(cuts)


# ---- the server ----------------------------------------------------------------------------


def _http(status: int, obj: Any) -> Response:
    body = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    st = http.HTTPStatus(status)
    hdrs = Headers([("Content-Type", "application/json;charset=UTF-8"), ("Content-Length", str(len(body))),
                    ("Connection", "close")])
    return Response(st.value, st.phrase, hdrs, body)


@dataclass(eq=False)
class _Client:
    ws: ServerConnection
    market: str
    combined: bool
    streams: set[str] = field(default_factory=set)


class ReplayServer:
    """Serves ``[start_us, end_us)`` of ``archive``; ``async with ReplayServer(...) as r``."""

    def __init__(self, archive: str, start_us: int, end_us: int, speed: float = 1.0, host: str = "127.0.0.1",
                 port: int = DEFAULT_PORT, gap_seconds: float = 5.0, wait_for_subscribers: bool = False):
        if end_us <= start_us:
            raise ReplayError("--end must be after --start.")
        if speed < 0:
            raise ReplayError("--speed must be 0 (as fast as possible) or positive, e.g. 1 or 10.")
        self.reader = ArchiveReader(archive)
        if not any(self.reader.has(d) for d in STREAM_DATASETS):
            self.reader.close()
            raise ReplayError(f"the archive at {self.reader.location.url} holds none of the stream datasets "
                              f"({', '.join(STREAM_DATASETS)}); check --archive or ORDERBOOK_ARCHIVE_URL.")
        self.start_us, self.end_us, self.speed = start_us, end_us, speed
        self.host, self.port, self.gap_us = host, port, int(gap_seconds * 1e6)
        self.wait_for_subscribers = wait_for_subscribers
        self.clients: set[_Client] = set()
        self.sent = 0
        self.disconnects = 0
        self.finished = asyncio.Event()
        self._first_client = asyncio.Event()
        self._server: Server | None = None
        self._pump: asyncio.Task | None = None
        self._t0: float | None = None  # time.monotonic() when the clock started, moved on by each hold
        self._held_since: float | None = None  # time.monotonic() when the clock was held (waiting for a subscriber)
        self._subscriptions_changed = asyncio.Event()
        self._served_us = start_us  # the last row's time (the clock at speed 0)
        self._tasks: set[asyncio.Task] = set()
        self._rest = self._load_rest()

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def clock_us(self) -> int:
        """The replay clock: the archived time being served now."""
        if self._t0 is None:
            return self.start_us
        if self.speed == 0:
            return self._served_us
        now = time.monotonic() if self._held_since is None else self._held_since
        return self.start_us + int((now - self._t0) * self.speed * 1e6)

    async def start(self) -> "ReplayServer":
        self._server = await serve(self._handler, self.host, self.port, process_request=self._process_request,
                                   compression=None, max_size=None)
        self.port = self._server.sockets[0].getsockname()[1]
        self._pump = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.reader.close()

    async def __aenter__(self) -> "ReplayServer":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # ---- REST ----

    def _load_rest(self) -> dict[tuple[str, str], list[dict]]:
        r = self.reader
        t = r.query("depth_rest_snapshot", f"recv_time < {r.ts()}", [self.end_us], "recv_time, last_update_id")
        out: dict[tuple[str, str], list[dict]] = {}
        for row in t.to_pylist():
            row["recv_us"] = to_us(row["recv_time"])
            out.setdefault((row["market"], row["symbol"]), []).append(row)
        return out

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        url = urllib.parse.urlsplit(request.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        market = _DEPTH_MARKET.get(url.path)
        if market is not None:
            return self._depth(market.value, q)
        if url.path in ("/api/v3/time", "/fapi/v1/time", "/dapi/v1/time"):
            return _http(200, {"serverTime": self.clock_us() // 1000})
        if url.path in ("/api/v3/ping", "/fapi/v1/ping", "/dapi/v1/ping"):
            return _http(200, {})
        if self._endpoint(url.path) is None:
            return _http(404, {"code": -1000, "msg": f"Unknown path {url.path}"})
        return None

    def _depth(self, market: str, q: dict) -> Response:
        symbol = q.get("symbol", "").upper()
        if not symbol:
            return _http(400, {"code": -1102, "msg": "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."})
        rows = self._rest.get((market, symbol))
        if not rows:
            return _http(400, {"code": -1121, "msg": "Invalid symbol."})
        try:
            limit = int(q["limit"]) if "limit" in q else None
        except ValueError:
            return _http(400, {"code": -1100, "msg": "Illegal characters found in parameter 'limit'."})
        now = self.clock_us()
        # the snapshot the recording collector got next: its id is at or ahead of the events now sent
        row = next((r for r in rows if r["recv_us"] >= now), rows[-1])
        return _http(200, rest_depth(market, row, limit))

    # ---- WebSocket ----

    @staticmethod
    def _endpoint(path: str) -> tuple[str, bool, list[str]] | None:
        market = Market.SPOT.value
        head, _, rest = path.lstrip("/").partition("/")
        if head in USDM_ROUTES:
            market, path = Market.USDM.value, "/" + rest
        elif head == COINM_PREFIX:  # COIN-M is served under /dstream (unrouted: streams.COINM_ROUTED)
            market, path = Market.COINM.value, "/" + rest
        if path == "/stream":
            return market, True, []
        if path == "/ws" or path.startswith("/ws/"):
            return market, False, [s for s in path[4:].split("/") if s]
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        url = urllib.parse.urlsplit(ws.request.path)
        ep = self._endpoint(url.path)
        assert ep is not None
        market, combined, names = ep
        if combined:
            names = [s for s in dict(urllib.parse.parse_qsl(url.query)).get("streams", "").split("/") if s]
        client = _Client(ws, market, combined, set(names))
        self.clients.add(client)
        self._subscriptions_changed.set()
        if self._t0 is None:
            self._t0 = time.monotonic()
            self._first_client.set()
        try:
            async for raw in ws:
                self._control(client, raw)
        except ConnectionClosed:
            pass
        finally:
            self.clients.discard(client)

    def _control(self, client: _Client, raw: str | bytes) -> None:
        try:
            msg = orjson.loads(raw)
            method, rid = msg["method"], msg.get("id")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self._spawn(self._send(client, orjson.dumps({"error": {"code": 3, "msg": "Invalid JSON"}, "id": None})))
            return
        params = msg.get("params") or []
        if method == "SUBSCRIBE":
            client.streams.update(params)
            self._subscriptions_changed.set()
            reply: dict = {"result": None, "id": rid}
        elif method == "UNSUBSCRIBE":
            client.streams.difference_update(params)
            reply = {"result": None, "id": rid}
        elif method == "LIST_SUBSCRIPTIONS":
            reply = {"result": sorted(client.streams), "id": rid}
        else:
            reply = {"error": {"code": 2, "msg": "Invalid request: unknown method"}, "id": rid}
        self._spawn(self._send(client, orjson.dumps(reply)))

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # asyncio keeps tasks weakly
        task.add_done_callback(self._tasks.discard)

    async def _send(self, client: _Client, data: bytes) -> bool:
        try:
            await client.ws.send(data.decode())
        except ConnectionClosed:
            self.clients.discard(client)
            return False
        return True

    async def _drop_all(self) -> None:
        """A network loss: no close frame; clients see an abnormal closure (1006) after every
        frame already sent (the write buffer drains into the socket first, and the socket's
        close follows the data). Waiting for
        subscribers, the drain has no deadline: a frame given to a connection is never cut off,
        as ``send`` already waits for a slow reader."""
        self.disconnects += 1
        clients, self.clients = list(self.clients), set()
        deadline = float("inf") if self.wait_for_subscribers else time.monotonic() + DRAIN_TIMEOUT
        for c in clients:
            while c.ws.transport.get_write_buffer_size() and time.monotonic() < deadline:
                await asyncio.sleep(0.001)  # flushing to the kernel, not synchronising a test
            c.ws.transport.abort()

    async def _run(self) -> None:
        await self._first_client.wait()
        cuts = await asyncio.to_thread(outages, self.reader, self.start_us, self.end_us, self.gap_us)
        rows = iter_events(self.reader, STREAM_DATASETS, self.start_us, self.end_us)
        source = messages(rows)
        cut_i = 0
        while True:
            chunk = await asyncio.to_thread(_take, source, 2000)
            if not chunk:
                break
            for m in chunk:
                while cut_i < len(cuts) and cuts[cut_i] < m.recv_us:
                    await self._wait_until(cuts[cut_i])
                    await self._drop_all()
                    cut_i += 1
                await self._wait_until(m.recv_us)
                self._served_us = m.recv_us
                delivered = await self._deliver(m, self._targets(m))
                # a connection closing under the send is no subscriber: the row waits for the next
                while not delivered and self.wait_for_subscribers:
                    delivered = await self._deliver(m, await self._hold(m))
        self.finished.set()

    def _targets(self, m: Message) -> list[_Client]:
        return [c for c in self.clients
                if c.market == m.market and m.stream in c.streams and c.ws.state is State.OPEN]

    async def _hold(self, m: Message) -> list[_Client]:
        """Hold the clock until a connection carries ``m``'s stream; the pacing of every later
        row moves on by the time held, so the archived spacing is kept."""
        self._held_since = time.monotonic()
        try:
            while not (targets := self._targets(m)):
                self._subscriptions_changed.clear()
                await self._subscriptions_changed.wait()
        finally:
            assert self._t0 is not None
            self._t0 += time.monotonic() - self._held_since
            self._held_since = None
        return targets

    async def _wait_until(self, recv_us: int) -> None:
        if self.speed == 0:
            await asyncio.sleep(0)
            return
        assert self._t0 is not None
        due = self._t0 + (recv_us - self.start_us) / 1e6 / self.speed
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # the server's own pacing (real time × speed)

    async def _deliver(self, m: Message, targets: list[_Client]) -> int:
        """Send ``m`` to ``targets``; how many took it."""
        n = 0
        for c in targets:
            if await self._send(c, m.frame() if c.combined else m.data):
                n += 1
        self.sent += n
        return n


def _take(it: Iterator[Message], n: int) -> list[Message]:
    out = []
    for m in it:
        out.append(m)
        if len(out) >= n:
            break
    return out


# ---- the command ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="orderbook replay",
                                description="Serve an archived time range as Binance's combined streams and REST depth.")
    p.add_argument("--archive", default=None, help="s3://bucket/prefix or a folder (default: $ORDERBOOK_ARCHIVE_URL or data/archive)")
    p.add_argument("--start", required=True, help="first receive time served (ISO 8601, UTC if no zone)")
    p.add_argument("--end", required=True, help="end of the range (exclusive)")
    p.add_argument("--speed", type=float, default=1.0, help="times real time; 0 = as fast as possible (default: 1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port on 127.0.0.1 (default: {DEFAULT_PORT})")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--gap", type=float, default=5.0, help="a silence longer than this many seconds is a disconnect (default: 5)")
    p.add_argument("--wait-for-subscribers", action="store_true",
                   help="hold the clock until a connection carries each row's stream, so no row is lost "
                        "(default: rows replayed while nobody carries their stream are lost, as live)")
    return p


def main(argv: list[str] | None, locate: Callable[[str | None], Location]) -> int:
    """``orderbook replay``; ``locate`` turns ``--archive`` (or None) into the archive
    (``analytics.query.archive_location``: the settings' ``ORDERBOOK_ARCHIVE_URL``)."""
    args = build_parser().parse_args(argv)
    try:
        start, end = to_us(args.start), to_us(args.end)
    except ValueError as exc:
        print(f"orderbook replay: --start/--end must be ISO 8601 times such as 2026-11-24T10:00:00Z ({exc}).",
              file=sys.stderr)
        return USER_ERROR
    try:
        return asyncio.run(_serve(locate(args.archive).url, start, end, args))
    except OSError as exc:
        print(f"orderbook replay: cannot listen on {args.host}:{args.port} ({exc.strerror}); "
              "pass another --port.", file=sys.stderr)
        return USER_ERROR
    except OrderbookError as exc:
        print(f"orderbook replay: {exc}", file=sys.stderr)
        return USER_ERROR
    except KeyboardInterrupt:
        return 130


async def _serve(archive: str, start: int, end: int, args: argparse.Namespace) -> int:
    async with ReplayServer(archive, start, end, args.speed, args.host, args.port, args.gap,
                            args.wait_for_subscribers) as r:
        when = ("waits for a subscriber to each row's stream" if args.wait_for_subscribers
                else "starts at the first connection")
        print(f"replaying {archive} from {args.start} to {args.end} at {args.speed:g}x on {r.ws_url} "
              f"(REST {r.rest_url}); the clock {when}. Ctrl-C stops.", file=sys.stderr)
        await r.finished.wait()
        print(f"replay finished: {r.sent} messages sent, {r.disconnects} disconnects; still serving REST. "
              "Ctrl-C stops.", file=sys.stderr)
        await asyncio.Event().wait()
    return 0
