"""The continuity core, sans I/O: literal diff events, snapshots and trades in, rows out."""

from __future__ import annotations

from orderbook_core.buffer.records import (
    AggTradeRecord, DepthRestSnapshotRecord, DepthSyncRecord, DepthUpdateRecord, TradeGapRecord, TradeRecord,
)
from orderbook_core.streams import Market, spec
from orderbook_collector.feed.sync import (
    Continuity, DiffDepthTracker, LastEvent, SnapshotRequest, SyncReason, TradeIdTracker,
)

S1, S2 = 1_000, 2_000  # session ids
SPOT = "btcusdt@depth@100ms"
USDM = "usdm:btcusdt@depth@100ms"


def ev(U, u, sid=S1, pu=None, stream=SPOT, E=None, recv=None):
    return DepthUpdateRecord(stream, recv or u * 10, sid, u, E or u * 100, None, U, u, pu, 0, b"", 0)


def snap(L, stream=SPOT, recv=10**9, market="spot"):
    return DepthRestSnapshotRecord(stream, market, "BTCUSDT", recv, L, 0, b"", "gap", None, None)


def brk(reason, before, after, sid=S1, stream=SPOT, pu=None):
    """The expected break row: before = (u, E) of the last good event, after = (U, u) of the new one."""
    b_u, b_e = before if before else (None, None)
    U, u = after
    return DepthSyncRecord(stream, sid, u * 10, "break", reason, b_u, b_e, U, u, pu, u * 100, None)


def synced(after, L, recv, sid=S1, stream=SPOT, pu=None):
    U, u = after
    return DepthSyncRecord(stream, sid, recv, "synced", "snapshot", None, None, U, u, pu, u * 100, L)


def test_first_event_of_a_fresh_stream_is_a_connect_break_with_no_before():
    t = DiffDepthTracker(SPOT, Market.SPOT)
    assert t.on_event(ev(10, 12)) == [brk("connect", None, (10, 12)), SnapshotRequest(SPOT, "connect")]
    assert not t.synced


def test_spot_gap_then_snapshot_already_bridged_by_a_stored_event():
    t = DiffDepthTracker(SPOT, Market.SPOT, LastEvent(9, 900, S1), synced=True)
    assert t.on_event(ev(10, 12)) == []  # U == 9 + 1
    assert t.on_event(ev(13, 15)) == []
    out = t.on_event(ev(17, 20))  # 16 never arrived
    assert out == [brk("gap", (15, 1500), (17, 20)), SnapshotRequest(SPOT, "gap")]
    assert t.on_event(ev(21, 25)) == [] and t.on_event(ev(26, 30)) == []
    # L = 22: the event 21..25 holds L + 1 = 23 and is the first applied (17..20 is stale).
    assert t.on_snapshot(snap(22, recv=5)) == [synced((21, 25), 22, recv=250)]  # the later of the two times
    assert t.synced
    assert t.on_event(ev(31, 31)) == []


def test_spot_snapshot_newer_than_every_event_waits_for_its_event():
    t = DiffDepthTracker(SPOT, Market.SPOT, LastEvent(9, 900, S1), synced=True)
    t.on_event(ev(12, 14))  # gap
    assert t.on_snapshot(snap(20, recv=5)) == []
    assert t.on_event(ev(15, 18)) == []  # u <= L: stale
    assert t.on_event(ev(19, 20)) == []  # u == L: stale too, L + 1 = 21 is not in it
    assert t.on_event(ev(21, 24)) == [synced((21, 24), 20, recv=240)]


def test_spot_snapshot_too_old_asks_for_another():
    t = DiffDepthTracker(SPOT, Market.SPOT, LastEvent(9, 900, S1), synced=True)
    t.on_event(ev(12, 14))
    # L + 1 = 11 < U = 12 of the first event after the break: nothing can bridge it.
    assert t.on_snapshot(snap(10)) == [SnapshotRequest(SPOT, "gap")]
    # L = 11 is just old enough: 12..14 holds L + 1.
    assert t.on_snapshot(snap(11, recv=1)) == [synced((12, 14), 11, recv=140)]


def test_usdm_continuity_is_pu_and_sync_needs_U_le_L_le_u():
    t = DiffDepthTracker(USDM, Market.USDM, LastEvent(100, 1, S1), synced=True)
    assert t.on_event(ev(105, 110, pu=100, stream=USDM)) == []  # U need not be u + 1 on USD-M
    out = t.on_event(ev(120, 130, pu=115, stream=USDM))  # pu != 110
    assert out == [brk("gap", (110, 11000), (120, 130), stream=USDM, pu=115), SnapshotRequest(USDM, "gap")]
    t.on_event(ev(131, 140, pu=130, stream=USDM))
    assert t.on_snapshot(snap(119, stream=USDM, market="usdm")) == [SnapshotRequest(USDM, "gap")]  # L < U
    # L = 130 is in 120..130 (u == L is not stale on USD-M)
    assert t.on_snapshot(snap(130, stream=USDM, recv=1, market="usdm")) == [
        synced((120, 130), 130, recv=1300, stream=USDM, pu=115)]


def test_usdm_snapshot_between_two_events_cannot_sync():
    t = DiffDepthTracker(USDM, Market.USDM, None)
    t.on_event(ev(100, 110, pu=90, stream=USDM))
    t.on_event(ev(120, 130, pu=110, stream=USDM))  # ids 111..119 belong to no event of this stream
    assert t.on_snapshot(snap(115, stream=USDM, market="usdm")) == [SnapshotRequest(USDM, "connect")]
    assert not t.synced


def test_reconnect_that_does_not_continue_is_a_connect_break_and_one_that_does_is_not():
    t = DiffDepthTracker(SPOT, Market.SPOT, LastEvent(20, 2000, S1), synced=True)
    # The new session continues the stream: no break, yet a fresh base ('connect', not a repair).
    assert t.on_event(ev(21, 25, sid=S2)) == [SnapshotRequest(SPOT, SyncReason.CONNECT, repair=False)]
    assert t.synced and t.on_event(ev(26, 27, sid=S2)) == []  # asked once per session
    out = t.on_event(ev(40, 45, sid=3_000))
    assert out == [brk("connect", (27, 2700), (40, 45), sid=3_000), SnapshotRequest(SPOT, SyncReason.CONNECT)]
    assert out[1].repair


def test_a_rotation_overlap_asks_for_a_fresh_base_once_the_new_session_leads():
    t = DiffDepthTracker(SPOT, Market.SPOT, LastEvent(20, 2000, S1), synced=True)
    assert t.on_event(ev(18, 20, sid=S2)) == []  # the new session starts behind: stored, moves nothing
    assert t.on_event(ev(21, 22)) == []  # the old one goes on
    assert t.on_event(ev(23, 24, sid=S2)) == [SnapshotRequest(SPOT, SyncReason.CONNECT, repair=False)]
    assert t.on_event(ev(25, 26)) == []  # the old session again: no second request
    assert t.on_event(ev(27, 28, sid=S2)) == []


def test_a_snapshot_on_a_synced_stream_is_data_and_records_no_break():
    t = DiffDepthTracker(SPOT, Market.SPOT, LastEvent(20, 2000, S1), synced=True)
    rebase = snap(20)._replace(reason=SyncReason.REBASE.value)
    assert t.on_snapshot(rebase) == [] and t.synced
    assert t.on_event(ev(21, 25)) == []  # the stream goes on as before


def test_rewind_inside_a_session_is_a_break_and_an_older_event_of_another_session_is_not():
    t = DiffDepthTracker(SPOT, Market.SPOT, LastEvent(20, 2000, S1), synced=True)
    t.on_event(ev(21, 25))
    assert t.on_event(ev(30, 31, sid=S2)) != []  # S2 runs ahead: a connect break
    assert t.on_event(ev(26, 29)) == []  # S1 lags behind: stored, moves nothing
    assert t.last.last_update_id == 31
    out = t.on_event(ev(28, 29, sid=S2))  # S2 itself goes backwards
    assert out[0] == brk("gap", (31, 3100), (28, 29), sid=S2)
    assert t.last.last_update_id == 29  # the stream continues from the rewind


def test_restart_while_broken_asks_again_even_when_the_data_continues():
    t = DiffDepthTracker(SPOT, Market.SPOT, LastEvent(20, 2000, S1), synced=False)
    assert t.on_event(ev(21, 22, sid=S2)) == [SnapshotRequest(SPOT, "connect")]
    assert t.on_event(ev(23, 24, sid=S2)) == []
    assert t.on_snapshot(snap(22, recv=1)) == [synced((23, 24), 22, recv=240, sid=S2)]


def test_a_waiting_snapshot_can_sync_on_the_event_that_breaks_again():
    t = DiffDepthTracker(SPOT, Market.SPOT, LastEvent(9, 900, S1), synced=True)
    t.on_event(ev(12, 14))
    assert t.on_snapshot(snap(30, recv=1)) == []
    out = t.on_event(ev(20, 35))  # 15..19 missing, but 20..35 holds 31
    assert out == [brk("gap", (14, 1400), (20, 35)), SnapshotRequest(SPOT, "gap"), synced((20, 35), 30, recv=350)]


def test_trade_ids_jump_is_a_gap_with_the_missing_range_and_replays_are_not():
    t = TradeIdTracker("btcusdt@trade", "trade")

    def tr(i, sid=S1):
        return TradeRecord("btcusdt@trade", i * 10, sid, i, i * 100, i, i, 1.0, 1.0, False, 0)

    assert t.on_row(tr(5)) is None  # nothing known before
    assert t.on_row(tr(6)) is None
    assert t.on_row(tr(10)) == TradeGapRecord("btcusdt@trade", S1, 100, "trade", 7, 9, 600, 1000)
    assert t.on_row(tr(8)) is None and t.on_row(tr(10)) is None  # replays
    assert t.on_row(tr(13, sid=S2)) == TradeGapRecord("btcusdt@trade", S2, 130, "trade", 11, 12, 1000, 1300)


def test_continuity_orders_a_batch_of_trades_by_id_and_undoes_a_failed_batch():
    streams = [spec("btcusdt", "aggTrade"), spec("btcusdt", "depth@100ms")]
    c = Continuity(streams)
    c.seed_trades("btcusdt@aggTrade", 10, 1)

    def ag(i, sid=S1):
        return AggTradeRecord("btcusdt@aggTrade", i, sid, i, i, i, i, i, i, 1.0, 1.0, False, 0)

    rows = [ag(12, S2), ag(11, S1), ag(14, S2)]  # an overlap's race: 12 stored before 11
    records, requests = c.process(rows, [])
    assert records == [TradeGapRecord("btcusdt@aggTrade", S2, 14, "agg_trade", 13, 13, 12, 14)]
    assert requests == []
    c.rollback()  # the commit failed: the retry sees the same state
    assert c.process(rows, [])[0] == records
    c.commit()
    assert c.process([ag(15)], []) == ([], [])
    out, requests = c.process([ev(1, 2)], [])
    assert [r.event for r in out] == ["break"] and requests == [SnapshotRequest(SPOT, "connect")]
    c.commit()
    assert c.broken() == [SnapshotRequest(SPOT, "connect")]
    batch = [ev(3, 4), ev(6, 7)]
    first = c.process(batch, [snap(5)])
    assert [(r.event, r.reason) for r in first[0]] == [("break", "gap"), ("synced", "snapshot")]
    c.rollback()  # the diff tracker too comes back to where the batch found it
    assert c.depth[SPOT].last.last_update_id == 2 and not c.depth[SPOT].synced
    assert c.process(batch, [snap(5)]) == first
