"""Connections and their sessions: open, read, watch, rotate, close (the collector's I/O core).

Per frame the event loop does as little as it can: stamp the receive time, give the frame its
session ``seq``, and hand it to the writer thread without waiting. Parsing and SQLite happen in
the writer thread, so the loop stays free to answer pings (a blocked loop is what "1011
keepalive ping timeout" means).

Each connection is a *session* with its own id (its opening time in µs) and seq counter.
Sessions are recorded in the buffer as they open and close, so every outage is visible as
data. Rotation is make-before-break: the replacement connection is opened and receiving before
the old one is closed; the dedup key removes the overlap. A connection's URL names what fits
under the URL budget; the rest of its group is subscribed by :mod:`.subscriptions`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from orderbook_core.buffer.records import EventKind, Frame, SessionClose, SessionOpen
from orderbook_core.buffer.rows import ROW_TABLES
from orderbook_core.streams import Market
from orderbook_collector.connection.backoff import classify, full_jitter
from orderbook_collector.feed.protocol import ControlReply, Decoder, Quarantined, ServerShutdown, StreamSpec
from orderbook_collector.feed.symbols import ControlPacer, url_streams

log = logging.getLogger("orderbook_collector.connection.collector")

#: WebSocket frames above this close the connection (1009); our own, lower limit quarantines.
WS_MAX_SIZE = 16 << 20
OPEN_TIMEOUT = 10.0
CLOSE_TIMEOUT = 5.0
PING_INTERVAL = 20.0
PING_TIMEOUT = 20.0
#: Seconds to wait for the reply to a SUBSCRIBE or UNSUBSCRIBE before giving it up.
CONTROL_TIMEOUT = 10.0


def now_us() -> int:
    return time.time_ns() // 1000


class SessionOutcome(enum.Enum):
    """Why waiting on a session returned; the value is what the events and close reasons say."""

    ENDED = "ended"
    SERVER_SHUTDOWN = "serverShutdown"
    STOPPING = "stopping"
    ROTATION = "rotation"


@dataclass(eq=False)
class Group:
    """The streams one connection carries: one market, one USD-M route, within the market's limit.

    ``streams`` is what the group should carry now (``*`` changes it); each session opens
    with it and :meth:`Collector._reconcile` brings a live session to it with control messages.
    """

    market: Market
    route: str | None
    streams: dict[str, StreamSpec]  # name -> spec, in subscription order
    session: Session | None = None
    dirty: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    tasks: list[asyncio.Task] = field(default_factory=list)
    #: Most streams its URL may name; halved by each HTTP 414 (the rest go by SUBSCRIBE).
    url_cap: int | None = None


@dataclass(eq=False)
class Session:
    """One WebSocket connection and its bookkeeping."""

    session_id: int
    ws: ClientConnection
    group: Group
    streams: dict[str, StreamSpec]  # what this connection carries now (name -> spec)
    decoder: Decoder
    opened_mono: float
    seq: int = 0
    data_frames: int = 0
    last_frame_mono: float = 0.0
    close_reason: str | None = None
    shutdown_notice: asyncio.Event = field(default_factory=asyncio.Event)
    first_data: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    keys: dict[str, str] = field(default_factory=dict)  # stream name -> key (metrics, records)
    pacer: ControlPacer = field(default_factory=ControlPacer)
    pending: dict[int, asyncio.Future] = field(default_factory=dict)  # control request id -> reply
    #: Set once the session carries every stream of its group (the URL's, then SUBSCRIBE's).
    complete: asyncio.Event = field(default_factory=asyncio.Event)



class Sessions:
    """The collector's connection groups and their sessions (mixed into :class:`~.collector.Collector`,
    whose state they share: settings, writer, metrics, silence detector, the stop event)."""

    def _start_group(self, market: Market, route: str | None, specs: list[StreamSpec]) -> Group:
        g = Group(market, route, {s.name: s for s in specs})
        self.groups.append(g)
        g.tasks = [asyncio.create_task(self._run_group(g)), asyncio.create_task(self._reconcile(g))]
        return g

    async def _run_group(self, g: Group) -> None:
        current: Session | None = None
        opened = False  # a connection of this group was open before: the next one is a reconnect
        delays = full_jitter(self.settings.backoff_initial, self.settings.backoff_max)
        try:
            while not self._stopping.is_set():
                if current is None:
                    current = await self._open_with_retry(g, delays)
                    if current is None:
                        return
                    if opened:
                        self.metrics.reconnects += 1
                    opened = True
                rotate_at = current.opened_mono + self.settings.rotate_after
                reason = await self._wait_session(current, rotate_at)
                if reason is SessionOutcome.ENDED:
                    lasted = time.monotonic() - current.opened_mono
                    if lasted >= self.settings.min_session:
                        delays = full_jitter(self.settings.backoff_initial, self.settings.backoff_max)
                    # A session that dies right after opening (rate limit close, bad
                    # stream) must not turn into a hot reconnect loop.
                    await self._sleep(next(delays))
                    current = None
                    continue
                current = await self._rotate(current, g, delays, reason)
        finally:
            # Includes a replacement opened by a rotation that the stop interrupted.
            for s in [x for x in self._open_sessions if x.group is g]:
                await self._close_session(s, "collector stopped")

    async def _wait_session(self, s: Session, rotate_at: float) -> SessionOutcome:
        """Wait until the session ends, needs rotation, or the collector stops."""
        stop = asyncio.ensure_future(self._stopping.wait())
        notice = asyncio.ensure_future(s.shutdown_notice.wait())
        try:
            timeout = max(rotate_at - time.monotonic(), 0)
            done, _ = await asyncio.wait({s.task, stop, notice}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            notice.cancel()
        if s.task in done:
            return SessionOutcome.ENDED
        if notice in done:
            return SessionOutcome.SERVER_SHUTDOWN
        if stop in done:
            return SessionOutcome.STOPPING
        return SessionOutcome.ROTATION

    async def _rotate(self, old: Session, g: Group, delays, why: SessionOutcome) -> Session | None:
        if why is SessionOutcome.STOPPING:
            return old  # the finally block of _run_group closes it
        self.metrics.rotations += 1
        log.info("rotating session %d (%s): opening the replacement first", old.session_id, why.value)
        self._event(old.session_id, EventKind.ROTATION_START, why.value)
        new = await self._open_with_retry(g, delays)
        if new is None:
            return old
        # Overlap until the new connection delivers data (or a bounded time), so no
        # message falls between the two; duplicates are removed by the dedup key.
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout(self.settings.rotate_overlap):
                await new.complete.wait()  # the streams beyond its URL are subscribed too
                await new.first_data.wait()
        await asyncio.sleep(min(1.0, self.settings.rotate_overlap))
        await self._close_session(old, f"rotated ({why.value})")
        self._event(new.session_id, EventKind.ROTATION_END, f"replaced session {old.session_id}")
        return new

    async def _open_with_retry(self, g: Group, delays) -> Session | None:
        failures = 0
        while not self._stopping.is_set():
            try:
                return await self._open(g)
            except Exception as exc:
                if isinstance(exc, InvalidStatus) and exc.response.status_code == 414:
                    carried = len(self._url_names(g))
                    if carried > 1:  # the URL was too long for the server: halve it, at once
                        g.url_cap = carried // 2
                        log.warning("%s answered 414 to a URL of %d streams; opening with %d, the rest by SUBSCRIBE",
                                    _host_port(self.settings.ws_base(g.market)), carried, g.url_cap)
                        continue
                decision = classify(exc)
                base = self.settings.ws_base(g.market)
                if not decision.retry:
                    self.fatal = decision.reason
                    log.error("cannot connect to %s: %s; stopping", base, decision.reason)
                    self.stop(decision.reason)
                    return None
                delay = max(next(delays), decision.min_delay)
                self.metrics.connect_failures += 1
                failures += 1
                log.warning("cannot connect to %s (%s); retrying in %.2f s%s", _host_port(base),
                            decision.reason, delay, _hint(exc) if failures in (1, 10) or failures % 100 == 0 else "")
                await self._sleep(delay)
        return None

    def _url_prefix(self, g: Group) -> str:
        route = f"/{g.route}" if g.route else ""
        return f"{self.settings.ws_base(g.market)}{route}/stream?streams="

    def _url_names(self, g: Group) -> list[str]:
        """The group's leading streams that its URL names (under URL_BUDGET and its 414 cap)."""
        return url_streams(self._url_prefix(g), list(g.streams), cap=g.url_cap)

    def _url(self, g: Group) -> str:
        return self._url_prefix(g) + "/".join(self._url_names(g))

    async def _attempt(self, market: Market) -> None:
        """Wait until Binance's connection-attempt budget allows one more, and count it."""
        limiter = self.attempts[market]
        wait = limiter.delay(time.monotonic())
        if wait > 0:
            log.warning("%d connection attempts to %s in the last %.0f s; waiting %.1f s", limiter.limit,
                        market.value, limiter.window, wait)
            await self._sleep(wait)
        limiter.record(time.monotonic())

    async def _open(self, g: Group) -> Session:
        # Under the group's lock: a change of its streams waits until the session carries
        # what the URL said, so the reconciliation compares against the truth.
        async with g.lock:
            await self._attempt(g.market)
            # The URL names what fits in it; _reconcile subscribes the rest once the session is up.
            streams = {n: g.streams[n] for n in self._url_names(g)}
            url = self._url(g)
            self.opened_urls.append(url)
            ws = await connect(
                url,
                open_timeout=OPEN_TIMEOUT,
                close_timeout=CLOSE_TIMEOUT,
                ping_interval=PING_INTERVAL,
                ping_timeout=PING_TIMEOUT,
                max_size=WS_MAX_SIZE,
                max_queue=256,
                compression=None,
            )
            sid = max(now_us(), self._last_session_id + 1)
            self._last_session_id = sid
            specs = list(streams.values())
            s = Session(sid, ws, g, streams, Decoder(specs), time.monotonic(), last_frame_mono=time.monotonic(),
                        keys={x.name: x.key for x in specs})
            self.writer.submit(SessionOpen(sid, url, orjson.dumps(list(streams)).decode(), now_us(), g.market.value))
            self.metrics.add_streams(s.keys.values())
            self.silence.subscribed(specs, now_us())  # the handshake acknowledges the URL's streams
            self.metrics.connected += 1
            log.info("session %d connected: %d %s stream(s)", sid, len(streams), g.market.value)
            s.task = asyncio.create_task(self._read(s))
            self._open_sessions.add(s)
            s.task.add_done_callback(lambda _t: self._open_sessions.discard(s))
            g.session = s
            if len(streams) == len(g.streams):
                s.complete.set()
            g.dirty.set()  # the streams may have changed while connecting, or did not fit the URL
            return s

    async def _close_session(self, s: Session, reason: str) -> None:
        if s.close_reason is None:
            s.close_reason = reason
        with contextlib.suppress(Exception):
            await s.ws.close()
        if s.task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(s.task, CLOSE_TIMEOUT)

    async def _read(self, s: Session) -> None:
        submit = self.writer.submit
        decoder = s.decoder
        peek = decoder.peek_stream
        last = self.metrics.last_message_us
        keys = s.keys
        sid = s.session_id
        heard = self.silence.message
        watchdog = asyncio.create_task(self._watch_stall(s))
        try:
            async for raw in s.ws:
                t = time.time_ns() // 1000
                s.last_frame_mono = time.monotonic()
                name = peek(raw)
                if name is not None:
                    submit(Frame(raw, t, sid, s.seq))
                    s.seq += 1
                    last[key := keys[name]] = t
                    heard(key, t, raw)
                    s.data_frames += 1
                    if s.data_frames == 1:
                        s.first_data.set()
                else:
                    self._slow_path(s, decoder, raw, t)
                self.metrics.frames += 1
            reason = f"closed by server: code {s.ws.close_code} {s.ws.close_reason or ''}".strip()
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            reason = f"connection lost (code {code or 1006}: {exc.rcvd.reason if exc.rcvd else 'no close frame'})"
        except Exception as exc:  # never let one connection's surprise kill the collector
            log.exception("session %d reader failed", sid)
            reason = f"reader error: {type(exc).__name__}: {exc}"
        finally:
            watchdog.cancel()
            self.metrics.connected -= 1
            self.silence.unsubscribed([keys[n] for n in s.streams if n in keys], now_us())
        final = s.close_reason or reason
        log.info("session %d ended: %s", sid, final)
        submit(SessionClose(sid, now_us(), final))

    def _slow_path(self, s: Session, decoder: Decoder, raw: str | bytes, t: int) -> None:
        decoded = decoder.decode(raw, t, s.session_id, s.seq)
        if type(decoded) is ServerShutdown:
            log.warning("session %d: serverShutdown received; rotating now", s.session_id)
            self._event(s.session_id, EventKind.SERVER_SHUTDOWN, raw if isinstance(raw, str) else None)
            s.shutdown_notice.set()
        elif type(decoded) is ControlReply:
            fut = s.pending.pop(decoded.id, None) if type(decoded.id) is int else None
            if fut is not None and not fut.done():
                fut.set_result(decoded)
            else:
                log.info("session %d: control reply %r", s.session_id, decoded)
        elif type(decoded) is Quarantined or type(decoded) in ROW_TABLES:
            # Valid data written with another key order is handed over decoded: decoded once.
            self.writer.submit(decoded)
            if type(decoded) is not Quarantined:
                self.silence.message(decoded.stream, t, raw)
            s.seq += 1
            if type(decoded) is Quarantined and s.pending:
                self._control_error(s, raw)

    def _control_error(self, s: Session, raw: str | bytes) -> None:
        """An error reply to one of our control requests fails its waiter (it is quarantined as well)."""
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        if isinstance(msg, dict) and "error" in msg:
            fut = s.pending.pop(msg.get("id"), None) if type(msg.get("id")) is int else None
            if fut is not None and not fut.done():
                fut.set_result(ControlReply(msg["id"], None, msg["error"]))

    async def _watch_stall(self, s: Session) -> None:
        """Reconnect when a session goes silent for many cadences (Binance pushes on a timer)."""
        while True:
            # Only timer-driven streams (depth) must speak; trades and bookTicker may rightly be
            # quiet for long, and the keepalive pings watch the connection itself.
            cadences = [x.cadence_us for x in s.streams.values() if x.cadence_us]
            limit = max(5.0, self.settings.stall_cadences * min(cadences) / 1e6) if cadences else 5.0
            await asyncio.sleep(limit / 5)
            if not cadences:
                continue
            silent = time.monotonic() - s.last_frame_mono
            if silent > limit:
                log.warning("session %d: no frame for %.1f s; reconnecting", s.session_id, silent)
                self._event(s.session_id, EventKind.STALL, f"no frame for {silent:.1f} s")
                s.close_reason = f"stalled: no frame for {silent:.1f} s"
                await s.ws.close(1001, "stalled")
                return



def _host_port(url: str) -> str:
    parsed = urlparse(url)
    return f"{parsed.hostname}:{parsed.port or (443 if parsed.scheme == 'wss' else 80)}"


def _hint(exc: BaseException) -> str:
    """What a newcomer can do about a failure to reach the exchange (said on the 1st and 10th failure)."""
    if isinstance(exc, socket.gaierror):
        return (" — the name does not resolve: no network or DNS here? "
                "Without access to Binance, `make demo` records from the local simulated exchange")
    if isinstance(exc, OSError):
        return " — without access to Binance, `make demo` records from the local simulated exchange"
    return ""
