"""``defs``: everything Dagster loads (``dagster ... -m orderbook_assets.definitions``)."""


from dagster import Definitions

from orderbook_assets.defs.assets import archived_hour, coverage, stream_datasets
from orderbook_assets.defs.bars import top_of_book_1s
from orderbook_assets.defs.books import book_snapshot
from orderbook_assets.defs.checks import CHECKS
from orderbook_assets.defs.jobs import archive_hour, cleanup_buffer
from orderbook_assets.defs.resources import ArchiveResource, ArchiveS3Resource, BufferResource
from orderbook_assets.defs.schedules import archive_hour_schedule, cleanup_buffer_schedule
from orderbook_assets.defs.sensors import late_rows_sensor


def resources() -> dict:
    """Resources with nothing set: all configuration comes from the environment at run time."""
    return {"buffer": BufferResource(), "archive": ArchiveResource(s3=ArchiveS3Resource())}


defs = Definitions(
    assets=[stream_datasets, coverage, archived_hour, top_of_book_1s, book_snapshot],
    asset_checks=list(CHECKS.values()),
    jobs=[archive_hour, cleanup_buffer],
    schedules=[archive_hour_schedule, cleanup_buffer_schedule],
    sensors=[late_rows_sensor],
    resources=resources(),
)
