"""Every stream dataset through the real pipeline: a buffer filled by the writer, archived once
(local folder and moto S3), values equal to what was stored, re-runs idempotent, late rows in a
later part; each dataset's checks pass on clean data and fail on a planted defect; coverage
carries the continuity records."""

from __future__ import annotations

import duckdb
import pytest

from orderbook_core.buffer import ledger
from orderbook_assets.archive import cleanup, datasets, pipeline, quality
from orderbook_assets.archive.store import LocalStore, S3Store

from support.buffer_rows import BASE_HOUR_US, open_buffer
from support.every_kind import Defects, fill
from support.s3 import MotoServer, s3_client

HOUR = BASE_HOUR_US
ORDER = "ORDER BY market, stream, recv_time"


@pytest.fixture
def env(tmp_path):
    conn = open_buffer(tmp_path / "buffer.sqlite3")
    yield conn, LocalStore(tmp_path / "archive"), tmp_path / "staging"
    conn.close()


def archive(conn, st, staging, hour_us=HOUR):
    """The archive_hour job's steps, each dataset's checks required to pass."""
    out = pipeline.export_and_upload(conn, st, staging, hour_us)
    for dataset in datasets.DATASETS:
        checks = pipeline.check_parts(conn, st, staging, hour_us, dataset)
        assert not [r for r in checks.results if not r.passed], (dataset, checks.results)
    cov = pipeline.upload_coverage(conn, st, staging, hour_us)
    done = pipeline.mark_archived(conn, staging, hour_us)
    return out, cov, done


def read(url: str, dataset: str, setup: str = "") -> list[dict]:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    if setup:
        con.execute(setup)
    rel = con.execute(
        f"SELECT * EXCLUDE (date, hour) FROM read_parquet('{url}/{dataset}/**/*.parquet', hive_partitioning = true) {ORDER}"
    )
    names = [d[0] for d in rel.description]
    return [dict(zip(names, r)) for r in rel.fetchall()]


def expect(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (r["market"], r["stream"], r["recv_time"]))


def objects(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.parquet"))


def test_every_dataset_archived_once_to_a_local_folder_values_equal(env):
    conn, st, staging = env
    want = fill(conn, HOUR)
    out, cov, done = archive(conn, st, staging)
    for dataset, rows in want.items():
        assert rows, dataset  # the premise: every dataset has rows
        got = read(str(st.root), dataset)
        assert got == expect(rows), dataset
        assert list(got[0]) == datasets.DATASETS[dataset].schema.names  # the contract's columns, in order
        assert [p.state for p in ledger.parts(conn, dataset, HOUR)] == ["archived"]
    # streams as subscribed, markets and upper-case symbols from the streams table
    assert {r["stream"] for r in read(str(st.root), "depth_update")} == {"btcusdt@depth@100ms"}
    assert {(r["market"], r["symbol"]) for r in read(str(st.root), "book_ticker")} == {("spot", "BTCUSDT"), ("usdm", "BTCUSDT")}
    # the continuity tables are archived inside coverage, with the round
    assert [p.state for p in ledger.parts(conn, "depth_sync", HOUR)] == ["archived"]
    assert [p.state for p in ledger.parts(conn, "trade_gap", HOUR)] == ["archived"]
    before = objects(st.root)
    assert len(before) == len(datasets.DATASETS) + 1  # a part per dataset and the round's coverage
    # a re-run plans nothing, writes nothing
    again, _, _ = archive(conn, st, staging)
    assert again.round == [] and objects(st.root) == before
    # late rows: a further part per dataset that got some, the earlier ones untouched
    late = fill(conn, HOUR, 6, offset_us=600_000_000, first_trade=90_000, session_base=10, first_update=50_000_000)
    out, _, _ = archive(conn, st, staging)
    assert sorted(p.dataset for p in out.round) == sorted([*datasets.DATASETS, "depth_sync", "trade_gap", "coverage"])
    for dataset in datasets.DATASETS:
        assert [p.part for p in ledger.parts(conn, dataset, HOUR, ("archived",))] == [1, 2]
        assert read(str(st.root), dataset) == expect(want[dataset] + late[dataset]), dataset
    assert set(before) < set(objects(st.root))
    # cleanup frees every table's archived rows, continuity included
    cleanup.run(conn, 0, pause=0)
    for table in (*datasets.DATASETS, "depth_sync", "trade_gap"):
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0, table


def test_every_dataset_archived_once_to_moto_s3(env, tmp_path):
    conn, _, staging = env
    want = fill(conn, HOUR)
    with MotoServer() as moto:
        client = s3_client(moto.url, "eu-west-1")
        st = S3Store(client, "archive", "books")
        st.provision("eu-west-1", custom_endpoint=True)
        archive(conn, st, staging)
        keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="archive")["Contents"] if o["Key"].endswith(".parquet"))
        archive(conn, st, staging)  # idempotent: no second object
        assert sorted(o["Key"] for o in client.list_objects_v2(Bucket="archive")["Contents"]
                      if o["Key"].endswith(".parquet")) == keys
        assert len(keys) == len(datasets.DATASETS) + 1
        # what is in the bucket reads back equal (downloaded: the staged copies are not the proof)
        local = tmp_path / "copy"
        for key in keys:
            path = local / key.removeprefix("books/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(client.get_object(Bucket="archive", Key=key)["Body"].read())
    for dataset, rows in want.items():
        assert read(str(local), dataset) == expect(rows), dataset


def _results(conn, st, staging, dataset):
    pipeline.export_and_upload(conn, st, staging, HOUR)
    return {r.name: r for r in pipeline.check_parts(conn, st, staging, HOUR, dataset).results}


def test_clean_data_passes_every_check_of_every_dataset(env):
    conn, st, staging = env
    fill(conn, HOUR)
    for dataset, checks in quality.CHECKS.items():
        got = _results(conn, st, staging, dataset)
        assert list(got) == list(checks)
        assert all(r.passed for r in got.values()), (dataset, [r for r in got.values() if not r.passed])
    breaks = _results(conn, st, staging, "depth_update")["depth_continuity"]
    assert breaks.detail["recorded_breaks"] == 1  # the premise: the data has a recorded break
    assert _results(conn, st, staging, "trade")["trade_id_continuity"].detail["recorded_gaps"] == 1


def test_an_unrecorded_diff_depth_break_fails(env):
    conn, st, staging = env
    fill(conn, HOUR, defects=Defects(unrecorded_break=True))
    r = _results(conn, st, staging, "depth_update")["depth_continuity"]
    assert not r.passed and r.count == 1 and r.severity == "ERROR"
    assert (r.examples[0]["market"], r.examples[0]["stream"]) == ("usdm", "btcusdt@depth@100ms")


def test_an_unrecorded_trade_id_gap_fails(env):
    conn, st, staging = env
    fill(conn, HOUR, defects=Defects(unrecorded_trade_gap=True))
    r = _results(conn, st, staging, "trade")["trade_id_continuity"]
    assert not r.passed and r.count == 5 and r.detail["recorded_gaps"] == 1
    assert r.examples[0]["last_missing"] - r.examples[0]["first_missing"] == 4


def test_a_crossed_book_ticker_warns_and_a_backwards_update_id_fails(env):
    conn, st, staging = env
    fill(conn, HOUR, defects=Defects(crossed_ticker=True, backwards_ticker=True))
    got = _results(conn, st, staging, "book_ticker")
    assert not got["books_sane"].passed and got["books_sane"].severity == "WARN" and got["books_sane"].detail["crossed"] == 1
    assert not got["update_id_monotonic"].passed and got["update_id_monotonic"].count == 1
    assert got["update_id_monotonic"].examples[0]["update_id"] == 10


def test_duplicates_and_unreconciled_rows_fail(env, tmp_path):
    """A part holding a row twice (a file that is not what the buffer holds) fails both checks."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    conn, st, staging = env
    fill(conn, HOUR)
    pipeline.export_and_upload(conn, st, staging, HOUR)
    [part] = ledger.parts(conn, "trade", HOUR)
    t = pq.read_table(st.root / part.object_key)
    doubled = tmp_path / "doubled.parquet"
    pq.write_table(pa.concat_tables([t, t.slice(0, 1)]), doubled)
    res = {r.name: r for r in quality.run_all([str(doubled)], buffer_rows=t.num_rows, archived_rows={"p": t.num_rows},
                                              dataset="trade")}
    assert not res["no_duplicates"].passed and res["no_duplicates"].detail["by_dedup_key"] == 1
    assert not res["rows_reconciled"].passed and res["rows_reconciled"].detail["parquet_rows"] == t.num_rows + 1


def test_coverage_records_breaks_resyncs_and_trade_gaps_per_stream(env):
    conn, st, staging = env
    fill(conn, HOUR)
    archive(conn, st, staging)
    con = duckdb.connect()
    rows = con.execute(
        f"SELECT record, market, stream, dataset, reason, first_id, last_id, snapshot_id, messages "
        f"FROM read_parquet('{st.root}/coverage/**/*.parquet', hive_partitioning = true) "
        "WHERE record NOT IN ('session', 'gap') ORDER BY record"
    ).fetchall()
    assert rows == [
        ("break", "spot", "btcusdt@depth@100ms", "depth_update", "gap", 1_000_060, 1_000_071, None, None),
        ("resync", "spot", "btcusdt@depth@100ms", "depth_rest_snapshot", "gap", None, None, 1_000_073, None),
        # forceOrder is a sample by design: coverage says so, with the rows it holds
        ("sampled", "usdm", "btcusdt@forceOrder", "liquidation", "latest_per_second", None, None, None, 20),
        ("synced", "spot", "btcusdt@depth@100ms", "depth_update", "snapshot", 1_000_071, 1_000_073, 1_000_073, None),
        ("trade_gap", "spot", "btcusdt@trade", "trade", None, 5_013, 5_017, None, 5),
    ]
    sessions = con.execute(
        f"SELECT session_id, messages FROM read_parquet('{st.root}/coverage/**/*.parquet') WHERE record = 'session' ORDER BY 1"
    ).fetchall()
    # every message of every dataset of each session is counted (spot: 5 kinds, USD-M: 4 and a
    # liquidation every other event)
    assert [m for _, m in sessions] == [40 * 5, 40 * 4 + 40 // 2]
