"""Where the archive is, and how S3 is reached: the one parser and the one S3 recipe.

Every entry point (the Dagster resources, ``orderbook query``, the analysts' views, the bars
asset) goes through :meth:`Location.parse` and :class:`S3Settings`, so they accept the same
URLs and read the same settings the same way:

``ORDERBOOK_ARCHIVE_URL``
    ``s3://bucket[/prefix]``, ``file:///absolute/folder`` or a folder path (relative paths
    are taken from the working directory). Its default and its reading live in
    ``orderbook_assets.settings``; this module parses it.
``AWS_REGION`` (or ``AWS_DEFAULT_REGION``, or the profile's region)
    Required for AWS S3 (no endpoint set): a bucket in another region answers with
    redirects that DuckDB and the archive cannot follow, so a missing region is a
    configuration error everywhere. With ``AWS_ENDPOINT_URL_S3`` (a self-hosted store)
    a missing region means ``us-east-1``, which is what those stores accept by default.
``AWS_ENDPOINT_URL_S3`` (or ``AWS_ENDPOINT_URL``)
    An S3-compatible store; path-style addressing is used with it.
credentials
    The standard boto3 chain (environment, shared files, SSO, instance roles). None found
    is a :class:`ConfigError`, raised before any request.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass, field

from pathlib import Path

from orderbook_core.buffer.hours import hour_folder
from orderbook_core.errors import ConfigError

#: The region S3-compatible stores accept when none is configured (Ceph's default zonegroup,
#: MinIO and moto all take it as "no location constraint").
SELF_HOSTED_DEFAULT_REGION = "us-east-1"


# --------------------------------------------------------------------------- the location


@dataclass(frozen=True)
class Location:
    """A parsed archive URL: ``url`` is ``s3://bucket[/prefix]`` or an absolute folder path."""

    url: str

    @classmethod
    def parse(cls, url: str | None) -> Location:
        """Validate and normalise an archive URL.

        Raises:
            ConfigError: empty, an S3 URL without a bucket, a ``file://`` URL naming another
                host, or an unsupported scheme.
        """
        url = (url or "").strip()
        if not url:
            raise ConfigError("ORDERBOOK_ARCHIVE_URL", "is empty; set it to s3://bucket/prefix or a local folder such as data/archive.")
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme == "s3":
            if not parts.netloc:
                raise ConfigError("ORDERBOOK_ARCHIVE_URL", f"{url!r} names no bucket; use s3://bucket/prefix.")
            return cls(f"s3://{parts.netloc}/{parts.path.strip('/')}".rstrip("/"))
        if scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise ConfigError(
                    "ORDERBOOK_ARCHIVE_URL", f"{url!r} names host {parts.netloc!r}; use file:///absolute/folder."
                )
            path = urllib.parse.unquote(parts.path)
            if not path:
                raise ConfigError("ORDERBOOK_ARCHIVE_URL", f"{url!r} names no folder; use file:///absolute/folder.")
            return cls(str(Path(path).resolve()))
        if scheme and len(scheme) > 1:  # a Windows drive letter is not a scheme
            raise ConfigError(
                "ORDERBOOK_ARCHIVE_URL",
                f"scheme {parts.scheme!r} is not supported; use s3://bucket/prefix, file:///folder or a folder path.",
            )
        return cls(str(Path(url).expanduser().resolve()))

    @property
    def is_s3(self) -> bool:
        return self.url.startswith("s3://")

    @property
    def bucket(self) -> str:
        return urllib.parse.urlsplit(self.url).netloc if self.is_s3 else ""

    @property
    def prefix(self) -> str:
        return urllib.parse.urlsplit(self.url).path.strip("/") if self.is_s3 else ""

    @property
    def path(self) -> Path:
        if self.is_s3:
            raise ValueError(f"{self.url} is not a local folder")
        return Path(self.url)

    def dataset(self, name: str) -> str:
        return f"{self.url}/{name}"

    def glob(self, name: str) -> str:
        return f"{self.dataset(name)}/**/*.parquet"

    def hour_glob(self, name: str, hour_us: int) -> str:
        return f"{self.dataset(name)}/{hour_path(hour_us)}/*.parquet"


hour_path = hour_folder  # the one definition lives with the buffer's hours


# --------------------------------------------------------------------------- S3 settings


@dataclass(frozen=True)
class S3Settings:
    """Region, endpoint and credentials for S3, resolved once; builds the boto3 client and
    DuckDB's secret from the same values."""

    region: str = SELF_HOSTED_DEFAULT_REGION
    endpoint_url: str | None = None
    key_id: str | None = None
    secret: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(
        cls,
        environ: dict[str, str] | None = None,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        key_id: str | None = None,
        secret: str | None = None,
        session_token: str | None = None,
        profile: str | None = None,
    ) -> S3Settings:
        """Explicit values first, then the environment and the boto3 chain.

        Raises:
            ConfigError: no region for AWS S3, a malformed endpoint, or no credentials.
        """
        env = os.environ if environ is None else environ
        import boto3  # the chain: env vars, shared files, SSO, container and instance roles

        session = boto3.session.Session(profile_name=profile or env.get("AWS_PROFILE") or None)
        endpoint = endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        if endpoint:
            ep = urllib.parse.urlsplit(endpoint)
            if ep.scheme not in ("http", "https") or not ep.netloc:
                raise ConfigError("AWS_ENDPOINT_URL_S3", f"{endpoint!r} is not an http(s) URL such as http://127.0.0.1:9000.")
        if not (key_id and secret):
            creds = session.get_credentials()
            frozen = creds.get_frozen_credentials() if creds is not None else None
            if frozen is None or not frozen.access_key:
                raise ConfigError(
                    "AWS credentials",
                    "none found for the S3 archive; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE).",
                )
            key_id, secret, session_token = frozen.access_key, frozen.secret_key, frozen.token
        region = region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or session.region_name
        if not region:
            if not endpoint:
                raise ConfigError("AWS_REGION", "is not set but the archive is on AWS S3; set it to the bucket's region, e.g. eu-west-1.")
            region = SELF_HOSTED_DEFAULT_REGION
        return cls(region, endpoint, key_id, secret, session_token)

    def client(self, *, max_attempts: int = 5, connect_timeout: float = 5.0, read_timeout: float = 30.0):
        """The boto3 S3 client every part of orderbook uses.

        Retries: botocore's standard mode (``max_attempts`` in total); nothing is retried on
        top of it except by Dagster's RetryPolicy around a whole step. Checksums: only when an
        operation requires one (``when_required``), because botocore's default CRC32 /
        aws-chunked uploads are refused by Ceph RGW 16 (411), R2, B2 and GCS; our PUTs carry
        their own Content-MD5 (and SHA-256 where the store verifies it).
        """
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            region_name=self.region,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.key_id,
            aws_secret_access_key=self.secret,
            aws_session_token=self.session_token,
            config=Config(
                retries={"mode": "standard", "total_max_attempts": max_attempts},
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                s3={"addressing_style": "path"} if self.endpoint_url else {},
            ),
        )

    def secret_sql(self, scope: str | None = None) -> str:
        """DuckDB's ``CREATE SECRET`` statement (contains the credentials: never log it)."""
        opts = [("TYPE", "s3"), ("KEY_ID", self.key_id or ""), ("SECRET", self.secret or ""),
                ("REGION", self.region)]
        if self.session_token:
            opts.append(("SESSION_TOKEN", self.session_token))
        if self.endpoint_url:
            ep = urllib.parse.urlsplit(self.endpoint_url)
            if ep.scheme not in ("http", "https") or not ep.netloc:
                raise ConfigError("AWS_ENDPOINT_URL_S3", f"{self.endpoint_url!r} is not an http(s) URL.")
            opts += [("ENDPOINT", ep.netloc), ("URL_STYLE", "path")]
            use_ssl = "true" if ep.scheme == "https" else "false"
        else:
            use_ssl = "true"
        if scope:
            opts.append(("SCOPE", scope))
        body = ", ".join(f"{k} {_lit(v) if k != 'TYPE' else v}" for k, v in opts)
        return f"CREATE OR REPLACE SECRET orderbook_s3 ({body}, USE_SSL {use_ssl})"


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
