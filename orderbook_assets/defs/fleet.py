"""The fleet's merge: one hourly asset per merged dataset, over every host's archived parts.

``fleet/depth_snapshot`` depends on each host's ``<host>/archived_hour`` (other code locations'
assets, one instance): its run reads, from the instance, the parts each host's
``<host>/depth_snapshot`` verified in runs whose checks passed (their object keys and SHA-256),
downloads and verifies them, and writes the merged hour (:mod:`orderbook_assets.archive.merge`).
The sensor ``fleet_merge_sensor`` requests the merge of an hour once every host has archived it,
and again whenever a host archives a further (late) part of it; an hour a host never archives
is merged only when the operator launches it (the UI shows the host's missing partition).
"""


from datetime import datetime, timedelta, timezone

from dagster import (AssetExecutionContext, AssetKey, AssetRecordsFilter, DefaultSensorStatus, Definitions,
                     MaterializeResult, MetadataValue, RunRequest, SensorEvaluationContext, SkipReason, asset,
                     define_asset_job, in_process_executor, sensor)

from orderbook_assets.archive import merge
from orderbook_assets.archive.datasets import DEPTH
from orderbook_assets.defs.assets import RETRY, fail_fast
from orderbook_assets.defs.partitions import hour_us_of, hourly

FLEET = "fleet"
MERGE_JOB = "merge_fleet_hour"
#: How far back the sensor looks for hours to (re-)merge.
LOOKBACK_HOURS = 48
#: Enough for every materialization of one hour of one host (one per run that exported a part).
MAX_EVENTS = 1000


def host_parts(instance, host: str, partition: str) -> list[merge.PartRef]:
    """The host's verified parts of the hour that passed its checks: those listed by a
    ``<host>/depth_snapshot`` materialization whose run also materialized ``<host>/archived_hour``."""
    def records(name: str):
        return instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey([host, name]), asset_partitions=[partition]), limit=MAX_EVENTS
        ).records

    archived_runs = {r.run_id for r in records("archived_hour")}
    refs: dict[str, merge.PartRef] = {}
    prefix = merge.host_prefix(host)
    for r in records(DEPTH):
        if r.run_id not in archived_runs:
            continue
        sha = r.asset_materialization.metadata.get("sha256")
        for key, digest in (sha.value if sha is not None else {}).items():
            refs[key] = merge.PartRef(host, f"{prefix}/{key}", digest)
    return [refs[k] for k in sorted(refs)]


def fleet_definitions(hosts: list[str], resources: dict) -> Definitions:
    deps = [AssetKey([h, "archived_hour"]) for h in hosts]

    @asset(key=AssetKey([FLEET, DEPTH]), partitions_def=hourly, deps=deps, retry_policy=RETRY, group_name=FLEET,
           kinds={"parquet"}, required_resource_keys={"archive", "buffer"})
    def fleet_depth_snapshot(context: AssetExecutionContext) -> MaterializeResult:
        """The hour's partial-depth books from every collector of the fleet, each message once
        (by stream and last_update_id), its earliest copy kept with its ``collector``; coverage
        with a gap only where every collector was silent (docs/fleet.md)."""
        hour_us = hour_us_of(context)
        archive = context.resources.archive
        refs = [ref for h in hosts for ref in host_parts(context.instance, h, context.partition_key)]
        with fail_fast():
            store = archive.open_store(fleet=True)
            out = merge.merge_hour(store, context.resources.buffer.staging_dir(), hour_us, refs)
        context.log.info("hour %s: %d rows merged from %d part(s) of %s", context.partition_key, out.rows,
                         len(refs), ", ".join(sorted(out.input_rows)) or "no collector")
        return MaterializeResult(metadata={
            "rows": out.rows,
            "input_rows": MetadataValue.json(out.input_rows),
            "kept_rows": MetadataValue.json(out.kept),
            "parts": [r.object_key for r in refs],
            "gaps": MetadataValue.json([g._asdict() for g in out.gaps]),
            "sha256": out.objects,
            "archive": store.url,
        })

    job = define_asset_job(MERGE_JOB, selection=[fleet_depth_snapshot.key], executor_def=in_process_executor,
                           description="Merge every host's archived parts of one hour into the dataset analysts read.")

    @sensor(job=job, minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING)
    def fleet_merge_sensor(context: SensorEvaluationContext):
        """Merges an hour once every host archived it, and again after any host archives more of it.

        The run key holds the hour and the newest ``archived_hour`` event of each host, so
        each new host part gets exactly one merge run."""
        now = datetime.now(timezone.utc)
        requests = []
        for back in range(LOOKBACK_HOURS):
            partition = hourly.get_partition_key_for_timestamp((now - timedelta(hours=back)).timestamp())
            newest = []
            for h in hosts:
                recs = context.instance.fetch_materializations(
                    AssetRecordsFilter(asset_key=AssetKey([h, "archived_hour"]), asset_partitions=[partition]), limit=1
                ).records
                newest.append(recs[0].storage_id if recs else None)
            if None in newest:
                continue
            requests.append(RunRequest(run_key=f"{partition}@{'-'.join(map(str, newest))}", partition_key=partition))
        return requests or SkipReason("no hour archived by every host since its last merge")

    return Definitions(assets=[fleet_depth_snapshot], jobs=[job], sensors=[fleet_merge_sensor], resources=resources)
