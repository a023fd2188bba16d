"""The steps of archiving one hour, as plain functions over a buffer connection and a store.

The Dagster assets in :mod:`.assets` are thin wrappers around these. Each step reads the
ledger, does its work and records the outcome; re-running any step after a crash (kill -9
included) finds the ledger where it was left and continues:

1. :func:`export_and_upload` - plan a round of parts for new rows (every dataset at once),
   then for every part not yet verified, dataset by dataset: write the Parquet
   (deterministic), upload it if absent, HEAD it, mark verified.
2. :func:`check_parts` - a dataset's DuckDB checks over its verified, not yet archived parts.
3. :func:`upload_coverage` - the coverage object of each round whose parts are verified
   (sessions, gaps, and the round's continuity rows: breaks, resyncs, trade-id gaps).
4. :func:`mark_archived` - after the checks passed: each complete round's parts become
   ``archived`` and cleanup may free their rows.

Every step that touches the store first checks that the hour's parts were uploaded to this
store (:func:`check_location`): the ledger records each part's archive location.

No SQLite transaction is open while Parquet is written or objects move: every read is a
single statement fetched in full, every write a short ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from orderbook_core.buffer import HOUR_US, reads
from orderbook_core.buffer import coverage as buffer_coverage
from orderbook_core.errors import ArchiveError, ConfigError, IntegrityError

from orderbook_assets.archive import coverage as cov
from orderbook_assets.archive import datasets as ds
from orderbook_core.buffer import ledger
from orderbook_assets.archive import quality
from orderbook_assets.archive.crash import crash_point

from orderbook_assets.archive.export import Exported, object_key, stream_table, write_part, write_part_as
from orderbook_core.buffer.ledger import COVERAGE, DEPTH, Part, PartState
from orderbook_assets.archive.store import ArchiveStore

log = logging.getLogger(__name__)


@dataclass
class DatasetExport:
    """What step 1 did for one dataset of an hour: its parts now verified and what was written."""

    dataset: str
    parts: list[Part] = field(default_factory=list)
    exported: dict[int, Exported] = field(default_factory=dict)  # part number → fresh export
    uploads: dict[int, str] = field(default_factory=dict)  # part number → created | existed


@dataclass
class HourExport:
    """What step 1 did for an hour, per dataset (``parts``, ``exported``, ``uploads`` and
    ``planned`` without a dataset name are ``depth_snapshot``'s)."""

    hour_us: int
    round: list[Part]  # the round planned by this call (coverage last), [] if no new rows
    datasets: dict[str, DatasetExport] = field(default_factory=dict)

    def of(self, dataset: str) -> DatasetExport:
        return self.datasets.setdefault(dataset, DatasetExport(dataset))

    def planned_part(self, dataset: str) -> Part | None:
        return next((p for p in self.round if p.dataset == dataset), None)

    @property
    def planned(self) -> Part | None:
        return self.planned_part(DEPTH)

    @property
    def parts(self) -> list[Part]:
        return self.of(DEPTH).parts

    @property
    def exported(self) -> dict[int, Exported]:
        return self.of(DEPTH).exported

    @property
    def uploads(self) -> dict[int, str]:
        return self.of(DEPTH).uploads


def staged_path(staging: Path, key: str) -> Path:
    return Path(staging) / key


def check_location(conn: sqlite3.Connection, store: ArchiveStore, hour_us: int) -> None:
    """Refuse at once to work on an hour whose parts went to another archive, unless its objects are here.

    A part recorded at another location (another ``ORDERBOOK_ARCHIVE_URL``) cannot be read,
    verified or completed here, and a new round here would split the hour over two archives.
    If every such object is found in this store with its recorded size and SHA-256 (the
    operator copied the hour's objects over), the parts are recorded here and the run goes on.

    Raises:
        ConfigError: some of those objects are not here, with the location they are at and
            the two ways to recover.
    """
    away = ledger.elsewhere(conn, hour_us, store.url)
    if not away:
        return
    # Continuity parts live inside their round's coverage object (no size or hash of their own).
    missing = [p for p in away if p.sha256 is not None and store.head(p.object_key) != (p.bytes, p.sha256)]
    if missing:
        where = " and ".join(sorted({p.location for p in away if p.location}))
        hour = datetime.fromtimestamp(hour_us / 1e6, tz=timezone.utc).strftime("%Y-%m-%dT%H:00Z")
        raise ConfigError(
            "ORDERBOOK_ARCHIVE_URL",
            f"hour {hour} was archived to {where}, not to {store.url} ({len(missing)} of its objects, "
            f"e.g. {missing[0].object_key}, are not there); set ORDERBOOK_ARCHIVE_URL={where} to run this hour, "
            f"or copy the hour's objects from {where} to {store.url} under the same keys and run it again.",
        )
    moved = ledger.relocate(conn, hour_us, store.url)
    log.info("hour %s: the objects of %d part(s) recorded at %s were found verified in %s; recorded there",
             hour_us, moved, sorted({p.location for p in away}), store.url)


def export_and_upload(conn: sqlite3.Connection, store: ArchiveStore, staging: Path, hour_us: int) -> HourExport:
    """Plan the hour's next round (if new rows) and bring every pending part of every dataset to verified."""
    check_location(conn, store, hour_us)
    planned = ledger.plan_round(conn, hour_us)
    crash_point("after_plan")
    out = HourExport(hour_us, planned)
    for dataset in ds.DATASETS:
        done = out.of(dataset)
        for part in ledger.pending(conn, dataset, hour_us):
            if not part.reached(PartState.VERIFIED):
                part = _export_one(conn, store, staging, part, done)
            done.parts.append(part)
    return out


def _export_one(conn: sqlite3.Connection, store: ArchiveStore, staging: Path, part: Part, out: DatasetExport) -> Part:
    key = object_key(part.dataset, part)
    path = staged_path(staging, key)
    exported = write_part(conn, part, path)
    if part.sha256 is not None and part.sha256 != exported.sha256:
        # Recorded before the writer options changed? Then the part keeps the version it was made with.
        exported = write_part_as(conn, part, path, part.sha256, tried=exported.writer_version)
        if exported is None:
            raise IntegrityError(
                f"{part.dataset} part {part.part} of hour {part.hour_us} re-exported under every writer version, "
                f"but none gives the recorded SHA-256 {part.sha256}: the export is not deterministic"
            )
    out.exported[part.part] = exported
    crash_point("after_parquet")
    try:
        out.uploads[part.part] = store.put_if_absent(key, exported.path, exported.sha256)
    except IntegrityError:
        # The key exists with other bytes: an upload whose ledger record a crash lost, made
        # under older writer options, is this very part; any other difference is an error.
        stored = store.head(key)
        again = write_part_as(conn, part, path, stored[1], tried=exported.writer_version) if stored is not None else None
        if again is None:
            raise
        exported = out.exported[part.part] = again
        out.uploads[part.part] = store.put_if_absent(key, exported.path, exported.sha256)
    part = ledger.advance(
        conn, part, PartState.UPLOADED, rows=exported.rows, bytes=exported.bytes, sha256=exported.sha256,
        object_key=key, first_recv_us=exported.first_recv_us, last_recv_us=exported.last_recv_us, location=store.url,
    )
    crash_point("after_upload")
    return _verify(conn, store, part)


def _verify(conn: sqlite3.Connection, store: ArchiveStore, part: Part) -> Part:
    got = store.head(part.object_key)
    if got is None:
        # e.g. a PUT answered 200 that stored nothing: the next attempt uploads again
        raise ArchiveError(f"{part.object_key} is missing after upload; it will be uploaded again")
    if got != (part.bytes, part.sha256):
        raise IntegrityError(f"{part.object_key}: HEAD shows (size, sha256) {got}, expected {(part.bytes, part.sha256)}")
    crash_point("after_head")
    return ledger.advance(conn, part, PartState.VERIFIED)


def local_copy(store: ArchiveStore, staging: Path, part: Part) -> Path:
    """The verified part as a local file: the staged file, else downloaded and hashed.

    A staged file was hashed once, right after it was written atomically (temp, fsync,
    rename) under its content-derived key; its size is checked, not its hash again.
    """
    path = staged_path(staging, part.object_key)
    if path.exists() and path.stat().st_size == part.bytes:
        return path
    data = store.get(part.object_key)

    if (len(data), hashlib.sha256(data).hexdigest()) != (part.bytes, part.sha256):
        raise IntegrityError(f"{part.object_key} downloaded with a different size or SHA-256 than recorded")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".dl")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def explained_seqs(conn: sqlite3.Connection, hour_us: int, checked: list[Part], dataset: str) -> pa.Table:
    """(session_id, seq) pairs that explain seq gaps in ``dataset``'s checked parts: duplicates
    dropped, frames quarantined, the hour's rows of the dataset outside the checked parts (late
    rows in other parts), and the hour's rows of every other dataset (one session carries
    every stream kind it subscribed, and seq counts its frames across them)."""
    sessions = [r[0] for r in cov.session_rows(conn, hour_us)]
    pairs: list[tuple[int, int]] = []
    pairs += buffer_coverage.dropped_seqs(conn, sessions)
    pairs += buffer_coverage.quarantined_seqs(conn, hour_us - HOUR_US, hour_us + 2 * HOUR_US)
    for other, d in ds.DATASETS.items():
        if not d.has_session:
            continue
        whole = reads.hour_bounds(conn, other, hour_us)
        if whole is None:
            continue
        ranges = reads.gaps_between(whole, [p.rows_range for p in checked]) if other == dataset else [whole]
        for rng in ranges:
            pairs += reads.session_seqs(conn, other, rng)
    return pa.table({
        "session_id": pa.array([p[0] for p in pairs], pa.int64()),
        "seq": pa.array([p[1] for p in pairs], pa.int64()),
    })


def recorded_continuity(conn: sqlite3.Connection, hour_us: int) -> tuple[pa.Table, pa.Table]:
    """The hour's recorded diff-depth breaks and trade-id gaps (buffer ``depth_sync`` and
    ``trade_gap``), streams named as in the archive: what the continuity checks match against."""
    streams = stream_table(conn)
    breaks = buffer_coverage.sync_breaks(conn, hour_us)
    gaps = buffer_coverage.trade_gaps(conn, hour_us)
    return (
        pa.Table.from_pylist([
            {"market": streams[sid].market, "stream": streams[sid].name, "session_id": session, "after_last_update_id": u}
            for sid, session, u in breaks
        ], schema=quality.SYNC_BREAKS),
        pa.Table.from_pylist([
            {"market": streams[sid].market, "stream": streams[sid].name, "dataset": d, "first_missing_id": lo,
             "last_missing_id": hi}
            for sid, d, lo, hi in gaps
        ], schema=quality.TRADE_GAPS),
    )


@dataclass
class HourChecks:
    parts: list[Part]
    results: list[quality.CheckResult]

    @property
    def blocking_failures(self) -> list[quality.CheckResult]:
        return [r for r in self.results if not r.passed and r.severity == quality.ERROR]

    def result(self, name: str) -> quality.CheckResult:
        return next(r for r in self.results if r.name == name)


def check_window(hour_us: int, parts: list[Part]) -> tuple[int, int]:
    end = hour_us + HOUR_US
    if parts:
        end = min(end, max(p.planned_us for p in parts))
    return hour_us, end


def check_parts(conn: sqlite3.Connection, store: ArchiveStore, staging: Path, hour_us: int,
                dataset: str) -> HourChecks:
    """Run ``dataset``'s checks (``quality.CHECKS``) over its verified, not yet archived parts of the hour."""
    check_location(conn, store, hour_us)
    parts = ledger.parts(conn, dataset, hour_us, (PartState.VERIFIED,))
    paths = [str(local_copy(store, staging, p)) for p in parts]
    buffer_rows = sum(ledger.buffer_rows(conn, p) for p in parts)
    checks = quality.CHECKS[dataset]
    # no parts, no seq to explain: the hour's other rows are not read for nothing
    explained = explained_seqs(conn, hour_us, parts, dataset) if "no_seq_gaps" in checks and parts else None
    breaks, gaps = recorded_continuity(conn, hour_us)
    # mark prices are compared with the hour's bookTicker, archived or just verified
    mids = (_copies(conn, store, staging, hour_us, (ds.BOOK_TICKER,), (PartState.VERIFIED, PartState.ARCHIVED))
            if "mark_near_mid" in checks else [])
    results = quality.run_all(
        paths, buffer_rows=buffer_rows,
        archived_rows={f"part-{p.part:04d}": p.rows or 0 for p in parts},
        explained=explained, dataset=dataset, breaks=breaks, trade_gaps=gaps, mids=mids,
    )
    return HourChecks(parts, results)


@dataclass
class HourCoverage:
    """What the coverage step did: the coverage parts verified, and the hour's gaps (once)."""

    parts: list[Part]
    gaps: list[quality.Gap]

    @property
    def check(self) -> quality.CheckResult:
        return quality.gaps_result(self.gaps)


def _copies(conn, store, staging, hour_us: int, names, states) -> list[str]:
    return [str(local_copy(store, staging, p)) for d in names for p in ledger.parts(conn, d, hour_us, states)]


def upload_coverage(conn: sqlite3.Connection, store: ArchiveStore, staging: Path, hour_us: int) -> HourCoverage:
    """Write, upload and verify the coverage object of every round of the hour whose parts are verified.

    The hour's gaps since its last archived parts are computed once, in one DuckDB
    connection with the session statistics, and go into the newest round's object only,
    so rounds exported together do not repeat each other's gaps. A re-run that finds the
    coverage already verified reads the gaps back from the newest object. Each round's
    continuity parts (``depth_sync``, ``trade_gap``) have no object of their own: their rows
    are in the coverage object, and they are verified with it.
    """
    check_location(conn, store, hour_us)
    pending = [p for p in ledger.pending(conn, COVERAGE, hour_us)
               if all(q.reached(PartState.VERIFIED) or q.dataset in ds.CONTINUITY for q in ledger.round_parts(conn, p))]
    newest = max((p.part for p in pending), default=None)
    todo = [p for p in pending if not p.reached(PartState.VERIFIED)]
    done = [p for p in pending if p.reached(PartState.VERIFIED)]
    gaps: list[quality.Gap] = []
    if todo:
        sessions_files = _copies(conn, store, staging, hour_us, [d for d, x in ds.DATASETS.items() if x.has_session],
                                 (PartState.VERIFIED,))
        con = quality.connect(_copies(conn, store, staging, hour_us, quality.GAP_DATASETS, (PartState.VERIFIED,)),
                              earlier=_copies(conn, store, staging, hour_us, quality.GAP_DATASETS, (PartState.ARCHIVED,)),
                              schema=ds.DEPTH_SCHEMA)  # any depth dataset's: the gap rule reads market, stream, recv_time
        try:
            verified = [p for d in quality.GAP_DATASETS for p in ledger.parts(conn, d, hour_us, (PartState.VERIFIED,))]
            gaps = quality.find_gaps(con, check_window(hour_us, verified or todo))
            if sessions_files:
                con.read_parquet(sessions_files, union_by_name=True).create_view("session_rows")
                stats = cov.per_session_stats(con, "session_rows")
            else:
                stats = {}
        finally:
            con.close()
        sessions = cov.session_rows(conn, hour_us)
        streams = stream_table(conn)
        for part in todo:
            events = cov.continuity_rows(conn, ledger.round_parts(conn, part), streams)
            done.append(_coverage_one(conn, store, staging, part, sessions, stats,
                                      gaps if part.part == newest else [], events))
    elif newest is not None:
        newest_part = next(p for p in done if p.part == newest)
        gaps = cov.gaps_of(pq.read_table(local_copy(store, staging, newest_part)))
    for part in done:
        for q in ledger.round_parts(conn, part):
            if q.dataset in ds.CONTINUITY and not q.reached(PartState.VERIFIED):
                ledger.advance(conn, q, PartState.VERIFIED, rows=ledger.buffer_rows(conn, q), object_key=part.object_key,
                               location=part.location)
    return HourCoverage(sorted(done, key=lambda p: p.part), gaps)


def _coverage_one(conn, store: ArchiveStore, staging: Path, part: Part, sessions, stats, gaps, events=()) -> Part:
    key = object_key(COVERAGE, part)
    if part.state == PartState.UPLOADED and store.head(key) == (part.bytes, part.sha256):
        return ledger.advance(conn, part, PartState.VERIFIED)
    table = cov.build_table(part, sessions, stats, gaps, events)
    path = staged_path(staging, key)
    size, sha = cov.write_table(table, path)
    try:
        store.put_if_absent(key, path, sha)
    except IntegrityError:
        # An earlier attempt stored its snapshot of the session counters first: it wins.
        got = store.head(key)
        if got is None:
            raise
        size, sha = got
        log.info("%s: keeping the coverage snapshot stored by an earlier attempt", key)
    facts = dict(rows=table.num_rows, bytes=size, sha256=sha, object_key=key, location=store.url)
    if part.state == PartState.UPLOADED:
        # The earlier upload was lost and this snapshot's counters differ: record what is stored now.
        part = ledger.record_object(conn, part, **facts)
    else:
        part = ledger.advance(conn, part, PartState.UPLOADED, **facts)
    got = store.head(key)
    if got != (part.bytes, part.sha256):
        raise ArchiveError(f"{key}: HEAD shows {got}, expected {(part.bytes, part.sha256)}; it will be uploaded again")
    return ledger.advance(conn, part, PartState.VERIFIED)


def mark_archived(conn: sqlite3.Connection, staging: Path, hour_us: int) -> list[Part]:
    """Mark archived every round of the hour whose coverage and parts are all verified.

    A round is archived as a whole, so no part is freed before the coverage that records its
    sessions and continuity. The staged files stay for the derived datasets built next (bars
    read them instead of downloading what was just uploaded); :func:`drop_staged` removes them.
    """
    crash_point("before_archive")
    done = []
    for cover in ledger.parts(conn, COVERAGE, hour_us, (PartState.VERIFIED,)):
        members = ledger.round_parts(conn, cover)
        if not all(p.reached(PartState.VERIFIED) for p in members):
            continue
        for part in [*members, cover]:
            if not part.reached(PartState.ARCHIVED):
                done.append(ledger.advance(conn, part, PartState.ARCHIVED))
    return done


def archived_copies(conn: sqlite3.Connection, store: ArchiveStore, staging: Path, hour_us: int,
                    dataset: str) -> list[str]:
    """Local files of the hour's archived parts of a dataset: staged ones as they are, others downloaded."""
    check_location(conn, store, hour_us)
    return [str(local_copy(store, staging, p)) for p in ledger.parts(conn, dataset, hour_us, (PartState.ARCHIVED,))]


def drop_staged(conn: sqlite3.Connection, staging: Path, hour_us: int) -> int:
    """Remove the staged files of the hour's archived parts; returns how many were there."""
    n = 0
    for dataset in (*ds.DATASETS, COVERAGE):
        for part in ledger.parts(conn, dataset, hour_us, (PartState.ARCHIVED,)):
            path = staged_path(staging, part.object_key)
            if path.exists():
                path.unlink()
                n += 1
    return n
