"""The host id on asset keys and job names (one code location per collector), and the merge location."""

from __future__ import annotations

import pytest
from dagster import AssetKey

from orderbook_assets.archive.datasets import DATASETS
from orderbook_assets.definitions import build
from orderbook_core.errors import ConfigError


def names(defs):
    graph = defs.resolve_asset_graph()
    return (sorted(k.to_user_string() for k in graph.get_all_asset_keys()),
            sorted(j.name for j in defs.jobs), sorted((s.name, s.job_name) for s in defs.schedules or []),
            sorted((s.name, tuple(j.name for j in s.jobs)) for s in defs.sensors or []))


def test_without_a_host_id_the_single_host_names_stay():
    assets, jobs, schedules, sensors = names(build({}))
    assert assets == sorted(["archived_hour", "book_snapshot", "collector", "coverage", "top_of_book_1s", *DATASETS])
    assert jobs == ["archive_hour", "check_freshness", "cleanup_buffer"]
    assert schedules == [("archive_hour_schedule", "archive_hour"), ("cleanup_buffer_schedule", "cleanup_buffer")]
    assert sensors == [("check_freshness_sensor", ("check_freshness",)), ("late_rows_sensor", ("archive_hour",))]


def test_a_host_id_prefixes_every_key_and_suffixes_every_job():
    defs = build({"ORDERBOOK_HOST_ID": "tokyo_1"})
    assets, jobs, schedules, sensors = names(defs)
    assert assets == sorted(f"tokyo_1/{n}" for n in ["archived_hour", "book_snapshot", "collector", "coverage", "top_of_book_1s", *DATASETS])
    assert jobs == ["archive_hour_tokyo_1", "check_freshness_tokyo_1", "cleanup_buffer_tokyo_1"]
    assert schedules == [("archive_hour_schedule", "archive_hour_tokyo_1"),
                         ("cleanup_buffer_schedule", "cleanup_buffer_tokyo_1")]
    assert sensors == [("check_freshness_sensor", ("check_freshness_tokyo_1",)),
                       ("late_rows_sensor", ("archive_hour_tokyo_1",))]
    graph = defs.resolve_asset_graph()
    # dependencies follow the keys: bars after the host's own archived_hour, checks on its own assets
    assert graph.get(AssetKey(["tokyo_1", "top_of_book_1s"])).parent_keys == {AssetKey(["tokyo_1", "archived_hour"])}
    assert {k.asset_key for k in graph.asset_check_keys} == {AssetKey(["tokyo_1", n]) for n in
                                                             (*DATASETS, "book_snapshot", "coverage", "collector")}
    fresh = defs.resolve_job_def("check_freshness_tokyo_1").asset_layer.asset_graph.asset_check_keys
    assert {(k.asset_key, k.name) for k in fresh} == {(AssetKey(["tokyo_1", "collector"]), "collector_fresh")}


def test_the_fleet_location_serves_the_merge_of_its_hosts_only():
    assets, jobs, _, sensors = names(build({"ORDERBOOK_FLEET_HOSTS": "b,a"}))
    # the hosts' assets as deps only; a merged asset per dataset and coverage, and the merged books
    assert assets == ["a/archived_hour", "b/archived_hour",
                      *sorted(f"fleet/{n}" for n in (*DATASETS, "coverage", "book_snapshot"))]
    assert jobs == ["merge_fleet_hour"] and sensors == [("fleet_merge_sensor", ("merge_fleet_hour",))]
    both = names(build({"ORDERBOOK_FLEET_HOSTS": "a,b", "ORDERBOOK_HOST_ID": "a"}))
    assert both[1] == ["archive_hour_a", "check_freshness_a", "cleanup_buffer_a", "merge_fleet_hour"]


@pytest.mark.parametrize("env", [{"ORDERBOOK_HOST_ID": "Tokyo-1"}, {"ORDERBOOK_FLEET_HOSTS": "a,B c"}])
def test_a_bad_host_id_is_a_config_error(env):
    with pytest.raises(ConfigError, match=next(iter(env))):
        build(env)
