"""Two hosts' archive runs and the fleet merge on one Dagster instance stored in a real PostgreSQL:
host-prefixed assets and jobs, each host's parts in its own folder, the merge reading the parts
each host verified (from the instance) and writing every message once."""

from __future__ import annotations

import duckdb
import pytest
from dagster import DagsterInstance

from orderbook_assets.archive.datasets import DATASETS
from orderbook_assets.definitions import build
from support.buffer_rows import BASE_HOUR_US, fill_buffer
from support.procs import ROOT
from support.s3 import MotoServer, s3_client

KEY = "2026-11-23-10:00"
S = 1_000_000


def uid(k: int) -> int:
    return 1000 + 3 * k


def run(instance, environ: dict, job: str, monkeypatch):
    for k, v in environ.items():
        monkeypatch.setenv(k, v)
    defs = build(environ)
    result = defs.resolve_job_def(job).execute_in_process(partition_key=KEY, instance=instance, raise_on_error=False)
    for k in environ:
        monkeypatch.delenv(k)
    return result


@pytest.mark.slow
def test_two_hosts_and_their_merge_on_postgres(tmp_path, fleet_home, postgres, pg_url, monkeypatch):
    archive = tmp_path / "archive"
    monkeypatch.setenv("ORDERBOOK_ARCHIVE_URL", str(archive))
    a, b = tmp_path / "a" / "buffer.sqlite3", tmp_path / "b" / "buffer.sqlite3"
    a.parent.mkdir()
    b.parent.mkdir()
    # message k (update id 1000 + 3k) is sent at k * 100 ms; host_a has k 0-299 (0-30 s), is down,
    # then has k 450-599 (45-60 s); host_b has k 200-599 (20-60 s), each 50 ms after host_a
    fill_buffer(a, ["btcusdt"], BASE_HOUR_US, 300, session_id=1)
    fill_buffer(a, ["btcusdt"], BASE_HOUR_US + 45 * S, 150, session_id=2, first_update_id=uid(450))
    fill_buffer(b, ["btcusdt"], BASE_HOUR_US + 20 * S + 50_000, 400, session_id=1, first_update_id=uid(200))
    instance = DagsterInstance.from_config(str(fleet_home))
    try:
        for host, buffer in (("host_a", a), ("host_b", b)):
            result = run(instance, {"ORDERBOOK_HOST_ID": host, "ORDERBOOK_BUFFER": str(buffer)},
                         f"archive_hour_{host}", monkeypatch)
            assert result.success, host
            assert {e.asset_key.path[0] for e in result.get_asset_materialization_events()} == {host}
        merged = run(instance, {"ORDERBOOK_FLEET_HOSTS": "host_a,host_b"}, "merge_fleet_hour", monkeypatch)
        assert merged.success
        # one merged asset per dataset and coverage, depth_snapshot's first, then the merged books
        events = merged.get_asset_materialization_events()
        assert [e.asset_key.path for e in events] == [["fleet", n] for n in (*DATASETS, "coverage", "book_snapshot")]
        meta = events[0].materialization.metadata
        assert meta["input_rows"].value == {"host_a": 450, "host_b": 400}
        assert meta["kept_rows"].value == {"host_a": 450, "host_b": 150}
        # runs and events are in PostgreSQL, not in a SQLite file of the home
        assert int(postgres.psql("SELECT count(*) FROM runs", database=pg_url.rsplit("/", 1)[1])) == 3
        assert not list(fleet_home.rglob("*.db"))
        con = duckdb.connect()
        merged_glob = f"{archive}/depth_snapshot/**/*.parquet"
        first = con.execute(f"SELECT count(*) FROM read_parquet('{merged_glob}')").fetchone()[0]
        # a late part of host_b (k 600-609 at 60-61 s): its archive run, then the merge again, which
        # replaces the hour's merged object (still one object, the earlier rows unchanged)
        fill_buffer(b, ["btcusdt"], BASE_HOUR_US + 60 * S, 10, session_id=3, first_update_id=uid(600))
        assert run(instance, {"ORDERBOOK_HOST_ID": "host_b", "ORDERBOOK_BUFFER": str(b)}, "archive_hour_host_b",
                   monkeypatch).success
        again = run(instance, {"ORDERBOOK_FLEET_HOSTS": "host_a,host_b"}, "merge_fleet_hour", monkeypatch)
        assert again.get_asset_materialization_events()[0].materialization.metadata["input_rows"].value == {
            "host_a": 450, "host_b": 410}
        assert (first, con.execute(f"SELECT count(*) FROM read_parquet('{merged_glob}')").fetchone()[0]) == (600, 610)
        assert len(list(archive.glob("depth_snapshot/**/*.parquet"))) == 1
    finally:
        instance.dispose()
    got = con.execute(
        f"SELECT last_update_id, collector FROM read_parquet('{archive}/depth_snapshot/**/*.parquet', "
        "hive_partitioning = true) ORDER BY last_update_id").fetchall()
    assert [r[0] for r in got] == [uid(k) for k in range(610)]  # every message once, none lost
    winners = dict(got)
    assert {winners[uid(k)] for k in range(0, 300)} == {"host_a"}  # k 200-299: earlier by 50 ms
    assert {winners[uid(k)] for k in range(300, 450)} == {"host_b"}  # only host_b was up
    assert {winners[uid(k)] for k in range(450, 600)} == {"host_a"}
    assert {winners[uid(k)] for k in range(600, 610)} == {"host_b"}  # the late part
    per_host = con.execute(
        f"SELECT collector, count(*) FROM read_parquet('{archive}/hosts/*/depth_snapshot/**/*.parquet', "
        "hive_partitioning = true) GROUP BY ALL ORDER BY ALL").fetchall()
    assert per_host == [("host_a", 450), ("host_b", 410)]
    gaps = con.execute(
        f"SELECT epoch_us(start_time) - {BASE_HOUR_US}, stream FROM read_parquet('{archive}/coverage/**/fleet.parquet') "
        "WHERE record = 'gap'").fetchall()
    # host_a's 30-45 s outage is covered by host_b: the one gap is the hour's rest, from host_b's last row
    assert [g[0] for g in gaps] == [60 * S + 9 * 100_000]
    # each collector's sessions, named, in the merged coverage; the hour's other datasets are there, empty
    sessions = con.execute(
        f"SELECT DISTINCT collector, session_id FROM read_parquet('{archive}/coverage/**/fleet.parquet') "
        "WHERE record = 'session' ORDER BY ALL").fetchall()
    assert sessions == [("host_a", 1), ("host_a", 2), ("host_b", 1), ("host_b", 3)]
    for name in DATASETS:
        assert len(list(archive.glob(f"{name}/**/fleet.parquet"))) == 1, name
    assert con.execute(f"SELECT count(*) FROM read_parquet('{archive}/trade/**/fleet.parquet')").fetchone() == (0,)


@pytest.mark.slow  # PostgreSQL and a run through the deploy instance: make test, not test-fast
def test_the_deploy_instance_stores_runs_in_postgres_and_compute_logs_in_s3(tmp_path, pg_url, postgres, monkeypatch):
    """deploy/dagster.yaml as shipped: runs and events in PostgreSQL, the run's stdout/stderr uploaded to
    the compute-log bucket (where the webserver reads them whichever host ran the run), artifacts where
    ORDERBOOK_DAGSTER_ARTIFACTS says."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "deploy" / "dagster.yaml").read_text())
    buffer = tmp_path / "buffer.sqlite3"
    fill_buffer(buffer, ["btcusdt"], BASE_HOUR_US, 50, session_id=1)
    with MotoServer() as moto:
        for k, v in {"DAGSTER_PG_URL": pg_url, "ORDERBOOK_DAGSTER_ARTIFACTS": str(tmp_path / "artifacts"),
                     "ORDERBOOK_COMPUTE_LOG_BUCKET": "dagster-logs", "ORDERBOOK_COMPUTE_LOG_DIR": str(tmp_path / "logs"),
                     "AWS_ENDPOINT_URL_S3": moto.url, "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
                     "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                     "ORDERBOOK_ARCHIVE_URL": str(tmp_path / "archive")}.items():
            monkeypatch.setenv(k, v)
        s3 = s3_client(moto.url)
        s3.create_bucket(Bucket="dagster-logs")
        instance = DagsterInstance.from_config(str(home))
        try:
            assert type(instance.compute_log_manager).__name__ == "S3ComputeLogManager"
            assert instance.root_directory == str(tmp_path / "artifacts")
            result = run(instance, {"ORDERBOOK_HOST_ID": "host_a", "ORDERBOOK_BUFFER": str(buffer)},
                         "archive_hour_host_a", monkeypatch)
            assert result.success
            keys = [o["Key"] for o in s3.list_objects_v2(Bucket="dagster-logs").get("Contents", [])]
            assert keys and all(k.startswith("dagster-compute-logs/") for k in keys), keys
            assert int(postgres.psql("SELECT count(*) FROM runs", database=pg_url.rsplit("/", 1)[1])) == 1
        finally:
            instance.dispose()
