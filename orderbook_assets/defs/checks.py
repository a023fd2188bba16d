"""DuckDB checks of every stream dataset, one multi-asset check per dataset. The ERROR checks
are blocking: a failure stops ``coverage`` and ``archived_hour`` in the same run. The WARN checks
``books_sane`` and ``mark_near_mid`` report only, so it is not declared blocking: the UI must not present a warning
as a gate. ``coverage_gaps`` (WARN) is reported by the ``coverage`` asset, which computes the
hour's gaps. Each result carries its count and a few examples as metadata (shown in the UI)."""


import warnings
from contextlib import closing

from dagster import (AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetKey,
                     PreviewWarning, multi_asset_check)

from orderbook_assets.archive import datasets as ds
from orderbook_assets.archive import pipeline
from orderbook_assets.archive import quality
from orderbook_assets.defs.hosts import running_key
from orderbook_assets.defs.partitions import hour_us_of, hourly
from orderbook_assets.defs.resources import ArchiveResource, BufferResource

SEVERITY = {quality.ERROR: AssetCheckSeverity.ERROR, quality.WARN: AssetCheckSeverity.WARN}
DESCRIPTIONS = {
    "no_duplicates": "No dedup key (market, stream and the dataset's id) and no (session, seq) twice.",
    "no_seq_gaps": "Every seq gap within a session is explained by a recorded duplicate, a quarantined frame or "
                   "another dataset's row of the session.",
    "update_id_monotonic": "The update (or trade) id never goes backwards within a session and stream.",
    "depth_continuity": "Every diff event continues the previous one (spot U = u + 1, USD-M pu = u) or a recorded "
                        "break (depth_sync) says it does not.",
    "trade_id_continuity": "Trade ids are consecutive per stream, or a recorded trade_gap names the missing ids.",
    "books_sane": "Warning only: books neither crossed nor unsorted (bookTicker: not crossed).",
    "values_finite": "Prices, quantities and the funding rate are finite numbers.",
    "mark_near_mid": "Warning only: each mark price within 5 % of the mid of its symbol's latest bookTicker "
                     "(at most 5 s older), where both were recorded.",
    "rows_reconciled": "Rows in the verified Parquet equal the buffer's rows of the parts.",
    "open_interest_sane": "Open interest is finite and never negative.",
}


def build_checks(dataset: str):
    """The multi-asset check of one dataset: its :data:`quality.CHECKS`, run on its verified parts."""
    key = AssetKey(dataset)
    # Partitioned checks are a Dagster "preview" (1.13); we chose them knowingly, so the warning
    # would only be noise in every process that loads the definitions.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PreviewWarning)
        specs = [
            AssetCheckSpec(name, asset=key, blocking=severity == quality.ERROR, description=DESCRIPTIONS[name],
                           partitions_def=hourly)
            for name, severity in quality.CHECKS[dataset].items()
        ]

    @multi_asset_check(specs=specs, name=f"{dataset}_checks")
    def checks(context: AssetCheckExecutionContext, buffer: BufferResource, archive: ArchiveResource):
        hour_us = hour_us_of(context)
        store = archive.open_store()
        with closing(buffer.connect()) as conn:
            checked = pipeline.check_parts(conn, store, buffer.staging_dir(), hour_us, dataset)
        for r in checked.results:
            metadata = {"count": r.count, "examples": r.examples, "parts": [p.part for p in checked.parts]}
            metadata.update(r.detail)
            yield AssetCheckResult(check_name=r.name, asset_key=running_key(context, key), passed=r.passed, severity=SEVERITY[r.severity],
                                   metadata=metadata)

    return checks


CHECKS = {dataset: build_checks(dataset) for dataset in ds.DATASETS}
depth_snapshot_checks = CHECKS[ds.DEPTH]
