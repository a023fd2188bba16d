"""Schedules: each hour archived a few minutes after it ends; cleanup every hour."""


from datetime import timedelta

from dagster import DefaultScheduleStatus, RunRequest, ScheduleEvaluationContext, schedule

from orderbook_assets.defs.jobs import archive_hour, cleanup_buffer
from orderbook_assets.defs.partitions import hourly

ARCHIVE_MINUTE = 5


@schedule(job=archive_hour, cron_schedule=f"{ARCHIVE_MINUTE} * * * *", execution_timezone="UTC",
          default_status=DefaultScheduleStatus.RUNNING)
def archive_hour_schedule(context: ScheduleEvaluationContext):
    """At HH:05 archive the hour that ended at HH:00."""
    previous = context.scheduled_execution_time - timedelta(hours=1)
    key = hourly.get_partition_key_for_timestamp(previous.timestamp())
    return RunRequest(run_key=key, partition_key=key)


@schedule(job=cleanup_buffer, cron_schedule="20 * * * *", execution_timezone="UTC",
          default_status=DefaultScheduleStatus.RUNNING)
def cleanup_buffer_schedule(context: ScheduleEvaluationContext):
    return RunRequest(run_key=context.scheduled_execution_time.isoformat())
