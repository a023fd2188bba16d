"""The writer thread: the only owner of the buffer's write connection.

The event loop calls :meth:`Writer.submit` for every received frame; it never
blocks. Items go into a bounded queue, or into the :class:`~.spill.Spill` once
the queue is full (and keep going there, in order, until the spill is replayed).
The thread takes items in group-commit batches bounded by size (``max_batch``)
and time (``commit_interval``), decodes them with the sans-I/O decoder, and
commits each batch in one ``BEGIN IMMEDIATE`` transaction.

A message is *acknowledged* once the COMMIT of its batch returned. If a commit
fails (database locked, disk full) the batch stays in memory and is retried
with capped backoff; the reader keeps reading and spills meanwhile.

Queue items are the typed records of :mod:`orderbook_core.buffer.records`.

Continuity is data (:mod:`orderbook_collector.feed.sync`): the writer runs the diff-depth
and trade-id trackers on the rows it has just stored (rows the dedup key refused never
move them) and stores the ``depth_sync`` and ``trade_gap`` rows they produce in the same
transaction as the rows that reveal them. The event loop's silence records (``silence``) and
the REST snapshots (``depth_rest_snapshot``) come through the queue like frames; a 'resumed'
silence record also ends its stream's open 'silent' row. At start the trackers are seeded
from the buffer (each stream's last stored update or trade id and sync state), so a restart
or a spill replay makes no false break or gap. Streams that need a REST snapshot are reported after each
commit through ``on_snapshot_needed`` (called in the writer thread).
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from orderbook_core import buffer, kinds
from orderbook_core.buffer import writes
from orderbook_core.errors import QuarantineReason, StorageError
from orderbook_collector.metrics import Metrics, WriteFailure
from orderbook_core.buffer.records import (
    REST_SESSION, DepthRestSnapshotRecord, DepthSyncRecord, Event, EventKind, Frame, Item, OpenInterestRecord, Quarantined,
    Row, SessionClose, SessionOpen, SessionStreams, Stop, TradeGapRecord,
)
from orderbook_core.buffer.rows import OTHER_TABLES, RECV_US, ROW_TABLES, SEQ, SESSION_ID
from orderbook_collector.feed.protocol import Decoder, Market, StreamSpec, raw_bytes
from orderbook_core.streams import OPEN_INTEREST_KIND, Kind, parse_open_interest_key, parse_stream_name, spec as stream_spec
from orderbook_collector.feed.sync import Continuity, LastEvent, SnapshotRequest
from orderbook_collector.writer.spill import Spill

log = logging.getLogger(__name__)

#: A session whose messages are at least this share duplicates, over at least
#: DUPLICATE_ALARM_MIN messages, is reported once (log WARNING and a metric). On a real
#: feed that means the exchange replays ids we already have (a simulator restarted
#: with old ids, a wrong URL pointing at a replay), not the overlap of a rotation.
DUPLICATE_ALARM_SHARE = 0.95
DUPLICATE_ALARM_MIN = 100
#: Judged only once the session is this old (its id is its opening time in µs): a
#: make-before-break rotation starts with a second or so of nothing but duplicates.
DUPLICATE_ALARM_AFTER_US = 30_000_000
#: How often a batch being gathered looks at the queue again (s).
_GATHER_POLL = 0.002


@dataclass
class BatchResult:
    stored: int = 0
    duplicates: int = 0
    quarantined: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    wide_values: int = 0
    #: session_id -> (messages stored, duplicates dropped, newest recv_us) in this batch
    sessions: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    snapshots: int = 0  # REST snapshots stored
    open_interest: int = 0  # polled open-interest answers stored (a repeated answer is not)
    #: depth_sync rows by event ('break', 'synced') and trade_gap rows ('gap') stored
    continuity: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    requests: list[SnapshotRequest] = field(default_factory=list)  # streams that need a REST snapshot


@dataclass(slots=True)
class SessionTally:
    """What one batch adds to a session's row."""

    messages: int = 0
    duplicates: int = 0
    quarantined: int = 0
    max_seq: int = -1
    first_recv_us: int | None = None
    last_recv_us: int | None = None

    def touch(self, seq: int, recv_us: int) -> None:
        self.span(seq, recv_us, recv_us)

    def span(self, max_seq: int, first_recv_us: int, last_recv_us: int) -> None:
        """Messages up to seq ``max_seq``, received between the two times."""
        if max_seq > self.max_seq:
            self.max_seq = max_seq
        self.first_recv_us = first_recv_us if self.first_recv_us is None else min(self.first_recv_us, first_recv_us)
        self.last_recv_us = last_recv_us if self.last_recv_us is None else max(self.last_recv_us, last_recv_us)


def store_records(
    conn: sqlite3.Connection,
    stream_ids: dict[str, int],
    records: list[Row],
    quarantined: list[Quarantined] = (),
    ops: list[SessionOpen | SessionClose | Event] = (),
    spill_position: tuple[str, int] | None = None,
    others: list = (),
    continuity: Continuity | None = None,
) -> BatchResult:
    """Commit one batch: records, quarantined frames, session/event ops, spill position.

    Everything lands in one transaction or nothing does. Duplicates (same stream
    and update id as a stored row) are not stored; each is recorded in
    ``dropped`` so the seq gap it leaves is explained. ``others`` are rows without a
    seq (:data:`~orderbook_core.buffer.rows.OTHER_TABLES`: REST snapshots, continuity
    rows); ``continuity`` turns the stored rows and snapshots into continuity rows, stored
    here too (the caller commits or rolls back its state with the transaction).
    """
    result = BatchResult()
    per_session: dict[int, SessionTally] = defaultdict(SessionTally)
    with buffer.transaction(conn):
        writes.open_sessions(conn, [op for op in ops if type(op) is SessionOpen])
        groups: dict[type, list[Row]] = {}
        if len(types := set(map(type, records))) == 1:
            groups[types.pop()] = records
        else:
            for r in records:
                groups.setdefault(type(r), []).append(r)
        refused: set[tuple[int, int]] = set()
        for rtype, rows in groups.items():
            t = ROW_TABLES[rtype]
            stored, dropped = writes.insert_rows(conn, stream_ids, t, rows)
            result.stored += stored
            if dropped:
                dups = {(r.session_id, r.seq) for r in dropped}
                result.duplicates += len(dups)
                refused |= dups
            result.wide_values += sum(map(t.wide, rows))
        _tally_rows(per_session, records, refused)
        if quarantined:
            writes.insert_quarantine(conn, quarantined)
            for q in quarantined:
                result.quarantined[q.reason] += 1
                if q.session_id == REST_SESSION:  # a refused REST snapshot: no session to count it in
                    continue
                s = per_session[q.session_id]
                s.quarantined += 1
                s.touch(q.seq, q.recv_us)
        result.sessions = {sid: (t.messages, t.duplicates, t.last_recv_us) for sid, t in per_session.items()}
        snapshots = [o for o in others if type(o) is DepthRestSnapshotRecord]
        if snapshots:
            # A refused snapshot is the very book already stored (same market, symbol and
            # lastUpdateId, maybe fetched for another diff stream of the symbol): it syncs
            # the stream it was fetched for all the same, so every one goes to the trackers.
            result.snapshots = writes.insert_snapshots(conn, stream_ids, snapshots)
        polled = [o for o in others if type(o) is OpenInterestRecord]
        if polled:
            result.open_interest = writes.insert_open_interest(conn, stream_ids, polled)
        derived = [o for o in others if type(o) is not DepthRestSnapshotRecord and type(o) is not OpenInterestRecord]
        if continuity is not None and (continuity.depth or continuity.trades):  # partial depth alone: nothing to track
            stored_rows = [r for r in records if (r.session_id, r.seq) not in refused] if refused else records
            found, result.requests = continuity.process(stored_rows, snapshots)
            derived += found
        if derived:
            writes.insert_others(conn, stream_ids, derived)
            for d in derived:
                if type(d) is DepthSyncRecord:
                    result.continuity[d.event] += 1
                elif type(d) is TradeGapRecord:
                    result.continuity["gap"] += 1
                elif d.event == "resumed":  # SilenceRecord: the open silence gets its end here too
                    writes.end_silence(conn, stream_ids[d.stream], d.since_us, d.end_us, d.ended_by)
        writes.add_session_counts(conn, [
            writes.SessionCounts(sid, t.messages, t.duplicates, t.quarantined, t.max_seq, t.first_recv_us,
                                 t.last_recv_us) for sid, t in per_session.items()])
        writes.record_ops(conn, ops)
        if spill_position is not None:
            writes.save_spill_position(conn, spill_position)
    return result


def _tally_rows(per_session: dict[int, SessionTally], records: list[Row], refused: set[tuple[int, int]]) -> None:
    """Add the batch's rows to their sessions' tallies (a batch is nearly always one session's)."""
    sessions = set(map(SESSION_ID, records))
    if len(sessions) == 1:
        by_session = {sessions.pop(): records}
    else:
        by_session = {}
        for r in records:
            by_session.setdefault(r.session_id, []).append(r)
    for sid, rows in by_session.items():
        s = per_session[sid]
        dups = sum(1 for d in refused if d[0] == sid) if refused else 0
        s.duplicates += dups
        s.messages += len(rows) - dups
        recv = list(map(RECV_US, rows))
        s.span(max(map(SEQ, rows)), min(recv), max(recv))


def classify_sqlite_error(exc: BaseException) -> str:
    """Name a write failure for logs and metrics: a :class:`~orderbook_collector.metrics.WriteFailure` value."""
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return WriteFailure.LOCKED.value
    if "full" in text or getattr(exc, "sqlite_errorcode", None) == 13:
        return WriteFailure.DISK_FULL.value
    if "i/o" in text or "disk" in text:
        return WriteFailure.IO.value
    return WriteFailure.OTHER.value


class Inbox:
    """The bounded FIFO from the event loop to the writer thread.

    ``queue.Queue`` takes a lock and notifies a condition on every put and get (~2.5 µs a
    message on both threads together). A deque's ``append`` and ``popleft`` are atomic under
    the GIL, and there is one producer (the loop) and one consumer (the writer), so only an
    idle writer needs waking: it clears ``_wake`` before it looks at the deque one last
    time, and a put sets it only when it is clear.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: deque = deque()
        self._wake = threading.Event()

    def put_nowait(self, item: Item) -> None:
        """Raises queue.Full when ``maxsize`` items are waiting."""
        if len(self._items) >= self.maxsize:
            raise queue.Full
        self._items.append(item)
        if not self._wake.is_set():
            self._wake.set()

    def wait(self, timeout: float) -> None:
        """Writer side: return once an item is waiting, or after ``timeout`` s."""
        self._wake.clear()
        if not self._items:
            self._wake.wait(timeout)

    def take(self, n: int) -> list[Item]:
        """Writer side: up to ``n`` waiting items, oldest first."""
        popleft = self._items.popleft
        return [popleft() for _ in range(min(n, len(self._items)))]

    def put_back(self, items: list[Item]) -> None:
        """Writer side: return items taken too early to the front, in order."""
        self._items.extendleft(reversed(items))

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)


class Writer:
    """Owns the SQLite write connection in its own thread; fed without blocking.

    Args:
        path: the buffer file.
        streams: the streams the decoder accepts.
        synchronous: "FULL" (survives power loss) or "NORMAL" (survives process crashes).
        queue_size: items held in memory before spilling.
        max_batch: most items in one transaction.
        commit_interval: longest time (s) an item waits for its batch to commit.
        spill_dir: where overflow files go.
        on_snapshot_needed: called (in the writer thread) with the SnapshotRequests of a commit.
    """

    def __init__(
        self,
        path: str | Path,
        streams: list[StreamSpec],
        *,
        metrics: Metrics | None = None,
        synchronous: str = "FULL",
        queue_size: int = 20_000,
        max_batch: int = 2_000,
        commit_interval: float = 0.05,
        spill_dir: str | Path | None = None,
        busy_timeout_ms: int = 200,
        slow_down: float = 0.0,
        commit_observer=None,
        on_snapshot_needed=None,
    ) -> None:
        self.path = Path(path)
        self.streams = streams
        self.metrics = metrics or Metrics()
        self.synchronous = synchronous
        self.max_batch = max_batch
        self.commit_interval = commit_interval
        self.busy_timeout_ms = busy_timeout_ms
        self.slow_down = slow_down  # seconds added per commit: for backpressure tests only
        # Called in the writer thread after each commit with (records, commit_end_us): benchmarks.
        self.commit_observer = commit_observer
        # Called in the writer thread with a list of SnapshotRequest after a commit that
        # found streams needing a REST snapshot (the collector hands them to its loop).
        self.on_snapshot_needed = on_snapshot_needed
        self.continuity = Continuity(streams)
        self.queue = Inbox(queue_size)
        self.metrics.queue_capacity = queue_size
        self.spill = Spill(spill_dir or self.path.with_name(self.path.name + ".spill"))
        self.metrics.spill_bytes = lambda: self.spill.pending_bytes
        self._spill_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="buffer-writer", daemon=True)
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self.committed_batches = 0
        self._session_counts: dict[int, list[int]] = {}  # session_id -> [messages, duplicates]
        self._duplicate_alarms: set[int] = set()

    # Event-loop side ----------------------------------------------------------------------

    def start(self) -> None:
        """Open the buffer in the writer thread; raise StorageError if it cannot be used."""
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise StorageError(str(self._failure)) from self._failure

    def submit(self, item: Item) -> bool:
        """Hand one item to the writer without blocking. False: refused (disk and memory full)."""
        with self._spill_lock:
            if not self.spill.active:
                try:
                    self.queue.put_nowait(item)
                    return True
                except queue.Full:
                    log.warning("writer queue full (%d items); spilling to %s", self.queue.maxsize, self.spill.dir)
                    self.spill.append(Event(buffer.now_us(), None, None, EventKind.SPILL_START.value,
                                            f"queue full ({self.queue.maxsize} items)"))
            ok = self.spill.append(item)
        if ok:
            self.metrics.spilled_items += 1
        else:
            self.metrics.lost += 1
        return ok

    def stop(self, timeout: float | None = 30.0) -> bool:
        """Commit everything submitted so far, then end the thread. True if it finished."""
        if self._thread.is_alive():
            self.submit(Stop())
            self._thread.join(timeout)
        done = not self._thread.is_alive()
        if done:
            self.spill.close()
        return done

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # Writer thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            conn = buffer.connect(self.path, synchronous=self.synchronous, busy_timeout_ms=self.busy_timeout_ms)
            self.spill.seek(writes.spill_position(conn))
            # A connection carries one market; both markets may name a stream alike, so each
            # session's frames are decoded with its market's streams (sessions still open in the
            # buffer come back from a restart with their frames in the spill).
            # Streams of earlier runs too (``*`` adds streams at run time): their frames may
            # still be in the spill.
            known = [stream_spec(sym, kind, Market(m)) for sym, kind, m in writes.known_streams(conn)]
            every = list(dict.fromkeys([*self.streams, *(s for s in known if s is not None)]))
            self.stream_ids = buffer.stream_ids(conn, [(s.key, s.symbol, s.kind, s.market.value) for s in every])
            self.decoders = {m: Decoder([s for s in every if s.market is m]) for m in Market}
            self._unregistered: list[StreamSpec] = []
            self.session_market: dict[int, Market] = {
                sid: Market(m) for sid, m in writes.open_session_markets(conn).items()}
            self.continuity.add_streams(every)
            seed_continuity(conn, self.stream_ids, every, self.continuity)
        except BaseException as exc:  # reported to start()
            self._failure = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            stop = False
            while not stop:
                items, position, stop = self._collect()
                if items or position:
                    self._commit(conn, items, position)
            # Events the last batch produced (a spill that just drained) still get committed.
            leftover = self.queue.take(self.queue.qsize())
            if leftover:
                self._commit(conn, leftover, None)
        except BaseException:
            log.exception("writer thread failed")
            raise
        finally:
            conn.close()

    def _collect(self) -> tuple[list[Item], tuple[str, int] | None, bool]:
        items: list[Item] = []
        deadline = None
        while len(items) < self.max_batch:
            if self.spill.active and self.queue.empty():
                if items:
                    break  # commit queued items before replaying the spill: order matters
                batch, position = self.spill.read(self.max_batch)
                if not batch:
                    with self._spill_lock:
                        self._finish_spill(None)
                    time.sleep(0.005)
                    continue
                stop = any(type(it) is Stop for it in batch)
                return [it for it in batch if type(it) is not Stop], position, stop
            if self.queue.empty():
                if deadline is None:
                    self.queue.wait(self.commit_interval)
                    continue
                # Waking on every put would wake this thread (and take the GIL from the event
                # loop) once per frame; polling lets the batch gather in between.
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                time.sleep(min(timeout, _GATHER_POLL))
                continue
            if deadline is None:
                deadline = time.monotonic() + self.commit_interval
            chunk = self.queue.take(self.max_batch - len(items))
            if Stop in set(map(type, chunk)):
                at = next(i for i, it in enumerate(chunk) if type(it) is Stop)
                self.queue.put_back(chunk[at + 1:])
                return items + chunk[:at], None, True
            items += chunk
        self.metrics.queue_depth = self.queue.qsize()
        return items, None, False

    def _commit(self, conn: sqlite3.Connection, items: list[Item], position: tuple[str, int] | None) -> None:
        records, quarantined, ops, others = self._decode(items)
        delay = 0.05
        failures: list[str] = []
        failed_since = 0
        while True:
            started = time.perf_counter()
            batch_ops = ops
            if failures:  # the episode becomes data in the batch that finally commits
                detail = f"{len(failures)} failed commit(s) over {(buffer.now_us() - failed_since) / 1e6:.1f} s: {failures[-1]}"
                batch_ops = ops + [Event(failed_since, None, None, EventKind.WRITE_FAILURES.value, detail)]
            try:
                if self.slow_down:
                    time.sleep(self.slow_down)
                if self._unregistered:  # streams a session opened or subscribed: ids before rows
                    new, self._unregistered = self._unregistered, []
                    self.stream_ids = buffer.stream_ids(conn, [(s.key, s.symbol, s.kind, s.market.value) for s in new])
                    self.continuity.add_streams(new)
                    seed_continuity(conn, self.stream_ids, new, self.continuity)
                polled = {o.stream for o in others if o.stream not in self.stream_ids}
                if polled:  # open-interest series (polled, no session announces them): ids before rows
                    series = [(k, *parse_open_interest_key(k)) for k in polled if parse_open_interest_key(k)]
                    self.stream_ids = buffer.stream_ids(
                        conn, [(k, sym, OPEN_INTEREST_KIND, m.value) for k, m, sym in series])
                result = store_records(conn, self.stream_ids, records, quarantined, batch_ops, position,
                                       others, self.continuity)
                self.continuity.commit()
                break
            except (sqlite3.Error, StorageError) as exc:
                self.continuity.rollback()
                kind = classify_sqlite_error(exc)
                failed_since = failed_since or buffer.now_us()
                failures.append(kind)
                self.metrics.writer_errors[kind] += 1
                if not self.metrics.writer_degraded:
                    log.error("buffer write failed (%s: %s); holding %d items and retrying", kind, exc, len(items))
                self.metrics.writer_degraded = 1
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        if self.metrics.writer_degraded:
            log.warning("buffer writes succeed again")
            self.metrics.writer_degraded = 0
        self.metrics.commit_latency.observe(time.perf_counter() - started)
        if self.commit_observer is not None:
            self.commit_observer(records, time.time_ns() // 1000)
        self.metrics.messages += result.stored
        self.metrics.duplicates += result.duplicates
        self.metrics.wide_values += result.wide_values
        for reason, n in result.quarantined.items():
            self.metrics.quarantined[reason] += n
        self._watch_duplicates(result.sessions)
        self.metrics.rest_snapshots_stored += result.snapshots
        for what, n in result.continuity.items():
            self.metrics.continuity[what] += n
        for op in ops:
            if type(op) is SessionClose:
                self.continuity.close_session(op.session_id)
        if result.requests and self.on_snapshot_needed is not None:
            try:
                self.on_snapshot_needed(result.requests)
            except Exception:  # the loop may be gone at shutdown; the rows are committed either way
                log.exception("could not hand %d snapshot request(s) to the collector", len(result.requests))
        self.committed_batches += 1
        if position is not None:
            with self._spill_lock:
                self._finish_spill(position)

    def _watch_duplicates(self, sessions: dict[int, tuple[int, int, int]]) -> None:
        """Say once, loudly, when a session stores (nearly) nothing because all it gets are duplicates."""
        for sid, (stored, dups, last_us) in sessions.items():
            counts = self._session_counts.setdefault(sid, [0, 0])
            counts[0] += stored
            counts[1] += dups
            total = counts[0] + counts[1]
            if (sid in self._duplicate_alarms or total < DUPLICATE_ALARM_MIN
                    or last_us - sid < DUPLICATE_ALARM_AFTER_US or counts[1] < DUPLICATE_ALARM_SHARE * total):
                continue
            self._duplicate_alarms.add(sid)
            self.metrics.duplicate_sessions += 1
            log.warning(
                "session %d dropped %d of its %d messages as duplicates: the feed is sending update ids "
                "already in the buffer (an exchange or simulator replaying old data?); nothing new is being stored",
                sid, counts[1], total,
            )

    def _finish_spill(self, position: tuple[str, int] | None) -> None:
        """Leave spill mode if everything spilled is committed; the episode's end is data too."""
        if self.spill.finish_if_drained(position):
            log.info("spill replayed; back to the queue")
            self.queue.put_nowait(Event(buffer.now_us(), None, None, EventKind.SPILL_END.value, "spill replayed"))

    def _decode(self, items: list[Item]) -> tuple[list[Row], list[Quarantined], list, list]:
        records: list[Row] = []
        quarantined: list[Quarantined] = []
        ops: list[SessionOpen | SessionClose | Event] = []
        others: list = []
        frames: list[Frame] = []
        if set(map(type, items)) == {Frame}:  # the usual batch: nothing to sort out
            frames = items
        else:
            for it in items:
                kind = type(it)
                if kind is Frame:
                    frames.append(it)
                elif kind in ROW_TABLES:
                    records.append(it)
                elif kind is Quarantined:
                    quarantined.append(it)
                elif kind in OTHER_TABLES:
                    others.append(it)
                else:
                    ops.append(it)
        for op in ops:
            if type(op) is SessionOpen:
                self.session_market[op.session_id] = Market(op.market)
                self._learn(Market(op.market), op.streams_json)
            elif type(op) is SessionStreams:
                self._learn(self.session_market.get(op.session_id, Market.SPOT), op.streams_json)
        markets = {self.session_market.get(sid, Market.SPOT) for sid in set(map(SESSION_ID, frames))}
        if len(markets) == 1:  # one market's sessions (the usual case): no per-frame grouping
            by_market = {markets.pop(): frames}
        else:
            by_market: dict[Market, list[Frame]] = {}
            for f in frames:
                by_market.setdefault(self.session_market.get(f.session_id, Market.SPOT), []).append(f)
        for m, fs in by_market.items():
            recs = self.decoders[m].decode_many(fs)
            if set(map(type, recs)) <= ROW_TABLES.keys():  # every frame a valid row
                records += recs
                continue
            for (raw, recv_us, sid, seq), rec in zip(fs, recs):
                if type(rec) in ROW_TABLES:
                    records.append(rec)
                elif type(rec) is Quarantined:
                    quarantined.append(rec)
                else:  # a control frame that looked like data: keep it, explained
                    quarantined.append(Quarantined(recv_us, sid, seq, QuarantineReason.UNEXPECTED.value, raw_bytes(raw),
                                                   type(rec).__name__))
        for op in ops:
            if type(op) is SessionClose:
                self.session_market.pop(op.session_id, None)
        return records, quarantined, ops, others

    def _learn(self, market: Market, streams_json: str) -> None:
        """Make the streams a session carries decodable (and registered) before their frames."""
        try:
            names = orjson.loads(streams_json)
        except orjson.JSONDecodeError:
            log.error("session streams are not a JSON list: %.80s", streams_json)
            return
        decoder = self.decoders[market]
        specs = [parse_stream_name(n, market) for n in (names if isinstance(names, list) else ())]
        new = [s for s in specs if s is not None and s.name not in decoder.streams]
        if new:
            decoder.add_streams(new)
        self._unregistered += [s for s in specs if s is not None and s.key not in self.stream_ids]


def seed_continuity(conn: sqlite3.Connection, stream_ids: dict[str, int], streams: list[StreamSpec],
                    continuity: Continuity) -> None:
    """Start each tracker where the buffer stands: the last stored update or trade id, and
    whether the diff stream's last recorded sync state is 'synced' (a stream with stored
    events but no recorded state, e.g. after cleanup, counts as broken: one snapshot more)."""
    for s in streams:
        sid = stream_ids.get(s.key)
        if sid is None:
            continue
        if s.type is Kind.DIFF_DEPTH:
            last, synced = writes.last_diff_event(conn, sid)
            continuity.seed_depth(s.key, LastEvent(*last) if last else None, synced)
        elif s.type in (Kind.TRADE, Kind.AGG_TRADE):
            spec = kinds.BY_KIND[s.type]
            continuity.seed_trades(s.key, *writes.last_trade(conn, spec.name, spec.ordered_id, sid))
