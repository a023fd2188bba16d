"""What an S3-compatible store really does, learnt by probing it with scratch keys.

Stores differ exactly where the archive relies on them (docs/s3-compatible-stores.md):
Garage and GCS accept ``If-None-Match: *`` on PUT and overwrite anyway; Ceph RGW 16 accepts
``x-amz-checksum-sha256`` without checking it and returns none on HEAD; B2 rejects checksum
headers. Reading documentation or the ``Server`` header cannot tell these apart; writing the
same scratch key twice can. :func:`probe` does that once per archive location; the outcome is
kept in the bucket itself (``<prefix>/_orderbook/s3-capabilities.json``), because it is a
property of the store, shared by every collector host and Dagster run that writes there, and
survives a lost buffer. It is re-probed when the endpoint changes, or on demand with
``ORDERBOOK_S3_CAPABILITIES=probe``.

``ORDERBOOK_S3_CAPABILITIES`` may also state the mechanisms and skip the probe:
``create=if-none-match|generation-match|head-then-put,verify=sha256|md5-etag|download``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field

from orderbook_core.errors import ArchiveError, ConfigError

log = logging.getLogger(__name__)

SETTING = "ORDERBOOK_S3_CAPABILITIES"
RECORD_KEY = "_orderbook/s3-capabilities.json"
CREATE_MECHANISMS = ("if-none-match", "generation-match", "head-then-put")
VERIFY_MECHANISMS = ("sha256", "md5-etag", "download")
#: Error codes a store gives for a body whose declared digest does not match.
DIGEST_MISMATCH = {"BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch", "XAmzContentSHA256Mismatch"}

GUARANTEES = {
    "if-none-match": "create-only by the store (If-None-Match: *): a racing second writer gets 412",
    "generation-match": "create-only by the store (x-goog-if-generation-match: 0): a racing second writer gets 412",
    "head-then-put": (
        "WEAKER: the store honours no conditional PUT, so the archive checks with HEAD and then PUTs; "
        "two writers racing on one key within that window could overwrite each other (each still verifies "
        "its bytes afterwards); turn on bucket versioning so an overwrite can be undone"
    ),
}
VERIFICATIONS = {
    "sha256": "the store's own SHA-256 (verified on PUT, returned on HEAD)",
    "md5-etag": "the store's ETag, the MD5 of a single-part PUT, against our MD5",
    "download": "the object downloaded and hashed (the store returns no usable digest)",
}


class ProbeInconclusive(ArchiveError):
    """The store's answers contradict each other (a fault on the way): nothing is recorded."""


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def code_of(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def status_of(exc: Exception) -> int:
    return int(getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def message_of(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Message", "")) or str(exc)


def is_precondition_failed(exc: Exception) -> bool:
    return status_of(exc) == 412 or code_of(exc) == "PreconditionFailed"


def is_unsupported(exc: Exception) -> bool:
    """501, or a 400 saying a header or argument is not supported: no retry can fix it."""
    if status_of(exc) == 501 or code_of(exc) in ("NotImplemented", "UnsupportedHeader"):
        return True
    if status_of(exc) == 400 and code_of(exc) not in DIGEST_MISMATCH:
        text = message_of(exc).lower()
        return "unsupported" in text or "not supported" in text or "not implemented" in text
    return False


@dataclass
class Capabilities:
    """The mechanisms the archive uses on one store, and the facts they were chosen from."""

    create: str
    verify: str
    send_sha256: bool = False  # send x-amz-checksum-sha256 on PUT (only where the store checks it)
    atomic_create: bool = True  # the conditional create let exactly one of several racing writers win
    facts: dict[str, str] = field(default_factory=dict)
    hardening: dict[str, str] = field(default_factory=dict)
    source: str = "probe"
    endpoint: str = ""
    probed_at: str = ""

    @property
    def guarantee(self) -> str:
        text = GUARANTEES[self.create]
        if self.create != "head-then-put" and not self.atomic_create:
            text = (f"WEAKER: {self.create} is honoured but not atomic (two racing writers both got 200); "
                    "turn on bucket versioning so an overwrite can be undone")
        return text

    @property
    def weaker(self) -> bool:
        return self.create == "head-then-put" or not self.atomic_create

    def summary(self) -> dict[str, str]:
        """What the Dagster UI and the log show."""
        out = {
            "create": self.create,
            "create_guarantee": self.guarantee,
            "verify": f"{self.verify}: {VERIFICATIONS[self.verify]}",
            "source": self.source,
        }
        out.update({f"probe.{k}": v for k, v in self.facts.items()})
        out.update({f"hardening.{k}": v for k, v in self.hardening.items()})
        return out

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Capabilities:
        raw = json.loads(data)
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        caps = cls(**known)
        if caps.create not in CREATE_MECHANISMS or caps.verify not in VERIFY_MECHANISMS:
            raise ValueError(f"unknown mechanisms {caps.create!r}/{caps.verify!r}")
        return caps

    @classmethod
    def from_setting(cls, value: str) -> Capabilities | None:
        """``create=...,verify=...`` → fixed capabilities; ``probe``/empty → None."""
        value = (value or "").strip()
        if value in ("", "probe", "auto"):
            return None
        opts: dict[str, str] = {}
        for item in value.split(","):
            k, sep, v = item.partition("=")
            if not sep:
                raise ConfigError(SETTING, f"{item!r} is not key=value; use e.g. create=head-then-put,verify=md5-etag or probe.")
            opts[k.strip()] = v.strip()
        create, verify = opts.pop("create", None), opts.pop("verify", None)
        if create not in CREATE_MECHANISMS or verify not in VERIFY_MECHANISMS or opts:
            raise ConfigError(
                SETTING,
                f"{value!r} must name create= one of {', '.join(CREATE_MECHANISMS)} and verify= one of "
                f"{', '.join(VERIFY_MECHANISMS)} (nothing else), or be probe.",
            )
        return cls(create=create, verify=verify, send_sha256=verify == "sha256", source=SETTING)


def choose(facts: dict[str, str]) -> tuple[str, str, bool, bool]:
    """(create, verify, send_sha256, atomic_create) from probe facts: the strongest available."""
    if facts["if_none_match"] == "honoured":
        create, atomic = "if-none-match", facts.get("if_none_match_atomic") == "yes"
    elif facts.get("generation_match") == "honoured":
        create, atomic = "generation-match", True
    else:
        create, atomic = "head-then-put", False
    if facts["sha256_put"] == "verified" and facts["sha256_head"] == "returned":
        verify = "sha256"
    elif facts["etag_is_md5"] == "yes":
        verify = "md5-etag"
    else:
        verify = "download"
    return create, verify, facts["sha256_put"] == "verified", atomic


def probe(client, bucket: str, prefix: str, *, writers: int = 4, rounds: int = 3) -> dict[str, str]:
    """Learn what the store does, with scratch keys under ``<prefix>/_orderbook/probe-<id>-*``.

    Every scratch key is deleted again. Raises ClientError when the store refuses a plain
    PUT: nothing can be archived there, whatever the mechanism.
    """
    from botocore.exceptions import ClientError


    base = f"{prefix}/" if prefix else ""
    run = uuid.uuid4().hex[:12]
    keys: list[str] = []

    def key(name: str) -> str:
        k = f"{base}_orderbook/probe-{run}-{name}"
        keys.append(k)
        return k

    def put(k: str, body: bytes, **kw):
        return client.put_object(Bucket=bucket, Key=k, Body=body, ContentMD5=_b64(hashlib.md5(body).digest()), **kw)

    facts: dict[str, str] = {}
    one, two = f"probe {run} one".encode(), f"probe {run} two, longer".encode()
    try:
        k1 = key("a")
        put(k1, one)  # a store refusing this refuses everything: let it raise
        # The ETag as stored (not as answered: a gateway may answer 200 and store nothing).
        etag = str(client.head_object(Bucket=bucket, Key=k1).get("ETag", "")).strip('"')
        facts["etag_is_md5"] = "yes" if etag == hashlib.md5(one).hexdigest() else "no"

        # Content-MD5: a wrong one must be refused.
        try:
            client.put_object(Bucket=bucket, Key=key("md5"), Body=one, ContentMD5=_b64(hashlib.md5(two).digest()))
            facts["content_md5"] = "ignored"
        except ClientError as exc:
            facts["content_md5"] = "verified" if code_of(exc) in DIGEST_MISMATCH else f"refused ({code_of(exc) or status_of(exc)})"

        # SHA-256: a wrong one must be refused, a right one returned on HEAD.
        k3 = key("sha")
        try:
            put(k3, one, ChecksumAlgorithm="SHA256", ChecksumSHA256=_b64(hashlib.sha256(two).digest()))
            facts["sha256_put"] = "ignored"
        except ClientError as exc:
            if code_of(exc) in DIGEST_MISMATCH:
                facts["sha256_put"] = "verified"
            elif status_of(exc) in (400, 501):
                facts["sha256_put"] = f"rejected ({code_of(exc) or status_of(exc)})"
            else:
                raise
        facts["sha256_head"] = "none"
        if not facts["sha256_put"].startswith("rejected"):
            try:
                put(k3, one, ChecksumAlgorithm="SHA256", ChecksumSHA256=_b64(hashlib.sha256(one).digest()))
                head = client.head_object(Bucket=bucket, Key=k3, ChecksumMode="ENABLED")
                got = head.get("ChecksumSHA256")
                if got == _b64(hashlib.sha256(one).digest()):
                    facts["sha256_head"] = "returned"
                elif got:
                    facts["sha256_head"] = "wrong"
            except ClientError as exc:
                if status_of(exc) not in (400, 501):
                    raise
                facts["sha256_head"] = f"rejected ({code_of(exc) or status_of(exc)})"

        # If-None-Match on an existing key: 412, or silently overwritten (Garage, GCS).
        facts["if_none_match"] = _conditional(client, bucket, k1, two, IfNoneMatch="*")
        if facts["if_none_match"] == "honoured":
            facts["if_none_match_atomic"] = _race(client, bucket, key, writers, rounds, IfNoneMatch="*")
        else:
            k2 = key("gen")
            put(k2, one)
            with goog_headers(client, {"x-goog-if-generation-match": "0"}):
                facts["generation_match"] = _conditional(client, bucket, k2, two)
    finally:
        for k in keys:
            try:
                client.delete_object(Bucket=bucket, Key=k)
            except ClientError as exc:  # a leftover scratch key harms nothing; say so
                log.warning("could not delete probe key s3://%s/%s: %s", bucket, k, exc)
    return facts


def _conditional(client, bucket: str, existing: str, body: bytes, **kw) -> str:
    from botocore.exceptions import ClientError

    try:
        client.put_object(Bucket=bucket, Key=existing, Body=body, ContentMD5=_b64(hashlib.md5(body).digest()), **kw)
    except ClientError as exc:
        if is_precondition_failed(exc):
            return "honoured"
        if status_of(exc) in (400, 501):
            return f"unsupported ({code_of(exc) or status_of(exc)})"
        raise
    # 200: only a changed object proves the condition was ignored; anything else (a 412 lost on
    # the way, a write acknowledged and dropped) leaves the question open: probe again later.
    if client.get_object(Bucket=bucket, Key=existing)["Body"].read() != body:
        raise ProbeInconclusive(f"a conditional PUT of s3://{bucket}/{existing} answered 200 but changed nothing")
    return "ignored (overwrote)"


def _race(client, bucket: str, key, writers: int, rounds: int, **kw) -> str:
    """Several writers create one new key at once: exactly one may win."""
    from botocore.exceptions import ClientError

    worst = 1
    for r in range(rounds):
        k = key(f"race{r}")
        start = threading.Barrier(writers)
        wins: list[int] = []

        def write(i: int) -> None:
            body = f"writer {i}".encode()
            start.wait()
            try:
                client.put_object(Bucket=bucket, Key=k, Body=body, ContentMD5=_b64(hashlib.md5(body).digest()), **kw)
                wins.append(i)
            except ClientError as exc:
                if not (is_precondition_failed(exc) or status_of(exc) == 409):
                    raise

        threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        worst = max(worst, len(wins))
    return "yes" if worst == 1 else f"no ({worst} of {writers} racing writers got 200)"


def stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@contextlib.contextmanager
def goog_headers(client, headers: dict[str, str]):
    """Add ``headers`` to every PutObject of ``client`` inside the block (GCS's
    ``x-goog-if-generation-match`` has no boto3 parameter). The headers are added before
    signing, so they are signed like any other."""
    def add(params, **_kw):
        params["headers"].update(headers)

    client.meta.events.register("before-call.s3.PutObject", add, unique_id="orderbook-goog")
    try:
        yield
    finally:
        client.meta.events.unregister("before-call.s3.PutObject", unique_id="orderbook-goog")
