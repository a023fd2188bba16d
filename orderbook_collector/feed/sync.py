"""Sans-I/O continuity: diff-depth sync state and trade-id gaps, as data.

The writer thread feeds these trackers the rows it has just stored (never the rows the
dedup key refused) in the order it stores them, plus the REST snapshots it stores; they
answer with the rows that record what happened (:class:`DepthSyncRecord`,
:class:`TradeGapRecord`) and with :class:`SnapshotRequest` items for the event loop.
Nothing here touches a socket, a file or a clock.

Diff depth (one :class:`DiffDepthTracker` per stream). An event *continues* the stream
by :func:`orderbook_core.continuity.continues` (spot ``U <= previous u + 1 <= u``, USD-M
``pu == previous u``; "previous" is the
last stored event of the stream, whichever session stored it: continuity is a property
of the data, so a make-before-break overlap that continues the stream breaks nothing).
Otherwise it is a 'break':

* reason 'connect' when it is the first event its session stores for the stream (also
  when the stream has no stored event at all; ``before_*`` is then null);
* reason 'gap' for a discontinuity inside a session. Update ids that go *backwards*
  inside a session (``u`` <= previous ``u``, not a duplicate: those never get here) are a
  'gap' break too, and the stream continues from that event: a book cannot be trusted
  across a rewind, so it waits for a snapshot like any other break. An older event from
  *another* session (the lagging side of an overlap) is stored but moves nothing.

After a break the stream is *broken* and asks for a REST snapshot. A snapshot with
``lastUpdateId`` L syncs it by Binance's procedure (the spot API docs' "How to manage a local
order book correctly" in ``web-socket-streams.md``, and the USD-M page of the same name; the
rule itself is :mod:`orderbook_core.continuity`), applied to the
events stored since the break: on spot, events with ``u <= L`` are stale and the first
event with ``U <= L + 1 <= u`` is the first one applied; on USD-M, events with ``u < L``
are stale and the first event must have ``U <= L <= u``. That event may already be
stored (the usual case: REST is slower than the stream) or still to come. A snapshot
older than the first event after the break (spot ``L + 1 < U``, USD-M ``L < U`` and ``pu != L``), or one
that falls between two events (only possible when ids are not contiguous), cannot
sync: the tracker asks for another. A 'synced' row names the snapshot (reason
'snapshot', ``snapshot_update_id``) and the first event applied on top of it
(``after_*``); its ``recv_us`` is when both were there (the later of the two).

Re-basing: a REST snapshot holds only its top ``limit`` levels and diffs report only
changed levels, so a level beyond the snapshot's depth that never changes is in no row.
Every new session of a stream therefore asks for a 'connect' snapshot, also when its
first event continues the stream (then with ``repair=False``: nothing is broken), and
the collector re-bases each stream periodically ('rebase', feed/rebase.py). A snapshot
that reaches a synced stream is stored (it is data) and moves nothing here: no break,
no request.

Trades and aggTrades (one :class:`TradeIdTracker` per stream): ids are consecutive per
symbol, so an id above ``last + 1`` records the missing range, across sessions too.
Ids at or below the last one are replays, never gaps.

Limits: a stream stays broken while no snapshot arrives; the events kept since a break
are capped (:data:`MAX_KEPT_EVENTS`), and a snapshot older than the oldest kept event
is treated as too old. A race between two overlapping connections that store a later
event before an earlier one shows as a break (and a wasted snapshot), never as a
silent gap.
"""

from __future__ import annotations

from collections import deque
from enum import Enum
from typing import NamedTuple, Union

from orderbook_core.buffer.records import (
    AggTradeRecord,
    DepthRestSnapshotRecord,
    DepthSyncRecord,
    DepthUpdateRecord,
    TradeGapRecord,
    TradeRecord,
)
from orderbook_core import continuity
from orderbook_core.streams import Kind, Market, StreamSpec

#: Events kept per broken stream while it waits for a snapshot (~30 min at 100 ms).
MAX_KEPT_EVENTS = 20_000


class SyncEvent(str, Enum):
    BREAK = "break"
    SYNCED = "synced"


class SyncReason(str, Enum):
    """Why a stream broke (``depth_sync.reason``), why a REST snapshot was fetched
    (``depth_rest_snapshot.reason``: connect, gap, rebase), or what synced it (snapshot)."""

    CONNECT = "connect"  # a new session: a break when it does not continue the stream, a fresh base either way
    GAP = "gap"  # a discontinuity (or a rewind) inside a session
    SNAPSHOT = "snapshot"  # synced by a REST snapshot
    REBASE = "rebase"  # the periodic fresh base of a synced stream (feed/rebase.py)


class SnapshotRequest(NamedTuple):
    """The event loop should fetch a REST snapshot for ``stream`` (a diff stream's key).

    ``repair`` is False when the stream is synced and the snapshot is only a fresh base
    (a new session that continues the stream): the queue serves repairs first.
    """

    stream: str
    reason: SyncReason
    repair: bool = True


class LastEvent(NamedTuple):
    """The last stored event of a diff stream: what a restart seeds a tracker with."""

    last_update_id: int
    event_ms: int | None
    session_id: int | None


Output = Union[DepthSyncRecord, TradeGapRecord, SnapshotRequest]
_NOTHING: list = []  # shared empty answer of the per-row path (never appended to)


class _Kept(NamedTuple):
    first_update_id: int
    last_update_id: int
    prev_update_id: int | None
    event_ms: int
    session_id: int
    recv_us: int


class DiffDepthTracker:
    """The sync state of one diff-depth stream (see the module docstring).

    Args:
        stream: the stream's key.
        market: which continuity rule applies (:mod:`orderbook_core.continuity`).
        last: the stream's last stored event, None if it has none.
        synced: whether the stored data after ``last``'s last snapshot is rebuildable;
            a stream with stored events but no recorded sync state is not.
    """

    __slots__ = ("stream", "market", "_rule", "last_u", "last_event_ms", "last_sid", "synced", "sessions", "kept", "snapshot",
                 "reason")

    def __init__(self, stream: str, market: Market, last: LastEvent | None = None, synced: bool = False) -> None:
        self.stream = stream
        self.market = market
        self._rule = continuity.continues_rule(market)
        # the last stored event (plain attributes: this is the writer's per-row path)
        self.last_u, self.last_event_ms, self.last_sid = last if last is not None else (None, None, None)
        self.synced = synced
        self.sessions: set[int] = set() if self.last_sid is None else {self.last_sid}
        self.kept: deque[_Kept] = deque(maxlen=MAX_KEPT_EVENTS)  # events since the break, while broken
        self.snapshot: DepthRestSnapshotRecord | None = None  # waiting for its first event
        self.reason = SyncReason.CONNECT  # why it is broken (for the snapshot requests)

    @property
    def last(self) -> LastEvent | None:
        return None if self.last_u is None else LastEvent(self.last_u, self.last_event_ms, self.last_sid)

    def state(self) -> tuple:
        """Everything :meth:`restore` needs to undo what came after (cheap while in sync)."""
        return (self.last_u, self.last_event_ms, self.last_sid, self.synced, set(self.sessions),
                deque(self.kept, maxlen=MAX_KEPT_EVENTS) if self.kept else None, self.snapshot, self.reason)

    def restore(self, state: tuple) -> None:
        (self.last_u, self.last_event_ms, self.last_sid, self.synced, self.sessions, kept, self.snapshot,
         self.reason) = state
        self.kept = kept if kept is not None else deque(maxlen=MAX_KEPT_EVENTS)

    def _continues(self, r: DepthUpdateRecord) -> bool:
        return self._rule(self.last_u, r.first_update_id, r.last_update_id, r.prev_update_id)

    def on_event(self, r: DepthUpdateRecord) -> list[Output]:
        """A stored diff event of this stream, in store order."""
        if self.synced and r.session_id == self.last_sid and self._continues(r):  # the usual case
            self.last_u, self.last_event_ms = r.last_update_id, r.event_ms
            return _NOTHING
        first_of_session = r.session_id not in self.sessions
        last = self.last
        if last is not None and r.last_update_id <= last.last_update_id:
            if first_of_session or r.session_id != last.session_id:
                return []  # older data from an overlapping connection: stored, moves nothing
            return self._break(r, SyncReason.GAP)  # a rewind inside one session
        if last is None or not self._continues(r):
            return self._break(r, SyncReason.CONNECT if first_of_session else SyncReason.GAP)
        self._advance(r)
        if self.synced:
            if first_of_session:
                # Nothing to repair, yet every session starts from a fresh REST base: levels
                # beyond the last snapshot's depth that have not changed since are in no diff.
                return [SnapshotRequest(self.stream, SyncReason.CONNECT, repair=False)]
            return _NOTHING
        self.kept.append(_kept(r))
        out: list[Output] = []
        if first_of_session:  # a restart or reconnect while broken: nobody may be fetching for it
            out.append(SnapshotRequest(self.stream, SyncReason.CONNECT))
        return out + self._try_sync()

    def on_snapshot(self, s: DepthRestSnapshotRecord) -> list[Output]:
        """A stored REST snapshot fetched for this stream."""
        if self.synced:
            return []  # nothing to repair; the snapshot is data all the same
        if self.snapshot is None or s.last_update_id > self.snapshot.last_update_id:
            self.snapshot = s
        return self._try_sync()

    def close_session(self, session_id: int) -> None:
        if self.last_sid != session_id:
            self.sessions.discard(session_id)

    def _advance(self, r: DepthUpdateRecord) -> None:
        self.sessions.add(r.session_id)
        self.last_u, self.last_event_ms, self.last_sid = r.last_update_id, r.event_ms, r.session_id

    def _break(self, r: DepthUpdateRecord, reason: SyncReason) -> list[Output]:
        before = self.last
        self._advance(r)
        self.synced = False
        self.reason = reason
        self.kept.clear()
        self.kept.append(_kept(r))
        row = DepthSyncRecord(
            self.stream, r.session_id, r.recv_us, SyncEvent.BREAK.value, reason.value,
            before.last_update_id if before else None, before.event_ms if before else None,
            r.first_update_id, r.last_update_id, r.prev_update_id, r.event_ms, None,
        )
        # A snapshot that was waiting may bridge the very event that broke the stream.
        return [row, SnapshotRequest(self.stream, reason), *self._try_sync(quiet=True)]

    def _try_sync(self, quiet: bool = False) -> list[Output]:
        """Apply Binance's procedure to the waiting snapshot and the events since the break."""
        s = self.snapshot
        if s is None or not self.kept:
            return []
        lid = s.last_update_id
        for e in self.kept:
            if not continuity.stale(self.market, lid, e.last_update_id):  # the first event that is not stale
                if not continuity.bridges(self.market, lid, e.first_update_id, e.last_update_id, e.prev_update_id):
                    return self._refuse(quiet)  # older than that event, or between two events
                return self._synced(s, e)
        return []  # newer than every event so far: its first event is still to come

    def _refuse(self, quiet: bool) -> list[Output]:
        self.snapshot = None
        return [] if quiet else [SnapshotRequest(self.stream, self.reason)]

    def _synced(self, s: DepthRestSnapshotRecord, e: _Kept) -> list[Output]:
        self.synced = True
        self.snapshot = None
        self.kept.clear()
        return [DepthSyncRecord(
            self.stream, e.session_id, max(e.recv_us, s.recv_us), SyncEvent.SYNCED.value, SyncReason.SNAPSHOT.value,
            None, None, e.first_update_id, e.last_update_id, e.prev_update_id, e.event_ms, s.last_update_id,
        )]


def _kept(r: DepthUpdateRecord) -> _Kept:
    return _Kept(r.first_update_id, r.last_update_id, r.prev_update_id, r.event_ms, r.session_id, r.recv_us)


class TradeIdTracker:
    """Consecutive trade (or aggTrade) ids of one stream; a jump is a gap with its range."""

    __slots__ = ("stream", "dataset", "last_id", "last_event_ms")

    def __init__(self, stream: str, dataset: str, last_id: int | None = None, last_event_ms: int | None = None):
        self.stream = stream
        self.dataset = dataset
        self.last_id = last_id
        self.last_event_ms = last_event_ms

    def state(self) -> tuple:
        return self.last_id, self.last_event_ms

    def restore(self, state: tuple) -> None:
        self.last_id, self.last_event_ms = state

    def on_row(self, r: TradeRecord | AggTradeRecord) -> TradeGapRecord | None:
        tid = r.trade_id if type(r) is TradeRecord else r.agg_trade_id
        last = self.last_id
        if last is not None and tid <= last:
            return None  # a replay: stored if new to the buffer, never a gap
        gap = None
        if last is not None and tid > last + 1:
            gap = TradeGapRecord(self.stream, r.session_id, r.recv_us, self.dataset, last + 1, tid - 1,
                                 self.last_event_ms, r.event_ms)
        self.last_id, self.last_event_ms = tid, r.event_ms
        return gap


def trade_id(r: TradeRecord | AggTradeRecord) -> int:
    return r.trade_id if type(r) is TradeRecord else r.agg_trade_id


class Continuity:
    """Every stream's tracker, with an undo log so a batch that fails to commit leaves no trace.

    The writer calls :meth:`process` inside its transaction, then :meth:`commit` after the
    COMMIT returned, or :meth:`rollback` if it failed (the batch is retried as it was).
    """

    def __init__(self, streams: list[StreamSpec]) -> None:
        self.depth: dict[str, DiffDepthTracker] = {}
        self.trades: dict[str, TradeIdTracker] = {}
        self._market: dict[str, Market] = {}
        self._undo: dict[str, object] = {}
        self.add_streams(streams)

    def add_streams(self, streams: list[StreamSpec]) -> None:
        """Track these streams too (a stream already tracked keeps its state)."""
        for s in streams:
            if s.key in self.depth or s.key in self.trades:
                continue
            self._market[s.key] = s.market
            if s.type is Kind.DIFF_DEPTH:
                self.depth[s.key] = DiffDepthTracker(s.key, s.market)
            elif s.type in (Kind.TRADE, Kind.AGG_TRADE):
                self.trades[s.key] = TradeIdTracker(s.key, s.type.dataset)

    def seed_depth(self, stream: str, last: LastEvent | None, synced: bool) -> None:
        self.depth[stream] = DiffDepthTracker(stream, self._market[stream], last, synced)

    def seed_trades(self, stream: str, last_id: int | None, last_event_ms: int | None) -> None:
        t = self.trades[stream]
        self.trades[stream] = TradeIdTracker(stream, t.dataset, last_id, last_event_ms)

    def _depth(self, stream: str) -> DiffDepthTracker | None:
        t = self.depth.get(stream)
        if t is not None and stream not in self._undo:
            self._undo[stream] = t.state()
        return t

    def process(self, rows: list, snapshots: list[DepthRestSnapshotRecord]) -> tuple[list, list[SnapshotRequest]]:
        """Stored rows (any dataset, store order) and stored snapshots → (rows to store, requests).

        Trade rows are taken per stream in id order: within one batch the dedup key has
        already made arrival order irrelevant, and an overlap's race must not look like a gap.
        """
        records: list = []
        requests: list[SnapshotRequest] = []
        trades: dict[str, list] = {}
        depth, undo = self.depth, self._undo
        for r in rows:
            kind = type(r)
            if kind is DepthUpdateRecord:
                t = depth.get(r.stream)
                if t is None:
                    continue
                if r.stream not in undo:
                    undo[r.stream] = t.state()
                out = t.on_event(r)
                if out:
                    self._route(out, records, requests)
            elif kind is TradeRecord or kind is AggTradeRecord:
                trades.setdefault(r.stream, []).append(r)
        for stream, rs in trades.items():
            t = self.trades.get(stream)
            if t is None:
                continue
            if stream not in self._undo:
                self._undo[stream] = t.state()
            rs.sort(key=trade_id)
            for r in rs:
                gap = t.on_row(r)
                if gap is not None:
                    records.append(gap)
        for s in snapshots:
            t = self._depth(s.stream)
            if t is not None:
                self._route(t.on_snapshot(s), records, requests)
        return records, requests

    @staticmethod
    def _route(out: list[Output], records: list, requests: list[SnapshotRequest]) -> None:
        for o in out:
            (requests if type(o) is SnapshotRequest else records).append(o)

    def commit(self) -> None:
        self._undo.clear()

    def rollback(self) -> None:
        for stream, state in self._undo.items():
            (self.depth.get(stream) or self.trades[stream]).restore(state)
        self._undo.clear()

    def close_session(self, session_id: int) -> None:
        for t in self.depth.values():
            t.close_session(session_id)

    def broken(self) -> list[SnapshotRequest]:
        """A snapshot request for every broken stream (what the loop should fetch now)."""
        return [SnapshotRequest(k, t.reason) for k, t in self.depth.items() if not t.synced and t.last_u is not None]
