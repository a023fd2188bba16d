"""Writer options have versions: a part keeps the options it was first written with.

Changing the depth writer options changes the bytes of new parts. A part whose SHA-256 is
already known (recorded in the ledger by an upload a crash interrupted, or stored under its
key while the ledger record was lost) must still re-export to exactly those bytes, or it
would never verify. These tests add a version 2 with other options, as a future change
would, and run the real pipeline on real buffers and parts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from orderbook_core.buffer import ledger
from orderbook_assets.archive import datasets, export, pipeline
from orderbook_assets.archive.export import object_key, write_part
from orderbook_core.buffer.ledger import DEPTH
from orderbook_assets.archive.store import LocalStore
from orderbook_core.errors import IntegrityError
from orderbook_core.fsutil import sha256_file
from support.buffer_rows import BASE_HOUR_US, fill_buffer, open_buffer

ROOT = Path(__file__).resolve().parents[2]
HOUR = BASE_HOUR_US


def encodings(path: Path) -> set[str]:
    md = pq.ParquetFile(path).metadata
    return {e for g in range(md.num_row_groups) for c in range(md.num_columns) for e in md.row_group(g).column(c).encodings}


@pytest.fixture
def version_3(monkeypatch):
    """A newer writer version (schema 2, zstd 3, plain integers) becomes the current one."""
    v3 = export.WriterVersion(datasets.DEPTH_SCHEMA, dict(export.WRITER_OPTIONS, use_dictionary=["market", "symbol", "stream"]))
    assert v3.options != export.DEPTH_WRITER_VERSIONS[2].options
    monkeypatch.setitem(export.WRITER_VERSIONS[DEPTH], 3, v3)
    assert export.current_version(DEPTH) == 3
    return v3


def test_versions_write_different_bytes_and_only_versions_1_and_2_use_delta_encoding(tmp_path, version_3):
    """The premise: the versions really differ (else the tests below prove nothing)."""
    fill_buffer(tmp_path / "b.sqlite3", ["btcusdt", "ethusdt"], HOUR + 1_000, 100)
    conn = open_buffer(tmp_path / "b.sqlite3")
    part = ledger.plan_part(conn, HOUR, dataset=ledger.DEPTH)
    v1 = write_part(conn, part, tmp_path / "v1.parquet", 1)
    v2 = write_part(conn, part, tmp_path / "v2.parquet", 2)
    v3 = write_part(conn, part, tmp_path / "v3.parquet")  # the current version
    conn.close()
    assert (v1.writer_version, v2.writer_version, v3.writer_version) == (1, 2, 3)
    assert len({v1.sha256, v2.sha256, v3.sha256}) == 3 and v1.rows == v2.rows == v3.rows == 200
    assert "DELTA_BINARY_PACKED" in encodings(v2.path) and "DELTA_BINARY_PACKED" not in encodings(v3.path)
    assert pq.read_table(v2.path).equals(pq.read_table(v3.path))  # same rows, same order, other bytes
    # schema version 1 (before USD-M): the same rows without market and the USD-M columns
    old = pq.read_table(v1.path)
    assert old.schema.metadata[b"orderbook.schema_version"] == b"1" and "market" not in old.column_names
    assert old.equals(pq.read_table(v2.path).select(old.column_names).cast(old.schema))


def test_parts_of_schema_1_and_2_read_together_by_name(tmp_path):
    """An archive holding depth parts from before and after the schema change reads as one
    dataset with DuckDB's union_by_name (what the views do): old rows get null USD-M columns."""
    import duckdb

    fill_buffer(tmp_path / "b.sqlite3", ["btcusdt"], HOUR + 1_000, 50)
    conn = open_buffer(tmp_path / "b.sqlite3")
    part = ledger.plan_part(conn, HOUR, dataset=ledger.DEPTH)
    write_part(conn, part, tmp_path / "a" / "old.parquet", 1)
    fill_buffer(tmp_path / "b.sqlite3", ["btcusdt"], HOUR + 60_000_000, 50, session_id=HOUR + 9, first_update_id=90_000)
    write_part(conn, ledger.plan_part(conn, HOUR, dataset=ledger.DEPTH), tmp_path / "a" / "new.parquet")
    conn.close()
    rows = duckdb.connect().execute(
        f"SELECT market, count(*), count(event_time) FROM read_parquet('{tmp_path}/a/*.parquet', union_by_name = true) "
        "GROUP BY ALL ORDER BY ALL NULLS FIRST"
    ).fetchall()
    assert rows == [(None, 50, 0), ("spot", 50, 0)]


def test_a_part_uploaded_before_the_options_changed_still_verifies(tmp_path, version_3):
    """kill -9 right after the upload under version 2; the re-run happens under version 3."""
    db, store_root, staging = tmp_path / "b.sqlite3", tmp_path / "archive", tmp_path / "staging"
    fill_buffer(db, ["btcusdt", "ethusdt"], HOUR + 1_000, 100)
    code = textwrap.dedent(f"""
        from pathlib import Path
        from orderbook_assets.archive import pipeline
        from orderbook_assets.archive.store import LocalStore
        from support.buffer_rows import open_buffer
        pipeline.export_and_upload(open_buffer({str(db)!r}), LocalStore({str(store_root)!r}), Path({str(staging)!r}), {HOUR})
    """)
    env = dict(os.environ, ORDERBOOK_CRASH_AT="after_upload", PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    child = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert child.returncode == -9, child.stderr  # killed at the crash point, under version 2 (no patch in the child)

    conn = open_buffer(db)
    [part] = ledger.parts(conn, DEPTH, HOUR)
    assert part.state == "uploaded" and part.sha256
    stored = (store_root / part.object_key).read_bytes()
    assert "DELTA_BINARY_PACKED" in encodings(store_root / part.object_key)

    fill_buffer(db, ["btcusdt", "ethusdt"], HOUR + 60_000_000, 50, session_id=HOUR + 2, first_update_id=50_000)
    out = pipeline.export_and_upload(conn, LocalStore(store_root), staging, HOUR)  # under version 3
    assert [(p.part, p.state) for p in out.parts] == [(1, "verified"), (2, "verified")]
    assert out.parts[0].sha256 == part.sha256 and out.exported[1].writer_version == 2
    assert (store_root / part.object_key).read_bytes() == stored  # nothing rewritten
    # the late rows' new part is written with the current options
    assert out.exported[2].writer_version == 3
    assert "DELTA_BINARY_PACKED" not in encodings(store_root / out.parts[1].object_key)
    conn.close()


def test_an_object_stored_whose_ledger_record_was_lost_keeps_its_version(tmp_path, version_3):
    """The upload happened under version 1 (schema 1, before USD-M) but the ledger still says planned (the crash came
    between the PUT and its record): the stored object is this part's, in its old options."""
    db, store_root, staging = tmp_path / "b.sqlite3", tmp_path / "archive", tmp_path / "staging"
    fill_buffer(db, ["btcusdt"], HOUR + 1_000, 120)
    conn = open_buffer(db)
    part = ledger.plan_part(conn, HOUR, dataset=ledger.DEPTH)
    key = object_key(DEPTH, part)
    v1 = write_part(conn, part, tmp_path / "v1.parquet", 1)
    store = LocalStore(store_root)
    assert store.put_if_absent(key, v1.path, v1.sha256) == "created"

    out = pipeline.export_and_upload(conn, store, staging, HOUR)
    assert [(p.state, p.sha256) for p in out.parts] == [("verified", v1.sha256)]
    assert out.uploads[1] == "existed" and out.exported[1].writer_version == 1
    conn.close()


def test_an_object_no_version_reproduces_is_still_an_integrity_error(tmp_path, version_3):
    """Other bytes under the key that no writer version gives are not ours: never overwritten."""
    db, store_root, staging = tmp_path / "b.sqlite3", tmp_path / "archive", tmp_path / "staging"
    fill_buffer(db, ["btcusdt"], HOUR + 1_000, 120)
    conn = open_buffer(db)
    part = ledger.plan_part(conn, HOUR, dataset=ledger.DEPTH)
    key = object_key(DEPTH, part)
    foreign = tmp_path / "foreign.parquet"
    write_part(conn, part, foreign, options=dict(export.WRITER_OPTIONS, compression_level=7))  # no version writes this
    store = LocalStore(store_root)
    store.put_if_absent(key, foreign, sha256_file(foreign)[1])
    with pytest.raises(IntegrityError):
        pipeline.export_and_upload(conn, store, staging, HOUR)
    assert (store_root / key).read_bytes() == foreign.read_bytes()
    conn.close()


def test_a_part_planned_and_uploaded_by_the_previous_release_finishes_under_this_one(tmp_path):
    """The ledger of the release before rounds: a depth part uploaded in schema version 1 with its
    coverage twin (same id range, same planned_us), the run killed before verification. This
    release verifies it as it is, checks it (read by column name), writes the twin's coverage
    under the twin's old key, and archives both."""
    db, store_root, staging = tmp_path / "b.sqlite3", tmp_path / "archive", tmp_path / "staging"
    fill_buffer(db, ["btcusdt", "ethusdt"], HOUR + 1_000, 100)
    conn = open_buffer(db)
    planned = 1_796_000_000_000_000
    with conn:
        for dataset in (DEPTH, "coverage"):
            conn.execute(
                "INSERT INTO export_parts (dataset, hour_us, part, id_lo, id_hi, state, planned_us, updated_us) "
                "VALUES (?, ?, 1, 0, 200, 'planned', ?, ?)", (dataset, HOUR, planned, planned))
    part = ledger.get_part(conn, DEPTH, HOUR, 1)
    key = object_key(DEPTH, part)
    v1 = write_part(conn, part, tmp_path / "v1.parquet", 1)
    store = LocalStore(store_root)
    store.put_if_absent(key, v1.path, v1.sha256)
    ledger.advance(conn, part, "uploaded", rows=v1.rows, bytes=v1.bytes, sha256=v1.sha256, object_key=key)

    out = pipeline.export_and_upload(conn, store, staging, HOUR)
    assert out.round == [] and [(p.state, p.sha256) for p in out.parts] == [("verified", v1.sha256)]
    checks = pipeline.check_parts(conn, store, staging, HOUR, ledger.DEPTH)
    assert not checks.blocking_failures and checks.result("rows_reconciled").detail["parquet_rows"] == 200
    cov = pipeline.upload_coverage(conn, store, staging, HOUR)
    assert [p.object_key for p in cov.parts] == ["coverage/date=2026-11-23/hour=10/part-0001-0-200.parquet"]
    done = pipeline.mark_archived(conn, staging, HOUR)
    assert sorted((p.dataset, p.state) for p in done) == [("coverage", "archived"), (DEPTH, "archived")]
    assert (store_root / key).read_bytes() == v1.path.read_bytes()  # never rewritten
    conn.close()
