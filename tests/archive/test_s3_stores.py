"""The archive on each kind of S3-compatible store: moto behind the proxy, playing one row of
docs/s3-compatible-stores.md each (``support.s3.STORES``). The probe must pick the strongest
mechanism the store really has, report the guarantee, and the archive must lose nothing and
double nothing."""

from __future__ import annotations

import hashlib
import logging

import pytest

from orderbook_core.buffer import ledger
from orderbook_assets.archive.store import S3Store
from orderbook_assets.settings import load
from orderbook_core.errors import ArchiveError, ConfigError, IntegrityError

from support.buffer_rows import BASE_HOUR_US, fill_buffer, open_buffer
from support.s3 import FaultProxy, MotoServer, s3_client

from archive.test_s3 import archive_until_done

BUCKET = "archive"
REGION = "eu-west-1"

#: row → (create, verify, public access block, default encryption, weaker guarantee)
EXPECTED = {
    "aws": ("if-none-match", "sha256", "on", "on", False),
    "rgw16": ("if-none-match", "md5-etag", "removed", "not available (400", False),
    "garage": ("head-then-put", "sha256", "not supported (501", "not available (501", True),
    "gcs": ("generation-match", "md5-etag", "not supported (501", "not available (501", False),
    "b2": ("head-then-put", "md5-etag", "not supported (501", "on", True),
}


@pytest.fixture(scope="module")
def moto():
    with MotoServer() as server:
        yield server


@pytest.fixture(params=sorted(EXPECTED))
def row(request):
    return request.param


@pytest.fixture
def proxy(moto, row):
    moto.reset()
    with FaultProxy(moto.url, stall_seconds=2.0, store=row) as p:
        yield p


def provisioned(url: str, setting: str = "") -> S3Store:
    client = s3_client(url, REGION, max_attempts=3, read_timeout=2.0, connect_timeout=1.0,
                       request_checksum_calculation="when_required", response_checksum_validation="when_required")
    st = S3Store(client, BUCKET, "books", setting=setting)
    st.provision(REGION, custom_endpoint=True)
    return st


def test_probe_picks_the_strongest_mechanism_and_reports_the_guarantee(proxy, row, caplog):
    caplog.set_level(logging.INFO, logger="orderbook_assets.archive.store")
    st = provisioned(proxy.url)
    caps = st.capabilities
    print(f"\n{row}: {caps.summary()}")
    create, verify, pab, enc, weaker = EXPECTED[row]
    assert (caps.create, caps.verify) == (create, verify)
    assert caps.hardening["public_access_block"].startswith(pab)
    assert caps.hardening["default_encryption"].startswith(enc)
    assert caps.guarantee.startswith("WEAKER") == weaker
    if row in ("garage", "gcs"):  # the silent overwrite is what the double write catches
        assert caps.facts["if_none_match"] == "ignored (overwrote)"
    summary = st.describe()
    assert summary["create"] == create and summary["verify"].startswith(verify)
    # logged once, with the guarantee
    probed = [r for r in caplog.records if "capabilities probed" in r.getMessage()]
    assert len(probed) == 1 and caps.guarantee in probed[0].getMessage()
    # kept in the bucket: the next store reads the record and sends no probe PUT
    puts_before = sum(1 for r in proxy.requests if r.method == "PUT")
    again = provisioned(proxy.url)
    assert again.capabilities.source.startswith("record") and again.capabilities.facts == caps.facts
    assert sum(1 for r in proxy.requests if r.method == "PUT") == puts_before
    # and writes still work (a public access block that breaks them was undone)
    f_body = b"still writable"
    again.client.put_object(Bucket=BUCKET, Key="books/x", Body=f_body)


def test_each_store_archives_exactly_once_despite_lost_responses_and_corruption(proxy, row, tmp_path):
    path = tmp_path / "buffer.sqlite3"
    rows = fill_buffer(path, ["btcusdt", "ethusdt"], BASE_HOUR_US, 300)
    conn = open_buffer(path)
    st = provisioned(proxy.url)
    proxy.inject("lost_response", method="PUT", path_contains="depth_snapshot")
    proxy.inject("corrupt_body", method="PUT", path_contains="coverage")
    errors = archive_until_done(conn, st, tmp_path / "staging")
    assert errors and proxy.injected["lost_response"] == 1 and proxy.injected["corrupt_body"] == 1
    depth = [k for k in st.list() if k.startswith("depth_snapshot/")]
    assert len(depth) == 1  # nothing doubled
    (part,) = ledger.parts(conn, "depth_snapshot", BASE_HOUR_US)
    assert part.state == "archived" and part.rows == len(rows)  # nothing lost
    assert st.head(part.object_key) == (part.bytes, part.sha256)
    # a different object at the same key is refused, and the stored one is kept
    other = tmp_path / "other"
    other.write_bytes(b"not the part")
    with pytest.raises(IntegrityError, match="differs from ours"):
        st.put_if_absent(part.object_key, other, hashlib.sha256(other.read_bytes()).hexdigest())
    assert hashlib.sha256(st.get(part.object_key)).hexdigest() == part.sha256
    conn.close()


def test_a_wrong_object_blocks_verification_and_says_what_differs(proxy, row, tmp_path):
    st = provisioned(proxy.url)
    f = tmp_path / "p"
    f.write_bytes(b"ours" * 100)
    sha = hashlib.sha256(f.read_bytes()).hexdigest()
    assert st.put_if_absent("k.parquet", f, sha) == "created"
    # replaced behind our back, with our metadata copied (a buggy gateway): the store's own digest tells
    st.client.put_object(Bucket=BUCKET, Key="books/k.parquet", Body=b"ours" * 99 + b"OURS",
                         Metadata={"sha256": sha, "md5": hashlib.md5(f.read_bytes()).hexdigest()})
    got = st.head_detail("k.parquet")
    assert got.size == 400 and got.sha256 != sha
    with pytest.raises(IntegrityError, match=f"SHA-256 {got.sha256} instead of {sha}"):
        st.put_if_absent("k.parquet", f, sha)


def test_a_feature_the_store_lacks_is_one_clear_error_and_not_retried(moto, tmp_path):
    moto.reset()
    with FaultProxy(moto.url, store="b2") as proxy:
        provisioned(proxy.url)  # creates the bucket
        # a wrong override claims If-None-Match works on B2
        st = provisioned(proxy.url, setting="create=if-none-match,verify=md5-etag")
        f = tmp_path / "p"
        f.write_bytes(b"x" * 10)
        with pytest.raises(ConfigError, match=r"does not implement what PUT \S+ with if-none-match needs \(501 NotImplemented.*ORDERBOOK_S3_CAPABILITIES=probe"):
            st.put_if_absent("k", f, hashlib.sha256(f.read_bytes()).hexdigest())
        assert [r.outcome for r in proxy.requests if r.method == "PUT" and r.path.endswith("/books/k")] == [501]


def test_hardening_on_rgw_like_store_is_undone_and_region_falls_back(moto, caplog):
    moto.reset()
    with FaultProxy(moto.url, store="rgw16") as proxy:
        st = provisioned(proxy.url)
        assert st.client.get_bucket_location(Bucket=BUCKET).get("LocationConstraint") in (None, "us-east-1")
        assert "REMOVED" in caplog.text
        assert proxy.public_access_block is False
        puts = [r.outcome for r in proxy.requests if r.method == "PUT" and "write-check" in r.path]
        assert puts == [403]  # the proof that the block bricked writes


def test_wrong_override_value_is_a_config_error():
    with pytest.raises(ConfigError, match="ORDERBOOK_S3_CAPABILITIES"):
        S3Store(None, BUCKET, setting="create=maybe")


def test_missing_credentials_fail_once_with_one_sentence(monkeypatch, tmp_path):
    from dagster import DagsterInstance

    from orderbook_assets.definitions import defs

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("ORDERBOOK_ARCHIVE_URL", "s3://b/p")
    monkeypatch.setenv("ORDERBOOK_BUFFER", str(tmp_path / "buffer.sqlite3"))
    fill_buffer(tmp_path / "buffer.sqlite3", ["btcusdt"], BASE_HOUR_US, 10)
    job = defs.resolve_job_def("archive_hour")
    result = job.execute_in_process(partition_key="2026-11-23-10:00", instance=DagsterInstance.ephemeral(),
                                    raise_on_error=False)
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(failures) == 1 and not retries
    message = failures[0].step_failure_data.error.message
    assert "AWS credentials: none found for the S3 archive; set AWS_ACCESS_KEY_ID" in message


CREATE_RANK = {"if-none-match": 2, "generation-match": 1, "head-then-put": 0}
VERIFY_RANK = {"sha256": 2, "md5-etag": 1, "download": 0}


@pytest.mark.slow  # a fault at each of the probe's requests in turn, 16 probes: make test, not test-fast
@pytest.mark.parametrize("kind", ["lost_response", "silent_put_loss"])
@pytest.mark.parametrize("nth", range(8))
def test_a_fault_during_the_probe_never_records_a_stronger_capability(moto, kind, nth):
    """Garage overwrites despite If-None-Match: a fault on any probe PUT must never make the
    record claim create-only (which would let the archive overwrite without noticing)."""
    moto.reset()
    with FaultProxy(moto.url, store="garage") as proxy:
        proxy.inject(kind, method="PUT", path_contains="/_orderbook/probe-", skip=nth)
        try:
            caps = provisioned(proxy.url).capabilities
        except ArchiveError:
            caps = provisioned(proxy.url).capabilities  # the step's retry: a fresh probe
        assert CREATE_RANK[caps.create] <= CREATE_RANK["head-then-put"]
        assert VERIFY_RANK[caps.verify] <= VERIFY_RANK["sha256"]
        assert caps.facts["if_none_match"] == "ignored (overwrote)"


HOW = {"aws": "sha256", "rgw16": "md5-etag", "garage": "sha256", "gcs": "md5-etag", "b2": "md5-etag"}


def test_derived_bars_are_verified_by_the_strongest_means_on_each_store(proxy, row):
    from orderbook_assets.derived import bars
    from support.synthetic import T0, synthetic_depth

    st = provisioned(proxy.url)
    key = bars.bars_key(T0)
    table = bars.bars_1s(synthetic_depth(start_us=T0, seconds=5))
    bars.write_parquet(table, st, key)
    got = st.head_detail(key)
    assert got.how == HOW[row] and got.size > 0
    assert hashlib.sha256(st.get(key)).hexdigest() == got.sha256
    # a rewrite acknowledged but lost is caught, not taken for the new bars
    proxy.inject("silent_put_loss", method="PUT", path_contains="top_of_book_1s")
    with pytest.raises(ArchiveError, match="HEAD shows"):
        bars.write_parquet(table.slice(0, 3), st, key)
    assert st.head_detail(key) == got


def test_the_setting_states_the_mechanisms_and_skips_the_probe(moto, monkeypatch, tmp_path):
    moto.reset()
    monkeypatch.setenv("ORDERBOOK_S3_CAPABILITIES", "create=head-then-put,verify=download")
    with FaultProxy(moto.url, store="aws") as proxy:
        client = s3_client(proxy.url, REGION, request_checksum_calculation="when_required",
                           response_checksum_validation="when_required")
        st = S3Store(client, BUCKET, "books", setting=load().s3_capabilities)  # as the resource hands it on
        caps = st.provision(REGION, custom_endpoint=True)  # creates the missing bucket
        assert (caps.create, caps.verify, caps.source) == ("head-then-put", "download", "ORDERBOOK_S3_CAPABILITIES")
        assert caps.guarantee.startswith("WEAKER") and caps.hardening["public_access_block"] == "on"
        f = tmp_path / "p"
        f.write_bytes(b"x" * 10)
        sha = hashlib.sha256(f.read_bytes()).hexdigest()
        assert st.put_if_absent("k", f, sha) == "created" and st.head_detail("k").how == "download"
        assert not [r for r in proxy.requests if "/_orderbook/" in r.path and r.method == "PUT" and "write-check" not in r.path]
