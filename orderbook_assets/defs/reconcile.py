"""``trade_reconciliation``: each UTC day's archived trades against the exchange's own daily files
(core in ``analytics.reconcile``), with the blocking check ``no_silent_loss``.

Off unless ``ORDERBOOK_OFFICIAL_URL`` is set when the definitions load (a folder of the exchange's
daily zips with their ``.CHECKSUM`` files, or the site's base URL such as
``https://data.binance.vision``); it is read again when a run starts. It is served by the location
that serves the archive analysts read: a single host, or the fleet's merge location (its
``fleet/trade``, ``fleet/agg_trade`` and ``fleet/coverage`` are the inputs); a fleet host's own
location does not reconcile its folder. Daily partitions in UTC: a day is offered once it has ended,
and the schedule reconciles the day before at 06:00 UTC (a day whose files the exchange has not
published yet fails with that sentence; launch it again later).
"""

import warnings
from datetime import date

from dagster import (AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetExecutionContext, AssetKey,
                     DefaultScheduleStatus, Definitions, Failure, MaterializeResult,
                     MetadataValue, PreviewWarning, asset, build_schedule_from_partitioned_job, define_asset_job,
                     in_process_executor)

from orderbook_core.errors import ConfigError, OrderbookError

from orderbook_assets import settings
from orderbook_assets.analytics import reconcile as rc
from orderbook_assets.archive import datasets as ds
from orderbook_assets.archive.location import Location
from orderbook_assets.defs.partitions import daily

ASSET = "trade_reconciliation"
JOB = "reconcile_day"
CHECK = "no_silent_loss"
SCHEDULE_HOUR = 6



def build_reconciliation(deps: list[AssetKey]):
    """The daily asset, its blocking check, its job and schedule."""
    with warnings.catch_warnings():  # partitioned checks are a Dagster preview, chosen knowingly (checks.py)
        warnings.simplefilter("ignore", PreviewWarning)
        spec = AssetCheckSpec(
            CHECK, asset=ASSET, blocking=True, partitions_def=daily,
            description="No trade or aggTrade the exchange's daily file holds is missing from the archive without a "
                        "record (trade_gap, silent, an outage, or outside the recorded span).",
        )

    @asset(name=ASSET, partitions_def=daily, deps=deps, group_name="reconcile", check_specs=[spec],
           required_resource_keys={"archive"}, kinds={"duckdb"})
    def trade_reconciliation(context: AssetExecutionContext) -> MaterializeResult:
        """The day's archived trades and aggTrades compared by id with the exchange's daily files:
        ids missing (lost silently, or why not), ids only we have, values that differ (docs/analysts.md)."""
        day = date.fromisoformat(context.partition_key)
        archive = context.resources.archive
        try:
            official = archive.settings().official_url  # read again when the run starts
            if official is None:
                raise ConfigError(settings.OFFICIAL_URL,
                                  "is not set; set it to the exchange's site or a folder of its daily files.")
            url = archive.fleet_url()
            s3 = archive.s3.settings() if Location.parse(url).is_s3 else None
            report = rc.reconcile(day, official, url, s3=s3)
        except OrderbookError as exc:
            raise Failure(description=str(exc), allow_retries=False) from exc
        for s in report.streams:
            context.log.info(s.summary())
        streams = {f"{s.market}/{s.symbol}/{s.dataset}": s.summary() for s in report.streams}
        lost = {f"{s.market}/{s.symbol}/{s.dataset}": s.lost_silently_ranges for s in report.streams if s.lost_silently}
        return MaterializeResult(
            metadata={
                "lost_silently": report.lost_silently,
                "streams_compared": len(report.compared),
                "streams_unproven": [f"{s.market}/{s.symbol}/{s.dataset}" for s in report.streams
                                     if s.status is rc.Status.UNPROVEN],
                "summary": MetadataValue.json(streams),
                "report": MetadataValue.json(report.to_dict()),
                "official": official,
            },
            check_results=[AssetCheckResult(
                check_name=CHECK, passed=report.lost_silently == 0, severity=AssetCheckSeverity.ERROR,
                metadata={"lost_silently": report.lost_silently, "lost_id_ranges": MetadataValue.json(lost)},
            )],
        )

    job = define_asset_job(JOB, selection=[trade_reconciliation.key],
                           executor_def=in_process_executor,
                           description="Compare one UTC day of archived trades with the exchange's daily files.")
    schedule = build_schedule_from_partitioned_job(job, hour_of_day=SCHEDULE_HOUR, minute_of_hour=0,
                                                   default_status=DefaultScheduleStatus.RUNNING)
    return trade_reconciliation, job, schedule


def reconcile_definitions(resources: dict, fleet: bool, official_url: str | None) -> Definitions | None:
    """The reconciliation's definitions, or None when ``ORDERBOOK_OFFICIAL_URL`` is not set (``official_url``)."""
    if official_url is None:
        return None
    inputs = (ds.TRADE, ds.AGG_TRADE, ds.COVERAGE)
    deps = [AssetKey(["fleet", name]) if fleet else AssetKey(name) for name in inputs]
    a, job, schedule = build_reconciliation(deps)
    return Definitions(assets=[a], jobs=[job], schedules=[schedule], resources=resources)
