"""kill -9 of the collector at random moments: nothing acknowledged is lost, nothing doubles."""

from __future__ import annotations

import json
import random
import signal
import time

import pytest

from support.procs import SimulatorProcess, query, start_collector, stored_count, wait_for


def sent_messages(log_path) -> dict[tuple[str, int], dict]:
    out = {}
    for line in log_path.read_text().splitlines():
        rec = json.loads(line)
        if "malformed" in rec or "last_update_id" not in rec:
            continue
        out[(rec["stream"], rec["last_update_id"])] = rec
    return out


@pytest.mark.slow  # collector processes killed -9 at random moments: make test, not test-fast
def test_kill_9_at_random_moments_loses_nothing_acknowledged(tmp_path):
    buffer = tmp_path / "buffer.sqlite3"
    sent_log = tmp_path / "sent.ndjson"
    rng = random.Random(20261124)
    acknowledged: set[tuple[str, int]] = set()
    kills = 0
    with SimulatorProcess("--symbols", "btcusdt,ethusdt", "--rate", "50", "--seed", "7", sent_log=sent_log) as sim:
        for _ in range(10):
            proc = start_collector(buffer, sim.ws_url)
            before = stored_count(buffer)
            wait_for(lambda: stored_count(buffer) > before + 20, what="the collector to commit rows")
            time.sleep(rng.uniform(0.0, 0.6))  # kill somewhere in the middle of batches
            # Everything visible to another connection now was committed: acknowledged.
            acknowledged |= {
                (s, u)
                for s, u in query(buffer, "SELECT s.name, d.update_id FROM depth_snapshot d JOIN streams s USING (stream_id)")
            }
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        proc = start_collector(buffer, sim.ws_url)
        wait_for(lambda: query(buffer, "SELECT count(*), count(closed_us) FROM sessions")[0] == (11, 10), what="restart")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    assert kills == 10
    stored = query(buffer, "SELECT s.name, d.update_id, d.n_bids, d.levels FROM depth_snapshot d JOIN streams s USING (stream_id)")
    keys = [(s, u) for s, u, _, _ in stored]
    assert len(keys) == len(set(keys)), "duplicates in the buffer"
    missing = acknowledged - set(keys)
    assert not missing, f"{len(missing)} acknowledged messages lost"
    # Every stored value is exactly what the exchange sent; nothing was invented.
    sent = sent_messages(sent_log)
    from orderbook_collector.feed.protocol import unpack_levels

    for s, u, n_bids, levels in stored:
        data = sent[(s, u)]["data"]
        bids, asks = unpack_levels(levels, n_bids)
        assert bids == [(float(p), float(q)) for p, q in data["bids"]]
        assert asks == [(float(p), float(q)) for p, q in data["asks"]]
    assert query(buffer, "PRAGMA integrity_check") == [("ok",)]
    # Each kill left a session closed by the start-up repair: the outage is recorded.
    reasons = [r for (r,) in query(buffer, "SELECT close_reason FROM sessions ORDER BY session_id")]
    assert len(reasons) == 11
    assert sum("crash" in r for r in reasons) == 10
    assert "collector stopped" in reasons[-1]
    # Gaps between sessions (the outages) are visible in the sessions table.
    spans = query(buffer, "SELECT opened_us, closed_us FROM sessions ORDER BY session_id")
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


def test_sigterm_exits_0_quickly_with_everything_received_committed(tmp_path):
    buffer = tmp_path / "buffer.sqlite3"
    sent_log = tmp_path / "sent.ndjson"
    with SimulatorProcess("--symbols", "btcusdt,ethusdt", "--rate", "100", "--seed", "9", sent_log=sent_log) as sim:
        proc = start_collector(buffer, sim.ws_url)
        wait_for(lambda: stored_count(buffer) > 200, what="rows")
        sim.control("stall", seconds=30)  # nothing in flight from here on
        time.sleep(0.5)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
        took = time.monotonic() - t0
    assert code == 0, proc.stderr.read()
    assert took < 5.0
    sent = sent_messages(sent_log)
    stored = {(s, u) for s, u in query(buffer, "SELECT s.name, update_id FROM depth_snapshot JOIN streams s USING (stream_id)")}
    assert stored == set(sent), f"{len(set(sent) - stored)} received messages were not committed"
    (reason,) = query(buffer, "SELECT close_reason FROM sessions")[0]
    assert reason == "collector stopped"
