"""The archive side's settings, read from the environment in one place (docs/configuration.md).

Every ``ORDERBOOK_*`` variable the Dagster definitions, their resources and the ``orderbook``
commands use is named, defaulted and parsed here once, by :func:`load`, into one frozen
:class:`ArchiveSettings`. Nothing else in ``orderbook_assets`` reads the environment for them:
``definitions.py`` builds the definitions from a loaded object, the resources load one when a
run starts (so the same definitions serve every deployment) and hand its values to the
modules below ``defs/`` as arguments, and each command loads one with its flags as overrides.

A bad value of any setting is one :class:`ConfigError` sentence naming it and the fix, raised
by :func:`load` before anything runs: the code location does not load, a run stops at its
start, a command exits with status 2.

Where a setting's grammar is a contract of its own, :func:`load` calls that contract's parser
instead of copying it: host ids (``archive.merge.check_host_id``), archive URLs
(``archive.location.Location.parse``), S3 capabilities (``archive.capabilities``), the export
formats (``analytics.backtest.Format``) and the book sampling (``books.hour.Settings``).

Not here, on purpose: the AWS settings (``AWS_REGION``, ``AWS_ENDPOINT_URL_S3``, the
credentials chain) are boto3's, resolved by ``archive.location.S3Settings`` only when an S3
archive is opened (a local archive needs none); and ``ORDERBOOK_CRASH_AT``, the kill -9 tests'
hook, is read at each crash point by ``archive.crash`` so that production signatures do not
carry a test switch.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping

from orderbook_core.buffer.db import DEFAULT_PATH
from orderbook_core.errors import ConfigError

from orderbook_assets.analytics.backtest import Format
from orderbook_assets.archive import capabilities
from orderbook_assets.archive import freshness as fr
from orderbook_assets.archive.location import Location
from orderbook_assets.archive.merge import check_host_id
from orderbook_assets.archive.source import DataSource
from orderbook_assets.books import hour

BUFFER = "ORDERBOOK_BUFFER"
ARCHIVE_URL = "ORDERBOOK_ARCHIVE_URL"
RETENTION_HOURS = "ORDERBOOK_RETENTION_HOURS"
HOST_ID = "ORDERBOOK_HOST_ID"
FLEET_HOSTS = "ORDERBOOK_FLEET_HOSTS"
PARTITIONS_START = "ORDERBOOK_PARTITIONS_START"
OFFICIAL_URL = "ORDERBOOK_OFFICIAL_URL"
EXPORT_FORMATS = "ORDERBOOK_EXPORT_FORMATS"
FRESHNESS_SECONDS = "ORDERBOOK_FRESHNESS_SECONDS"
ARCHIVE_DEADLINE_MINUTES = "ORDERBOOK_ARCHIVE_DEADLINE_MINUTES"
BOOK_DEPTH = "ORDERBOOK_BOOK_DEPTH"
BOOK_INTERVAL_MS = "ORDERBOOK_BOOK_INTERVAL_MS"
DATA_SOURCE = "ORDERBOOK_DATA_SOURCE"
S3_CAPABILITIES = capabilities.SETTING  # named with the mechanisms it states (archive/capabilities.py)

DEFAULT_ARCHIVE = "data/archive"
DEFAULT_RETENTION_HOURS = 24.0
#: Earliest hour offered in the UI and for backfills. A fixed date, not one derived from the
#: data: the partition set must stay the same from one load of the definitions to the next,
#: while the buffer's oldest hour moves as cleanup frees rows (and a fresh buffer has none).
#: It is the month the project first recorded.
DEFAULT_PARTITIONS_START = "2026-11-01-00:00"


def _text(raw: str) -> str:
    return raw.strip()


def _buffer(raw: str) -> Path:
    return Path(raw) if raw else DEFAULT_PATH


def _archive_url(raw: str) -> str:
    """As given (``fleet_url`` and the commands pass it on as written), once validated."""
    url = raw or DEFAULT_ARCHIVE
    Location.parse(url)
    return url


def retention_hours(raw: str) -> float:
    """Hours archived rows are kept; 0 or more (also the parse of the resource's own field)."""
    try:
        hours = float(raw) if raw else DEFAULT_RETENTION_HOURS
    except ValueError:
        hours = -1.0
    if not hours >= 0:
        raise ConfigError(RETENTION_HOURS, f"{raw!r} is not a number of hours; use 0 or more, e.g. 24.")
    return hours


def _host_id(raw: str) -> str | None:
    return check_host_id(raw) if raw else None


def _fleet_hosts(raw: str) -> tuple[str, ...]:
    return tuple(sorted({check_host_id(h.strip(), FLEET_HOSTS) for h in raw.split(",") if h.strip()}))


def _partitions_start(raw: str) -> str:
    if not raw:
        return DEFAULT_PARTITIONS_START
    value = raw + "-00:00" if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw) else raw
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}-\d{2}:00", value):
            raise ValueError(value)
        start = datetime.strptime(value, "%Y-%m-%d-%H:%M").replace(tzinfo=timezone.utc)
    except ValueError:
        raise ConfigError(PARTITIONS_START,
                          f"{raw!r} is not a UTC date or hour; use e.g. 2026-11-24 or 2026-11-24-13:00.") from None
    if start > datetime.now(timezone.utc):
        raise ConfigError(PARTITIONS_START, f"{raw} is in the future; use the day your recording began, "
                                            f"e.g. {DEFAULT_PARTITIONS_START[:10]}.")
    return value


def _official_url(raw: str) -> str | None:
    return raw or None


def _export_formats(raw: str) -> tuple[Format, ...]:
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    known = [f.value for f in Format]
    bad = [n for n in names if n not in known]
    if bad:
        raise ConfigError(EXPORT_FORMATS, f"{bad[0]!r} is not an export format; use {' or '.join(known)} "
                                          f"(comma-separated for both), or leave it empty to turn the daily export off.")
    return tuple(Format(n) for n in dict.fromkeys(names))


def _positive(name: str, default: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw) if raw else default
        except ValueError:
            value = -1.0
        if not value > 0:
            raise ConfigError(name, f"{raw!r} is not a positive number; use e.g. {default:g}.")
        return value
    return parse


def _whole(name: str, default: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        raw = raw or str(default)
        if not raw.isdigit() or int(raw) < 1:
            raise ConfigError(name, f"is {raw!r}; set a whole number of at least 1 (default {default}).")
        return int(raw)
    return parse


def _data_source(raw: str) -> DataSource:
    value = raw.lower() or DataSource.BINANCE.value
    try:
        return DataSource(value)
    except ValueError:
        raise ConfigError(DATA_SOURCE, f"{value!r} is neither {DataSource.BINANCE.value} nor "
                                       f"{DataSource.SIMULATED.value}; unset it for real data.") from None


def _s3_capabilities(raw: str) -> str:
    capabilities.Capabilities.from_setting(raw)  # validated now; the store applies it
    return raw


#: Every archive-side setting: its variable and its parse (the parse gives the default for an
#: empty or unset variable). The field of :class:`ArchiveSettings` each one fills is its key.
PARSERS: dict[str, tuple[str, Callable[[str], object]]] = {
    "buffer": (BUFFER, _buffer),
    "archive_url": (ARCHIVE_URL, _archive_url),
    "retention_hours": (RETENTION_HOURS, retention_hours),
    "host_id": (HOST_ID, _host_id),
    "fleet_hosts": (FLEET_HOSTS, _fleet_hosts),
    "partitions_start": (PARTITIONS_START, _partitions_start),
    "official_url": (OFFICIAL_URL, _official_url),
    "export_formats": (EXPORT_FORMATS, _export_formats),
    "freshness_seconds": (FRESHNESS_SECONDS, _positive(FRESHNESS_SECONDS, fr.MAX_AGE_S)),
    "archive_deadline_minutes": (ARCHIVE_DEADLINE_MINUTES, _positive(ARCHIVE_DEADLINE_MINUTES, fr.ARCHIVE_DEADLINE_MIN)),
    "book_depth": (BOOK_DEPTH, _whole(BOOK_DEPTH, hour.DEFAULT_DEPTH)),
    "book_interval_ms": (BOOK_INTERVAL_MS, _whole(BOOK_INTERVAL_MS, hour.DEFAULT_INTERVAL_US // 1000)),
    "data_source": (DATA_SOURCE, _data_source),
    "s3_capabilities": (S3_CAPABILITIES, _s3_capabilities),
}
#: The variables, in the order of the table above.
NAMES = tuple(name for name, _ in PARSERS.values())


@dataclass(frozen=True)
class ArchiveSettings:
    """The archive side's configuration, validated (build it with :func:`load`)."""

    buffer: Path = DEFAULT_PATH
    archive_url: str = DEFAULT_ARCHIVE
    retention_hours: float = DEFAULT_RETENTION_HOURS
    host_id: str | None = None
    fleet_hosts: tuple[str, ...] = ()
    partitions_start: str = DEFAULT_PARTITIONS_START
    official_url: str | None = None
    export_formats: tuple[Format, ...] = ()
    freshness_seconds: float = fr.MAX_AGE_S
    archive_deadline_minutes: float = fr.ARCHIVE_DEADLINE_MIN
    book_depth: int = hour.DEFAULT_DEPTH
    book_interval_ms: int = hour.DEFAULT_INTERVAL_US // 1000
    data_source: DataSource = DataSource.BINANCE
    s3_capabilities: str = ""
    #: How ``book_snapshot`` samples, from ``book_depth`` and ``book_interval_ms``.
    book: hour.Settings = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if hour.HOUR_US % (self.book_interval_ms * 1000):
            raise ConfigError(BOOK_INTERVAL_MS, f"is {self.book_interval_ms}; set a number of ms that divides an "
                                                "hour, such as 100, 1000 or 60000.")
        object.__setattr__(self, "book", hour.Settings(depth=self.book_depth,
                                                       interval_us=self.book_interval_ms * 1000))

    def location(self) -> Location:
        """The archive, parsed (relative folders from the working directory)."""
        return Location.parse(self.archive_url)


def load(environ: Mapping[str, str] | None = None, overrides: Mapping[str, str | None] | None = None) -> ArchiveSettings:
    """Every archive-side setting from ``environ`` (default: this process's environment), each
    validated; ``overrides`` (a command's flags, keyed by the variable they mirror) win over it
    when given (not None or empty).

    Raises:
        ConfigError: the first bad setting, in one sentence naming it and the fix.
    """
    env = os.environ if environ is None else environ
    given = {name: value for name, value in (overrides or {}).items() if value}
    unknown = set(given) - set(NAMES)
    if unknown:
        raise ValueError(f"not archive settings: {sorted(unknown)}")
    values = {key: parse(_text(given[name] if name in given else env.get(name) or ""))
              for key, (name, parse) in PARSERS.items()}
    return ArchiveSettings(**values)
