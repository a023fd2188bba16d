"""End to end: a real collector process against a full disk and a locked database.

* Disk full: the buffer lives on a small tmpfs mounted by the test; the rest of the file
  system is filled until a real ENOSPC. The collector must stay up, say so loudly (ERROR
  log line, ``orderbook_writer_degraded 1``, ``orderbook_writer_errors_total{kind="disk_full"}``),
  keep every message it acknowledged, and catch up once space returns: in the end the
  buffer holds exactly what the simulator sent, nothing twice.
* A long read transaction in another process must not disturb ingest at all (WAL readers
  do not block the writer).
* A held write lock (``BEGIN IMMEDIATE`` in another process) makes the collector's commits
  fail as ``locked``; it keeps receiving, spills to disk, and catches up without loss once
  the lock is released.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from support.procs import SimulatorProcess, child_env, query, wait_for
from support.requires import tmpfs

STREAMS = ["btcusdt@depth20@100ms", "ethusdt@depth20@100ms"]


# --------------------------------------------------------------------------- helpers


class Collector:
    """``python -m orderbook_collector`` with metrics on a free port and its log in a file."""

    def __init__(self, buffer: Path, ws_url: str, log_path: Path, **env: str) -> None:
        base = dict(
            ORDERBOOK_SYMBOLS="btcusdt,ethusdt", ORDERBOOK_STREAMS="depth20@100ms", ORDERBOOK_WS_URL=ws_url,
            ORDERBOOK_BUFFER=str(buffer), ORDERBOOK_METRICS_PORT="0", ORDERBOOK_LOG_LEVEL="INFO",
        )
        base.update(env)
        self.log_path = log_path
        self.buffer = buffer
        with open(log_path, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "orderbook_collector"], env=child_env(**base),
                                         stdout=out, stderr=subprocess.STDOUT)
        m = wait_for(lambda: re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", self.log()), timeout=30,
                     what="the collector's metrics endpoint in its log")
        self.metrics_url = f"http://127.0.0.1:{m.group(1)}/metrics"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as resp:
            text = resp.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"collector did not stop within 90 s on SIGTERM:\n{self.log()[-3000:]}")
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def committed(buffer: Path) -> dict[tuple[str, int], tuple[int, int]]:
    """(stream, update id) → (session_id, seq) of every committed row, read by another connection."""
    return {
        (s, u): (sid, seq)
        for s, u, sid, seq in query(
            buffer, "SELECT s.name, d.update_id, d.session_id, d.seq FROM depth_snapshot d JOIN streams s USING (stream_id)"
        )
    }


def count(buffer: Path) -> int:
    return query(buffer, "SELECT count(*) FROM depth_snapshot")[0][0]


def sent_keys(log_path: Path) -> set[tuple[str, int]]:
    import orjson

    out = set()
    for line in log_path.read_bytes().splitlines():
        rec = orjson.loads(line)
        if "last_update_id" in rec:
            out.add((rec["stream"], rec["last_update_id"]))
    return out


def received_after(buffer: Path, t_us: int) -> set[str]:
    return {s for (s,) in query(buffer, "SELECT DISTINCT s.name FROM depth_snapshot d JOIN streams s USING (stream_id) "
                                        "WHERE d.recv_us > ?", t_us)}


def assert_exactly_what_was_sent(buffer: Path, sent_log: Path) -> None:
    rows = query(buffer, "SELECT s.name, d.update_id FROM depth_snapshot d JOIN streams s USING (stream_id)")
    keys = [(s, u) for s, u in rows]
    assert len(keys) == len(set(keys)), "duplicates in the buffer"
    sent = sent_keys(sent_log)
    missing = sent - set(keys)
    assert not missing, f"{len(missing)} sent messages never committed, e.g. {sorted(missing)[:5]}"
    assert set(keys) <= sent, "rows that were never sent"
    # one connection all along (a full disk or a held lock is no reason to reconnect): its seq
    # runs 0..n-1 with no hole, so nothing was lost inside the pipeline
    sessions = query(buffer, "SELECT session_id, close_reason FROM sessions")
    assert len(sessions) == 1, f"the collector reconnected: {sessions}"
    seqs = [s for (s,) in query(buffer, "SELECT seq FROM depth_snapshot ORDER BY seq")]
    assert seqs == list(range(len(seqs))), "a seq gap inside the session"


def quiesce(sim: SimulatorProcess, col: Collector) -> None:
    """Stop the feed and wait until every data frame the simulator handed out has been received,
    so a clean stop that follows has nothing in flight (what it received, it must commit)."""
    sim.control("stall", seconds=600)

    def all_received() -> bool:
        sent = sum(json.loads(sim.control("stats"))["sent"]["spot"].values())  # the collector records spot
        return sent == col.metrics()["orderbook_frames_received_total"]

    wait_for(all_received, timeout=30, what="every frame sent to reach the collector")


# --------------------------------------------------------------------------- disk full


@pytest.fixture
def tiny_fs(tmp_path: Path):
    """A real 24 MiB tmpfs: a full disk that answers ENOSPC (mounting needs root)."""
    with tmpfs(tmp_path / "tiny_fs", 24) as mnt:
        yield mnt


def fill(path: Path) -> int:
    """Write zeros until the file system refuses (a real ENOSPC); returns bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as f:  # unbuffered: close() has nothing left to flush
        for size in (1 << 20, 65536, 4096, 512):  # big chunks first, then the last blocks
            chunk = b"\0" * size
            try:
                while True:
                    written += f.write(chunk)
            except OSError as exc:
                assert exc.errno == 28, exc  # ENOSPC
    return written


@pytest.mark.slow
def test_disk_full_collector_stays_up_reports_it_and_catches_up(tiny_fs, tmp_path):
    buffer = tiny_fs / "buffer.sqlite3"
    sent_log = tmp_path / "sent.ndjson"
    with SimulatorProcess("--symbols", "btcusdt,ethusdt", "--rate", "50", "--seed", "11", sent_log=sent_log) as sim:
        col = Collector(buffer, sim.ws_url, tmp_path / "collector.log")
        try:
            wait_for(lambda: count(buffer) > 300, timeout=30, what="rows before the disk fills")
            before = committed(buffer)
            filler = tiny_fs / "filler"
            fill(filler)
            t_full = time.time_ns() // 1000
            # loud: metrics and an ERROR line, while it keeps running and receiving
            wait_for(lambda: col.metrics().get('orderbook_writer_errors_total{kind="disk_full"}', 0) >= 1,
                     timeout=60, what="orderbook_writer_errors_total{kind=\"disk_full\"} on /metrics")
            m = col.metrics()
            assert m["orderbook_writer_degraded"] == 1
            assert re.search(r"ERROR .*buffer write failed \(disk_full", col.log()), col.log()[-2000:]
            frames = m["orderbook_frames_received_total"]
            errors = m['orderbook_writer_errors_total{kind="disk_full"}']
            stuck = count(buffer)
            # still receiving, and the writer keeps failing and retrying while the disk stays full
            wait_for(lambda: (mm := col.metrics())["orderbook_frames_received_total"] > frames + 100
                     and mm['orderbook_writer_errors_total{kind="disk_full"}'] > errors,
                     timeout=30, what="100 more frames received and another failed commit on the full disk")
            assert col.alive(), col.log()[-3000:]
            m = col.metrics()
            assert count(buffer) <= stuck + 2000  # (at most a batch squeezed into freed WAL pages)
            assert m["orderbook_lost_total"] == 0
            # acknowledged before the disk filled: still there
            assert set(before) <= set(committed(buffer))
            # space returns: the collector catches up by itself
            filler.unlink()
            t_free = time.time_ns() // 1000
            wait_for(lambda: col.metrics()["orderbook_writer_degraded"] == 0, timeout=60,
                     what="writes to succeed again after space returned")
            wait_for(lambda: received_after(buffer, t_free + 1_000_000) == set(STREAMS), timeout=60,
                     what="new rows after space returned")
            assert received_after(buffer, t_full) == set(STREAMS)
            assert re.search(r"buffer writes succeed again", col.log())
            quiesce(sim, col)
            assert col.stop() == 0, col.log()[-3000:]
        finally:
            col.kill()
    assert set(before) <= set(committed(buffer))
    assert_exactly_what_was_sent(buffer, sent_log)
    assert query(buffer, "PRAGMA integrity_check") == [("ok",)]


# --------------------------------------------------------------------------- locked database


@pytest.mark.slow  # a collector process under a long read: make test, not test-fast
def test_long_read_transaction_does_not_disturb_ingest(tmp_path):
    buffer = tmp_path / "buffer.sqlite3"
    sent_log = tmp_path / "sent.ndjson"
    with SimulatorProcess("--symbols", "btcusdt,ethusdt", "--rate", "50", "--seed", "12", sent_log=sent_log) as sim:
        col = Collector(buffer, sim.ws_url, tmp_path / "collector.log", ORDERBOOK_QUEUE_SIZE="100")
        try:
            wait_for(lambda: count(buffer) > 200, timeout=30, what="rows")
            reader = sqlite3.connect(buffer, isolation_level=None, timeout=10)
            reader.execute("BEGIN")  # a long read transaction, e.g. an analyst's query or an export
            snapshot = reader.execute("SELECT count(*) FROM depth_snapshot").fetchone()[0]
            t0 = time.time_ns() // 1000
            grew = []
            for _ in range(10):
                time.sleep(0.5)
                grew.append(count(buffer))  # other connections see new commits meanwhile
            # the reader still sees its snapshot: it really held a read transaction all along
            assert reader.execute("SELECT count(*) FROM depth_snapshot").fetchone()[0] == snapshot
            reader.execute("COMMIT")
            reader.close()
            assert all(b > a for a, b in zip(grew, grew[1:])), f"ingest paused under a read transaction: {grew}"
            m = col.metrics()
            assert m.get('orderbook_writer_errors_total{kind="locked"}', 0) == 0
            assert m["orderbook_writer_degraded"] == 0
            assert m["orderbook_spilled_items_total"] == 0  # the writer never fell behind
            lag = query(buffer, "SELECT max(recv_us) FROM depth_snapshot")[0][0]
            assert lag > t0 + 4_000_000
            quiesce(sim, col)
            assert col.stop() == 0, col.log()[-3000:]
        finally:
            col.kill()
    assert_exactly_what_was_sent(buffer, sent_log)
    assert query(buffer, "PRAGMA integrity_check") == [("ok",)]


def spilled_bytes(tmp_path) -> int:
    """The collector's spill files' bytes on disk (its spill folder sits next to its buffer)."""
    return sum(f.stat().st_size for f in (tmp_path / "buffer.sqlite3.spill").glob("spill-*.bin"))


@pytest.mark.slow
def test_held_write_lock_spills_then_catches_up_without_loss(tmp_path):
    buffer = tmp_path / "buffer.sqlite3"
    sent_log = tmp_path / "sent.ndjson"
    with SimulatorProcess("--symbols", "btcusdt,ethusdt", "--rate", "50", "--seed", "13", sent_log=sent_log) as sim:
        col = Collector(buffer, sim.ws_url, tmp_path / "collector.log", ORDERBOOK_QUEUE_SIZE="50")
        try:
            wait_for(lambda: count(buffer) > 200, timeout=30, what="rows")
            before = committed(buffer)
            # Another process holds the write lock; here a separate helper process, as a real one would.
            holder = subprocess.Popen(
                [sys.executable, "-c",
                 "import sqlite3, sys, time\n"
                 "c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)\n"
                 "c.execute('BEGIN IMMEDIATE')\n"
                 "print('locked', flush=True)\n"
                 "sys.stdin.readline()\n"
                 "c.execute('ROLLBACK')\n",
                 str(buffer)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )
            try:
                assert holder.stdout.readline().strip() == "locked"
                t_lock = time.time_ns() // 1000
                wait_for(lambda: col.metrics().get('orderbook_writer_errors_total{kind="locked"}', 0) >= 1,
                         timeout=30, what="the collector to report the lock")
                stuck = count(buffer)
                frames = col.metrics()["orderbook_frames_received_total"]
                # keeps receiving, and what the queue cannot take goes to the spill files
                wait_for(lambda: (mm := col.metrics())["orderbook_frames_received_total"] > frames + 100
                         and mm["orderbook_spilled_items_total"] > 100, timeout=30,
                         what="100 more frames received and 100 spilled while the writer waits")
                # The gauge tells what is on disk although the writer thread is stuck retrying the
                # locked commit: nothing is replayed yet, so it is the spill files' bytes at the scrape,
                # which lies between their sizes just before and just after it (they grow meanwhile).
                on_disk_before = spilled_bytes(tmp_path)
                m = col.metrics()
                on_disk_after = spilled_bytes(tmp_path)
                assert col.alive()
                assert m["orderbook_writer_degraded"] == 1
                assert 0 < on_disk_before <= m["orderbook_spill_bytes"] <= on_disk_after, (
                    on_disk_before, m["orderbook_spill_bytes"], on_disk_after)
                assert m["orderbook_lost_total"] == 0
                assert count(buffer) == stuck  # nothing can commit while the lock is held
                assert re.search(r"ERROR .*buffer write failed \(locked", col.log())
            finally:
                holder.stdin.write("\n")
                holder.stdin.flush()
                assert holder.wait(30) == 0
            t_free = time.time_ns() // 1000
            wait_for(lambda: col.metrics()["orderbook_writer_degraded"] == 0, timeout=60, what="commits to resume")
            wait_for(lambda: received_after(buffer, t_free + 1_000_000) == set(STREAMS), timeout=60,
                     what="the spill to be replayed and live rows to follow")
            wait_for(lambda: col.metrics()["orderbook_spill_bytes"] == 0, timeout=60, what="the spill to drain")
            assert received_after(buffer, t_lock) == set(STREAMS)
            quiesce(sim, col)
            assert col.stop() == 0, col.log()[-3000:]
        finally:
            col.kill()
    assert set(before) <= set(committed(buffer))
    assert_exactly_what_was_sent(buffer, sent_log)
    assert not list((tmp_path / "buffer.sqlite3.spill").glob("spill-*.bin")), "spill files left after a clean stop"
    assert query(buffer, "PRAGMA integrity_check") == [("ok",)]
