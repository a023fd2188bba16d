"""The short chaos run: the whole system under faults, checked by the never-killed oracle.

Runs ``tests/support/chaos.py`` (simulator, collector recording every kind on spot and USD-M,
moto behind the fault proxy, archive and cleanup runs) for 45 s with a fixed seed. The harness itself checks the promises (see
its docstring and RELIABILITY.md) and exits non-zero on any failure; this test also checks
that the run really broke things, so a harness that silently did nothing cannot pass.
The long run is ``make chaos DURATION=600``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DURATION = 45
#: Messages per second per stream: 20 streams (every kind, both markets, two symbols) on 2 cores.
RATE = 25
SEED = 20261124


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_chaos_short_run_keeps_every_promise(tmp_path):
    report_path = tmp_path / "report.json"
    # Its own process group: on a timeout the harness and everything it started are killed.
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "support" / "chaos.py"), "--duration", str(DURATION),
         "--seed", str(SEED), "--rate", str(RATE), "--workdir", str(tmp_path / "work"), "--report", str(report_path)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=380)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the chaos harness did not finish within 380 s:\n{out[-5000:]}")
    assert report_path.exists(), f"no report; harness output:\n{out[-5000:]}"
    r = json.loads(report_path.read_text())
    assert proc.returncode == 0 and r["passed"], (
        "chaos oracle failed:\n" + "\n".join(r["failures"]) + f"\n--- output tail:\n{out[-4000:]}"
    )
    # it really broke things
    assert r["collector_kills"] >= 4
    assert r["runs"].get("archive_hour:killed", 0) >= 1
    assert r["runs"].get("cleanup_buffer:ok", 0) >= 2  # retention 0, during the run and at the end
    assert sum(r["feed_faults"].values()) >= 8
    assert sum(r["s3_faults_fired"].values()) >= 3
    # and every promise held
    assert r["duplicates_in_archive"] == 0 and r["session_seq_duplicates"] == 0 and r["duplicates_in_buffer"] == 0
    assert r["acknowledged_not_archived"] == 0
    assert r["archived_not_sent"] == 0 and r["archived_values_mismatched"] == 0
    assert r["unexplained_losses"] == 0
    assert r["acknowledged_sampled"] > 1000 and r["archived_distinct"] >= r["acknowledged_sampled"]
    assert r["crash_windows"]["max_ms"] <= 100
    assert r["integrity_check"] == "ok" and r["buffer_rows_left"] == 0 and r["orphan_objects"] == 0
    assert r["coverage"]["kills_recorded"] + r["coverage"]["kills_before_any_session"] == r["collector_kills"]
    assert r["coverage"]["stalls_uncovered"] == 0
    # every stream, not just those that happen to appear, reached the archive after the faults
    after = r["archived_after_faults_stopped"]
    assert r["streams"] and sorted(after) == sorted(r["streams"]) and min(after.values()) > 0, after
    # bad input: the fixed seed sends malformed frames, so quarantine is checked on every run
    malformed = sum(r["malformed_sent"].values())
    assert malformed >= 1, f"the run sent no malformed frame: {r['feed_faults']}"
    # each one quarantined, except one that a kill -9 caught in its crash window
    assert malformed - r["malformed_in_crash_windows"] <= r["quarantined"] <= malformed, (
        r["quarantined"], r["malformed_sent"], r["malformed_in_crash_windows"])
    assert r["quarantined"] >= 1
    # every kind on both markets: nothing acknowledged lost, nothing doubled, values as sent,
    # every loss at a session boundary, every discontinuity in the archive recorded
    k = r["every_kind"]
    datasets = {"depth_snapshot", "depth_update", "trade", "agg_trade", "book_ticker"}
    assert set(k["archived"]) == datasets and min(k["archived"].values()) > 500, k["archived"]
    assert k["streams_archived"] == sorted(f"{m}:{s}@{kind}" for m in ("spot", "usdm") for s in ("btcusdt", "ethusdt")
                                           for kind in ("aggTrade", "bookTicker", "depth20@100ms", "depth@100ms", "trade"))
    assert sum(k["acknowledged_sampled"].values()) > 5000
    assert k["duplicates_in_archive"] == 0 and k["session_seq_duplicates"] == 0 and k["duplicates_in_buffer"] == 0
    assert k["acknowledged_not_archived"] == 0 and k["archived_not_sent"] == 0
    assert k["archived_values_mismatched"] == 0 and k["unexplained_losses"] == 0
    assert k["missing_by_cause"].get("session_boundary", 0) > 0  # the kills did lose unacknowledged messages
    assert k["unrecorded_discontinuities"] == 0 and k["unexplained_seq_gaps"] == 0
    assert k["breaks_recorded"] >= 4 and k["trade_gaps_recorded"] >= 4  # the kills broke every stream at least once
    assert r["buffer_rows_left_other_tables"] == {}
