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
folder; its ``head`` re-reads the file and hashes it. :class:`S3Store` first learns what its
store honours (:mod:`.capabilities`), then creates only if absent by the strongest mechanism
it has (``If-None-Match: *``, GCS's ``x-goog-if-generation-match: 0``, else HEAD then PUT),
sends ``Content-MD5`` on every PUT, resolves a 412 by comparing, and verifies by the store's
SHA-256, else by the ETag (MD5), else by downloading and hashing. It has no retry loop of its
own: botocore's standard mode and Dagster's RetryPolicy are the two layers.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import uuid
from pathlib import Path
from typing import NamedTuple, Protocol

from orderbook_core.errors import ArchiveError, ConfigError, IntegrityError
from orderbook_core.fsutil import fsync_dir, sha256_file

from orderbook_assets.archive import capabilities as caps_mod
from orderbook_assets.archive.capabilities import Capabilities, goog_headers
from orderbook_assets.archive.location import Location, S3Settings

log = logging.getLogger(__name__)


class ArchiveStore(Protocol):
    url: str

    def put_if_absent(self, key: str, path: Path, sha256: str) -> str: ...
    def put_derived(self, key: str, path: Path, sha256: str) -> None: ...
    def head(self, key: str) -> tuple[int, str] | None: ...
    def get(self, key: str) -> bytes: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def describe(self) -> dict[str, str]: ...


def parse_archive_url(url: str) -> tuple[str, str, str]:
    """``s3://bucket/prefix`` → ("s3", bucket, prefix); a folder → ("local", path, "").
    A thin view of :meth:`Location.parse`, the one parser of archive URLs.

    Raises:
        ConfigError: an s3 URL without a bucket, or an unsupported scheme.
    """
    loc = Location.parse(url)
    return ("s3", loc.bucket, loc.prefix) if loc.is_s3 else ("local", loc.url, "")


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

    def describe(self) -> dict[str, str]:
        return {"create": "link(2) of a fsynced temp file: atomic, never replaces",
                "verify": "re-read and SHA-256"}

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


class StoredObject(NamedTuple):
    """What is stored at a key: size, SHA-256 (hex) and how that SHA-256 is known."""

    size: int
    sha256: str
    how: str  # sha256 | md5-etag | download


class S3Store:
    """An archive under ``s3://bucket/prefix`` through a boto3 client.

    Args:
        client: a boto3 S3 client (:meth:`S3Settings.client`: botocore standard-mode
            retries; this class adds none of its own).
        bucket, prefix: where objects go; keys are ``prefix/key``.
        capabilities: the mechanisms to use; None: the bucket's stored record, or a probe
            on first use (:mod:`.capabilities`).
        setting: the value of ``ORDERBOOK_S3_CAPABILITIES`` (``probe`` forces a new probe; empty:
            the record, or a probe).
    """

    def __init__(self, client, bucket: str, prefix: str = "", *, capabilities: Capabilities | None = None,
                 setting: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.setting = setting
        self._caps = capabilities or caps_mod.Capabilities.from_setting(self.setting)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @property
    def endpoint(self) -> str:
        return str(self.client.meta.endpoint_url)

    # ------------------------------------------------------------------ errors

    def _call(self, what: str, fn):
        """Run S3 calls; turn a failure into our errors (see :meth:`_error`)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn()
        except (ClientError, BotoCoreError) as exc:
            raise self._error(what, exc) from exc

    def _error(self, what: str, exc: Exception) -> Exception:
        """What no retry can fix (missing credentials, 403, a feature the store lacks)
        becomes one clear ConfigError, which fails the step without Dagster retries;
        the rest an ArchiveError, which the RetryPolicy retries."""
        from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return ConfigError(
                "AWS credentials", f"none usable for {self.url} ({exc}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)."
            )
        if isinstance(exc, ClientError):
            status, code, msg = caps_mod.status_of(exc), caps_mod.code_of(exc), caps_mod.message_of(exc)
            if caps_mod.is_unsupported(exc):
                return ConfigError(
                    caps_mod.SETTING,
                    f"the store at {self.endpoint} does not implement what {what} needs ({status} {code}: {msg}); "
                    f"set {caps_mod.SETTING}=probe to learn its capabilities again.",
                )
            if status == 403:
                return ConfigError(
                    "AWS credentials",
                    f"{what} was refused (403 {code}); check the credentials and the bucket policy of {self.bucket}.",
                )
            return ArchiveError(f"{what} failed: {status} {code} {msg}")
        return ArchiveError(f"{what} failed: {exc}")

    # ------------------------------------------------------------------ capabilities

    @property
    def capabilities(self) -> Capabilities:
        if self._caps is None:
            self._caps = self._load_or_probe(hardening={})
        return self._caps

    def describe(self) -> dict[str, str]:
        return self.capabilities.summary()

    def provision(self, region: str, *, custom_endpoint: bool) -> Capabilities:
        """Make the bucket usable once: read the capability record; only if there is none,
        create the bucket if missing (hardened), probe the store and store the record."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            if self._caps is not None:
                if self._caps.source == caps_mod.SETTING:  # stated, not probed: the bucket may still be missing
                    _created, self._caps.hardening = self.ensure_bucket(region, custom_endpoint=custom_endpoint)
                return self._caps
            if self.setting.strip() != "probe":
                recorded = self._read_record()
                if recorded is not None:
                    self._caps = recorded
                    return recorded
            _created, hardening = self.ensure_bucket(region, custom_endpoint=custom_endpoint)
            self._caps = self._load_or_probe(hardening=hardening, force=True)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(f"preparing {self.url}", exc) from exc
        return self._caps

    def _read_record(self) -> Capabilities | None:
        from botocore.exceptions import ClientError

        try:
            data = self.client.get_object(Bucket=self.bucket, Key=self._key(caps_mod.RECORD_KEY))["Body"].read()
        except ClientError as exc:
            if caps_mod.code_of(exc) in ("NoSuchKey", "NoSuchBucket", "404") or caps_mod.status_of(exc) == 404:
                return None
            raise self._error(f"GET {self.url}/{caps_mod.RECORD_KEY}", exc) from exc
        try:
            caps = caps_mod.Capabilities.from_json(data)
        except (ValueError, TypeError) as exc:
            log.warning("%s/%s is unreadable (%s); probing the store again", self.url, caps_mod.RECORD_KEY, exc)
            return None
        if caps.endpoint != self.endpoint:
            log.warning("%s: capabilities were probed at %s, the endpoint is now %s; probing again",
                        self.url, caps.endpoint, self.endpoint)
            return None
        caps.source = f"record {caps_mod.RECORD_KEY} (probed {caps.probed_at})"
        log.info("%s: S3 capabilities from the bucket's record: %s", self.url, caps.summary())
        return caps

    def _load_or_probe(self, *, hardening: dict[str, str], force: bool = False) -> Capabilities:
        if not force and self.setting.strip() != "probe":
            recorded = self._read_record()
            if recorded is not None:
                return recorded
        facts = self._call(f"probing {self.url}", lambda: caps_mod.probe(self.client, self.bucket, self.prefix))
        create, verify, send_sha256, atomic = caps_mod.choose(facts)
        caps = caps_mod.Capabilities(
            create=create, verify=verify, send_sha256=send_sha256, atomic_create=atomic, facts=facts,
            hardening=hardening, source="probe", endpoint=self.endpoint, probed_at=caps_mod.stamp(),
        )
        (log.warning if caps.weaker else log.info)("%s: S3 capabilities probed: %s", self.url, caps.summary())
        body = caps.to_json()
        self._call(
            f"PUT {self.url}/{caps_mod.RECORD_KEY}",
            lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(caps_mod.RECORD_KEY), Body=body,
                                           ContentMD5=base64.b64encode(hashlib.md5(body).digest()).decode(),
                                           ContentType="application/json"),
        )
        return caps

    # ------------------------------------------------------------------ writes

    def _put(self, key: str, body: bytes, sha256: str, condition: str | None) -> None:
        """One PUT with Content-MD5 (and SHA-256 where the store checks it) and, for a
        create, the store's create-only condition. Raises ClientError on 412."""
        caps = self.capabilities
        md5 = hashlib.md5(body)
        kw: dict = dict(Bucket=self.bucket, Key=self._key(key), Body=body,
                        ContentMD5=base64.b64encode(md5.digest()).decode(),
                        Metadata={"sha256": sha256, "md5": md5.hexdigest()})
        if caps.send_sha256:
            kw.update(ChecksumAlgorithm="SHA256", ChecksumSHA256=_b64(sha256))
        if condition == "if-none-match":
            kw["IfNoneMatch"] = "*"
        if condition == "generation-match":
            with goog_headers(self.client, {"x-goog-if-generation-match": "0"}):
                self.client.put_object(**kw)
        else:
            self.client.put_object(**kw)

    def put_if_absent(self, key: str, path: Path, sha256: str) -> str:
        body = Path(path).read_bytes()
        if hashlib.sha256(body).hexdigest() != sha256:
            raise IntegrityError(f"{path} no longer has SHA-256 {sha256}; re-export the part")
        from botocore.exceptions import ClientError

        caps = self.capabilities
        where = f"s3://{self.bucket}/{self._key(key)}"
        exists = False
        if caps.create == "head-then-put":
            exists = self.head_detail(key) is not None
        if not exists:
            def put() -> bool:
                try:
                    self._put(key, body, sha256, caps.create if caps.create != "head-then-put" else None)
                    return False
                except ClientError as exc:
                    if caps_mod.is_precondition_failed(exc):
                        return True
                    if caps_mod.status_of(exc) == 409 and caps_mod.code_of(exc) == "ConditionalRequestConflict":
                        raise ArchiveError(f"PUT {where}: another write of this key is in flight (409); retry later") from exc
                    raise

            exists = self._call(f"PUT {where} with {caps.create}", put)
        if not exists:
            return "created"
        # Maybe our own earlier write (a lost response, a crash): compare, never overwrite.
        got = self.head_detail(key)
        if got is None:
            raise ArchiveError(f"PUT of {where} answered 412 but HEAD finds nothing; retry later")
        self._compare(where, got, len(body), sha256, "exists")
        return "existed"

    @staticmethod
    def _compare(where: str, got: StoredObject, size: int, sha256: str, what: str) -> None:
        diffs = []
        if got.size != size:
            diffs.append(f"size {got.size} instead of {size}")
        if got.sha256 != sha256:
            diffs.append(f"SHA-256 {got.sha256 or '(none)'} instead of {sha256}")
        if diffs:
            raise IntegrityError(f"{where} {what} but differs from ours: {', '.join(diffs)} (known by {got.how})")

    def put_derived(self, key: str, path: Path, sha256: str) -> None:
        """Write or replace a derived object (one rebuilt from archived data), then verify.

        Only for datasets that are recomputed as parts arrive (``top_of_book_1s``); the
        archive's own parts always go through :meth:`put_if_absent`.
        """
        body = Path(path).read_bytes()
        if hashlib.sha256(body).hexdigest() != sha256:
            raise IntegrityError(f"{path} no longer has SHA-256 {sha256}")
        where = f"s3://{self.bucket}/{self._key(key)}"
        self._call(f"PUT {where}", lambda: self._put(key, body, sha256, None))
        got = self.head_detail(key)
        if got is None or (got.size, got.sha256) != (len(body), sha256):
            shown = None if got is None else (got.size, got.sha256)
            raise ArchiveError(f"{where}: HEAD shows {shown} after PUT, expected {(len(body), sha256)}; it will be written again")

    # ------------------------------------------------------------------ reads

    def head(self, key: str) -> tuple[int, str] | None:
        """``(size, sha256 hex)`` of the stored object, or None; the SHA-256 is always that of
        the stored bytes (see :meth:`head_detail`), never an unchecked claim."""
        got = self.head_detail(key)
        return None if got is None else (got.size, got.sha256)

    def head_detail(self, key: str) -> StoredObject | None:
        """Size and SHA-256 of the stored object, by the strongest means the store offers:

        - ``sha256``: the store's SHA-256, where the probe showed it checks it on PUT;
        - ``md5-etag``: the store computed the ETag (MD5 of a single-part PUT) from the bytes
          it holds; when it equals the MD5 we recorded next to our SHA-256 at upload, the
          stored bytes are the ones we hashed, so our SHA-256 is theirs;
        - ``download``: otherwise, download and hash.
        """
        from botocore.exceptions import ClientError

        caps = self.capabilities
        where = f"s3://{self.bucket}/{self._key(key)}"
        kw = {"ChecksumMode": "ENABLED"} if caps.verify == "sha256" else {}

        def head():
            try:
                return self.client.head_object(Bucket=self.bucket, Key=self._key(key), **kw)
            except ClientError as exc:
                if caps_mod.status_of(exc) == 404 or caps_mod.code_of(exc) in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise

        resp = self._call(f"HEAD {where}", head)
        if resp is None:
            return None
        size = int(resp["ContentLength"])
        checksum = resp.get("ChecksumSHA256")
        if caps.verify == "sha256" and checksum and "-" not in checksum:
            return StoredObject(size, _hex(checksum), "sha256")
        meta = {k.lower(): v for k, v in (resp.get("Metadata") or {}).items()}
        etag = str(resp.get("ETag", "")).strip('"')
        if caps.verify in ("sha256", "md5-etag") and meta.get("md5") and etag == meta["md5"] and meta.get("sha256"):
            return StoredObject(size, meta["sha256"], "md5-etag")
        data = self.get(key)
        return StoredObject(len(data), hashlib.sha256(data).hexdigest(), "download")

    def get(self, key: str) -> bytes:
        where = f"s3://{self.bucket}/{self._key(key)}"
        return self._call(f"GET {where}", lambda: self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read())

    def list(self, prefix: str = "") -> list[str]:
        keys: list[str] = []
        base = self._key(prefix) if prefix else (self.prefix + "/" if self.prefix else "")

        def pages():
            paginator = self.client.get_paginator("list_objects_v2")
            return [p for p in paginator.paginate(Bucket=self.bucket, Prefix=base)]

        for page in self._call(f"LIST {self.url}", pages):
            for obj in page.get("Contents", []):
                k = obj["Key"]
                k = k[len(self.prefix) + 1 :] if self.prefix else k
                if not k.startswith("_orderbook/"):
                    keys.append(k)
        return sorted(keys)

    # ------------------------------------------------------------------ the bucket

    def ensure_bucket(self, region: str, *, custom_endpoint: bool | None = None) -> tuple[bool, dict[str, str]]:
        """Create the bucket if missing, then harden it where the store allows.

        ``LocationConstraint`` follows ``region`` (none for us-east-1). On a custom endpoint
        the region may be no zonegroup the store knows (Ceph answers InvalidLocationConstraint):
        then the bucket is created without a constraint, as such stores expect.
        Returns (created, hardening outcome); an existing bucket is left as its owner set it.
        """
        from botocore.exceptions import ClientError

        if custom_endpoint is None:
            custom_endpoint = not self.endpoint.endswith("amazonaws.com")
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return False, {"bucket": "existed: left as its owner configured it"}
        except ClientError as exc:
            if caps_mod.status_of(exc) not in (404, 400) and caps_mod.code_of(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise self._error(f"HEAD bucket {self.bucket}", exc) from exc
        kwargs: dict = {"Bucket": self.bucket}
        if region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.client.create_bucket(**kwargs)
        except ClientError as exc:
            code = caps_mod.code_of(exc)
            if code == "InvalidLocationConstraint" and custom_endpoint and "CreateBucketConfiguration" in kwargs:
                log.warning("bucket %s: the store at %s knows no region %r (%s); creating it without a location "
                            "constraint", self.bucket, self.endpoint, region, code)
                try:
                    self.client.create_bucket(Bucket=self.bucket)
                except ClientError as again:
                    if caps_mod.code_of(again) != "BucketAlreadyOwnedByYou":
                        raise ArchiveError(f"cannot create bucket {self.bucket} at {self.endpoint}: {again}") from again
            elif code != "BucketAlreadyOwnedByYou":
                raise ArchiveError(
                    f"cannot create bucket {self.bucket} in {region}: {exc}; check AWS_REGION or create the bucket yourself"
                ) from exc
        return True, self.harden()

    def harden(self) -> dict[str, str]:
        """Block public access and turn on default encryption where the store supports them,
        and prove that writes still work afterwards: Ceph RGW 16 accepts a public access block
        and then refuses every PutObject (tracker 49135), so the block is undone there."""
        from botocore.exceptions import ClientError

        out: dict[str, str] = {}
        try:
            self.client.put_public_access_block(
                Bucket=self.bucket,
                PublicAccessBlockConfiguration={
                    "BlockPublicAcls": True, "IgnorePublicAcls": True,
                    "BlockPublicPolicy": True, "RestrictPublicBuckets": True,
                },
            )
        except ClientError as exc:
            out["public_access_block"] = f"not supported ({caps_mod.status_of(exc)} {caps_mod.code_of(exc)})"
        else:
            probe_key = self._key(f"_orderbook/write-check-{uuid.uuid4().hex[:12]}")
            try:
                self.client.put_object(Bucket=self.bucket, Key=probe_key, Body=b"write check")
                self.client.delete_object(Bucket=self.bucket, Key=probe_key)
                out["public_access_block"] = "on"
            except ClientError as exc:
                self.client.delete_public_access_block(Bucket=self.bucket)
                log.error(
                    "bucket %s: with a public access block set, the store at %s refused a PUT (%s %s): the block "
                    "is REMOVED again so the archive can write; block public access another way (bucket policy)",
                    self.bucket, self.endpoint, caps_mod.status_of(exc), caps_mod.code_of(exc),
                )
                out["public_access_block"] = (
                    f"removed: the store refused writes with it set ({caps_mod.status_of(exc)} {caps_mod.code_of(exc)})"
                )
        try:
            self.client.put_bucket_encryption(
                Bucket=self.bucket,
                ServerSideEncryptionConfiguration={
                    "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
                },
            )
            out["default_encryption"] = "on (SSE-S3, AES256)"
        except ClientError as exc:
            out["default_encryption"] = f"not available ({caps_mod.status_of(exc)} {caps_mod.code_of(exc)})"
        (log.warning if any(not v.startswith("on") for v in out.values()) else log.info)(
            "bucket %s created; hardening: %s", self.bucket, out)
        return out


def open_store(location: Location, settings: S3Settings | None = None, *, client=None,
               provision: bool = True, capabilities: str = "") -> ArchiveStore:
    """The store for ``location``: a :class:`LocalStore`, or an :class:`S3Store` whose bucket
    is provisioned and whose capabilities are known (record or probe) before it is returned.
    ``capabilities``: the value of ``ORDERBOOK_S3_CAPABILITIES`` (:class:`S3Store`)."""
    if not location.is_s3:
        return LocalStore(location.path)
    settings = settings or S3Settings.from_env()
    store = S3Store(client or settings.client(), location.bucket, location.prefix, setting=capabilities)
    if provision:
        store.provision(settings.region, custom_endpoint=settings.endpoint_url is not None)
    return store
