"""The shell of ``book_snapshot``: read an archived hour, build it, write it and its end state.

:func:`materialize_hour` is what the hourly job calls after the hour's ``depth_update``,
``depth_rest_snapshot`` and ``depth_snapshot`` parts are archived (the core is
:func:`orderbook_assets.books.hour.build_hour`). It reads the previous hour's end state from
``book_state/`` (none: every stream starts unknown), reads the hour's diff events one stream at a
time in update-id order (DuckDB sorts, spilling to disk if it must; memory holds one stream's
hour), proves each stream against the partial snapshots of its market and symbol, and writes

* ``book_snapshot/date=YYYY-MM-DD/hour=HH/books.parquet`` (the hour's current build), and
* ``book_state/date=YYYY-MM-DD/hour=HH/state.json``, which the next hour starts from.

Every build is first written as an immutable, content-addressed version
(``book_versions/book_snapshot/.../<sha256>.parquet`` and ``book_versions/book_state/.../<sha256>.json``,
``If-None-Match``, hash, HEAD verify like every part), and only then becomes the current object
(replaced atomically, verified). A rebuild after late parts therefore never loses the build it
replaces, and :class:`BookHour` says what it replaced. The same archived rows give the same
bytes (a rerun writes nothing new). An hour without diff events and without a previous state
writes nothing.
"""

from __future__ import annotations

import gc
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from orderbook_core.buffer.hours import HOUR_US

from orderbook_assets.analytics.books import ArchiveReader
from orderbook_assets.archive import derived, export
from orderbook_assets.archive.location import Location, S3Settings, hour_path
from orderbook_assets.archive.store import ArchiveStore, open_store
from orderbook_assets.books.hour import (BOOK_SNAPSHOT, SCHEMA, CrossedRows, HourBuilder, HourState, Probe, Proof,
                                         Settings, StreamKey, crossed_rows, partials_by_symbol, state_key)

WRITER_OPTIONS = dict(export.WRITER_OPTIONS, use_dictionary=["market", "symbol", "stream"])
SOURCES = ("depth_update", "depth_rest_snapshot", "depth_snapshot")
BATCH = 65_536  # rows a record batch when reading an hour in order


#: Where every build of an hour is kept, immutable, by content (see the module).
VERSIONS = "book_versions"


def books_key(hour_us: int) -> str:
    return f"{BOOK_SNAPSHOT}/{hour_path(hour_us)}/books.parquet"


def version_key(current_key: str, sha256: str) -> str:
    """The immutable version of a current object: ``book_versions/<current folder>/<sha256>.<ext>``."""
    return derived.version_key(VERSIONS, current_key, sha256)


#: One current object after publishing (the archive's one recipe for derived objects).
Written = derived.Published


@dataclass
class BookHour:
    """What :func:`materialize_hour` built and wrote."""

    hour_us: int
    rows: int = 0
    streams: list[StreamKey] = field(default_factory=list)
    known_rows: int = 0
    partly_known_rows: int = 0
    proof: Proof = field(default_factory=Proof)
    crossed: CrossedRows = CrossedRows(0, [])
    started_from_state: bool = False
    books_url: str | None = None  # None: nothing written
    state_url: str | None = None
    books: Written | None = None
    state: Written | None = None


#: Container objects allocated between two young collections while an hour is built (Python's
#: default is 700). The build allocates millions of small objects (levels, events, output runs)
#: and keeps many until the hour ends (books, tails of the end state): collecting every 700 took
#: about a third of the step. Cycles are still collected, only less often.
GC_YOUNG = 20_000


@contextmanager
def _fewer_collections() -> Iterator[None]:
    before = gc.get_threshold()
    gc.set_threshold(max(before[0], GC_YOUNG), *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def materialize_hour(archive: str | Location, hour_us: int, settings: Settings = Settings(),
                     store: ArchiveStore | None = None, s3: S3Settings | None = None) -> BookHour:
    """Build and write the ``book_snapshot`` hour starting at ``hour_us`` (see the module)."""
    with _fewer_collections():
        return _materialize_hour(archive, hour_us, settings, store, s3)


def _materialize_hour(archive: str | Location, hour_us: int, settings: Settings,
                      store: ArchiveStore | None, s3: S3Settings | None) -> BookHour:
    loc = archive if isinstance(archive, Location) else Location.parse(str(archive))
    store = store or open_store(loc, s3)
    out = BookHour(hour_us)
    prev_key = state_key(hour_us - HOUR_US)
    previous = HourState.from_bytes(store.get(prev_key)) if store.head(prev_key) else None
    out.started_from_state = previous is not None
    with ArchiveReader(loc, s3) as r:
        snaps = _hour(r, "depth_rest_snapshot", hour_us, "market, stream, last_update_id, recv_time")
        snap_groups = _split(snaps)
        hour = HourBuilder(hour_us, previous, settings)
        partials = _Partials(r, hour_us)
        try:
            seen: set[StreamKey] = set()
            for key, ups in _streams(r, hour_us):
                seen.add(key)
                out.streams.append(key)
                hour.stream(key, ups, snap_groups.get(key), partials.of(key.market, ups.column("symbol")[0].as_py()))
            # streams with a state or snapshots but no diff event this hour: their state carries on
            for key in sorted((set(previous.streams) if previous else set()) | set(snap_groups)):
                if key not in seen:
                    hour.stream(key, None, snap_groups.get(key), [])
        finally:
            partials.close()
    if not out.streams and previous is None and not hour.state.streams:
        return out
    built = hour.finish()
    table = built.table if out.streams else SCHEMA.empty_table()
    state = built.state
    # the diff streams came in (market, symbol, stream) order, to meet their partial snapshots
    # on the way; what the hour reports lists them in (market, stream) order, each stream's
    # mismatches and crossings in the order they occurred
    out.streams.sort()
    out.proof = built.proof
    for items in (out.proof.streams, out.proof.mismatches, out.proof.crossed):
        items.sort(key=lambda x: (x.market, x.stream))
    out.rows, out.known_rows = table.num_rows, int(pc.sum(table["known"]).as_py() or 0)
    chained = int(pc.sum(pc.is_valid(table["last_update_id"])).as_py() or 0)
    out.partly_known_rows = chained - out.known_rows
    out.crossed = crossed_rows(table)
    out.books = derived.publish_table(store, books_key(hour_us), table, WRITER_OPTIONS, versions=VERSIONS)
    out.state = derived.publish_bytes(store, state_key(hour_us), state.to_bytes(), versions=VERSIONS)
    out.books_url = f"{loc.url}/{books_key(hour_us)}"
    out.state_url = f"{loc.url}/{state_key(hour_us)}"
    return out


def _hour(r: ArchiveReader, dataset: str, hour_us: int, order: str, where: str = "true", params=()) -> pa.Table:
    if not r.has(dataset):
        return pa.table({})
    glob = r.location.hour_glob(dataset, hour_us).replace("'", "''")
    if not r.con.execute("SELECT count(*) FROM glob(?)", [glob]).fetchone()[0]:
        return pa.table({})
    return r.con.execute(f"SELECT * FROM read_parquet('{glob}', union_by_name = true) WHERE {where} ORDER BY {order}",
                         list(params)).to_arrow_table()


def _split(t: pa.Table) -> dict[StreamKey, pa.Table]:
    if t.num_rows == 0:
        return {}
    out: dict[StreamKey, pa.Table] = {}
    market, stream = t.column("market").to_pylist(), t.column("stream").to_pylist()
    start = 0
    for i in range(1, t.num_rows + 1):
        if i == t.num_rows or (market[i], stream[i]) != (market[start], stream[start]):
            out[StreamKey(market[start], stream[start])] = t.slice(start, i - start)
            start = i
    return out


def _streams(r: ArchiveReader, hour_us: int):
    """(key, the stream's hour of ``depth_update``) one stream at a time, in (market, symbol,
    stream) order (a stream's rows by ``last_update_id, recv_time``)."""
    if not r.has("depth_update"):
        return
    glob = r.location.hour_glob("depth_update", hour_us).replace("'", "''")
    if not r.con.execute("SELECT count(*) FROM glob(?)", [glob]).fetchone()[0]:
        return
    cur = r.con.cursor()
    try:
        reader = cur.execute(f"SELECT * FROM read_parquet('{glob}', union_by_name = true) "
                             "ORDER BY market, symbol, stream, last_update_id, recv_time").to_arrow_reader(BATCH)
        pending: list[pa.RecordBatch] = []
        current: StreamKey | None = None
        for batch in reader:
            for key, piece in _split(pa.Table.from_batches([batch])).items():
                if current is not None and key != current:
                    yield current, pa.concat_tables(pending)
                    pending = []
                current = key
                pending.append(piece)
        if current is not None:
            yield current, pa.concat_tables(pending)
    finally:
        cur.close()


class _Partials:
    """The hour's ``depth_snapshot`` probes of one market and symbol at a time: one query an hour,
    read in (market, symbol) order alongside the diff streams (which come in that order), so
    memory holds one symbol's partial snapshots, as it holds one stream's diff events."""

    def __init__(self, r: ArchiveReader, hour_us: int):
        self._cur = None
        self._batches: Iterator[pa.RecordBatch] = iter(())
        self._read: deque[tuple[tuple[str, str], pa.Table]] = deque()  # read, not yet asked for
        self._last: tuple[tuple[str, str], list[Probe]] | None = None
        if not r.has("depth_snapshot"):
            return
        glob = r.location.hour_glob("depth_snapshot", hour_us).replace("'", "''")
        if not r.con.execute("SELECT count(*) FROM glob(?)", [glob]).fetchone()[0]:
            return
        self._cur = r.con.cursor()
        self._batches = iter(self._cur.execute(
            f"SELECT * FROM read_parquet('{glob}', union_by_name = true) "
            "ORDER BY market, symbol, stream, last_update_id").to_arrow_reader(BATCH))

    def close(self) -> None:
        if self._cur is not None:
            self._cur.close()

    def of(self, market: str, symbol: str) -> list[Probe]:
        """The partial snapshots of ``market`` and ``symbol`` as probes; asked in (market,
        symbol) order, the same pair possibly again (two diff streams of one symbol)."""
        want = (market, symbol)
        if self._last is not None and self._last[0] == want:
            return self._last[1]
        pieces: list[pa.Table] = []
        while True:
            while self._read and self._read[0][0] <= want:  # pairs before it have no diff stream here
                key, piece = self._read.popleft()
                if key == want:
                    pieces.append(piece)
            if self._read:
                break  # the next pair has begun: this one is whole
            batch = next(self._batches, None)
            if batch is None:
                break
            self._read.extend(_by_symbol(pa.Table.from_batches([batch])))
        probes = partials_by_symbol(pa.concat_tables(pieces)).get(want, []) if pieces else []
        self._last = (want, probes)
        return probes


def _by_symbol(t: pa.Table) -> list[tuple[tuple[str, str], pa.Table]]:
    """Consecutive rows of one (market, symbol) of a table sorted by them."""
    market, symbol = t.column("market").to_pylist(), t.column("symbol").to_pylist()
    out, start = [], 0
    for i in range(1, t.num_rows + 1):
        if i == t.num_rows or market[i] != market[start] or symbol[i] != symbol[start]:
            out.append(((market[start], symbol[start]), t.slice(start, i - start)))
            start = i
    return out


#: How many following hours one rebuild may carry a changed end state into (a day).
MAX_CASCADE = 24


def materialize_from(archive: str | Location, hour_us: int, settings: Settings = Settings(),
                     store: ArchiveStore | None = None, s3: S3Settings | None = None,
                     max_cascade: int = MAX_CASCADE) -> list[BookHour]:
    """Build the hour, then every following hour already built whose start state just changed.

    An hour starts from the previous hour's end state, so late parts in hour ``H`` (or ``H``
    built after ``H + 1``) change what ``H + 1`` should have been: it is rebuilt (a new version,
    the old one kept), and so on while the end state keeps changing and the next hour exists,
    at most ``max_cascade`` hours. Hours not built yet are left to their own run.

    Every hour returned carries its own proof: the caller checks each (a rebuilt hour's
    mismatches fail the run that rebuilt it, as the hour's own would).
    """
    loc = archive if isinstance(archive, Location) else Location.parse(str(archive))
    store = store or open_store(loc, s3)
    built = [materialize_hour(loc, hour_us, settings, store, s3)]
    h = hour_us
    while (len(built) <= max_cascade and built[-1].state is not None and built[-1].state.changed
           and store.head(books_key(h + HOUR_US))):
        h += HOUR_US
        built.append(materialize_hour(loc, h, settings, store, s3))
    return built
