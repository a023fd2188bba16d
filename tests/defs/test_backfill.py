"""Backfilling missed hours the way the UI does: a partition backfill of `archive_hour`,
launched through the webserver's GraphQL API, run by `dagster dev`'s daemon with the
repository's dagster.yaml (queued runs, one run per hour at a time)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from support.buffer_rows import BASE_HOUR_US, HOUR_US, fill_buffer, open_buffer
from support.procs import ROOT
from support.webserver import free_port, graphql, stop, wait_for_definitions

LAUNCH = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}
"""


@pytest.mark.slow
def test_backfill_of_missed_hours_from_the_ui_archives_them(tmp_path):
    buffer = tmp_path / "buffer.sqlite3"
    hours = [BASE_HOUR_US, BASE_HOUR_US + HOUR_US]
    fill_buffer(buffer, ["btcusdt"], hours[0], 300)
    fill_buffer(buffer, ["btcusdt"], hours[1], 300, session_id=99, first_update_id=10**6)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "ORDERBOOK_BUFFER": str(buffer),
           "ORDERBOOK_ARCHIVE_URL": str(tmp_path / "archive")}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "dagster-dev.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("dagster")), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        wait_for_definitions(base, proc, log)
        keys = ["2026-11-23-10:00", "2026-11-23-11:00"]
        params = {
            "selector": {
                "repositorySelector": {"repositoryLocationName": "orderbook", "repositoryName": "__repository__"},
                "partitionSetName": "archive_hour_partition_set",
            },
            "partitionNames": keys,
        }
        result = graphql(base, LAUNCH, {"params": params})["launchPartitionBackfill"]
        assert result["__typename"] == "LaunchBackfillSuccess", result
        conn = open_buffer(buffer)
        deadline = time.monotonic() + 180
        states: list = []
        while time.monotonic() < deadline:
            states = conn.execute(
                "SELECT hour_us, state FROM export_parts WHERE dataset = 'depth_snapshot' ORDER BY hour_us"
            ).fetchall()
            if states == [(h, "archived") for h in hours]:
                break
            time.sleep(1)
        conn.close()
        assert states == [(h, "archived") for h in hours], f"{states}\n{log.read_text()[-3000:]}"
    finally:
        stop(proc)
    rows = duckdb.connect().execute(
        f"SELECT hour, count(*) FROM read_parquet('{tmp_path}/archive/depth_snapshot/**/*.parquet', "
        "hive_partitioning = true) GROUP BY hour ORDER BY hour"
    ).fetchall()
    assert rows == [(10, 300), (11, 300)]
