"""The archive on S3: moto over HTTP, behind the fault-injecting proxy."""

from __future__ import annotations

import hashlib

import pytest

from orderbook_core.buffer import ledger
from orderbook_assets.archive import cleanup, pipeline
from orderbook_assets.archive.store import S3Store
from orderbook_core.errors import ArchiveError, IntegrityError

from support.buffer_rows import BASE_HOUR_US, fill_buffer, open_buffer
from support.s3 import FaultProxy, MotoServer, s3_client

BUCKET = "archive"


@pytest.fixture(scope="module")
def moto():
    with MotoServer() as server:
        yield server


@pytest.fixture
def proxy(moto):
    moto.reset()
    with FaultProxy(moto.url, stall_seconds=2.0) as p:
        yield p


def s3_store(url, region="eu-west-1", **kw):
    client = s3_client(url, region, max_attempts=3, read_timeout=1.0, connect_timeout=1.0)
    st = S3Store(client, BUCKET, "books", **kw)
    st.provision(region, custom_endpoint=True)
    return st


@pytest.mark.parametrize("region", ["eu-west-1", "us-east-1"])
def test_bucket_created_with_location_constraint_from_region(moto, region):
    moto.reset()
    st = s3_store(moto.url, region)
    assert st.client.get_bucket_location(Bucket=BUCKET).get("LocationConstraint") in (
        (None, "us-east-1") if region == "us-east-1" else (region,)
    )
    assert st.ensure_bucket(region) == (False, {"bucket": "existed: left as its owner configured it"})
    enc = st.client.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]
    assert enc["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert st.client.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"]["BlockPublicAcls"]


def test_wrong_location_constraint_is_rejected_by_moto(moto):
    moto.reset()
    client = s3_client(moto.url, "eu-west-1")
    with pytest.raises(ArchiveError):
        S3Store(client, BUCKET, setting="").provision("us-west-2", custom_endpoint=True)


def test_put_if_absent_resolves_412_by_head_and_never_overwrites(proxy, tmp_path):
    st = s3_store(proxy.url)
    f = tmp_path / "p"
    f.write_bytes(b"parquet" * 100)
    sha = hashlib.sha256(f.read_bytes()).hexdigest()
    assert st.put_if_absent("k.parquet", f, sha) == "created"
    assert st.put_if_absent("k.parquet", f, sha) == "existed"
    assert st.head("k.parquet") == (700, sha)
    f.write_bytes(b"other" * 10)
    with pytest.raises(IntegrityError):
        st.put_if_absent("k.parquet", f, hashlib.sha256(f.read_bytes()).hexdigest())
    assert st.get("k.parquet") == b"parquet" * 100


def archive_until_done(conn, st, staging, attempts=4):
    """Like the Dagster run plus its retries: repeat the steps until the hour is archived."""
    errors = []
    for _ in range(attempts):
        try:
            pipeline.export_and_upload(conn, st, staging, BASE_HOUR_US)
            checks = pipeline.check_parts(conn, st, staging, BASE_HOUR_US, ledger.DEPTH)
            assert not checks.blocking_failures
            pipeline.upload_coverage(conn, st, staging, BASE_HOUR_US)
            pipeline.mark_archived(conn, staging, BASE_HOUR_US)
            return errors
        except ArchiveError as exc:
            errors.append(exc)
    raise AssertionError(f"not archived after {attempts} attempts: {errors}")


@pytest.mark.parametrize("kind", ["status_500", "slowdown_503", "reset", "stall", "lost_response", "corrupt_body", "silent_put_loss"])
def test_every_part_ends_verified_despite_s3_faults(proxy, tmp_path, kind):
    path = tmp_path / "buffer.sqlite3"
    rows = fill_buffer(path, ["btcusdt", "ethusdt"], BASE_HOUR_US, 300)
    conn = open_buffer(path)
    st = s3_store(proxy.url)
    proxy.inject(kind, count=2 if kind in ("status_500", "reset") else 1, method="PUT", path_contains="depth_snapshot")
    errors = archive_until_done(conn, st, tmp_path / "staging")
    assert proxy.injected[kind] >= 1
    if kind == "silent_put_loss":
        assert errors, "a PUT that stored nothing must be caught by the HEAD"
    # verified in the store, exactly one object per dataset, no overwrite
    keys = st.list()
    assert len([k for k in keys if k.startswith("depth_snapshot/")]) == 1
    part = ledger.parts(conn, "depth_snapshot", BASE_HOUR_US)[0]
    assert part.state == "archived" and part.rows == len(rows)
    assert st.head(part.object_key) == (part.bytes, part.sha256)
    conn.close()


def test_cleanup_never_deletes_a_part_whose_upload_failed(proxy, tmp_path):
    path = tmp_path / "buffer.sqlite3"
    rows = fill_buffer(path, ["btcusdt"], BASE_HOUR_US, 200)
    conn = open_buffer(path)
    st = s3_store(proxy.url)
    proxy.inject("silent_put_loss", method="PUT")
    with pytest.raises(ArchiveError):
        pipeline.export_and_upload(conn, st, tmp_path / "staging", BASE_HOUR_US)
    assert ledger.parts(conn, "depth_snapshot", BASE_HOUR_US)[0].state == "uploaded"
    assert cleanup.run(conn, 0, pause=0).deleted == 0
    assert conn.execute("SELECT count(*) FROM depth_snapshot").fetchone()[0] == len(rows)
    archive_until_done(conn, st, tmp_path / "staging")
    assert cleanup.run(conn, 0, pause=0).deleted == len(rows)
    conn.close()


def test_lost_coverage_put_while_session_counters_move_still_ends_verified(proxy, tmp_path):
    """A retry writes a new coverage snapshot (the collector's counters moved on): the
    ledger must record the object now stored, not keep the lost attempt's size and hash."""
    path = tmp_path / "buffer.sqlite3"
    fill_buffer(path, ["btcusdt"], BASE_HOUR_US, 200)
    conn = open_buffer(path)
    st = s3_store(proxy.url)
    proxy.inject("silent_put_loss", method="PUT", path_contains="/coverage/")
    pipeline.export_and_upload(conn, st, tmp_path / "staging", BASE_HOUR_US)
    assert not pipeline.check_parts(conn, st, tmp_path / "staging", BASE_HOUR_US, ledger.DEPTH).blocking_failures
    with pytest.raises(ArchiveError, match="HEAD shows None"):
        pipeline.upload_coverage(conn, st, tmp_path / "staging", BASE_HOUR_US)
    conn.execute("UPDATE sessions SET duplicates = duplicates + 7")  # the live collector meanwhile
    (part,) = pipeline.upload_coverage(conn, st, tmp_path / "staging", BASE_HOUR_US).parts
    assert part.state == "verified"
    assert st.head(part.object_key) == (part.bytes, part.sha256)
    assert proxy.injected["silent_put_loss"] == 1
    conn.close()


@pytest.mark.parametrize("kind", ["corrupt_body", "silent_put_loss"])
def test_derived_objects_are_replaced_and_verified_by_head(proxy, tmp_path, kind):
    st = s3_store(proxy.url)
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_bytes(b"bars v1")
    second.write_bytes(b"bars v2, after a late part")
    st.put_derived("top_of_book_1s/x.parquet", first, hashlib.sha256(b"bars v1").hexdigest())
    proxy.inject(kind, method="PUT")
    sha = hashlib.sha256(second.read_bytes()).hexdigest()
    # caught and reported; Dagster's RetryPolicy runs the step again (no retry loop inside)
    with pytest.raises(ArchiveError, match="HEAD shows" if kind == "silent_put_loss" else "BadDigest"):
        st.put_derived("top_of_book_1s/x.parquet", second, sha)
    st.put_derived("top_of_book_1s/x.parquet", second, sha)
    assert st.head("top_of_book_1s/x.parquet") == (second.stat().st_size, sha)
    assert proxy.injected[kind] == 1
