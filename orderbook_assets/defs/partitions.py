"""Hourly UTC partitions; the current hour is a partition too (``end_offset=1``).

The first hour comes from ``ORDERBOOK_PARTITIONS_START`` (``YYYY-MM-DD`` or
``YYYY-MM-DD-HH:00``, UTC). The default is a fixed date, not one derived from the data:
the partition set must stay the same from one load of the definitions to the next,
while the buffer's oldest hour moves as cleanup frees rows (and a fresh buffer has
none), which would make archived hours vanish from the UI. The default is the month
the project first recorded; set the variable to the day your recording began so the
UI and "backfill all" offer only hours that can hold data.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone

from dagster import DailyPartitionsDefinition, HourlyPartitionsDefinition

from orderbook_core.errors import ConfigError

START_ENV = "ORDERBOOK_PARTITIONS_START"
#: Earliest hour offered in the UI and for backfills unless ORDERBOOK_PARTITIONS_START says otherwise.
DEFAULT_START = "2026-11-01-00:00"


def partitions_start(environ=None) -> str:
    """The first partition key, validated. Raises ConfigError (one sentence) for a bad value."""
    raw = (os.environ if environ is None else environ).get(START_ENV, "").strip()
    if not raw:
        return DEFAULT_START
    value = raw + "-00:00" if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw) else raw
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}-\d{2}:00", value):
            raise ValueError(value)
        start = datetime.strptime(value, "%Y-%m-%d-%H:%M").replace(tzinfo=timezone.utc)
    except ValueError:
        raise ConfigError(START_ENV, f"{raw!r} is not a UTC date or hour; use e.g. 2026-11-24 or 2026-11-24-13:00.") from None
    if start > datetime.now(timezone.utc):
        raise ConfigError(START_ENV, f"{raw} is in the future; use the day your recording began, e.g. {DEFAULT_START[:10]}.")
    return value


START = partitions_start()

hourly = HourlyPartitionsDefinition(start_date=START, timezone="UTC", end_offset=1)


def hour_us_of(context) -> int:
    """The partition's hour as µs since the epoch, from ``partition_time_window`` (not the key text)."""
    start = context.partition_time_window.start
    return int(start.timestamp()) * 1_000_000

#: UTC days over the hourly partitions: a day is offered once it has ended (the daily exports
#: and the reconciliation with the exchange's daily files).
daily = DailyPartitionsDefinition(start_date=START[:10], timezone="UTC")
