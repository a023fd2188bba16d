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
from websockets.exceptions import ConnectionClosed

from orderbook_collector import buffer
from orderbook_collector.buffer.lock import BufferLock

from orderbook_collector import metrics as metrics_mod
from orderbook_collector.config import Settings
from orderbook_collector.errors import ConfigError
from orderbook_collector.metrics import Metrics
from orderbook_collector.feed.protocol import ControlReply, Decoder, Quarantined, ServerShutdown, StreamSpec, raw_bytes
from orderbook_collector.connection.backoff import classify, full_jitter
from orderbook_collector.connection.rest import RestClient, Resyncer
from orderbook_collector.feed.streams import Kind, Market
from orderbook_collector.feed.sync import SnapshotRequest
from orderbook_collector.buffer.records import DepthRecord, Event, Frame, SessionClose, SessionOpen
from orderbook_collector.writer.thread import Writer

log = logging.getLogger(__name__)

#: WebSocket frames above this close the connection (1009); our own, lower limit quarantines.
WS_MAX_SIZE = 16 << 20
OPEN_TIMEOUT = 10.0
CLOSE_TIMEOUT = 5.0
PING_INTERVAL = 20.0
PING_TIMEOUT = 20.0


def now_us() -> int:
    return time.time_ns() // 1000


class SessionOutcome(enum.Enum):
    """Why waiting on a session returned; the value is what the events and close reasons say."""

    ENDED = "ended"
    SERVER_SHUTDOWN = "serverShutdown"
    STOPPING = "stopping"
    ROTATION = "rotation"


@dataclass(eq=False)
class Session:
    """One WebSocket connection and its bookkeeping."""

    session_id: int
    ws: ClientConnection
    streams: list[StreamSpec]
    opened_mono: float
    seq: int = 0
    data_frames: int = 0
    last_frame_mono: float = 0.0
    close_reason: str | None = None
    shutdown_notice: asyncio.Event = field(default_factory=asyncio.Event)
    first_data: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None


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
        self.metrics.add_streams(s.name for s in settings.stream_specs())
        # Before the writer: opening the spill folder truncates torn segment tails, which
        # would cut into the segment another live collector is writing.
        self.lock = BufferLock.acquire(settings.buffer)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.resyncers: dict[Market, Resyncer] = {}
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
        self.metrics_server: asyncio.Server | None = None
        self.fatal: str | None = None

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
        groups = [asyncio.create_task(self._run_group(g)) for g in self.settings.connection_groups()]
        try:
            await self._stopping.wait()
        finally:
            for t in groups:
                t.cancel()
            await asyncio.gather(*groups, return_exceptions=True)
            lag.cancel()
            for r in self.resyncers.values():
                await r.stop()
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

    def _start_resyncers(self) -> None:
        """One REST client and resync queue per market with diff streams."""
        s = self.settings
        for market in Market:
            diff = [x for x in s.stream_specs() if x.type is Kind.DIFF_DEPTH and x.market is market]
            if not diff:
                continue
            client = RestClient(market, s.rest_base_url(market), s.rest_weight_share,
                                budget=(s.rest_weight_budget or {}).get(market), window=s.rest_weight_window,
                                concurrency=s.rest_concurrency, metrics=self.metrics)
            self.resyncers[market] = r = Resyncer(client, diff, self.writer.submit, s.snapshot_limit(market))
            self._resyncer_of.update((x.key, r) for x in diff)
            r.start()

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
                r.request(req.stream, req.reason)

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

    async def _run_group(self, streams: list[StreamSpec]) -> None:
        current: Session | None = None
        opened = False  # a connection of this group was open before: the next one is a reconnect
        delays = full_jitter(self.settings.backoff_initial, self.settings.backoff_max)
        try:
            while not self._stopping.is_set():
                if current is None:
                    current = await self._open_with_retry(streams, delays)
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
                current = await self._rotate(current, streams, delays, reason)
        finally:
            # Includes a replacement opened by a rotation that the stop interrupted.
            for s in [x for x in self._open_sessions if x.streams is streams]:
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

    async def _rotate(self, old: Session, streams: list[StreamSpec], delays, why: SessionOutcome) -> Session | None:
        if why is SessionOutcome.STOPPING:
            return old  # the finally block of _run_group closes it
        self.metrics.rotations += 1
        log.info("rotating session %d (%s): opening the replacement first", old.session_id, why.value)
        self._event(old.session_id, "rotation_start", why.value)
        new = await self._open_with_retry(streams, delays)
        if new is None:
            return old
        # Overlap until the new connection delivers data (or a bounded time), so no
        # message falls between the two; duplicates are removed by the dedup key.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(new.first_data.wait(), self.settings.rotate_overlap)
        await asyncio.sleep(min(1.0, self.settings.rotate_overlap))
        await self._close_session(old, f"rotated ({why.value})")
        self._event(new.session_id, "rotation_end", f"replaced session {old.session_id}")
        return new

    async def _open_with_retry(self, streams: list[StreamSpec], delays) -> Session | None:
        failures = 0
        while not self._stopping.is_set():
            try:
                return await self._open(streams)
            except Exception as exc:
                decision = classify(exc)
                if not decision.retry:
                    self.fatal = decision.reason
                    log.error("cannot connect to %s: %s; stopping", self.settings.ws_url, decision.reason)
                    self.stop(decision.reason)
                    return None
                delay = max(next(delays), decision.min_delay)
                self.metrics.connect_failures += 1
                failures += 1
                log.warning("cannot connect to %s (%s); retrying in %.2f s%s", _host_port(self.settings.ws_url),
                            decision.reason, delay, _hint(exc) if failures in (1, 10) or failures % 100 == 0 else "")
                await self._sleep(delay)
        return None

    async def _open(self, streams: list[StreamSpec]) -> Session:
        url = f"{self.settings.ws_url}/stream?streams=" + "/".join(s.name for s in streams)
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
        s = Session(sid, ws, streams, time.monotonic(), last_frame_mono=time.monotonic())
        self.writer.submit(SessionOpen(sid, url, orjson.dumps([x.name for x in streams]).decode(), now_us()))
        self.metrics.connected += 1
        log.info("session %d connected: %d stream(s)", sid, len(streams))
        s.task = asyncio.create_task(self._read(s, Decoder(streams)))
        self._open_sessions.add(s)
        s.task.add_done_callback(lambda _t: self._open_sessions.discard(s))
        return s

    async def _close_session(self, s: Session, reason: str) -> None:
        if s.close_reason is None:
            s.close_reason = reason
        with contextlib.suppress(Exception):
            await s.ws.close()
        if s.task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(s.task, CLOSE_TIMEOUT)

    # The hot path -------------------------------------------------------------------------

    async def _read(self, s: Session, decoder: Decoder) -> None:
        submit = self.writer.submit
        peek = decoder.peek_stream
        last = self.metrics.last_message_us
        sid = s.session_id
        watchdog = asyncio.create_task(self._watch_stall(s))
        try:
            async for raw in s.ws:
                t = time.time_ns() // 1000
                s.last_frame_mono = time.monotonic()
                name = peek(raw)
                if name is not None:
                    submit(Frame(raw, t, sid, s.seq))
                    s.seq += 1
                    last[name] = t
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
            log.info("session %d: control reply %r", s.session_id, decoded)
        elif type(decoded) in (Quarantined, DepthRecord):
            # Valid data written with another key order is handed over decoded: decoded once.
            self.writer.submit(decoded)
            s.seq += 1

    async def _watch_stall(self, s: Session) -> None:
        """Reconnect when a session goes silent for many cadences (Binance pushes on a timer)."""
        limit = max(5.0, self.settings.stall_cadences * min(x.cadence_us for x in s.streams) / 1e6)
        while True:
            await asyncio.sleep(limit / 5)
            silent = time.monotonic() - s.last_frame_mono
            if silent > limit:
                log.warning("session %d: no frame for %.1f s; reconnecting", s.session_id, silent)
                self._event(s.session_id, "stall", f"no frame for {silent:.1f} s")
                s.close_reason = f"stalled: no frame for {silent:.1f} s"
                await s.ws.close(1001, "stalled")
                return

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
