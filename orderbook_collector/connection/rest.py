"""REST under Binance's weight budget, and the diff-depth resync queue that uses it.

:class:`WeightBudget` (sans-I/O, the clock is passed in) decides when a request of a
given weight may go: the weight we spent in the last window (sliding, so every fixed
window Binance counts in holds no more) plus the weight *others* on this IP spent (what
``X-MBX-USED-WEIGHT-1M`` reports beyond our own spending, forgotten after a window) must
stay within ``share`` of the market's budget (``REST_WEIGHT_PER_MINUTE``). A 429 or 418
pauses every request of the market for its ``Retry-After``.

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
import random
import threading
import time
from collections import deque
from typing import Callable

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


class WeightBudget:
    """When may a request of some weight go? (sans-I/O; ``now`` is ``time.monotonic()``)

    Args:
        limit: the weight per window we allow ourselves (share × the market's budget).
        window: Binance's window in seconds (a minute).
    """

    def __init__(self, limit: int, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self._spent: deque[tuple[float, int]] = deque()  # (time, weight) of our requests
        self._own = 0  # sum of _spent
        self._others = 0  # weight this IP spent that is not ours, as last reported
        self._others_at = 0.0
        self.paused_until = 0.0

    def _expire(self, now: float) -> None:
        while self._spent and self._spent[0][0] <= now - self.window:
            self._own -= self._spent.popleft()[1]
        if now - self._others_at >= self.window:
            self._others = 0

    def delay(self, weight: int, now: float) -> float:
        """Seconds to wait before ``weight`` may be spent (0: now)."""
        if now < self.paused_until:
            return self.paused_until - now
        self._expire(now)
        others = self._others
        if self._own + others + weight <= self.limit:
            return 0.0
        if others and others + weight > self.limit:
            return self._others_at + self.window - now  # others alone fill our share: wait them out
        excess = self._own + others + weight - self.limit
        for t, w in self._spent:  # our oldest requests leave the window first
            excess -= w
            if excess <= 0:
                return max(t + self.window - now, 0.0)
        return self.window

    def spend(self, weight: int, now: float) -> None:
        self._spent.append((now, weight))
        self._own += weight

    def report(self, used: int, now: float) -> None:
        """The exchange's count for this IP; what our own spending does not explain is others'."""
        self._expire(now)
        self._others = max(0, used - self._own)
        self._others_at = now

    def pause(self, seconds: float, now: float) -> None:
        self.paused_until = max(self.paused_until, now + seconds)


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
        # requests does not promise that one Session is thread-safe: one per worker thread
        self._local = threading.local()
        self._sessions: list[requests.Session] = []

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

    async def get(self, path: str, params: dict, weight: int) -> bytes:
        """GET ``path`` once the budget allows ``weight``; the body of the 200 answer, as sent.

        Raises:
            RestError: the answer was not 200 (after sitting out up to MAX_RATE_LIMITED 429/418s), or no answer.
        """
        limited = 0
        async with self._slots:
            while True:
                async with self._admit:
                    while (wait := self.budget.delay(weight, time.monotonic())) > 0:
                        await asyncio.sleep(wait)
                    self.budget.spend(weight, time.monotonic())
                self.metrics.rest_weight[self.market.value] += weight
                status, headers, body = await asyncio.to_thread(self._get, path, params)
                now = time.monotonic()
                used = headers.get(USED_WEIGHT_HEADER)
                if used is not None and used.isdigit():
                    self.budget.report(int(used), now)
                if status == 200:
                    return body
                if status in (429, 418):
                    retry_after = _seconds(headers.get("Retry-After"))
                    self.budget.pause(retry_after, now)
                    self.metrics.rest_rate_limited[self.market.value] += 1
                    limited += 1
                    log.warning("%s REST answered %d: pausing every %s request for %.0f s",
                                self.market.value, status, self.market.value, retry_after)
                    if limited < MAX_RATE_LIMITED:
                        continue
                raise RestError(status, f"{path}: HTTP {status}: {body[:200]!r}")

    def _get(self, path: str, params: dict) -> tuple[int, dict, bytes]:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            self._sessions.append(session)
        try:
            r = session.get(self.base_url + path, params=params, timeout=self.timeout)
        except requests.RequestException as exc:
            raise RestError(None, f"{path}: {type(exc).__name__}: {exc}") from None
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
                # something waits for the budget: look again when it has room, or at the next request
                timeout = room if len(self.queue) else None
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
