"""The writer runs the continuity trackers on what it stores: breaks, syncs and trade-id gaps
land in the same transaction as the rows that reveal them, duplicates move nothing, and a
writer restarted on the same buffer (or replaying its spill) picks up where the buffer stands."""

from __future__ import annotations

import sqlite3
import threading

import orjson

from orderbook_core.buffer.records import (
    DepthRestSnapshotRecord, DepthSyncRecord, Frame, SessionClose, SessionOpen, TradeGapRecord, from_spill, to_spill,
)
from orderbook_core.streams import spec
from orderbook_collector.feed.sync import SnapshotRequest, SyncReason
from orderbook_collector.writer.thread import Writer

T0 = 1_700_000_000_000_000
DIFF = "btcusdt@depth@100ms"
STREAMS = [spec("btcusdt", "depth@100ms"), spec("btcusdt", "trade")]


def diff(U, u, E=None):
    return orjson.dumps({"stream": DIFF, "data": {"e": "depthUpdate", "E": E or u, "s": "BTCUSDT", "U": U, "u": u,
                                                  "b": [["100.5", "1"]], "a": [["100.6", "0"]]}}).decode()


def trade(t):
    return orjson.dumps({"stream": "btcusdt@trade", "data": {"e": "trade", "E": t, "s": "BTCUSDT", "t": t,
                                                              "p": "100.5", "q": "1", "T": t, "m": False}}).decode()


def snapshot(L, recv=T0, reason=SyncReason.GAP):
    return DepthRestSnapshotRecord(DIFF, "spot", "BTCUSDT", recv, L, 1, b"\0" * 32, reason.value, None, None)


class Feed:
    """Submits frames of one session with consecutive seqs."""

    def __init__(self, w: Writer, sid: int):
        self.w, self.sid, self.seq = w, sid, 0
        w.submit(SessionOpen(sid, "ws://x/stream", "[]", sid))

    def send(self, *raws: str) -> None:
        for raw in raws:
            assert self.w.submit(Frame(raw, T0 + self.seq, self.sid, self.seq))
            self.seq += 1

    def close(self) -> None:
        self.w.submit(SessionClose(self.sid, T0 + 10**6, "test"))


def sync_rows(path):
    con = sqlite3.connect(path)
    try:
        return con.execute(
            "SELECT event, reason, before_update_id, after_first_update_id, after_last_update_id, snapshot_update_id "
            "FROM depth_sync ORDER BY id").fetchall()
    finally:
        con.close()


def gap_rows(path):
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT dataset, first_missing_id, last_missing_id FROM trade_gap ORDER BY id").fetchall()
    finally:
        con.close()


def test_breaks_snapshots_syncs_and_gaps_are_stored_and_reported(buffer_path):
    requests: list[SnapshotRequest] = []
    reported = threading.Event()

    def need(reqs):
        requests.extend(reqs)
        reported.set()

    w = Writer(buffer_path, STREAMS, commit_interval=0.01, on_snapshot_needed=need)
    w.start()
    f = Feed(w, T0)
    f.send(diff(10, 12), trade(100), diff(13, 15), trade(101))
    f.send(diff(13, 15), trade(101))  # duplicates: refused, move nothing
    f.send(diff(16, 20), trade(104))  # trades 102..103 never came
    f.send(diff(25, 30))  # 21..24 never came
    w.submit(snapshot(26))
    w.submit(snapshot(26))  # the same book again: refused
    f.send(diff(31, 33))
    assert w.stop(30)
    assert reported.is_set()
    assert requests == [SnapshotRequest(DIFF, "connect"), SnapshotRequest(DIFF, "gap")]
    assert sync_rows(buffer_path) == [
        ("break", "connect", None, 10, 12, None),
        ("break", "gap", 20, 25, 30, None),
        ("synced", "snapshot", None, 25, 30, 26),
    ]
    assert gap_rows(buffer_path) == [("trade", 102, 103)]
    con = sqlite3.connect(buffer_path)
    assert con.execute("SELECT market, symbol, last_update_id, reason FROM depth_rest_snapshot").fetchall() == [
        ("spot", "BTCUSDT", 26, "gap")]
    assert con.execute("SELECT rows FROM buffer_hours WHERE dataset = 'depth_rest_snapshot'").fetchone() == (1,)
    assert w.metrics.continuity == {"break": 2, "synced": 1, "gap": 1}


def test_a_restart_on_the_same_buffer_makes_no_false_break_or_gap(buffer_path):
    w = Writer(buffer_path, STREAMS, commit_interval=0.01)
    w.start()
    f = Feed(w, T0)
    f.send(diff(10, 12), trade(100))
    w.submit(snapshot(11))
    f.send(diff(13, 15), trade(101))
    f.close()
    assert w.stop(30)
    assert [r[0] for r in sync_rows(buffer_path)] == ["break", "synced"]

    requests = []
    w = Writer(buffer_path, STREAMS, commit_interval=0.01, on_snapshot_needed=requests.extend)
    w.start()
    f = Feed(w, T0 + 5)  # a new session whose data continues the stored stream
    f.send(diff(16, 18), trade(102), diff(19, 20), trade(103))
    f.close()
    g = Feed(w, T0 + 6)  # and one whose data does not
    g.send(diff(40, 41), trade(110))
    assert w.stop(30)
    assert sync_rows(buffer_path)[2:] == [("break", "connect", 20, 40, 41, None)]
    assert gap_rows(buffer_path) == [("trade", 104, 109)]
    # the continuing session asks for a fresh base (no repair), the other one for a repair
    assert requests == [SnapshotRequest(DIFF, SyncReason.CONNECT, repair=False), SnapshotRequest(DIFF, SyncReason.CONNECT)]
    assert [r.repair for r in requests] == [False, True]


def test_a_stream_broken_at_restart_asks_for_its_snapshot_again(buffer_path):
    w = Writer(buffer_path, STREAMS, commit_interval=0.01)
    w.start()
    Feed(w, T0).send(diff(10, 12))
    assert w.stop(30)
    requests = []
    w = Writer(buffer_path, STREAMS, commit_interval=0.01, on_snapshot_needed=requests.extend)
    w.start()
    f = Feed(w, T0 + 5)
    f.send(diff(13, 14))  # continues, but nobody fetched the snapshot the break asked for
    w.submit(snapshot(13))
    f.send(diff(15, 16))
    assert w.stop(30)
    assert requests == [SnapshotRequest(DIFF, "connect")]
    assert sync_rows(buffer_path) == [("break", "connect", None, 10, 12, None), ("synced", "snapshot", None, 13, 14, 13)]


def test_frames_replayed_from_the_spill_make_no_false_break(buffer_path, tmp_path):
    # A tiny queue and a slow writer push most frames into the spill, replayed in order.
    spill = tmp_path / "spill"
    w = Writer(buffer_path, STREAMS, queue_size=10, max_batch=5, slow_down=0.02, spill_dir=spill)
    w.start()
    f = Feed(w, T0)
    n = 200
    f.send(*[diff(10 + 2 * i, 11 + 2 * i) for i in range(n)])
    assert w.spill.active
    assert w.stop(60)
    assert w.metrics.spilled_items > n // 2
    con = sqlite3.connect(buffer_path)
    assert con.execute("SELECT count(*) FROM depth_update").fetchone() == (n,)
    assert sync_rows(buffer_path) == [("break", "connect", None, 10, 11, None)]


def test_the_continuity_records_survive_the_spill_format():
    items = [
        snapshot(26),
        DepthSyncRecord(DIFF, 1, 2, "break", "gap", 3, 4, 5, 6, None, 7, None),
        TradeGapRecord("btcusdt@trade", 1, 2, "trade", 3, 4, None, 5),
    ]
    import marshal

    assert [from_spill(marshal.loads(marshal.dumps(to_spill(it)))) for it in items] == items


def test_a_snapshot_refused_as_the_same_book_still_syncs_the_stream_it_was_fetched_for(buffer_path):
    slow = "btcusdt@depth"  # two diff streams of one symbol: one REST book can serve both
    w = Writer(buffer_path, [spec("btcusdt", "depth@100ms"), spec("btcusdt", "depth")], commit_interval=0.01)
    w.start()
    f = Feed(w, T0)
    f.send(diff(10, 12), diff(10, 12).replace(DIFF, slow))
    w.submit(snapshot(11))
    w.submit(snapshot(11)._replace(stream=slow))  # same market, symbol and lastUpdateId: refused
    assert w.stop(30)
    con = sqlite3.connect(buffer_path)
    assert con.execute("SELECT count(*) FROM depth_rest_snapshot").fetchone() == (1,)
    rows = con.execute("SELECT s.name, d.event, d.snapshot_update_id FROM depth_sync d JOIN streams s USING (stream_id) "
                       "WHERE d.event = 'synced' ORDER BY s.name").fetchall()
    assert rows == [(slow, "synced", 11), (DIFF, "synced", 11)]


def test_a_rebase_snapshot_of_a_synced_stream_is_stored_and_records_no_break(buffer_path):
    requests = []
    w = Writer(buffer_path, STREAMS, commit_interval=0.01, on_snapshot_needed=requests.extend)
    w.start()
    f = Feed(w, T0)
    f.send(diff(10, 12))
    w.submit(snapshot(11))
    f.send(diff(13, 15))
    w.submit(snapshot(15, reason=SyncReason.REBASE))  # the stream is synced: data, not a repair
    f.send(diff(16, 18))
    assert w.stop(30)
    assert [r[:2] for r in sync_rows(buffer_path)] == [("break", "connect"), ("synced", "snapshot")]
    assert requests == [SnapshotRequest(DIFF, SyncReason.CONNECT)]
    con = sqlite3.connect(buffer_path)
    assert con.execute("SELECT last_update_id, reason FROM depth_rest_snapshot ORDER BY last_update_id").fetchall() == [
        (11, "gap"), (15, "rebase")]
