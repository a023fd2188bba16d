"""1-second top-of-book bars: the ``top_of_book_1s`` dataset and its Dagster asset.

Pure core: :func:`bars_1s` turns snapshots (an Arrow table in the ``depth_snapshot``
schema, or Parquet paths) into bars; :func:`plot_png` and :func:`plot_markdown` draw
what the Dagster UI shows. The shell: :func:`materialize_hour` reads one archived
hour, writes ``<archive>/top_of_book_1s/date=YYYY-MM-DD/hour=HH/bars.parquet``, and
the asset :data:`top_of_book_1s` (built by :func:`build_top_of_book_1s`) calls it.

One bar per symbol and second that has at least one snapshot with both sides
(seconds without a snapshot have no row). Deterministic: rows ordered by
(symbol, bar_time), first/last by (recv_time, session_id, seq), one DuckDB thread,
fixed Parquet writer options; so a re-run writes the same bytes.
"""

from __future__ import annotations

import base64
import struct
import tempfile
import zlib
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
from dagster import MaterializeResult
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from orderbook_collector.fsutil import sha256_file

from orderbook_assets.analytics import views
from orderbook_assets.archive.store import ArchiveStore, open_store

DATASET = "top_of_book_1s"
SOURCE = "depth_snapshot"
HOUR_US = 3_600_000_000

BARS_SCHEMA = pa.schema(
    [
        ("symbol", pa.string()),
        ("bar_time", pa.timestamp("us", tz="UTC")),  # start of the second
        ("first_mid", pa.float64()),
        ("max_mid", pa.float64()),
        ("min_mid", pa.float64()),
        ("last_mid", pa.float64()),
        ("last_best_bid", pa.float64()),
        ("last_best_ask", pa.float64()),
        ("mean_spread", pa.float64()),
        ("snapshots", pa.int64()),
    ]
)
WRITER_OPTIONS = dict(compression="zstd", compression_level=3, version="2.6", store_schema=False)

_ORDER = "(recv_time, session_id, seq)"
BARS_SQL = f"""
WITH tob AS (
    SELECT symbol, recv_time, session_id, seq,
           bids[1].price AS bid, asks[1].price AS ask, (bids[1].price + asks[1].price) / 2 AS mid
    FROM src
    WHERE len(bids) > 0 AND len(asks) > 0
)
SELECT symbol,
       date_trunc('second', recv_time) AS bar_time,
       arg_min(mid, {_ORDER}) AS first_mid,
       max(mid) AS max_mid,
       min(mid) AS min_mid,
       arg_max(mid, {_ORDER}) AS last_mid,
       arg_max(bid, {_ORDER}) AS last_best_bid,
       arg_max(ask, {_ORDER}) AS last_best_ask,
       avg(ask - bid) AS mean_spread,
       count(*) AS snapshots
FROM tob
GROUP BY ALL
ORDER BY symbol, bar_time
"""


# --------------------------------------------------------------------------- pure core


def bars_1s(source: pa.Table | str | list[str]) -> pa.Table:
    """1-second bars from snapshots: an Arrow table, or Parquet path(s) / a glob."""
    con = _duck()
    try:
        if isinstance(source, pa.Table):
            con.register("src", source)
        else:
            paths = [source] if isinstance(source, str) else list(source)
            if not paths:
                return BARS_SCHEMA.empty_table()
            con.execute(f"CREATE VIEW src AS SELECT * FROM read_parquet({_list(paths)})")
        return con.execute(BARS_SQL).to_arrow_table().cast(BARS_SCHEMA)
    finally:
        con.close()


def _duck(s3_archive: views.Archive | None = None, s3: views.S3Settings | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(config={"threads": 1})  # one thread: sums in a fixed order
    con.execute("SET TimeZone = 'UTC'")
    if s3_archive is not None and s3_archive.is_s3:
        views.configure_s3(con, s3_archive, s3)
    return con


def plot_markdown(bars: pa.Table, every_s: int = 300) -> str:
    """A small table per symbol: one row per ``every_s`` seconds (mid, range, spread)."""
    if bars.num_rows == 0:
        return "_No snapshots in this hour._"
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("bars", bars)
    rows = con.execute(f"""
        SELECT symbol, strftime(time_bucket(INTERVAL '{every_s} seconds', bar_time), '%H:%M') AS t,
               arg_max(last_mid, bar_time), min(min_mid), max(max_mid),
               sum(mean_spread * snapshots) / sum(snapshots), sum(snapshots)
        FROM bars GROUP BY ALL ORDER BY symbol, t""").fetchall()
    con.close()
    out = []
    for sym in sorted({r[0] for r in rows}):
        out += [f"**{sym}**", "", "| UTC | last mid | low | high | mean spread | snapshots |",
                "|---|---:|---:|---:|---:|---:|"]
        out += [f"| {t} | {m:,.2f} | {lo:,.2f} | {hi:,.2f} | {s:.4f} | {n:,} |"
                for s_, t, m, lo, hi, s, n in rows if s_ == sym]
        out.append("")
    return "\n".join(out).rstrip()


def plot_png(bars: pa.Table, symbol: str, width: int = 600, height: int = 200) -> bytes:
    """A PNG of one symbol's hour: mid-price range per pixel column (top, blue) and
    mean spread (bottom, orange). Pure numpy + zlib; same bars, same bytes."""
    sel = bars.filter(pc.equal(bars["symbol"], symbol))
    img = np.full((height, width, 3), 255, dtype=np.uint8)
    top_h = int(height * 0.68)
    img[top_h, :] = 200  # separator between the panels
    if sel.num_rows:
        t = sel["bar_time"].cast(pa.int64()).to_numpy()
        hour = t.min() - t.min() % HOUR_US
        col = np.clip(((t - hour) * width) // HOUR_US, 0, width - 1)
        lo_mid, hi_mid = sel["min_mid"].to_numpy(), sel["max_mid"].to_numpy()
        spread = sel["mean_spread"].to_numpy()
        lo_c = np.full(width, np.inf)
        hi_c = np.full(width, -np.inf)
        sp_c = np.zeros(width)
        np.minimum.at(lo_c, col, lo_mid)
        np.maximum.at(hi_c, col, hi_mid)
        np.maximum.at(sp_c, col, spread)
        have = np.isfinite(lo_c)
        y_lo, y_hi = lo_mid.min(), hi_mid.max()
        scale = (top_h - 8) / (y_hi - y_lo if y_hi > y_lo else 1.0)
        rows = np.arange(height)[:, None]
        top = 4 + np.round((y_hi - hi_c) * scale)
        bottom = 4 + np.round((y_hi - lo_c) * scale)
        mid_mask = have & (rows >= top) & (rows <= bottom)
        img[mid_mask] = (31, 119, 180)
        s_max = sp_c.max() or 1.0
        bar_top = height - 2 - np.round(sp_c / s_max * (height - top_h - 6))
        sp_mask = have & (rows >= bar_top) & (rows <= height - 2)
        img[sp_mask] = (255, 127, 14)
    return _png(img)


def _png(rgb: np.ndarray) -> bytes:
    h, w, _ = rgb.shape
    raw = np.hstack([np.zeros((h, 1), dtype=np.uint8), rgb.reshape(h, w * 3)]).tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def plot_metadata_markdown(bars: pa.Table) -> str:
    """Markdown for the Dagster UI: a PNG per symbol (data URI) above the 5-minute table."""
    parts = []
    for sym in sorted(set(bars["symbol"].to_pylist())):
        sel = bars.filter(pc.equal(bars["symbol"], sym))
        png = base64.b64encode(plot_png(bars, sym)).decode()
        parts.append(
            f"**{sym}** mid {pc.min(sel['min_mid']).as_py():,.2f} – {pc.max(sel['max_mid']).as_py():,.2f} "
            f"(blue, range per 6 s), mean spread up to {pc.max(sel['mean_spread']).as_py():.4f} (orange)\n\n"
            f"![{sym} mid and spread](data:image/png;base64,{png})\n"
        )
    parts.append(plot_markdown(bars))
    return "\n".join(parts)


# --------------------------------------------------------------------------- the shell


def bars_key(hour_us: int) -> str:
    return f"{DATASET}/{views.hour_path(hour_us)}/bars.parquet"


def materialize_hour(
    archive_url: str, hour_us: int, s3: views.S3Settings | None = None, store: ArchiveStore | None = None
) -> tuple[pa.Table, str]:
    """Read the hour's ``depth_snapshot`` files, write its bars; returns (bars, URL written).

    An hour without archived files gives an empty bars file, so the partition is
    complete and readers see "no data" rather than "not computed". ``store`` is where
    the bars go (the pipeline's archive store); by default one is opened for the URL.
    """
    archive = views.Archive.parse(archive_url)
    con = _duck(archive, s3)
    try:
        pattern = archive.hour_glob(SOURCE, hour_us)
        if views.count_files(con, pattern):
            con.execute(f"CREATE VIEW src AS SELECT * FROM read_parquet({views._lit(pattern)})")
            bars = con.execute(BARS_SQL).to_arrow_table().cast(BARS_SCHEMA)
        else:
            bars = BARS_SCHEMA.empty_table()
    finally:
        con.close()
    write_parquet(bars, store or open_store(archive, s3), bars_key(hour_us))
    return bars, f"{archive.url}/{bars_key(hour_us)}"


def write_parquet(table: pa.Table, store: ArchiveStore, key: str) -> None:
    """Write ``table`` at ``key``: a derived dataset, so the object is replaced, then verified."""
    with tempfile.TemporaryDirectory(prefix="bars-") as tmp:
        path = Path(tmp) / "bars.parquet"
        pq.write_table(table, path, **WRITER_OPTIONS)
        _size, sha = sha256_file(path)
        store.put_derived(key, path, sha)


# --------------------------------------------------------------------------- Dagster


def hourly_partitions():
    """The archive's partitions (``orderbook_assets.defs.partitions.hourly``): UTC, ``end_offset=1``."""
    from orderbook_assets.defs.partitions import hourly

    return hourly


def s3_settings_from(archive_resource) -> views.S3Settings | None:
    """The pipeline's S3 settings (None for a local archive), so bars read and write exactly
    where and as the archive job does."""
    return archive_resource.s3_settings()


def build_top_of_book_1s(partitions_def=None, deps=(SOURCE,), group_name: str | None = "archive"):
    """The ``top_of_book_1s`` asset: hourly, after the hour's ``depth_snapshot`` archive.

    Needs the pipeline's ``archive`` resource (``ArchiveResource``) for the archive URL and S3.
    """

    @dg.asset(
        name=DATASET,
        partitions_def=partitions_def or hourly_partitions(),
        deps=list(deps),
        group_name=group_name,
        required_resource_keys={"archive"},
        kinds={"parquet", "duckdb"},
        description="1-second top-of-book bars (mid first/min/max/last, last best bid/ask, mean spread, "
                    "snapshot count) per symbol, one Parquet file per UTC hour. Schema: README.md, 'For analysts'.",
    )
    def top_of_book_1s(context) -> MaterializeResult:  # context: AssetExecutionContext
        window = context.partition_time_window
        hour_us = int(window.start.astimezone(timezone.utc).timestamp()) * 1_000_000
        archive = context.resources.archive
        bars, url = materialize_hour(archive.resolved_url(), hour_us, s3_settings_from(archive), archive.open_store())
        symbols = sorted(set(bars["symbol"].to_pylist()))
        return dg.MaterializeResult(metadata={
            "rows": dg.MetadataValue.int(bars.num_rows),
            "symbols": dg.MetadataValue.text(", ".join(symbols) or "none"),
            "path": dg.MetadataValue.path(url),
            "hour": dg.MetadataValue.text(datetime.fromtimestamp(hour_us / 1e6, timezone.utc).isoformat()),
            "mid_and_spread": dg.MetadataValue.md(plot_metadata_markdown(bars) if bars.num_rows
                                                  else "_No snapshots archived for this hour._"),
        })

    return top_of_book_1s


def _list(paths: list[str]) -> str:
    return "[" + ", ".join(views._lit(p) for p in paths) + "]"


# After archived_hour: bars are built only from parts that passed the checks.
top_of_book_1s = build_top_of_book_1s(deps=("archived_hour",))
