"""book_at, iter_books and iter_events over a small local archive of literal rows."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orderbook_core.buffer.hours import HOUR_US, hour_folder

from orderbook_assets.analytics.books import Source, book_at, iter_books, iter_events, to_us
from orderbook_assets.books.hour import Settings, build_hour, state_key
from support.book_tables import REST_SCHEMA, Part, Rest, Upd, empty, partial, rest, updates

H = 1_795_514_400_000_000
S = 1_000_000
BOOK = Rest(H + 3 * S, 100, [(10.0, 1.0), (9.0, 2.0), (8.0, 3.0)], [(11.0, 1.0), (12.0, 2.0)])


def put(root: Path, dataset: str, table: pa.Table, hour_us: int = H, name: str = "part-0001.parquet") -> None:
    folder = root / dataset / hour_folder(hour_us)
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / name)


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    ups = updates([
        Upd(H + 1 * S, 99, 100, bids=[(10.0, 0.5)]),  # u <= the snapshot's id: stale
        Upd(H + 2 * S, 101, 101, bids=[(10.0, 4.0)], asks=[(11.5, 1.0)]),  # received before the snapshot, bridges it
        Upd(H + 5 * S, 102, 102, bids=[(9.0, 0.0)]),
        Upd(H + 9 * S, 103, 103, asks=[(12.0, 5.0)]),
        Upd(H + 20 * S, 110, 111),  # 104..109 missed
        Upd(H + 25 * S, 112, 112),
    ])
    put(tmp_path, "depth_update", ups)
    put(tmp_path, "depth_rest_snapshot", rest([BOOK]))
    put(tmp_path, "depth_snapshot", partial([
        Part(H + 4 * S, 101, [(10.0, 4.0)], [(11.0, 1.0)], seq=1),
        Part(H + 22 * S, 111, [(10.0, 6.0)], [(11.0, 6.0)], seq=2),
    ], stream="btcusdt@depth1@100ms"))
    return tmp_path


def test_to_us():
    assert to_us(H) == H
    assert to_us("2026-11-24T10:00:00Z") == to_us(datetime(2026, 11, 24, 10, tzinfo=timezone.utc))
    assert to_us(datetime(2026, 11, 24, 10)) == to_us("2026-11-24 10:00:00+00:00")
    assert to_us("2026-11-24T10:00:00.000001+00:00") - to_us("2026-11-24T10:00:00Z") == 1


def test_book_at_from_diffs_full_depth(archive: Path):
    r = book_at(archive, "spot", "btcusdt", H + 6 * S)
    assert r.source is Source.DIFFS and r.stream == "btcusdt@depth@100ms"
    assert (r.last_update_id, r.as_of_us) == (102, H + 5 * S)
    assert r.bids == [(10.0, 4.0), (8.0, 3.0)] and r.asks == [(11.0, 1.0), (11.5, 1.0), (12.0, 2.0)]
    assert book_at(archive, "spot", "BTCUSDT", H + 6 * S, depth=1).asks == [(11.0, 1.0)]
    # the snapshot reached 8.0 and 12.0 (its limit unrecorded: each side cut there), so every
    # level shown is inside the horizon and the top 2 is complete, the top 3 is not
    two = book_at(archive, "spot", "BTCUSDT", H + 6 * S, depth=2)
    assert (two.known_levels, two.complete) == (2, True)
    three = book_at(archive, "spot", "BTCUSDT", H + 6 * S, depth=3)
    assert (three.known_levels, three.complete, three.bids) == (2, False, [(10.0, 4.0), (8.0, 3.0)])
    assert "horizon" in three.reason


def test_book_at_never_shows_a_level_past_the_horizon(tmp_path: Path):
    """The issue's case through book_at: a snapshot cut at 2 levels a side, then both its bids
    removed and one set deeper: no bid is proven, so none is shown."""
    put(tmp_path, "depth_update", updates([
        Upd(H + 2 * S, 101, 101), Upd(H + 4 * S, 102, 102, bids=[(10.0, 0.0), (9.0, 0.0), (7.0, 1.0)])]))
    put(tmp_path, "depth_rest_snapshot", rest([Rest(H + 1 * S, 100, [(10.0, 1.0), (9.0, 2.0)],
                                                    [(11.0, 1.0), (12.0, 2.0)])]))
    r = book_at(tmp_path, "spot", "BTCUSDT", H + 5 * S, depth=2)
    assert r.source is Source.DIFFS and r.last_update_id == 102
    assert (r.bids, r.asks, r.known_levels, r.complete) == ([], [(11.0, 1.0), (12.0, 2.0)], 0, False)


def test_book_at_does_not_use_a_snapshot_received_after_the_time(archive: Path):
    """book_at uses what had been received by the time: the snapshot received at 3 s is not."""
    r = book_at(archive, "spot", "BTCUSDT", H + 2 * S + S // 2)
    assert r.source is Source.NONE  # no snapshot of any kind at or before 2.5 s
    assert "no REST snapshot" in r.reason


def test_book_at_falls_back_to_the_partial_snapshot_across_a_break(archive: Path):
    r = book_at(archive, "spot", "BTCUSDT", H + 30 * S)
    assert r.source is Source.PARTIAL and r.stream == "btcusdt@depth1@100ms"
    assert (r.last_update_id, r.bids, r.asks) == (111, [(10.0, 6.0)], [(11.0, 6.0)])
    assert "broken" in r.reason
    # just before the break is revealed (at 20 s) the chain looked fine, but the next event breaks it
    r = book_at(archive, "spot", "BTCUSDT", H + 15 * S)
    assert r.source is Source.PARTIAL and "breaks right after" in r.reason and r.last_update_id == 101


def test_book_at_unknown_symbol_or_market(archive: Path):
    r = book_at(archive, "usdm", "BTCUSDT", H + 6 * S)
    assert (r.source, r.bids, r.asks) == (Source.NONE, [], [])


def test_book_at_starts_from_the_previous_hours_state(tmp_path: Path):
    h1 = build_hour(H, updates([Upd(H + 1 * S, 101, 102, bids=[(10.0, 6.0)])]), rest([BOOK]), None,
                    Settings(depth=5, interval_us=60 * S))
    (tmp_path / state_key(H)).parent.mkdir(parents=True)
    (tmp_path / state_key(H)).write_bytes(h1.state.to_bytes())
    H2 = H + HOUR_US
    put(tmp_path, "depth_update", updates([Upd(H2 + 5 * S, 103, 103, asks=[(11.0, 0.0)])]), H2)
    put(tmp_path, "depth_rest_snapshot", empty(REST_SCHEMA), H2)  # no snapshot anywhere: only the state
    r = book_at(tmp_path, "spot", "BTCUSDT", H2 + 6 * S)
    assert r.source is Source.DIFFS and r.last_update_id == 103
    assert r.bids[0] == (10.0, 6.0) and r.asks == [(12.0, 2.0)]


def test_iter_books_yields_the_book_after_every_event(archive: Path):
    books = list(iter_books(archive, "spot", "BTCUSDT", H, H + 30 * S, depth=1))
    assert [(b.recv_time_us // S % 3600, b.known, b.last_update_id) for b in books] == [
        (2, True, 101), (5, True, 102), (9, True, 103), (20, False, None), (25, False, None)]
    assert books[0].bids == [(10.0, 4.0)] and books[3].bids == []


def test_iter_events_merges_datasets_in_receive_order(archive: Path):
    rows = list(iter_events(archive, ["depth_update", "depth_rest_snapshot", "depth_snapshot"], H, H + 21 * S,
                            market="spot", symbols=["btcusdt"]))
    assert [(r.dataset, r.recv_time_us // S % 3600) for r in rows] == [
        ("depth_update", 1), ("depth_update", 2), ("depth_rest_snapshot", 3), ("depth_snapshot", 4),
        ("depth_update", 5), ("depth_update", 9), ("depth_update", 20)]
    assert rows[2].row["last_update_id"] == 100 and rows[2].row["reason"] == "connect"
    assert list(iter_events(archive, ["depth_update"], H, H + 21 * S, symbols=["ETHUSDT"])) == []
    assert list(iter_events(archive, ["trade"], H, H + 21 * S)) == []  # a dataset the archive lacks
