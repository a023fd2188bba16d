"""``defs``: everything Dagster loads (``dagster ... -m orderbook_assets.definitions``).

``ORDERBOOK_HOST_ID`` set: the host's assets and jobs carry its id (:mod:`.defs.hosts`), so each
collector of a fleet is a code location of its own. ``ORDERBOOK_FLEET_HOSTS`` set: the location
also serves the fleet's merge of those hosts (:mod:`.defs.fleet`); with no host id it serves only
that (a fleet location without a buffer). Neither set: the single-host definitions.
``ORDERBOOK_OFFICIAL_URL`` set: that location also reconciles each day's trades with the exchange's
daily files (:mod:`.defs.reconcile`); ``ORDERBOOK_EXPORT_FORMATS`` set: it also keeps each day's
backtest exports next to the archive (:mod:`.defs.exports`). Those four are read when the
definitions load, from one :class:`orderbook_assets.settings.ArchiveSettings`; the resources read
the rest when a run starts.
"""


from dagster import Definitions

from orderbook_assets import settings
from orderbook_assets.defs.assets import archived_hour, coverage, stream_datasets
from orderbook_assets.defs.bars import top_of_book_1s
from orderbook_assets.defs.books import book_snapshot
from orderbook_assets.defs.checks import CHECKS
from orderbook_assets.defs.exports import export_definitions
from orderbook_assets.defs.fleet import fleet_definitions
from orderbook_assets.defs.freshness import check_freshness, check_freshness_sensor, collector, collector_fresh
from orderbook_assets.defs.hosts import hosted
from orderbook_assets.defs.jobs import archive_hour, cleanup_buffer
from orderbook_assets.defs.reconcile import reconcile_definitions
from orderbook_assets.defs.resources import ArchiveResource, ArchiveS3Resource, BufferResource
from orderbook_assets.defs.schedules import archive_hour_schedule, cleanup_buffer_schedule
from orderbook_assets.defs.sensors import late_rows_sensor


def resources() -> dict:
    """Resources with nothing set: they load the settings when a run starts."""
    return {"buffer": BufferResource(), "archive": ArchiveResource(s3=ArchiveS3Resource())}


def host_definitions(res: dict) -> Definitions:
    """One collector's archive (the single-host definitions)."""
    return Definitions(
        assets=[stream_datasets, coverage, archived_hour, top_of_book_1s, book_snapshot, collector],
        asset_checks=[*CHECKS.values(), collector_fresh],
        jobs=[archive_hour, cleanup_buffer, check_freshness],
        schedules=[archive_hour_schedule, cleanup_buffer_schedule],
        sensors=[late_rows_sensor, check_freshness_sensor],
        resources=res,
    )


def build(environ=None) -> Definitions:
    """The definitions ``environ`` (default: this process's environment) asks for."""
    config = settings.load(environ)
    host, hosts = config.host_id, list(config.fleet_hosts)
    res = resources()
    parts = [] if hosts and not host else [hosted(host_definitions(res), host)]
    if hosts:
        parts.append(fleet_definitions(hosts, res))
    if not host or hosts:  # the location serving the archive analysts read (a fleet host's own folder: not)
        for daily in (reconcile_definitions(res, fleet=bool(hosts), official_url=config.official_url),
                      export_definitions(res, fleet=bool(hosts), formats=config.export_formats)):
            if daily is not None:
                parts.append(daily)
    return parts[0] if len(parts) == 1 else Definitions.merge(*parts)


defs = build()
