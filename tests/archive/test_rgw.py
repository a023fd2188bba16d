"""The archive against a real Ceph RGW 16 (Debian), the store where the old code archived nothing.

RGW accepts a public access block and then refuses every PutObject (tracker 49135), ignores
``x-amz-checksum-sha256`` (none on HEAD), refuses ``LocationConstraint=eu-west-1`` and default
encryption. Started once per session by :mod:`support.rgw`; if Ceph is not installed these tests
FAIL (run ``tools/system-deps.sh ceph``), they never skip.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import duckdb
import pytest
from botocore.config import Config

from orderbook_assets.analytics import views
from orderbook_core.buffer import ledger
from orderbook_assets.archive import pipeline
from orderbook_assets.archive.location import Location, S3Settings
from orderbook_assets.archive.store import S3Store, open_store
from orderbook_core.errors import ArchiveError

from support.buffer_rows import BASE_HOUR_US, fill_buffer, open_buffer
from support.procs import JOB_RUN
from support.rgw import rgw  # noqa: F401  (the session fixture)
from support.s3 import FaultProxy

pytestmark = pytest.mark.rgw

ROOT = Path(__file__).resolve().parents[2]
KEY = "2026-11-23-10:00"
REGION = "eu-west-1"  # not a zonegroup RGW knows: the bucket must still be created


def settings(url: str, server) -> S3Settings:
    return S3Settings.from_env({}, region=REGION, endpoint_url=url, key_id=server.access_key, secret=server.secret_key)


def raw_client(url: str, server):
    return boto3.session.Session().client(
        "s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "total_max_attempts": 3},
                      request_checksum_calculation="when_required", response_checksum_validation="when_required"),
    )


def fresh_bucket() -> str:
    return f"t{uuid.uuid4().hex[:20]}"


def objects(client, bucket: str) -> dict[str, tuple[str, str]]:
    """key → (ETag, LastModified) of the archive's objects (not the capability record).
    Derived bars are rewritten by design (with the same bytes): their ETag only."""
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            if "/_orderbook/" not in o["Key"]:
                derived = "/top_of_book_1s/" in o["Key"]
                out[o["Key"]] = (o["ETag"], "" if derived else str(o["LastModified"]))
    return out


def test_probe_learns_what_rgw_honours_and_hardening_never_bricks_the_bucket(rgw):
    bucket = fresh_bucket()
    store = open_store(Location.parse(f"s3://{bucket}/archive"), settings(rgw.url, rgw))
    caps = store.capabilities
    print(caps.summary())
    assert caps.facts["if_none_match"] == "honoured" and caps.facts["if_none_match_atomic"] == "yes"
    assert caps.facts["sha256_put"] == "ignored" and caps.facts["sha256_head"] == "none"
    assert caps.facts["content_md5"] == "verified" and caps.facts["etag_is_md5"] == "yes"
    assert (caps.create, caps.verify) == ("if-none-match", "md5-etag")
    assert caps.hardening["public_access_block"].startswith("removed")
    assert caps.hardening["default_encryption"].startswith("not available")
    # writes work: the block that bricks RGW buckets is gone
    client = raw_client(rgw.url, rgw)
    client.put_object(Bucket=bucket, Key="archive/x", Body=b"x")
    # the record is kept in the bucket: the next store reads it, no second probe
    again = S3Store(settings(rgw.url, rgw).client(), bucket, "archive", setting="")
    assert again.provision(REGION, custom_endpoint=True).source.startswith("record")
    assert again.capabilities.facts == caps.facts


def test_a_correct_object_verifies_and_a_wrong_one_says_what_differs(rgw, tmp_path):
    bucket = fresh_bucket()
    store = open_store(Location.parse(f"s3://{bucket}"), settings(rgw.url, rgw))
    f = tmp_path / "p"
    f.write_bytes(b"parquet" * 1000)
    sha = hashlib.sha256(f.read_bytes()).hexdigest()
    assert store.put_if_absent("k.parquet", f, sha) == "created"
    assert store.put_if_absent("k.parquet", f, sha) == "existed"
    assert store.head_detail("k.parquet") == (7000, sha, "md5-etag")
    # someone else's object at our key, same size, different bytes
    raw_client(rgw.url, rgw).put_object(Bucket=bucket, Key="other.parquet", Body=b"PARQUET" * 1000)
    with pytest.raises(ArchiveError, match=r"differs from ours: SHA-256 [0-9a-f]{64} instead of .* \(known by download\)"):
        store.put_if_absent("other.parquet", f, sha)


def job_env(tmp_path, server, bucket: str, url: str | None = None) -> dict[str, str]:
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    e = dict(os.environ)
    e.update(
        DAGSTER_HOME=str(home), ORDERBOOK_BUFFER=str(tmp_path / "buffer.sqlite3"),
        ORDERBOOK_ARCHIVE_URL=f"s3://{bucket}/archive", AWS_ENDPOINT_URL_S3=url or server.url, AWS_REGION=REGION,
        AWS_ACCESS_KEY_ID=server.access_key, AWS_SECRET_ACCESS_KEY=server.secret_key, PYTHONPATH=str(ROOT),
    )
    for k in ("ORDERBOOK_CRASH_AT", "ORDERBOOK_S3_CAPABILITIES", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        e.pop(k, None)
    return e


def run_job(env, crash=None):
    e = dict(env, **({"ORDERBOOK_CRASH_AT": crash} if crash else {}))
    return subprocess.run([sys.executable, "-c", JOB_RUN, "archive_hour", KEY], env=e, cwd=ROOT,
                          capture_output=True, text=True, timeout=180)


def read_back(server, bucket: str) -> list[tuple[int, int]]:
    con = duckdb.connect()
    views.register_views(con, f"s3://{bucket}/archive", s3=settings(server.url, server))
    return con.execute("SELECT session_id, seq FROM depth_snapshot ORDER BY ALL").fetchall()


def test_an_hour_archived_end_to_end_rerun_idempotent_read_back_with_duckdb(rgw, tmp_path):
    bucket = fresh_bucket()
    rows = fill_buffer(tmp_path / "buffer.sqlite3", ["btcusdt", "ethusdt"], BASE_HOUR_US, 400)
    env = job_env(tmp_path, rgw, bucket)
    first = run_job(env)
    assert first.returncode == 0, first.stderr[-3000:]
    client = raw_client(rgw.url, rgw)
    before = objects(client, bucket)
    assert sorted(k.split("/")[1] for k in before) == ["coverage", "depth_snapshot", "top_of_book_1s"]
    again = run_job(env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert objects(client, bucket) == before  # nothing rewritten, nothing added
    assert read_back(rgw, bucket) == sorted((r.session_id, r.seq) for r in rows)


@pytest.mark.parametrize("point", [
    pytest.param("after_parquet", marks=pytest.mark.slow),
    "after_upload",
    pytest.param("after_head", marks=pytest.mark.slow),
    pytest.param("before_archive", marks=pytest.mark.slow),
])
def test_kill_9_of_an_archive_run_then_rerun(rgw, tmp_path, point):
    bucket = fresh_bucket()
    rows = fill_buffer(tmp_path / "buffer.sqlite3", ["btcusdt"], BASE_HOUR_US, 300)
    env = job_env(tmp_path, rgw, bucket)
    crashed = run_job(env, crash=point)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    client = raw_client(rgw.url, rgw)
    before = objects(client, bucket)
    assert bool(before) == (point != "after_parquet")
    done = run_job(env)
    assert done.returncode == 0, done.stderr[-3000:]
    after = objects(client, bucket)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing overwritten
    assert sorted(k.split("/")[1] for k in after) == ["coverage", "depth_snapshot", "top_of_book_1s"]
    assert read_back(rgw, bucket) == sorted((r.session_id, r.seq) for r in rows)
    conn = open_buffer(tmp_path / "buffer.sqlite3")
    assert [(p.part, p.state) for p in ledger.parts(conn, "depth_snapshot", BASE_HOUR_US)] == [(1, "archived")]
    conn.close()


def archive_until_done(conn, st, staging, attempts=4):
    """Like a Dagster run plus its RetryPolicy: repeat the steps until the hour is archived."""
    errors = []
    for _ in range(attempts):
        try:
            pipeline.export_and_upload(conn, st, staging, BASE_HOUR_US)
            assert not pipeline.check_parts(conn, st, staging, BASE_HOUR_US, ledger.DEPTH).blocking_failures
            pipeline.upload_coverage(conn, st, staging, BASE_HOUR_US)
            pipeline.mark_archived(conn, staging, BASE_HOUR_US)
            return errors
        except ArchiveError as exc:
            errors.append(exc)
    raise AssertionError(f"not archived after {attempts} attempts: {errors}")


@pytest.mark.parametrize("kind", ["status_500", "slowdown_503", "reset", "stall", "lost_response", "corrupt_body", "silent_put_loss"])
def test_faults_in_front_of_rgw_exactly_once_nothing_lost(rgw, tmp_path, kind):
    bucket = fresh_bucket()
    with FaultProxy(rgw.url, stall_seconds=2.0) as proxy:
        client = settings(proxy.url, rgw).client(max_attempts=3, connect_timeout=1.0, read_timeout=1.0)
        st = open_store(Location.parse(f"s3://{bucket}/archive"), settings(proxy.url, rgw), client=client)
        path = tmp_path / "buffer.sqlite3"
        rows = fill_buffer(path, ["btcusdt", "ethusdt"], BASE_HOUR_US, 300)
        conn = open_buffer(path)
        proxy.inject(kind, count=2 if kind in ("status_500", "reset") else 1, method="PUT", path_contains="depth_snapshot")
        errors = archive_until_done(conn, st, tmp_path / "staging")
        assert proxy.injected[kind] >= 1
        if kind in ("silent_put_loss", "corrupt_body"):
            assert errors, f"{kind} must be caught (by HEAD / by RGW's Content-MD5 check), not archived"
        keys = [k for k in st.list() if k.startswith("depth_snapshot/")]
        assert len(keys) == 1
        (part,) = ledger.parts(conn, "depth_snapshot", BASE_HOUR_US)
        assert part.state == "archived" and part.rows == len(rows)
        assert st.head_detail(part.object_key) == (part.bytes, part.sha256, "md5-etag")
        conn.close()
    assert read_back(rgw, bucket) == sorted((r.session_id, r.seq) for r in rows)
