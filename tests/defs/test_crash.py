"""kill -9 of a Dagster run at each named step; a re-run finishes with the same objects.

Each run is a real subprocess (``execute_in_process`` of ``defs``'s job, or the ``dagster``
CLI for the contract command) that SIGKILLs itself at ``ORDERBOOK_CRASH_AT``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from orderbook_core.buffer import ledger

from support.buffer_rows import BASE_HOUR_US, fill_buffer, open_buffer
from support.s3 import MotoServer, s3_client
from support.procs import JOB_RUN

ROOT = Path(__file__).resolve().parents[2]
KEY = "2026-11-23-10:00"


@pytest.fixture(scope="module")
def moto():
    with MotoServer() as server:
        yield server


@pytest.fixture
def env(tmp_path, moto):
    moto.reset()
    home = tmp_path / "dagster_home"
    home.mkdir()
    e = dict(os.environ)
    e.update(
        DAGSTER_HOME=str(home), ORDERBOOK_BUFFER=str(tmp_path / "buffer.sqlite3"),
        ORDERBOOK_ARCHIVE_URL="s3://crash/archive", AWS_ENDPOINT_URL_S3=moto.url, AWS_REGION="eu-west-1",
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", PYTHONPATH=str(ROOT),
    )
    e.pop("ORDERBOOK_CRASH_AT", None)
    return e


def run(env, job="archive_hour", key=KEY, crash=None, cli=False):
    e = dict(env)
    if crash:
        e["ORDERBOOK_CRASH_AT"] = crash
    if cli:
        args = [str(Path(sys.executable).parent / "dagster"), "job", "execute", "-m", "orderbook_assets.definitions",
                "-j", job, "--tags", json.dumps({"dagster/partition": key})]
    else:
        args = [sys.executable, "-c", JOB_RUN, job] + ([key] if key else [])
    return subprocess.run(args, env=e, cwd=ROOT, capture_output=True, text=True, timeout=120)


def objects(moto):
    client = s3_client(moto.url, "eu-west-1")
    out = {}
    for o in client.list_objects_v2(Bucket="crash").get("Contents", []):
        if not o["Key"].startswith("archive/_orderbook/"):  # the store's capability record
            out[o["Key"]] = client.head_object(Bucket="crash", Key=o["Key"])["ETag"]  # MD5 of the bytes
    return out


def archived_rows(moto, tmp_path):
    client = s3_client(moto.url, "eu-west-1")
    for key in objects(moto):
        if key.startswith("archive/depth_snapshot/"):
            p = tmp_path / "dl" / key
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(client.get_object(Bucket="crash", Key=key)["Body"].read())
    return duckdb.connect().execute(
        f"SELECT session_id, seq FROM read_parquet('{tmp_path}/dl/archive/depth_snapshot/**/*.parquet', "
        "hive_partitioning = true) ORDER BY ALL"
    ).fetchall()


# Each point an archive run in a subprocess killed, then another run: about 30 s each, in make test.
@pytest.mark.slow
@pytest.mark.parametrize("point", ["after_parquet", "after_upload", "after_head", "before_archive"])
def test_kill_9_during_archive_then_rerun(env, moto, tmp_path, point):
    rows = fill_buffer(tmp_path / "buffer.sqlite3", ["btcusdt", "ethusdt"], BASE_HOUR_US, 500)
    crashed = run(env, crash=point)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    before = objects(moto)
    assert bool(before) == (point != "after_parquet")
    done = run(env)
    assert done.returncode == 0, done.stderr[-3000:]
    after = objects(moto)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing rewritten
    bars = [k for k in after if k.startswith("archive/top_of_book_1s/")]
    assert len(after) - len(bars) == 2 and len(bars) == 1  # depth part + coverage part; derived bars
    assert archived_rows(moto, tmp_path) == sorted((r.session_id, r.seq) for r in rows)
    conn = open_buffer(tmp_path / "buffer.sqlite3")
    assert [(p.part, p.state) for p in ledger.parts(conn, "depth_snapshot", BASE_HOUR_US)] == [(1, "archived")]
    conn.close()


@pytest.mark.slow
def test_kill_9_in_the_middle_of_cleanup_then_rerun(env, moto, tmp_path):
    rows = fill_buffer(tmp_path / "buffer.sqlite3", ["btcusdt"], BASE_HOUR_US, 2500)
    assert run(env, cli=True).returncode == 0  # the contract command from docs/archive.md
    env = dict(env, ORDERBOOK_RETENTION_HOURS="0")
    crashed = run(env, job="cleanup_buffer", key=None, crash="cleanup_batch")
    assert crashed.returncode == -signal.SIGKILL
    conn = open_buffer(tmp_path / "buffer.sqlite3")
    left = conn.execute("SELECT count(*) FROM depth_snapshot").fetchone()[0]
    assert left == len(rows) - 1000  # one committed batch, nothing else
    assert run(env, job="cleanup_buffer", key=None).returncode == 0
    assert conn.execute("SELECT count(*) FROM depth_snapshot").fetchone()[0] == 0
    assert archived_rows(moto, tmp_path) == sorted((r.session_id, r.seq) for r in rows)
    conn.close()
