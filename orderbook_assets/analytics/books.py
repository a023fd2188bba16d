"""Books and events out of the archive, for analysts (Python API; DuckDB reads the Parquet).

* :func:`book_at` answers "what was the book of ``symbol`` at ``time``": from diff depth
  (every level the REST snapshots' horizon and later changes prove; ``known_levels`` and
  ``complete`` say how much of the depth asked for that is) where the archive has a
  usable start (an hour's end state under ``book_state/``, or the nearest earlier REST
  snapshot) and an unbroken chain to ``time``; from the latest partial snapshot otherwise;
  and says which (:class:`Source`) and why.
* :func:`iter_books` yields the rebuilt book after every diff event of a stream in a time range.
* :func:`iter_events` yields the raw rows of any datasets over a time range, merged in receive
  order (``recv_time, session_id, seq``), a record batch at a time (memory stays bounded).

Times are ``datetime`` (naive means UTC), ISO 8601 text, or integer µs since the epoch.
Local folders and ``s3://`` archives both work (S3 as :mod:`.views` reaches it).
"""

from __future__ import annotations

import heapq
from datetime import datetime, timezone
from enum import Enum
from typing import Iterable, Iterator, NamedTuple

import duckdb
import pyarrow as pa

from orderbook_core.buffer.hours import HOUR_US, hour_of

from orderbook_assets.archive.location import Location, S3Settings
from orderbook_core.streams import Market
from orderbook_assets.books.builder import BookBuilder, DiffEvent, Level, Outcome, Status
from orderbook_assets.books.hour import DEPTH_N, HourState, event_rows, snapshot_rows, state_key

#: How far before a REST snapshot's receive time diff events are read: the collector buffers
#: events first and fetches the snapshot after, so the bridging event may precede it.
LOOKBACK_US = 5 * 60 * 1_000_000
BATCH_ROWS = 8192
#: The order of a dataset's rows in time, where the dataset has the columns (REST snapshots have
#: no session: they come first among equal receive times).
ORDER_COLUMNS = ("recv_time", "session_id", "seq")


class Source(str, Enum):
    DIFFS = "diffs"  # rebuilt from a REST snapshot or an hour's end state plus diff events
    PARTIAL = "partial"  # the latest partial-depth snapshot (top N only) at or before the time
    NONE = "none"  # the archive holds nothing for the symbol at or before the time


class BookAt(NamedTuple):
    """The book of ``market``/``symbol`` at ``time_us`` and where it came from."""

    source: Source
    market: str
    symbol: str
    stream: str | None  # the diff or partial stream used
    time_us: int  # the time asked for
    as_of_us: int | None  # receive time of the last message the answer rests on
    last_update_id: int | None
    bids: list[Level]  # only levels the source proves, best first
    asks: list[Level]
    reason: str  # why this source (one sentence)
    known_levels: int = 0  # leading levels both sides prove (the depth asked for when complete)
    complete: bool = False  # every level asked for is the exchange's (within the depth asked)


class RebuiltBook(NamedTuple):
    """The rebuilt book right after one diff event."""

    recv_time_us: int
    stream: str
    known: bool  # the chain is known (levels past the horizon are left out: see known_levels)
    last_update_id: int | None
    bids: list[Level]  # the leading levels inside the horizon
    asks: list[Level]
    known_levels: int = 0
    complete: bool = False  # the top ``depth`` of both sides is the exchange's


class ArchivedRow(NamedTuple):
    dataset: str
    recv_time_us: int
    row: dict


def to_us(t: datetime | str | int) -> int:
    """µs since the epoch from a datetime (naive = UTC), ISO 8601 text, or an int (or digits)."""
    if isinstance(t, bool):
        raise TypeError("a time must be a datetime, ISO text or µs since the epoch")
    if isinstance(t, int):
        return t
    if isinstance(t, str) and t.strip().isdigit():
        return int(t)
    if isinstance(t, str):
        t = datetime.fromisoformat(t.strip().replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    delta = t - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class ArchiveReader:
    """A DuckDB connection over one archive; datasets are read with ``read_parquet``."""

    def __init__(self, archive: str | Location, s3: S3Settings | None = None):
        self.location = archive if isinstance(archive, Location) else Location.parse(str(archive))
        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")
        if self.location.is_s3:
            from orderbook_assets.analytics.views import configure_s3

            configure_s3(self.con, self.location, s3)
        self._has: dict[str, bool] = {}

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "ArchiveReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def has(self, dataset: str) -> bool:
        if dataset not in self._has:
            n = self.con.execute("SELECT count(*) FROM glob(?)", [self.location.glob(dataset)]).fetchone()[0]
            self._has[dataset] = n > 0
        return self._has[dataset]

    def _from(self, dataset: str) -> str:
        glob = self.location.glob(dataset).replace("'", "''")
        return (f"read_parquet('{glob}', hive_partitioning = true, union_by_name = true, "
                "hive_types = {'date': DATE, 'hour': INTEGER})")

    def query(self, dataset: str, where: str, params: list, order: str, limit: int | None = None,
              columns: str = "*") -> pa.Table:
        """Rows of ``dataset`` (an empty table if the archive has none); times in ``where`` go
        through :meth:`ts` with µs parameters."""
        if not self.has(dataset):
            return pa.table({})
        sql = f"SELECT {columns} FROM {self._from(dataset)} WHERE {where} ORDER BY {order}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self.con.execute(sql, params).to_arrow_table()

    def batches(self, dataset: str, where: str, params: list, order: str) -> Iterator[pa.RecordBatch]:
        if not self.has(dataset):
            return
        cur = self.con.cursor()
        try:
            reader = cur.execute(f"SELECT * FROM {self._from(dataset)} WHERE {where} ORDER BY {order}",
                                 params).to_arrow_reader(BATCH_ROWS)
            yield from reader
        finally:
            cur.close()

    @staticmethod
    def ts(param: str = "?") -> str:
        """A µs parameter as a TIMESTAMPTZ (so Parquet statistics and partitions prune)."""
        return f"make_timestamp({param}::BIGINT)::TIMESTAMPTZ"

    def state(self, hour_us: int) -> HourState | None:
        """The end state of the hour starting at ``hour_us``, if the archive holds it."""
        path = f"{self.location.url}/{state_key(hour_us)}"
        if not self.con.execute("SELECT count(*) FROM glob(?)", [path]).fetchone()[0]:
            return None
        try:
            blob = self.con.execute("SELECT content FROM read_blob(?)", [path]).fetchone()[0]
        except duckdb.HTTPException as exc:
            # On S3, glob of a path without a wildcard lists the path whether or not it exists
            # (seen with DuckDB 1.5's httpfs on moto): the read's 404 is the answer.
            if "404" in str(exc):
                return None
            raise
        return HourState.from_bytes(bytes(blob))


def _date_range(lo_us: int, hi_us: int) -> str:
    lo = datetime.fromtimestamp(lo_us / 1e6, tz=timezone.utc).date().isoformat()
    hi = datetime.fromtimestamp(hi_us / 1e6, tz=timezone.utc).date().isoformat()
    return f"date BETWEEN DATE '{lo}' AND DATE '{hi}'"


class _Start(NamedTuple):
    builder: BookBuilder
    stream: str
    from_us: int  # read diff events received from here on
    snapshots_from_us: int  # and REST snapshots from here on


def _start(r: ArchiveReader, market: str, symbol: str, t: int, stream: str | None) -> _Start | None:
    """The latest usable start at or before ``t``: an hour's end state or a REST snapshot."""
    where = f"market = ? AND symbol = ? AND recv_time <= {r.ts()} AND date <= DATE '{_day(t)}'"
    params: list = [market, symbol, t]
    if stream:
        where += " AND stream = ?"
        params.append(stream)
    snap = r.query("depth_rest_snapshot", where, params, "recv_time DESC, last_update_id DESC", 1,
                   "stream, epoch_us(recv_time) AS recv_us")
    snap_row = snap.to_pylist()[0] if snap.num_rows else None
    hour = hour_of(t)
    state = r.state(hour - HOUR_US)
    entry = None
    if state is not None:
        for key, st in sorted(state.streams.items()):
            if key.market == market and st.symbol == symbol and (stream is None or key.stream == stream) and (
                    st.status is Status.KNOWN or st.pending is not None or st.tail):
                entry = (key, st)
                break
    if entry is not None and (snap_row is None or snap_row["recv_us"] < hour):
        key, st = entry
        b = BookBuilder(Market(market))
        if st.status is Status.KNOWN and st.last_update_id is not None:
            b.load_known(st.last_update_id, st.bids, st.asks, st.horizons, st.seen)
        b.load_pending(st.pending, st.tail)
        return _Start(b, key.stream, hour, hour)
    if snap_row is None:
        return None
    return _Start(BookBuilder(Market(market)), snap_row["stream"], snap_row["recv_us"] - LOOKBACK_US,
                  snap_row["recv_us"])


def _day(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc).date().isoformat()


def _replay(r: ArchiveReader, market: str, start: _Start, end_us: int
            ) -> Iterator[tuple[int, DiffEvent, Outcome]]:
    """Feed ``start``'s builder every diff event of its stream received up to ``end_us``, in
    update-id order, with the REST snapshots of the range placed by id; yield after each."""
    b = start.builder
    span = _date_range(min(start.from_us, start.snapshots_from_us), end_us)
    snaps = r.query("depth_rest_snapshot",
                    f"market = ? AND stream = ? AND recv_time >= {r.ts()} AND recv_time <= {r.ts()} AND {span}",
                    [market, start.stream, start.snapshots_from_us, end_us], "last_update_id")
    pending = iter(list(snapshot_rows(snaps)) if snaps.num_rows else [])
    snap = next(pending, None)
    where = f"market = ? AND stream = ? AND recv_time >= {r.ts()} AND recv_time <= {r.ts()} AND {span}"
    for batch in r.batches("depth_update", where, [market, start.stream, start.from_us, end_us],
                           "last_update_id, recv_time"):
        for recv_us, ev in event_rows(pa.Table.from_batches([batch])):
            while snap is not None and snap.last_update_id <= ev.last_update_id:
                b.snapshot(snap)
                snap = next(pending, None)
            yield recv_us, ev, b.event(ev).outcome
    while snap is not None:
        b.snapshot(snap)
        snap = next(pending, None)


def book_at(archive: str | Location | ArchiveReader, market: str, symbol: str, time: datetime | str | int,
            depth: int | None = None, stream: str | None = None) -> BookAt:
    """The book of ``symbol`` on ``market`` (``spot`` or ``usdm``) at ``time``.

    From diffs (``depth`` levels a side, every level if None) when a start and an unbroken
    chain of diff events reach ``time`` and the next event continues it; from the latest
    partial snapshot otherwise (its own depth, at most ``depth``). ``stream`` picks a diff
    stream when a symbol has several.
    """
    r = archive if isinstance(archive, ArchiveReader) else ArchiveReader(archive)
    try:
        return _book_at(r, market, symbol.upper(), to_us(time), depth, stream)
    finally:
        if r is not archive:
            r.close()


def _book_at(r: ArchiveReader, market: str, symbol: str, t: int, depth: int | None, stream: str | None) -> BookAt:
    why = f"the archive holds no diff depth of {market} {symbol}"
    if r.has("depth_update") and r.has("depth_rest_snapshot"):
        start = _start(r, market, symbol, t, stream)
        if start is None:
            why = f"no REST snapshot or hour state of {market} {symbol} at or before the time"
        else:
            b = start.builder
            last_recv = None
            for recv_us, _ev, _outcome in _replay(r, market, start, t):
                last_recv = recv_us
            nxt = r.query("depth_update", f"market = ? AND stream = ? AND recv_time > {r.ts()} AND "
                          f"{_date_range(t, t + HOUR_US)}", [market, start.stream, t], "last_update_id", 1)
            following = next((ev for _, ev in event_rows(nxt)), None) if nxt.num_rows else None
            if b.status is Status.KNOWN and (following is None or b.continues(following)):
                n = depth if depth is not None else max(len(b.bids), len(b.asks), 1)
                top = b.known_top(n)
                why = "rebuilt from a REST snapshot or hour state and an unbroken diff chain"
                if not top.complete:
                    why += (f"; only {top.known_levels} of {n} levels a side lie inside what the snapshots "
                            "proved (the horizon): the levels past it are left out")
                return BookAt(Source.DIFFS, market, symbol, start.stream, t, last_recv, b.last_update_id,
                              top.bids, top.asks, why, top.known_levels, top.complete)
            why = ("the diff chain breaks right after the time" if b.status is Status.KNOWN
                   else "the diff chain is broken at the time and no later snapshot bridged it")
    return _from_partial(r, market, symbol, t, depth, why)


def _from_partial(r: ArchiveReader, market: str, symbol: str, t: int, depth: int | None, why: str) -> BookAt:
    rows = r.query("depth_snapshot", f"market = ? AND symbol = ? AND recv_time <= {r.ts()} AND date <= DATE '{_day(t)}'",
                   [market, symbol, t], "recv_time DESC, last_update_id DESC", 1,
                   "stream, epoch_us(recv_time) AS recv_us, last_update_id, bids, asks")
    if not rows.num_rows:
        return BookAt(Source.NONE, market, symbol, None, t, None, None, [], [],
                      f"{why}, and no partial snapshot at or before the time")
    row = rows.to_pylist()[0]
    n = depth if depth is not None else len(row["bids"]) + len(row["asks"])
    bids = [(x["price"], x["qty"]) for x in row["bids"]][:n]
    asks = [(x["price"], x["qty"]) for x in row["asks"]][:n]
    # the exchange's own top N: complete up to its depth (or the depth asked, if smaller)
    m = DEPTH_N.search(row["stream"])
    have = int(m.group(1)) if m else min(len(row["bids"]), len(row["asks"]))
    known = min(n, have)
    return BookAt(Source.PARTIAL, market, symbol, row["stream"], t, row["recv_us"], row["last_update_id"],
                  bids, asks, f"{why}; the latest partial snapshot instead", known, known == n)


def iter_books(archive: str | Location | ArchiveReader, market: str, symbol: str, start: datetime | str | int,
               end: datetime | str | int, depth: int = 25, stream: str | None = None) -> Iterator[RebuiltBook]:
    """The rebuilt book after every diff event received in ``[start, end]`` (update-id order,
    which is the exchange's; unknown books are yielded too, with ``known`` False; stale
    events, which change nothing, are not)."""
    r = archive if isinstance(archive, ArchiveReader) else ArchiveReader(archive)
    try:
        lo, hi = to_us(start), to_us(end)
        begin = _start(r, market, symbol.upper(), lo, stream)
        if begin is None:  # nothing before the range: start unknown, sync at the range's first snapshot
            first = r.query("depth_update", f"market = ? AND symbol = ? AND recv_time >= {r.ts()} AND "
                            f"recv_time <= {r.ts()}" + (" AND stream = ?" if stream else ""),
                            [market, symbol.upper(), lo, hi] + ([stream] if stream else []), "recv_time", 1,
                            "stream")
            if not first.num_rows:
                return
            begin = _Start(BookBuilder(Market(market)), first.column("stream")[0].as_py(), lo, lo)
        b = begin.builder
        for recv_us, _ev, outcome in _replay(r, market, begin, hi):
            if recv_us >= lo and outcome is not Outcome.STALE:  # a stale event changes nothing
                top = b.known_top(depth)
                yield RebuiltBook(recv_us, begin.stream, b.status is Status.KNOWN, b.last_update_id, top.bids,
                                  top.asks, top.known_levels, top.complete)
    finally:
        if r is not archive:
            r.close()


def iter_events(archive: str | Location | ArchiveReader, datasets: Iterable[str], start: datetime | str | int,
                end: datetime | str | int, market: str | None = None,
                symbols: Iterable[str] | None = None) -> Iterator[ArchivedRow]:
    """Raw rows of ``datasets`` received in ``[start, end)``, merged in receive order
    (``recv_time``, then ``session_id``, ``seq``; ties across datasets in the order given)."""
    r = archive if isinstance(archive, ArchiveReader) else ArchiveReader(archive)
    try:
        lo, hi = to_us(start), to_us(end)
        cond = [f"recv_time >= {r.ts()}", f"recv_time < {r.ts()}", _date_range(lo, hi)]
        params: list = [lo, hi]
        if market:
            cond.append("market = ?")
            params.append(market)
        syms = sorted({s.upper() for s in symbols}) if symbols else None
        if syms:
            cond.append("symbol IN (" + ", ".join("?" * len(syms)) + ")")
            params += syms
        streams = [_rows(r, name, i, " AND ".join(cond), params) for i, name in enumerate(datasets)]
        for _key, item in heapq.merge(*streams, key=lambda x: x[0]):
            yield item
    finally:
        if r is not archive:
            r.close()


def _rows(r: ArchiveReader, dataset: str, rank: int, where: str, params: list
          ) -> Iterator[tuple[tuple, ArchivedRow]]:
    if not r.has(dataset):
        return
    names = r.con.execute(f"SELECT * FROM {r._from(dataset)} LIMIT 0").to_arrow_table().schema.names
    order = ", ".join(c for c in ORDER_COLUMNS if c in names)
    for batch in r.batches(dataset, where, params, order):
        recv = batch.column("recv_time").cast(pa.int64()).to_pylist()
        sess = batch.column("session_id").to_pylist() if "session_id" in names else [None] * len(recv)
        seq = batch.column("seq").to_pylist() if "seq" in names else [None] * len(recv)
        for i, row in enumerate(batch.to_pylist()):
            key = (recv[i], rank, -1 if sess[i] is None else sess[i], -1 if seq[i] is None else seq[i])
            yield key, ArchivedRow(dataset, recv[i], row)
