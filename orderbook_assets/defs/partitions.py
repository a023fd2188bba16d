"""Hourly UTC partitions; the current hour is a partition too (``end_offset=1``).

The first hour comes from ``ORDERBOOK_PARTITIONS_START`` (``YYYY-MM-DD`` or
``YYYY-MM-DD-HH:00``, UTC; default and parse in ``orderbook_assets.settings``). The default is
a fixed date, not one derived from the data: the partition set must stay the same from one
load of the definitions to the next, while the buffer's oldest hour moves as cleanup frees
rows (and a fresh buffer has none), which would make archived hours vanish from the UI. Set
the variable to the day your recording began so the UI and "backfill all" offer only hours
that can hold data.
"""

from __future__ import annotations

from dagster import DailyPartitionsDefinition, HourlyPartitionsDefinition

from orderbook_assets import settings

#: Fixed when the definitions load: the assets are decorated with these partitions at import.
START = settings.load().partitions_start

hourly = HourlyPartitionsDefinition(start_date=START, timezone="UTC", end_offset=1)


def hour_us_of(context) -> int:
    """The partition's hour as µs since the epoch, from ``partition_time_window`` (not the key text)."""
    start = context.partition_time_window.start
    return int(start.timestamp()) * 1_000_000

#: UTC days over the hourly partitions: a day is offered once it has ended (the daily exports
#: and the reconciliation with the exchange's daily files).
daily = DailyPartitionsDefinition(start_date=START[:10], timezone="UTC")
