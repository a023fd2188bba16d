"""Real Dagster runs of the archive (in process), configured through the environment."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pytest
from dagster import DagsterInstance, build_schedule_context, build_sensor_context

from orderbook_core.buffer import ledger
from orderbook_assets.definitions import defs
from orderbook_assets.defs.partitions import hourly
from orderbook_core.errors import ConfigError

from support.runs import checks_of, materialized
from support.buffer_rows import REALISTIC_ROWS, BASE_HOUR_US, fill_buffer, open_buffer, realistic_hour
from support.s3 import MotoServer, s3_client

ROOT = Path(__file__).resolve().parents[2]
KEY = "2026-11-23-10:00"


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("ORDERBOOK_BUFFER", str(tmp_path / "buffer.sqlite3"))
    monkeypatch.setenv("ORDERBOOK_ARCHIVE_URL", str(tmp_path / "archive"))
    monkeypatch.delenv("ORDERBOOK_CRASH_AT", raising=False)
    return tmp_path


def run_hour(key=KEY):
    job = defs.resolve_job_def("archive_hour")
    return job.execute_in_process(partition_key=key, instance=DagsterInstance.ephemeral(), raise_on_error=False)


def read(url: str, dataset="depth_snapshot", s3_setup: str = ""):
    con = duckdb.connect()
    con.execute(s3_setup)
    return con.execute(
        f"SELECT symbol, epoch_us(recv_time), session_id, seq, last_update_id, bids[1].price, asks[20].qty, hour "
        f"FROM read_parquet('{url}/{dataset}/**/*.parquet', hive_partitioning = true)"
    ).fetchall()


def expected(rows):
    return sorted((r.symbol, r.recv_us, r.session_id, r.seq, r.update_id, r.bids[0][0], r.asks[19][1], 10) for r in rows)


@pytest.mark.slow
def test_hour_archived_end_to_end_to_local_folder(env):
    rows = fill_buffer(env / "buffer.sqlite3", ["btcusdt", "ethusdt"], BASE_HOUR_US + 5_000_000, 500)
    result = run_hour()
    assert result.success
    assert sorted(read(str(env / "archive"))) == expected(rows)
    mat = materialized(result, "depth_snapshot")[0].metadata
    assert mat["rows"].value == len(rows)
    assert mat["object_keys"].value == ["depth_snapshot/date=2026-11-23/hour=10/part-0001-0-1000.parquet"]
    assert mat["first_recv_time"].value.startswith("2026-11-23T10:00:05")
    checks = {**checks_of(result, "depth_snapshot"), **checks_of(result, "coverage")}
    assert set(checks) == {"no_duplicates", "no_seq_gaps", "update_id_monotonic", "coverage_gaps", "books_sane", "rows_reconciled"}
    assert checks["rows_reconciled"].passed and not checks["coverage_gaps"].passed  # the first 5 s are a gap
    assert result.asset_materializations_for_node("archived_hour")
    bars_rows = result.asset_materializations_for_node("top_of_book_1s")[0].metadata["rows"].value
    assert bars_rows > 0
    assert not list((env / "staging").rglob("*.parquet"))  # the bars step dropped the staged parts it read
    # a re-run adds nothing; late rows become part 2
    assert run_hour().success
    late = fill_buffer(env / "buffer.sqlite3", ["btcusdt"], BASE_HOUR_US + 20 * 60_000_000, 10, session_id=5, first_update_id=10**6)
    assert run_hour().success
    assert sorted(read(str(env / "archive"))) == expected(rows + late)


def test_bars_read_the_staged_parts_not_the_archive(env, monkeypatch):
    """Bars are built from the parts the run just staged and verified, not downloaded again:
    the archive's copy is made unreadable between archived_hour and the bars step."""
    from orderbook_assets.archive import pipeline

    fill_buffer(env / "buffer.sqlite3", ["btcusdt"], BASE_HOUR_US + 5_000_000, 200)
    real = pipeline.archived_copies

    def archived_copies(conn, store, staging, hour_us, dataset):
        for f in (env / "archive" / dataset).rglob("*.parquet"):
            f.write_bytes(b"not parquet")  # a download would now fail its hash check
        return real(conn, store, staging, hour_us, dataset)

    monkeypatch.setattr(pipeline, "archived_copies", archived_copies)
    result = run_hour()
    assert result.success
    assert result.asset_materializations_for_node("top_of_book_1s")[0].metadata["rows"].value > 0


@pytest.mark.slow  # realistic books generated, archived and encoded as JSON to compare: make test, not test-fast
def test_materialization_reports_the_true_ratio_vs_json_of_realistic_books(env):
    """README/DESIGN: Parquet >= 40x smaller than the raw Binance JSON on realistic books; the
    asset's metadata is what an operator reads, so it must state that figure truthfully."""
    json_bytes = realistic_hour(env / "buffer.sqlite3", REALISTIC_ROWS)
    result = run_hour()
    assert result.success
    mat = materialized(result, "depth_snapshot")[0].metadata
    assert mat["rows"].value == REALISTIC_ROWS
    (key,) = mat["object_keys"].value
    true_ratio = json_bytes / (env / "archive" / key).stat().st_size
    assert true_ratio >= 40, f"Parquet only {true_ratio:.1f}x smaller than the JSON"
    assert mat["compression_ratio_vs_json"].value >= 40
    assert mat["compression_ratio_vs_json"].value == pytest.approx(true_ratio, rel=0.1)


@pytest.mark.slow
def test_hour_archived_end_to_end_to_moto(env, monkeypatch):
    with MotoServer() as moto:
        monkeypatch.setenv("ORDERBOOK_ARCHIVE_URL", "s3://books/archive")
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto.url)
        monkeypatch.setenv("AWS_REGION", "eu-west-1")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        rows = fill_buffer(env / "buffer.sqlite3", ["btcusdt", "ethusdt"], BASE_HOUR_US, 300)
        result = run_hour()
        assert result.success
        # what the store honours, shown in the UI with every depth_snapshot materialization
        store = materialized(result, "depth_snapshot")[0].metadata["store"].value
        assert store["create"] == "if-none-match" and store["verify"].startswith("md5-etag")
        assert store["hardening.public_access_block"] == "on"
        client = s3_client(moto.url, "eu-west-1")
        assert client.get_bucket_location(Bucket="books")["LocationConstraint"] == "eu-west-1"
        keys = [o["Key"] for o in client.list_objects_v2(Bucket="books")["Contents"]
                if not o["Key"].startswith("archive/_orderbook/")]  # the store's capability record
        assert sorted(keys) == [
            "archive/coverage/date=2026-11-23/hour=10/part-0001-0-0.parquet",
            "archive/depth_snapshot/date=2026-11-23/hour=10/part-0001-0-600.parquet",
            "archive/top_of_book_1s/date=2026-11-23/hour=10/bars.parquet",
        ]
        for key in keys[:2]:
            body = client.get_object(Bucket="books", Key=key)["Body"].read()
            local = env / "dl" / key
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(body)
        assert sorted(read(str(env / "dl" / "archive"))) == expected(rows)


def test_failing_error_check_blocks_mark_archived(env):
    from support.buffer_rows import make_rows, store

    rows = make_rows(["btcusdt"], BASE_HOUR_US, 30, session_id=1)
    rows[20].update_id = 1  # goes backwards
    conn = open_buffer(env / "buffer.sqlite3")
    store(conn, rows)
    result = run_hour()
    assert not result.success
    assert not result.asset_materializations_for_node("archived_hour")
    assert ledger.parts(conn, "depth_snapshot", BASE_HOUR_US)[0].state == "verified"
    conn.close()


def test_s3_without_bucket_or_region_is_a_config_error(env, monkeypatch):
    from orderbook_assets.defs.resources import ArchiveResource, ArchiveS3Resource

    with pytest.raises(ConfigError, match="ORDERBOOK_ARCHIVE_URL"):
        ArchiveResource(url="s3://", s3=ArchiveS3Resource()).open_store()
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(env / "none"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with pytest.raises(ConfigError, match="AWS_REGION"):
        ArchiveResource(url="s3://b/p", s3=ArchiveS3Resource()).open_store()


def test_schedule_tick_at_five_past_requests_the_previous_hour():
    schedule = defs.resolve_schedule_def("archive_hour_schedule")
    assert schedule.cron_schedule == "5 * * * *"
    when = datetime(2026, 11, 23, 11, 5, tzinfo=timezone.utc)
    with build_schedule_context(scheduled_execution_time=when, repository_def=defs.get_repository_def()) as ctx:
        request = schedule.evaluate_tick(ctx).run_requests[0]
    assert request.partition_key == KEY
    assert defs.resolve_schedule_def("cleanup_buffer_schedule").job_name == "cleanup_buffer"


@pytest.mark.slow
def test_sensor_requests_a_further_part_for_late_rows(env):
    path = env / "buffer.sqlite3"
    fill_buffer(path, ["btcusdt"], BASE_HOUR_US, 20)
    sensor = defs.resolve_sensor_def("late_rows_sensor")
    with build_sensor_context(resources={"buffer": defs.resources["buffer"]}, repository_def=defs.get_repository_def()) as ctx:
        assert not sensor.evaluate_tick(ctx).run_requests
    assert run_hour().success
    fill_buffer(path, ["btcusdt"], BASE_HOUR_US + 600_000_000, 5, session_id=3, first_update_id=10**6)
    with build_sensor_context(resources={"buffer": defs.resources["buffer"]}, repository_def=defs.get_repository_def()) as ctx:
        requests = sensor.evaluate_tick(ctx).run_requests
    assert [(r.partition_key, r.run_key) for r in requests] == [(KEY, f"{KEY}@depth_snapshot=25")]
    assert run_hour().success
    conn = open_buffer(path)
    assert [p.part for p in ledger.parts(conn, "depth_snapshot", BASE_HOUR_US, ("archived",))] == [1, 2]
    conn.close()


def test_definitions_resolve_and_validate():
    assert {j.name for j in defs.resolve_all_job_defs()} >= {"archive_hour", "cleanup_buffer"}
    assert hourly.get_partition_key_for_timestamp(BASE_HOUR_US / 1e6) == KEY
    assert hourly.end_offset == 1
    out = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-m", "orderbook_assets.definitions"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]


def test_book_snapshot_asset_and_its_checks_resolve():
    from dagster import AssetCheckKey, AssetKey

    job = defs.resolve_job_def("archive_hour")
    assert AssetKey("book_snapshot") in job.asset_layer.asset_graph.get_all_asset_keys()
    graph = defs.resolve_asset_graph()
    node = graph.get(AssetKey("book_snapshot"))
    assert {AssetKey(k) for k in ("depth_update", "depth_rest_snapshot", "depth_snapshot", "archived_hour")} <= set(node.parent_keys)
    specs = {k.name: graph.get_check_spec(k) for k in node.check_keys}
    assert set(specs) == {"book_matches_exchange", "book_not_crossed"}
    assert specs["book_matches_exchange"].blocking and not specs["book_not_crossed"].blocking
    assert AssetCheckKey(AssetKey("book_snapshot"), "book_matches_exchange") in node.check_keys


def test_cleanup_job_runs(env, monkeypatch):
    fill_buffer(env / "buffer.sqlite3", ["btcusdt"], BASE_HOUR_US, 1500)
    assert run_hour().success
    monkeypatch.setenv("ORDERBOOK_RETENTION_HOURS", "0")
    result = defs.resolve_job_def("cleanup_buffer").execute_in_process(instance=DagsterInstance.ephemeral())
    assert result.success
    conn = open_buffer(env / "buffer.sqlite3")
    assert conn.execute("SELECT count(*) FROM depth_snapshot").fetchone()[0] == 0
    conn.close()
    monkeypatch.setenv("ORDERBOOK_RETENTION_HOURS", "soon")
    assert not defs.resolve_job_def("cleanup_buffer").execute_in_process(
        instance=DagsterInstance.ephemeral(), raise_on_error=False).success


@pytest.mark.slow
def test_every_dataset_archived_by_the_job_checked_and_cleaned(env, monkeypatch):
    """archive_hour materializes every stream dataset of its hour with its checks, coverage and
    archived_hour; late trades alone get a further run from the sensor; cleanup frees every table."""
    from orderbook_assets.archive import datasets, quality
    from orderbook_assets.defs.sensors import late_rows_sensor
    from support.every_kind import fill

    conn = open_buffer(env / "buffer.sqlite3")
    want = fill(conn, BASE_HOUR_US)
    result = run_hour()
    assert_only_books_disproved(result)
    for name in datasets.DATASETS:
        (mat,) = materialized(result, name)
        assert mat.metadata["rows"].value == len(want[name]) > 0, name
        checks = checks_of(result, name)
        assert set(checks) == set(quality.CHECKS[name]), name
        assert all(c.passed for c in checks.values()), (name, [c for c in checks.values() if not c.passed])
        assert read_rows(env / "archive", name) == len(want[name])
    assert materialized(result, "coverage") and materialized(result, "archived_hour")
    # late trades only: the sensor names the dataset, the run adds its part 2
    late = fill(conn, BASE_HOUR_US, 3, offset_us=900_000_000, first_trade=70_000, session_base=20, first_update=40_000_000)
    with build_sensor_context(resources={"buffer": defs.resources["buffer"]}, repository_def=defs.get_repository_def()) as ctx:
        requests = late_rows_sensor.evaluate_tick(ctx).run_requests
    assert [r.partition_key for r in requests] == [KEY] and "trade=" in requests[0].run_key
    assert_only_books_disproved(run_hour())
    assert read_rows(env / "archive", "trade") == len(want["trade"]) + len(late["trade"])
    # cleanup with retention 0 frees every table the archive covers
    conn.close()
    monkeypatch.setenv("ORDERBOOK_RETENTION_HOURS", "0")
    assert defs.resolve_job_def("cleanup_buffer").execute_in_process(instance=DagsterInstance.ephemeral()).success
    conn = open_buffer(env / "buffer.sqlite3")
    for table in (*datasets.DATASETS, "depth_sync", "trade_gap"):
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0, table
    conn.close()


def assert_only_books_disproved(result) -> None:
    """every_kind's partial snapshots are not the books its diff events build (synthetic rows,
    not an exchange), so book_snapshot's blocking proof must fail, and only it: every partial
    snapshot comparable, none matched, each listed with its levels."""
    assert [e.step_key for e in result.get_step_failure_events()] == ["book_snapshot"]
    assert materialized(result, "archived_hour") and materialized(result, "top_of_book_1s")
    proof = checks_of(result, "book_snapshot")["book_matches_exchange"]
    assert not proof.passed
    comparable = proof.metadata["comparable"].value
    assert comparable > 0 and proof.metadata["matched"].value == 0
    assert proof.metadata["mismatches"].value == comparable == len(proof.metadata["mismatch_levels"].value)


def read_rows(root, dataset: str) -> int:
    return duckdb.connect().execute(
        f"SELECT count(*) FROM read_parquet('{root}/{dataset}/**/*.parquet', hive_partitioning = true)"
    ).fetchone()[0]
