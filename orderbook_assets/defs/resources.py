"""Resources: the buffer and the archive, configured by :mod:`orderbook_assets.settings`.

Each resource loads the archive side's settings once when a run starts (``setup_for_execution``),
so the same definitions serve every deployment, and hands their values on; its own fields are
optional overrides set in code (tests). Not Dagster ``EnvVar`` fields: every
one of these settings has a default, and an ``EnvVar`` of an unset variable fails the run. S3
settings (``AWS_REGION``, ``AWS_ENDPOINT_URL_S3``, the credentials chain) are resolved by
:class:`orderbook_assets.archive.location.S3Settings`, the same recipe the query command,
the views and the bars use, so no secret is ever in code, config files or the UI.
"""


import sqlite3
from pathlib import Path

from dagster import ConfigurableResource, InitResourceContext, ResourceDependency
from dagster_aws.s3 import S3Resource
from pydantic import PrivateAttr

from orderbook_core import buffer as buf

from orderbook_assets import settings as config
from orderbook_assets.archive.location import Location, S3Settings
from orderbook_assets.archive.merge import host_prefix
from orderbook_assets.archive.store import ArchiveStore, open_store


class _Configured(ConfigurableResource):
    """A resource that reads the archive side's settings once per run."""

    _settings: config.ArchiveSettings | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._settings = config.load()

    def settings(self) -> config.ArchiveSettings:
        """The run's settings; outside a run (a test calling a method), the environment's now."""
        return self._settings if self._settings is not None else config.load()


class BufferResource(_Configured):
    """The collector's SQLite buffer, and the staging folder beside it."""

    path: str | None = None  # None: ORDERBOOK_BUFFER
    retention_hours: float | None = None  # None: ORDERBOOK_RETENTION_HOURS

    def resolved_path(self) -> Path:
        return Path(self.path) if self.path else self.settings().buffer

    def connect(self) -> sqlite3.Connection:
        return buf.connect(self.resolved_path(), synchronous="FULL", create=False)

    def staging_dir(self) -> Path:
        """Where parts are written before upload: ``<buffer folder>/staging``."""
        return self.resolved_path().parent / "staging"

    def retention(self) -> float:
        if self.retention_hours is not None:
            return config.retention_hours(str(self.retention_hours))
        return self.settings().retention_hours


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


class ArchiveResource(_Configured):
    """The archive: a local folder (default) or ``s3://bucket/prefix``."""

    url: str | None = None  # None: ORDERBOOK_ARCHIVE_URL
    s3: ResourceDependency[ArchiveS3Resource]
    create_bucket: bool = True

    def fleet_url(self) -> str:
        """The archive analysts read (with a fleet: where the merged datasets go)."""
        return self.url or self.settings().archive_url

    def resolved_url(self) -> str:
        """Where this location's parts go: the archive itself, or with ``ORDERBOOK_HOST_ID``
        its host's folder ``<archive>/hosts/collector=<id>`` (docs/fleet.md)."""
        host = self.settings().host_id
        base = self.fleet_url()
        return f"{Location.parse(base).url}/{host_prefix(host)}" if host else base

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
        return open_store(loc, settings, client=client, provision=self.create_bucket,
                          capabilities=self.settings().s3_capabilities)
