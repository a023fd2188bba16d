"""Resources, configured from the environment at run time (docs/configuration.md).

``ORDERBOOK_BUFFER`` (default ``data/buffer.sqlite3``), ``ORDERBOOK_ARCHIVE_URL`` (default
``data/archive``) and ``ORDERBOOK_RETENTION_HOURS`` (default 24) are read when a run starts,
so the same definitions serve every deployment. S3 settings (``AWS_REGION``,
``AWS_ENDPOINT_URL_S3``, the credentials chain) are resolved by
:class:`orderbook_assets.archive.location.S3Settings`, the same recipe the query command,
the views and the bars use, so no secret is ever in code, config files or the UI.
"""


import os
import sqlite3
from pathlib import Path

from dagster import ConfigurableResource, ResourceDependency
from dagster_aws.s3 import S3Resource

from orderbook_core import buffer as buf
from orderbook_core.errors import ConfigError

from orderbook_assets.archive.location import DEFAULT_ARCHIVE, Location, S3Settings
from orderbook_assets.archive.merge import check_host_id, host_prefix
from orderbook_assets.archive.store import ArchiveStore, open_store

DEFAULT_BUFFER = str(buf.DEFAULT_PATH)
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
    """dagster-aws's S3Resource fields (all optional overrides of the environment), built
    through :class:`S3Settings`: botocore standard-mode retries, timeouts, checksums only
    when required."""

    connect_timeout: float = 5.0
    read_timeout: float = 30.0

    def settings(self) -> S3Settings:
        """Raises ConfigError: no region for AWS S3, or no credentials."""
        return S3Settings.from_env(
            region=self.region_name, endpoint_url=self.endpoint_url, key_id=self.aws_access_key_id,
            secret=self.aws_secret_access_key, session_token=self.aws_session_token, profile=self.profile_name,
        )

    def get_client(self):
        return self.settings().client(
            max_attempts=self.max_attempts, connect_timeout=self.connect_timeout, read_timeout=self.read_timeout
        )

    def region(self) -> str:
        return self.settings().region


class ArchiveResource(ConfigurableResource):
    """The archive: a local folder (default) or ``s3://bucket/prefix``."""

    url: str | None = None  # None: $ORDERBOOK_ARCHIVE_URL or data/archive
    s3: ResourceDependency[ArchiveS3Resource]
    create_bucket: bool = True

    def fleet_url(self) -> str:
        """The archive analysts read (with a fleet: where the merged datasets go)."""
        return self.url or os.environ.get("ORDERBOOK_ARCHIVE_URL") or DEFAULT_ARCHIVE

    def resolved_url(self) -> str:
        """Where this location's parts go: the archive itself, or with ``ORDERBOOK_HOST_ID``
        its host's folder ``<archive>/hosts/collector=<id>`` (docs/fleet.md)."""
        host = os.environ.get("ORDERBOOK_HOST_ID", "").strip()
        base = self.fleet_url()
        return f"{Location.parse(base).url}/{host_prefix(check_host_id(host))}" if host else base

    def location(self, fleet: bool = False) -> Location:
        return Location.parse(self.fleet_url() if fleet else self.resolved_url())

    def s3_settings(self) -> S3Settings | None:
        """None for a local archive."""
        return self.s3.settings() if self.location().is_s3 else None

    def open_store(self, fleet: bool = False) -> ArchiveStore:
        """The store, ready: on S3 the bucket exists and its capabilities are known (the
        bucket's record, read once per step; a probe only on first use of the bucket).
        ``fleet``: the fleet's archive instead of this host's folder in it."""
        loc = self.location(fleet)
        if not loc.is_s3:
            return open_store(loc)
        settings = self.s3.settings()
        client = settings.client(
            max_attempts=self.s3.max_attempts, connect_timeout=self.s3.connect_timeout, read_timeout=self.s3.read_timeout
        )
        return open_store(loc, settings, client=client, provision=self.create_bucket)
