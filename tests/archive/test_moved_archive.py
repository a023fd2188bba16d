"""The ledger records where each part went: an hour archived to folder A, then run against folder B.

The promise: the run against B stops at once, before planning or uploading anything, with one
sentence naming A, B and the two ways out (point back at A, or copy the hour's objects to B);
once the objects are in B (verified by size and SHA-256) the hour continues there. Parts of a
buffer made before the ledger kept locations (NULL: unknown) keep working as before.
"""

from __future__ import annotations

import shutil

import duckdb
import pytest
from dagster import DagsterEventType, DagsterInstance

from orderbook_core import buffer
from orderbook_core.buffer import ledger, schema
from orderbook_core.errors import ConfigError
from orderbook_assets.archive import pipeline
from orderbook_assets.archive.location import Location
from orderbook_assets.archive.store import LocalStore, open_store

from support.old_buffers import buffer_at
from support.buffer_rows import BASE_HOUR_US, fill_buffer, open_buffer

SYMBOLS = ["btcusdt", "ethusdt"]


def archive(conn, st, staging, hour_us=BASE_HOUR_US):
    out = pipeline.export_and_upload(conn, st, staging, hour_us)
    checks = pipeline.check_parts(conn, st, staging, hour_us, ledger.DEPTH)
    assert not checks.blocking_failures, checks.blocking_failures
    pipeline.upload_coverage(conn, st, staging, hour_us)
    pipeline.mark_archived(conn, staging, hour_us)
    return out


def archived_rows(root) -> int:
    return duckdb.sql(f"SELECT count(*) FROM read_parquet('{root}/depth_snapshot/**/*.parquet')").fetchone()[0]


def locations(conn) -> set:
    return {r[0] for r in conn.execute("SELECT DISTINCT location FROM export_parts")}


@pytest.fixture
def archived_to_a(tmp_path):
    """An hour archived to folder A, then 20 late rows of it in the buffer (a further round to do)."""
    path = tmp_path / "buffer.sqlite3"
    conn = open_buffer(path)
    a, b, staging = LocalStore(tmp_path / "A"), LocalStore(tmp_path / "B"), tmp_path / "staging"
    fill_buffer(path, SYMBOLS, BASE_HOUR_US + 1_000_000, 100)
    archive(conn, a, staging)
    pipeline.drop_staged(conn, staging, BASE_HOUR_US)  # as the bars step does: later reads go to the store
    fill_buffer(path, SYMBOLS, BASE_HOUR_US + 60_000_000, 10, session_id=7, first_update_id=10**6)
    yield conn, a, b, staging
    conn.close()


def test_every_part_records_the_archive_it_was_uploaded_to(archived_to_a):
    conn, a, _, _ = archived_to_a
    assert locations(conn) == {a.url}
    states = {r[0] for r in conn.execute("SELECT state FROM export_parts")}
    assert states == {"archived"}
    # The location is the normalised URL: another spelling of the same folder is the same archive.
    same = open_store(Location.parse(f"file://{a.root}/"))
    pipeline.check_location(conn, same, BASE_HOUR_US)
    assert same.url == a.url


def test_a_run_against_another_archive_stops_at_once_and_says_how_to_recover(archived_to_a):
    conn, a, b, staging = archived_to_a
    before = conn.execute("SELECT * FROM export_parts ORDER BY 1, 2, 3").fetchall()
    with pytest.raises(ConfigError) as err:
        pipeline.export_and_upload(conn, b, staging, BASE_HOUR_US)
    message = str(err.value)
    assert message.startswith("ORDERBOOK_ARCHIVE_URL: hour 2026-11-23T10:00Z was archived to ")
    assert f"set ORDERBOOK_ARCHIVE_URL={a.url} " in message and f"to {b.url} under the same keys" in message
    assert "\n" not in message and message.endswith(".")
    # Nothing planned, nothing written to B: the hour is not split over two archives.
    assert conn.execute("SELECT * FROM export_parts ORDER BY 1, 2, 3").fetchall() == before
    assert not b.root.exists()
    for step in (lambda: pipeline.check_parts(conn, b, staging, BASE_HOUR_US, ledger.DEPTH),
                 lambda: pipeline.upload_coverage(conn, b, staging, BASE_HOUR_US),
                 lambda: pipeline.archived_copies(conn, b, staging, BASE_HOUR_US, ledger.DEPTH)):
        with pytest.raises(ConfigError, match="was archived to"):
            step()
    # Pointed back at A, as the sentence says, the late rows are archived there.
    out = archive(conn, a, staging)
    assert out.planned is not None and locations(conn) == {a.url}
    assert archived_rows(a.root) == 220


def test_once_the_hours_objects_are_copied_the_hour_continues_in_the_new_archive(archived_to_a):
    conn, a, b, staging = archived_to_a
    shutil.copytree(a.root, b.root)
    out = archive(conn, b, staging)
    assert out.planned is not None
    assert locations(conn) == {b.url}
    assert archived_rows(b.root) == 220 and archived_rows(a.root) == 200


def test_a_copy_with_other_bytes_is_not_taken_for_the_hours_objects(archived_to_a):
    conn, a, b, staging = archived_to_a
    shutil.copytree(a.root, b.root)
    key = conn.execute("SELECT object_key FROM export_parts WHERE dataset = 'depth_snapshot'").fetchone()[0]
    (b.root / key).write_bytes(b"not the part")
    with pytest.raises(ConfigError, match=f"e.g. {key}, are not there"):
        pipeline.export_and_upload(conn, b, staging, BASE_HOUR_US)
    assert locations(conn) == {a.url}


def test_parts_of_unknown_location_keep_working(archived_to_a):
    """What a buffer made before the ledger kept locations holds after its upgrade: NULL."""
    conn, a, _, staging = archived_to_a
    conn.execute("UPDATE export_parts SET location = NULL")
    archive(conn, a, staging)
    rows = conn.execute("SELECT planned_us, location FROM export_parts").fetchall()
    first_round = min(p for p, _ in rows)
    assert {loc for p, loc in rows if p == first_round} == {None}
    assert {loc for p, loc in rows if p != first_round} == {a.url}
    assert archived_rows(a.root) == 220


def test_a_version_4_buffer_gets_the_location_column_with_unknown_for_its_parts(tmp_path):
    path = tmp_path / "v4.sqlite3"
    buffer_at(path, 4, ("INSERT INTO export_parts (dataset, hour_us, part, id_lo, id_hi, state, object_key, "
                        "planned_us, updated_us) VALUES ('depth_snapshot', ?, 1, 0, 10, 'archived', 'k', 1, 1)",
                        (BASE_HOUR_US,)))
    conn = buffer.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
    (part,) = ledger.parts(conn, "depth_snapshot", BASE_HOUR_US)
    assert (part.object_key, part.location) == ("k", None)
    assert ledger.elsewhere(conn, BASE_HOUR_US, "/anywhere") == []
    conn.close()


def test_the_archive_job_fails_at_once_without_retries(tmp_path, monkeypatch):
    """The Dagster step: no RetryPolicy round trip (about 55 s before) for a location that cannot change."""
    from orderbook_assets.definitions import defs

    path = tmp_path / "buffer.sqlite3"
    monkeypatch.setenv("ORDERBOOK_BUFFER", str(path))
    fill_buffer(path, SYMBOLS, BASE_HOUR_US + 1_000_000, 50)
    job = defs.resolve_job_def("archive_hour")
    runs = []
    for folder in ("A", "B"):
        monkeypatch.setenv("ORDERBOOK_ARCHIVE_URL", str(tmp_path / folder))
        runs.append(job.execute_in_process(partition_key="2026-11-23-10:00", instance=DagsterInstance.ephemeral(),
                                           raise_on_error=False))
    first, second = runs
    assert first.success and not second.success
    failures = [e for e in second.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    assert [e.step_key for e in failures] == ["stream_datasets"]
    assert "was archived to" in failures[0].event_specific_data.error.message
    assert not [e for e in second.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY]


def test_an_hour_moved_from_a_folder_to_s3_continues_there(archived_to_a):
    """The copy as a plain `aws s3 sync` makes it (no metadata of ours): proved by the store's
    strongest means, then the hour goes on in the bucket; before the copy, refused at once."""
    from orderbook_assets.archive.store import S3Store
    from support.s3 import MotoServer, s3_client

    conn, a, _, staging = archived_to_a
    with MotoServer() as moto:
        client = s3_client(moto.url)
        bucket = S3Store(client, "books", "moved")
        bucket.provision("us-east-1", custom_endpoint=True)
        with pytest.raises(ConfigError, match=f"not to s3://books/moved "):
            pipeline.export_and_upload(conn, bucket, staging, BASE_HOUR_US)
        for key in a.list():
            client.upload_file(str(a.root / key), "books", f"moved/{key}")
        out = archive(conn, bucket, staging)
        assert out.planned is not None and locations(conn) == {"s3://books/moved"}
        keys = [k for k in bucket.list("depth_snapshot/")]
        assert len(keys) == 2 and all(bucket.head(k) is not None for k in keys)
