"""``collector_fresh``: a check per collector (on the asset ``collector``: the recording process
and its buffer, which Dagster observes but does not materialize), run every 5 minutes by
the ``check_freshness`` job: it fails when the collector's newest acknowledged message, of any
stream dataset, is older than ``ORDERBOOK_FRESHNESS_SECONDS`` (120) or an hour of any dataset is
not archived
``ORDERBOOK_ARCHIVE_DEADLINE_MINUTES`` (30) after its end. In a fleet each location's check and
job carry its host id, so the UI shows one such check per collector."""

from contextlib import closing

from dagster import (AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, AssetSelection, AssetSpec,
                     DefaultScheduleStatus, MetadataValue, ScheduleDefinition, asset_check, define_asset_job,
                     in_process_executor)

from orderbook_core.buffer import now_us
from orderbook_core.errors import StorageError

from orderbook_assets.archive import freshness as fr
from orderbook_assets.defs.resources import BufferResource


#: The collector as Dagster sees it: an asset it does not materialize, that checks can watch.
collector = AssetSpec("collector", group_name="archive", kinds={"sqlite"},
                      description="The collector process and its SQLite buffer (ORDERBOOK_BUFFER); it records on "
                                  "its own, Dagster only archives and watches it.")


@asset_check(asset=collector.key, name="collector_fresh", blocking=False,
             description="The collector records (its newest acknowledged message, of any stream dataset, is recent) "
                         "and its hours are "
                         "archived in time (ORDERBOOK_FRESHNESS_SECONDS, ORDERBOOK_ARCHIVE_DEADLINE_MINUTES).")
def collector_fresh(context: AssetCheckExecutionContext, buffer: BufferResource) -> AssetCheckResult:
    settings = buffer.settings()
    max_age, deadline = settings.freshness_seconds, settings.archive_deadline_minutes
    try:
        with closing(buffer.connect()) as conn:
            f = fr.freshness(conn, now_us(), max_age, deadline)
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

check_freshness_schedule = ScheduleDefinition(
    name="check_freshness_schedule", job=check_freshness, cron_schedule="*/5 * * * *", execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
)
