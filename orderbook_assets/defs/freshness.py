"""``collector_fresh``: a check per collector (on the asset ``collector``: the recording process
and its buffer, which Dagster observes but does not materialize). It fails when the collector's
newest acknowledged message, of any stream dataset, is older than ``ORDERBOOK_FRESHNESS_SECONDS``
(120) or an hour of any dataset is not archived ``ORDERBOOK_ARCHIVE_DEADLINE_MINUTES`` (30)
after its end. In a fleet each location's check and job carry its host id, so the UI shows one
such check per collector.

``check_freshness_sensor`` looks at the buffer every 5 minutes and runs the ``check_freshness``
job only when the verdict changed (recording or stale, which hours are overdue: see
:func:`orderbook_assets.archive.freshness.verdict`), so a healthy recorder adds no run, and no
run's log lines, every 5 minutes; its ticks in the UI say "unchanged" in between."""

from contextlib import closing

from dagster import (AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, AssetSelection, AssetSpec,
                     DefaultSensorStatus, MetadataValue, RunRequest, SensorEvaluationContext, SkipReason, asset_check,
                     define_asset_job, in_process_executor, sensor)

from orderbook_core.buffer import now_us
from orderbook_core.errors import StorageError

from orderbook_assets.archive import freshness as fr
from orderbook_assets.defs.resources import BufferResource


def _look(buffer: BufferResource) -> fr.Freshness:
    settings = buffer.settings()
    max_age, deadline = settings.freshness_seconds, settings.archive_deadline_minutes
    with closing(buffer.connect()) as conn:
        return fr.freshness(conn, now_us(), max_age, deadline)


#: The collector as Dagster sees it: an asset it does not materialize, that checks can watch.
collector = AssetSpec("collector", group_name="archive", kinds={"sqlite"},
                      description="The collector process and its SQLite buffer (ORDERBOOK_BUFFER); it records on "
                                  "its own, Dagster only archives and watches it.")


@asset_check(asset=collector.key, name="collector_fresh", blocking=False,
             description="The collector records (its newest acknowledged message, of any stream dataset, is recent) "
                         "and its hours are "
                         "archived in time (ORDERBOOK_FRESHNESS_SECONDS, ORDERBOOK_ARCHIVE_DEADLINE_MINUTES).")
def collector_fresh(context: AssetCheckExecutionContext, buffer: BufferResource) -> AssetCheckResult:
    try:
        f = _look(buffer)
    except StorageError as exc:
        return AssetCheckResult(passed=False, severity=AssetCheckSeverity.ERROR,
                                metadata={"problem": MetadataValue.text(str(exc))})
    return AssetCheckResult(
        passed=f.passed, severity=AssetCheckSeverity.ERROR,
        metadata={
            "problems": MetadataValue.text("; ".join(f.problems()) or "none"),
            "newest_message_age_seconds": MetadataValue.float(-1.0 if f.age_s is None else round(f.age_s, 3)),
            "overdue_hours": [str(h) for h in f.overdue_hours],
            "buffer": MetadataValue.path(str(buffer.resolved_path())),
        },
    )


check_freshness = define_asset_job(
    "check_freshness", selection=AssetSelection.checks(collector_fresh), executor_def=in_process_executor,
    description="Is the collector recording, and is its buffer archived in time?",
)

#: How often the sensor looks at the buffer (the check's latency for a collector that stops).
LOOK_EVERY_S = 300


@sensor(job=check_freshness, minimum_interval_seconds=LOOK_EVERY_S, default_status=DefaultSensorStatus.RUNNING)
def check_freshness_sensor(context: SensorEvaluationContext, buffer: BufferResource):
    """Runs ``check_freshness`` when the collector's verdict changed since the last run (the cursor)."""
    try:
        now = fr.verdict(_look(buffer))
    except StorageError as exc:
        now = f"unreadable: {exc}"
    if now == context.cursor:
        return SkipReason(f"unchanged: {now}")
    context.update_cursor(now)
    return RunRequest(tags={"orderbook/freshness": now[:200]})
