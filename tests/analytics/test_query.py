"""The analysts' side: views over the archive, the buffer tail, the query command, S3."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orderbook_assets.analytics import query, views
from orderbook_core import buffer
from orderbook_core.errors import ConfigError
from support.synthetic import (
    HOUR_US, T0, books, by_time, make_buffer, one_book, synthetic_depth, write_archive,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def archive(tmp_path: Path) -> tuple[Path, pa.Table]:
    data = synthetic_depth(start_us=T0 + HOUR_US - 30_000_000, seconds=60)  # spans two hours
    root = tmp_path / "archive"
    write_archive(data, root)
    return root, data


def connect(root: Path, **kw) -> tuple[duckdb.DuckDBPyConnection, views.ViewInfo]:
    con = duckdb.connect()
    return con, views.register_views(con, str(root), **kw)


# ----------------------------------------------------------------------------- views


def test_top_of_book_has_the_contract_columns_and_microprice(tmp_path):
    """top_of_book: exact columns; mid, spread and microprice from the best levels."""
    write_archive(books([one_book("BTCUSDT", T0 + 1, [(100.0, 3.0), (99.0, 9.0)], [(101.0, 1.0)], 0, 10)]),
                  tmp_path)
    con, _ = connect(tmp_path)
    rel = con.sql("SELECT * FROM top_of_book")
    assert rel.columns == views.TOP_OF_BOOK_COLUMNS
    (row,) = rel.fetchall()
    assert row[2:] == (100.0, 3.0, 101.0, 1.0, 100.5, 1.0, (100.0 * 1.0 + 101.0 * 3.0) / 4.0)


def test_book_at_is_the_last_snapshot_at_or_before_the_time(archive):
    """book_at picks the newest snapshot not after the time, across an hour boundary."""
    root, data = archive
    con, info = connect(root)
    assert info.depth_files == 2 and info.tail_rows is None
    ts = "2026-11-24 10:00:00.050+00"
    (got,) = con.sql(f"SELECT recv_time, last_update_id FROM book_at('btcusdt', '{ts}')").fetchall()
    expect = con.sql(
        f"SELECT max(recv_time) FROM depth_snapshot WHERE symbol = 'BTCUSDT' AND recv_time <= TIMESTAMPTZ '{ts}'"
    ).fetchone()[0]
    assert got[0] == expect
    assert con.sql("SELECT count(*) FROM depth_snapshot").fetchone()[0] == data.num_rows


def test_book_at_unknown_symbol_and_too_early_are_one_sentence(archive):
    con, _ = connect(archive[0])
    with pytest.raises(duckdb.InvalidInputException, match=r"unknown symbol XRPUSDT; the archive holds BTCUSDT, ETHUSDT\."):
        con.sql("SELECT * FROM book_at('xrpusdt', '2026-11-24 10:00:00')").fetchall()
    with pytest.raises(duckdb.InvalidInputException, match=r"no BTCUSDT snapshot at or before 2026-11-24 08:00:00\+00; the first is at"):
        con.sql("SELECT * FROM book_at('BTCUSDT', '2026-11-24 08:00:00')").fetchall()


def test_empty_archive_gives_typed_empty_views_and_a_note(tmp_path):
    con, info = connect(tmp_path)
    assert info.empty and any("no depth_snapshot" in n for n in info.notes)
    assert con.sql("SELECT * FROM top_of_book").columns == views.TOP_OF_BOOK_COLUMNS
    assert con.sql("SELECT count(*) FROM coverage").fetchone() == (0,)
    assert con.sql("SELECT * FROM coverage").columns == views.coverage_schema().names


def test_coverage_view_reads_the_dataset_when_present(archive):
    root, _ = archive
    folder = root / "coverage" / "date=2026-11-24" / "hour=09"
    folder.mkdir(parents=True)
    hour = pa.array([T0, T0], pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    pq.write_table(pa.table({"record": ["session", "gap"], "hour_start": hour, "session_id": [1, 1],
                             "close_reason": ["rotation", None]}), folder / "part-0000-1-9.parquet")
    con, info = connect(root)
    assert info.coverage_files == 1
    assert con.sql("SELECT record, hour_start, close_reason FROM coverage ORDER BY 1").fetchall() == [
        ("gap", hour[0].as_py(), None), ("session", hour[0].as_py(), "rotation")]


# ----------------------------------------------------------------------------- the tail


def test_tail_decodes_packed_levels_like_the_archive(tmp_path):
    """read_tail turns packed float64 pairs back into the archive's list<struct> columns."""
    data = by_time(synthetic_depth(seconds=3, levels=5))
    make_buffer(tmp_path / "b.sqlite3", data).close()
    tail = views.read_tail(tmp_path / "b.sqlite3", views.DATASET)
    assert tail.schema == views.DEPTH_SCHEMA
    assert tail.select(data.column_names).to_pylist() == data.to_pylist()
    assert set(tail["market"].to_pylist()) == {"spot"} and tail["event_time"].null_count == tail.num_rows


def test_tail_skips_archived_parts_and_never_duplicates(tmp_path):
    """Archive ∪ tail has every row exactly once: archived parts are skipped by the ledger,
    and rows uploaded but not yet marked archived are removed by the dedup key."""
    data = by_time(synthetic_depth(start_us=T0 + HOUR_US - 5_000_000, seconds=10))  # 200 rows, two hours
    n = data.num_rows
    # The archive holds ids 1..150: 1..100 marked archived, 101..150 uploaded, not yet marked.
    write_archive(data.slice(0, 150), tmp_path / "archive")
    make_buffer(tmp_path / "b.sqlite3", data, archived=[(1, 100)]).close()
    tail = views.read_tail(tmp_path / "b.sqlite3", views.DATASET)
    assert tail.num_rows == n - 100
    con, info = connect(tmp_path / "archive", buffer_path=tmp_path / "b.sqlite3")
    assert info.tail_rows == n - 100
    assert con.sql("SELECT count(*) FROM depth_snapshot_tail").fetchone() == (n - 150,)
    total, distinct, last = con.sql(
        "SELECT count(*), count(DISTINCT (stream, last_update_id)), max(recv_time) FROM depth_snapshot").fetchone()
    assert total == distinct == n
    assert last == data["recv_time"][n - 1].as_py()


def test_tail_of_an_hour_with_a_gap_between_archived_parts(tmp_path):
    """Rows between two archived parts of one hour are in the tail; both parts are not."""
    data = by_time(synthetic_depth(seconds=2))  # 40 rows in one hour
    make_buffer(tmp_path / "b.sqlite3", data, archived=[(1, 10), (21, 30)]).close()
    tail = views.read_tail(tmp_path / "b.sqlite3", views.DATASET)
    want = data.slice(10, 10).to_pylist() + data.slice(30, 10).to_pylist()
    assert tail.select(data.column_names).to_pylist() == want


def test_missing_buffer_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="ORDERBOOK_BUFFER: .* does not exist"):
        views.read_tail(tmp_path / "nope.sqlite3", views.DATASET)


# ----------------------------------------------------------------------------- the command


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = query.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_query_command_prints_a_result(archive, capsys):
    root, _ = archive
    code, out, err = run_cli(capsys, "query", "--archive", str(root),
                             "SELECT symbol, count(*) AS n FROM top_of_book GROUP BY 1 ORDER BY 1")
    assert code == 0 and err == ""
    assert "BTCUSDT" in out and "ETHUSDT" in out and "600" in out


@pytest.mark.parametrize("where", [".", "hosts/collector=a"])
def test_a_simulated_archive_is_noted_on_stderr(archive, capsys, where):
    """The marker the demo's archive runs write (at the root, or in a fleet host's folder)."""
    root, _ = archive
    from orderbook_assets.archive import source

    (root / where).mkdir(parents=True, exist_ok=True)
    (root / where / source.MARKER_KEY).write_text(source.MARKER_TEXT)
    code, out, err = run_cli(capsys, "--archive", str(root), "--format", "csv", "SELECT count(*) AS n FROM depth_snapshot")
    assert code == 0 and out.splitlines() == ['"n"', "1200"]
    assert err == (f"note: The archive at {root} was recorded from the simulated exchange of `make demo` "
                   "(SIMULATED.txt): the books are synthetic, not Binance's.\n")


@pytest.mark.parametrize(
    "sql, message",
    [
        ("SELEC * FROM top_of_book", 'the SQL could not be parsed: syntax error at or near "SELEC".'),
        ("SELECT * FROM book_at('dogeusdt', now())", "book_at: unknown symbol DOGEUSDT; the archive holds BTCUSDT, ETHUSDT."),
        ("SELECT * FROM nope", "Table with name nope does not exist (the views are"),
    ],
)
def test_bad_queries_give_one_sentence_and_exit_2(archive, capsys, sql, message):
    code, out, err = run_cli(capsys, "--archive", str(archive[0]), "--format", "csv", sql)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_empty_archive_and_missing_folder_give_one_sentence(tmp_path, capsys):
    code, _, err = run_cli(capsys, "--archive", str(tmp_path), "SELECT 1")
    assert code == 2 and "holds no depth_snapshot data yet" in err and err.count("\n") == 1
    code, _, err = run_cli(capsys, "--archive", str(tmp_path / "absent"), "SELECT 1")
    assert code == 2 and "does not exist" in err and err.count("\n") == 1


def test_missing_s3_credentials_give_one_sentence(monkeypatch, tmp_path, capsys):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code, _, err = run_cli(capsys, "--archive", "s3://bucket/prefix", "SELECT 1")
    assert code == 2 and err.count("\n") == 1
    assert "AWS credentials: none found for the S3 archive" in err


def test_write_db_holds_views_and_tail_for_any_client(tmp_path, capsys):
    data = by_time(synthetic_depth(seconds=2))
    write_archive(data.slice(0, 30), tmp_path / "archive")
    make_buffer(tmp_path / "b.sqlite3", data, archived=[(1, 30)]).close()
    db = tmp_path / "book.duckdb"
    code, _, err = run_cli(capsys, "--archive", str(tmp_path / "archive"), "--buffer", str(tmp_path / "b.sqlite3"),
                           "--with-tail", "--write-db", str(db))
    assert code == 0 and "wrote the views" in err
    other = duckdb.connect(str(db), read_only=True)  # a plain client: no orderbook code involved
    assert other.sql("SELECT count(*) FROM top_of_book").fetchone() == (data.num_rows,)
    assert other.sql("SELECT count(*) FROM book_at('ethusdt', TIMESTAMPTZ '2026-11-24 10:00:00+00')").fetchone() == (1,)


def test_console_script_reads_sql_from_stdin(archive):
    """The installed entry point, end to end, with SQL on a pipe and CSV output."""
    root, _ = archive
    proc = subprocess.run(
        [sys.executable, "-m", "orderbook_assets.analytics.query", "--archive", str(root), "--format", "csv"],
        input="SELECT count(*) AS n FROM depth_snapshot", capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ['"n"', "1200"]


# ----------------------------------------------------------------------------- S3


def test_views_read_s3_through_bundled_httpfs(monkeypatch, tmp_path):
    """httpfs from the duckdb-extension-httpfs wheel + a secret from the boto3 chain, on moto."""
    from support.s3 import MotoServer, s3_client

    data = synthetic_depth(seconds=5)
    files = write_archive(data, tmp_path)
    with MotoServer() as moto:
        client = s3_client(moto.url)
        client.create_bucket(Bucket="books")
        for f in files:
            client.upload_file(str(f), "books", f"prod/{f.relative_to(tmp_path)}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_REGION", "us-east-1")
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto.url)
        con = duckdb.connect()
        info = views.register_views(con, "s3://books/prod")
        assert info.depth_files == 1 and not info.simulated
        client.put_object(Bucket="books", Key="prod/SIMULATED.txt", Body=b"simulated")
        assert views.register_views(duckdb.connect(), "s3://books/prod").simulated
        assert con.sql("SELECT count(*), count(DISTINCT symbol) FROM top_of_book").fetchone() == (data.num_rows, 2)
        with pytest.raises(Exception, match="does not exist \\(S3 answered 404\\)"):
            views.register_views(duckdb.connect(), "s3://no-such-bucket/prod")


def test_secret_sql_follows_the_endpoint_scheme():
    s = views.S3Settings("eu-west-1", "https://minio.local:9000", "AK", "S'K")
    sql = s.secret_sql(scope="s3://b")
    assert "ENDPOINT 'minio.local:9000'" in sql and "URL_STYLE 'path'" in sql and "USE_SSL true" in sql
    assert "SECRET 'S''K'" in sql and "REGION 'eu-west-1'" in sql
    assert "ENDPOINT" not in views.S3Settings("us-east-1", None, "AK", "SK").secret_sql()
