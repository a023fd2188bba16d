"""The hourly archive: one asset per stream dataset → ``coverage`` → ``archived_hour``.

The dataset assets (``depth_snapshot``, ``depth_update``, ``depth_rest_snapshot``, ``trade``,
``agg_trade``, ``book_ticker``) are materialized by one step, :func:`stream_datasets`, because
an hour's parts are planned together as one round (one transaction, so the round's coverage
knows exactly which rows it describes); each dataset still is its own asset with its own
metadata and blocking checks (:mod:`.checks`). ``coverage`` stores the coverage objects; and
``archived_hour`` marks the rounds archived, which is what lets cleanup free their rows.
A failing ERROR check skips both downstream assets, so nothing unchecked is ever marked.
"""


import warnings
from contextlib import closing, contextmanager
from datetime import datetime, timezone

from dagster import PreviewWarning
from dagster import (AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetExecutionContext, AssetKey, AssetSpec,
                     Backoff, Failure, Jitter, MaterializeResult, MetadataValue, RetryPolicy, asset, multi_asset)

from orderbook_core.errors import ConfigError, IntegrityError

from orderbook_assets.archive import datasets as ds
from orderbook_assets.archive import pipeline, source
from orderbook_assets.defs.hosts import running_key
from orderbook_assets.defs.partitions import hour_us_of, hourly
from orderbook_assets.defs.resources import ArchiveResource, BufferResource

#: Around upload and verify, on top of botocore's retries: 4 more attempts, 2 s, 4 s, 8 s, 16 s ± jitter.
RETRY = RetryPolicy(max_retries=4, delay=2, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS)


@contextmanager
def fail_fast():
    """Errors that another attempt cannot fix (bad settings, an object that differs from
    ours) fail the step at once instead of going through the RetryPolicy."""
    try:
        yield
    except (ConfigError, IntegrityError) as exc:
        raise Failure(description=str(exc), allow_retries=False) from exc


def _iso(us: int | None) -> str | None:
    return None if us is None else datetime.fromtimestamp(us / 1e6, tz=timezone.utc).isoformat()


#: The UI's description of each dataset asset (columns: docs/datasets.md).
DESCRIPTIONS = {
    ds.DEPTH: "Partial-depth books (depth5/10/20) as verified Parquet parts, one part per export of new rows.",
    ds.DEPTH_UPDATE: "Diff-depth events (U, u, pu and the changed levels) as verified Parquet parts.",
    ds.DEPTH_REST: "REST depth snapshots the collector fetched to sync diff streams (connect, gap), as verified Parquet parts.",
    ds.TRADE: "Every trade as verified Parquet parts.",
    ds.AGG_TRADE: "Every aggregate trade as verified Parquet parts.",
    ds.BOOK_TICKER: "Best bid and ask at every change (bookTicker) as verified Parquet parts.",
    ds.MARK_PRICE: "Futures (USD-M, COIN-M) mark, index and estimated settle price, funding rate and next funding time "
                   "(markPrice, every 3 s or 1 s) as verified Parquet parts.",
    ds.LIQUIDATION: "Futures liquidation orders (forceOrder) as verified Parquet parts: a sample by design, at most "
                    "the latest liquidation a symbol a second.",
    ds.OPEN_INTEREST: "Open interest of every futures symbol recorded, polled over REST, as verified Parquet parts.",
}
DATASET_SPECS = [
    AssetSpec(name, description=DESCRIPTIONS[name], group_name="archive", kinds={"parquet", "sqlite"},
              partitions_def=hourly)
    for name in ds.DATASETS
]


def _metadata(origin: str, store, out: pipeline.DatasetExport, planned) -> dict:
    parts = out.parts
    fresh = list(out.exported.values())
    json_bytes = sum(e.json_bytes for e in fresh)
    fresh_bytes = sum(e.bytes for e in fresh)
    firsts = [p.first_recv_us for p in parts if p.first_recv_us is not None]
    lasts = [p.last_recv_us for p in parts if p.last_recv_us is not None]
    meta = {
        "data_source": source.describe(origin),
        "rows": sum(p.rows or 0 for p in parts),
        "bytes": sum(p.bytes or 0 for p in parts),
        "parts": [p.part for p in parts],
        "new_part": planned.part if planned else None,
        "archive": store.url,
        "object_keys": [p.object_key for p in parts],
        "sha256": {p.object_key: p.sha256 for p in parts},
        "uploads": {str(k): v for k, v in out.uploads.items()},
        "first_recv_time": _iso(min(firsts) if firsts else None),
        "last_recv_time": _iso(max(lasts) if lasts else None),
        # What the store honours and therefore how strong "exactly once" is here.
        "store": MetadataValue.json(store.describe()),
    }
    if json_bytes:  # levels datasets: the estimated Binance JSON of the same messages
        meta["compression_ratio_vs_json"] = MetadataValue.float(round(json_bytes / fresh_bytes, 2) if fresh_bytes else 0.0)
        meta["estimated_json_bytes"] = json_bytes
    return meta


@multi_asset(specs=DATASET_SPECS, name="stream_datasets", partitions_def=hourly, retry_policy=RETRY)
def stream_datasets(context: AssetExecutionContext, buffer: BufferResource, archive: ArchiveResource):
    """Plans the hour's next round of parts and exports, uploads and verifies every pending part of every dataset."""
    hour_us = hour_us_of(context)
    with fail_fast():
        origin = archive.settings().data_source
        store = archive.open_store()
        with closing(buffer.connect()) as conn:
            out = pipeline.export_and_upload(conn, store, buffer.staging_dir(), hour_us)
        if origin == source.SIMULATED and any(d.parts for d in out.datasets.values()):
            source.mark(store)
    context.log.info("hour %s: %s part(s) verified in %s", context.partition_key,
                     {d: len(x.parts) for d, x in out.datasets.items() if x.parts}, store.url)
    for name in ds.DATASETS:
        yield MaterializeResult(asset_key=running_key(context, AssetKey(name)), metadata=_metadata(origin, store, out.of(name), out.planned_part(name)))


# Partitioned checks are a Dagster "preview" (1.13), chosen knowingly: the warning would be noise.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", PreviewWarning)
    COVERAGE_GAPS = AssetCheckSpec(
        "coverage_gaps", asset="coverage", blocking=False, partitions_def=hourly,
        description="Warning only: no stream silent for more than 5 cadences (lists the intervals; an outage is "
                    "data, recorded in the coverage dataset; an hour the collector joined late shows its start "
                    "as a gap).",
    )


@asset(partitions_def=hourly, deps=[spec.key for spec in DATASET_SPECS], retry_policy=RETRY, group_name="archive",
       kinds={"parquet"}, check_specs=[COVERAGE_GAPS])
def coverage(context: AssetExecutionContext, buffer: BufferResource, archive: ArchiveResource) -> MaterializeResult:
    """Sessions, silences, sequence breaks and resyncs, trade-id gaps of the hour: one object per
    round of parts, so any stream's completeness at any time can be read (docs/datasets.md)."""
    hour_us = hour_us_of(context)
    with fail_fast():
        store = archive.open_store()
        with closing(buffer.connect()) as conn:
            out = pipeline.upload_coverage(conn, store, buffer.staging_dir(), hour_us)
    check = out.check
    return MaterializeResult(
        metadata={
            "rows": sum(p.rows or 0 for p in out.parts),
            "object_keys": [p.object_key for p in out.parts],
            "sha256": {p.object_key: p.sha256 for p in out.parts},
        },
        check_results=[AssetCheckResult(
            check_name=check.name, passed=check.passed, severity=AssetCheckSeverity.WARN,
            metadata={"count": check.count, "examples": check.examples, **check.detail},
        )],
    )


@asset(partitions_def=hourly, deps=[*(spec.key for spec in DATASET_SPECS), coverage], group_name="archive")
def archived_hour(context: AssetExecutionContext, buffer: BufferResource) -> MaterializeResult:
    """Marks the hour's verified, checked rounds of parts archived: from now on cleanup may free their rows."""
    hour_us = hour_us_of(context)
    with closing(buffer.connect()) as conn:
        done = pipeline.mark_archived(conn, buffer.staging_dir(), hour_us)
    return MaterializeResult(metadata={
        "data_source": source.describe(buffer.settings().data_source),
        "archived_parts": [f"{p.dataset}/{p.part}" for p in done],
        "rows": sum(p.rows or 0 for p in done if p.dataset == ds.DEPTH),
        "rows_by_dataset": {d: sum(p.rows or 0 for p in done if p.dataset == d) for d in ds.DATASETS},
    })
