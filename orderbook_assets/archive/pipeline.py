"""The steps of archiving one hour, as plain functions over a buffer connection and a store.

The Dagster assets in :mod:`.assets` are thin wrappers around these. Each step reads the
ledger, does its work and records the outcome; re-running any step after a crash (kill -9
included) finds the ledger where it was left and continues:

1. :func:`export_and_upload` - plan a part for new rows, then for every part not yet
   verified: write the Parquet (deterministic), upload it if absent, HEAD it, mark verified.
2. :func:`check_parts` - the DuckDB checks over the verified, not yet archived parts.
3. :func:`upload_coverage` - the coverage objects of those parts.
4. :func:`mark_archived` - after the checks passed: the parts become ``archived`` and
   cleanup may free their rows.

No SQLite transaction is open while Parquet is written or objects move: every read is a
single statement fetched in full, every write a short ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from orderbook_collector.buffer import HOUR_US, reads
from orderbook_collector.errors import ArchiveError, IntegrityError

from orderbook_assets.archive import coverage as cov
from orderbook_assets.archive import ledger
from orderbook_assets.archive import quality
from orderbook_assets.archive.crash import crash_point

from orderbook_assets.archive.export import Exported, object_key, write_part, write_part_as
from orderbook_assets.archive.ledger import COVERAGE, DEPTH, Part
from orderbook_assets.archive.store import ArchiveStore

log = logging.getLogger(__name__)


@dataclass
class HourExport:
    """What step 1 did for an hour: the parts now verified and what was written."""

    hour_us: int
    planned: Part | None
    parts: list[Part] = field(default_factory=list)
    exported: dict[int, Exported] = field(default_factory=dict)  # part number → fresh export
    uploads: dict[int, str] = field(default_factory=dict)  # part number → created | existed


def staged_path(staging: Path, key: str) -> Path:
    return Path(staging) / key


def export_and_upload(conn: sqlite3.Connection, store: ArchiveStore, staging: Path, hour_us: int) -> HourExport:
    planned = ledger.plan_part(conn, hour_us)
    crash_point("after_plan")
    out = HourExport(hour_us, planned)
    for part in ledger.pending(conn, DEPTH, hour_us):
        if not part.reached("verified"):
            part = _export_one(conn, store, staging, part, out)
        out.parts.append(part)
    return out


def _export_one(conn: sqlite3.Connection, store: ArchiveStore, staging: Path, part: Part, out: HourExport) -> Part:
    key = object_key(DEPTH, part)
    path = staged_path(staging, key)
    exported = write_part(conn, part, path)
    if part.sha256 is not None and part.sha256 != exported.sha256:
        # Recorded before the writer options changed? Then the part keeps the version it was made with.
        exported = write_part_as(conn, part, path, part.sha256, tried=exported.writer_version)
        if exported is None:
            raise IntegrityError(
                f"part {part.part} of hour {part.hour_us} re-exported under every writer version, "
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
        conn, part, "uploaded", rows=exported.rows, bytes=exported.bytes, sha256=exported.sha256,
        object_key=key, first_recv_us=exported.first_recv_us, last_recv_us=exported.last_recv_us,
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
    return ledger.advance(conn, part, "verified")


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


def explained_seqs(conn: sqlite3.Connection, hour_us: int, checked: list[Part]) -> pa.Table:
    """(session_id, seq) pairs that explain seq gaps: duplicates dropped, frames quarantined,
    and the hour's buffer rows outside the checked parts (late rows in other parts)."""
    sessions = [r[0] for r in cov.session_rows(conn, hour_us)]
    pairs: list[tuple[int, int]] = []
    if sessions:
        marks = ",".join("?" * len(sessions))
        pairs += conn.execute(f"SELECT session_id, seq FROM dropped WHERE session_id IN ({marks})", sessions).fetchall()
    pairs += conn.execute(
        "SELECT session_id, seq FROM quarantine WHERE recv_us >= ? AND recv_us < ?",
        (hour_us - HOUR_US, hour_us + 2 * HOUR_US),
    ).fetchall()
    whole = reads.hour_bounds(conn, DEPTH, hour_us)
    if whole is not None:
        for rng in reads.gaps_between(whole, [p.rows_range for p in checked]):
            pairs += conn.execute(f"SELECT session_id, seq FROM {DEPTH} WHERE {reads.PART_ROWS}", rng.params()).fetchall()
    return pa.table({
        "session_id": pa.array([p[0] for p in pairs], pa.int64()),
        "seq": pa.array([p[1] for p in pairs], pa.int64()),
    })


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


def check_parts(conn: sqlite3.Connection, store: ArchiveStore, staging: Path, hour_us: int) -> HourChecks:
    parts = ledger.parts(conn, DEPTH, hour_us, ("verified",))
    paths = [str(local_copy(store, staging, p)) for p in parts]
    buffer_rows = sum(ledger.buffer_rows(conn, p) for p in parts)
    results = quality.run_all(
        paths, buffer_rows=buffer_rows,
        archived_rows={f"part-{p.part:04d}": p.rows or 0 for p in parts},
        explained=explained_seqs(conn, hour_us, parts),
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


def upload_coverage(conn: sqlite3.Connection, store: ArchiveStore, staging: Path, hour_us: int) -> HourCoverage:
    """Write, upload and verify the coverage object of every verified depth part of the hour.

    The hour's gaps since its last archived part are computed once, in one DuckDB
    connection with the session statistics, and go into the newest part's object only,
    so parts exported together do not repeat each other's gaps. A re-run that finds the
    coverage already verified reads the gaps back from the newest object.
    """
    depth = {p.part: p for p in ledger.parts(conn, DEPTH, hour_us, ("verified",))}
    pending = [p for p in ledger.pending(conn, COVERAGE, hour_us) if p.part in depth]
    newest = max((p.part for p in pending), default=None)
    todo = [p for p in pending if not p.reached("verified")]
    done = [p for p in pending if p.reached("verified")]
    gaps: list[quality.Gap] = []
    if todo:
        earlier = [str(local_copy(store, staging, p)) for p in ledger.parts(conn, DEPTH, hour_us, ("archived",))]
        con = quality.connect([str(local_copy(store, staging, p)) for p in depth.values()], earlier=earlier)
        try:
            gaps = quality.find_gaps(con, check_window(hour_us, list(depth.values())))
            stats = cov.per_session_stats(con)
        finally:
            con.close()
        sessions = cov.session_rows(conn, hour_us)
        for part in todo:
            done.append(_coverage_one(conn, store, staging, part, sessions, stats, gaps if part.part == newest else []))
    elif newest is not None:
        newest_part = next(p for p in done if p.part == newest)
        gaps = cov.gaps_of(pq.read_table(local_copy(store, staging, newest_part)))
    return HourCoverage(sorted(done, key=lambda p: p.part), gaps)


def _coverage_one(conn, store: ArchiveStore, staging: Path, part: Part, sessions, stats, gaps) -> Part:
    key = object_key(COVERAGE, part)
    if part.state == "uploaded" and store.head(key) == (part.bytes, part.sha256):
        return ledger.advance(conn, part, "verified")
    table = cov.build_table(part, sessions, stats, gaps)
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
    facts = dict(rows=table.num_rows, bytes=size, sha256=sha, object_key=key)
    if part.state == "uploaded":
        # The earlier upload was lost and this snapshot's counters differ: record what is stored now.
        part = ledger.record_object(conn, part, **facts)
    else:
        part = ledger.advance(conn, part, "uploaded", **facts)
    got = store.head(key)
    if got != (part.bytes, part.sha256):
        raise ArchiveError(f"{key}: HEAD shows {got}, expected {(part.bytes, part.sha256)}; it will be uploaded again")
    return ledger.advance(conn, part, "verified")


def mark_archived(conn: sqlite3.Connection, staging: Path, hour_us: int) -> list[Part]:
    """Mark the hour's verified parts (both datasets) archived.

    Their staged files stay for the derived datasets built next (bars read them instead of
    downloading what was just uploaded); :func:`drop_staged` removes them.
    """
    crash_point("before_archive")
    done = []
    for dataset in (DEPTH, COVERAGE):
        for part in ledger.parts(conn, dataset, hour_us, ("verified",)):
            done.append(ledger.advance(conn, part, "archived"))
    return done


def archived_copies(conn: sqlite3.Connection, store: ArchiveStore, staging: Path, hour_us: int) -> list[str]:
    """Local files of the hour's archived depth parts: staged ones as they are, others downloaded."""
    return [str(local_copy(store, staging, p)) for p in ledger.parts(conn, DEPTH, hour_us, ("archived",))]


def drop_staged(conn: sqlite3.Connection, staging: Path, hour_us: int) -> int:
    """Remove the staged files of the hour's archived parts; returns how many were there."""
    n = 0
    for dataset in (DEPTH, COVERAGE):
        for part in ledger.parts(conn, dataset, hour_us, ("archived",)):
            path = staged_path(staging, part.object_key)
            if path.exists():
                path.unlink()
                n += 1
    return n
