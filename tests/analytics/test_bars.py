"""top_of_book_1s: 1-second bars, their plot, and the Dagster asset that writes them."""

from __future__ import annotations

import hashlib
import io
from contextlib import closing
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import matplotlib.image as mpimg
import numpy as np
import pyarrow.parquet as pq
import pytest

from orderbook_assets.analytics import views
from orderbook_assets.derived import bars
from orderbook_assets.archive import pipeline
from orderbook_assets.archive.store import LocalStore
from orderbook_assets.defs import bars as defs_bars
from orderbook_core import buffer

from support.synthetic import HOUR_US, T0, books, by_time, make_buffer, one_book, synthetic_depth, write_archive


def test_bars_aggregate_each_second_deterministically():
    """first/last by receive time then seq, min/max mid, mean spread, count; one-sided books skipped."""
    rows = [
        one_book("BTCUSDT", T0 + 100, [(10.0, 1)], [(12.0, 1)], seq=0, uid=1),      # mid 11, spread 2
        one_book("BTCUSDT", T0 + 900_000, [(13.0, 1)], [(14.0, 1)], seq=2, uid=3),  # mid 13.5, spread 1
        one_book("BTCUSDT", T0 + 900_000, [(9.0, 1)], [(10.0, 1)], seq=1, uid=2),   # same time, earlier seq
        one_book("BTCUSDT", T0 + 950_000, [], [(11.0, 1)], seq=3, uid=4),           # no bid: skipped
        one_book("BTCUSDT", T0 + 1_000_000, [(20.0, 1)], [(20.5, 1)], seq=4, uid=5),  # next second
        one_book("ETHUSDT", T0 + 5, [(1.0, 1)], [(1.5, 1)], seq=0, uid=9),
    ]
    table = books(rows)
    out = bars.bars_1s(table)
    assert out.schema == bars.BARS_SCHEMA
    got = out.to_pylist()
    assert [(r["symbol"], r["bar_time"].timestamp()) for r in got] == [
        ("BTCUSDT", T0 / 1e6), ("BTCUSDT", T0 / 1e6 + 1), ("ETHUSDT", T0 / 1e6)]
    first = got[0]
    assert (first["first_mid"], first["min_mid"], first["max_mid"], first["last_mid"]) == (11.0, 9.5, 13.5, 13.5)
    assert (first["last_best_bid"], first["last_best_ask"]) == (13.0, 14.0)
    assert first["mean_spread"] == pytest.approx(4 / 3) and first["snapshots"] == 3
    assert bars.bars_1s(table.take([5, 4, 3, 2, 1, 0])).equals(out)  # input order does not matter


def test_materialize_hour_writes_the_partition_and_same_bytes_twice(tmp_path):
    data = synthetic_depth(start_us=T0, seconds=30)
    write_archive(data, tmp_path)
    out, url = bars.materialize_hour(str(tmp_path), T0)
    path = tmp_path / "top_of_book_1s" / "date=2026-11-24" / "hour=09" / "bars.parquet"
    assert url == str(path) and out.num_rows == 2 * 30
    assert pq.read_table(path).num_rows == 60
    first = path.read_bytes()
    bars.materialize_hour(str(tmp_path), T0)
    assert path.read_bytes() == first
    empty, written = bars.materialize_hour(str(tmp_path), T0 + HOUR_US)  # no snapshots archived that hour
    assert empty.num_rows == 0 and written is None
    assert not (tmp_path / bars.bars_key(T0 + HOUR_US)).exists()  # nothing derived from nothing


def test_plot_png_draws_both_panels_on_a_time_axis_scaled_to_the_data():
    """A young hour (10 minutes of data) fills the plot's width, not a sliver of an hour."""
    out = bars.bars_1s(synthetic_depth(start_us=T0, seconds=600))
    png = bars.plot_png(out, "BTCUSDT", width=600, height=260)
    img = mpimg.imread(io.BytesIO(png))[:, :, :3]
    assert img.shape[:2] == (260, 600)
    blue = np.all(np.abs(img - np.array([0x1F, 0x77, 0xB4]) / 255) < 0.02, axis=2)
    orange = np.all(np.abs(img - np.array([0xFF, 0x7F, 0x0E]) / 255) < 0.02, axis=2)
    rows_b, cols_b = np.nonzero(blue)
    rows_o, cols_o = np.nonzero(orange)
    assert len(rows_b) > 200 and len(rows_o) > 200
    assert rows_b.max() < rows_o.min()  # mid on top, spread below
    # the data spans most of the width: a plot scaled to a whole hour would use a sixth of it
    assert cols_b.max() - cols_b.min() > 0.6 * 600
    assert bars.plot_png(out, "BTCUSDT", width=600, height=260) == png  # same bars, same bytes
    md = bars.plot_metadata_markdown(out)
    assert "data:image/png;base64," in md and "| UTC | last mid |" in md and "**ETHUSDT**" in md


def test_asset_materializes_a_partition_with_plot_metadata(tmp_path, monkeypatch):
    now_us = time.time_ns() // 1000
    hour = now_us - now_us % HOUR_US - HOUR_US  # the last complete hour: always a partition
    # the hour goes through the archive pipeline, as archive_hour does before the bars step
    make_buffer(tmp_path / "buffer.sqlite3", by_time(synthetic_depth(start_us=hour, seconds=20))).close()
    with closing(buffer.connect(tmp_path / "buffer.sqlite3")) as conn:
        store, staging = LocalStore(str(tmp_path)), tmp_path / "staging"
        pipeline.export_and_upload(conn, store, staging, hour)
        pipeline.upload_coverage(conn, store, staging, hour)
        pipeline.mark_archived(conn, staging, hour)
    monkeypatch.setenv("ORDERBOOK_ARCHIVE_URL", str(tmp_path))
    monkeypatch.setenv("ORDERBOOK_BUFFER", str(tmp_path / "buffer.sqlite3"))
    key = datetime.fromtimestamp(hour / 1e6, timezone.utc).strftime("%Y-%m-%d-%H:%M")
    from orderbook_assets.definitions import resources

    result = dg.materialize([defs_bars.top_of_book_1s], partition_key=key, resources=resources())
    assert result.success
    (mat,) = result.asset_materializations_for_node("top_of_book_1s")
    assert mat.metadata["rows"].value == 40
    assert "data:image/png;base64," in mat.metadata["mid_and_spread"].value
    assert (tmp_path / bars.bars_key(hour)).is_file()
    partitions = defs_bars.top_of_book_1s.partitions_def
    assert isinstance(partitions, dg.HourlyPartitionsDefinition) and partitions.timezone == "UTC"


def test_bars_written_to_s3(monkeypatch, tmp_path):
    from support.s3 import MotoServer, s3_client

    files = write_archive(synthetic_depth(start_us=T0, seconds=10), tmp_path)
    with MotoServer() as moto:
        client = s3_client(moto.url)
        client.create_bucket(Bucket="books")
        for f in files:
            client.upload_file(str(f), "books", f"a/{f.relative_to(tmp_path)}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto.url)
        monkeypatch.setenv("AWS_REGION", "us-east-1")
        monkeypatch.setenv("ORDERBOOK_ARCHIVE_URL", "s3://books/a")
        from orderbook_assets.definitions import resources

        s3 = defs_bars.s3_settings_from(resources()["archive"])
        assert (s3.endpoint_url, s3.key_id, s3.region) == (moto.url, "testing", "us-east-1")
        out, url = bars.materialize_hour("s3://books/a", T0, s3)
        assert url == "s3://books/a/" + bars.bars_key(T0)
        body = client.get_object(Bucket="books", Key="a/" + bars.bars_key(T0))["Body"].read()
        head = client.head_object(Bucket="books", Key="a/" + bars.bars_key(T0))
        assert head["ContentLength"] == len(body) > 0
        assert head["Metadata"]["sha256"] == hashlib.sha256(body).hexdigest()
        assert out.num_rows == 20


def test_query_views_include_the_bars_dataset(tmp_path):
    import duckdb

    write_archive(synthetic_depth(start_us=T0, seconds=5), tmp_path)
    con = duckdb.connect()
    views.register_views(con, str(tmp_path))
    assert con.sql("SELECT * FROM top_of_book_1s").columns == bars.BARS_SCHEMA.names  # empty, typed
    bars.materialize_hour(str(tmp_path), T0)
    views.register_views(con, str(tmp_path))
    assert con.sql("SELECT * FROM top_of_book_1s").columns == bars.BARS_SCHEMA.names
    assert con.sql("SELECT count(*), sum(snapshots) FROM top_of_book_1s").fetchone() == (10, 100)


def many_symbols_bars(n_symbols: int, seconds: int = 20) -> "pa.Table":
    """Bars of ``n_symbols`` symbols, symbol k with k + 1 snapshots a second (the busiest last)."""
    import pyarrow as pa

    rows = []
    for k in range(n_symbols):
        for s in range(seconds):
            mid = 100.0 + k + (s % 7) * 0.01
            rows.append({"symbol": f"S{k:04d}USDT", "bar_time": datetime.fromtimestamp(T0 / 1e6 + s, timezone.utc),
                         "first_mid": mid, "max_mid": mid + 0.01, "min_mid": mid - 0.01, "last_mid": mid,
                         "last_best_bid": mid - 0.005, "last_best_ask": mid + 0.005, "mean_spread": 0.01,
                         "snapshots": k + 1})
    return pa.Table.from_pylist(rows, schema=bars.BARS_SCHEMA)


def test_plot_metadata_draws_the_busiest_symbols_and_its_size_does_not_grow_with_the_symbols():
    """With ``*`` (~1,450 symbols) a picture each was minutes and tens of MB of event log an
    hour: the run's metadata draws the few busiest, and is as big for 1,500 symbols as for 5."""
    few, many = many_symbols_bars(bars.PLOTTED_SYMBOLS), many_symbols_bars(1_500)
    md = bars.plot_metadata_markdown(many)
    busiest = [f"S{k:04d}USDT" for k in range(1499, 1499 - bars.PLOTTED_SYMBOLS, -1)]
    assert bars.busiest(many) == busiest
    assert md.count("data:image/png;base64,") == bars.PLOTTED_SYMBOLS
    assert all(f"![{sym} mid and spread]" in md and f"**{sym}**\n\n| UTC |" in md for sym in busiest)
    assert "S1494USDT" not in md and "The 5 busiest of 1,500 symbols" in md
    meta = defs_bars.hour_metadata(many, "/archive/top_of_book_1s/x.parquet", T0)
    size = sum(len(str(v.value)) for v in meta.values())
    few_size = sum(len(str(v.value)) for v in defs_bars.hour_metadata(few, "/archive/x", T0).values())
    assert size < 1.2 * few_size and size < 300_000, (size, few_size)
    assert meta["symbols"].value.endswith("and 1,480 more (1,500 symbols)")
