"""kill -9 of a collector recording diff depth and trades, some of the time with a slow writer
that spills: afterwards the recorded breaks are exactly the discontinuities of the stored
events, and the recorded trade gaps exactly the holes in the stored trade ids. No false break
or gap from a restart or a spill replay, no silent one."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import pytest

from support.procs import SimulatorProcess, child_env, query, wait_for

RUNNER = '''
import asyncio, sys
from orderbook_collector.config import Settings
from orderbook_collector.connection.collector import Collector


ws, rest, buffer, slow = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
settings = Settings(symbols=["btcusdt", "ethusdt"], streams=["depth@100ms", "trade"], ws_url=ws, rest_url=rest,
                        buffer=buffer, metrics_port=-1, queue_size=10 if slow else 20000, backoff_initial=0.05,
                        backoff_max=0.2, min_session=0.0)


async def main():
    c = Collector(settings, slow_down=slow)
    c.install_signal_handlers()
    await c.run()

asyncio.run(main())
'''


def depth_rows(buffer) -> int:
    return query(buffer, "SELECT count(*) FROM depth_update")[0][0]


@pytest.mark.slow  # collector processes killed -9, with and without spill: make test, not test-fast
def test_kill_9_with_and_without_spill_leaves_breaks_and_gaps_that_match_the_data(tmp_path):
    buffer = tmp_path / "buffer.sqlite3"
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    rng = random.Random(20261201)
    spilled_at_kill = 0
    with SimulatorProcess("--symbols", "btcusdt,ethusdt", "--rate", "20", "--seed", "11") as sim:
        def start(slow: float) -> subprocess.Popen:
            return subprocess.Popen([sys.executable, str(runner), sim.ws_url, sim.http_url, str(buffer), str(slow)],
                                    env=child_env(), stderr=subprocess.PIPE, text=True)

        for i in range(6):
            slow = 0.3 if i % 2 == 0 else 0.0  # every other run: a writer too slow for the feed, so it spills
            proc = start(slow)
            before = depth_rows(buffer) if buffer.exists() else 0
            wait_for(lambda: depth_rows(buffer) > before + 10, timeout=30, what="rows committed")
            if slow:
                spill = buffer.with_name(buffer.name + ".spill")
                wait_for(lambda: sum(f.stat().st_size for f in spill.glob("spill-*")) > 2000, timeout=30,
                         what="frames in the spill")
                spilled_at_kill += 1
            time.sleep(rng.uniform(0.0, 0.5))  # kill somewhere in the middle of batches
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        proc = start(0.0)
        wait_for(lambda: query(buffer, "SELECT messages FROM sessions ORDER BY session_id DESC LIMIT 1")[0][0] > 50
                 and query(buffer, "SELECT event FROM depth_sync ORDER BY id DESC LIMIT 1") == [("synced",)],
                 timeout=60, what="the last run recording and in sync")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.stderr.read()
    assert spilled_at_kill == 3

    streams = dict(query(buffer, "SELECT stream_id, name FROM streams"))
    for sid, name in streams.items():
        if name.endswith("@depth@100ms"):
            events = query(buffer, "SELECT first_update_id, last_update_id FROM depth_update WHERE stream_id = ? "
                                   "ORDER BY last_update_id", sid)
            holes = {(a_u, b_U, b_u) for (_, a_u), (b_U, b_u) in zip(events, events[1:]) if b_U != a_u + 1}
            breaks = query(buffer, "SELECT before_update_id, after_first_update_id, after_last_update_id "
                                   "FROM depth_sync WHERE stream_id = ? AND event = 'break'", sid)
            assert len(events) > 50 and len(holes) >= 2  # restarts miss data (most of them)
            assert {b for b in breaks if b[0] is not None} == holes, name
            assert [b for b in breaks if b[0] is None] == [(None, *events[0])]  # the very first event
        elif name.endswith("@trade"):
            ids = [t for (t,) in query(buffer, "SELECT trade_id FROM trade WHERE stream_id = ? ORDER BY trade_id", sid)]
            holes = {(a + 1, b - 1) for a, b in zip(ids, ids[1:]) if b > a + 1}
            gaps = query(buffer, "SELECT first_missing_id, last_missing_id FROM trade_gap WHERE stream_id = ?", sid)
            assert len(ids) > 50
            assert sorted(gaps) == sorted(holes), name
    assert query(buffer, "SELECT count(*) FROM depth_sync WHERE event = 'synced'")[0][0] >= 2
