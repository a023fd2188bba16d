"""Where archive objects go: a local folder (the default) or an S3 bucket.

Both stores offer the same four operations, and neither ever overwrites an object:

``put_if_absent(key, path, sha256)``
    Store the file under ``key`` unless something is already there. If something is,
    compare it by size and SHA-256: the same bytes mean our own earlier write (a crash or
    a lost response in between) and count as success; different bytes raise
    :class:`IntegrityError`.
``head(key)``
    ``(size, sha256 hex)`` of the stored object, or None.
``get(key)`` / ``list(prefix)``
    Read an object; list keys under a prefix.

:class:`LocalStore` writes a temp file, fsyncs it, links it into place (``link`` fails if
the name exists, so there is no overwrite even between two racing writers) and fsyncs the
folder; its ``head`` re-reads the file and hashes it. :class:`S3Store` uses
``PutObject(IfNoneMatch="*")`` with a SHA-256 checksum, resolves a 412 by HEAD, and verifies
with ``HeadObject(ChecksumMode="ENABLED")``.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import random
import time
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from orderbook_collector.errors import ArchiveError, ConfigError, IntegrityError
from orderbook_collector.fsutil import fsync_dir, sha256_file

log = logging.getLogger(__name__)


class ArchiveStore(Protocol):
    url: str

    def put_if_absent(self, key: str, path: Path, sha256: str) -> str: ...
    def put_derived(self, key: str, path: Path, sha256: str) -> None: ...
    def head(self, key: str) -> tuple[int, str] | None: ...
    def get(self, key: str) -> bytes: ...
    def list(self, prefix: str = "") -> list[str]: ...


def parse_archive_url(url: str) -> tuple[str, str, str]:
    """``s3://bucket/prefix`` → ("s3", bucket, prefix); a folder → ("local", path, "").

    Raises:
        ConfigError: an s3 URL without a bucket, or an unsupported scheme.
    """
    url = url.strip()
    if not url:
        raise ConfigError("ORDERBOOK_ARCHIVE_URL", "is empty; set it to s3://bucket/prefix or a local folder such as data/archive.")
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError("ORDERBOOK_ARCHIVE_URL", f"{url!r} names no bucket; use s3://bucket/prefix.")
        return "s3", parsed.netloc, parsed.path.strip("/")
    if parsed.scheme in ("", "file"):
        return "local", parsed.path if parsed.scheme == "file" else url, ""
    raise ConfigError(
        "ORDERBOOK_ARCHIVE_URL", f"scheme {parsed.scheme!r} is not supported; use s3://bucket/prefix or a local folder."
    )


# --------------------------------------------------------------------------- local folder


class LocalStore:
    """An archive folder on a local file system."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def put_if_absent(self, key: str, path: Path, sha256: str) -> str:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
            with open(path, "rb") as src, open(tmp, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(tmp, dest)  # atomic and never replaces an existing file
                created = True
            except FileExistsError:
                created = False
            finally:
                tmp.unlink(missing_ok=True)
            fsync_dir(dest.parent)
            if created:
                return "created"
        self._compare(key, path.stat().st_size, sha256)
        return "existed"

    def _compare(self, key: str, size: int, sha256: str) -> None:
        got = self.head(key)
        if got != (size, sha256):
            raise IntegrityError(f"{self._path(key)} exists with (size, sha256) {got}, not ours {(size, sha256)}")

    def put_derived(self, key: str, path: Path, sha256: str) -> None:
        """Write or replace a derived object (one rebuilt from archived data), atomically, then verify."""
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        try:
            with open(path, "rb") as src, open(tmp, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(dest.parent)
        self._compare(key, path.stat().st_size, sha256)

    def head(self, key: str) -> tuple[int, str] | None:
        p = self._path(key)
        if not p.exists():
            return None
        return sha256_file(p)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise ArchiveError(f"{self._path(key)} does not exist") from exc

    def list(self, prefix: str = "") -> list[str]:
        base = self.root / prefix if prefix else self.root
        if not base.exists():
            return []
        return sorted(
            str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file() and not p.name.startswith(".")
        )




# --------------------------------------------------------------------------- S3


def _b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def _hex(b64: str) -> str:
    return base64.b64decode(b64).hex()


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _status(exc: Exception) -> int:
    return int(getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


#: Error codes worth another attempt after botocore's own retries gave up (or never retried).
RETRYABLE_CODES = {"BadDigest", "XAmzContentSHA256Mismatch", "InternalError", "SlowDown", "ServiceUnavailable", "RequestTimeout"}


def is_retryable(exc: Exception) -> bool:
    """Whether a failed S3 call may succeed when repeated.

    Retryable: 5xx answers, throttling, a body damaged in flight (400 BadDigest or
    XAmzContentSHA256Mismatch: botocore does not retry these), and network errors
    (reset, timeout, connection refused). Not retryable: everything else in 4xx
    (access denied, no such bucket, a checksum mismatch that is ours).
    """
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        return _code(exc) in RETRYABLE_CODES or _status(exc) >= 500
    return isinstance(exc, BotoCoreError)


class S3Store:
    """An archive under ``s3://bucket/prefix`` through a boto3 client.

    Args:
        client: a boto3 S3 client (from dagster-aws ``S3Resource``; retries in standard mode).
        bucket, prefix: where objects go; keys are ``prefix/key``.
        attempts: our own attempts around each call, on top of botocore's retries, with
            exponential backoff and full jitter starting at ``backoff`` seconds.
    """

    def __init__(self, client, bucket: str, prefix: str = "", *, attempts: int = 4, backoff: float = 0.2) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.attempts = attempts
        self.backoff = backoff

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _retry(self, what: str, fn):
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except Exception as exc:
                if not is_retryable(exc) or attempt == self.attempts:
                    raise ArchiveError(f"{what} failed after {attempt} attempt(s): {exc}") from exc
                delay = random.uniform(0, self.backoff * 2 ** (attempt - 1))
                log.warning("%s failed (%s); attempt %d of %d in %.2fs", what, exc, attempt + 1, self.attempts, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def put_if_absent(self, key: str, path: Path, sha256: str) -> str:
        body = Path(path).read_bytes()
        if hashlib.sha256(body).hexdigest() != sha256:
            raise IntegrityError(f"{path} no longer has SHA-256 {sha256}; re-export the part")
        from botocore.exceptions import ClientError

        def put() -> str:
            try:
                self.client.put_object(
                    Bucket=self.bucket, Key=self._key(key), Body=body, IfNoneMatch="*",
                    ChecksumAlgorithm="SHA256", ChecksumSHA256=_b64(sha256),
                )
                return "created"
            except ClientError as exc:
                if _status(exc) == 412 or _code(exc) in ("PreconditionFailed", "ConditionalRequestConflict"):
                    return "exists"
                raise

        outcome = self._retry(f"PUT s3://{self.bucket}/{self._key(key)}", put)
        if outcome == "exists":
            # Maybe our own earlier write: compare, never overwrite.
            got = self.head(key)
            if got is None:
                raise ArchiveError(f"PUT of {self._key(key)} answered 412 but HEAD finds nothing; retry later")
            if got != (len(body), sha256):
                raise IntegrityError(
                    f"s3://{self.bucket}/{self._key(key)} exists with (size, sha256) {got}, not ours {(len(body), sha256)}"
                )
            return "existed"
        return outcome

    def put_derived(self, key: str, path: Path, sha256: str) -> None:
        """Write or replace a derived object (one rebuilt from archived data), then verify by HEAD.

        Only for datasets that are recomputed as parts arrive (``top_of_book_1s``); the
        archive's own parts always go through :meth:`put_if_absent`.
        """
        body = Path(path).read_bytes()
        self._retry(
            f"PUT s3://{self.bucket}/{self._key(key)}",
            lambda: self.client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=body, ChecksumAlgorithm="SHA256", ChecksumSHA256=_b64(sha256)
            ),
        )
        got = self.head(key)
        if got != (len(body), sha256):
            raise ArchiveError(f"s3://{self.bucket}/{self._key(key)}: HEAD shows {got} after PUT, expected {(len(body), sha256)}")

    def head(self, key: str) -> tuple[int, str] | None:
        from botocore.exceptions import ClientError

        def head():
            try:
                return self.client.head_object(Bucket=self.bucket, Key=self._key(key), ChecksumMode="ENABLED")
            except ClientError as exc:
                if _status(exc) == 404 or _code(exc) in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise

        resp = self._retry(f"HEAD s3://{self.bucket}/{self._key(key)}", head)
        if resp is None:
            return None
        checksum = resp.get("ChecksumSHA256")
        return int(resp["ContentLength"]), _hex(checksum) if checksum else ""

    def get(self, key: str) -> bytes:
        def get() -> bytes:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

        return self._retry(f"GET s3://{self.bucket}/{self._key(key)}", get)

    def list(self, prefix: str = "") -> list[str]:
        keys: list[str] = []
        base = self._key(prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=base):
            for obj in page.get("Contents", []):
                k = obj["Key"]
                keys.append(k[len(self.prefix) + 1 :] if self.prefix else k)
        return sorted(keys)

    def ensure_bucket(self, region: str) -> bool:
        """Create the bucket if missing (LocationConstraint from ``region``; none for
        us-east-1), then turn on block-public-access and default encryption where the
        server supports them. Returns True if it created the bucket."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
            return False
        except ClientError as exc:
            if _status(exc) not in (404, 400) and _code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise ArchiveError(f"cannot use bucket {self.bucket}: {exc}") from exc
        kwargs: dict = {"Bucket": self.bucket}
        if region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.client.create_bucket(**kwargs)
        except ClientError as exc:
            if _code(exc) not in ("BucketAlreadyOwnedByYou",):
                raise ArchiveError(f"cannot create bucket {self.bucket} in {region}: {exc}") from exc
        for what, call in (
            ("block public access", lambda: self.client.put_public_access_block(
                Bucket=self.bucket,
                PublicAccessBlockConfiguration={
                    "BlockPublicAcls": True, "IgnorePublicAcls": True,
                    "BlockPublicPolicy": True, "RestrictPublicBuckets": True,
                },
            )),
            ("default encryption", lambda: self.client.put_bucket_encryption(
                Bucket=self.bucket,
                ServerSideEncryptionConfiguration={
                    "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
                },
            )),
        ):
            try:
                call()
            except ClientError as exc:  # S3-compatible servers without the feature
                log.warning("bucket %s: %s not set: %s", self.bucket, what, exc)
        return True
