"""Rebuilding a full order book from diff depth by Binance's own procedure (sans-I/O).

A :class:`BookBuilder` is fed REST snapshots and diff events (plain values, no I/O, no
time) and keeps the whole book, every level, in sorted sides. It never guesses across a
break: between a break and the next usable snapshot the book is :attr:`Status.UNKNOWN`.

The continuity rules (stale, continues, bridges a snapshot) are Binance's, defined once in
:mod:`orderbook_core.continuity` and shared with the collector's sync tracker and the
archive's ``depth_continuity`` check.

* A quantity of 0 removes the level, known or not (deleting an unknown level is normal:
  the snapshot is cut at its limit). Levels beyond the snapshot's limit stay unknown until
  they change, as on Binance; top-N well inside the limit is exact.

Feed order: a stream's events in update-id order with each snapshot placed before the first
event whose ``u`` exceeds its id is the exchange's own order (:mod:`.hour` does that). Fed in
receive order instead (a snapshot after the events it covers, as a live client gets it),
the builder keeps the unbroken tail of events seen while unknown (bounded) and replays the
part after a snapshot's id when the snapshot comes.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from enum import Enum
from typing import Iterable, NamedTuple, Sequence

from orderbook_core import continuity
from orderbook_core.streams import Market

Level = tuple[float, float]  # (price, qty)


class Status(str, Enum):
    UNKNOWN = "unknown"  # no usable snapshot since the start or the last break
    KNOWN = "known"  # equal to the exchange's book at ``last_update_id`` (levels within the snapshot's depth)


class Outcome(str, Enum):
    """What one fed item did."""

    APPLIED = "applied"  # continued the known book
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


class Side:
    """One side of a book: price → qty plus the prices kept sorted best first.

    Bids are kept under their negated price so that both sides sort ascending, best first.
    """

    __slots__ = ("_sign", "_qty", "_keys")

    def __init__(self, bid: bool):
        self._sign = -1.0 if bid else 1.0
        self._qty: dict[float, float] = {}
        self._keys = SortedKeys()  # sign * price, ascending = best first

    def __len__(self) -> int:
        return len(self._keys)

    def clear(self) -> None:
        self._qty.clear()
        self._keys.clear()

    def load(self, levels: Iterable[Level]) -> None:
        """Replace the side (a snapshot's side; any order, zero quantities skipped)."""
        s = self._sign
        self._qty = {p: q for p, q in levels if q != 0.0}
        self._keys.load(sorted(s * p for p in self._qty))

    def update(self, levels: Iterable[Level]) -> None:
        """Set absolute quantities; 0 removes the level (an unknown one too)."""
        qty, keys, s = self._qty, self._keys, self._sign
        for p, q in levels:
            if q == 0.0:
                if qty.pop(p, None) is not None:
                    keys.remove(s * p)
            else:
                if p not in qty:
                    keys.add(s * p)
                qty[p] = q

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
        """Top ``n`` bids and asks, best first (empty while unknown)."""
        if self.status is not Status.KNOWN:
            return [], []
        return self.bids.top(n), self.asks.top(n)

    def crossed(self) -> bool:
        b, a = self.bids.best(), self.asks.best()
        return self.status is Status.KNOWN and b is not None and a is not None and b >= a

    def snapshot(self, snap: Snapshot) -> Result:
        """A REST snapshot. Used at once if unknown events after its id are in the tail,
        otherwise kept for the next event."""
        if self.status is Status.KNOWN and self._id is not None and snap.last_update_id <= self._id:
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

    def load_known(self, last_update_id: int, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Resume a known book (a previous hour's end state)."""
        self.bids.load(bids)
        self.asks.load(asks)
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
                return self._event_known(ev)
            return self._result(Outcome.STALE)
        if self.status is Status.KNOWN and self._continues(ev):
            # the book is known through the snapshot's id: the snapshot is not needed
            self._pending = None
            self._apply(ev)
            return self._result(Outcome.APPLIED)
        self._pending = None
        if self._bridges(ev, lid):
            self.bids.load(snap.bids)
            self.asks.load(snap.asks)
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

    def _apply(self, ev: DiffEvent) -> None:
        self.bids.update(ev.bids)
        self.asks.update(ev.asks)
        self._id = ev.last_update_id

    def _break(self) -> None:
        self.status = Status.UNKNOWN
        self._id = None
        self.bids.clear()
        self.asks.clear()
