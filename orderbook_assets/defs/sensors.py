"""The late-rows sensor: rows that arrived for an hour after it was archived become a further part."""


from datetime import datetime, timezone

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SkipReason, sensor

from orderbook_core.buffer import now_us
from orderbook_core.errors import StorageError

from orderbook_core.buffer import ledger
from orderbook_assets.defs.jobs import archive_hour
from orderbook_assets.defs.partitions import hourly
from orderbook_assets.defs.resources import BufferResource

#: Leave rows of an hour that ended less than this long ago to the schedule.
GRACE_US = 10 * 60 * 1_000_000


@sensor(job=archive_hour, minimum_interval_seconds=60, default_status=DefaultSensorStatus.RUNNING)
def late_rows_sensor(context: SensorEvaluationContext, buffer: BufferResource):
    """Requests ``archive_hour`` for every ended hour whose buffer rows, in any dataset, go beyond its last part.

    The run key holds the hour and the high-water mark of each late dataset (its buffer max
    id), so each new batch of late rows gets exactly one run.
    """
    try:
        conn = buffer.connect()
    except StorageError as exc:
        return SkipReason(str(exc))
    try:
        late = ledger.late_hours(conn, now_us() - GRACE_US)
    finally:
        conn.close()
    if not late:
        return SkipReason("no late rows")
    requests = []
    for hour_us, mark in late:
        key = hourly.get_partition_key_for_timestamp(datetime.fromtimestamp(hour_us / 1e6, tz=timezone.utc).timestamp())
        requests.append(RunRequest(run_key=f"{key}@{mark}", partition_key=key, tags={"orderbook/high_water": mark}))
    return requests
