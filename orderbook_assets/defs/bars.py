"""The ``top_of_book_1s`` asset: the analysts' 1 s bars of each archived hour (core in ``derived.bars``)."""

from __future__ import annotations

from contextlib import closing
from datetime import datetime, timezone

import dagster as dg

from orderbook_assets.analytics import views
from orderbook_assets.archive import pipeline
from orderbook_assets.derived import bars
from orderbook_assets.defs.partitions import hourly


def s3_settings_from(archive_resource) -> views.S3Settings | None:
    """The pipeline's S3 settings (None for a local archive), so bars read and write exactly
    where and as the archive job does."""
    return archive_resource.s3_settings()


#: Symbols named in the ``symbols`` entry; the rest are counted (the metadata of every hourly
#: run stays small with ``*``, ~1,450 symbols).
NAMED_SYMBOLS = 20


def hour_metadata(table, url: str | None, hour_us: int) -> dict:
    """The materialization's metadata: rows, symbols, path, hour and the pictures of the
    busiest symbols (:func:`bars.plot_metadata_markdown`): bounded, whatever the symbols."""
    symbols = sorted(set(table["symbol"].to_pylist()))
    named = ", ".join(symbols[:NAMED_SYMBOLS])
    if len(symbols) > NAMED_SYMBOLS:
        named += f" and {len(symbols) - NAMED_SYMBOLS:,} more ({len(symbols):,} symbols)"
    return {
        "rows": dg.MetadataValue.int(table.num_rows),
        "symbols": dg.MetadataValue.text(named or "none"),
        "path": dg.MetadataValue.path(url) if url else dg.MetadataValue.text("nothing written: no snapshots archived"),
        "hour": dg.MetadataValue.text(datetime.fromtimestamp(hour_us / 1e6, timezone.utc).isoformat()),
        "mid_and_spread": dg.MetadataValue.md(bars.plot_metadata_markdown(table) if table.num_rows
                                              else "_No snapshots archived for this hour._"),
    }


def build_top_of_book_1s(partitions_def=None, deps=(bars.SOURCE,), group_name: str | None = "archive"):
    """The ``top_of_book_1s`` asset: hourly, after the hour's ``depth_snapshot`` archive.

    Needs the pipeline's ``archive`` resource (``ArchiveResource``) for the archive URL and S3,
    and its ``buffer`` resource for the ledger and the staged parts it reads.
    """

    @dg.asset(
        name=bars.DATASET,
        partitions_def=partitions_def or hourly,
        deps=list(deps),
        group_name=group_name,
        required_resource_keys={"archive", "buffer"},
        kinds={"parquet", "duckdb"},
        description="1-second top-of-book bars (mid first/min/max/last, last best bid/ask, mean spread, "
                    "snapshot count) per symbol, one Parquet file per UTC hour. Schema: docs/analysts.md.",
    )
    def top_of_book_1s(context) -> dg.MaterializeResult:  # context: AssetExecutionContext
        window = context.partition_time_window
        hour_us = int(window.start.astimezone(timezone.utc).timestamp()) * 1_000_000
        archive, buffer = context.resources.archive, context.resources.buffer
        store = archive.open_store()
        with closing(buffer.connect()) as conn:
            sources = pipeline.archived_copies(conn, store, buffer.staging_dir(), hour_us, bars.SOURCE)
            table, url = bars.materialize_hour(archive.resolved_url(), hour_us, s3_settings_from(archive), store, sources)
            pipeline.drop_staged(conn, buffer.staging_dir(), hour_us)
        return dg.MaterializeResult(metadata=hour_metadata(table, url, hour_us))

    return top_of_book_1s


# After archived_hour: bars are built only from parts that passed the checks.
top_of_book_1s = build_top_of_book_1s(deps=("archived_hour",))
