"""The fleet's books on literal tables: ``fleet/book_snapshot`` is built from the merged diff depth.

One diff stream's events are split between two collectors' folders: ``a`` lost event 103, ``b``
lost event 102, so each collector's own books are unknown from its gap to the end of the hour.
The merge has every event once; the books built from it are known from the first event on,
equal the book the events make at every point, are proved against partial snapshots (one from
each collector), and are written at the top-level ``<archive>/book_snapshot`` analysts read.
A late merge (``b``'s parts arriving after a merge of ``a``'s alone) rebuilds them, keeping the
earlier build as a version, like a single host's late parts.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import AssetCheckSeverity, AssetKey

from orderbook_core.buffer.hours import HOUR_US, hour_folder

from orderbook_assets.derived.book_hours import books_key, materialize_hour, version_key
from orderbook_assets.archive import export, merge
from orderbook_assets.archive.datasets import DEPTH, DEPTH_REST, DEPTH_UPDATE
from orderbook_assets.archive.location import Location
from orderbook_assets.archive.store import LocalStore
from orderbook_assets.books.hour import Settings
from orderbook_assets.defs.books import partition_key
from orderbook_assets.defs.fleet import FLEET, MERGE_JOB, fleet_books
from orderbook_assets.defs.resources import ArchiveResource
from support.book_tables import Part, Rest, Upd, partial, rest, updates

H = 1_795_514_400_000_000  # 2026-11-24 10:00 UTC
S = 1_000_000
DEPTH_LEVELS, INTERVAL_S = 5, 10
SETTINGS = Settings(depth=DEPTH_LEVELS, interval_us=INTERVAL_S * S)
PARTIAL_STREAM = "btcusdt@depth5@100ms"
#: The REST snapshot both collectors fetched: six levels a side, deeper than every book shown.
BOOK = Rest(H + 1 * S, 100, [(10.0, 1.0), (9.0, 2.0), (8.0, 1.0), (7.0, 1.0), (6.0, 1.0), (5.0, 1.0)],
            [(11.0, 1.0), (12.0, 2.0), (13.0, 1.0), (14.0, 1.0), (15.0, 1.0), (16.0, 1.0)])
#: The diff events (U = u: one update id each), at 2 s, 12 s, 22 s, ...
EVENTS = {
    101: dict(bids=[(10.0, 3.0)]),
    102: dict(asks=[(11.5, 4.0)]),
    103: dict(bids=[(9.5, 1.0)]),
    104: dict(asks=[(11.0, 0.0)]),
    105: dict(bids=[(10.0, 0.0)]),
}
LOST = {"a": 103, "b": 102}  # each collector alone has a gap; together they have every event


def recv(u: int) -> int:
    return H + (2 + 10 * (u - 101)) * S


def expected_book(last_update_id: int) -> tuple[list[dict], list[dict]]:
    """The top levels after every event up to ``last_update_id``, from the REST snapshot (the oracle)."""
    bids, asks = dict(BOOK.bids), dict(BOOK.asks)
    for u in range(BOOK.u + 1, last_update_id + 1):
        for side, levels in ((bids, EVENTS[u].get("bids", [])), (asks, EVENTS[u].get("asks", []))):
            for price, qty in levels:
                if qty:
                    side[price] = qty
                else:
                    side.pop(price, None)
    top = lambda side, rev: [{"price": p, "qty": side[p]} for p in sorted(side, reverse=rev)[:DEPTH_LEVELS]]  # noqa: E731
    return top(bids, True), top(asks, False)


def part_at(u: int, recv_us: int) -> Part:
    bids, asks = expected_book(u)
    return Part(recv_us, u, [(lv["price"], lv["qty"]) for lv in bids], [(lv["price"], lv["qty"]) for lv in asks])


def host_tables(host: str) -> dict[str, pa.Table]:
    """The collector's hour: its copy of the diff stream (without its lost event; b receives
    each event 300 µs after a), the REST snapshot, and one partial snapshot."""
    delay = {"a": 0, "b": 300}[host]
    ups = [Upd(recv(u) + delay, u, u, session_id=1 if host == "a" else 7, seq=i, **EVENTS[u])
           for i, u in enumerate(u for u in sorted(EVENTS) if u != LOST[host])]
    # a's partial at 104 (after a's own gap), b's at 102 (after b's): neither collector can prove alone
    partial_u = {"a": 104, "b": 102}[host]
    return {
        DEPTH_UPDATE: updates(ups),
        DEPTH_REST: rest([BOOK._replace(recv_us=BOOK.recv_us + delay)]),
        DEPTH: partial([part_at(partial_u, recv(partial_u) + 100_000 + delay)], stream=PARTIAL_STREAM),
    }


def put_host_parts(store: LocalStore, tmp: Path, host: str) -> list[merge.PartRef]:
    """The collector's parts where its own archive run puts them, as the merge's references."""
    refs = []
    for dataset, table in host_tables(host).items():
        key = f"{merge.host_prefix(host)}/{dataset}/{hour_folder(H)}/part-0001-0-1.parquet"
        path = tmp / f"{host}-{dataset}.parquet"
        _, sha = export.write_table(table, path, {})
        store.put_if_absent(key, path, sha)
        refs.append(merge.PartRef(host, key, sha, dataset))
    return refs


@pytest.fixture
def fleet(tmp_path, monkeypatch):
    # a location serving collector a and the fleet merge: the books must still read and write
    # the fleet's archive, not a's folder (which its own book_snapshot serves)
    monkeypatch.setenv("ORDERBOOK_HOST_ID", "a")
    monkeypatch.setenv("ORDERBOOK_BOOK_DEPTH", str(DEPTH_LEVELS))
    monkeypatch.setenv("ORDERBOOK_BOOK_INTERVAL_MS", str(INTERVAL_S * 1000))
    archive = tmp_path / "archive"
    store = LocalStore(archive)
    refs = {h: put_host_parts(store, tmp_path, h) for h in ("a", "b")}
    return archive, store, refs


def build_books(archive: Path, instance: dg.DagsterInstance, hour_us: int = H):
    return dg.materialize([fleet_books()], partition_key=partition_key(hour_us), instance=instance,
                          resources={"archive": ArchiveResource(url=str(archive))}, raise_on_error=False)


def checks(result, hour_us: int = H) -> dict:
    return {e.check_name: e for e in result.get_asset_check_evaluations() if e.partition == partition_key(hour_us)}


def test_merged_books_are_known_where_each_collector_alone_is_not_equal_proved_and_at_the_top(fleet, tmp_path):
    archive, store, refs = fleet
    merged = merge.merge_hour(store, tmp_path / "staging", H, refs["a"] + refs["b"])
    assert merged.datasets[DEPTH_UPDATE].rows == len(EVENTS)  # every event once
    assert merged.datasets[DEPTH_UPDATE].kept == {"a": 4, "b": 1}  # a's copies are earlier; 103 only b has

    result = build_books(archive, dg.DagsterInstance.ephemeral())
    assert result.success
    mat = result.asset_materializations_for_node("fleet__book_snapshot")[0]
    assert mat.asset_key == AssetKey([FLEET, "book_snapshot"])
    assert mat.metadata["path"].value == f"{archive}/{books_key(H)}"

    # at the top-level path analysts read, and found by their glob (docs/analysts.md)
    assert (archive / books_key(H)).is_file()
    con = duckdb.connect()
    books = con.execute(f"SELECT epoch_us(time), last_update_id, known, bids, asks FROM read_parquet("
                        f"'{archive}/book_snapshot/**/*.parquet', hive_partitioning = true) "
                        "WHERE stream = 'btcusdt@depth@100ms' ORDER BY time").fetchall()
    assert len(books) == HOUR_US // (INTERVAL_S * S)
    # the point at 0 s precedes the REST snapshot; every later point is known and is the book
    # every event up to it makes
    assert not books[0][2]
    assert all(known for _, _, known, _, _ in books[1:])
    assert [lid for t, lid, _, _, _ in books[1:6]] == [101, 102, 103, 104, 105]
    for t, lid, known, bids, asks in books[1:]:
        assert lid == max(u for u in EVENTS if recv(u) <= t)
        assert (bids, asks) == expected_book(lid), (t - H, lid)

    ev = checks(result)
    match = ev["book_matches_exchange"]
    assert match.passed and match.severity is AssetCheckSeverity.ERROR
    assert match.metadata["comparable"].value == 2 and match.metadata["matched"].value == 2  # a's partial and b's
    assert match.metadata["mismatches"].value == 0 and match.metadata["unproven_streams"].value == 0
    assert match.metadata["rows_unknown"].value == 1
    assert ev["book_not_crossed"].passed

    # each collector alone: unknown from its gap to the end of the hour (a lost event's time is
    # not known, so the point before it is undecided too), its own partial not comparable
    for host, lost in LOST.items():
        loc = Location.parse(f"{archive}/{merge.host_prefix(host)}")
        own = materialize_hour(loc, H, SETTINGS, LocalStore(loc.path))
        assert own.rows == len(books) and own.proof.comparable == 0 and own.proof.unproven, host
        host_books = con.execute(f"SELECT epoch_us(time), known FROM read_parquet('{own.books_url}') "
                                 "ORDER BY time").fetchall()
        after_gap = [known for t, known in host_books if t >= recv(lost)]
        assert len(after_gap) == len(books) - (recv(lost) - H) // (INTERVAL_S * S) - 1 > 300, host
        assert not any(after_gap), host  # while the merged books are known at every one of these points
        assert own.known_rows < 2, host
    # the hosts' own books stayed in their folders: the analysts' glob reads the merged ones only
    assert con.execute(f"SELECT count(*) FROM read_parquet('{archive}/book_snapshot/**/*.parquet')").fetchone()[0] \
        == len(books)


def test_a_late_merge_rebuilds_the_books_and_the_next_hour_from_the_merged_end_state(fleet, tmp_path):
    """``a``'s parts of hour 1 merged alone first (b's arrive late), and hour 2 (one event, on b)
    merged and built from that end state: both unknown from a's gap. The merge of both collectors'
    hour 1 rebuilds hour 1, known and proved, and hour 2 from its new end state (the top-level
    ``book_state``), each earlier build kept as a version, like a single host's late parts."""
    archive, store, refs = fleet
    instance = dg.DagsterInstance.ephemeral()
    points = HOUR_US // (INTERVAL_S * S)
    H2 = H + HOUR_US
    hour2 = {DEPTH_UPDATE: updates([Upd(H2 + 5 * S, 106, 106, bids=[(9.0, 5.0)])]),
             DEPTH: partial([Part(H2 + 5 * S + 100_000, 106, [(9.5, 1.0), (9.0, 5.0), (8.0, 1.0), (7.0, 1.0), (6.0, 1.0)],
                                  [(11.5, 4.0), (12.0, 2.0), (13.0, 1.0), (14.0, 1.0), (15.0, 1.0)])], stream=PARTIAL_STREAM)}
    refs2 = []
    for dataset, table in hour2.items():
        key = f"{merge.host_prefix('b')}/{dataset}/{hour_folder(H2)}/part-0001-0-1.parquet"
        _, sha = export.write_table(table, tmp_path / f"h2-{dataset}.parquet", {})
        store.put_if_absent(key, tmp_path / f"h2-{dataset}.parquet", sha)
        refs2.append(merge.PartRef("b", key, sha, dataset))
    merge.merge_hour(store, tmp_path / "staging", H2, refs2)

    merge.merge_hour(store, tmp_path / "staging", H, refs["a"])
    first = build_books(archive, instance)
    assert first.success  # unproven is a WARN, not a block
    match = checks(first)["book_matches_exchange"]
    assert not match.passed and match.severity is AssetCheckSeverity.WARN and "unproven" in match.description
    first_mat = first.asset_materializations_for_node("fleet__book_snapshot")[0].metadata
    first_sha, first_known = first_mat["sha256"].value, first_mat["known_rows"].value
    assert first_known < 2
    second = build_books(archive, instance, H2)
    assert second.success
    second_mat = second.asset_materializations_for_node("fleet__book_snapshot")[0].metadata
    assert second_mat["started_from_state"].value and second_mat["known_rows"].value == 0

    merge.merge_hour(store, tmp_path / "staging", H, refs["a"] + refs["b"])  # the late merge
    late = build_books(archive, instance)
    assert late.success
    mats = {m.partition: m.metadata for m in late.asset_materializations_for_node("fleet__book_snapshot")}
    assert set(mats) == {partition_key(H), partition_key(H2)}  # hour 2's start state changed: rebuilt
    mat = mats[partition_key(H)]
    assert mat["replaced_sha256"].value == first_sha != mat["sha256"].value
    assert mat["known_rows"].value == points - 1
    assert mat["cascaded_hours"].value == [datetime.fromtimestamp(H2 / S, tz=timezone.utc).isoformat()]
    for h in (H, H2):  # b's partial at 106 proves the rebuilt hour 2 (before, unknown: unproven)
        ev = checks(late, h)["book_matches_exchange"]
        assert ev.passed and ev.metadata["comparable"].value > 0, h
    rebuilt = mats[partition_key(H2)]
    assert rebuilt["replaced_sha256"].value == second_mat["sha256"].value
    assert rebuilt["known_rows"].value == points  # from hour 1's merged end state, at 105, then 106
    h2 = pq.read_table(archive / books_key(H2)).to_pylist()
    assert [r["last_update_id"] for r in h2[:2]] == [105, 106]
    assert h2[1]["bids"][:2] == [{"price": 9.5, "qty": 1.0}, {"price": 9.0, "qty": 5.0}]
    for h, sha in ((H, first_sha), (H2, second_mat["sha256"].value)):
        assert (archive / version_key(books_key(h), sha)).is_file()  # the earlier builds, kept


def test_the_merge_job_builds_the_books_after_the_merged_datasets():
    from orderbook_assets.definitions import build

    defs = build({"ORDERBOOK_FLEET_HOSTS": "a,b"})
    job = defs.resolve_job_def(MERGE_JOB)
    books = AssetKey([FLEET, "book_snapshot"])
    graph = defs.resolve_asset_graph()
    assert books in job.asset_layer.executable_asset_keys
    assert {AssetKey([FLEET, d]) for d in (DEPTH_UPDATE, DEPTH_REST, DEPTH)} <= graph.get(books).parent_keys
    # a fleet host's location keeps its own books, in its folder, under its own key
    host_and_fleet = build({"ORDERBOOK_FLEET_HOSTS": "a,b", "ORDERBOOK_HOST_ID": "a"}).resolve_asset_graph()
    assert {AssetKey(["a", "book_snapshot"]), books} <= set(host_and_fleet.get_all_asset_keys())
