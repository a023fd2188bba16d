"""The ``book_snapshot`` asset and its checks (core: ``books.hour``, shell: ``analytics.book_hours``)."""

from __future__ import annotations

import warnings
from datetime import datetime, timezone

import dagster as dg
from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, MetadataValue, PreviewWarning

from orderbook_assets.analytics import book_hours
from orderbook_assets.archive import datasets as ds
from orderbook_assets.books.hour import Settings
from orderbook_assets.defs.assets import RETRY, fail_fast
from orderbook_assets.defs.partitions import hour_us_of, hourly

#: Mismatches listed in full in the check's metadata (the count is always exact).
MAX_LISTED = 200

with warnings.catch_warnings():  # partitioned checks are a Dagster preview, chosen knowingly
    warnings.simplefilter("ignore", PreviewWarning)
    MATCHES = AssetCheckSpec(
        "book_matches_exchange", asset=ds.BOOK_SNAPSHOT, blocking=True, partitions_def=hourly,
        description="Every partial snapshot (depth5/10/20) whose lastUpdateId equals a diff event's u equals the "
                    "rebuilt top-N at that id, level for level (metadata: comparable, matched, every mismatch).",
    )
    NOT_CROSSED = AssetCheckSpec(
        "book_not_crossed", asset=ds.BOOK_SNAPSHOT, blocking=False, partitions_def=hourly,
        description="Warning only: the rebuilt book is never crossed where the exchange's partial snapshot at the "
                    "same update id was not (with examples).",
    )


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc).isoformat()


def _mismatch(m) -> dict:
    return {"market": m.market, "symbol": m.symbol, "stream": m.stream, "recv_time": _iso(m.recv_time_us),
            "last_update_id": m.last_update_id, "exchange_bids": m.exchange_bids, "exchange_asks": m.exchange_asks,
            "rebuilt_bids": m.rebuilt_bids, "rebuilt_asks": m.rebuilt_asks}


@dg.asset(
    name=ds.BOOK_SNAPSHOT,
    partitions_def=hourly,
    # After archived_hour: built only from parts that are verified and passed their checks.
    deps=[ds.DEPTH_UPDATE, ds.DEPTH_REST, ds.DEPTH, "archived_hour"],
    group_name="archive",
    kinds={"parquet", "duckdb"},
    retry_policy=RETRY,
    required_resource_keys={"archive"},
    check_specs=[MATCHES, NOT_CROSSED],
)
def book_snapshot(context) -> dg.MaterializeResult:
    """The top-N book of every diff-depth stream at fixed interval points (25 levels every 1 s by
    default), rebuilt by Binance's procedure from the hour's depth_update and depth_rest_snapshot
    and the previous hour's end state, and proved against the partial snapshots recorded alongside.
    Each build is kept as an immutable version; late parts rebuild the hour and the following
    hours whose start state changed (docs/datasets.md)."""
    hour_us = hour_us_of(context)
    archive = context.resources.archive
    with fail_fast():
        settings = Settings.from_env()
        store = archive.open_store()
        built = book_hours.materialize_from(archive.location(), hour_us, settings, store, archive.s3_settings())
    out = built[0]
    proof = out.proof
    listed = proof.mismatches[:MAX_LISTED]
    crossed = proof.crossed
    for later in built[1:]:
        context.log.info("rebuilt %s: its start state changed (%s rows, %s mismatches)", _iso(later.hour_us),
                         later.rows, len(later.proof.mismatches))
    metadata = {
        "rows": out.rows,
        "known_rows": out.known_rows,
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
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            AssetCheckResult(
                check_name=MATCHES.name, passed=proof.ok and not proof.mismatches, severity=AssetCheckSeverity.ERROR,
                metadata={"comparable": proof.comparable, "matched": proof.matched,
                          "mismatches": len(proof.mismatches),
                          "mismatch_levels": MetadataValue.json([_mismatch(m) for m in listed])},
            ),
            AssetCheckResult(
                check_name=NOT_CROSSED.name, passed=not crossed, severity=AssetCheckSeverity.WARN,
                metadata={"count": len(crossed), "examples": MetadataValue.json([c._asdict() for c in crossed[:5]]),
                          "crossed_known_rows": out.crossed.count,
                          "crossed_row_examples": MetadataValue.json([{**e, "time": str(e["time"])}
                                                                      for e in out.crossed.examples])},
            ),
        ],
    )
