"""The archive side of orderbook: hourly, verified Parquet from the SQLite buffer.

- :mod:`.archive`: the archive core (ledger, export, stores, checks, coverage, cleanup); no Dagster.
- :mod:`.defs`: the Dagster wiring (partitions, resources, assets, checks, jobs, schedules, sensors).
- :mod:`.analytics`: the analysts' side (DuckDB views, the ``orderbook`` query command, bars).
- :mod:`.definitions`: assembles ``defs``.
"""
