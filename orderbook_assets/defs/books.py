"""The ``book_snapshot`` asset and its checks (core: ``books.hour``, shell: ``derived.book_hours``)."""

from __future__ import annotations

import warnings
from datetime import datetime, timezone
from typing import NamedTuple

import dagster as dg
from dagster import (AssetCheckEvaluation, AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, MetadataValue,
                     PreviewWarning)

from orderbook_assets.derived import book_hours
from orderbook_assets.archive import datasets as ds
from orderbook_assets.defs.assets import RETRY, fail_fast
from orderbook_assets.defs.partitions import hour_us_of, hourly

#: Mismatches listed in full in the check's metadata (the count is always exact).
MAX_LISTED = 200

def check_specs(key: dg.AssetKey) -> tuple[AssetCheckSpec, AssetCheckSpec]:
    """The proof's checks on the books asset ``key`` (a single host's, or the fleet merge's)."""
    with warnings.catch_warnings():  # partitioned checks are a Dagster preview, chosen knowingly
        warnings.simplefilter("ignore", PreviewWarning)
        matches = AssetCheckSpec(
            "book_matches_exchange", asset=key, blocking=True, partitions_def=hourly,
            description="Every REST and partial snapshot of the exchange equals the rebuilt book around its update id "
                        "(exact where an event ends at it; levels the straddling event touched may take either end's "
                        "value), inside the snapshot's depth and the book's horizon. A mismatch, in this hour or in a "
                        "later hour this run rebuilt, is an ERROR; a stream with diff rows and nothing comparable is "
                        "'unproven' (WARN), never a pass. Metadata: per stream, snapshots available, comparable, "
                        "matched, mismatched (with levels), rows known, partly known, unknown.",
        )
        not_crossed = AssetCheckSpec(
            "book_not_crossed", asset=key, blocking=False, partitions_def=hourly,
            description="Warning only: the rebuilt book is never crossed where the exchange's partial snapshot at the "
                        "same update id was not (with examples).",
        )
    return matches, not_crossed


MATCHES, NOT_CROSSED = check_specs(dg.AssetKey(ds.BOOK_SNAPSHOT))


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc).isoformat()


def partition_key(hour_us: int) -> str:
    """The hourly partition key of the hour starting at ``hour_us``."""
    return datetime.fromtimestamp(hour_us / 1e6, tz=timezone.utc).strftime("%Y-%m-%d-%H:00")


def _mismatch(m) -> dict:
    return {"market": m.market, "symbol": m.symbol, "stream": m.stream, "source": m.source,
            "recv_time": _iso(m.recv_time_us), "last_update_id": m.last_update_id, "event": list(m.event),
            "levels": [lv._asdict() for lv in m.levels]}


class Verdict(NamedTuple):
    passed: bool
    severity: AssetCheckSeverity
    description: str


def verdict(built: list[book_hours.BookHour]) -> Verdict:
    """The check's outcome over the hour and the later hours this run rebuilt: a mismatch anywhere
    is an ERROR; a stream of this hour with diff rows and nothing comparable is unproven (WARN)."""
    out = built[0]
    mismatched = sum(b.proof.mismatched for b in built)
    if mismatched:
        where = ", ".join(f"{_iso(b.hour_us)}: {b.proof.mismatched}" for b in built if b.proof.mismatched)
        return Verdict(False, AssetCheckSeverity.ERROR,
                       f"{mismatched} snapshots differ from the rebuilt books ({where}).")
    unproven = [f"{s.market}:{s.stream}" for b in built for s in b.proof.unproven]
    if unproven:
        return Verdict(False, AssetCheckSeverity.WARN,
                       f"unproven: {', '.join(unproven)} had diff rows and no snapshot that could be compared "
                       "(nothing was compared, so nothing is proven).")
    return Verdict(True, AssetCheckSeverity.ERROR,
                   f"{out.proof.comparable} snapshots compared, every one matched.")


def proof_metadata(built: list[book_hours.BookHour]) -> dict:
    out = built[0]
    proof = out.proof
    streams = proof.streams
    later = built[1:]
    return {
        "verdict": MetadataValue.text("mismatch" if sum(b.proof.mismatched for b in built)
                                      else "unproven" if any(b.proof.unproven for b in built) else "proven"),
        "available": MetadataValue.int(proof.available),
        "comparable": MetadataValue.int(proof.comparable),
        "matched": MetadataValue.int(proof.matched),
        "mismatches": MetadataValue.int(proof.mismatched),
        "unproven_streams": MetadataValue.int(len(proof.unproven)),
        "levels_compared": MetadataValue.int(sum(s.levels_compared for s in streams)),
        "levels_mismatched": MetadataValue.int(sum(s.levels_mismatched for s in streams)),
        "levels_undecided": MetadataValue.int(sum(s.levels_undecided for s in streams)),
        "rows_known": MetadataValue.int(sum(s.rows_known for s in streams)),
        "rows_partly_known": MetadataValue.int(sum(s.rows_partly_known for s in streams)),
        "rows_unknown": MetadataValue.int(sum(s.rows_unknown for s in streams)),
        "streams": MetadataValue.json([s.as_dict() for s in streams]),
        "mismatch_levels": MetadataValue.json([_mismatch(m) for m in proof.mismatches[:MAX_LISTED]]),
        "rebuilt_hours": MetadataValue.json([
            {"hour": _iso(b.hour_us), "comparable": b.proof.comparable, "matched": b.proof.matched,
             "mismatches": b.proof.mismatched, "unproven_streams": len(b.proof.unproven),
             "mismatch_levels": [_mismatch(m) for m in b.proof.mismatches[:MAX_LISTED]]} for b in later]),
        "rebuilt_hours_mismatches": MetadataValue.int(sum(b.proof.mismatched for b in later)),
    }


SINGLE_HOST_DESCRIPTION = (
    "The top-N book of every diff-depth stream at fixed interval points (25 levels every 1 s by default), "
    "rebuilt by Binance's procedure from the hour's depth_update and depth_rest_snapshot and the previous hour's "
    "end state, each row saying how many of its levels the snapshots' horizon proves, and proved against every "
    "REST and partial snapshot recorded alongside. Each build is kept as an immutable version; late parts rebuild "
    "the hour and the following hours whose start state changed, and their proofs count in this run's check "
    "(docs/datasets.md).")


def book_snapshot_asset(key: dg.AssetKey, deps: list, *, fleet: bool, group_name: str,
                        description: str) -> dg.AssetsDefinition:
    """The books asset at ``key``, built from the archive this location serves: its own (``fleet``
    False: a single host's, or a fleet host's folder) or the fleet's merged datasets (``fleet``
    True: the top-level ``<archive>/book_snapshot`` analysts read). One builder, one proof."""

    @dg.asset(
        key=key,
        partitions_def=hourly,
        deps=deps,
        group_name=group_name,
        kinds={"parquet", "duckdb"},
        retry_policy=RETRY,
        required_resource_keys={"archive"},
        check_specs=list(check_specs(key)),
        description=description,
    )
    def _books(context) -> dg.MaterializeResult:
        return _materialize(context, fleet)

    return _books


def _materialize(context, fleet: bool) -> dg.MaterializeResult:
    hour_us = hour_us_of(context)
    archive = context.resources.archive
    with fail_fast():
        settings = archive.settings().book
        store = archive.open_store(fleet=fleet)
        built = book_hours.materialize_from(archive.location(fleet=fleet), hour_us, settings, store,
                                            archive.s3_settings())
    out = built[0]
    crossed = out.proof.crossed
    for later in built[1:]:
        # a later hour rebuilt here is a new build of that hour: its materialization and its own
        # proof are recorded on its partition (and its mismatches fail this run's check below)
        context.log.info("rebuilt %s: its start state changed (%s rows, %s comparable, %s mismatches)",
                         _iso(later.hour_us), later.rows, later.proof.comparable, later.proof.mismatched)
        key = partition_key(later.hour_us)
        context.log_event(dg.AssetMaterialization(
            asset_key=context.asset_key, partition=key,
            metadata={"rows": later.rows, "known_rows": later.known_rows, "partly_known_rows": later.partly_known_rows,
                      "rebuilt_by": context.partition_key,
                      "sha256": later.books.sha256 if later.books else None,
                      "version_key": later.books.version_key if later.books else None,
                      "replaced_sha256": later.books.replaced_sha256 if later.books else None}))
        lv = verdict([later])
        context.log_event(AssetCheckEvaluation(
            asset_key=context.asset_key, check_name=MATCHES.name, passed=lv.passed, severity=lv.severity,
            description=lv.description, metadata=proof_metadata([later]), partition=key))
    metadata = {
        "rows": out.rows,
        "known_rows": out.known_rows,
        "partly_known_rows": out.partly_known_rows,
        "streams": [f"{k.market}:{k.stream}" for k in out.streams],
        "started_from_state": out.started_from_state,
        "path": MetadataValue.path(out.books_url) if out.books_url else MetadataValue.text("nothing written: no diff depth"),
        "sha256": out.books.sha256 if out.books else None,
        "version_key": out.books.version_key if out.books else None,
        "replaced_sha256": out.books.replaced_sha256 if out.books else None,
        "state_sha256": out.state.sha256 if out.state else None,
        "cascaded_hours": [_iso(b.hour_us) for b in built[1:]],
        "depth": settings.depth,
        "interval_ms": settings.interval_us // 1000,
    }
    v = verdict(built)
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            AssetCheckResult(check_name=MATCHES.name, passed=v.passed, severity=v.severity,
                             description=v.description, metadata=proof_metadata(built)),
            AssetCheckResult(
                check_name=NOT_CROSSED.name, passed=not crossed, severity=AssetCheckSeverity.WARN,
                metadata={"count": len(crossed), "examples": MetadataValue.json([c._asdict() for c in crossed[:5]]),
                          "crossed_known_rows": out.crossed.count,
                          "crossed_row_examples": MetadataValue.json([{**e, "time": str(e["time"])}
                                                                      for e in out.crossed.examples])},
            ),
        ],
    )


#: A single host's books (or a fleet host's, in its own folder). After archived_hour: built only
#: from parts that are verified and passed their checks.
book_snapshot = book_snapshot_asset(
    dg.AssetKey(ds.BOOK_SNAPSHOT), [ds.DEPTH_UPDATE, ds.DEPTH_REST, ds.DEPTH, "archived_hour"],
    fleet=False, group_name="archive", description=SINGLE_HOST_DESCRIPTION)
