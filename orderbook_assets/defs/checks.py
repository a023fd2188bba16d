"""DuckDB checks of ``depth_snapshot``. The ERROR checks are blocking: a failure stops
``archived_hour`` in the same run. The WARN check ``books_sane`` reports only, so it is not
declared blocking: the UI must not present a warning as a gate. ``coverage_gaps`` (WARN)
is reported by the ``coverage`` asset, which computes the hour's gaps."""


import warnings
from contextlib import closing

from dagster import (AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, PreviewWarning,
                     multi_asset_check)

from orderbook_assets.archive import pipeline

from orderbook_assets.archive import quality
from orderbook_assets.defs.assets import depth_snapshot
from orderbook_assets.defs.hosts import running_key
from orderbook_assets.defs.partitions import hour_us_of, hourly
from orderbook_assets.defs.resources import ArchiveResource, BufferResource

SEVERITY = {quality.ERROR: AssetCheckSeverity.ERROR, quality.WARN: AssetCheckSeverity.WARN}
DESCRIPTIONS = {
    "no_duplicates": "No (stream, update id) and no (session, seq) twice.",
    "no_seq_gaps": "Every seq gap within a session is explained by a recorded duplicate or quarantined frame.",
    "update_id_monotonic": "lastUpdateId never goes backwards within a session and stream.",
    "books_sane": "Warning only: books neither crossed nor unsorted.",
    "rows_reconciled": "Rows in the verified Parquet equal the buffer's rows of the parts.",
}

# Partitioned checks are a Dagster "preview" (1.13); we chose them knowingly, so the warning
# would only be noise in every process that loads the definitions.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", PreviewWarning)
    SPECS = [
        AssetCheckSpec(name, asset=depth_snapshot, blocking=severity == quality.ERROR, description=DESCRIPTIONS[name],
                       partitions_def=hourly)
        for name, severity in quality.CHECKS.items()
    ]


@multi_asset_check(specs=SPECS, name="depth_snapshot_checks")
def depth_snapshot_checks(context: AssetCheckExecutionContext, buffer: BufferResource, archive: ArchiveResource):
    hour_us = hour_us_of(context)
    store = archive.open_store()
    with closing(buffer.connect()) as conn:
        checked = pipeline.check_parts(conn, store, buffer.staging_dir(), hour_us)
    for r in checked.results:
        metadata = {"count": r.count, "examples": r.examples, "parts": [p.part for p in checked.parts]}
        metadata.update(r.detail)
        yield AssetCheckResult(
            check_name=r.name,
            asset_key=running_key(context, depth_snapshot.key),
            passed=r.passed,
            severity=SEVERITY[r.severity],
            metadata=metadata,
        )
