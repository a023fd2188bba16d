"""Resources, configured from the environment at run time (docs/configuration.md).

``ORDERBOOK_BUFFER`` (default ``data/buffer.sqlite3``), ``ORDERBOOK_ARCHIVE_URL`` (default
``data/archive``) and ``ORDERBOOK_RETENTION_HOURS`` (default 24) are read when a run starts,
so the same definitions serve every deployment. S3 goes through dagster-aws's
:class:`~dagster_aws.s3.S3Resource` with nothing set: boto3 reads ``AWS_REGION``,
``AWS_ENDPOINT_URL_S3`` and the credentials chain itself, so no secret is ever in code,
config files or the UI.
"""


import os
import sqlite3
from pathlib import Path

import boto3
from botocore.config import Config
from dagster import ConfigurableResource, ResourceDependency
from dagster_aws.s3 import S3Resource

from orderbook_collector import buffer as buf
from orderbook_collector.errors import ConfigError

from orderbook_assets.archive.store import ArchiveStore, LocalStore, S3Store, parse_archive_url

DEFAULT_BUFFER = "data/buffer.sqlite3"
DEFAULT_ARCHIVE = "data/archive"
DEFAULT_RETENTION_HOURS = 24.0


class BufferResource(ConfigurableResource):
    """The collector's SQLite buffer, and the staging folder beside it."""

    path: str | None = None  # None: $ORDERBOOK_BUFFER or data/buffer.sqlite3
    retention_hours: float | None = None  # None: $ORDERBOOK_RETENTION_HOURS or 24

    def resolved_path(self) -> Path:
        return Path(self.path or os.environ.get("ORDERBOOK_BUFFER") or DEFAULT_BUFFER)

    def connect(self) -> sqlite3.Connection:
        return buf.connect(self.resolved_path(), synchronous="FULL", create=False)

    def staging_dir(self) -> Path:
        """Where parts are written before upload: ``<buffer folder>/staging``."""
        return self.resolved_path().parent / "staging"

    def retention(self) -> float:
        if self.retention_hours is not None:
            value = str(self.retention_hours)
        else:
            value = os.environ.get("ORDERBOOK_RETENTION_HOURS", str(DEFAULT_RETENTION_HOURS))
        try:
            hours = float(value)
        except ValueError:
            hours = -1.0
        if not hours >= 0:
            raise ConfigError(
                "ORDERBOOK_RETENTION_HOURS", f"{value!r} is not a number of hours; use 0 or more, e.g. 24."
            )
        return hours


class ArchiveS3Resource(S3Resource):
    """dagster-aws's S3Resource plus timeouts; retries in botocore's standard mode."""

    connect_timeout: float = 5.0
    read_timeout: float = 30.0

    def get_client(self):
        session = boto3.session.Session(profile_name=self.profile_name)
        return session.client(
            "s3",
            region_name=self.region(),
            endpoint_url=self.endpoint_url,
            use_ssl=self.use_ssl,
            verify=self.verify,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            aws_session_token=self.aws_session_token,
            config=Config(
                retries={"mode": "standard", "max_attempts": self.max_attempts},
                connect_timeout=self.connect_timeout,
                read_timeout=self.read_timeout,
            ),
        )

    def region(self) -> str:
        region = (
            self.region_name
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or boto3.session.Session(profile_name=self.profile_name).region_name
        )
        if not region:
            raise ConfigError("AWS_REGION", "is not set but the archive is on S3; set AWS_REGION, e.g. eu-west-1.")
        return region


class ArchiveResource(ConfigurableResource):
    """The archive: a local folder (default) or ``s3://bucket/prefix``."""

    url: str | None = None  # None: $ORDERBOOK_ARCHIVE_URL or data/archive
    s3: ResourceDependency[ArchiveS3Resource]
    create_bucket: bool = True

    def resolved_url(self) -> str:
        return self.url or os.environ.get("ORDERBOOK_ARCHIVE_URL") or DEFAULT_ARCHIVE

    def open_store(self) -> ArchiveStore:
        kind, where, prefix = parse_archive_url(self.resolved_url())
        if kind == "local":
            return LocalStore(where)
        region = self.s3.region()
        client = self.s3.get_client()
        store = S3Store(client, where, prefix)
        if self.create_bucket:
            store.ensure_bucket(region)
        return store
