"""Hourly UTC partitions; the current hour is a partition too (``end_offset=1``)."""

from __future__ import annotations

from dagster import HourlyPartitionsDefinition

#: Earliest hour offered in the UI and for backfills.
START = "2026-01-01-00:00"

hourly = HourlyPartitionsDefinition(start_date=START, timezone="UTC", end_offset=1)


def hour_us_of(context) -> int:
    """The partition's hour as µs since the epoch, from ``partition_time_window`` (not the key text)."""
    start = context.partition_time_window.start
    return int(start.timestamp()) * 1_000_000
