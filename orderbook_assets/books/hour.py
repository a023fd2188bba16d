"""``book_snapshot``: the top-N book of every diff-depth stream at fixed interval points, built
one UTC hour at a time from that hour's ``depth_update`` and ``depth_rest_snapshot`` rows plus
the previous hour's end state (pure: Arrow tables in, an Arrow table and a state out).

Order and time:

* A stream's events are processed in update-id order (the archive holds each ``u`` once, so
  this is the exchange's order, whatever the receive order across overlapping sessions), each
  REST snapshot placed before the first event whose ``u`` exceeds its id. A snapshot fetched
  seconds after the events it bridges therefore makes the book known from the bridging event
  on: no hole at each resync.
* An event becomes visible at its ``recv_time`` (the running maximum within the stream, so
  time never goes back). The book at interval point ``t`` is the state after every event
  visible at or before ``t``.
* A point is decided by the next event that is not stale: known at the current id if that
  event continues the chain, unknown if it reveals a break (the missed changes happened at
  some unknown moment in between, so no point of that stretch is claimed). Points after the
  hour's last event of a stream take the state as it stands (the next hour cannot revise an
  immutable hour; coverage records any outage there).
* A stream with no diff event in the hour has no rows in it; its state carries over.

What a row claims: ``known`` only when both sides' top N lie inside the horizon the REST
snapshots proved (:mod:`.builder`); otherwise, with the chain known, the row holds each side's
proven leading levels only and ``known_levels`` says how many both sides prove.

The proof (:class:`Proof`, one :class:`StreamProof` a stream): every REST snapshot of the stream
and every partial snapshot of its market and symbol is compared with the book around its id
(:func:`.builder.compare`, before the event that straddles the id is applied and before a REST
snapshot re-bases the book), and counts only if that event continued the book. A stream with
diff events and nothing comparable is unproven.

The end state (:class:`HourState`) holds per stream the full book, its id and each side's
horizon and seen prices, or "unknown" with the bounded unbroken tail of events and any snapshot
still waiting, so the next hour continues exactly. Without a previous state an hour starts unknown and syncs at its first
usable snapshot. Output rows are sorted by ``market, symbol, stream, time``; the same inputs
give the same table (and the same state bytes).

Memory: one stream at a time, its events converted to Python values in chunks; a stream's
builder holds its full book (a few thousand levels a side) and at most ``max_tail`` events.
"""

from __future__ import annotations

import re
from array import array
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterator, NamedTuple

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from orderbook_core.buffer.hours import HOUR_US, hour_folder
from orderbook_core.buffer.levels import LEVEL, LEVELS, as_arrow

from orderbook_assets.archive.datasets import BOOK_SNAPSHOT, BOOK_SNAPSHOT_SCHEMA, TS
from orderbook_core.streams import Market
from orderbook_assets.books.builder import (NOTHING, WHOLE, BookBuilder, DiffEvent, Level, LevelDiff, Outcome,
                                           Snapshot, Status, compare)

#: Where an hour's end state lives, relative to the archive root (:func:`state_key`).
BOOK_STATE = "book_state"
STATE_VERSION = 2  # 2: each side's horizon and seen prices (a version 1 state resumes knowing nothing)
DEFAULT_DEPTH = 25
DEFAULT_INTERVAL_US = 1_000_000
CHUNK = 4096  # events converted to Python values at a time

#: ``book_snapshot`` (DESIGN.md "Datasets"; the one home of the schema is ``archive.datasets``).
SCHEMA = BOOK_SNAPSHOT_SCHEMA


@dataclass(frozen=True)
class Settings:
    """How ``book_snapshot`` samples: top ``depth`` levels every ``interval_us`` (from
    ``ORDERBOOK_BOOK_DEPTH`` and ``ORDERBOOK_BOOK_INTERVAL_MS``: ``orderbook_assets.settings``)."""

    depth: int = DEFAULT_DEPTH
    interval_us: int = DEFAULT_INTERVAL_US
    max_tail: int = 2000

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError(f"book_snapshot depth must be at least 1, not {self.depth}")
        if self.interval_us < 1 or HOUR_US % self.interval_us:
            raise ValueError(f"book_snapshot interval must divide an hour, not {self.interval_us} µs")


class StreamKey(NamedTuple):
    """Stream names repeat across markets (``btcusdt@depth`` on both), so a stream is keyed by both."""

    market: str
    stream: str


@dataclass
class StreamState:
    """One stream's book as an hour ended (serializable)."""

    symbol: str
    status: Status
    last_update_id: int | None = None
    bids: list[Level] = field(default_factory=list)
    asks: list[Level] = field(default_factory=list)
    pending: Snapshot | None = None
    tail: list[DiffEvent] = field(default_factory=list)
    horizons: tuple[float, float] = (NOTHING, NOTHING)  # bid and ask horizon keys (builder.Side.horizon)
    seen: tuple[list[float], list[float]] = ([], [])  # prices known beyond each horizon


def _horizon_json(key: float, bid: bool):
    if key == WHOLE:
        return "whole"
    if key == NOTHING:
        return "none"
    return -key if bid else key


def _horizon_key(v, bid: bool) -> float:
    if v == "whole":
        return WHOLE
    if v == "none":
        return NOTHING
    return -float(v) if bid else float(v)


@dataclass
class HourState:
    """Every stream's :class:`StreamState` at ``hour_end_us`` (the next hour's start)."""

    hour_end_us: int
    streams: dict[StreamKey, StreamState] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """Deterministic JSON (floats round-trip exactly)."""
        return orjson.dumps({
            "version": STATE_VERSION,
            "hour_end_us": self.hour_end_us,
            "streams": [_state_json(k, s) for k, s in sorted(self.streams.items())],
        })

    @classmethod
    def from_bytes(cls, data: bytes) -> "HourState":
        obj = orjson.loads(data)
        if obj.get("version") not in (1, STATE_VERSION):
            raise ValueError(f"book state version {obj.get('version')} is not {STATE_VERSION}")
        streams = {}
        for s in obj["streams"]:
            pending = s["pending"]
            streams[StreamKey(s["market"], s["stream"])] = StreamState(
                symbol=s["symbol"], status=Status(s["status"]), last_update_id=s["last_update_id"],
                bids=[tuple(x) for x in s["bids"]], asks=[tuple(x) for x in s["asks"]],
                pending=None if pending is None else Snapshot(
                    pending["u"], [tuple(x) for x in pending["bids"]], [tuple(x) for x in pending["asks"]],
                    pending.get("limit")),
                tail=[DiffEvent(e["U"], e["u"], e["pu"], [tuple(x) for x in e["bids"]],
                                [tuple(x) for x in e["asks"]]) for e in s["tail"]],
                # version 1 kept no horizon: the carried book proves nothing until a re-base
                horizons=(_horizon_key(s["horizon"][0], True), _horizon_key(s["horizon"][1], False))
                if "horizon" in s else (NOTHING, NOTHING),
                seen=(list(s["seen"][0]), list(s["seen"][1])) if "seen" in s else ([], []),
            )
        return cls(obj["hour_end_us"], streams)


def state_key(hour_us: int) -> str:
    """The archive key of the end state of the hour starting at ``hour_us``."""
    return f"{BOOK_STATE}/{hour_folder(hour_us)}/state.json"


def _state_json(key: StreamKey, s: StreamState) -> dict:
    return {
        "market": key.market, "stream": key.stream, "symbol": s.symbol, "status": s.status.value,
        "last_update_id": s.last_update_id, "bids": s.bids, "asks": s.asks,
        "pending": None if s.pending is None else {
            "u": s.pending.last_update_id, "bids": list(s.pending.bids), "asks": list(s.pending.asks),
            "limit": s.pending.limit},
        "horizon": [_horizon_json(s.horizons[0], True), _horizon_json(s.horizons[1], False)],
        "seen": [sorted(s.seen[0], reverse=True), sorted(s.seen[1])],
        # levels as they are (lists or tuples of pairs: the same JSON), not copied an event at a time
        "tail": [{"U": e.first_update_id, "u": e.last_update_id, "pu": e.prev_update_id,
                  "bids": e.bids, "asks": e.asks} for e in s.tail],
    }


# ---- the proof against the exchange's snapshots ---------------------------------------------


class ProbeKind(str, Enum):
    REST = "rest"  # a depth_rest_snapshot row of the stream
    PARTIAL = "partial"  # a depth_snapshot row (depth5/10/20) of the stream's market and symbol


class Probe(NamedTuple):
    """One of the exchange's own snapshots, to compare with the rebuilt book around its id."""

    kind: ProbeKind
    stream: str  # the partial-depth stream, or the diff stream a REST snapshot was fetched for
    recv_us: int
    last_update_id: int
    bids: list[Level]
    asks: list[Level]
    limit: int | None  # levels a side asked for (None: not recorded)


class Mismatch(NamedTuple):
    """A snapshot that differs from the rebuilt book around its update id, level by level."""

    market: str
    symbol: str
    stream: str  # the diff stream whose book differs
    source: str  # the partial-depth stream, or "rest"
    recv_time_us: int
    last_update_id: int
    event: tuple[int, int]  # (U, u) of the event straddling the snapshot's id
    levels: list[LevelDiff]


class CrossedExample(NamedTuple):
    """The rebuilt book crossed (best bid >= best ask) at an id where the exchange's was not."""

    market: str
    symbol: str
    stream: str  # the diff stream
    last_update_id: int
    best_bid: float
    best_ask: float


@dataclass
class StreamProof:
    """What one diff stream's hour proved: the snapshots it had, compared, matched and not,
    and how many of its rows are fully known, partly known (the chain is known but the top N
    reaches past the horizon) and unknown."""

    market: str
    stream: str
    symbol: str
    diff_events: int = 0
    available: int = 0  # snapshots (REST and partial) of the hour for this stream
    available_rest: int = 0
    comparable: int = 0  # compared with at least one level decided
    matched: int = 0
    mismatched: int = 0
    levels_compared: int = 0
    levels_mismatched: int = 0
    levels_undecided: int = 0
    rows_known: int = 0
    rows_partly_known: int = 0
    rows_unknown: int = 0

    @property
    def unproven(self) -> bool:
        """Diff rows and nothing compared: the hour's books rest on no evidence."""
        return self.diff_events > 0 and self.comparable == 0

    def as_dict(self) -> dict:
        return {**{f: getattr(self, f) for f in self.__dataclass_fields__}, "unproven": self.unproven}


@dataclass
class Proof:
    """The hour's books compared with every snapshot of the exchange around its id."""

    streams: list[StreamProof] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)
    crossed: list[CrossedExample] = field(default_factory=list)  # the WARN: rebuilt crossed, exchange not

    def _sum(self, name: str) -> int:
        return sum(getattr(s, name) for s in self.streams)

    @property
    def available(self) -> int:
        return self._sum("available")

    @property
    def comparable(self) -> int:
        return self._sum("comparable")

    @property
    def matched(self) -> int:
        return self._sum("matched")

    @property
    def mismatched(self) -> int:
        return self._sum("mismatched")

    @property
    def unproven(self) -> list[StreamProof]:
        return [s for s in self.streams if s.unproven]

    @property
    def ok(self) -> bool:
        """No mismatch (unproven streams are reported apart: :attr:`unproven`)."""
        return self.mismatched == 0

    def extend(self, other: "Proof") -> None:
        self.streams.extend(other.streams)
        self.mismatches.extend(other.mismatches)
        self.crossed.extend(other.crossed)


class HourBooks(NamedTuple):
    table: pa.Table
    state: HourState
    proof: Proof


# ---- building an hour ----------------------------------------------------------------------


def build_hour(
    hour_start_us: int,
    updates: pa.Table,
    snapshots: pa.Table,
    previous: HourState | None = None,
    settings: Settings = Settings(),
    partial: pa.Table | None = None,
) -> HourBooks:
    """The hour's ``book_snapshot`` table, its end state and the proof against the exchange's
    snapshots (the REST ones of each stream, and ``partial``).

    Args:
        hour_start_us: the UTC hour (µs since the epoch, on the hour).
        updates: the hour's ``depth_update`` rows (``market, symbol, stream, recv_time,
            first_update_id, last_update_id, prev_update_id, bids, asks`` are read).
        snapshots: the hour's ``depth_rest_snapshot`` rows (``market, symbol, stream,
            last_update_id, bids, asks``; ``limit`` if present).
        previous: the previous hour's end state, or None (every stream starts unknown).
        partial: the hour's ``depth_snapshot`` rows (``market, symbol, stream, recv_time,
            last_update_id, bids, asks``) to prove the rebuilt books against, or None.
    """
    hour = HourBuilder(hour_start_us, previous, settings)
    partials = partials_by_symbol(partial) if partial is not None else {}
    updates = _sorted(updates, ["market", "stream", "last_update_id", "recv_time"])
    snapshots = _sorted(snapshots, ["market", "stream", "last_update_id"])
    upd_groups = dict(_groups(updates))
    snap_groups = dict(_groups(snapshots))
    for key in sorted(set(upd_groups) | set(snap_groups) | set(hour.prior)):
        ev = upd_groups.get(key)
        sn = snap_groups.get(key)
        symbol = _symbol(ev) if ev is not None else _symbol(sn) if sn is not None else hour.prior[key].symbol
        hour.stream(key, ev, sn, partials.get((key.market, symbol), []))
    return hour.finish()


class HourBuilder:
    """:func:`build_hour` one stream at a time, every stream's rows into one table: the shell
    feeds each stream's rows as it reads them (memory holds one stream's hour) and pays for one
    output table an hour, not one a stream."""

    def __init__(self, hour_start_us: int, previous: HourState | None = None, settings: Settings = Settings()):
        if hour_start_us % HOUR_US:
            raise ValueError(f"hour_start_us {hour_start_us} is not on the hour")
        if previous is not None and previous.hour_end_us != hour_start_us:
            raise ValueError("the previous state ends at "
                             f"{previous.hour_end_us}, not at this hour's start {hour_start_us}")
        self.hour_start_us, self.settings = hour_start_us, settings
        self.state = HourState(hour_start_us + HOUR_US)
        self.prior = dict(previous.streams) if previous is not None else {}
        self.proof = Proof()
        self.out = _Columns()

    def stream(self, key: StreamKey, events: pa.Table | None, snapshots: pa.Table | None,
               partials: list[Probe]) -> None:
        """One stream's hour: its ``depth_update`` rows (None: no diff event this hour) sorted by
        ``last_update_id, recv_time``, its ``depth_rest_snapshot`` rows (or None) sorted by
        ``last_update_id``, and the partial snapshots of its market and symbol. A stream without
        either carries its previous state."""
        if events is not None:
            symbol = _symbol(events)
        elif snapshots is not None:
            symbol = _symbol(snapshots)
        else:
            symbol = self.prior[key].symbol
        builder = _resume(key, self.prior.get(key), self.settings)
        if events is not None:
            run = _StreamRun(key, symbol, builder, self.settings, self.hour_start_us, self.out, self.proof)
            run.run(events, snapshots, partials)
        elif snapshots is not None:
            for snap in snapshot_rows(snapshots):
                builder.snapshot(snap)
        self.state.streams[key] = _end_state(symbol, builder)

    def finish(self) -> HourBooks:
        """The hour's table (sorted by ``market, symbol, stream, time``), end state and proof."""
        return HourBooks(self.out.table(), self.state, self.proof)


def _resume(key: StreamKey, prev: StreamState | None, settings: Settings) -> BookBuilder:
    b = BookBuilder(Market(key.market), max_tail=settings.max_tail)
    if prev is not None:
        if prev.status is Status.KNOWN and prev.last_update_id is not None:
            b.load_known(prev.last_update_id, prev.bids, prev.asks, prev.horizons, prev.seen)
        b.load_pending(prev.pending, prev.tail)
    return b


#: Seen prices carried past an hour only within this many levels of the top (the deepest REST
#: snapshot): a drifting book would otherwise carry every price it ever touched.
SEEN_LEVELS = 5000


def _end_state(symbol: str, b: BookBuilder) -> StreamState:
    if b.status is Status.KNOWN:
        b.bids.prune_seen(SEEN_LEVELS)
        b.asks.prune_seen(SEEN_LEVELS)
        return StreamState(symbol, Status.KNOWN, b.last_update_id, b.bids.levels(), b.asks.levels(), b.pending,
                           horizons=(b.bids.horizon, b.asks.horizon),
                           seen=(sorted(b.bids.seen, reverse=True), sorted(b.asks.seen)))
    return StreamState(symbol, Status.UNKNOWN, None, [], [], b.pending, list(b.tail))


_Row = tuple[int, list[Level], list[Level], int, bool]  # lid, bids, asks, known levels, complete


class _StreamRun:
    """One stream through one hour: feed the builder, resolve interval points, prove it
    against every snapshot of the exchange around the snapshot's id."""

    def __init__(self, key: StreamKey, symbol: str, builder: BookBuilder, settings: Settings,
                 hour_start_us: int, out: "_Columns", proof: Proof):
        self.key, self.symbol, self.b, self.s = key, symbol, builder, settings
        self.out, self.proof = out, proof
        self.report = StreamProof(key.market, key.stream, symbol)
        proof.streams.append(self.report)
        self.next_point = hour_start_us
        self.end = hour_start_us + HOUR_US
        self.pending_points: list[int] = []
        self.visible = hour_start_us - 1
        self.probes: list[Probe] = []
        self.next_probe = 0

    def run(self, events: pa.Table, snaps: pa.Table | None, partials: list[Probe]) -> None:
        rest = list(snapshot_rows(snaps)) if snaps is not None else []
        rest_probes = [Probe(ProbeKind.REST, self.key.stream, r, sn.last_update_id, list(sn.bids), list(sn.asks),
                             sn.limit) for sn, r in zip(rest, _unique_recv(snaps))]
        self.probes = sorted(rest_probes + partials, key=lambda p: (p.last_update_id, p.kind.value, p.stream))
        self.report.available = len(self.probes)
        self.report.available_rest = len(rest_probes)
        snap_iter = iter(rest)
        snap = next(snap_iter, None)
        for recv_us, ev in event_rows(events):
            # compared before the snapshots are fed: a REST snapshot proves the book, then re-bases it
            tentative = self._compare(ev)
            while snap is not None and snap.last_update_id <= ev.last_update_id:
                self.b.snapshot(snap)
                snap = next(snap_iter, None)
            self._event(recv_us, ev, tentative)
        while snap is not None:
            self.b.snapshot(snap)
            snap = next(snap_iter, None)
        self._points_before(self.end)
        self._emit(self._row())  # after the hour's last event: the book as it stands

    def _event(self, recv_us: int, ev: DiffEvent, tentative: list) -> None:
        self.report.diff_events += 1
        self.visible = max(self.visible, recv_us)
        self._points_before(self.visible)  # a point at the event's own time includes it
        pre = self._row() if self.pending_points else None
        res = self.b.event(ev)
        if res.outcome is Outcome.STALE:
            if res.status is Status.KNOWN:  # the book stayed at its id: snapshots exactly at it count
                for probe, cmp in tentative:
                    if cmp is not None:
                        self._record(probe, ev, cmp)
            return
        # points before this event saw the true book only if the chain continued through it
        continued = res.outcome in (Outcome.APPLIED, Outcome.REBASED)
        self._emit(pre if continued else None)
        if continued:  # the book before the event was the exchange's: the comparisons count
            for probe, cmp in tentative:
                if cmp is not None:
                    self._record(probe, ev, cmp)
        elif res.outcome is Outcome.SYNCED:
            # the book is the snapshot plus this event: a partial snapshot at this event's u is a
            # proof of both (never the REST snapshot that synced it: that would compare it with itself)
            for probe, cmp in tentative:
                if cmp is None:
                    self._record(probe, ev, compare(self.b, probe.bids, probe.asks, probe.limit))

    def _compare(self, ev: DiffEvent) -> list:
        """Compare the snapshots whose id lies at or before ``ev``'s ``u`` (and after the book's id)
        with the book before ``ev`` (and ``ev``'s changes); kept until ``ev`` proves the book
        continued through it."""
        out = []
        probes, i = self.probes, self.next_probe
        lid = self.b.last_update_id
        while i < len(probes) and probes[i].last_update_id <= ev.last_update_id:
            p = probes[i]
            i += 1
            L = p.last_update_id
            if lid is None and L == ev.last_update_id and p.kind is ProbeKind.PARTIAL:
                out.append((p, None))  # the book may sync at this event: compared after it, exactly
                continue
            if lid is None or L < lid:
                continue  # the book was unknown there, or the id was passed: not comparable
            if L == lid or L < ev.first_update_id:
                cmp = compare(self.b, p.bids, p.asks, p.limit)  # nothing changed in between: exact
            elif L == ev.last_update_id:
                cmp = compare(self.b, p.bids, p.asks, p.limit, ev, after=True)
            else:
                cmp = compare(self.b, p.bids, p.asks, p.limit, ev)
            out.append((p, cmp))
        self.next_probe = i
        return out

    def _record(self, p: Probe, ev: DiffEvent, cmp) -> None:
        r = self.report
        r.levels_undecided += cmp.undecided
        if cmp.levels == 0:
            return  # nothing inside the snapshot's range was known: compared nothing
        r.comparable += 1
        r.levels_compared += cmp.levels
        if cmp.mismatches:
            r.mismatched += 1
            r.levels_mismatched += len(cmp.mismatches)
            self.proof.mismatches.append(Mismatch(
                self.key.market, self.symbol, self.key.stream, p.stream if p.kind is ProbeKind.PARTIAL else "rest",
                p.recv_us, p.last_update_id, (ev.first_update_id, ev.last_update_id), cmp.mismatches))
        else:
            r.matched += 1
        exch_crossed = bool(p.bids and p.asks and p.bids[0][0] >= p.asks[0][0])
        if p.last_update_id == ev.last_update_id and self.b.crossed() and not exch_crossed:
            self.proof.crossed.append(CrossedExample(self.key.market, self.symbol, self.key.stream,
                                                     p.last_update_id, self.b.bids.best(), self.b.asks.best()))

    def _points_before(self, t: int) -> None:
        """Queue the interval points before ``t`` (exclusive) for the next decision."""
        stop = min(t, self.end)
        if self.next_point >= stop:
            return
        if self.pending_points and self.b.status is not Status.KNOWN:
            self._emit(None)  # unknown whatever comes next: no need to hold them
        step = self.s.interval_us
        first = self.next_point
        n = (stop - 1 - first) // step + 1
        self.pending_points.extend(range(first, first + n * step, step))
        self.next_point = first + n * step

    def _row(self) -> _Row | None:
        """The book as far as it is proven, or None while unknown."""
        if self.b.status is not Status.KNOWN:
            return None
        top = self.b.known_top(self.s.depth)
        return self.b.last_update_id, top.bids, top.asks, top.known_levels, top.complete  # type: ignore[return-value]

    def _emit(self, row: _Row | None) -> None:
        if not self.pending_points:
            return
        lid, bids, asks, known_levels, complete = row if row is not None else (None, [], [], 0, False)
        n = len(self.pending_points)
        if row is None:
            self.report.rows_unknown += n
        elif complete:
            self.report.rows_known += n
        else:
            self.report.rows_partly_known += n
        self.out.add(self.key, self.symbol, self.pending_points, lid, bids, asks, known_levels, complete)
        self.pending_points = []


def _unique_recv(snaps: pa.Table | None) -> list[int]:
    """The receive times of :func:`snapshot_rows`'s snapshots (a repeated id once, the first)."""
    if snaps is None:
        return []
    ids = snaps.column("last_update_id").to_pylist()
    recv = (snaps.column("recv_time").cast(pa.int64()).to_pylist() if "recv_time" in snaps.column_names
            else [0] * len(ids))
    out, last = [], None
    for u, r in zip(ids, recv):
        if u != last:
            out.append(r)
            last = u
    return out


class _Columns:
    """The output rows, kept as runs: the points one decision resolves share everything but
    their time (an unknown stretch, or the book between two events), so a run's values are
    stored once and repeated when the table is built (an hour is 3,600 rows a stream at the
    default interval, however few its events)."""

    def __init__(self) -> None:
        self.time = array("q")  # 8 bytes a row, not a Python int each (millions of rows an hour)
        self.n: list[int] = []  # points a run
        self.market: list[str] = []
        self.symbol: list[str] = []
        self.stream: list[str] = []
        self.lid: list[int | None] = []
        self.known: list[bool] = []
        self.known_levels: list[int] = []
        self.bid_n: list[int] = []
        self.ask_n: list[int] = []
        self.bid_vals: list[list[float]] = []  # a run's levels, flat (price, qty, ...)
        self.ask_vals: list[list[float]] = []

    def add(self, key: StreamKey, symbol: str, times: list[int], lid: int | None,
            bids: list[Level], asks: list[Level], known_levels: int, complete: bool) -> None:
        self.time.extend(times)
        self.n.append(len(times))
        self.market.append(key.market)
        self.symbol.append(symbol)
        self.stream.append(key.stream)
        self.lid.append(lid)
        self.known.append(complete)
        self.known_levels.append(known_levels)
        self.bid_n.append(len(bids))
        self.ask_n.append(len(asks))
        self.bid_vals.append([v for lv in bids for v in lv])
        self.ask_vals.append([v for lv in asks for v in lv])

    def table(self) -> pa.Table:
        n = np.asarray(self.n, dtype=np.int64)
        run = pa.array(np.repeat(np.arange(len(n), dtype=np.int64), n))  # each row's run
        time = np.frombuffer(self.time, dtype=np.int64)

        def repeated(values: list, type_: pa.DataType) -> pa.Array:
            return pa.array(values, type_).take(run)

        t = pa.table([
            _repeated_strings(self.market, n, run), _repeated_strings(self.symbol, n, run),
            _repeated_strings(self.stream, n, run), pa.array(time, pa.int64()).cast(TS),
            repeated(self.lid, pa.int64()), repeated(self.known, pa.bool_()),
            repeated(self.known_levels, pa.int32()),
            _repeated_levels(self.bid_vals, self.bid_n, n), _repeated_levels(self.ask_vals, self.ask_n, n),
        ], schema=SCHEMA)
        if t.num_rows and not self._in_order(time):
            t = t.take(pc.sort_indices(t, [("market", "ascending"), ("symbol", "ascending"),
                                           ("stream", "ascending"), ("time", "ascending")]))
        return t

    def _in_order(self, time: np.ndarray) -> bool:
        """Whether the rows already are in ``market, symbol, stream, time`` order (the order is
        then unique: a stream's times never repeat), as they come when the streams are fed in
        key order: sorting a million rows by three strings costs more than building them."""
        keys = list(zip(self.market, self.symbol, self.stream))
        if any(b < a for a, b in zip(keys, keys[1:])):
            return False
        n = np.asarray(self.n, dtype=np.int64)
        ascending = np.diff(time) > 0
        # where a run starts a new stream, its first time may be below the last one's
        new_stream = np.asarray([False] + [a != b for a, b in zip(keys, keys[1:])], dtype=bool)
        starts = np.cumsum(n) - n
        ascending[starts[new_stream] - 1] = True
        return bool(ascending.all())


def _repeated_strings(values: list[str], n: np.ndarray, run: pa.Array) -> pa.Array:
    """Each run's string ``n`` times, as one buffer of bytes (taking millions of rows of a few
    thousand names one row at a time cost more than writing them)."""
    encoded = [v.encode() for v in values]
    lengths = np.repeat(np.asarray([len(e) for e in encoded], dtype=np.int64), n)
    total = int(lengths.sum())
    if total > np.iinfo(np.int32).max:  # past what a string array's 32-bit offsets address
        return pa.array(values, pa.string()).take(run)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    data = b"".join(e * k for e, k in zip(encoded, n.tolist()))
    return pa.StringArray.from_buffers(len(lengths), pa.py_buffer(offsets), pa.py_buffer(data))


def _repeated_levels(runs: list[list[float]], counts: list[int], n: np.ndarray) -> pa.ListArray:
    """Each run's levels (flat price, qty values) ``n`` times, one list a row."""
    flat = [np.tile(np.asarray(v, dtype=np.float64), k) for v, k in zip(runs, n.tolist()) if v and k]
    vals = np.concatenate(flat) if flat else np.empty(0, dtype=np.float64)
    return _levels(vals, np.repeat(np.asarray(counts, dtype=np.int64), n))


def _levels(flat, counts) -> pa.ListArray:
    vals = np.asarray(flat, dtype=np.float64).reshape(-1, 2)
    offsets = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(np.asarray(counts, dtype=np.int32), out=offsets[1:])
    struct = pa.StructArray.from_arrays([as_arrow(np.ascontiguousarray(vals[:, 0]), pa.float64()),
                                         as_arrow(np.ascontiguousarray(vals[:, 1]), pa.float64())],
                                        fields=list(LEVEL))
    return pa.ListArray.from_arrays(as_arrow(offsets, pa.int32()), struct, type=LEVELS)


# ---- reading the input tables --------------------------------------------------------------


def _sorted(t: pa.Table, keys: list[str]) -> pa.Table:
    if t.num_rows == 0:
        return t
    return t.take(pc.sort_indices(t, [(k, "ascending") for k in keys]))


def _groups(t: pa.Table) -> Iterator[tuple[StreamKey, pa.Table]]:
    """Consecutive rows of one (market, stream) of a table sorted by them."""
    if t.num_rows == 0:
        return
    market = t.column("market").to_pylist()
    stream = t.column("stream").to_pylist()
    start = 0
    for i in range(1, len(market) + 1):
        if i == len(market) or market[i] != market[start] or stream[i] != stream[start]:
            yield StreamKey(market[start], stream[start]), t.slice(start, i - start)
            start = i


def _symbol(t: pa.Table) -> str:
    return t.column("symbol")[0].as_py()


def _side_values(col: pa.ChunkedArray | pa.ListArray) -> tuple[list[int], list[Level]]:
    """A chunk's level lists as Python values: (offsets, every level as a (price, qty) pair)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    # Python ints and one list of pairs a chunk: a row's levels are then one list slice
    offsets = (arr.offsets.to_numpy() - arr.offsets[0].as_py()).tolist()
    values = arr.flatten()
    return offsets, list(zip(values.field("price").to_pylist(), values.field("qty").to_pylist()))


def _pairs(offsets: list[int], pairs: list[Level], i: int) -> list[Level]:
    return pairs[offsets[i]:offsets[i + 1]]


def event_rows(t: pa.Table) -> Iterator[tuple[int, DiffEvent]]:
    """(recv_time µs, event) in the table's order, a chunk at a time; repeated ``u`` once."""
    last_u = None
    for start in range(0, t.num_rows, CHUNK):
        c = t.slice(start, CHUNK)
        recv = c.column("recv_time").cast(pa.int64()).to_pylist()
        U = c.column("first_update_id").to_pylist()
        u = c.column("last_update_id").to_pylist()
        pu = c.column("prev_update_id").to_pylist()
        bo, bv = _side_values(c.column("bids"))
        ao, av = _side_values(c.column("asks"))
        for i in range(c.num_rows):
            if u[i] == last_u:
                continue
            last_u = u[i]
            yield recv[i], DiffEvent(U[i], u[i], pu[i], bv[bo[i]:bo[i + 1]], av[ao[i]:ao[i + 1]])


def snapshot_rows(t: pa.Table) -> Iterator[Snapshot]:
    """REST snapshots in the table's order, a repeated id once. ``depth_rest_snapshot`` records no
    limit today: a ``limit`` column, where a table has one, says which sides were whole."""
    last = None
    for start in range(0, t.num_rows, 64):  # REST snapshots are big (up to 5000 levels a side)
        c = t.slice(start, 64)
        u = c.column("last_update_id").to_pylist()
        lim = c.column("limit").to_pylist() if "limit" in c.column_names else [None] * c.num_rows
        bo, bv = _side_values(c.column("bids"))
        ao, av = _side_values(c.column("asks"))
        for i in range(c.num_rows):
            if u[i] == last:
                continue
            last = u[i]
            yield Snapshot(u[i], _pairs(bo, bv, i), _pairs(ao, av, i), lim[i])


DEPTH_N = re.compile(r"@depth(\d+)")


def partials_by_symbol(t: pa.Table) -> dict[tuple[str, str], list[Probe]]:
    """(market, symbol) → its partial snapshots as probes (depth from the stream name)."""
    out: dict[tuple[str, str], list[Probe]] = {}
    if t.num_rows == 0:
        return out
    t = _sorted(t, ["market", "symbol", "stream", "last_update_id", "recv_time"])
    market = t.column("market").to_pylist()
    symbol = t.column("symbol").to_pylist()
    stream = t.column("stream").to_pylist()
    recv = t.column("recv_time").cast(pa.int64()).to_pylist()
    lid = t.column("last_update_id").to_pylist()
    bo, bv = _side_values(t.column("bids"))
    ao, av = _side_values(t.column("asks"))
    for i in range(t.num_rows):
        bids, asks = _pairs(bo, bv, i), _pairs(ao, av, i)
        m = DEPTH_N.search(stream[i])
        depth = int(m.group(1)) if m else None
        out.setdefault((market[i], symbol[i]), []).append(
            Probe(ProbeKind.PARTIAL, stream[i], recv[i], lid[i], bids, asks, depth))
    return out


# ---- checks over a built hour --------------------------------------------------------------


class CrossedRows(NamedTuple):
    """Known ``book_snapshot`` rows whose best bid is at or above the best ask (a WARN: the
    exchange's own books are not crossed), with the first few as examples."""

    count: int
    examples: list[dict]


def crossed_rows(table: pa.Table, examples: int = 5) -> CrossedRows:
    """The crossed known rows of a ``book_snapshot`` table."""
    if table.num_rows == 0:
        return CrossedRows(0, [])
    two_sided = pc.and_(pc.greater(pc.list_value_length(table["bids"]), 0),
                        pc.greater(pc.list_value_length(table["asks"]), 0))
    t = table.filter(pc.and_(table["known"], two_sided))
    if t.num_rows == 0:
        return CrossedRows(0, [])
    bid = pc.struct_field(pc.list_element(t["bids"], 0), "price")
    ask = pc.struct_field(pc.list_element(t["asks"], 0), "price")
    crossed = t.filter(pc.greater_equal(bid, ask))
    rows = crossed.slice(0, examples).to_pylist()
    return CrossedRows(crossed.num_rows, [
        {"market": r["market"], "stream": r["stream"], "time": r["time"], "last_update_id": r["last_update_id"],
         "best_bid": r["bids"][0]["price"], "best_ask": r["asks"][0]["price"]} for r in rows])
