"""Sans-I/O re-basing of diff-depth streams: the plan, the queue, the schedule.

A REST depth snapshot holds the top ``limit`` levels; diff events report only levels that
change. A level beyond the snapshot's worst price that has not changed since is in no
row, so a book rebuilt offline misses it. Each diff stream therefore gets a fresh REST
snapshot after every new session (reason 'connect', asked by feed.sync) and periodically
(reason 'rebase', asked by :class:`RebaseSchedule`), stored as data.

* :func:`plan`: the snapshot ``limit`` and the re-base period of one market for N diff
  streams, inside the REST weight the market may use (``ORDERBOOK_REST_WEIGHT_SHARE`` of
  Binance's budget): re-bases plan on at most :data:`REBASE_SHARE` of it, the rest is for
  repairs after breaks. Unless set, the limit is the deepest whose re-base period fits
  within :data:`REBASE_TARGET_SECONDS`, and the period is the shortest that fits (never
  under :data:`REBASE_MIN_SECONDS`).
* :class:`SnapshotQueue`: at most one pending request per stream, served by
  :class:`Priority`: repairs (a broken stream), then fresh bases of new sessions, then
  re-bases; a request more urgent than the pending one for its stream replaces it.
* :class:`RebaseSchedule`: whose turn it is. Turns come one at a time on a grid of
  slots ``period / N`` apart (the grid starts at a random phase), round-robin over the
  streams, so the N re-bases of a period are spread evenly and never come as a burst.

The clock is passed in (``time.monotonic()`` seconds); the Resyncer
(connection/rest.py) is the I/O around these.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from enum import IntEnum
from typing import NamedTuple

from orderbook_core.streams import USDM_DEPTH_LIMITS, Market, depth_weight
from orderbook_collector.feed.sync import SyncReason

#: Re-bases plan on at most this part of the weight the market may use: the rest stays free
#: for the repairs a reconnect or a gap needs (and for exchangeInfo).
REBASE_SHARE = 0.5
#: The default limit is the deepest whose re-base period for the subscribed streams is at most this.
REBASE_TARGET_SECONDS = 600.0
#: The default period is never shorter: re-basing one book more than once a minute buys little.
REBASE_MIN_SECONDS = 60.0


def _deepest_per_weight(market: Market, limits: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(n for n, deeper in zip(limits, (*limits[1:], None))
                 if deeper is None or depth_weight(market, deeper) != depth_weight(market, n))


#: The limits worth asking for: the deepest of each weight step (spot takes any 1-5000, USD-M
#: only ``USDM_DEPTH_LIMITS``); a limit between two of these costs as much as the deeper one.
STEP_LIMITS = {
    Market.SPOT: _deepest_per_weight(Market.SPOT, (100, 500, 1000, 5000)),
    Market.USDM: _deepest_per_weight(Market.USDM, USDM_DEPTH_LIMITS),
    Market.COINM: _deepest_per_weight(Market.COINM, USDM_DEPTH_LIMITS),
}


class Priority(IntEnum):
    """Which pending snapshot goes first (lowest value first)."""

    REPAIR = 0  # the stream is broken: its book is unknown until the snapshot syncs it
    CONNECT = 1  # a new session continued a synced stream: a fresh base, nothing broken
    REBASE = 2  # the periodic fresh base


class RebasePlan(NamedTuple):
    limit: int  # levels per side of every snapshot of the market
    weight: int  # REST weight of one snapshot
    period: float  # seconds between two re-bases of one stream
    per_window: int  # re-bases a window may hold within the re-base share
    stretched: bool  # the configured period was too short for the budget: this is the shortest that fits


def per_window(weight: int, allowed: int) -> int:
    """Snapshots of ``weight`` that fit in one window within the re-base share of ``allowed``."""
    return math.floor(REBASE_SHARE * allowed / weight)


def shortest_period(streams: int, weight: int, allowed: int, window: float = 60.0) -> float:
    """The shortest period at which ``streams`` re-bases of ``weight`` each stay within the re-base
    share of ``allowed`` weight per ``window``; inf when one snapshot alone weighs more than that share.

    Turns are evenly spaced (period / streams apart), so a (half-open) window holds at most
    ``ceil(window * streams / period)`` of them: that must not exceed :func:`per_window`.
    """
    k = per_window(weight, allowed)
    return math.inf if k == 0 else streams * window / k


def plan(market: Market, streams: int, allowed: int, window: float = 60.0,
         limit: int | None = None, period: float | None = None) -> RebasePlan:
    """The snapshot limit and the re-base period for ``streams`` diff streams of ``market``.

    Args:
        allowed: the weight per ``window`` this collector may use on the market
            (``ORDERBOOK_REST_WEIGHT_SHARE`` × Binance's budget).
        limit: ``ORDERBOOK_(USDM_)DEPTH_SNAPSHOT_LIMIT`` if set; else the deepest of
            :data:`STEP_LIMITS` whose re-bases fit at the target period (the configured
            period, else :data:`REBASE_TARGET_SECONDS`), or the lightest when none does.
        period: ``ORDERBOOK_REBASE_SECONDS`` if set; a period too short for the budget is
            stretched to the shortest that fits (``stretched``).
    """
    target = period if period is not None else REBASE_TARGET_SECONDS
    if limit is None:
        steps = STEP_LIMITS[market]
        limit = next((n for n in reversed(steps)
                      if shortest_period(streams, depth_weight(market, n), allowed, window) <= target), steps[0])
    weight = depth_weight(market, limit)
    if weight is None:
        raise ValueError(f"{market.value} depth snapshots do not take limit={limit}")
    need = shortest_period(streams, weight, allowed, window)
    if math.isinf(need):  # one snapshot is more than the re-base share: one a window, the budget gate does the rest
        need = window * streams
    chosen = period if period is not None else max(REBASE_MIN_SECONDS, need)
    return RebasePlan(limit, weight, max(chosen, need), max(per_window(weight, allowed), 1), need > chosen)


class SnapshotQueue:
    """Pending snapshot requests, one per stream, served by :class:`Priority`, oldest first."""

    def __init__(self) -> None:
        self._queues: dict[Priority, OrderedDict[str, SyncReason]] = {p: OrderedDict() for p in Priority}
        self._priority: dict[str, Priority] = {}

    def add(self, stream: str, reason: SyncReason, priority: Priority) -> bool:
        """Queue a request; False if the stream already waits at this priority or a more urgent one."""
        current = self._priority.get(stream)
        if current is not None:
            if current <= priority:
                return False
            del self._queues[current][stream]  # the more urgent need replaces it
        self._queues[priority][stream] = reason
        self._priority[stream] = priority
        return True

    def pop(self, low_ready: bool = True) -> tuple[str, SyncReason, Priority] | None:
        """The next request to fetch. Only a repair goes while ``low_ready`` is False (the budget
        has no room now): fresh bases and re-bases never wait in line for the budget ahead of a repair."""
        for p, q in self._queues.items():
            if q:
                if p is not Priority.REPAIR and not low_ready:
                    return None
                stream, reason = q.popitem(last=False)
                del self._priority[stream]
                return stream, reason, p
        return None

    def waiting(self, priority: Priority) -> int:
        return len(self._queues[priority])

    def __contains__(self, stream: str) -> bool:
        return stream in self._priority

    def __len__(self) -> int:
        return len(self._priority)


class RebaseSchedule:
    """Whose turn it is to be re-based (see the module docstring).

    Each stream has one turn a period, at its place in the rotation; slots are
    ``period / N`` apart. A turn is skipped when the stream got a snapshot (any reason)
    less than half a period ago: after a reconnect, the 'connect' snapshots stand in for
    the re-bases due soon after, and the turns stay where they were (no burst a period
    later). A slot passes unused while an earlier re-base still waits for the budget,
    and slots the clock jumped over are not made up: at most one re-base a slot.

    Args:
        period: seconds between two turns of one stream.
        phase: where in its first slot the grid starts, 0 <= phase < 1 (random in the
            collector, so collectors sharing an IP do not fire in step).
    """

    def __init__(self, period: float, phase: float = 0.0) -> None:
        self.period = period
        self.phase = phase
        self._rotation: list[str] = []
        self._based: dict[str, float] = {}  # stream -> when its last snapshot arrived (or it joined)
        self._cursor = 0
        self.next_slot: float | None = None

    @property
    def interval(self) -> float:
        return self.period / max(len(self._rotation), 1)

    def __len__(self) -> int:
        return len(self._rotation)

    def set_streams(self, streams: list[str], now: float) -> None:
        """Rotate over exactly these: new ones join at the end, the others keep their places.

        A stream that joins counts as based now: its first snapshot is the 'connect' one
        of its first session, not a re-base racing it.
        """
        wanted = dict.fromkeys(streams)
        # the cursor stays on the stream whose turn is next
        self._cursor = sum(1 for s in self._rotation[: self._cursor] if s in wanted)
        kept = [s for s in self._rotation if s in wanted]
        known = set(kept)
        self._rotation = kept + [s for s in wanted if s not in known]
        if self._cursor >= len(self._rotation):
            self._cursor = 0
        self._based = {s: self._based.get(s, now) for s in self._rotation}
        self._replan(now)

    def set_period(self, period: float, now: float) -> None:
        self.period = period
        self._replan(now)

    def _replan(self, now: float) -> None:
        if not self._rotation:
            self.next_slot = None
        elif self.next_slot is None:
            self.next_slot = now + self.phase * self.interval
        else:  # a shorter interval takes effect at once, a longer one from the next slot
            self.next_slot = min(self.next_slot, now + self.interval)

    def based(self, stream: str, now: float) -> None:
        """A snapshot of ``stream`` arrived (any reason)."""
        if stream in self._based:
            self._based[stream] = now

    def due(self, now: float, busy: bool = False) -> str | None:
        """The stream to re-base now, if a slot has come and it is someone's turn.

        Args:
            busy: a re-base asked for earlier has not started yet (this slot passes unused).
        """
        if self.next_slot is None or now < self.next_slot:
            return None
        slot = self.next_slot
        self.next_slot = slot + self.interval
        if self.next_slot <= now:  # the clock jumped (a suspended machine, a stalled loop): no catch-up burst
            self.next_slot = now + self.interval
        stream = self._rotation[self._cursor]
        self._cursor = (self._cursor + 1) % len(self._rotation)
        if busy:
            return None
        if slot - self._based[stream] < self.period / 2:
            return None  # a fresh snapshot came recently (a reconnect): this turn is not needed
        return stream
