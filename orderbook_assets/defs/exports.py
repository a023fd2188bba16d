"""``backtest_exports``: each UTC day of the archive as the files backtesters read, kept next to
the archive (core in ``analytics.backtest``; docs/backtesting.md).

Off unless ``ORDERBOOK_EXPORT_FORMATS`` names formats when the definitions load (``tardis``,
``hftbacktest``, or both, comma-separated). Each day's files go to
``<archive>/exports/<format>/<exchange>/<data type>/<date>_<SYMBOL>.<ext>`` (the command's own
layout under ``exports/<format>/``), published like every derived object (``archive.derived``:
deterministic bytes, written, then verified by their SHA-256), so a run that is repeated, or
that follows late parts, replaces each file with the day's current export. Served by the
location that serves the archive analysts read (a single host, or the fleet's merge location);
the schedule exports the day before at 07:00 UTC, after the last hour's archive run.
"""

import tempfile
from pathlib import Path

from dagster import (AssetExecutionContext, AssetKey, DefaultScheduleStatus, Definitions, Failure, MaterializeResult,
                     MetadataValue, asset, build_schedule_from_partitioned_job, define_asset_job, in_process_executor)

from orderbook_core.errors import OrderbookError

from orderbook_assets.analytics import backtest as bt
from orderbook_assets.archive import datasets as ds
from orderbook_assets.archive import derived
from orderbook_assets.archive.location import Location
from orderbook_assets.defs.partitions import daily

ASSET = "backtest_exports"
JOB = "export_day"
PREFIX = "exports"
SCHEDULE_HOUR = 7
#: The datasets a day's export reads.
INPUTS = (ds.DEPTH_UPDATE, ds.DEPTH_REST, ds.DEPTH, ds.TRADE, ds.BOOK_TICKER, ds.BOOK_SNAPSHOT)


def build_exports(deps: list[AssetKey], formats: tuple[bt.Format, ...]):
    """The daily asset, its job and schedule."""

    @asset(name=ASSET, partitions_def=daily, deps=deps, group_name="exports", required_resource_keys={"archive"},
           kinds={"duckdb"})
    def backtest_exports(context: AssetExecutionContext) -> MaterializeResult:
        """One UTC day of the archive in the backtesters' formats (Tardis CSV, hftbacktest arrays),
        stored under ``exports/`` next to the archive and verified like every derived object."""
        day = context.partition_key
        archive = context.resources.archive
        url = archive.fleet_url()
        store = archive.open_store(fleet=True)
        published: dict[str, int] = {}
        notes: list[str] = []
        try:
            for fmt in formats:
                with tempfile.TemporaryDirectory(prefix="exports-") as tmp:
                    try:
                        summary = bt.export(Location.parse(url), fmt, day, tmp)
                    except bt.ExportError as exc:  # nothing archived that day: nothing to export
                        notes.append(f"{fmt.value}: {exc}")
                        continue
                    for f in summary.files:
                        key = f"{PREFIX}/{fmt.value}/{Path(f.path).relative_to(tmp).as_posix()}"
                        derived.publish_file(store, key, Path(f.path))
                        published[key] = f.rows
                    notes += [f"{fmt.value}: {line}" for line in summary.lines() if not line.startswith(tmp)]
        except OrderbookError as exc:
            raise Failure(description=str(exc), allow_retries=False) from exc
        for line in notes:
            context.log.info(line)
        return MaterializeResult(metadata={
            "files": len(published),
            "rows": sum(published.values()),
            "objects": MetadataValue.json(published),
            "notes": MetadataValue.json(notes),
            "formats": ", ".join(f.value for f in formats),
        })

    job = define_asset_job(JOB, selection=[backtest_exports.key], executor_def=in_process_executor,
                           description="Write one UTC day of the archive in the backtesters' formats.")
    schedule = build_schedule_from_partitioned_job(job, hour_of_day=SCHEDULE_HOUR, minute_of_hour=0,
                                                   default_status=DefaultScheduleStatus.RUNNING)
    return backtest_exports, job, schedule


def export_definitions(resources: dict, fleet: bool, formats: tuple[bt.Format, ...]) -> Definitions | None:
    """The daily export's definitions, or None when ``ORDERBOOK_EXPORT_FORMATS`` names none (``formats``)."""
    if not formats:
        return None
    deps = [AssetKey(["fleet", name]) if fleet else AssetKey(name) for name in INPUTS]
    a, job, schedule = build_exports(deps, formats)
    return Definitions(assets=[a], jobs=[job], schedules=[schedule], resources=resources)
