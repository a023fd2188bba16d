"""The fleet's merge: one hourly multi-asset writing every merged dataset, over every host's archived parts.

``fleet_datasets`` materializes ``fleet/<dataset>`` for every stream dataset (``DATASETS``) and
``fleet/coverage``; it depends on each host's ``<host>/archived_hour`` (other code locations'
assets, one instance). Its run reads, from the instance, the parts each host's ``<host>/<dataset>``
and ``<host>/coverage`` verified in runs that also materialized ``<host>/archived_hour`` (their
object keys and SHA-256), downloads and verifies them, and writes the merged hour
(:mod:`orderbook_assets.archive.merge`). The sensor ``fleet_merge_sensor`` requests the merge of
an hour once every host has archived it, and again whenever a host archives a further (late)
part of it; an hour a host never archives is merged only when the operator launches it (the UI
shows the host's missing partition).

``fleet/book_snapshot`` builds each hour's books from the merged ``depth_update``,
``depth_rest_snapshot`` and ``depth_snapshot`` (every collector's copy, each event once) with the
single host's builder and proof (:mod:`.defs.books`), at the top-level ``<archive>/book_snapshot``
analysts read. It is part of ``merge_fleet_hour``, so every merge, a late one included, rebuilds
the hour's books (and the following hours whose start state changed), as a single host's late
parts do.
"""


from datetime import datetime, timedelta, timezone

from dagster import (AssetExecutionContext, AssetsDefinition, AssetKey, AssetRecordsFilter, AssetSpec, DefaultSensorStatus, Definitions,
                     MaterializeResult, MetadataValue, RunRequest, SensorEvaluationContext, SkipReason,
                     define_asset_job, in_process_executor, multi_asset, sensor)

from orderbook_assets.archive import merge
from orderbook_assets.archive.datasets import BOOK_SNAPSHOT, COVERAGE, DEPTH, DEPTH_REST, DEPTH_UPDATE
from orderbook_assets.defs.assets import DESCRIPTIONS, RETRY, fail_fast
from orderbook_assets.defs.books import book_snapshot_asset
from orderbook_assets.defs.partitions import hour_us_of, hourly

FLEET = "fleet"
MERGE_JOB = "merge_fleet_hour"
#: How far back the sensor looks for hours to (re-)merge.
LOOKBACK_HOURS = 48
#: Enough for every materialization of one hour of one host (one per run that exported a part).
MAX_EVENTS = 1000
MERGED_DESCRIPTIONS = {
    **{name: f"The fleet's merge of every collector's {name}: {text} Each message once (by the dataset's "
                 "dedup key), its earliest copy kept with its `collector` (docs/fleet.md)."
       for name, text in DESCRIPTIONS.items()},
    COVERAGE: "The fleet's coverage: a gap only where every collector was silent, each collector's sessions and "
              "continuity records with its `collector`, the merged streams' own breaks and trade-id gaps (docs/fleet.md).",
}


FLEET_BOOKS_DESCRIPTION = (
    "The fleet's rebuilt books: book_snapshot (the single host's columns, builder and proof) built from the merged "
    "depth_update, depth_rest_snapshot and depth_snapshot, so a stream is known wherever any collector's copy "
    "continues it; written at <archive>/book_snapshot/ (docs/fleet.md).")


def fleet_books() -> AssetsDefinition:
    """``fleet/book_snapshot``: the merged hour's books, after the merge that wrote its inputs."""
    return book_snapshot_asset(
        AssetKey([FLEET, BOOK_SNAPSHOT]), [AssetKey([FLEET, name]) for name in (DEPTH_UPDATE, DEPTH_REST, DEPTH)],
        fleet=True, group_name=FLEET, description=FLEET_BOOKS_DESCRIPTION)


def host_parts(instance, host: str, partition: str) -> list[merge.PartRef]:
    """The host's verified parts of the hour, of every merged dataset, that passed its checks:
    those listed by a ``<host>/<dataset>`` materialization whose run also materialized
    ``<host>/archived_hour``."""
    def records(name: str):
        return instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey([host, name]), asset_partitions=[partition]), limit=MAX_EVENTS
        ).records

    archived_runs = {r.run_id for r in records("archived_hour")}
    refs: dict[str, merge.PartRef] = {}
    prefix = merge.host_prefix(host)
    for name in merge.MERGED:
        for r in records(name):
            if r.run_id not in archived_runs:
                continue
            sha = r.asset_materialization.metadata.get("sha256")
            for key, digest in (sha.value if sha is not None else {}).items():
                refs[key] = merge.PartRef(host, f"{prefix}/{key}", digest, name)
    return [refs[k] for k in sorted(refs)]


def fleet_definitions(hosts: list[str], resources: dict) -> Definitions:
    deps = [AssetKey([h, "archived_hour"]) for h in hosts]
    specs = [AssetSpec(AssetKey([FLEET, name]), description=MERGED_DESCRIPTIONS[name], deps=deps, group_name=FLEET,
                       kinds={"parquet"}, partitions_def=hourly) for name in merge.MERGED]

    @multi_asset(specs=specs, name="fleet_datasets", partitions_def=hourly, retry_policy=RETRY,
                 required_resource_keys={"archive", "buffer"})
    def fleet_datasets(context: AssetExecutionContext):
        """The hour of every dataset from every collector of the fleet, each message once, its earliest
        copy kept with its ``collector``; coverage with a gap only where every collector was silent."""
        hour_us = hour_us_of(context)
        archive = context.resources.archive
        refs = [ref for h in hosts for ref in host_parts(context.instance, h, context.partition_key)]
        with fail_fast():
            store = archive.open_store(fleet=True)
            out = merge.merge_hour(store, context.resources.buffer.staging_dir(), hour_us, refs)
        context.log.info("hour %s: %s row(s) merged from %d part(s) of %s", context.partition_key,
                         {n: d.rows for n, d in out.datasets.items()}, len(refs),
                         ", ".join(sorted({r.collector for r in refs})) or "no collector")
        for name in merge.MERGED:
            d = out.datasets[name]
            meta = {
                "rows": d.rows,
                "input_rows": MetadataValue.json(d.input_rows),
                "kept_rows": MetadataValue.json(d.kept),
                "parts": [r.object_key for r in refs if r.dataset == name],
                "sha256": {d.object_key: d.sha256},
                "archive": store.url,
            }
            if name == COVERAGE:
                meta["gaps"] = MetadataValue.json([g._asdict() for g in out.gaps])
                meta["merged_continuity"] = len(out.continuity)
            yield MaterializeResult(asset_key=AssetKey([FLEET, name]), metadata=meta)

    books = fleet_books()
    job = define_asset_job(MERGE_JOB, selection=[*(s.key for s in specs), books.key], executor_def=in_process_executor,
                           description="Merge every host's archived parts of one hour into the datasets analysts read, "
                                       "then rebuild the hour's books from the merged diff depth (fleet/book_snapshot).")

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

    return Definitions(assets=[fleet_datasets, books], jobs=[job], sensors=[fleet_merge_sensor], resources=resources)
