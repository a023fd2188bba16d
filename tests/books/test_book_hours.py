"""materialize_hour: an archived hour of diff depth in, book_snapshot and the end state out."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from orderbook_core.buffer.hours import HOUR_US, hour_folder
from orderbook_core.fsutil import sha256_file

from orderbook_assets.derived.book_hours import books_key, materialize_from, materialize_hour, version_key
from orderbook_assets.archive.store import LocalStore
from orderbook_assets.books.hour import HourState, Settings, StreamKey, state_key
from support.book_tables import Part, Rest, Upd, partial, rest, updates

H = 1_795_514_400_000_000
S = 1_000_000
MIN = Settings(depth=5, interval_us=60 * S)
BOOK = Rest(H + 1 * S, 100, [(10.0, 1.0), (9.0, 2.0)], [(11.0, 1.0), (12.0, 2.0)], limit=100)  # whole sides
KEY = StreamKey("spot", "btcusdt@depth@100ms")


def put(root: Path, dataset: str, table: pa.Table, hour_us: int, name: str = "part-0001.parquet") -> None:
    folder = root / dataset / hour_folder(hour_us)
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / name)


def test_two_hours_chained_by_the_state_deterministic_and_proven(tmp_path: Path):
    a = tmp_path / "archive"
    put(a, "depth_update", updates([Upd(H + 2 * S, 99, 101, bids=[(10.0, 3.0)]), Upd(H + 90 * S, 102, 102)]), H)
    put(a, "depth_update", updates([Upd(H + 100 * S, 103, 103, asks=[(11.0, 0.0)])], symbol="ETHUSDT"), H, "part-0002.parquet")
    put(a, "depth_rest_snapshot", rest([BOOK]), H)
    put(a, "depth_snapshot", partial([Part(H + 2 * S, 101, [(10.0, 3.0)], [(11.0, 1.0)])],
                                     stream="btcusdt@depth1@100ms"), H)
    H2 = H + HOUR_US
    put(a, "depth_update", updates([Upd(H2 + 30 * S, 103, 103, bids=[(9.5, 1.0)])]), H2)
    store = LocalStore(a)

    one = materialize_hour(a, H, MIN, store)
    assert one.streams == [KEY, StreamKey("spot", "ethusdt@depth@100ms")]
    assert (one.rows, one.known_rows) == (120, 59)  # 60 points a stream; ETHUSDT never synced
    assert (one.proof.comparable, one.proof.matched, one.crossed.count) == (1, 1, 0)
    assert not one.started_from_state
    books = pq.read_table(a / books_key(H))
    assert books.num_rows == 120 and books.schema.metadata[b"orderbook.dataset"] == b"book_snapshot"
    first_bytes = sha256_file(a / books_key(H)), sha256_file(a / state_key(H))

    again = materialize_hour(a, H, MIN, store)  # a re-run (late parts: the same here) rewrites the same bytes
    assert (sha256_file(a / books_key(H)), sha256_file(a / state_key(H))) == first_bytes
    assert again.rows == one.rows

    two = materialize_hour(a, H2, MIN, store)
    assert two.started_from_state and two.streams == [KEY]
    rows = [r for r in pq.read_table(a / books_key(H2)).to_pylist() if r["stream"] == KEY.stream]
    assert rows[0]["known"] and rows[0]["last_update_id"] == 102  # carried over, decided by 103
    assert rows[1]["last_update_id"] == 103 and rows[1]["bids"][1] == {"price": 9.5, "qty": 1.0}
    state = HourState.from_bytes((a / state_key(H2)).read_bytes())
    assert state.streams[KEY].last_update_id == 103
    assert StreamKey("spot", "ethusdt@depth@100ms") in state.streams  # carried although silent this hour


def test_an_hour_without_diffs_or_state_writes_nothing(tmp_path: Path):
    a = tmp_path / "archive"
    put(a, "depth_snapshot", partial([Part(H + 2 * S, 101, [(10.0, 3.0)], [(11.0, 1.0)])]), H)
    out = materialize_hour(a, H, MIN, LocalStore(a))
    assert out.books_url is None and out.rows == 0
    assert not (a / books_key(H)).exists() and not (a / state_key(H)).exists()


def test_late_parts_build_a_new_version_keep_the_old_one_and_rebuild_the_next_hour(tmp_path: Path):
    """Hour 1 first sees no snapshot (unknown all hour), hour 2 is built from that state; a late
    round brings hour 1's snapshot: hour 1 is rebuilt as a new version (the old one kept, named),
    and hour 2, whose start state changed, too. Hour 3, never built, is left to its own run."""
    a = tmp_path / "archive"
    H2 = H + HOUR_US
    put(a, "depth_update", updates([Upd(H + 2 * S, 99, 101, bids=[(10.0, 3.0)]), Upd(H + 90 * S, 102, 102)]), H)
    put(a, "depth_update", updates([Upd(H2 + 30 * S, 103, 103, bids=[(9.5, 1.0)])]), H2)
    store = LocalStore(a)
    one = materialize_from(a, H, MIN, store)
    assert [b.hour_us for b in one] == [H] and one[0].known_rows == 0
    old_books, old_state = one[0].books, one[0].state
    assert old_books.changed and old_books.replaced_sha256 is None
    assert (a / old_books.version_key).read_bytes() == (a / books_key(H)).read_bytes()
    (two,) = materialize_from(a, H2, MIN, store)
    assert two.known_rows == 0  # nothing to start from
    two_sha = two.books.sha256

    assert [b.books.changed for b in materialize_from(a, H, MIN, store)] == [False]  # a re-run: nothing new

    put(a, "depth_rest_snapshot", rest([BOOK]), H, "part-0002.parquet")  # the late round
    late = materialize_from(a, H, MIN, store)
    assert [b.hour_us for b in late] == [H, H2]
    assert late[0].books.replaced_sha256 == old_books.sha256 != late[0].books.sha256
    assert late[0].state.replaced_sha256 == old_state.sha256
    assert late[0].known_rows == 59
    # the replaced builds are still there, byte for byte, under their versions
    assert sha256_file(a / version_key(books_key(H), old_books.sha256))[1] == old_books.sha256
    assert sha256_file(a / version_key(state_key(H), old_state.sha256))[1] == old_state.sha256
    assert sha256_file(a / books_key(H))[1] == late[0].books.sha256
    assert late[1].started_from_state and late[1].books.replaced_sha256 == two_sha and late[1].known_rows == 60
    assert not (a / books_key(H2 + HOUR_US)).exists()


def test_a_rebuilt_later_hours_proof_is_checked_like_its_own_build(tmp_path: Path, monkeypatch):
    """Hour 2 holds a partial snapshot that disagrees with the book hour 1's late snapshot makes
    known. Built first, hour 2 is unknown all hour: unproven (WARN). The late part rebuilds hours 1
    and 2 in hour 1's run: hour 2's mismatch fails that run's blocking check, and hour 2's own
    partition gets the rebuild's materialization and its failed check."""
    import dagster as dg
    from dagster import AssetCheckSeverity, AssetKey

    from orderbook_assets.defs.books import book_snapshot, partition_key
    from orderbook_assets.defs.resources import ArchiveResource

    monkeypatch.setenv("ORDERBOOK_BOOK_DEPTH", "5")
    monkeypatch.setenv("ORDERBOOK_BOOK_INTERVAL_MS", "60000")
    a = tmp_path / "archive"
    H2 = H + HOUR_US
    put(a, "depth_update", updates([Upd(H + 2 * S, 99, 101, bids=[(10.0, 3.0)]), Upd(H + 90 * S, 102, 102)]), H)
    put(a, "depth_update", updates([Upd(H2 + 30 * S, 103, 103, bids=[(9.5, 1.0)])]), H2)
    wrong = Part(H2 + 30 * S, 103, [(10.0, 3.0), (9.5, 7.0)], [(11.0, 1.0), (12.0, 2.0)])  # 9.5 holds 1.0
    put(a, "depth_snapshot", partial([wrong], stream="btcusdt@depth2@100ms"), H2)
    instance = dg.DagsterInstance.ephemeral()
    resources = {"archive": ArchiveResource(url=str(a))}

    def run(hour_us):
        return dg.materialize([book_snapshot], partition_key=partition_key(hour_us), resources=resources,
                              instance=instance, raise_on_error=False)

    def check(result, hour_us):
        (ev,) = [e for e in result.get_asset_check_evaluations()
                 if e.partition == partition_key(hour_us) and e.check_name == "book_matches_exchange"]
        return ev

    assert run(H).success
    built2 = run(H2)
    assert built2.success  # a WARN does not block
    first = check(built2, H2)
    assert not first.passed and first.severity is AssetCheckSeverity.WARN and "unproven" in first.description
    put(a, "depth_rest_snapshot", rest([BOOK]), H, "part-0002.parquet")  # the late round
    late = run(H)
    assert not late.success  # hour 2's mismatch, found by hour 1's run, blocks it
    own = check(late, H)
    assert not own.passed and own.severity is AssetCheckSeverity.ERROR
    assert own.metadata["rebuilt_hours_mismatches"].value == 1 and own.metadata["mismatches"].value == 0
    later = check(late, H2)
    assert not later.passed and later.severity is AssetCheckSeverity.ERROR
    assert later.metadata["mismatches"].value == 1
    assert later.metadata["mismatch_levels"].value[0]["levels"] == [
        {"side": "bid", "price": 9.5, "exchange_qty": 7.0, "rebuilt_qty": 1.0}]
    mats = [e.step_materialization_data.materialization for e in late.get_asset_materialization_events()]
    assert {m.partition for m in mats if m.asset_key == AssetKey("book_snapshot")} == {partition_key(H), partition_key(H2)}
