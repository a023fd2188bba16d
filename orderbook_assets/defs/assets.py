"""The hourly archive as three assets: ``depth_snapshot`` → ``coverage`` → ``archived_hour``.

``depth_snapshot`` plans, exports, uploads and verifies the hour's parts; the blocking
checks in :mod:`.checks` run on it; ``coverage`` stores the coverage objects; and
``archived_hour`` marks the parts archived, which is what lets cleanup free their rows.
A failing ERROR check skips both downstream assets, so nothing unchecked is ever marked.
"""


import warnings
from contextlib import closing, contextmanager
from datetime import datetime, timezone

from dagster import PreviewWarning
from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetExecutionContext, Backoff, Failure, Jitter, MaterializeResult, MetadataValue, RetryPolicy, asset

from orderbook_collector.errors import ConfigError, IntegrityError

from orderbook_assets.archive import pipeline, source
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


@asset(partitions_def=hourly, retry_policy=RETRY, group_name="archive", kinds={"parquet", "sqlite"})
def depth_snapshot(context: AssetExecutionContext, buffer: BufferResource, archive: ArchiveResource) -> MaterializeResult:
    """The hour's partial-depth books as verified Parquet parts (one part per export of new rows)."""
    hour_us = hour_us_of(context)
    with fail_fast():
        origin = source.data_source()
        store = archive.open_store()
        with closing(buffer.connect()) as conn:
            out = pipeline.export_and_upload(conn, store, buffer.staging_dir(), hour_us)
        if origin == source.SIMULATED and out.parts:
            source.mark(store)
    parts = out.parts
    fresh = list(out.exported.values())
    json_bytes = sum(e.json_bytes for e in fresh)
    fresh_bytes = sum(e.bytes for e in fresh)
    firsts = [p.first_recv_us for p in parts if p.first_recv_us is not None]
    lasts = [p.last_recv_us for p in parts if p.last_recv_us is not None]
    context.log.info("hour %s: %d part(s) verified in %s", context.partition_key, len(parts), store.url)
    return MaterializeResult(
        metadata={
            "data_source": source.describe(origin),
            "rows": sum(p.rows or 0 for p in parts),
            "bytes": sum(p.bytes or 0 for p in parts),
            "parts": [p.part for p in parts],
            "new_part": out.planned.part if out.planned else None,
            "archive": store.url,
            "object_keys": [p.object_key for p in parts],
            "sha256": {p.object_key: p.sha256 for p in parts},
            "uploads": {str(k): v for k, v in out.uploads.items()},
            "first_recv_time": _iso(min(firsts) if firsts else None),
            "last_recv_time": _iso(max(lasts) if lasts else None),
            "compression_ratio_vs_json": MetadataValue.float(round(json_bytes / fresh_bytes, 2) if fresh_bytes else 0.0),
            "estimated_json_bytes": json_bytes,
            # What the store honours and therefore how strong "exactly once" is here.
            "store": MetadataValue.json(store.describe()),
        }
    )


# Partitioned checks are a Dagster "preview" (1.13), chosen knowingly: the warning would be noise.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", PreviewWarning)
    COVERAGE_GAPS = AssetCheckSpec(
        "coverage_gaps", asset="coverage", blocking=False, partitions_def=hourly,
        description="Warning only: no stream silent for more than 5 cadences (lists the intervals; an outage is "
                    "data, recorded in the coverage dataset; an hour the collector joined late shows its start "
                    "as a gap).",
    )


@asset(partitions_def=hourly, deps=[depth_snapshot], retry_policy=RETRY, group_name="archive", kinds={"parquet"},
       check_specs=[COVERAGE_GAPS])
def coverage(context: AssetExecutionContext, buffer: BufferResource, archive: ArchiveResource) -> MaterializeResult:
    """Sessions and gaps of the hour, one object beside each depth part (docs/datasets.md)."""
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


@asset(partitions_def=hourly, deps=[depth_snapshot, coverage], group_name="archive")
def archived_hour(context: AssetExecutionContext, buffer: BufferResource) -> MaterializeResult:
    """Marks the hour's verified, checked parts archived: from now on cleanup may free their rows."""
    hour_us = hour_us_of(context)
    with closing(buffer.connect()) as conn:
        done = pipeline.mark_archived(conn, buffer.staging_dir(), hour_us)
    return MaterializeResult(metadata={
        "data_source": source.describe(source.data_source()),
        "archived_parts": [f"{p.dataset}/{p.part}" for p in done],
        "rows": sum(p.rows or 0 for p in done if p.dataset == "depth_snapshot"),
    })
