"""The analysts' views of every stream dataset, over a real archive and a real buffer, with and
without the unarchived tail (what ``orderbook query --with-tail`` gives)."""

from __future__ import annotations

import duckdb
import pytest

from orderbook_assets.analytics import query, views
from orderbook_assets.archive import datasets, pipeline
from orderbook_assets.archive.store import LocalStore

from support.buffer_rows import BASE_HOUR_US, open_buffer
from support.every_kind import fill

HOUR = BASE_HOUR_US
NAMES = ["trade", "agg_trade", "book_ticker", "depth_update", "depth_rest_snapshot", "depth_snapshot"]


def archive_hour(conn, st, staging):
    pipeline.export_and_upload(conn, st, staging, HOUR)
    pipeline.upload_coverage(conn, st, staging, HOUR)
    pipeline.mark_archived(conn, staging, HOUR)


@pytest.fixture
def recorded(tmp_path):
    """An archived hour of every dataset, then a later stretch only in the buffer."""
    db = tmp_path / "buffer.sqlite3"
    conn = open_buffer(db)
    st = LocalStore(tmp_path / "archive")
    first = fill(conn, HOUR)
    archive_hour(conn, st, tmp_path / "staging")
    later = fill(conn, HOUR, 6, offset_us=600_000_000, first_trade=90_000, session_base=10, first_update=50_000_000)
    conn.close()
    return tmp_path, first, later


def rows(con, name):
    rel = con.execute(f"SELECT * EXCLUDE (date, hour) FROM {name} ORDER BY market, stream, recv_time")
    cols = [d[0] for d in rel.description]
    return [dict(zip(cols, r)) for r in rel.fetchall()]


def expect(rows_):
    return sorted(rows_, key=lambda r: (r["market"], r["stream"], r["recv_time"]))


def test_every_dataset_view_reads_the_archive(recorded):
    root, first, _ = recorded
    con = duckdb.connect()
    info = views.register_views(con, str(root / "archive"))
    for name in NAMES:
        assert info.files[name] == 1, name
        assert rows(con, name) == expect(first[name]), name
        # the view's columns are the dataset's, then the Hive columns
        cols = [d[0] for d in con.execute(f"SELECT * FROM {name} LIMIT 0").description]
        assert cols == datasets.DATASETS[name].schema.names + ["date", "hour"]


def test_with_tail_every_dataset_view_adds_the_unarchived_rows_once(recorded):
    root, first, later = recorded
    con = duckdb.connect()
    info = views.register_views(con, str(root / "archive"), root / "buffer.sqlite3")
    for name in NAMES:
        assert info.tails[name] == len(later[name]) > 0, name
        assert rows(con, name) == expect(first[name] + later[name]), name
        assert con.execute(f"SELECT count(*) FROM {name}_tail").fetchone()[0] == len(later[name])


def test_a_part_uploaded_but_not_yet_marked_is_not_counted_twice(recorded):
    """The later rows exported and uploaded, not yet archived: the ledger still calls them tail,
    the dedup key removes them from it."""
    root, first, later = recorded
    conn = open_buffer(root / "buffer.sqlite3")
    pipeline.export_and_upload(conn, LocalStore(root / "archive"), root / "staging", HOUR)
    conn.close()
    con = duckdb.connect()
    info = views.register_views(con, str(root / "archive"), root / "buffer.sqlite3")
    for name in NAMES:
        assert info.tails[name] == len(later[name])
        assert con.execute(f"SELECT count(*) FROM {name}_tail").fetchone()[0] == 0
        assert rows(con, name) == expect(first[name] + later[name]), name


def test_empty_archive_gives_typed_empty_views(tmp_path):
    (tmp_path / "archive").mkdir()
    con = duckdb.connect()
    views.register_views(con, str(tmp_path / "archive"))
    for name in NAMES:
        assert con.execute(f"SELECT count(*) FROM {name}").fetchone() == (0,)
        types = {r[0]: r[1] for r in con.execute(f"DESCRIBE {name}").fetchall()}
        assert types["recv_time"] == "TIMESTAMP WITH TIME ZONE" and types["market"] == "VARCHAR"


def test_query_command_with_tail_counts_trades(recorded, capsys):
    root, first, later = recorded
    sql = "SELECT count(*) AS n FROM trade"
    assert query.main(["query", "--archive", str(root / "archive"), "--format", "csv", sql]) == 0
    assert capsys.readouterr().out.split()[-1] == str(len(first["trade"]))
    assert query.main(["query", "--archive", str(root / "archive"), "--buffer", str(root / "buffer.sqlite3"),
                       "--with-tail", "--format", "csv", sql]) == 0
    assert capsys.readouterr().out.split()[-1] == str(len(first["trade"]) + len(later["trade"]))
