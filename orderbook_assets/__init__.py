"""The archive side of orderbook: hourly, verified Parquet from the SQLite buffer.

Pure modules (no Dagster): :mod:`ledger`, :mod:`export`, :mod:`store`, :mod:`quality`,
:mod:`coverage`, :mod:`cleanup`, :mod:`crash`. Dagster wiring: :mod:`partitions`,
:mod:`resources`, :mod:`assets`, :mod:`checks`, :mod:`schedules`, :mod:`sensors`,
assembled in :mod:`definitions`.
"""
