"""Jobs: ``archive_hour`` (hourly partitioned assets) and ``cleanup_buffer``.

Both run in-process: one run is one process, so a crash of the run is a crash of its
steps, and the ledger (not Dagster) carries the state from one attempt to the next.
"""


from contextlib import closing

from dagster import AssetSelection, OpExecutionContext, define_asset_job, in_process_executor, job, op

from orderbook_assets.archive import cleanup
from orderbook_assets.defs.assets import archived_hour, coverage, stream_datasets
from orderbook_assets.defs.bars import top_of_book_1s
from orderbook_assets.defs.books import book_snapshot
from orderbook_assets.defs.resources import BufferResource

archive_hour = define_asset_job(
    "archive_hour",
    selection=AssetSelection.assets(stream_datasets, coverage, archived_hour, top_of_book_1s, book_snapshot),
    executor_def=in_process_executor,
    description="Export, upload, verify and check every dataset of one UTC hour of the buffer, store its coverage, "
                "mark it archived, then build its 1 s bars and its rebuilt books (book_snapshot, proved against the exchange).",
)


@op
def delete_archived_rows(context: OpExecutionContext, buffer: BufferResource) -> None:
    """Delete rows of archived parts older than ORDERBOOK_RETENTION_HOURS, 1000 rows a transaction."""
    retention = buffer.retention()
    with closing(buffer.connect()) as conn:
        result = cleanup.run(conn, retention, staging=buffer.staging_dir())
    context.log.info(
        f"deleted {result.deleted} rows of {result.parts} parts in {result.batches} batches; "
        f"{result.checkpoints} checkpoints; WAL now {result.wal_bytes} bytes (retention {retention} h)"
    )


@job(executor_def=in_process_executor, description="Free buffer rows of archived parts past the retention.")
def cleanup_buffer():
    delete_archived_rows()
