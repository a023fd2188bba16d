"""REST under Binance's weight budget, and the diff-depth resync queue that uses it.

:class:`WeightBudget` (sans-I/O, the clock is passed in) decides when a request of a
given weight may go: the IP's count in the exchange's window (``X-MBX-USED-WEIGHT-1M`` of the
last answer, ours and others' alike) plus every request of ours it may not hold yet (in flight
when that request went, or sent since) must stay within ``share`` of the market's budget
(``REST_WEIGHT_PER_MINUTE``), and so must our own weight in any sliding window. Weight is
spent (reserved) before a request goes, so requests in flight together never pass the limit
between them. With no count to trust (at start, a window after the last answer, after a 429's
pause) one request goes alone to learn it. A 429 or 418 pauses every request of the market
for its ``Retry-After`` (the longest one seen), including requests already admitted whose
worker thread has not sent them yet.

:class:`RestClient` is one market's client: ``await get_json(path, params, weight)``,
bounded concurrency, requests (a pooled ``requests.Session`` per thread) in worker threads so the
event loop never waits on the network. Anything else that calls Binance's REST API for
this market (``exchangeInfo``) should go through the same client, so one budget counts it.

:class:`Resyncer` holds at most one pending snapshot request per diff stream and fetches
them as the budget allows: a storm of hundreds of streams after a reconnect is spread
over the budget instead of tripping a ban. Repairs (a broken stream) go first, then the
fresh base of a new session, then the periodic re-bases, which the sans-I/O schedule
(feed/rebase.py) spreads over time within half the market's weight share. Each answer is
decoded by the kernel (:func:`orderbook_core.payloads.decode_rest_depth`, the WebSocket's
level validation) into a :class:`DepthRestSnapshotRecord` handed to the writer, which stores
it and decides (feed.sync) whether it syncs the stream or another one is needed. An answer
the kernel refuses goes to the quarantine with its body and reason instead, and is asked for
again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import threading
import time
from collections import deque
from typing import Callable, NamedTuple

import orjson
import requests

from orderbook_core.buffer.records import REST_SESSION, DepthRestSnapshotRecord, Quarantined
from orderbook_core.errors import FrameError
from orderbook_core.payloads import decode_rest_depth
from orderbook_core.streams import DEPTH_PATH, REST_WEIGHT_PER_MINUTE, Market, StreamSpec, depth_weight
from orderbook_collector.feed.rebase import (
    REBASE_MIN_SECONDS, REBASE_SHARE, Priority, RebasePlan, RebaseSchedule, SnapshotQueue, plan,
)
from orderbook_collector.feed.sync import SyncReason
from orderbook_collector.metrics import Metrics

log = logging.getLogger(__name__)

USED_WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
#: Pause when a 429/418 carries no usable Retry-After.
DEFAULT_RETRY_AFTER = 60.0
#: 429/418 answers one get_json call sits out (pausing each time) before it gives up.
MAX_RATE_LIMITED = 3
RETRY_DELAY = 1.0  # a failed snapshot is asked again after this (doubling, capped)
RETRY_DELAY_MAX = 30.0


class RestError(Exception):
    """A REST call failed: ``status`` is the HTTP status, None for a network error."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status


class Sent(NamedTuple):
    """One request sent, as the budget needs it to read the count its answer carries."""

    weight: int
    before: int  # our weight sent before it (a running total)
    in_flight: int  # our weight in flight when it went: the exchange may count it after this one


class WeightBudget:
    """When may a request of some weight go? (sans-I/O; ``now`` is ``time.monotonic()``)

    The exchange's count (``X-MBX-USED-WEIGHT-1M`` of the last answer) is the IP's weight in its
    current window, ours and others' alike. It does not hold our requests that were in flight
    when that request went, nor those sent since: those are added on top (counted twice at
    worst, never missed), so requests in flight together never pass the limit between them.
    A count is trusted for a window after its answer (the exchange's window has ended by then),
    less if a 429 said when the window ends. Without a count (at start, a window after the last
    answer, after a 429's pause) one request goes alone to learn it: a request that meets a 429
    then has nothing else in flight to arrive inside the 429's Retry-After (a ban).

    Args:
        limit: the weight per window we allow ourselves (share × the market's budget).
        window: Binance's window in seconds (a minute).
    """

    def __init__(self, limit: int, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self._spent: deque[tuple[float, int]] = deque()  # (time, weight) of our requests in the last window
        self._own = 0  # sum of _spent
        self._sent = 0  # our weight ever sent: the running total Sent.before reads
        self._in_flight = 0  # our weight sent and not answered yet
        self._count_base = 0  # the last count, less the running total it already covers (see count)
        self._count_until = 0.0  # when that count stops being trusted
        self.paused_until = 0.0

    def _expire(self, now: float) -> None:
        while self._spent and self._spent[0][0] <= now - self.window:
            self._own -= self._spent.popleft()[1]

    def count(self, now: float) -> int | None:
        """The IP's weight in the exchange's current window as far as we know; None: not known."""
        return self._count_base + self._sent if now < self._count_until else None

    def delay(self, weight: int, now: float) -> float:
        """Seconds to wait before ``weight`` may be spent (0: now; ``math.inf``: until an answer comes)."""
        if now < self.paused_until:
            return self.paused_until - now
        self._expire(now)
        wait = 0.0
        excess = self._own + weight - self.limit  # our own share of any window, sliding
        if excess > 0:
            wait = self.window
            for t, w in self._spent:  # our oldest requests leave the window first
                excess -= w
                if excess <= 0:
                    wait = max(t + self.window - now, 0.0)
                    break
        count = self.count(now)
        if count is None:
            return math.inf if self._in_flight else wait  # one request alone learns the count
        if count + weight > self.limit:
            # full until the count is a window old (an answer in flight may bring a fresh one sooner)
            return max(wait, self._count_until - now)
        return wait

    def spend(self, weight: int, now: float) -> Sent:
        """``weight`` is sent now: counted against the budget until the window forgets it."""
        sent = Sent(weight, self._sent, self._in_flight)
        self._spent.append((now, weight))
        self._own += weight
        self._sent += weight
        self._in_flight += weight
        return sent

    def answered(self, sent: Sent, used: int | None, now: float) -> None:
        """``sent`` is over: its answer's ``X-MBX-USED-WEIGHT-1M`` is ``used`` (None: no answer, not sent
        after all, or no count; its weight then stays counted)."""
        self._in_flight -= sent.weight
        if used is None:
            return
        # The exchange counted this request and every one answered before it went; those in flight
        # then and all sent since (the running total past ``sent.before + sent.weight``) it may not have.
        self._count_base = used + sent.in_flight - sent.before - sent.weight
        self._count_until = now + self.window
        if now < self.paused_until:  # a 429's Retry-After ends the window sooner
            self._count_until = min(self._count_until, self.paused_until)

    def pause(self, seconds: float, now: float) -> None:
        """A 429 or 418: nothing goes for ``seconds``; the count ends with the pause (the window does)."""
        self.paused_until = max(self.paused_until, now + seconds)
        self._count_until = min(self._count_until, self.paused_until)


class RestClient:
    """One market's REST client under its weight budget.

    Args:
        market: whose budget (``REST_WEIGHT_PER_MINUTE``) applies.
        base_url: e.g. ``https://api.binance.com``.
        share: the share of the budget we may use (0 < share <= 1).
        budget: the market's budget per window (default: Binance's).
        window: the budget's window in seconds.
        concurrency: requests in flight at most.
    """

    def __init__(self, market: Market, base_url: str, share: float = 0.5, *, budget: int | None = None,
                 window: float = 60.0, concurrency: int = 4, timeout: float = 10.0,
                 metrics: Metrics | None = None) -> None:
        self.market = market
        self.base_url = base_url.rstrip("/")
        self.budget = WeightBudget(int((budget or REST_WEIGHT_PER_MINUTE[market]) * share), window)
        self.timeout = timeout
        self.metrics = metrics or Metrics()
        self.concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        self._admit = asyncio.Lock()  # one request at a time is admitted: the budget check and spend are one step
        self._changed = asyncio.Event()  # set, then replaced, when an answer or a pause changes the budget
        self._listeners: list[Callable[[], None]] = []
        # Worker threads read this before sending: a 429/418 another thread just received stops a
        # request admitted before the event loop heard of it (it goes back to the budget instead).
        self._stop_until = 0.0
        self._stop_lock = threading.Lock()
        # requests does not promise that one Session is thread-safe: one per worker thread
        self._local = threading.local()
        self._sessions: list[requests.Session] = []

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever an answer or a pause may have changed what the budget allows."""
        self._listeners.append(callback)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
        for callback in self._listeners:
            callback()

    async def get_json(self, path: str, params: dict, weight: int) -> object:
        """GET ``path`` once the budget allows ``weight``; the parsed JSON answer.

        Raises:
            RestError: as :meth:`get`, or the answer is not JSON.
        """
        body = await self.get(path, params, weight)
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise RestError(200, f"{path}: answer is not JSON ({exc})") from None

    async def _admit_one(self, weight: int) -> Sent:
        """Wait until the budget allows ``weight`` (waking at every answer or pause), and spend it."""
        async with self._admit:
            while (wait := self.budget.delay(weight, time.monotonic())) > 0:
                changed = self._changed
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(changed.wait(), None if wait == math.inf else wait)
            return self.budget.spend(weight, time.monotonic())

    async def get(self, path: str, params: dict, weight: int) -> bytes:
        """GET ``path`` once the budget allows ``weight``; the body of the 200 answer, as sent.

        Raises:
            RestError: the answer was not 200 (after sitting out up to MAX_RATE_LIMITED 429/418s), or no answer.
        """
        limited = 0
        market = self.market.value
        async with self._slots:
            while True:
                sent = await self._admit_one(weight)
                try:
                    answer = await asyncio.to_thread(self._get, path, params)
                except BaseException:  # no answer (or cancelled): its weight stays counted
                    self.budget.answered(sent, None, time.monotonic())
                    self._notify()
                    raise
                now = time.monotonic()
                if answer is None:  # held back: a 429/418 came after it was admitted; ask the budget again
                    self.budget.answered(sent, None, now)
                    self.budget.pause(self._stop_until - now, now)  # (its answer may not have reached us yet)
                    self._notify()
                    continue
                status, headers, body = answer
                self.metrics.rest_weight[market] += weight
                used = headers.get(USED_WEIGHT_HEADER)
                self.budget.answered(sent, int(used) if used is not None and used.isdigit() else None, now)
                if status in (429, 418):
                    retry_after = _seconds(headers.get("Retry-After"))
                    self.budget.pause(retry_after, now)
                    limited += 1
                    if status == 418:
                        self.metrics.rest_banned[market] += 1
                        log.error("%s REST answered 418: this IP is banned; no %s request for %.0f s",
                                  market, market, retry_after)
                    else:
                        self.metrics.rest_rate_limited[market] += 1
                        log.warning("%s REST answered 429: no %s request for %.0f s", market, market, retry_after)
                self._notify()
                if status == 200:
                    return body
                if status in (429, 418) and limited < MAX_RATE_LIMITED:
                    continue
                raise RestError(status, f"{path}: HTTP {status}: {body[:200]!r}")

    def _get(self, path: str, params: dict) -> tuple[int, dict, bytes] | None:
        """One GET in a worker thread; None if a 429/418 just received says not to send it."""
        if time.monotonic() < self._stop_until:
            return None
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            self._sessions.append(session)
        try:
            r = session.get(self.base_url + path, params=params, timeout=self.timeout)
        except requests.RequestException as exc:
            raise RestError(None, f"{path}: {type(exc).__name__}: {exc}") from None
        if r.status_code in (429, 418):
            with self._stop_lock:
                self._stop_until = max(self._stop_until, time.monotonic() + _seconds(r.headers.get("Retry-After")))
        return r.status_code, r.headers, r.content

    def close(self) -> None:
        for session in self._sessions:
            session.close()


def _seconds(value: str | None) -> float:
    try:
        return max(float(value), 0.0) if value is not None else DEFAULT_RETRY_AFTER
    except ValueError:
        return DEFAULT_RETRY_AFTER


class Resyncer:
    """Fetches REST depth snapshots for one market's diff streams: repairs, fresh bases, re-bases.

    The decisions are sans-I/O (:mod:`orderbook_collector.feed.rebase`): the plan (limit and
    re-base period for the market's streams within its weight share), the queue (one
    pending request per stream, repairs first) and the schedule (one re-base a slot). A
    fresh base or a re-base starts only when no repair waits and the budget has room now,
    so it never holds the budget's door ahead of a repair.

    Args:
        client: the market's REST client (its budget and concurrency).
        streams: the market's diff streams.
        submit: hands a record, or a refused snapshot's quarantine row, to the writer (never blocks).
        limit: the snapshot's ``limit`` (levels per side); None: the deepest the plan allows.
        rebase_seconds: the re-base period; None: the shortest the plan allows.
        phase: where the re-base grid starts in its first slot (0-1; random by default).
    """

    def __init__(self, client: RestClient, streams: list[StreamSpec],
                 submit: Callable[[DepthRestSnapshotRecord | Quarantined], bool], limit: int | None = None, *,
                 rebase_seconds: float | None = None, phase: float | None = None) -> None:
        if limit is not None and depth_weight(client.market, limit) is None:
            raise ValueError(f"{client.market.value} depth snapshots do not take limit={limit}")
        self.client, self.submit = client, submit
        self.limit_setting, self.rebase_setting = limit, rebase_seconds
        self.streams: dict[str, StreamSpec] = {}
        self.queue = SnapshotQueue()
        self.schedule = RebaseSchedule(REBASE_MIN_SECONDS, random.random() if phase is None else phase)
        self.plan: RebasePlan | None = None
        self.in_flight: set[str] = set()
        self._retry_delay: dict[str, float] = {}  # stream -> its next retry delay after a failure
        self._retries: dict[str, tuple[asyncio.TimerHandle, SyncReason, Priority]] = {}
        self._wake = asyncio.Event()  # a request was queued
        self._replanned = asyncio.Event()  # the schedule's next slot may have moved
        self._tasks: list[asyncio.Task] = []
        self.fetched = 0
        client.on_change(self._wake.set)  # an answer or a pause: the budget's room may have changed
        self.set_streams(streams)

    @property
    def limit(self) -> int:
        return self.plan.limit

    @property
    def weight(self) -> int:
        return self.plan.weight

    def set_streams(self, streams: list[StreamSpec]) -> None:
        """Re-base exactly these diff streams (``*`` follows listings); the limit and period follow
        their number. A stream no longer re-based is still repaired if its data asks."""
        self.streams.update((s.key, s) for s in streams)
        keys = list(dict.fromkeys(s.key for s in streams))
        budget = self.client.budget
        p = plan(self.client.market, len(keys), budget.limit, budget.window, self.limit_setting, self.rebase_setting)
        now = time.monotonic()
        self.schedule.set_streams(keys, now)
        self.schedule.set_period(p.period, now)
        if p != self.plan and keys:
            market = self.client.market.value
            log.info("%s: %d diff stream(s) re-based every %.0f s with %d-level snapshots (weight %d; at most %d "
                     "re-bases in %.0f s, %.0f%% of the %d weight allowed)", market, len(keys), p.period, p.limit,
                     p.weight, p.per_window, budget.window, 100 * REBASE_SHARE, budget.limit)
            if p.stretched:
                log.warning("%s: ORDERBOOK_REBASE_SECONDS=%.0f is too short for %d stream(s) at weight %d within "
                            "the REST weight share; re-basing every %.0f s instead", market, self.rebase_setting,
                            len(keys), p.weight, p.period)
        self.plan = p
        self._replanned.set()

    def request(self, stream: str, reason: SyncReason | str, repair: bool = True) -> None:
        """Ask for a snapshot of ``stream``; a stream already pending (as urgently) or being fetched is
        not asked twice (a snapshot that turns out too old is asked for again by the writer)."""
        reason = SyncReason(reason)
        if reason is SyncReason.REBASE:
            priority = Priority.REBASE
        else:
            priority = Priority.REPAIR if repair else Priority.CONNECT
        if stream not in self.streams or stream in self.in_flight:
            return
        retry = self._retries.get(stream)
        if retry is not None:  # waiting to retry after a failure: keep the most urgent need
            if priority < retry[2]:
                self._retries[stream] = (retry[0], reason, priority)
            return
        if self.queue.add(stream, reason, priority):
            self.client.metrics.resync_pending[self.client.market.value] = len(self.queue)
            self._wake.set()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.client.concurrency)]
        self._tasks.append(asyncio.create_task(self._rebase()))

    async def stop(self) -> None:
        for h, _reason, _priority in self._retries.values():
            h.cancel()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.client.close()

    async def _rebase(self) -> None:
        """Ask for each re-base when its turn comes (the schedule decides, this only waits)."""
        while True:
            stream = self.schedule.due(time.monotonic(), busy=self.queue.waiting(Priority.REBASE) > 0)
            if stream is not None:
                self.request(stream, SyncReason.REBASE)
            self._replanned.clear()
            slot = self.schedule.next_slot
            timeout = None if slot is None else max(slot - time.monotonic(), 0.0)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._replanned.wait(), timeout)

    def _budget_room(self) -> float:
        """Seconds until a snapshot fits the budget (0: now)."""
        return self.client.budget.delay(self.weight, time.monotonic())

    async def _worker(self) -> None:
        while True:
            room = self._budget_room()
            item = self.queue.pop(low_ready=room == 0)
            if item is None:
                self._wake.clear()
                # something waits for the budget: look again when it has room, at the next request,
                # or at the client's next answer (room is infinite while the budget waits for one)
                timeout = room if len(self.queue) and room != math.inf else None
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            stream, reason, priority = item
            self.client.metrics.resync_pending[self.client.market.value] = len(self.queue)
            self.in_flight.add(stream)
            try:
                ok = await self._fetch(self.streams[stream], reason.value)
            finally:
                self.in_flight.discard(stream)
            if ok:
                self._retry_delay.pop(stream, None)
                self.schedule.based(stream, time.monotonic())
                continue
            if priority is Priority.REBASE:
                continue  # not retried: the stream's next turn comes a period later
            # This stream's snapshot failed: ask again later, slower each time; the others go on.
            delay = self._retry_delay.get(stream, RETRY_DELAY)
            self._retry_delay[stream] = min(delay * 2, RETRY_DELAY_MAX)
            handle = asyncio.get_running_loop().call_later(delay, self._retry, stream)
            self._retries[stream] = (handle, reason, priority)

    def _retry(self, stream: str) -> None:
        _handle, reason, priority = self._retries.pop(stream)
        self.request(stream, reason, repair=priority is Priority.REPAIR)

    async def _fetch(self, spec: StreamSpec, reason: str) -> bool:
        market = spec.market.value
        try:
            body = await self.client.get(
                DEPTH_PATH[spec.market], {"symbol": spec.symbol.upper(), "limit": self.limit}, self.weight)
        except RestError as exc:
            self.client.metrics.rest_errors[market] += 1
            log.warning("%s: depth snapshot failed (%s); retrying", spec.key, exc)
            return False
        recv_us = time.time_ns() // 1000
        try:
            record = decode_rest_depth(spec, body, recv_us, reason, self.limit)
        except FrameError as exc:
            # Refused like a bad WebSocket frame: kept with its bytes and reason, never used to sync;
            # the stream stays broken and its snapshot is asked for again (the caller's retry).
            self.submit(Quarantined(recv_us, REST_SESSION, 0, exc.reason.value, body,
                                    f"rest depth snapshot of {spec.key}: {exc.detail}"))
            self.client.metrics.rest_refused[market] += 1
            log.warning("%s: depth snapshot refused (%s); quarantined, retrying", spec.key, exc)
            return False
        self.client.metrics.rest_snapshots[market] += 1
        self.fetched += 1
        self.submit(record)
        return True
