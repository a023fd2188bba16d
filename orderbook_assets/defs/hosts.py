"""One code location per collector: the host id on every asset key and job name, in one place.

``ORDERBOOK_HOST_ID`` (read by ``orderbook_assets.settings``) names the collector (its buffer) a
code location serves. When it is set, :func:`hosted` puts it as a key prefix on every asset and
asset check (``tokyo_1/depth_snapshot``) and as a suffix on every job (``archive_hour_tokyo_1``),
and retargets the schedules and sensors to those jobs, so several locations in one Dagster
instance never collide; new assets get it too.
Unset, the definitions are exactly the single-host ones (``depth_snapshot``, ``archive_hour``,
``cleanup_buffer``).

One location serves one buffer: a machine with several collector processes runs one code server
per collector, each with its own ``ORDERBOOK_HOST_ID`` and ``ORDERBOOK_BUFFER`` (docs/fleet.md).
"""

from __future__ import annotations

import warnings

from dagster import AssetCheckKey, AssetKey, AssetSpec, BetaWarning, AssetSelection, Definitions, JobDefinition, define_asset_job
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

# Copied definitions pass Dagster's own beta parameters (owners, execution_type) along, also
# when Dagster builds the repository later: its warnings about them say nothing about ours.
warnings.filterwarnings("ignore", message=r"Parameter `(execution_type|owners)` of", category=BetaWarning)


def job_name(name: str, host: str | None) -> str:
    return f"{name}_{host}" if host else name


def hosted_key(key: AssetKey, host: str | None) -> AssetKey:
    return AssetKey([host, *key.path]) if host else key


def running_key(context, key: AssetKey) -> AssetKey:
    """``key`` as the running location names it: asset and check bodies name their asset by its
    single-host key, and this finds the hosted one among the assets or checks being run."""
    if hasattr(context, "check_specs"):
        running = [spec.asset_key for spec in context.check_specs]
    else:
        running = list(context.selected_asset_keys)
    for k in running:
        if tuple(k.path[-len(key.path):]) == tuple(key.path):
            return k
    return key


def hosted(defs: Definitions, host: str | None) -> Definitions:
    """``defs`` with ``host`` on every asset key, check and job name (unchanged when None)."""
    if not host:
        return defs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BetaWarning)
        return _hosted(defs, host)


def _hosted(defs: Definitions, host: str) -> Definitions:
    graph = defs.resolve_asset_graph()
    keys = {k: hosted_key(k, host) for k in graph.get_all_asset_keys()}
    assets = [a.replace_attributes(key=keys[a.key], deps=[d._replace(asset_key=keys.get(d.asset_key, d.asset_key))
                                                          for d in a.deps])
              if isinstance(a, AssetSpec) else a.with_attributes(asset_key_replacements=keys)
              for a in defs.assets or []]
    checks = [c.with_attributes(asset_key_replacements=keys) for c in defs.asset_checks or []]
    jobs = {}
    for job in defs.jobs or []:
        new_name = job_name(job.name, host)
        if isinstance(job, UnresolvedAssetJobDefinition):
            selected = job.selection.resolve(graph)
            if selected:  # the assets' checks come with them
                selection = AssetSelection.assets(*sorted((keys[k] for k in selected), key=str))
            else:
                selection = AssetSelection.checks(*sorted(
                    (AssetCheckKey(keys[c.asset_key], c.name) for c in job.selection.resolve_checks(graph)), key=str))
            jobs[job.name] = define_asset_job(
                new_name, selection=selection,
                description=job.description, tags=job.tags, run_tags=job.run_tags, partitions_def=job.partitions_def,
                executor_def=job.executor_def, op_retry_policy=job.op_retry_policy, config=job.config,
            )
        elif isinstance(job, JobDefinition):
            jobs[job.name] = job.graph.to_job(name=new_name, description=job.description, executor_def=job.executor_def,
                                              tags=job.tags, partitions_def=job.partitions_def)
        else:
            raise TypeError(f"cannot host job {job!r}")
    schedules = [s.with_updated_job(jobs[s.job_name]) for s in defs.schedules or []]
    sensors = [s.with_updated_jobs([jobs[j.name] for j in s.jobs]) if s.has_jobs else s for s in defs.sensors or []]
    return Definitions(assets=assets, asset_checks=checks, jobs=list(jobs.values()), schedules=schedules,
                       sensors=sensors, resources=defs.resources)
