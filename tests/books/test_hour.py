"""``book_snapshot`` for one hour from literal depth_update / depth_rest_snapshot tables."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from orderbook_core.buffer.hours import HOUR_US

from orderbook_assets.books.builder import Status
from orderbook_assets.books.hour import SCHEMA, HourState, Settings, StreamKey, build_hour, crossed_rows
from support.book_tables import REST_SCHEMA, UPDATE_SCHEMA, Part, Rest, Upd, empty, partial, rest, updates

H = 1_795_514_400_000_000  # 2026-11-24 10:00 UTC... any hour: a multiple of 3600 s
S = 1_000_000
TEN = Settings(depth=3, interval_us=10 * S)
#: A snapshot asked for 100 levels a side: both sides are whole (the horizon is unbounded).
BOOK = Rest(H + 1 * S, 100, [(10.0, 1.0), (9.0, 2.0), (8.0, 3.0), (7.0, 4.0)], [(11.0, 1.0), (12.0, 2.0)], limit=100)


def rows(table: pa.Table, stream: str | None = None) -> list[dict]:
    out = table.to_pylist()
    return [r for r in out if stream is None or r["stream"] == stream]


def at(table: pa.Table, second: int) -> dict:
    found = [r for r in rows(table) if int(r["time"].timestamp()) * S == H + second * S]
    assert len(found) == 1, found
    return found[0]


def levels(side: list[dict]) -> list[tuple[float, float]]:
    return [(lv["price"], lv["qty"]) for lv in side]


def test_hour_from_the_first_snapshot_then_continuous():
    assert H % 3_600_000_000 == 0
    ups = updates([Upd(H + 2 * S, 95, 100), Upd(H + 12 * S, 101, 103, bids=[(10.0, 5.0)]),
                   Upd(H + 25 * S, 104, 104, asks=[(11.0, 0.0), (11.5, 2.0)])])
    out = build_hour(H, ups, rest([BOOK]), None, TEN)
    t = out.table
    assert t.schema == SCHEMA
    assert t.num_rows == 360  # one row per 10 s point of the hour
    assert at(t, 0)["known"] is False and at(t, 0)["last_update_id"] is None and at(t, 0)["bids"] == []
    assert at(t, 10)["known"] is False  # the snapshot is bridged only by the event at 12 s
    r20 = at(t, 20)
    assert (r20["known"], r20["last_update_id"]) == (True, 103)
    assert levels(r20["bids"]) == [(10.0, 5.0), (9.0, 2.0), (8.0, 3.0)]  # top 3 only
    assert levels(r20["asks"]) == [(11.0, 1.0), (12.0, 2.0)]
    r30 = at(t, 30)
    assert r30["last_update_id"] == 104 and levels(r30["asks"]) == [(11.5, 2.0), (12.0, 2.0)]
    assert at(t, 3590)["last_update_id"] == 104  # after the last event: the book as it stands
    st = out.state.streams[StreamKey("spot", "btcusdt@depth@100ms")]
    assert (st.status, st.last_update_id) == (Status.KNOWN, 104)
    assert st.bids == [(10.0, 5.0), (9.0, 2.0), (8.0, 3.0), (7.0, 4.0)]  # the full book, not the top 3


def test_a_point_at_an_events_own_time_includes_it():
    ups = updates([Upd(H, 101, 101), Upd(H + 10 * S, 102, 102, bids=[(10.0, 9.0)]),
                   Upd(H + 15 * S, 103, 103)])
    out = build_hour(H, ups, rest([Rest(H, 100, [(10.0, 1.0)], [(11.0, 1.0)])]), None, TEN)
    assert at(out.table, 0)["last_update_id"] == 101
    assert at(out.table, 10)["last_update_id"] == 102 and levels(at(out.table, 10)["bids"]) == [(10.0, 9.0)]


def test_snapshot_received_after_the_events_it_covers_makes_the_book_known_from_the_bridge():
    """The collector fetches the snapshot seconds after the events start: no hole at the resync."""
    ups = updates([Upd(H + 2 * S, 99, 100), Upd(H + 5 * S, 101, 102, bids=[(10.0, 3.0)]),
                   Upd(H + 15 * S, 103, 103)])
    late = BOOK._replace(recv_us=H + 14 * S)
    t = build_hour(H, ups, rest([late]), None, TEN).table
    assert (at(t, 10)["known"], at(t, 10)["last_update_id"]) == (True, 102)
    assert levels(at(t, 10)["bids"])[0] == (10.0, 3.0)


def test_break_makes_the_gap_and_after_unknown_until_the_next_snapshot():
    ups = updates([
        Upd(H + 1 * S, 101, 101), Upd(H + 5 * S, 102, 102),
        Upd(H + 41 * S, 110, 111),  # 103..109 missed: a break found at 41 s
        Upd(H + 45 * S, 112, 112),
        Upd(H + 61 * S, 118, 121, bids=[(10.0, 8.0)]),  # bridges the second snapshot (120)
        Upd(H + 75 * S, 122, 122),
    ])
    snaps = rest([BOOK._replace(recv_us=H), Rest(H + 60 * S, 120, [(10.0, 7.0)], [(11.0, 7.0)], "gap", 100)])
    t = build_hour(H, ups, snaps, None, TEN).table
    assert at(t, 10)["known"] is False  # stale since 5 s: the missed changes happened at some point after
    assert [at(t, s)["known"] for s in (20, 30, 40, 50, 60)] == [False] * 5
    r70 = at(t, 70)
    assert (r70["known"], r70["last_update_id"]) == (True, 121)
    assert levels(r70["bids"]) == [(10.0, 8.0)] and levels(r70["asks"]) == [(11.0, 7.0)]
    assert at(t, 0)["known"] is False  # before the first event: undecided, then unknown (not yet bridged)


def test_state_carries_the_book_into_the_next_hour_and_round_trips():
    ups1 = updates([Upd(H + 1 * S, 101, 102, bids=[(10.0, 6.0)])])
    h1 = build_hour(H, ups1, rest([BOOK]), None, TEN)
    state = HourState.from_bytes(h1.state.to_bytes())
    assert state == h1.state and state.to_bytes() == h1.state.to_bytes()
    H2 = H + 3600 * S
    ups2 = updates([Upd(H2 + 5 * S, 103, 103, asks=[(11.0, 2.0)])])
    t2 = build_hour(H2, ups2, empty(REST_SCHEMA), state, TEN).table
    assert (at2 := [r for r in rows(t2) if r["time"].timestamp() * S == H2 + 10 * S][0])["last_update_id"] == 103
    assert levels(at2["bids"])[0] == (10.0, 6.0) and levels(at2["asks"])[0] == (11.0, 2.0)
    # the hour's first points are decided by its first event: known at 102, carried over
    assert [r for r in rows(t2) if r["time"].timestamp() * S == H2][0]["last_update_id"] == 102
    # without the state the same hour is unknown throughout (no snapshot in it)
    assert not any(r["known"] for r in rows(build_hour(H2, ups2, empty(REST_SCHEMA), None, TEN).table))


def test_a_snapshot_bridging_an_event_of_the_previous_hour_uses_the_carried_tail():
    ups1 = updates([Upd(H + 3599 * S, 95, 101, bids=[(10.0, 2.0)])])  # unknown: kept in the tail
    h1 = build_hour(H, ups1, empty(REST_SCHEMA), None, TEN)
    assert [e.last_update_id for e in h1.state.streams[StreamKey("spot", "btcusdt@depth@100ms")].tail] == [101]
    H2 = H + 3600 * S
    ups2 = updates([Upd(H2 + 3 * S, 102, 102)])
    t2 = build_hour(H2, ups2, rest([BOOK._replace(recv_us=H2 + 1 * S)]), HourState.from_bytes(h1.state.to_bytes()),
                    TEN).table
    r = [r for r in rows(t2) if r["time"].timestamp() * S == H2][0]
    assert (r["known"], r["last_update_id"]) == (True, 101)
    assert levels(r["bids"])[0] == (10.0, 2.0)


def test_output_is_deterministic_whatever_the_row_order_and_duplicates():
    rng = random.Random(7)
    base = [Upd(H + i * 700_000, 101 + i, 101 + i, bids=[(10.0 - (i % 3), float(i % 5))]) for i in range(200)]
    dup = base + [r._replace(recv_us=r.recv_us + 50, session_id=2) for r in base[50:80]]
    one = build_hour(H, updates(base), rest([BOOK]), None, Settings(depth=2, interval_us=S))
    shuffled = dup[:]
    rng.shuffle(shuffled)
    two = build_hour(H, updates(shuffled), rest([BOOK, BOOK]), None, Settings(depth=2, interval_us=S))
    assert one.table.equals(two.table) and one.state.to_bytes() == two.state.to_bytes()
    assert one.table.num_rows == 3600


def test_markets_with_the_same_stream_name_are_separate_books():
    sp = updates([Upd(H + 1 * S, 101, 101, bids=[(10.0, 5.0)])], market="spot", stream="btcusdt@depth")
    fu = updates([Upd(H + 1 * S, 90, 100, pu=89, bids=[(10.0, 6.0)])], market="usdm", stream="btcusdt@depth")
    snaps = pa.concat_tables([rest([BOOK], market="spot", stream="btcusdt@depth"),
                              rest([BOOK], market="usdm", stream="btcusdt@depth")])
    t = build_hour(H, pa.concat_tables([sp, fu]), snaps, None, TEN).table
    r = {x["market"]: x for x in rows(t) if x["time"].timestamp() * S == H + 10 * S}
    assert levels(r["spot"]["bids"])[0] == (10.0, 5.0) and r["spot"]["last_update_id"] == 101
    assert levels(r["usdm"]["bids"])[0] == (10.0, 6.0) and r["usdm"]["last_update_id"] == 100


def test_settings_are_checked():
    with pytest.raises(ValueError, match="interval"):
        Settings(interval_us=7 * S)
    with pytest.raises(ValueError, match="depth"):
        Settings(depth=0)
    with pytest.raises(ValueError, match="previous state"):
        build_hour(H, empty(UPDATE_SCHEMA), empty(REST_SCHEMA), HourState(H + 1), TEN)


# ---- the proof against partial snapshots ---------------------------------------------------


def test_proof_counts_comparable_and_matched_and_reports_mismatches_with_levels():
    ups = updates([Upd(H + 2 * S, 101, 101, bids=[(10.0, 5.0)]), Upd(H + 3 * S, 102, 102, asks=[(11.0, 0.0)]),
                   Upd(H + 4 * S, 103, 103)])
    good = Part(H + 2 * S, 101, [(10.0, 5.0), (9.0, 2.0)], [(11.0, 1.0), (12.0, 2.0)])
    bad = Part(H + 3 * S, 102, [(10.0, 5.0), (9.0, 2.0)], [(11.0, 1.0), (12.0, 2.0)])  # 11.0 was deleted
    unrelated = Part(H + 3 * S, 555, [(1.0, 1.0)], [(2.0, 1.0)])  # after the hour's last event: not comparable
    proof = build_hour(H, ups, rest([BOOK]), None, TEN,
                       partial=partial([good, bad, unrelated], stream="btcusdt@depth2@100ms")).proof
    assert (proof.available, proof.comparable, proof.matched, proof.mismatched) == (4, 2, 1, 1)
    assert len(proof.mismatches) == 1 and not proof.ok
    m = proof.mismatches[0]
    assert (m.last_update_id, m.source, m.event) == (102, "btcusdt@depth2@100ms", (102, 102))
    assert m.levels == [("ask", 11.0, 1.0, 0.0)]
    (st,) = proof.streams
    assert (st.diff_events, st.available_rest, st.levels_compared, st.levels_mismatched) == (3, 1, 8, 1)


def test_proof_warns_where_the_rebuilt_book_is_crossed_and_the_exchanges_is_not():
    ups = updates([Upd(H + 2 * S, 101, 101, bids=[(11.5, 1.0)])])  # bid above the best ask: crossed
    exch = Part(H + 2 * S, 101, [(10.0, 1.0)], [(11.0, 1.0)])
    proof = build_hour(H, ups, rest([BOOK]), None, TEN, partial=partial([exch], stream="btcusdt@depth1@100ms")).proof
    assert (proof.comparable, proof.matched) == (1, 0)
    assert [(c.last_update_id, c.best_bid, c.best_ask) for c in proof.crossed] == [(101, 11.5, 11.0)]


def test_crossed_rows_counts_known_crossed_points_with_examples():
    ups = updates([Upd(H + 15 * S, 101, 101, bids=[(11.5, 1.0)]), Upd(H + 35 * S, 102, 102, bids=[(11.5, 0.0)])])
    t = build_hour(H, ups, rest([BOOK]), None, TEN).table
    c = crossed_rows(t, examples=1)
    assert c.count == 2  # the points at 20 s and 30 s
    assert [(e["last_update_id"], e["best_bid"], e["best_ask"]) for e in c.examples] == [(101, 11.5, 11.0)]
    assert crossed_rows(t.slice(0, 0)) == (0, [])
    assert crossed_rows(build_hour(H, updates([Upd(H + 15 * S, 101, 101)]), rest([BOOK]), None, TEN).table).count == 0


def test_settings_from_the_environment():
    from orderbook_assets.settings import load
    from orderbook_core.errors import ConfigError

    assert load({}).book == Settings(depth=25, interval_us=1_000_000)
    assert load({"ORDERBOOK_BOOK_DEPTH": "50", "ORDERBOOK_BOOK_INTERVAL_MS": "100"}).book == Settings(50, 100_000)
    with pytest.raises(ConfigError, match=r"^ORDERBOOK_BOOK_DEPTH: is 'x'; set a whole number"):
        load({"ORDERBOOK_BOOK_DEPTH": "x"})
    with pytest.raises(ConfigError, match=r"^ORDERBOOK_BOOK_INTERVAL_MS: is 7; set a number of ms that divides an hour"):
        load({"ORDERBOOK_BOOK_INTERVAL_MS": "7"})


# ---- the proof around a snapshot's id: whether or not an event ends there ------------------

#: Known at 101; then one event 102..105 that sets bid 10.0 from 1.0 to 5.0 (and nothing else).
AROUND = [Upd(H + 2 * S, 101, 101), Upd(H + 3 * S, 102, 105, bids=[(10.0, 5.0)]), Upd(H + 4 * S, 106, 106)]


def proof_of(parts, ups=AROUND, market="spot", snaps=(BOOK,)):
    return build_hour(H, updates(ups, market=market), rest(list(snaps), market=market), None, TEN,
                      partial=partial(parts, market=market, stream="btcusdt@depth2@100ms")).proof


def test_a_snapshot_inside_an_event_compares_touched_levels_with_either_end_and_the_rest_exactly():
    before = Part(H + 3 * S, 103, [(10.0, 1.0), (9.0, 2.0)], [(11.0, 1.0), (12.0, 2.0)])  # 10.0 not yet changed
    after = Part(H + 3 * S, 104, [(10.0, 5.0), (9.0, 2.0)], [(11.0, 1.0), (12.0, 2.0)])  # 10.0 already changed
    p = proof_of([before, after])
    assert (p.available, p.comparable, p.matched, p.mismatched) == (3, 2, 2, 0)
    assert p.streams[0].levels_compared == 8 and p.streams[0].levels_undecided == 0
    # a value between the event's ends: 10.0 changed twice inside it; undecided, not a mismatch
    between = Part(H + 3 * S, 103, [(10.0, 3.0), (9.0, 2.0)], [(11.0, 1.0), (12.0, 2.0)])
    p = proof_of([between])
    assert (p.comparable, p.matched, p.mismatched, p.streams[0].levels_undecided) == (1, 1, 0, 1)
    # an untouched level that differs is a mismatch, with its level
    wrong = Part(H + 3 * S, 103, [(10.0, 1.0), (9.0, 7.0)], [(11.0, 1.0), (12.0, 2.0)])
    p = proof_of([wrong])
    assert p.mismatched == 1 and p.mismatches[0].levels == [("bid", 9.0, 7.0, 2.0)]
    assert p.mismatches[0].event == (102, 105)


def test_a_snapshot_where_an_event_ends_is_exact_for_every_level():
    stale = Part(H + 3 * S, 105, [(10.0, 1.0), (9.0, 2.0)], [(11.0, 1.0), (12.0, 2.0)])  # 10.0 is 5.0 at 105
    p = proof_of([stale])
    assert p.mismatched == 1 and p.mismatches[0].levels == [("bid", 10.0, 1.0, 5.0)]
    good = stale._replace(bids=[(10.0, 5.0), (9.0, 2.0)])
    assert proof_of([good]).matched == 1


def test_usdm_snapshot_between_pu_and_U_is_the_book_before_the_event_exactly():
    """USD-M ids are not contiguous: nothing of this book changed in (pu, U); inside [U, u) the
    event straddles the id."""
    ups = [Upd(H + 2 * S, 95, 101, pu=90), Upd(H + 3 * S, 110, 120, pu=101, bids=[(10.0, 5.0)]),
           Upd(H + 4 * S, 125, 130, pu=120)]
    gap = Part(H + 3 * S, 105, [(10.0, 1.0), (9.0, 2.0)], [(11.0, 1.0), (12.0, 2.0)])
    assert (p := proof_of([gap], ups, "usdm")).matched == 1 and p.streams[0].levels_compared == 4
    gap_wrong = gap._replace(bids=[(10.0, 5.0), (9.0, 2.0)])  # the event had not started at 105
    assert proof_of([gap_wrong], ups, "usdm").mismatches[0].levels == [("bid", 10.0, 5.0, 1.0)]
    inside = gap._replace(u=115, bids=[(10.0, 5.0), (9.0, 2.0)])
    assert proof_of([inside], ups, "usdm").matched == 1


def test_a_rest_snapshot_is_compared_before_it_re_bases_the_book():
    """A newer REST snapshot (a re-base, whatever its reason) proves the known book first: a
    planted wrong level is a mismatch; the book then takes the snapshot's levels."""
    planted = Rest(H + 3 * S, 103, [(10.0, 1.0), (9.0, 2.5), (8.0, 3.0), (7.0, 4.0)], [(11.0, 1.0), (12.0, 2.0)],
                   "rebase", 100)
    out = build_hour(H, updates(AROUND), rest([BOOK, planted]), None, TEN)
    p = out.proof
    assert (p.available, p.comparable, p.mismatched) == (2, 1, 1)  # the first snapshot synced: not a proof
    assert p.mismatches[0].source == "rest" and p.mismatches[0].levels == [("bid", 9.0, 2.5, 2.0)]
    assert levels(at(out.table, 10)["bids"]) == [(10.0, 5.0), (9.0, 2.5), (8.0, 3.0)]


def test_an_hour_with_diff_rows_and_no_snapshot_is_unproven_and_rows_past_the_horizon_say_so():
    ups = updates([Upd(H + 2 * S, 101, 101), Upd(H + 3 * S, 102, 102, bids=[(10.0, 0.0), (9.0, 0.0)])])
    cut = Rest(H + 1 * S, 100, [(10.0, 1.0), (9.0, 2.0)], [(11.0, 1.0), (12.0, 2.0)])  # no limit: cut at 2
    out = build_hour(H, ups, rest([cut]), None, Settings(depth=2, interval_us=S))
    (st,) = out.proof.streams
    assert st.unproven and out.proof.unproven == [st] and st.comparable == 0
    assert (st.rows_known, st.rows_partly_known, st.rows_unknown) == (1, 3597, 2)
    r = at(out.table, 10)
    assert (r["known"], r["known_levels"], r["last_update_id"], r["bids"]) == (False, 0, 102, [])
    assert levels(r["asks"]) == [(11.0, 1.0), (12.0, 2.0)]
    assert not any(x["known"] for x in rows(out.table) if x["time"].timestamp() * S >= H + 3 * S)
    # the horizon and the levels seen beyond it carry into the next hour
    st = out.state.streams[StreamKey("spot", "btcusdt@depth@100ms")]
    assert st.horizons == (-9.0, 12.0) and st.seen == ([], [])
    back = HourState.from_bytes(out.state.to_bytes())
    assert back == out.state
    nxt = build_hour(H + HOUR_US, updates([Upd(H + HOUR_US + S, 103, 103, bids=[(9.5, 1.0), (8.0, 2.0)])]),
                     empty(REST_SCHEMA), back, Settings(depth=2, interval_us=S))
    r = [x for x in rows(nxt.table) if x["time"].timestamp() * S == H + HOUR_US + 2 * S][0]
    assert (r["known_levels"], levels(r["bids"])) == (1, [(9.5, 1.0)])  # 8.0 lies past the horizon (9.0)
    assert nxt.state.streams[StreamKey("spot", "btcusdt@depth@100ms")].seen == ([8.0], [])
