"""Tests for tests/support/s3.py: moto behind a fault-injecting proxy, driven by real boto3."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import time

import botocore.exceptions
import pytest
from botocore.httpchecksum import AwsChunkedWrapper, Sha256Checksum

from support.s3 import FAULT_KINDS, FaultProxy, MotoServer, s3_client

BUCKET = "archive"
BODY = b"parquet bytes " * 1000


def b64sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def put_checked(client, key: str, body: bytes = BODY, **kw):
    """The archive's upload: IfNoneMatch="*" plus a SHA-256 checksum."""
    return client.put_object(
        Bucket=BUCKET, Key=key, Body=body, ChecksumAlgorithm="SHA256",
        ChecksumSHA256=b64sha256(body), IfNoneMatch="*", **kw,
    )


# moto answers anonymous reads with 403; raw requests carry a (never verified) SigV4 header.
AUTH = {"Authorization": "AWS4-HMAC-SHA256 Credential=testing/20261124/us-east-1/s3/aws4_request,"
                         " SignedHeaders=host, Signature=0"}


def error_code(exc_info) -> str:
    return exc_info.value.response["Error"]["Code"]


def status_of(exc_info) -> int:
    return exc_info.value.response["ResponseMetadata"]["HTTPStatusCode"]


@pytest.fixture(scope="module")
def moto():
    server = MotoServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def direct(moto):
    """A client straight to moto (bypasses the proxy) on a freshly reset backend."""
    moto.reset()
    client = s3_client(moto.url, max_attempts=1)
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def proxy(moto, direct):
    p = FaultProxy(moto.url)
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def client(proxy):
    """Through the proxy, retries off (one attempt), short timeouts."""
    return s3_client(proxy.url, max_attempts=1, connect_timeout=1, read_timeout=2)


def exists_in_moto(direct, key: str) -> bool:
    try:
        direct.head_object(Bucket=BUCKET, Key=key)
        return True
    except botocore.exceptions.ClientError as exc:
        assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        return False


# ----------------------------------------------------------------------------- plain path


def test_urls_and_free_ports(moto, proxy):
    assert moto.url.startswith("http://127.0.0.1:") and moto.port > 0
    assert proxy.url.startswith("http://127.0.0.1:") and proxy.port not in (0, moto.port)


def test_operations_pass_through_unchanged(proxy, direct):
    c = s3_client(proxy.url, max_attempts=1)
    key = "depth_snapshot/date=2026-11-24/hour=13/part-0.parquet"
    c.create_bucket(Bucket="second")
    assert {b["Name"] for b in c.list_buckets()["Buckets"]} == {BUCKET, "second"}

    put = put_checked(c, key)
    assert put["ChecksumSHA256"] == b64sha256(BODY)
    assert put["ETag"] == f'"{hashlib.md5(BODY).hexdigest()}"'

    head = c.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
    assert head["ContentLength"] == len(BODY)
    assert head["ChecksumSHA256"] == b64sha256(BODY)  # x-amz-checksum-sha256 relayed on HEAD
    assert head["ResponseMetadata"]["HTTPHeaders"]["x-amz-checksum-sha256"] == b64sha256(BODY)

    get = c.get_object(Bucket=BUCKET, Key=key)
    assert get["Body"].read() == BODY

    listed = c.list_objects_v2(Bucket=BUCKET, Prefix="depth_snapshot/")
    assert [o["Key"] for o in listed["Contents"]] == [key]

    c.copy_object(Bucket=BUCKET, Key="copy", CopySource={"Bucket": BUCKET, "Key": key},
                  ChecksumAlgorithm="SHA256")
    # DeleteObjects is a POST whose XML body carries a checksum the proxy verifies.
    deleted = c.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": "copy"}]})
    assert [d["Key"] for d in deleted["Deleted"]] == ["copy"]

    c.delete_object(Bucket=BUCKET, Key=key)
    assert not exists_in_moto(direct, key)
    assert c.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0

    with pytest.raises(botocore.exceptions.ClientError) as exc:
        c.head_object(Bucket=BUCKET, Key="missing")
    assert status_of(exc) == 404

    methods = [r.method for r in proxy.requests]
    assert {"PUT", "HEAD", "GET", "DELETE", "POST"} <= set(methods)
    assert all(isinstance(r.outcome, int) for r in proxy.requests)  # no fault fired
    assert sum(proxy.injected.values()) == 0


def test_keep_alive_connection_is_reused(proxy):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    local_ports = set()
    try:
        for i in range(3):
            conn.request("PUT", f"/{BUCKET}/ka-{i}", body=b"x" * (i + 1), headers=AUTH)
            local_ports.add(conn.sock.getsockname()[1])
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200 and not resp.will_close
        conn.request("HEAD", f"/{BUCKET}/ka-2", headers=AUTH)
        local_ports.add(conn.sock.getsockname()[1])
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Length") == "3"
        assert resp.read() == b""  # HEAD: headers only, then the next request follows
        conn.request("GET", f"/{BUCKET}/ka-1", headers=AUTH)
        local_ports.add(conn.sock.getsockname()[1])
        resp = conn.getresponse()
        assert resp.read() == b"xx"
    finally:
        conn.close()
    assert len(local_ports) == 1  # one TCP connection served all five requests
    assert len(proxy.requests) == 5


def test_if_none_match_on_existing_key_is_412(client, direct):
    put_checked(client, "k")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        put_checked(client, "k", body=b"other bytes")
    assert status_of(exc) == 412
    assert error_code(exc) == "PreconditionFailed"
    assert direct.get_object(Bucket=BUCKET, Key="k")["Body"].read() == BODY  # not overwritten


# ----------------------------------------------------------------------------- S3's checks


def test_wrong_checksum_is_bad_digest_without_injection(client, direct, proxy):
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        client.put_object(Bucket=BUCKET, Key="k", Body=BODY, ChecksumAlgorithm="SHA256",
                          ChecksumSHA256=b64sha256(b"something else"), IfNoneMatch="*")
    assert status_of(exc) == 400 and error_code(exc) == "BadDigest"
    assert not exists_in_moto(direct, "k")
    assert proxy.requests[-1] == ("PUT", f"/{BUCKET}/k", 400)
    assert sum(proxy.injected.values()) == 0


def test_wrong_content_md5_is_bad_digest(client, direct):
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        client.put_object(Bucket=BUCKET, Key="k", Body=BODY,
                          ContentMD5=base64.b64encode(hashlib.md5(b"nope").digest()).decode())
    assert error_code(exc) == "BadDigest"
    assert not exists_in_moto(direct, "k")


def test_upload_part_checksum_verified(client, direct):
    mpu = client.create_multipart_upload(Bucket=BUCKET, Key="mp", ChecksumAlgorithm="SHA256")
    part = b"p" * (5 * 1024 * 1024)
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        client.upload_part(Bucket=BUCKET, Key="mp", UploadId=mpu["UploadId"], PartNumber=1,
                           Body=part, ChecksumAlgorithm="SHA256", ChecksumSHA256=b64sha256(b"x"))
    assert error_code(exc) == "BadDigest"
    ok = client.upload_part(Bucket=BUCKET, Key="mp", UploadId=mpu["UploadId"], PartNumber=1,
                            Body=part, ChecksumAlgorithm="SHA256")
    client.complete_multipart_upload(
        Bucket=BUCKET, Key="mp", UploadId=mpu["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": ok["ETag"],
                                    "ChecksumSHA256": ok["ChecksumSHA256"]}]})
    assert direct.head_object(Bucket=BUCKET, Key="mp")["ContentLength"] == len(part)


def _aws_chunked(data: bytes, trailer_value: str | None = None) -> bytes:
    """Exactly what botocore sends over https: its own AwsChunkedWrapper output."""
    raw = AwsChunkedWrapper(io.BytesIO(data), checksum_cls=Sha256Checksum,
                            checksum_name="x-amz-checksum-sha256", chunk_size=4096).read()
    if trailer_value is not None:
        head, _, _ = raw.rpartition(b"x-amz-checksum-sha256:")
        raw = head + b"x-amz-checksum-sha256:" + trailer_value.encode() + b"\r\n\r\n"
    return raw


def _send_chunked(port: int, path: str, payload: bytes, headers: dict) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.putrequest("PUT", path)
        for k, v in {**AUTH, **headers}.items():
            conn.putheader(k, v)
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        for i in range(0, len(payload), 1000):  # HTTP chunks of a different size than aws-chunks
            piece = payload[i:i + 1000]
            conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        conn.send(b"0\r\n\r\n")
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_aws_chunked_trailer_body_is_decoded_and_verified(proxy, direct):
    headers = {
        "Content-Encoding": "aws-chunked",
        "X-Amz-Trailer": "x-amz-checksum-sha256",
        "X-Amz-Decoded-Content-Length": str(len(BODY)),
        "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "x-amz-sdk-checksum-algorithm": "SHA256",
    }
    status, _ = _send_chunked(proxy.port, f"/{BUCKET}/chunked", _aws_chunked(BODY), headers)
    assert status == 200
    assert direct.get_object(Bucket=BUCKET, Key="chunked")["Body"].read() == BODY
    head = direct.head_object(Bucket=BUCKET, Key="chunked", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == b64sha256(BODY)  # the trailer reached moto as a header
    assert "ContentEncoding" not in head  # aws-chunked is framing, not stored

    status, body = _send_chunked(proxy.port, f"/{BUCKET}/chunked-bad",
                                 _aws_chunked(BODY, trailer_value=b64sha256(b"other")), headers)
    assert status == 400 and b"<Code>BadDigest</Code>" in body
    assert not exists_in_moto(direct, "chunked-bad")


def test_plain_http_chunked_body(proxy, direct):
    data = b"0123456789" * 500
    status, _ = _send_chunked(proxy.port, f"/{BUCKET}/te", data,
                              {"x-amz-checksum-sha256": b64sha256(data)})
    assert status == 200
    assert direct.get_object(Bucket=BUCKET, Key="te")["Body"].read() == data


# ----------------------------------------------------------------------------- faults


@pytest.mark.parametrize("kind,status,code", [
    ("status_500", 500, "InternalError"),
    ("slowdown_503", 503, "SlowDown"),
])
def test_retryable_status_fails_with_retries_off(client, direct, proxy, kind, status, code):
    proxy.inject(kind, method="PUT")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        put_checked(client, "k")
    assert status_of(exc) == status and error_code(exc) == code
    assert not exists_in_moto(direct, "k")  # not forwarded
    assert proxy.injected[kind] == 1
    assert proxy.requests == [("PUT", f"/{BUCKET}/k", kind)]


@pytest.mark.parametrize("kind,count,max_attempts", [
    ("status_500", 2, 3),
    ("slowdown_503", 1, 2),  # throttling backoff is 1 s based: keep it short
])
def test_standard_retry_recovers_when_faults_fewer_than_attempts(
        proxy, direct, kind, count, max_attempts):
    c = s3_client(proxy.url, max_attempts=max_attempts)
    put = put_checked(c, "k")
    assert put["ResponseMetadata"]["RetryAttempts"] == 0  # warm-up, no faults yet
    proxy.inject(kind, count=count, method="PUT", path_contains="/k2")
    put = put_checked(c, "k2")
    assert put["ResponseMetadata"]["RetryAttempts"] == count
    assert proxy.injected[kind] == count and proxy.pending == 0
    assert direct.get_object(Bucket=BUCKET, Key="k2")["Body"].read() == BODY
    assert [r.outcome for r in proxy.requests if r.path.endswith("/k2")] == [kind] * count + [200]


@pytest.mark.parametrize("kind,count,max_attempts,code", [
    ("status_500", 3, 3, "InternalError"),
    ("slowdown_503", 2, 2, "SlowDown"),
])
def test_standard_retry_gives_up_when_faults_reach_attempts(
        proxy, direct, kind, count, max_attempts, code):
    c = s3_client(proxy.url, max_attempts=max_attempts)
    proxy.inject(kind, count=count, method="PUT")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        put_checked(c, "k")
    assert error_code(exc) == code
    assert exc.value.response["ResponseMetadata"]["RetryAttempts"] == max_attempts - 1
    assert proxy.injected[kind] == count
    assert not exists_in_moto(direct, "k")


def test_fault_only_hits_matching_method_and_path(client, proxy):
    proxy.inject("status_500", method="HEAD", path_contains="/target")
    put_checked(client, "target")  # PUT does not match
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        client.head_object(Bucket=BUCKET, Key="target")
    assert status_of(exc) == 500  # HEAD error: status only, no body
    assert client.head_object(Bucket=BUCKET, Key="target")["ContentLength"] == len(BODY)
    assert proxy.injected["status_500"] == 1
    proxy.inject("status_500", count=5)
    proxy.clear()
    assert proxy.pending == 0
    assert client.head_object(Bucket=BUCKET, Key="target")["ContentLength"] == len(BODY)
    with pytest.raises(ValueError):
        proxy.inject("no_such_fault")
    assert set(proxy.injected) == set(FAULT_KINDS)


def test_reset_is_a_connection_error(client, direct, proxy):
    proxy.inject("reset", method="PUT")
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        put_checked(client, "k")
    assert proxy.injected["reset"] == 1
    assert not exists_in_moto(direct, "k")  # never forwarded
    put_checked(client, "k")  # the pool recovers with a new connection
    assert exists_in_moto(direct, "k")


def test_reset_on_get_is_retried_by_standard_mode(proxy, direct):
    direct.put_object(Bucket=BUCKET, Key="k", Body=BODY)
    c = s3_client(proxy.url, max_attempts=3)
    proxy.inject("reset", method="GET")
    got = c.get_object(Bucket=BUCKET, Key="k")
    assert got["Body"].read() == BODY
    assert got["ResponseMetadata"]["RetryAttempts"] == 1
    assert proxy.injected["reset"] == 1


def test_stall_makes_client_time_out_but_write_lands_later(proxy, direct):
    proxy.stall_seconds = 0.8
    c = s3_client(proxy.url, max_attempts=1, read_timeout=0.3)
    proxy.inject("stall", method="PUT")
    t0 = time.monotonic()
    with pytest.raises(botocore.exceptions.ReadTimeoutError):
        put_checked(c, "k")
    assert time.monotonic() - t0 < 0.8  # gave up before the proxy even forwarded
    assert proxy.injected["stall"] == 1
    deadline = time.monotonic() + 5
    while not exists_in_moto(direct, "k"):  # ... and yet the write is applied afterwards
        assert time.monotonic() < deadline, "stalled PUT never reached moto"
        time.sleep(0.05)
    assert ("PUT", f"/{BUCKET}/k", "stall") in proxy.requests


def test_lost_response_write_applied_but_client_errors(client, direct, proxy):
    proxy.inject("lost_response", method="PUT")
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        put_checked(client, "k")
    assert proxy.injected["lost_response"] == 1
    assert direct.get_object(Bucket=BUCKET, Key="k")["Body"].read() == BODY  # applied
    # The archive's retry with IfNoneMatch hits its own write: 412, resolved by HEAD.
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        put_checked(client, "k")
    assert status_of(exc) == 412
    head = client.head_object(Bucket=BUCKET, Key="k", ChecksumMode="ENABLED")
    assert head["ContentLength"] == len(BODY) and head["ChecksumSHA256"] == b64sha256(BODY)


def test_corrupt_body_is_rejected_with_bad_digest(client, direct, proxy):
    proxy.inject("corrupt_body", method="PUT")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        put_checked(client, "k")
    assert status_of(exc) == 400 and error_code(exc) == "BadDigest"
    assert proxy.injected["corrupt_body"] == 1
    assert not exists_in_moto(direct, "k")
    assert proxy.requests[-1] == ("PUT", f"/{BUCKET}/k", "corrupt_body")


def test_corrupt_body_without_flexible_checksum_caught_by_payload_hash(proxy, direct):
    # No x-amz-checksum-*, no Content-MD5: the signed payload hash still catches it, like S3.
    c = s3_client(proxy.url, max_attempts=1, request_checksum_calculation="when_required")
    proxy.inject("corrupt_body", method="PUT")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        c.put_object(Bucket=BUCKET, Key="k", Body=BODY)
    assert error_code(exc) == "XAmzContentSHA256Mismatch"
    assert not exists_in_moto(direct, "k")


def test_silent_put_loss_acknowledges_but_stores_nothing(client, direct, proxy):
    proxy.inject("silent_put_loss", method="PUT")
    put = put_checked(client, "k")
    assert put["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert put["ETag"] == f'"{hashlib.md5(BODY).hexdigest()}"'
    assert put["ChecksumSHA256"] == b64sha256(BODY)
    assert proxy.injected["silent_put_loss"] == 1
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        client.head_object(Bucket=BUCKET, Key="k")  # the verifying HEAD catches it
    assert status_of(exc) == 404
    assert not exists_in_moto(direct, "k")
