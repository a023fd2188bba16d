"""The I/O shell: WebSocket connections, sessions, rotation, shutdown.

Per frame the event loop does as little as it can: stamp the receive time,
give the frame its session ``seq``, and hand it to the writer thread without
waiting. Parsing and SQLite happen in the writer thread, so the loop stays free
to answer pings (a blocked loop is what "1011 keepalive ping timeout" means).

Each connection is a *session* with its own id (its opening time in µs) and seq
counter. Sessions are recorded in the buffer as they open and close, so every
outage is visible as data. Rotation is make-before-break: the replacement
connection is opened and receiving before the old one is closed; the dedup key
removes the overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import logging
import signal
import socket
import sys
import time
from urllib.parse import urlparse
from dataclasses import dataclass, field

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from orderbook_core import buffer
from orderbook_core.buffer.lock import BufferLock

from orderbook_collector import metrics as metrics_mod
from orderbook_collector.config import Settings
from orderbook_core.errors import ConfigError
from orderbook_collector.metrics import Metrics
from orderbook_collector.feed.protocol import ControlReply, Decoder, Quarantined, ServerShutdown, StreamSpec, raw_bytes
from orderbook_core.streams import USDM_ROUTE, Market, spec as stream_spec, stream_kind
from orderbook_collector.feed.symbols import (
    AttemptLimiter,
    ControlPacer,
    control_batches,
    control_message,
    plan_changes,
    url_streams,
)
from orderbook_collector.connection.backoff import classify, full_jitter
from orderbook_collector.connection.rest import RestClient, Resyncer
from orderbook_collector.connection.symbols import ExchangeInfoError, RestError, fetch_trading_symbols
from orderbook_core.streams import Kind, Market
from orderbook_collector.feed.sync import SnapshotRequest
from orderbook_core.buffer.records import (DepthRecord, Event, Frame, SessionClose, SessionOpen, SessionStreams,
                                           SilenceRecord)
from orderbook_collector.feed.silence import Reason as SilenceReason, Resumed, Silence
from orderbook_core.buffer.rows import ROW_TABLES
from orderbook_collector.writer.thread import Writer

log = logging.getLogger(__name__)

#: WebSocket frames above this close the connection (1009); our own, lower limit quarantines.
WS_MAX_SIZE = 16 << 20
OPEN_TIMEOUT = 10.0
CLOSE_TIMEOUT = 5.0
PING_INTERVAL = 20.0
PING_TIMEOUT = 20.0
#: Seconds to wait for the reply to a SUBSCRIBE or UNSUBSCRIBE before giving it up.
CONTROL_TIMEOUT = 10.0
#: Seconds between two judgements of the silence detector (well under its shortest threshold).
SILENCE_TICK = 0.5


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


class Collector:
    """Runs connection groups until :meth:`stop`; owns the writer thread.

    Holds the buffer's single-instance lock from construction until :meth:`run` returns.

    Args:
        settings: validated settings.
        metrics: where counters go (a fresh one by default).
        writer_options: extra keyword arguments for :class:`~.writer.Writer` (tests).

    Raises:
        BufferInUse: another collector holds the buffer (the message names its PID and host).
    """

    def __init__(self, settings: Settings, metrics: Metrics | None = None, **writer_options) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.metrics.add_streams(s.key for s in settings.stream_specs())
        # Before the writer: opening the spill folder truncates torn segment tails, which
        # would cut into the segment another live collector is writing.
        self.lock = BufferLock.acquire(settings.buffer)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.resyncers: dict[Market, Resyncer] = {}
        self.rest_clients: dict[Market, RestClient] = {}
        self._resyncer_of: dict[str, Resyncer] = {}  # diff stream key -> its market's resyncer
        writer_options.setdefault("on_snapshot_needed", self._snapshot_needed)
        try:
            self.writer = Writer(
                settings.buffer,
                settings.stream_specs(),
                metrics=self.metrics,
                synchronous=settings.synchronous,
                queue_size=settings.queue_size,
                max_batch=settings.max_batch,
                commit_interval=settings.commit_interval,
                **writer_options,
            )
        except BaseException:
            self.lock.release()
            raise
        self._stopping = asyncio.Event()
        self._last_session_id = 0
        self._open_sessions: set[Session] = set()
        self.groups: list[Group] = []
        #: Binance counts connection attempts per IP: one limiter per market's servers.
        self.attempts = {m: AttemptLimiter() for m in Market}
        self.opened_urls: list[str] = []  # every URL a connection was opened with, in order
        self._request_id = 0
        self.metrics_server: asyncio.Server | None = None
        self.fatal: str | None = None
        #: Fed on receive and on every (un)subscription; _watch_silence records what it finds.
        self.silence = Silence(settings.silence_rules())
        for r in SilenceReason:  # every reason's series from the start
            self.metrics.silent_events.setdefault(r.value, 0)

    # Public ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Collect until stopped; then drain everything into the buffer."""
        # The writer thread decodes in Python; with the default 5 ms GIL switch
        # interval the loop could wait that long for every hand-back, twice per
        # scheduling round. 1 ms keeps receive stamps and pongs prompt.
        sys.setswitchinterval(0.001)
        try:
            self._prepare_buffer()
            await self._run_locked()
        finally:
            self.lock.release()

    async def _run_locked(self) -> None:
        if self.settings.metrics_port >= 0:
            self.metrics_server = await self._serve_metrics()
        self._loop = asyncio.get_running_loop()
        self._start_resyncers()  # before the writer: its first commits may already ask for snapshots
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.writer.start)
        except BaseException:
            for r in self.resyncers.values():
                await r.stop()
            raise
        lag = asyncio.create_task(self._watch_loop_lag())
        quiet = asyncio.create_task(self._watch_silence())
        for specs in self.settings.connection_groups():
            self._start_group(specs[0].market, specs[0].route, specs)
        followers = [asyncio.create_task(self._follow_symbols(m))
                     for m in self.settings.markets() if self.settings.all_symbols_kinds(m)]
        try:
            await self._stopping.wait()
        finally:
            for t in followers:
                t.cancel()
            tasks = [t for g in self.groups for t in g.tasks]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*followers, *tasks, return_exceptions=True)
            lag.cancel()
            quiet.cancel()
            self._record_silence()  # the closed sessions ended every open silence
            for r in self.resyncers.values():
                await r.stop()
            for client in self.rest_clients.values():
                client.close()
            if self.metrics_server is not None:
                self.metrics_server.close()
            log.info("draining the writer queue and spill")
            done = await asyncio.get_running_loop().run_in_executor(None, self.writer.stop, 60.0)
            if not done:
                log.error("writer did not finish within 60 s; what is spilled on disk is replayed at the next start")

    async def _serve_metrics(self) -> asyncio.Server:
        host, port = self.settings.metrics_host, self.settings.metrics_port
        try:
            server = await metrics_mod.serve(self.metrics, host, port, self.settings.buffer)
        except OSError as exc:
            # A host that does not resolve or is not ours is the host's fault; anything else the port's.
            bad_host = isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL
            setting = "ORDERBOOK_METRICS_HOST" if bad_host else "ORDERBOOK_METRICS_PORT"
            why = "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc.strerror or exc})"
            fix = "use an address of this machine such as 127.0.0.1" if bad_host else \
                "choose a free port, 0 for any free port, or -1 to turn metrics off"
            raise ConfigError(setting, f"the metrics address {host}:{port} {why}; {fix}.") from exc
        bound = server.sockets[0].getsockname()[1]
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return server

    def stop(self, reason: str = "stop requested") -> None:
        if not self._stopping.is_set():
            log.info("stopping: %s", reason)
            self._stopping.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop, f"signal {sig.name}")

    # Diff-depth resync ------------------------------------------------------------------

    def _rest_client(self, market: Market) -> RestClient:
        """The market's one REST client: depth snapshots and exchangeInfo share its weight budget."""
        client = self.rest_clients.get(market)
        if client is None:
            s = self.settings
            client = self.rest_clients[market] = RestClient(
                market, s.rest_base(market), s.rest_weight_share,
                budget=(s.rest_weight_budget or {}).get(market), window=s.rest_weight_window,
                concurrency=s.rest_concurrency, metrics=self.metrics)
        return client

    def _start_resyncers(self) -> None:
        """One resync queue per market with diff streams, named or to come from ``*``."""
        s = self.settings
        for market in Market:
            diff = [x for x in s.stream_specs() if x.type is Kind.DIFF_DEPTH and x.market is market]
            star = any(stream_kind(k, market).type is Kind.DIFF_DEPTH for k in s.all_symbols_kinds(market))
            if not diff and not star:
                continue
            self.resyncers[market] = r = Resyncer(self._rest_client(market), diff, self.writer.submit,
                                                  s.snapshot_limit(market), rebase_seconds=s.rebase_seconds)
            self._resyncer_of.update((x.key, r) for x in diff)
            r.start()

    def _resync_streams(self, market: Market, specs) -> None:
        """The market's diff streams now (``*`` follows listings): resynced and re-based like the named ones."""
        r = self.resyncers.get(market)
        if r is not None:
            diff = [x for x in specs if x.type is Kind.DIFF_DEPTH]
            r.set_streams(diff)
            self._resyncer_of.update((x.key, r) for x in diff)

    def _snapshot_needed(self, requests: list[SnapshotRequest]) -> None:
        """Called in the writer thread after a commit: streams that broke (a reconnect's first
        event, a gap) or whose snapshot could not sync them. Handed to the loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing: the next start asks again
            loop.call_soon_threadsafe(self._resync, requests)

    def _resync(self, requests: list[SnapshotRequest]) -> None:
        for req in requests:
            r = self._resyncer_of.get(req.stream)
            if r is not None:
                r.request(req.stream, req.reason, req.repair)

    # Start-up ---------------------------------------------------------------------------

    def _prepare_buffer(self) -> None:
        """Close sessions a crash left open, before the writer thread takes the connection.

        Only with the buffer's lock held (taken in ``__init__``): another live collector's
        sessions are live, not orphans.
        """
        conn = buffer.connect(self.settings.buffer, synchronous=self.settings.synchronous)
        try:
            n = buffer.close_orphan_sessions(conn)
            if n:
                log.warning("closed %d session(s) left open by a previous crash", n)
            self._last_session_id = buffer.next_session_id(conn, 0) - 1
        finally:
            conn.close()

    # Connection groups ----------------------------------------------------------------------

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
        self._event(old.session_id, "rotation_start", why.value)
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
        self._event(new.session_id, "rotation_end", f"replaced session {old.session_id}")
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

    # ``*``: following a market's listings on the live connections ------------------------

    async def _follow_symbols(self, market: Market) -> None:
        """Read exchangeInfo now and every ``symbols_refresh`` seconds; apply what changed."""
        delays = full_jitter(self.settings.backoff_initial * 10, self.settings.symbols_refresh)
        failures = 0
        while not self._stopping.is_set():
            try:
                found = await fetch_trading_symbols(self._rest_client(market))
            except (RestError, ExchangeInfoError) as exc:
                failures += 1
                delay = next(delays)  # a 429/418's Retry-After already pauses the market's REST client
                log.warning("%s exchangeInfo failed (%s); the current symbols stay, retrying in %.1f s",
                            market.value, exc, delay)
                if failures == 1:
                    self._event(None, "symbols_failed", f"{market.value}: {exc}")
                await self._sleep(delay)
                continue
            failures = 0
            delays = full_jitter(self.settings.backoff_initial * 10, self.settings.symbols_refresh)
            if found.skipped:
                log.info("%s: %d trading symbol(s) cannot be stream names and are left out, e.g. %s",
                         market.value, len(found.skipped), found.skipped[0])
            self.apply_symbols(market, found.symbols)
            await self._sleep(self.settings.symbols_refresh)

    def apply_symbols(self, market: Market, symbols: frozenset[str]) -> None:
        """Make ``market``'s groups carry the named streams plus every kind of ``*`` for ``symbols``.

        Synchronous: the groups' wanted streams change at once (so the next plan starts from
        them); each group's reconciler then sends the control messages, and new groups open.
        """
        kinds = self.settings.all_symbols_kinds(market)
        wanted = {s.name: s for s in self.settings.stream_specs() if s.market is market}
        for sym in sorted(symbols):
            for k in kinds:
                sp = stream_spec(sym, k, market)
                if sp is not None:
                    wanted.setdefault(sp.name, sp)
        self._resync_streams(market, wanted.values())
        routes = [None] if market is Market.SPOT else sorted(set(USDM_ROUTE.values()))
        for route in routes:
            groups = [g for g in self.groups if g.market is market and g.route == route]
            names = [n for n, sp in wanted.items() if sp.route == route]
            plan = plan_changes([list(g.streams) for g in groups], names, self.settings.max_streams(market))
            for i, gone in plan.unsubscribe.items():
                for n in gone:
                    del groups[i].streams[n]
            for i, added in plan.subscribe.items():
                groups[i].streams.update((n, wanted[n]) for n in added)
            for g in groups:  # in sync: a no-op; else it retries what a refused request left undone
                g.dirty.set()
            for names_new in plan.new:
                self._start_group(market, route, [wanted[n] for n in names_new])
            if not plan.empty:
                log.info("%s%s: %d stream(s) to subscribe, %d to unsubscribe, %d new connection(s)",
                         market.value, f"/{route}" if route else "", sum(map(len, plan.subscribe.values())),
                         sum(map(len, plan.unsubscribe.values())), len(plan.new))

    async def _reconcile(self, g: Group) -> None:
        """Bring the group's live session to the group's streams with SUBSCRIBE and UNSUBSCRIBE."""
        while True:
            await g.dirty.wait()
            g.dirty.clear()
            async with g.lock:
                s = g.session
                if s is None or s.task is None or s.task.done():
                    continue  # the next session opens with the group's streams
                gone = [n for n in s.streams if n not in g.streams]
                added = [g.streams[n] for n in g.streams if n not in s.streams]
                if gone:
                    await self._control(s, "UNSUBSCRIBE", gone, [])
                # Paced requests of a bounded size: a URL's worth of names each.
                specs = {x.name: x for x in added}  # g.streams may change while we wait on replies
                for names in control_batches(list(specs)):
                    await self._control(s, "SUBSCRIBE", names, [specs[n] for n in names])
                if set(s.streams) >= set(g.streams):
                    s.complete.set()
                elif added:  # a request was refused or unanswered: the streams are still wanted
                    asyncio.get_running_loop().call_later(CONTROL_TIMEOUT, g.dirty.set)

    async def _control(self, s: Session, method: str, names: list[str], specs: list[StreamSpec]) -> None:
        """Send one control request on ``s`` (paced), wait for its reply, record the change as events."""
        if specs:
            # Frames may follow the reply at once: the reader and the writer must know the streams first.
            s.decoder.add_streams(specs)
            s.keys.update((x.name, x.key) for x in specs)
            self.metrics.add_streams(x.key for x in specs)
            self.writer.submit(SessionStreams(s.session_id, now_us(), orjson.dumps(names).decode()))
        loop = asyncio.get_running_loop()
        wait = s.pacer.delay(loop.time())
        if wait > 0:
            await asyncio.sleep(wait)
        self._request_id += 1
        rid = self._request_id
        fut = s.pending[rid] = loop.create_future()
        kind = method.lower()
        try:
            s.pacer.record(loop.time())
            await s.ws.send(control_message(method, names, rid))
            reply = await asyncio.wait_for(fut, CONTROL_TIMEOUT)
        except (asyncio.TimeoutError, ConnectionClosed) as exc:
            reply = ControlReply(rid, None, {"msg": f"no reply ({type(exc).__name__})"})
        finally:
            s.pending.pop(rid, None)
        t = now_us()
        if reply.error is not None:
            log.warning("session %d: %s of %d stream(s) failed: %s", s.session_id, method, len(names), reply.error)
            self._event(s.session_id, f"{kind}_failed", f"request {rid}: {orjson.dumps(reply.error).decode()}")
            return
        for n in names:
            self.writer.submit(Event(t, s.session_id, s.keys.get(n, n), kind, f"request {rid}"))
        if method == "SUBSCRIBE":
            s.streams.update((x.name, x) for x in specs)
            self.silence.subscribed(specs, t)
        else:
            self.silence.unsubscribed([s.keys.get(n, n) for n in names if n in s.streams], t)
            for n in names:
                s.streams.pop(n, None)
                # An unsubscribed stream has no age to report (it would look ever staler).
                self.metrics.last_message_us.pop(s.keys.get(n, n), None)
        log.info("session %d: %s %d stream(s)", s.session_id, kind, len(names))

    async def _close_session(self, s: Session, reason: str) -> None:
        if s.close_reason is None:
            s.close_reason = reason
        with contextlib.suppress(Exception):
            await s.ws.close()
        if s.task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(s.task, CLOSE_TIMEOUT)

    # The hot path -------------------------------------------------------------------------

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
            self._event(s.session_id, "server_shutdown", raw if isinstance(raw, str) else None)
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
                self._event(s.session_id, "stall", f"no frame for {silent:.1f} s")
                s.close_reason = f"stalled: no frame for {silent:.1f} s"
                await s.ws.close(1001, "stalled")
                return

    async def _watch_silence(self) -> None:
        while True:
            await asyncio.sleep(SILENCE_TICK)
            try:
                self._record_silence()
            except Exception:  # a surprise here must not end the watching for good
                log.exception("judging silent subscriptions failed; trying again at the next tick")

    def _record_silence(self) -> None:
        """Ask the detector what is due; each silence and its end becomes a buffer row."""
        for ev in self.silence.due(now_us()):
            if type(ev) is Resumed:
                log.info("%s speaks again after %.1f s of silence (%s; %s)", ev.stream,
                         (ev.at_us - ev.since_us) / 1e6, ev.reason.value, ev.end.value)
                self.writer.submit(SilenceRecord(ev.stream, ev.at_us, "resumed", ev.since_us, ev.at_us,
                                                 ev.reason.value, ev.end.value))
            else:
                log.warning("%s is silent since %.1f s (%s)", ev.stream, (ev.at_us - ev.since_us) / 1e6,
                            ev.reason.value)
                self.metrics.silent_events[ev.reason.value] += 1
                self.writer.submit(SilenceRecord(ev.stream, ev.at_us, "silent", ev.since_us, None,
                                                 ev.reason.value, None))
        self.metrics.silent_streams = len(self.silence.silent)

    async def _watch_loop_lag(self, interval: float = 0.05) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(interval)
            lag = max(time.perf_counter() - t0 - interval, 0.0)
            self.metrics.loop_lag.observe(lag)
            if self.metrics.loop_lag_samples is not None:
                self.metrics.loop_lag_samples.append(lag)
            self.metrics.queue_depth = self.writer.queue.qsize()

    def _event(self, session_id: int | None, kind: str, detail: str | None) -> None:
        self.writer.submit(Event(now_us(), session_id, None, kind, detail))

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)


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


def check_startable(settings: Settings) -> None:
    """Fail before connecting if the buffer cannot be opened as required."""
    try:
        conn = buffer.connect(settings.buffer, synchronous=settings.synchronous)
        conn.close()
    except Exception as exc:
        raise ConfigError("ORDERBOOK_BUFFER", f"{settings.buffer} cannot be used as the buffer ({exc}); choose another path.") from exc
