"""1-second top-of-book bars: the ``top_of_book_1s`` dataset (its asset is in ``defs.bars``).

Pure core: :func:`bars_1s` turns snapshots (an Arrow table in the ``depth_snapshot``
schema, or Parquet paths) into bars; :func:`plot_png` and :func:`plot_markdown` draw
what the Dagster UI shows, for the hour's few busiest symbols (:data:`PLOTTED_SYMBOLS`).
The shell: :func:`materialize_hour` reads one archived hour and writes
``<archive>/top_of_book_1s/date=YYYY-MM-DD/hour=HH/bars.parquet``; an hour with no archived
snapshots gets no file.

One bar per symbol and second that has at least one snapshot with both sides
(seconds without a snapshot have no row). Deterministic: rows ordered by
(symbol, bar_time), first/last by (recv_time, session_id, seq), one DuckDB thread,
fixed Parquet writer options; so a re-run writes the same bytes.
"""

from __future__ import annotations

import base64
import io

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


from orderbook_assets.analytics import views
from orderbook_assets.archive import datasets, derived, export
from orderbook_assets.archive.datasets import BARS_SCHEMA
from orderbook_assets.archive.store import ArchiveStore, open_store

DATASET = datasets.TOP_OF_BOOK_1S
SOURCE = "depth_snapshot"

#: The common writer conventions of every dataset (zstd, statistics, Parquet 2.6, the Arrow
#: schema stored with its metadata and nullability); ``symbol`` is the one dictionary column.
WRITER_OPTIONS = dict(export.WRITER_OPTIONS, use_dictionary=["symbol"])

_ORDER = "(recv_time, session_id, seq)"
#: ``{src}``: a registered table, or ``read_parquet($files)`` with the files as a parameter.
BARS_SQL = f"""
WITH tob AS (
    SELECT symbol, recv_time, session_id, seq,
           bids[1].price AS bid, asks[1].price AS ask, (bids[1].price + asks[1].price) / 2 AS mid
    FROM {{src}}
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
            return con.execute(BARS_SQL.format(src="src")).to_arrow_table().cast(BARS_SCHEMA)
        paths = [source] if isinstance(source, str) else list(source)
        if not paths:
            return BARS_SCHEMA.empty_table()
        return _bars_of_files(con, paths)
    finally:
        con.close()


def _bars_of_files(con: duckdb.DuckDBPyConnection, paths: list[str]) -> pa.Table:
    sql = BARS_SQL.format(src="read_parquet($files)")
    return con.execute(sql, {"files": paths}).to_arrow_table().cast(BARS_SCHEMA)


def _duck(s3_archive: views.Archive | None = None, s3: views.S3Settings | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(config={"threads": 1})  # one thread: sums in a fixed order
    con.execute("SET TimeZone = 'UTC'")
    if s3_archive is not None and s3_archive.is_s3:
        views.configure_s3(con, s3_archive, s3)
    return con


def plot_markdown(bars: pa.Table, every_s: int = 300, symbols: list[str] | None = None) -> str:
    """A small table per symbol (of ``symbols``, by default all): one row per ``every_s``
    seconds (mid, range, spread)."""
    if symbols is not None:
        bars = bars.filter(pc.is_in(bars["symbol"], pa.array(symbols, pa.string())))
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


def plot_png(bars: pa.Table, symbol: str, width: int = 600, height: int = 260) -> bytes:
    """A PNG of one symbol's bars: mid-price low–high band and last mid (top), mean
    spread (bottom), on a UTC time axis scaled to the data present. Same bars, same bytes."""
    # Imported here: the Agg backend and its fonts cost ~0.3 s, paid only when plotting.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    sel = bars.filter(pc.equal(bars["symbol"], symbol))
    t = sel["bar_time"].cast(pa.int64()).to_numpy().astype("datetime64[us]")
    dpi = 100
    fig, (top, bottom) = plt.subplots(
        2, 1, sharex=True, figsize=(width / dpi, height / dpi), dpi=dpi, gridspec_kw={"height_ratios": [2, 1]},
    )
    try:
        if sel.num_rows:
            top.fill_between(t, sel["min_mid"].to_numpy(), sel["max_mid"].to_numpy(), step="post",
                             color="tab:blue", alpha=0.3, linewidth=0, label="low–high")
            top.step(t, sel["last_mid"].to_numpy(), where="post", color="tab:blue", linewidth=0.8, label="mid")
            bottom.step(t, sel["mean_spread"].to_numpy(), where="post", color="tab:orange", linewidth=0.8)
            top.set_xlim(t.min(), t.max() + np.timedelta64(1, "s"))
        top.set_title(f"{symbol}, UTC", fontsize=9)
        top.set_ylabel("mid", fontsize=8)
        bottom.set_ylabel("spread", fontsize=8)
        bottom.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        for ax in (top, bottom):
            ax.tick_params(labelsize=7)
            ax.grid(True, linewidth=0.3)
        fig.tight_layout()
        out = io.BytesIO()
        fig.savefig(out, format="png", metadata={"Software": None})
        return out.getvalue()
    finally:
        plt.close(fig)


#: Symbols drawn in the run's metadata, the busiest of the hour: a picture per symbol of ``*``
#: (~1,450 symbols) took minutes and tens of MB of event log every hour, and nobody looks at
#: a thousand pictures. Every symbol's bars are in the hour's file.
PLOTTED_SYMBOLS = 5


def busiest(bars: pa.Table, n: int = PLOTTED_SYMBOLS) -> list[str]:
    """The ``n`` symbols with the most snapshots in ``bars``, busiest first (ties by name)."""
    if bars.num_rows == 0:
        return []
    per = bars.group_by("symbol").aggregate([("snapshots", "sum")])
    ranked = sorted(zip(per["symbol"].to_pylist(), per["snapshots_sum"].to_pylist()), key=lambda r: (-r[1], r[0]))
    return [sym for sym, _ in ranked[:n]]


def plot_metadata_markdown(bars: pa.Table, n: int = PLOTTED_SYMBOLS) -> str:
    """Markdown for the Dagster UI: a PNG (data URI) of each of the hour's ``n`` busiest
    symbols above their 5-minute table; its size does not grow with the symbols recorded."""
    shown = busiest(bars, n)
    total = pc.count_distinct(bars["symbol"]).as_py() if bars.num_rows else 0
    parts = [f"The {len(shown)} busiest of {total:,} symbols (by snapshots); every symbol's bars are in the "
             f"hour's file.\n" if total > len(shown) else ""]
    for sym in shown:
        sel = bars.filter(pc.equal(bars["symbol"], sym))
        png = base64.b64encode(plot_png(bars, sym)).decode()
        parts.append(
            f"**{sym}** mid {pc.min(sel['min_mid']).as_py():,.2f} – {pc.max(sel['max_mid']).as_py():,.2f} "
            f"(blue: low–high band and last mid per second), mean spread up to "
            f"{pc.max(sel['mean_spread']).as_py():.4f} (orange)\n\n"
            f"![{sym} mid and spread](data:image/png;base64,{png})\n"
        )
    parts.append(plot_markdown(bars, symbols=shown))
    return "\n".join(p for p in parts if p)


# --------------------------------------------------------------------------- the shell


def bars_key(hour_us: int) -> str:
    return f"{DATASET}/{views.hour_path(hour_us)}/bars.parquet"


def materialize_hour(
    archive_url: str, hour_us: int, s3: views.S3Settings | None = None, store: ArchiveStore | None = None,
    sources: list[str] | None = None,
) -> tuple[pa.Table, str | None]:
    """Read the hour's ``depth_snapshot`` files, write its bars; returns (bars, URL written).

    An hour without archived files writes nothing (URL None): a derived file must not
    claim an hour that holds no data, and readers already see "no rows" for it.
    ``store`` is where the bars go (the pipeline's archive store); by default one is
    opened for the URL. ``sources``: the hour's depth files when the caller has them
    locally (the pipeline's staged parts), instead of reading the archive again.
    """
    archive = views.Archive.parse(archive_url)
    con = _duck(archive, s3)
    try:
        if sources is None:
            pattern = archive.hour_glob(SOURCE, hour_us)
            sources = [pattern] if views.count_files(con, pattern) else []
        if not sources:
            return BARS_SCHEMA.empty_table(), None
        bars = _bars_of_files(con, sources)
    finally:
        con.close()
    write_parquet(bars, store or open_store(archive, s3), bars_key(hour_us))
    return bars, f"{archive.url}/{bars_key(hour_us)}"


def write_parquet(table: pa.Table, store: ArchiveStore, key: str) -> None:
    """Write ``table`` at ``key``: a derived dataset, so the object is replaced, then verified."""
    derived.publish_table(store, key, table, WRITER_OPTIONS)


