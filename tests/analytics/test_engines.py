"""The archive read by the engines analysts grow into: PyArrow, Polars, Spark (docs/engines.md).

One real archive, made here by the pipeline itself (buffer → export_and_upload → checks →
coverage → mark_archived → 1 s bars) into a local store, spanning two UTC hours on two dates
(2026-11-30 23:00 and 2026-12-01 00:00) so that date filters are exercised across a day.
Every engine must give DuckDB's answer: row counts, exact integer checksums (the sum of
receive times in epoch microseconds proves no engine truncates to milliseconds), float
checksums over every level, and the analyst query of docs/engines.md (mean spread per
symbol from the best levels). The snippets of docs/engines.md are executed as written
(only the archive path is substituted), so the page cannot drift from what works.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from orderbook_assets.derived import bars
from orderbook_assets.archive import datasets, pipeline
from orderbook_assets.archive.store import LocalStore
from support.buffer_rows import HOUR_US, fill_buffer, open_buffer
from support.requires import in_ci

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "engines.md"
#: 2026-11-30 23:00 UTC; the second hour is on the next date.
H0 = 1_796_079_600_000_000
HOURS = (H0, H0 + HOUR_US)
SYMBOLS = ["btcusdt", "ethusdt", "solusdt"]
#: Rows start 0.123457 s into each hour and the symbols are 7 µs apart, so receive times have
#: non-zero microsecond digits a millisecond truncation would change.
OFFSET_US = 123_457
DATASETS = (datasets.DEPTH, datasets.COVERAGE, datasets.TOP_OF_BOOK_1S)
#: The time column of each dataset whose epoch-µs sum is compared.
TIME_COLUMN = {datasets.DEPTH: "recv_time", datasets.COVERAGE: "as_of", datasets.TOP_OF_BOOK_1S: "bar_time"}


# --------------------------------------------------------------------------- the archive


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """Two archived hours (3 symbols × 200 books at 100 ms each) with coverage and bars."""
    tmp = tmp_path_factory.mktemp("engines")
    db, root, staging = tmp / "buffer.sqlite3", tmp / "archive", tmp / "staging"
    for i, hour in enumerate(HOURS):
        fill_buffer(db, SYMBOLS, hour + OFFSET_US, 200, session_id=hour + 1, first_update_id=1_000 + 100_000 * i)
    store = LocalStore(root)
    conn = open_buffer(db)
    try:
        for hour in HOURS:
            pipeline.export_and_upload(conn, store, staging, hour)
            checks = pipeline.check_parts(conn, store, staging, hour, datasets.DEPTH)
            assert not checks.blocking_failures, checks.blocking_failures
            pipeline.upload_coverage(conn, store, staging, hour)
            assert pipeline.mark_archived(conn, staging, hour)
            bars.materialize_hour(str(root), hour, store=store, sources=pipeline.archived_copies(conn, store, staging, hour, datasets.DEPTH))
    finally:
        conn.close()
    for dataset in DATASETS:
        assert sorted(p.parent.parent.name + "/" + p.parent.name for p in (root / dataset).rglob("*.parquet")) == [
            "date=2026-11-30/hour=23", "date=2026-12-01/hour=00"], dataset
    return root


def duck(root: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con


def duck_facts(root: Path, dataset: str) -> dict:
    """DuckDB's answer for a dataset: rows and checksums (the reference)."""
    con = duck(root)
    src = f"read_parquet('{root}/{dataset}/**/*.parquet', hive_partitioning = true)"
    facts = dict(zip(("rows", "time_us"), con.execute(
        f"SELECT count(*), sum(epoch_us({TIME_COLUMN[dataset]}))::BIGINT FROM {src}").fetchone()))
    if dataset == datasets.DEPTH:
        facts.update(zip(("seq", "update_id", "levels"), con.execute(
            f"SELECT sum(seq), sum(last_update_id), "
            f"sum(list_sum([l.price * l.qty FOR l IN bids]) + list_sum([l.price * l.qty FOR l IN asks])) FROM {src}"
        ).fetchone()))
    elif dataset == datasets.TOP_OF_BOOK_1S:
        facts.update(zip(("snapshots", "spread"), con.execute(f"SELECT sum(snapshots), sum(mean_spread) FROM {src}").fetchone()))
    else:
        facts["messages"] = con.execute(f"SELECT sum(messages) FROM {src}").fetchone()[0]
    con.close()
    return facts


def duck_spread(root: Path, date: str, hour: int) -> dict[str, float]:
    """The analyst query in DuckDB: mean spread per symbol from the best levels of one hour."""
    con = duck(root)
    rows = con.execute(
        f"SELECT symbol, avg(asks[1].price - bids[1].price) FROM read_parquet('{root}/depth_snapshot/**/*.parquet', "
        "hive_partitioning = true) WHERE date = ?::DATE AND hour = ? GROUP BY symbol", [date, hour]).fetchall()
    con.close()
    assert len(rows) == len(SYMBOLS)
    return dict(rows)


def assert_facts(got: dict, want: dict) -> None:
    """Integers exactly; float sums (different summation orders per engine) to 1e-12 relative."""
    assert got.keys() == want.keys()
    for k, w in want.items():
        if isinstance(w, float):
            assert got[k] == pytest.approx(w, rel=1e-12), k
        else:
            assert got[k] == w, k


def snippet(name: str, archive: Path, **names) -> dict:
    """Run the docs/engines.md code block after ``<!-- snippet: name -->`` with the archive path swapped in."""
    text = DOC.read_text()
    m = re.search(rf"<!-- snippet: {name} -->\s*```python\n(.*?)```", text, re.S)
    assert m, f"docs/engines.md has no python block after <!-- snippet: {name} -->"
    code = m.group(1)
    if "archive" in code:
        assert 'archive = "data/archive"' in code  # the one line the test changes
    code = code.replace('archive = "data/archive"', f"archive = {str(archive)!r}")
    ns = dict(names)
    exec(compile(code, f"docs/engines.md:{name}", "exec"), ns)  # noqa: S102 (our own documentation)
    return ns


def test_every_dataset_is_written_with_the_common_conventions(archive):
    """Stored Arrow schema (so nullability and the UTC zone survive), the dataset's name and
    schema version in the metadata, the columns of archive/datasets.py: derived datasets included."""
    import pyarrow.parquet as pq

    schemas = {datasets.DEPTH: datasets.DEPTH_SCHEMA, datasets.COVERAGE: datasets.COVERAGE_SCHEMA,
               datasets.TOP_OF_BOOK_1S: datasets.BARS_SCHEMA}
    for dataset, want in schemas.items():
        for path in (archive / dataset).rglob("*.parquet"):
            f = pq.ParquetFile(path)
            meta = f.metadata.metadata
            assert b"ARROW:schema" in meta, path
            assert meta[b"orderbook.dataset"] == dataset.encode()
            assert meta[b"orderbook.schema_version"] == want.metadata[b"orderbook.schema_version"]
            got = f.schema_arrow
            assert got.equals(want, check_metadata=False), (path, got)
            assert [fl.nullable for fl in got] == [fl.nullable for fl in want]
            assert f.metadata.row_group(0).column(0).compression == "ZSTD"


def test_duckdb_partition_types_with_and_without_hive_types(archive):
    """The reference engine's own answers (docs/engines.md's first rows)."""
    con = duck(archive)
    src = f"'{archive}/depth_snapshot/**/*.parquet'"
    raw = {r[0]: r[1] for r in con.execute(
        f"DESCRIBE SELECT date, hour, recv_time, bids FROM read_parquet({src}, hive_partitioning = true)").fetchall()}
    late = {r[0]: r[1] for r in con.execute(  # the 23:00 hour alone: no leading zero
        f"DESCRIBE SELECT hour FROM read_parquet('{archive}/depth_snapshot/date=2026-11-30/**/*.parquet', "
        "hive_partitioning = true)").fetchall()}
    typed = {r[0]: r[1] for r in con.execute(
        f"DESCRIBE SELECT date, hour FROM read_parquet({src}, hive_partitioning = true, "
        "hive_types = {'date': DATE, 'hour': INTEGER})").fetchall()}
    con.close()
    # `hour=00` is among the folders: DuckDB keeps the text (its guess is BIGINT only while no
    # hour has a leading zero), so raw queries must not rely on hour being a number.
    assert raw == {"date": "DATE", "hour": "VARCHAR", "recv_time": "TIMESTAMP WITH TIME ZONE",
                   "bids": "STRUCT(price DOUBLE, qty DOUBLE)[]"}
    assert late == {"hour": "BIGINT"}
    assert typed == {"date": "DATE", "hour": "INTEGER"}


# --------------------------------------------------------------------------- PyArrow


def test_pyarrow_reads_every_dataset_with_duckdbs_values(archive):
    import pyarrow.compute as pc

    for dataset in DATASETS:
        # Default discovery: `date` stays a string, `hour` becomes int32.
        default = ds.dataset(archive / dataset, format="parquet", partitioning="hive")
        assert (default.schema.field("date").type, default.schema.field("hour").type) == (pa.string(), pa.int32())
        # The documented partitioning schema: date32 and int32.
        table = ds.dataset(archive / dataset, format="parquet", partitioning=ds.partitioning(
            pa.schema([("date", pa.date32()), ("hour", pa.int32())]), flavor="hive")).to_table()
        assert (table.schema.field("date").type, table.schema.field("hour").type) == (pa.date32(), pa.int32())
        assert table.schema.field(TIME_COLUMN[dataset]).type == pa.timestamp("us", tz="UTC")
        if dataset == datasets.DEPTH:
            assert table.schema.field("bids").type == datasets.LEVELS
        got = {"rows": table.num_rows, "time_us": pc.sum(table[TIME_COLUMN[dataset]].cast(pa.int64())).as_py()}
        if dataset == datasets.DEPTH:
            levels = 0.0
            for side in ("bids", "asks"):
                flat = pc.list_flatten(table[side])
                levels += pc.sum(pc.multiply(pc.struct_field(flat, "price"), pc.struct_field(flat, "qty"))).as_py()
            got.update(seq=pc.sum(table["seq"]).as_py(), update_id=pc.sum(table["last_update_id"]).as_py(), levels=levels)
        elif dataset == datasets.TOP_OF_BOOK_1S:
            got.update(snapshots=pc.sum(table["snapshots"]).as_py(), spread=pc.sum(table["mean_spread"]).as_py())
        else:
            got["messages"] = pc.sum(table["messages"]).as_py()
        assert_facts(got, duck_facts(archive, dataset))

    ns = snippet("pyarrow", archive)
    assert ns["table"].schema.field("date").type == pa.date32()
    assert set(ns["table"]["hour"].to_pylist()) == {23}
    spread = dict(zip(ns["spread"]["symbol"].to_pylist(), ns["spread"]["spread_mean"].to_pylist()))
    assert spread == pytest.approx(duck_spread(archive, "2026-11-30", 23), rel=1e-12)


# --------------------------------------------------------------------------- Polars


def test_polars_reads_every_dataset_with_duckdbs_values(archive):
    import polars as pl

    for dataset in DATASETS:
        frame = pl.scan_parquet(f"{archive}/{dataset}/**/*.parquet", hive_partitioning=True)
        schema = frame.collect_schema()
        assert (schema["date"], schema["hour"]) == (pl.Date, pl.Int64)
        assert schema[TIME_COLUMN[dataset]] == pl.Datetime("us", "UTC")
        if dataset == datasets.DEPTH:
            assert schema["bids"] == pl.List(pl.Struct({"price": pl.Float64, "qty": pl.Float64}))
        t = pl.col(TIME_COLUMN[dataset])
        aggs = [pl.len().alias("rows"), t.dt.epoch("us").sum().alias("time_us")]
        if dataset == datasets.DEPTH:
            level = pl.element().struct.field("price") * pl.element().struct.field("qty")
            aggs += [pl.col("seq").sum().alias("seq"), pl.col("last_update_id").sum().alias("update_id"),
                     (pl.col("bids").list.eval(level).list.sum() + pl.col("asks").list.eval(level).list.sum()).sum().alias("levels")]
        elif dataset == datasets.TOP_OF_BOOK_1S:
            aggs += [pl.col("snapshots").sum().alias("snapshots"), pl.col("mean_spread").sum().alias("spread")]
        else:
            aggs += [pl.col("messages").sum().alias("messages")]
        got = frame.select(aggs).collect().row(0, named=True)
        assert_facts(got, duck_facts(archive, dataset))

    glob = f"{archive}/depth_snapshot/**/*.parquet"
    # the two documented ways to other partition types
    pinned = pl.scan_parquet(glob, hive_partitioning=True, hive_schema={"date": pl.Date, "hour": pl.Int32})
    assert dict(pinned.select("date", "hour").collect_schema()) == {"date": pl.Date, "hour": pl.Int32}
    assert pinned.select(pl.col("hour").unique().sort()).collect().to_series().to_list() == [0, 23]
    as_text = pl.scan_parquet(glob, hive_partitioning=True, try_parse_hive_dates=False)
    assert as_text.collect_schema()["date"] == pl.String
    depth = pl.scan_parquet(glob, hive_partitioning=True)
    # A date written as a string does not compare with Polars' Date column: the docs say use date().
    with pytest.raises(pl.exceptions.InvalidOperationError, match="cannot compare"):
        depth.filter(pl.col("date") == "2026-11-30").collect()
    ns = snippet("polars", archive)
    assert dict(ns["spread"].iter_rows()) == pytest.approx(duck_spread(archive, "2026-11-30", 23), rel=1e-12)
    assert dict(ns["spread_utc_day"].iter_rows()) == pytest.approx(duck_spread(archive, "2026-12-01", 0), rel=1e-12)


# --------------------------------------------------------------------------- Spark


def _require(what: str, ok: bool, how: str) -> None:
    """Skip where the engine is absent, except on CI: there a missing engine is a failure."""
    if ok:
        return
    if in_ci():  # the one reading of CI (CI=0 or false is no CI)
        pytest.fail(f"{what} is missing on CI ({how}); the Spark test must run there, not skip")
    pytest.skip(f"{what} is not installed here ({how})")


def test_a_missing_engine_fails_on_ci_and_skips_elsewhere(monkeypatch):
    for value in ("true", "1"):  # .ci/run sets CI=1, hosted runners CI=true
        monkeypatch.setenv("CI", value)
        with pytest.raises(pytest.fail.Exception, match="missing on CI"):
            _require("Java", False, "bash tools/system-deps.sh java")
    for value in (None, "0", "false"):
        if value is None:
            monkeypatch.delenv("CI")
        else:
            monkeypatch.setenv("CI", value)
        with pytest.raises(pytest.skip.Exception):
            _require("Java", False, "bash tools/system-deps.sh java")
    _require("Java", True, "")  # present: nothing happens


@pytest.fixture(scope="module")
def spark(archive, tmp_path_factory):
    _require("Java", shutil.which("java") is not None, "bash tools/system-deps.sh java")
    java = subprocess.run(["java", "-version"], capture_output=True, text=True)
    _require("Java 17+", java.returncode == 0 and re.search(r'version "(1[7-9]|[2-9]\d)', java.stderr) is not None,
             "bash tools/system-deps.sh java")
    try:
        import pyspark  # noqa: F401
    except ImportError:
        _require("pyspark", False, "pip install -e '.[dev]'")
    # One core, no UI, everything bound to loopback: a small, quiet, local Spark. Whole-stage
    # codegen and adaptive execution cost more compile and planning time than they save on a
    # few thousand rows; C1-only JIT starts the JVM faster. (The JVM's zone comes from the snippet.)
    env = {
        "SPARK_LOCAL_IP": "127.0.0.1",
        "JDK_JAVA_OPTIONS": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
        "PYSPARK_SUBMIT_ARGS": (
            "--master local[1] --conf spark.ui.enabled=false --conf spark.ui.showConsoleProgress=false "
            "--conf spark.driver.bindAddress=127.0.0.1 --conf spark.driver.host=127.0.0.1 "
            "--conf spark.sql.shuffle.partitions=1 --conf spark.sql.adaptive.enabled=false "
            "--conf spark.sql.codegen.wholeStage=false "
            f"--conf spark.sql.warehouse.dir={tmp_path_factory.mktemp('spark-warehouse')} pyspark-shell"
        ),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ns = snippet("spark-session", archive)  # the documented session: UTC for SQL and for the JVM
    session = ns["spark"]
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.slow  # a JVM: about 25 s on two busy cores
def test_spark_reads_every_dataset_with_duckdbs_values(archive, spark):
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
    assert spark.sparkContext._jvm.java.util.TimeZone.getDefault().getID() == "UTC"  # the driver's JVM zone
    for dataset in DATASETS:
        df = spark.read.option("basePath", f"{archive}/{dataset}").parquet(f"{archive}/{dataset}")
        types = dict(df.dtypes)
        assert (types["date"], types["hour"], types[TIME_COLUMN[dataset]]) == ("date", "int", "timestamp")
        df.createOrReplaceTempView("t")
        sql = f"SELECT count(*) AS rows, sum(unix_micros({TIME_COLUMN[dataset]})) AS time_us"
        if dataset == datasets.DEPTH:
            assert types["bids"] == "array<struct<price:double,qty:double>>"
            sql += (", sum(seq) AS seq, sum(last_update_id) AS update_id, "
                    "sum(aggregate(bids, 0D, (a, l) -> a + l.price * l.qty) + aggregate(asks, 0D, (a, l) -> a + l.price * l.qty)) AS levels")
        elif dataset == datasets.TOP_OF_BOOK_1S:
            sql += ", sum(snapshots) AS snapshots, sum(mean_spread) AS spread"
        else:
            sql += ", sum(messages) AS messages"
        got = spark.sql(sql + " FROM t").collect()[0].asDict()
        assert_facts(got, duck_facts(archive, dataset))

    ns = snippet("spark", archive, spark=spark)
    assert {r["symbol"]: r["mean_spread"] for r in ns["spread"]} == pytest.approx(
        duck_spread(archive, "2026-11-30", 23), rel=1e-12)
    # basePath keeps the partition columns when reading one hour's folder
    assert {(r["date"], r["hour"]) for r in ns["one_hour"].select("date", "hour").distinct().collect()} == {
        (dt.date(2026, 11, 30), 23)}
    assert ns["one_hour"].count() == len(SYMBOLS) * 200
    # the recv_time filter alone gives the same rows (it only prunes no folder)
    assert ns["by_time"].count() == len(SYMBOLS) * 200


@pytest.mark.slow  # a JVM
def test_spark_outside_utc_disagrees_with_the_folders(archive, spark):
    """Why the docs insist on a UTC session: elsewhere hour() and bare time literals shift."""
    spark.read.option("basePath", f"{archive}/depth_snapshot").parquet(f"{archive}/depth_snapshot") \
        .createOrReplaceTempView("depth_snapshot")
    q_hour = "SELECT count(*) FROM depth_snapshot WHERE hour(recv_time) != hour"
    q_lit = "SELECT count(*) FROM depth_snapshot WHERE recv_time >= TIMESTAMP '2026-11-30 23:00:00'"
    q_off = "SELECT count(*) FROM depth_snapshot WHERE recv_time >= TIMESTAMP '2026-11-30 23:00:00+00:00'"
    everything = 2 * len(SYMBOLS) * 200
    assert [spark.sql(q).collect()[0][0] for q in (q_hour, q_lit, q_off)] == [0, everything, everything]
    try:
        spark.conf.set("spark.sql.session.timeZone", "America/New_York")  # UTC-5
        # hour() is now 18 or 19 where the folder says 23 or 00; the bare literal means 23:00 in
        # New York, 04:00 UTC the next day, after every row; an explicit offset still works.
        assert [spark.sql(q).collect()[0][0] for q in (q_hour, q_lit, q_off)] == [everything, 0, everything]
    finally:
        spark.conf.set("spark.sql.session.timeZone", "UTC")


@pytest.mark.slow  # a JVM
def test_a_spark_table_sees_an_hour_only_once_its_partition_is_synced(archive, spark, tmp_path):
    """Catalog tables list their partitions: the documented MSCK REPAIR TABLE is what makes
    hours visible, the first ones and each later one (REFRESH TABLE is not enough)."""
    copy = tmp_path / "archive"
    shutil.copytree(archive / "depth_snapshot" / "date=2026-11-30", copy / "depth_snapshot" / "date=2026-11-30")
    spark.sql("DROP TABLE IF EXISTS orderbook.depth_snapshot")
    spark.sql("CREATE DATABASE IF NOT EXISTS orderbook")
    spark.sql(f"CREATE TABLE orderbook.depth_snapshot USING parquet LOCATION '{copy}/depth_snapshot'")
    count = "SELECT count(*) FROM orderbook.depth_snapshot"
    assert spark.sql(count).collect()[0][0] == 0  # no partition registered yet
    snippet("spark-table", copy, spark=spark)
    assert spark.sql(count).collect()[0][0] == len(SYMBOLS) * 200
    # the next hour is archived: invisible until synced
    shutil.copytree(archive / "depth_snapshot" / "date=2026-12-01", copy / "depth_snapshot" / "date=2026-12-01")
    spark.sql("REFRESH TABLE orderbook.depth_snapshot")
    assert spark.sql(count).collect()[0][0] == len(SYMBOLS) * 200
    snippet("spark-table", copy, spark=spark)
    assert spark.sql(count).collect()[0][0] == 2 * len(SYMBOLS) * 200
    assert dict(spark.table("orderbook.depth_snapshot").dtypes)["hour"] == "int"
    spark.sql("DROP TABLE orderbook.depth_snapshot")


# --------------------------------------------------------------------------- Trino / Athena


_HIVE = {pa.string(): "string", pa.int64(): "bigint", pa.int32(): "int", pa.float64(): "double",
         datasets.TS: "timestamp"}


def _hive_type(t: pa.DataType) -> str:
    if pa.types.is_list(t):
        return f"array<{_hive_type(t.value_type)}>"
    if pa.types.is_struct(t):
        return "struct<" + ",".join(f"{f.name}:{_hive_type(f.type)}" for f in t) + ">"
    return _HIVE[t]


def test_athena_table_definition_matches_the_schema_and_the_folders(archive):
    """The Trino/Athena DDL cannot run here (neither engine installs from PyPI or Debian):
    its columns are checked against the one schema, and its partition projection against the
    folders the pipeline wrote, so the definition cannot drift from the archive."""
    text = DOC.read_text()
    m = re.search(r"<!-- snippet: athena -->\s*```sql\n(.*?)```", text, re.S)
    assert m
    ddl = m.group(1)
    cols = re.search(r"CREATE EXTERNAL TABLE \w+ \((.*?)\)\s*PARTITIONED BY \((.*?)\)", ddl, re.S)
    declared = [tuple(line.strip().rstrip(",").split(None, 1)) for line in cols.group(1).strip().splitlines()]
    assert declared == [(f.name, _hive_type(f.type)) for f in datasets.DEPTH_SCHEMA]
    assert cols.group(2).split(",") == ["`date` string", " `hour` int"]
    props = dict(re.findall(r"'([\w.]+)'\s*=\s*'([^']*)'", ddl))
    assert props["projection.enabled"] == "true" and props["projection.hour.digits"] == "2"
    location = props["storage.location.template"]
    # The projection's folder for each archived hour exists (the bucket prefix maps to the archive root).
    for date, hour in (("2026-11-30", 23), ("2026-12-01", 0)):
        folder = location.replace("${date}", date).replace("${hour}", f"{hour:0{int(props['projection.hour.digits'])}d}")
        rel = folder.split("/depth_snapshot/", 1)[1]
        assert (archive / "depth_snapshot" / rel).is_dir(), folder
