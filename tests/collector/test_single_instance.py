"""One buffer, one collector: a second refuses to start; a SIGKILLed one never blocks the restart."""

from __future__ import annotations

import os
import signal
import socket

from support.procs import SimulatorProcess, query, start_collector, stored_count, wait_for


def test_a_second_collector_on_the_same_buffer_refuses_and_leaves_the_first_alone(tmp_path):
    buffer = tmp_path / "buffer.sqlite3"
    with SimulatorProcess("--symbols", "btcusdt", "--rate", "50") as sim:
        first = start_collector(buffer, sim.ws_url, symbols="btcusdt")
        try:
            wait_for(lambda: stored_count(buffer) > 10, what="the first collector storing rows")
            live = query(buffer, "SELECT session_id FROM sessions WHERE closed_us IS NULL")
            assert len(live) == 1

            second = start_collector(buffer, sim.ws_url, symbols="btcusdt")
            try:
                _out, err = second.communicate(timeout=30)
            finally:
                if second.poll() is None:  # before the fix it runs beside the first
                    second.kill()
                    second.wait()
            assert second.returncode == 2
            message = err.strip()
            assert len(message.splitlines()) == 1, message  # one sentence, no traceback
            assert f"PID {first.pid}" in message and socket.gethostname() in message, message
            assert "ORDERBOOK_BUFFER" in message

            # The first collector's session is still live (not closed as "crashed") and it keeps writing.
            assert query(buffer, "SELECT session_id FROM sessions WHERE closed_us IS NULL") == live
            assert query(buffer, "SELECT count(*) FROM sessions")[0][0] == 1
            before = stored_count(buffer)
            wait_for(lambda: stored_count(buffer) > before + 10, what="the first collector to keep writing")
        finally:
            first.send_signal(signal.SIGTERM)
            assert first.wait(30) == 0
    assert query(buffer, "SELECT close_reason FROM sessions") == [("collector stopped",)]


def test_a_lock_left_by_a_killed_collector_never_blocks_the_restart(tmp_path):
    buffer = tmp_path / "buffer.sqlite3"
    with SimulatorProcess("--symbols", "btcusdt", "--rate", "50") as sim:
        victim = start_collector(buffer, sim.ws_url, symbols="btcusdt")
        try:
            wait_for(lambda: stored_count(buffer) > 10, what="the collector storing rows")
            assert f"PID {victim.pid}" in (tmp_path / "buffer.sqlite3.lock").read_text()
        finally:
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait()

        again = start_collector(buffer, sim.ws_url, symbols="btcusdt")
        try:
            # The killed collector's session is closed as a crash, the new one records.
            wait_for(lambda: query(buffer, "SELECT count(*), count(closed_us) FROM sessions")[0] == (2, 1),
                     timeout=30, what="the restarted collector opening its session")
            assert "crash" in query(buffer, "SELECT close_reason FROM sessions ORDER BY session_id")[0][0]
            before = stored_count(buffer)
            wait_for(lambda: stored_count(buffer) > before + 10, what="the restarted collector storing rows")
        finally:
            again.send_signal(signal.SIGTERM)
            assert again.wait(30) == 0


def test_a_refused_collector_leaves_the_spill_of_the_live_one_untouched(tmp_path):
    """The lock comes before the spill folder is opened, which cuts what looks like a torn tail:
    a segment the live collector is in the middle of writing looks exactly like one."""
    from orderbook_core.buffer.lock import BufferLock

    buffer = tmp_path / "buffer.sqlite3"
    with BufferLock.acquire(buffer):  # the live collector (here: this test) holds the buffer
        spill = tmp_path / "buffer.sqlite3.spill"
        spill.mkdir()
        segment = spill / "spill-00000000.bin"
        segment.write_bytes(b"\x00\x00\x10\x00half a record being written")
        second = start_collector(buffer, "ws://127.0.0.1:9")
        _out, err = second.communicate(timeout=60)
        assert second.returncode == 2, err
        assert segment.read_bytes() == b"\x00\x00\x10\x00half a record being written"
