"""The book builder on literal event sequences (Binance's procedure, spot U/u and USD-M pu)."""

from __future__ import annotations

import math

from orderbook_core.streams import Market
from orderbook_assets.books.builder import BookBuilder, DiffEvent, Outcome, Snapshot, Status


def spot(U, u, bids=(), asks=()):
    return DiffEvent(U, u, None, list(bids), list(asks))


def usdm(U, u, pu, bids=(), asks=()):
    return DiffEvent(U, u, pu, list(bids), list(asks))


SNAP = Snapshot(100, [(10.0, 1.0), (9.0, 2.0), (8.0, 3.0)], [(11.0, 1.0), (12.0, 2.0)])


def test_normal_flow_spot():
    """Snapshot, stale events dropped, the straddling event syncs, later events apply in order."""
    b = BookBuilder(Market.SPOT)
    assert b.snapshot(SNAP).outcome is Outcome.SNAPSHOT_PENDING
    assert b.status is Status.UNKNOWN and b.top(5) == ([], [])
    assert b.event(spot(95, 100, bids=[(10.0, 99.0)])).outcome is Outcome.STALE  # u <= lastUpdateId
    r = b.event(spot(101, 103, bids=[(10.0, 5.0)], asks=[(11.5, 4.0)]))
    assert r == (Outcome.SYNCED, Status.KNOWN, 103, ())
    r = b.event(spot(104, 104, bids=[(9.0, 0.0), (10.5, 1.5)], asks=[(11.0, 0.0)]))
    assert r.outcome is Outcome.APPLIED and r.last_update_id == 104
    assert b.top(2) == ([(10.5, 1.5), (10.0, 5.0)], [(11.5, 4.0), (12.0, 2.0)])
    assert b.top(10) == ([(10.5, 1.5), (10.0, 5.0), (8.0, 3.0)], [(11.5, 4.0), (12.0, 2.0)])
    assert b.event(spot(104, 104, bids=[(10.0, 77.0)])).outcome is Outcome.STALE  # a repeat changes nothing
    assert b.top(2)[0] == [(10.5, 1.5), (10.0, 5.0)]


def test_first_event_straddling_the_snapshot_id_is_applied_whole():
    b = BookBuilder(Market.SPOT)
    b.snapshot(SNAP)
    r = b.event(spot(98, 102, bids=[(10.0, 4.0)], asks=[(12.0, 0.0)]))
    assert r.outcome is Outcome.SYNCED and b.last_update_id == 102
    assert b.top(5) == ([(10.0, 4.0), (9.0, 2.0), (8.0, 3.0)], [(11.0, 1.0)])


def test_stale_snapshot_stays_unknown_until_a_usable_one():
    """A snapshot older than the first event's U - 1 cannot be bridged: the book stays unknown."""
    b = BookBuilder(Market.SPOT)
    b.snapshot(SNAP)
    r = b.event(spot(105, 110, bids=[(10.0, 4.0)]))
    assert r == (Outcome.SNAPSHOT_TOO_OLD, Status.UNKNOWN, None, ())
    assert b.event(spot(111, 112)).outcome is Outcome.BUFFERED
    assert b.top(5) == ([], [])
    # a fresh snapshot inside the buffered chain syncs at once from the tail
    r = b.snapshot(Snapshot(110, [(10.0, 7.0)], [(11.0, 1.0)]))
    assert r.outcome is Outcome.SYNCED and r.replayed == (Outcome.STALE, Outcome.SYNCED)
    assert b.last_update_id == 112 and b.top(1) == ([(10.0, 7.0)], [(11.0, 1.0)])


def test_snapshot_after_the_events_it_covers_receive_order():
    """As a live client: events arrive first, the snapshot later; the tail after its id is replayed."""
    b = BookBuilder(Market.SPOT)
    for ev in (spot(90, 95), spot(96, 99, bids=[(10.0, 0.0)]), spot(100, 101, bids=[(10.0, 6.0)]),
               spot(102, 102, asks=[(11.0, 0.0)])):
        assert b.event(ev).outcome is Outcome.BUFFERED
    r = b.snapshot(SNAP)
    assert r.outcome is Outcome.SYNCED and r.replayed == (Outcome.STALE, Outcome.STALE, Outcome.SYNCED,
                                                         Outcome.APPLIED)
    assert b.last_update_id == 102
    assert b.top(3) == ([(10.0, 6.0), (9.0, 2.0), (8.0, 3.0)], [(12.0, 2.0)])


def test_break_makes_unknown_until_the_next_usable_snapshot():
    b = BookBuilder(Market.SPOT)
    b.snapshot(SNAP)
    b.event(spot(101, 101, bids=[(10.0, 2.0)]))
    r = b.event(spot(103, 104, bids=[(10.0, 3.0)]))  # 102 missed
    assert r == (Outcome.BREAK, Status.UNKNOWN, None, ())
    assert b.top(5) == ([], []) and b.last_update_id is None
    assert b.event(spot(105, 106)).outcome is Outcome.BUFFERED
    assert b.snapshot(Snapshot(107, [(10.0, 9.0)], [(11.0, 9.0)])).outcome is Outcome.SNAPSHOT_PENDING
    assert b.status is Status.UNKNOWN
    assert b.event(spot(107, 107)).outcome is Outcome.STALE
    r = b.event(spot(108, 109, asks=[(11.0, 8.0)]))
    assert r == (Outcome.SYNCED, Status.KNOWN, 109, ())
    assert b.top(1) == ([(10.0, 9.0)], [(11.0, 8.0)])


def test_a_break_inside_the_tail_drops_what_came_before_it():
    b = BookBuilder(Market.SPOT)
    b.event(spot(90, 95))
    b.event(spot(99, 100))  # 96..98 missing: nothing before can be bridged
    b.event(spot(101, 102))
    assert [e.last_update_id for e in b.tail] == [100, 102]
    r = b.snapshot(Snapshot(94, [(1.0, 1.0)], [(2.0, 1.0)]))
    assert r.outcome is Outcome.SNAPSHOT_TOO_OLD and b.status is Status.UNKNOWN


def test_tail_is_bounded():
    b = BookBuilder(Market.SPOT, max_tail=3)
    for i in range(10):
        b.event(spot(i + 1, i + 1))
    assert [e.last_update_id for e in b.tail] == [8, 9, 10]
    assert b.snapshot(Snapshot(5, [], [])).outcome is Outcome.SNAPSHOT_TOO_OLD


def test_deletes_of_unknown_levels_are_fine():
    b = BookBuilder(Market.SPOT)
    b.snapshot(SNAP)
    r = b.event(spot(101, 101, bids=[(7.0, 0.0), (10.0, 0.0)], asks=[(99.0, 0.0)]))
    assert r.outcome is Outcome.SYNCED
    assert b.top(5) == ([(9.0, 2.0), (8.0, 3.0)], [(11.0, 1.0), (12.0, 2.0)])


def test_snapshot_behind_a_known_book_is_not_needed():
    b = BookBuilder(Market.SPOT)
    b.snapshot(SNAP)
    b.event(spot(101, 105, bids=[(10.0, 1.5)]))
    assert b.snapshot(Snapshot(103, [(1.0, 1.0)], [(2.0, 1.0)])).outcome is Outcome.SNAPSHOT_BEHIND
    assert b.top(1)[0] == [(10.0, 1.5)]


def test_snapshot_ahead_of_a_known_book_bridges_a_break():
    """Placed by update id, a snapshot between two events rescues the break right after it."""
    b = BookBuilder(Market.SPOT)
    b.snapshot(SNAP)
    b.event(spot(101, 101))
    assert b.snapshot(Snapshot(110, [(10.0, 1.0)], [(11.0, 1.0)])).outcome is Outcome.SNAPSHOT_PENDING
    assert b.status is Status.KNOWN  # still known at 101
    r = b.event(spot(109, 111, bids=[(10.0, 2.0)]))  # 102..108 missed, but the snapshot covers them
    assert r == (Outcome.SYNCED, Status.KNOWN, 111, ())
    assert b.top(1) == ([(10.0, 2.0)], [(11.0, 1.0)])


def test_snapshot_ahead_re_bases_the_known_book_when_the_chain_continues_past_it():
    """Any newer REST snapshot is a re-base (whatever its reason): the book takes its levels
    inside its range at the event that crosses its id, then the event on top."""
    b = BookBuilder(Market.SPOT)
    b.snapshot(SNAP)
    b.event(spot(101, 101, bids=[(10.0, 2.0)]))
    b.snapshot(Snapshot(104, [(50.0, 1.0)], [(51.0, 1.0)]))
    assert b.event(spot(102, 102)).outcome is Outcome.APPLIED  # u <= the snapshot's id: the book goes on
    assert b.event(spot(103, 105, asks=[(52.0, 4.0)])).outcome is Outcome.REBASED
    assert b.pending is None and b.top(1) == ([(50.0, 1.0)], [(51.0, 1.0)])
    assert b.asks.top(3) == [(51.0, 1.0), (52.0, 4.0)]
    # a snapshot at exactly the id an event ends at re-bases right after it
    b.snapshot(Snapshot(106, [(49.0, 1.0)], [(51.0, 1.0)]))
    assert b.event(spot(106, 106)).outcome is Outcome.REBASED and b.top(1)[0] == [(49.0, 1.0)]


def test_crossed():
    b = BookBuilder(Market.SPOT)
    b.snapshot(SNAP)
    b.event(spot(101, 101, bids=[(11.0, 1.0)]))
    assert b.crossed()
    b.event(spot(102, 102, bids=[(11.0, 0.0)]))
    assert not b.crossed()


# ---- USD-M: continuity by pu ---------------------------------------------------------------


def test_usdm_first_event_must_straddle_and_then_pu_chains():
    b = BookBuilder(Market.USDM)
    b.snapshot(SNAP)
    assert b.event(usdm(90, 99, 80)).outcome is Outcome.STALE  # u < lastUpdateId
    r = b.event(usdm(95, 100, 99, bids=[(10.0, 2.5)]))  # U <= 100 <= u (u == L is applied on USD-M)
    assert r == (Outcome.SYNCED, Status.KNOWN, 100, ())
    # futures ids jump between events: U need not be pu + 1, only pu == previous u
    assert b.event(usdm(130, 140, 100, asks=[(11.0, 3.0)])).outcome is Outcome.APPLIED
    assert b.top(1) == ([(10.0, 2.5)], [(11.0, 3.0)])
    r = b.event(usdm(150, 160, 145))  # pu != 140: something was missed
    assert r == (Outcome.BREAK, Status.UNKNOWN, None, ())


def test_usdm_event_continuing_exactly_from_the_snapshot_syncs():
    b = BookBuilder(Market.USDM)
    b.snapshot(SNAP)
    r = b.event(usdm(105, 120, 100, bids=[(9.0, 0.0)]))  # pu == lastUpdateId
    assert r.outcome is Outcome.SYNCED and b.top(5)[0] == [(10.0, 1.0), (8.0, 3.0)]


def test_usdm_snapshot_too_old():
    b = BookBuilder(Market.USDM)
    b.snapshot(SNAP)
    assert b.event(usdm(101, 120, 101)).outcome is Outcome.SNAPSHOT_TOO_OLD  # starts after 100, pu != 100
    assert b.status is Status.UNKNOWN


def test_usdm_u_not_consecutive_is_not_a_break_but_pu_is_checked_not_U():
    """On spot the same ids would be a break (U > u + 1); USD-M checks pu only."""
    ids = [(101, 101, 100), (150, 160, 101), (170, 171, 160)]
    fut = BookBuilder(Market.USDM)
    fut.snapshot(SNAP)
    assert [fut.event(usdm(*i)).outcome for i in ids] == [Outcome.SYNCED, Outcome.APPLIED, Outcome.APPLIED]
    sp = BookBuilder(Market.SPOT)
    sp.snapshot(SNAP)
    assert [sp.event(spot(U, u)).outcome for U, u, _ in ids] == [Outcome.SYNCED, Outcome.BREAK, Outcome.BUFFERED]


def test_usdm_tail_chain_follows_pu():
    b = BookBuilder(Market.USDM)
    b.event(usdm(90, 98, 85))
    b.event(usdm(99, 103, 98, bids=[(10.0, 4.0)]))
    b.event(usdm(110, 115, 103))
    r = b.snapshot(SNAP)
    assert r.outcome is Outcome.SYNCED and r.replayed == (Outcome.STALE, Outcome.SYNCED, Outcome.APPLIED)
    assert b.last_update_id == 115 and b.top(1)[0] == [(10.0, 4.0)]


def test_sorted_keys_against_a_plain_sorted_list():
    """The blocked sorted keys behave as one sorted list through many inserts and deletes."""
    import random

    from orderbook_assets.books.builder import SortedKeys

    rng = random.Random(5)
    keys, model = SortedKeys(), set()
    SortedKeys.BLOCK, old = 4, SortedKeys.BLOCK  # tiny blocks: splits and empty blocks happen
    try:
        keys.load(sorted(float(x) for x in range(0, 40, 3)))
        model.update(float(x) for x in range(0, 40, 3))
        for _ in range(3000):
            k = float(rng.randrange(-50, 90))
            if k in model:
                keys.remove(k)
                model.discard(k)
            else:
                keys.add(k)
                model.add(k)
            assert len(keys) == len(model)
        want = sorted(model)
        assert keys.head(len(want) + 5) == want and keys.head(7) == want[:7] and keys.first() == want[0]
        for k in want:
            keys.remove(k)
        assert len(keys) == 0 and keys.first() is None and keys.head(3) == []
    finally:
        SortedKeys.BLOCK = old


# ---- the horizon -----------------------------------------------------------------------------

CUT = Snapshot(100, [(10.0, 1.0), (9.0, 2.0)], [(11.0, 1.0), (12.0, 2.0)])  # cut at 2 levels a side


def test_a_snapshot_cut_at_two_levels_then_the_two_top_bids_removed_proves_no_complete_row():
    """The issue's case: 59 rows ``known`` with empty bids. The bid side is known down to 9.0
    only; with both removed nothing of the bids is known, and the asks prove 2 levels."""
    b = BookBuilder(Market.SPOT)
    b.snapshot(CUT)
    b.event(spot(101, 101))
    top = b.known_top(2)
    assert top == ([(10.0, 1.0), (9.0, 2.0)], [(11.0, 1.0), (12.0, 2.0)], 2, True)
    assert b.known_top(3).complete is False and b.known_top(3).known_levels == 2
    b.event(spot(102, 102, bids=[(10.0, 0.0), (9.0, 0.0)]))
    top = b.known_top(2)
    assert (top.bids, top.known_levels, top.complete) == ([], 0, False)
    assert b.bids.known(10.0) and b.bids.known(9.0) and not b.bids.known(8.5)
    # a bid set beyond the horizon is known from then on, but the levels around it are not
    b.event(spot(103, 103, bids=[(8.0, 5.0)]))
    assert b.bids.known(8.0) and not b.bids.known(8.5)
    assert b.known_top(1).known_levels == 0 and b.top(1)[0] == [(8.0, 5.0)]
    # a bid inside the horizon is a complete top 1
    b.event(spot(104, 104, bids=[(9.5, 1.0)]))
    assert b.known_top(1) == ([(9.5, 1.0)], [(11.0, 1.0)], 1, True)
    assert b.known_top(2).bids == [(9.5, 1.0)]  # 8.0 lies beyond the horizon: not presented


def test_a_re_base_extends_the_horizon_and_a_side_shorter_than_its_limit_is_whole():
    b = BookBuilder(Market.SPOT)
    b.snapshot(CUT)
    b.event(spot(101, 101, bids=[(10.0, 0.0), (9.0, 0.0)]))
    assert b.known_top(1).known_levels == 0
    # a newer snapshot, deeper: its bids reach 7.0; the asks hold fewer levels than its limit
    deeper = Snapshot(105, [(8.0, 3.0), (7.0, 4.0)], [(11.0, 1.0)], limit=2)
    b.snapshot(deeper)
    r = b.event(spot(102, 106, bids=[(8.5, 1.0)], asks=[(13.0, 9.0)]))
    assert r.outcome is Outcome.REBASED and r.last_update_id == 106
    top = b.known_top(3)
    assert top.bids == [(8.5, 1.0), (8.0, 3.0), (7.0, 4.0)] and top.complete
    assert top.asks == [(11.0, 1.0), (13.0, 9.0)]  # the whole side: 12.0 is gone, 13.0 came after
    assert b.asks.horizon == math.inf and b.bids.key(7.0) == b.bids.horizon
    # the wider horizon wins: a later shallower snapshot does not shrink it
    b.snapshot(Snapshot(107, [(8.5, 1.0)], [(11.0, 1.0)]))
    assert b.event(spot(107, 107)).outcome is Outcome.REBASED
    assert b.bids.key(7.0) == b.bids.horizon and b.known_top(3).complete


def test_a_known_book_resumed_without_horizons_proves_nothing_until_a_re_base():
    b = BookBuilder(Market.SPOT)
    b.load_known(100, [(10.0, 1.0)], [(11.0, 1.0)])
    assert b.status is Status.KNOWN and b.known_top(1) == ([], [], 0, False)
    b.snapshot(Snapshot(100, [(10.0, 1.0)], [(11.0, 1.0)], limit=5))  # exactly at the book's id
    assert b.known_top(1) == ([(10.0, 1.0)], [(11.0, 1.0)], 1, True)


def test_usdm_re_base_by_pu_and_a_snapshot_between_events_ids():
    """USD-M ids are not contiguous: a snapshot whose id falls between pu and U is the book
    before the event; one inside [U, u] is re-based with the event on top."""
    b = BookBuilder(Market.USDM)
    b.snapshot(CUT)
    assert b.event(usdm(95, 110, 90, bids=[(10.0, 0.0)])).outcome is Outcome.SYNCED
    b.snapshot(Snapshot(115, [(9.0, 2.0), (8.0, 1.0), (7.0, 1.0)], [(11.0, 1.0), (12.0, 2.0)]))
    r = b.event(usdm(120, 130, 110, bids=[(7.0, 6.0)]))
    assert r.outcome is Outcome.REBASED and b.known_top(3).bids == [(9.0, 2.0), (8.0, 1.0), (7.0, 6.0)]
    assert b.known_top(3).known_levels == 2  # the asks reach 12.0 only
    assert b.event(usdm(131, 140, 129)).outcome is Outcome.BREAK  # pu != the previous u
    assert b.known_top(1) == ([], [], 0, False)


def test_seen_prices_past_a_depth_are_forgotten_which_only_narrows_what_is_known():
    b = BookBuilder(Market.SPOT)
    b.snapshot(CUT)
    b.event(spot(101, 101, bids=[(8.0, 1.0), (7.0, 1.0), (6.0, 0.0)]))
    assert b.bids.seen == {8.0, 7.0, 6.0}
    b.bids.prune_seen(3)  # 10.0, 9.0, 8.0
    assert b.bids.seen == {8.0} and b.bids.known(8.0) and not b.bids.known(7.0)
    assert b.known_top(3).known_levels == 2
