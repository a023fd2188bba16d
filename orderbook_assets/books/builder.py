"""Rebuilding a full order book from diff depth by Binance's own procedure (sans-I/O).

A :class:`BookBuilder` is fed REST snapshots and diff events (plain values, no I/O, no
time) and keeps the whole book, every level, in sorted sides. It never guesses across a
break: between a break and the next usable snapshot the book is :attr:`Status.UNKNOWN`.

The continuity rules (stale, continues, bridges a snapshot) are Binance's, defined once in
:mod:`orderbook_core.continuity` and shared with the collector's sync tracker and the
archive's ``depth_continuity`` check.

* A quantity of 0 removes the level, known or not (deleting an unknown level is normal:
  the snapshot is cut at its limit).

**The horizon.** A REST snapshot holds the best ``limit`` levels a side; diff events report
only levels that change. So each side keeps its *horizon*: the worst price the snapshots
covered. Every level at or better than it is known (present or absent: the snapshot listed
all of them, and every change since came as a diff). Beyond it, a level a diff set or
deleted since is known from then on (:meth:`Side.known`), but the gaps between such levels
are not: a level resting there since before the snapshot never showed. The top ``N`` of a
side is complete iff its ``N``-th best level lies inside the horizon, or the horizon is
unbounded (the snapshot held the whole side) (:meth:`Side.known_levels`).

A snapshot side is whole (unbounded horizon) only when it is empty or holds fewer levels than
the snapshot's ``limit``, when the limit is known (:attr:`Snapshot.limit`). The archive does
not record the limit a REST snapshot was fetched with, so REST sides are taken as cut at their
worst level (conservative: a side can be called cut when it was whole, never the reverse).
Partial snapshots name their depth (``@depth20``), so theirs is known.

**Re-basing.** Any REST snapshot newer than a known book is a re-base: at the event that
continues the book across the snapshot's id, the snapshot's levels replace the book's inside
the snapshot's range, the event is applied on top, and the horizon extends to the wider of the
two (Binance's procedure, applied to a book that is already known).

Feed order: a stream's events in update-id order with each snapshot placed before the first
event whose ``u`` exceeds its id is the exchange's own order (:mod:`.hour` does that). Fed in
receive order instead (a snapshot after the events it covers, as a live client gets it),
the builder keeps the unbroken tail of events seen while unknown (bounded) and replays the
part after a snapshot's id when the snapshot comes.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections import deque
from enum import Enum
from typing import Iterable, Iterator, NamedTuple, Sequence

from orderbook_core import continuity
from orderbook_core.streams import Market

Level = tuple[float, float]  # (price, qty)


class Status(str, Enum):
    UNKNOWN = "unknown"  # no usable snapshot since the start or the last break
    KNOWN = "known"  # equal to the exchange's book at ``last_update_id`` (levels within the snapshot's depth)


class Outcome(str, Enum):
    """What one fed item did."""

    APPLIED = "applied"  # continued the known book
    REBASED = "rebased"  # continued the known book across a newer snapshot, which re-based it
    SYNCED = "synced"  # first event after a snapshot: the book became known
    STALE = "stale"  # at or before the book's id (or the pending snapshot's): dropped, changes nothing
    BREAK = "break"  # events were missed: the book became unknown
    BUFFERED = "buffered"  # unknown: kept in the tail for a later snapshot
    SNAPSHOT_PENDING = "snapshot_pending"  # a snapshot waits for the event that bridges it
    SNAPSHOT_TOO_OLD = "snapshot_too_old"  # the next event starts after the snapshot's id + 1: unusable
    SNAPSHOT_BEHIND = "snapshot_behind"  # the book is known past the snapshot's id: not needed


class DiffEvent(NamedTuple):
    """One ``depth_update`` row: ids and the changed levels (absolute quantities, 0 removes)."""

    first_update_id: int  # U
    last_update_id: int  # u
    prev_update_id: int | None  # pu (USD-M), None on spot
    bids: Sequence[Level]
    asks: Sequence[Level]


class Snapshot(NamedTuple):
    """One ``depth_rest_snapshot`` row: the book at ``last_update_id``, best first."""

    last_update_id: int
    bids: Sequence[Level]
    asks: Sequence[Level]
    limit: int | None = None  # the levels a side asked for; None: not recorded (sides taken as cut)


#: A side's horizon as a key (``sign * price``, best first ascending): everything at or below it is known.
WHOLE = math.inf  # the snapshot held the whole side
NOTHING = -math.inf  # nothing is known (a book carried from before horizons were kept)


def side_horizon(levels: Sequence[Level], bid: bool, limit: int | None) -> float:
    """The horizon key a snapshot side proves: :data:`WHOLE` if it is empty or shorter than its
    ``limit``, else its worst price's key."""
    if not levels or (limit is not None and len(levels) < limit):
        return WHOLE
    sign = -1.0 if bid else 1.0
    return max(sign * p for p, _ in levels)


class KnownTop(NamedTuple):
    """The top ``n`` as far as the horizon proves it (:meth:`BookBuilder.known_top`)."""

    bids: list[Level]  # the leading bids inside the horizon (all ``n`` when complete)
    asks: list[Level]
    known_levels: int  # levels both sides prove (``n`` when complete)
    complete: bool  # both sides' top ``n`` are the exchange's


class Result(NamedTuple):
    """What feeding one item did, and the book's status and id after it."""

    outcome: Outcome
    status: Status
    last_update_id: int | None  # None while unknown
    replayed: tuple[Outcome, ...] = ()  # outcomes of the tail events a snapshot replayed


class SortedKeys:
    """Sorted floats kept in blocks of a few hundred: an insert or delete moves one block, not
    the whole side (a day's book can hold tens of thousands of levels), and the first ``n``
    come from the first blocks."""

    __slots__ = ("_blocks", "_firsts", "_len")
    BLOCK = 512

    def __init__(self) -> None:
        self._blocks: list[list[float]] = []
        self._firsts: list[float] = []  # each block's smallest key, for bisect
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def clear(self) -> None:
        self._blocks, self._firsts, self._len = [], [], 0

    def load(self, keys: list[float]) -> None:
        """Replace the contents with ``keys`` (sorted ascending, unique)."""
        n = self.BLOCK
        self._blocks = [keys[i:i + n] for i in range(0, len(keys), n)]
        self._firsts = [b[0] for b in self._blocks]
        self._len = len(keys)

    def add(self, k: float) -> None:
        """Insert ``k`` (not present)."""
        if not self._blocks:
            self._blocks, self._firsts, self._len = [[k]], [k], 1
            return
        i = max(bisect_right(self._firsts, k) - 1, 0)
        b = self._blocks[i]
        b.insert(bisect_left(b, k), k)
        self._firsts[i] = b[0]
        self._len += 1
        if len(b) > 2 * self.BLOCK:
            half = len(b) // 2
            self._blocks[i:i + 1] = [b[:half], b[half:]]
            self._firsts[i:i + 1] = [b[0], b[half]]

    def remove(self, k: float) -> None:
        """Delete ``k`` (present)."""
        i = bisect_right(self._firsts, k) - 1
        b = self._blocks[i]
        del b[bisect_left(b, k)]
        self._len -= 1
        if b:
            self._firsts[i] = b[0]
        else:
            del self._blocks[i]
            del self._firsts[i]

    def head(self, n: int) -> list[float]:
        """The ``n`` smallest keys."""
        out: list[float] = []
        for b in self._blocks:
            if len(out) >= n:
                break
            out.extend(b[: n - len(out)])
        return out

    def first(self) -> float | None:
        return self._blocks[0][0] if self._blocks else None

    def upto(self, limit: float) -> Iterator[float]:
        """The keys at or below ``limit``, ascending."""
        for b in self._blocks:
            if b[0] > limit:
                return
            if b[-1] <= limit:
                yield from b
            else:
                yield from b[:bisect_right(b, limit)]
                return

    def above(self, limit: float) -> list[float]:
        """The keys strictly above ``limit``, ascending."""
        out: list[float] = []
        for b in self._blocks:
            if b[-1] > limit:
                out.extend(b[bisect_right(b, limit):] if b[0] <= limit else b)
        return out


class Side:
    """One side of a book: price → qty plus the prices kept sorted best first, and what is known.

    Bids are kept under their negated price so that both sides sort ascending, best first.
    ``horizon`` is a key (``sign * price``): every price whose key is at or below it is known;
    ``seen`` holds the prices beyond it that a diff set or deleted since (known from then on).
    """

    __slots__ = ("_sign", "_qty", "_keys", "horizon", "seen")

    def __init__(self, bid: bool):
        self._sign = -1.0 if bid else 1.0
        self._qty: dict[float, float] = {}
        self._keys = SortedKeys()  # sign * price, ascending = best first
        self.horizon = NOTHING
        self.seen: set[float] = set()

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def bid(self) -> bool:
        return self._sign < 0

    def clear(self) -> None:
        self._qty.clear()
        self._keys.clear()
        self.horizon = NOTHING
        self.seen = set()

    def load(self, levels: Iterable[Level], horizon: float = NOTHING, seen: Iterable[float] = ()) -> None:
        """Replace the side (a snapshot's side; any order, zero quantities skipped) with what it
        proves: ``horizon`` (by default nothing) and the prices ``seen`` beyond it."""
        s = self._sign
        self._qty = {p: q for p, q in levels if q != 0.0}
        self._keys.load(sorted(s * p for p in self._qty))
        self.horizon = horizon
        self.seen = {p for p in seen if s * p > horizon}

    def rebase(self, levels: Iterable[Level], horizon: float) -> None:
        """A newer snapshot's side: its levels replace the book's at or inside ``horizon`` (the
        snapshot's), the book's beyond it stay, and the side's horizon becomes the wider one."""
        s = self._sign
        keep = {s * k: self._qty[s * k] for k in self._keys.above(horizon)}
        keep.update((p, q) for p, q in levels if q != 0.0 and s * p <= horizon)
        self._qty = keep
        self._keys.load(sorted(s * p for p in keep))
        self.horizon = max(self.horizon, horizon)
        self.seen = {p for p in self.seen if s * p > self.horizon}

    def update(self, levels: Iterable[Level]) -> None:
        """Set absolute quantities; 0 removes the level (an unknown one too). A price beyond the
        horizon becomes known (seen)."""
        qty, keys, s, h = self._qty, self._keys, self._sign, self.horizon
        for p, q in levels:
            if s * p > h:
                self.seen.add(p)
            if q == 0.0:
                if qty.pop(p, None) is not None:
                    keys.remove(s * p)
            else:
                if p not in qty:
                    keys.add(s * p)
                qty[p] = q

    def prune_seen(self, keep_levels: int) -> None:
        """Forget seen prices past the side's ``keep_levels``-th level: no snapshot compares that
        deep (REST gives at most 5000), and forgetting only narrows what is known, never widens it."""
        if len(self._keys) <= keep_levels:
            return
        limit = self._keys.head(keep_levels)[-1]
        s = self._sign
        self.seen = {p for p in self.seen if s * p <= limit}

    def qty(self, price: float) -> float:
        """The quantity at ``price`` (0.0: no level)."""
        return self._qty.get(price, 0.0)

    def key(self, price: float) -> float:
        return self._sign * price

    def known(self, price: float) -> bool:
        """Whether the book knows the level at ``price`` (its quantity, or that there is none)."""
        return self._sign * price <= self.horizon or price in self.seen

    def known_levels(self, n: int) -> int:
        """How many of the best ``n`` levels are provably the exchange's: ``n`` when the top ``n``
        is complete (inside the horizon, or the whole side is known), else the leading levels
        inside the horizon."""
        if self.horizon == WHOLE:
            return n
        count = 0
        for _ in self._keys.upto(self.horizon):
            count += 1
            if count == n:
                break
        return count

    def within(self, limit: float) -> list[Level]:
        """The levels whose key is at or below ``limit``, best first."""
        s, qty = self._sign, self._qty
        return [(s * k, qty[s * k]) for k in self._keys.upto(limit)]

    def top(self, n: int) -> list[Level]:
        """The best ``n`` levels, best first."""
        s, qty = self._sign, self._qty
        out = []
        for k in self._keys.head(n):
            p = s * k
            out.append((p, qty[p]))
        return out

    def levels(self) -> list[Level]:
        return self.top(len(self._keys))

    def best(self) -> float | None:
        k = self._keys.first()
        return None if k is None else self._sign * k


class BookBuilder:
    """The book of one diff-depth stream. Feed :meth:`snapshot` and :meth:`event`.

    Args:
        market: the stream's market, which decides the continuity rule (:mod:`orderbook_core.continuity`).
        max_tail: events kept while unknown for a snapshot that comes after them
            (receive order); older ones are dropped, so memory stays bounded.
    """

    def __init__(self, market: Market | str, max_tail: int = 2000):
        self.market = Market(market)
        self._rule = continuity.continues_rule(self.market)
        self.bids = Side(bid=True)
        self.asks = Side(bid=False)
        self.status = Status.UNKNOWN
        self._id: int | None = None  # the book's update id while known
        self._pending: Snapshot | None = None  # a snapshot waiting for its bridging event
        self._tail: deque[DiffEvent] = deque(maxlen=max_tail)

    # ---- public -------------------------------------------------------------------------

    @property
    def last_update_id(self) -> int | None:
        return self._id if self.status is Status.KNOWN else None

    @property
    def pending(self) -> Snapshot | None:
        return self._pending

    @property
    def tail(self) -> tuple[DiffEvent, ...]:
        return tuple(self._tail)

    def top(self, n: int) -> tuple[list[Level], list[Level]]:
        """Top ``n`` bids and asks, best first (empty while unknown), known or not (see
        :meth:`known_top` for the part the horizon proves)."""
        if self.status is not Status.KNOWN:
            return [], []
        return self.bids.top(n), self.asks.top(n)

    def known_top(self, n: int) -> "KnownTop":
        """The top ``n`` as far as it is proven: each side cut to its leading levels inside the
        horizon (all ``n`` when complete), and how many levels both sides prove."""
        if self.status is not Status.KNOWN:
            return KnownTop([], [], 0, False)
        kb, ka = self.bids.known_levels(n), self.asks.known_levels(n)
        return KnownTop(self.bids.top(kb), self.asks.top(ka), min(kb, ka), kb == n and ka == n)

    def crossed(self) -> bool:
        b, a = self.bids.best(), self.asks.best()
        return self.status is Status.KNOWN and b is not None and a is not None and b >= a

    def snapshot(self, snap: Snapshot) -> Result:
        """A REST snapshot. Used at once if unknown events after its id are in the tail, or if
        the known book stands exactly at its id (a re-base), otherwise kept for the next event
        (which re-bases a known book, or syncs an unknown one)."""
        if self.status is Status.KNOWN and self._id is not None and snap.last_update_id == self._id:
            self._rebase(snap)
            return self._result(Outcome.REBASED)
        if self.status is Status.KNOWN and self._id is not None and snap.last_update_id < self._id:
            return self._result(Outcome.SNAPSHOT_BEHIND)
        if self._pending is not None and snap.last_update_id < self._pending.last_update_id:
            return self._result(Outcome.SNAPSHOT_BEHIND)
        self._pending = snap
        if self.status is Status.UNKNOWN and self._tail:
            return self._replay_tail()
        return self._result(Outcome.SNAPSHOT_PENDING)

    def event(self, ev: DiffEvent) -> Result:
        """One diff event."""
        if self._pending is not None:
            return self._against_snapshot(ev)
        if self.status is Status.UNKNOWN:
            self._keep(ev)
            return self._result(Outcome.BUFFERED)
        return self._event_known(ev)

    def continues(self, ev: DiffEvent) -> bool:
        """Whether ``ev`` would continue the known book without a break (nothing is applied)."""
        if self.status is not Status.KNOWN:
            return False
        return ev.last_update_id <= self._id or self._continues(ev)  # type: ignore[operator]

    def reset(self) -> None:
        """Forget everything (the book becomes unknown, the tail and snapshot are dropped)."""
        self._break()
        self._pending = None
        self._tail.clear()

    # ---- state for an hour's end (see .hour) ---------------------------------------------

    def load_known(self, last_update_id: int, bids: Iterable[Level], asks: Iterable[Level],
                   horizons: tuple[float, float] = (NOTHING, NOTHING),
                   seen: tuple[Iterable[float], Iterable[float]] = ((), ())) -> None:
        """Resume a known book (a previous hour's end state) with its horizons (keys) and seen
        prices; without them nothing is known until a re-base."""
        self.bids.load(bids, horizons[0], seen[0])
        self.asks.load(asks, horizons[1], seen[1])
        self._id = last_update_id
        self.status = Status.KNOWN

    def load_pending(self, snap: Snapshot | None, tail: Iterable[DiffEvent]) -> None:
        self._pending = snap
        self._tail.extend(tail)

    # ---- private ------------------------------------------------------------------------

    def _result(self, outcome: Outcome, replayed: tuple[Outcome, ...] = ()) -> Result:
        return Result(outcome, self.status, self.last_update_id, replayed)

    def _continues(self, ev: DiffEvent) -> bool:
        return self._rule(self._id, ev.first_update_id, ev.last_update_id, ev.prev_update_id)  # type: ignore[arg-type]

    def _bridges(self, ev: DiffEvent, lid: int) -> bool:
        return continuity.bridges(self.market, lid, ev.first_update_id, ev.last_update_id, ev.prev_update_id)

    def _stale_for(self, ev: DiffEvent, lid: int) -> bool:
        return continuity.stale(self.market, lid, ev.last_update_id)

    def _against_snapshot(self, ev: DiffEvent) -> Result:
        snap = self._pending
        assert snap is not None
        lid = snap.last_update_id
        if self._stale_for(ev, lid):
            if self.status is Status.KNOWN:
                res = self._event_known(ev)
                if res.outcome is Outcome.APPLIED and self._id == lid:  # the book stands at the snapshot's id
                    self._pending = None
                    self._rebase(snap)
                    return self._result(Outcome.REBASED)
                return res
            return self._result(Outcome.STALE)
        if self.status is Status.KNOWN and self._continues(ev):
            # the book is known through the snapshot's id, which lies inside this event or in the
            # ids before it that changed nothing here: the snapshot is the book at its id, so it
            # re-bases the book (and extends the horizon) before the event applies
            self._pending = None
            self._rebase(snap)
            self._apply(ev)
            return self._result(Outcome.REBASED)
        self._pending = None
        if self._bridges(ev, lid):
            self.bids.load(snap.bids, side_horizon(snap.bids, True, snap.limit))
            self.asks.load(snap.asks, side_horizon(snap.asks, False, snap.limit))
            self.status = Status.KNOWN
            self._tail.clear()
            self._apply(ev)
            return self._result(Outcome.SYNCED)
        # the first event after the snapshot starts beyond it: changes in between are missing
        self._break()
        self._keep(ev)
        return self._result(Outcome.SNAPSHOT_TOO_OLD)

    def _event_known(self, ev: DiffEvent) -> Result:
        # the known book: stale, a break, or the next change
        assert self._id is not None
        if ev.last_update_id <= self._id:
            return self._result(Outcome.STALE)
        if not self._continues(ev):
            self._break()
            self._keep(ev)
            return self._result(Outcome.BREAK)
        self._apply(ev)
        return self._result(Outcome.APPLIED)

    def _replay_tail(self) -> Result:
        events = list(self._tail)
        self._tail.clear()
        outcomes = tuple(self.event(ev).outcome for ev in events)
        if self._pending is not None:
            return self._result(Outcome.SNAPSHOT_PENDING, outcomes)
        first = Outcome.SYNCED if Outcome.SYNCED in outcomes else Outcome.SNAPSHOT_TOO_OLD
        if self.status is Status.UNKNOWN and first is Outcome.SYNCED:
            first = Outcome.BREAK  # synced, then broke again inside the tail
        return self._result(first, outcomes)

    def _keep(self, ev: DiffEvent) -> None:
        # only an unbroken chain can follow a snapshot: a gap makes everything before it useless
        if self._tail:
            last = self._tail[-1]
            if ev.last_update_id <= last.last_update_id:
                return
            if not self._rule(last.last_update_id, ev.first_update_id, ev.last_update_id, ev.prev_update_id):
                self._tail.clear()
        self._tail.append(ev)

    def _rebase(self, snap: Snapshot) -> None:
        self.bids.rebase(snap.bids, side_horizon(snap.bids, True, snap.limit))
        self.asks.rebase(snap.asks, side_horizon(snap.asks, False, snap.limit))

    def _apply(self, ev: DiffEvent) -> None:
        self.bids.update(ev.bids)
        self.asks.update(ev.asks)
        self._id = ev.last_update_id

    def _break(self) -> None:
        self.status = Status.UNKNOWN
        self._id = None
        self.bids.clear()
        self.asks.clear()


# ---- proving a book against one of the exchange's snapshots ---------------------------------


class LevelDiff(NamedTuple):
    """One level where the exchange's snapshot and the rebuilt book differ (qty 0.0: absent)."""

    side: str  # "bid" or "ask"
    price: float
    exchange_qty: float
    rebuilt_qty: float


class Comparison(NamedTuple):
    """One snapshot compared with the rebuilt book around its id."""

    levels: int  # levels compared and decided (equal or not)
    mismatches: list[LevelDiff]
    undecided: int  # levels the straddling event touched whose snapshot value lies between its ends


def compare(builder: BookBuilder, bids: Sequence[Level], asks: Sequence[Level], limit: int | None,
            touched: DiffEvent | None = None, after: bool = False) -> Comparison:
    """Compare the exchange's book at id ``L`` (``bids``/``asks``, best first, ``limit`` levels a
    side asked for: None means unknown, each side cut at its worst level) with ``builder``'s book,
    which stands at an id at or before ``L``, known.

    ``touched``: the event that straddles ``L`` (``U <= L <= u``), not applied yet; None when
    nothing changed between the book's id and ``L`` (the comparison is exact). ``after``: ``L`` is
    the event's ``u``, so every level must equal the book after it (exact). Otherwise a level the
    event does not touch must equal the book, and a level it touches must equal the book before or
    after it; a touched level with neither value changed more than once inside the event (the event
    carries only the last value) and is counted as undecided, not as a mismatch.

    Only levels inside both the snapshot's range (at or better than its worst level, or the whole
    side when it holds fewer levels than ``limit``) and what the book knows (its horizon and the
    levels seen since) are compared.
    """
    n, wrong, undecided = 0, [], 0
    for side, levels, name, changes in ((builder.bids, bids, "bid", touched.bids if touched else ()),
                                        (builder.asks, asks, "ask", touched.asks if touched else ())):
        limit_key = side_horizon(levels, side.bid, limit)
        exch = dict(levels)
        changed = dict(changes)
        prices = set(exch)
        prices.update(p for p, _ in side.within(limit_key))
        prices.update(p for p in changed if side.key(p) <= limit_key)
        for p in sorted(prices):
            if not side.known(p) and not (after and p in changed):
                continue
            e, before = exch.get(p, 0.0), side.qty(p)
            if p in changed:
                if after:
                    want = changed[p]
                elif e == before or e == changed[p]:
                    n += 1
                    continue
                else:
                    undecided += 1
                    continue
            else:
                want = before
            n += 1
            if e != want:
                wrong.append(LevelDiff(name, p, e, want))
    return Comparison(n, wrong, undecided)
