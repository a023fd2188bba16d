"""The writer thread: group commit, dedup bookkeeping, spill, and surviving write failures."""

from __future__ import annotations

import sqlite3
import threading

from orderbook_core import buffer
from orderbook_collector.feed.protocol import build_streams
from orderbook_core.buffer.records import Frame, Quarantined, SessionClose, SessionOpen
from orderbook_collector.writer.thread import Writer

from support.procs import wait_for

STREAMS = build_streams(["btcusdt", "ethusdt"], ["depth20@100ms"])


def feed(writer, frame, session, uids, stream="btcusdt@depth20@100ms", start_seq=0):
    for i, uid in enumerate(uids):
        assert writer.submit(Frame(frame(uid, stream=stream), 1_700_000_000_000_000 + i * 100_000, session, start_seq + i))


def rows(path, sql, *args):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def test_batches_commit_and_every_seq_gap_is_explained(buffer_path, frame):
    w = Writer(buffer_path, STREAMS, commit_interval=0.01)
    w.start()
    w.submit(SessionOpen(1, "ws://x", "[]", 1))
    feed(w, frame, 1, [100, 101, 102, 101, 103])  # seq 3 repeats update id 101
    w.submit(Quarantined(1_700_000_000_600_000, 1, 5, "not_json", b"garbage"))
    feed(w, frame, 1, [104], start_seq=6)
    w.submit(SessionClose(1, 2, "test over"))
    assert w.stop()
    assert rows(buffer_path, "SELECT seq FROM depth_snapshot ORDER BY id") == [(0,), (1,), (2,), (4,), (6,)]
    assert rows(buffer_path, "SELECT session_id, seq, update_id, reason FROM dropped") == [(1, 3, 101, "duplicate")]
    assert rows(buffer_path, "SELECT seq FROM quarantine") == [(5,)]
    assert rows(buffer_path, "SELECT frames, messages, duplicates, quarantined, close_reason FROM sessions") == [
        (7, 5, 1, 1, "test over")
    ]
    hour = buffer.hour_of(1_700_000_000_000_000)
    lo, hi = rows(buffer_path, "SELECT min(id), max(id) FROM depth_snapshot")[0]
    assert rows(buffer_path, "SELECT hour_us, min_id, max_id, rows FROM buffer_hours") == [(hour, lo, hi, 5)]
    assert w.metrics.duplicates == 1 and w.metrics.messages == 5


def test_invalid_frame_from_the_fast_path_is_quarantined_by_the_writer(buffer_path):
    w = Writer(buffer_path, STREAMS)
    w.start()
    w.submit(SessionOpen(1, "ws://x", "[]", 1))
    w.submit(Frame('{"stream":"btcusdt@depth20@100ms","data":{"lastUpdateId":1,"bids":[["x","1"]],"asks":[]}}', 5, 1, 0))
    assert w.stop()
    assert rows(buffer_path, "SELECT seq, reason FROM quarantine") == [(0, "bad_levels")]
    assert rows(buffer_path, "SELECT count(*) FROM depth_snapshot") == [(0,)]


def test_slow_writer_spills_and_replays_in_order_without_loss(buffer_path, frame):
    w = Writer(buffer_path, STREAMS, queue_size=50, max_batch=40, slow_down=0.02)
    w.start()
    w.submit(SessionOpen(1, "ws://x", "[]", 1))
    wait_for(lambda: w.committed_batches >= 1, timeout=30, what="the session to be committed")
    # While another connection holds the write lock the writer can commit nothing at all, however
    # fast or slow this machine is: the producer finishing its 2,000 submits then proves it never
    # waited for the writer (a blocking submit would hang here until the deadline).
    blocker = sqlite3.connect(buffer_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    uids = list(range(1000, 3000))
    producer = threading.Thread(target=feed, args=(w, frame, 1, uids), daemon=True)
    producer.start()
    producer.join(60)
    finished = not producer.is_alive()
    committed_meanwhile = w.metrics.messages
    blocker.execute("ROLLBACK")
    blocker.close()
    assert finished, "submit blocked on the writer: the producer could not hand over 2,000 frames in 60 s"
    assert committed_meanwhile == 0
    # the queue (50) and the batch the writer holds (40) take 90 at most; every other frame spilled
    assert w.metrics.spilled_items >= len(uids) - 90
    assert w.metrics.lost == 0
    assert w.stop(60)
    got = rows(buffer_path, "SELECT update_id, seq FROM depth_snapshot ORDER BY id")
    assert [u for u, _ in got] == uids
    assert [s for _, s in got] == list(range(len(uids)))
    assert not list(w.spill.dir.glob("spill-*.bin"))
    kinds = [k for (k,) in rows(buffer_path, "SELECT kind FROM events ORDER BY id")]
    assert [k for k in kinds if k.startswith("spill")] == ["spill_start", "spill_end"]


def test_locked_database_delays_commits_but_loses_nothing(buffer_path, frame):
    w = Writer(buffer_path, STREAMS, queue_size=100, busy_timeout_ms=50)
    w.start()
    w.submit(SessionOpen(1, "ws://x", "[]", 1))
    blocker = sqlite3.connect(buffer_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holding the write lock
    feed(w, frame, 1, range(5000, 5500))
    wait_for(lambda: w.metrics.writer_errors["locked"] >= 1, timeout=30, what="a commit to fail as locked")
    assert w.metrics.writer_degraded == 1
    assert rows(buffer_path, "SELECT count(*) FROM depth_snapshot") == [(0,)]  # nothing got past the lock
    blocker.execute("ROLLBACK")
    blocker.close()
    assert w.stop(30)
    assert rows(buffer_path, "SELECT count(*), count(DISTINCT update_id) FROM depth_snapshot") == [(500, 500)]
    assert w.metrics.writer_degraded == 0
    (detail,) = rows(buffer_path, "SELECT detail FROM events WHERE kind = 'write_failures'")[0]
    assert "locked" in detail


def test_disk_full_holds_the_batch_and_resumes_when_space_returns(small_fs, frame):
    path = small_fs / "buffer.sqlite3"
    w = Writer(path, STREAMS, queue_size=200, spill_dir=small_fs / "spill")
    w.start()
    w.submit(SessionOpen(1, "ws://x", "[]", 1))
    feed(w, frame, 1, range(1, 101))
    wait_for(lambda: w.metrics.messages == 100, timeout=30, what="the first 100 frames to commit")
    filler = small_fs / "filler"
    with open(filler, "wb") as f:  # take every free byte: the next commit gets ENOSPC
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    feed(w, frame, 1, range(1000, 1400), start_seq=100)
    wait_for(lambda: w.metrics.writer_errors["disk_full"] >= 1, timeout=30, what="a commit to fail on the full disk")
    # a real ENOSPC reached SQLite, and was named as such
    assert {k for k, n in w.metrics.writer_errors.items() if n} == {"disk_full"}
    filler.unlink()
    assert w.stop(30)
    assert rows(path, "SELECT count(*), count(DISTINCT update_id) FROM depth_snapshot") == [(500, 500)]
    assert rows(path, "PRAGMA integrity_check") == [("ok",)]
    assert any("disk_full" in d for (d,) in rows(path, "SELECT detail FROM events WHERE kind = 'write_failures'"))


def test_a_session_of_nothing_but_duplicates_is_reported_once_and_a_rotation_overlap_is_not(buffer_path, frame, caplog):
    w = Writer(buffer_path, STREAMS, commit_interval=0.01)
    w.start()
    first, replay, rotated = 1_700_000_000_000_000, 1_700_000_100_000_000, 1_700_000_200_000_000

    def session(sid, uids, start_s=0.0):
        w.submit(SessionOpen(sid, "ws://x", "[]", sid))
        for i, uid in enumerate(uids):
            w.submit(Frame(frame(uid), sid + int((start_s + i * 0.1) * 1e6), sid, i))

    session(first, range(1, 401))
    # A feed that starts its ids again (a restarted simulator, a replay): nothing new is stored.
    session(replay, range(1, 401))
    # A rotation's replacement: its first second repeats the old connection, then all is new.
    session(rotated, list(range(391, 401)) + list(range(401, 801)))
    with caplog.at_level("WARNING"):
        assert w.stop()
    warnings = [r.getMessage() for r in caplog.records if "duplicates" in r.getMessage()]
    assert len(warnings) == 1 and f"session {replay} " in warnings[0], warnings
    assert w.metrics.duplicate_sessions == 1
