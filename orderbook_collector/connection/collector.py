"""The collector: supervision of one recording process (the I/O shell's top).

:class:`Collector` owns the buffer's lock and the writer thread, starts a connection group per
market, route and stream limit (:mod:`.sessions`: connections, sessions, rotation, the hot
read path), follows ``*`` listings on the live connections (:mod:`.subscriptions`), keeps the
diff streams' REST snapshots coming (:mod:`.snapshots`), watches event-loop lag and silent
subscriptions, serves the metrics, and on stop drains everything into the buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import sys
import time

from orderbook_core import buffer
from orderbook_core.buffer.lock import BufferLock
from orderbook_core.buffer.records import Event, EventKind, SilenceRecord
from orderbook_core.errors import ConfigError
from orderbook_core.streams import Market
from orderbook_collector import metrics as metrics_mod
from orderbook_collector.config import Settings
from orderbook_collector.connection.open_interest import OpenInterestPoller
from orderbook_collector.connection.rest import RestClient, Resyncer
from orderbook_collector.connection.sessions import Group, Session, Sessions, now_us
from orderbook_collector.connection.snapshots import Snapshots
from orderbook_collector.connection.subscriptions import Subscriptions
from orderbook_collector.feed.silence import Reason as SilenceReason, Resumed, Silence
from orderbook_collector.feed.symbols import AttemptLimiter
from orderbook_collector.metrics import Metrics
from orderbook_collector.writer.thread import Writer

log = logging.getLogger(__name__)

#: Seconds between two judgements of the silence detector (well under its shortest threshold).
SILENCE_TICK = 0.5










class Collector(Sessions, Subscriptions, Snapshots):
    """Runs connection groups until :meth:`stop`; owns the writer thread. Its concerns live in
    their own modules: sessions (:class:`~.sessions.Sessions`), ``*`` and live subscriptions
    (:class:`~.subscriptions.Subscriptions`), REST snapshots (:class:`~.snapshots.Snapshots`).

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
        self.oi_pollers: dict[Market, OpenInterestPoller] = {}
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
        self._start_open_interest()
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
            for p in self.oi_pollers.values():
                await p.stop()
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

    # Start-up and watching ------------------------------------------------------------------

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

    def _event(self, session_id: int | None, kind: EventKind, detail: str | None) -> None:
        self.writer.submit(Event(now_us(), session_id, None, kind.value, detail))

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)






def check_startable(settings: Settings) -> None:
    """Fail before connecting if the buffer cannot be opened as required."""
    try:
        conn = buffer.connect(settings.buffer, synchronous=settings.synchronous)
        conn.close()
    except Exception as exc:
        raise ConfigError("ORDERBOOK_BUFFER", f"{settings.buffer} cannot be used as the buffer ({exc}); choose another path.") from exc
