"""The collector against the simulated exchange on loopback: reconnects, replays,
rotation, bad frames, backpressure, timestamps, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import subprocess
import sys
import urllib.request

import pytest

from orderbook_collector.connection.collector import Collector
from orderbook_collector.config import Settings
from orderbook_collector.metrics import _BUCKETS as BUCKETS
from tools.simulator.exchange import Exchange
from support.procs import query

SYMBOLS = ["btcusdt", "ethusdt"]


def settings_for(ex: Exchange, buffer, **kw) -> Settings:
    base = Settings(
        symbols=SYMBOLS,
        ws_url=ex.ws_url,
        buffer=buffer,
        metrics_port=-1,
        backoff_initial=0.05,
        backoff_max=0.2,
        min_session=0.0,
    )
    return dataclasses.replace(base, **kw)


@contextlib.asynccontextmanager
async def running(settings: Settings, **writer_options):
    collector = Collector(settings, **writer_options)
    task = asyncio.create_task(collector.run())
    try:
        yield collector
    finally:
        collector.stop("test over")
        await asyncio.wait_for(task, 30)


async def until(predicate, timeout=15.0, what="condition"):
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def stored(buffer) -> list[tuple[str, int]]:
    return query(buffer, "SELECT s.name, d.update_id FROM depth_snapshot d JOIN streams s USING (stream_id) ORDER BY d.id")


def sent_ids(log_path) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for line in log_path.read_text().splitlines():
        rec = json.loads(line)
        if "last_update_id" in rec and "malformed" not in rec:
            out.setdefault(rec["stream"], []).append(rec["last_update_id"])
    return {k: sorted(set(v)) for k, v in out.items()}


def assert_contiguous(buffer, log_path):
    """Between the first and last stored id of each stream, every id sent is stored once."""
    rows = stored(buffer)
    assert len(rows) == len(set(rows)), "duplicate rows"
    sent = sent_ids(log_path)
    for stream in {s for s, _ in rows}:
        got = sorted(u for s, u in rows if s == stream)
        window = [u for u in sent[stream] if got[0] <= u <= got[-1]]
        assert got == window, f"{stream}: {len(window) - len(got)} sent messages missing"


def test_reconnects_after_clean_and_abrupt_disconnects_without_duplicates(tmp_path):
    buffer, log = tmp_path / "b.sqlite3", tmp_path / "sent.ndjson"

    async def main():
        async with Exchange(symbols=SYMBOLS, seed=1, rate=50, sent_log=log) as ex:
            async with running(settings_for(ex, buffer)) as c:
                await until(lambda: c.metrics.messages > 50, what="first rows")
                ex.replay_on_next_connect(30)
                await ex.disconnect(abrupt=False)
                await until(lambda: c.metrics.duplicates >= 30, what="replayed duplicates dropped")
                ex.replay_on_next_connect(30)
                await ex.disconnect(abrupt=True)
                await until(lambda: c.metrics.duplicates >= 60, what="second replay dropped")
                n = c.metrics.messages
                await until(lambda: c.metrics.messages > n + 20, what="data flowing again")
                # Two connections lost, two opened again; no attempt failed on the way.
                assert (c.metrics.reconnects, c.metrics.connect_failures) == (2, 0)

    asyncio.run(main())
    sessions = query(buffer, "SELECT close_reason, duplicates FROM sessions ORDER BY session_id")
    assert len(sessions) == 3
    assert sessions[0][0].startswith("closed by server: code 1000"), sessions[0][0]  # the simulator's clean close
    assert "1006" in sessions[1][0]
    assert sum(d for _, d in sessions) >= 60
    dropped = query(buffer, "SELECT count(*) FROM dropped WHERE reason = 'duplicate'")[0][0]
    assert dropped == sum(d for _, d in sessions)
    rows = stored(buffer)
    assert len(rows) == len(set(rows))


def rotated(buffer) -> int:
    return query(buffer, "SELECT count(*) FROM sessions WHERE close_reason LIKE '%rotated%'")[0][0]


@pytest.mark.slow
def test_make_before_break_rotation_loses_and_duplicates_nothing(tmp_path):
    buffer, log = tmp_path / "b.sqlite3", tmp_path / "sent.ndjson"

    async def main():
        async with Exchange(symbols=SYMBOLS, seed=2, rate=50, sent_log=log) as ex:
            s = settings_for(ex, buffer, rotate_after=1.0, rotate_overlap=0.5)
            async with running(s) as c:
                await until(lambda: c.metrics.rotations >= 4, timeout=20, what="four rotations begun")
                await until(lambda: rotated(buffer) >= 3, timeout=20, what="three rotated sessions closed")
            assert ex.connections_accepted >= 4

    asyncio.run(main())
    assert_contiguous(buffer, log)
    reasons = [r for (r,) in query(buffer, "SELECT close_reason FROM sessions ORDER BY session_id")]
    assert sum("rotated" in r for r in reasons) >= 3
    spans = query(buffer, "SELECT opened_us, closed_us FROM sessions ORDER BY session_id")
    assert all(b[0] < a[1] for a, b in zip(spans[:-1], spans[1:]))  # overlapping: made before broken
    assert query(buffer, "SELECT count(*) FROM dropped")[0][0] > 0  # the overlap was deduplicated


def test_server_shutdown_rotates_to_a_new_connection_first(tmp_path):
    buffer, log = tmp_path / "b.sqlite3", tmp_path / "sent.ndjson"

    async def main():
        async with Exchange(symbols=SYMBOLS, seed=3, rate=50, sent_log=log) as ex:
            async with running(settings_for(ex, buffer)) as c:
                await until(lambda: c.metrics.messages > 30, what="first rows")
                await ex.server_shutdown()
                await until(lambda: c.metrics.rotations == 1, what="rotation")
                n = c.metrics.messages
                await until(lambda: c.metrics.messages > n + 30, what="data after rotation")

    asyncio.run(main())
    assert_contiguous(buffer, log)
    assert query(buffer, "SELECT count(*) FROM events WHERE kind = 'server_shutdown'")[0][0] == 1


MALFORMED = ["not_json", "binary", "wrong_types", "unknown_stream", "oversize", "error_reply", "missing_fields"]


def test_every_kind_of_malformed_frame_is_quarantined_and_collection_continues(tmp_path):
    buffer, log = tmp_path / "b.sqlite3", tmp_path / "sent.ndjson"

    async def main():
        async with Exchange(symbols=SYMBOLS, seed=4, rate=50, sent_log=log) as ex:
            async with running(settings_for(ex, buffer)) as c:
                await until(lambda: c.metrics.messages > 20, what="first rows")
                for kind in MALFORMED:
                    ex.inject_malformed(kind)
                await until(lambda: sum(c.metrics.quarantined.values()) >= len(MALFORMED), what="quarantine")
                n = c.metrics.messages
                await until(lambda: c.metrics.messages > n + 30, what="data after bad frames")
                assert c.metrics.connected == 1  # the same connection kept going

    asyncio.run(main())
    reasons = [r for (r,) in query(buffer, "SELECT reason FROM quarantine ORDER BY id")]
    assert len(reasons) == len(MALFORMED)
    assert set(reasons) >= {"not_json", "binary", "unknown_stream", "oversize", "error_reply", "bad_integer"}
    raws = query(buffer, "SELECT length(raw) FROM quarantine")
    assert all(n > 0 for (n,) in raws)
    assert max(n for (n,) in raws) > 1 << 20  # the oversize frame kept whole
    assert query(buffer, "SELECT sum(quarantined) FROM sessions")[0][0] == len(MALFORMED)
    assert_contiguous(buffer, log)


# DESIGN/README: event-loop lag p99 <= 10 ms under the paced load (3.0 ms measured on an idle
# machine). On a shared 2-core machine other runs take the CPU and delay every process's timers,
# the collector's or not: at a load average of 8 a bare asyncio loop alone in its process measured
# p99 10-24 ms, the collector's 20-28 ms. So a control loop samples the machine's own scheduling
# lag at the same time, and the collector's p99 may exceed it by at most LAG_P99_EXCESS, what its
# own work may add. A loop that blocks fails it by far: an fsync of every spilled frame on the
# loop measured p99 800 ms, a writer's batch commit on the loop 1.6 s.
LAG_P99_EXCESS = 0.025
LAG_SAMPLES = 200


def p99(values: list[float]) -> float:
    """Nearest-rank 99th percentile."""
    return sorted(values)[-(-99 * len(values) // 100) - 1]


# The collector's lag watcher, alone in a process: sleep 50 ms, record the overshoot.
CONTROL_LOOP = """
import asyncio, sys, time
async def main(n):
    lags = []
    for _ in range(n):
        t0 = time.perf_counter()
        await asyncio.sleep(0.05)
        lags.append(max(time.perf_counter() - t0 - 0.05, 0.0))
    print(sorted(lags)[-(-99 * n // 100) - 1])
asyncio.run(main(int(sys.argv[1])))
"""


@pytest.mark.slow  # a collector process spilling and replaying: make test, not test-fast
def test_slow_writer_spills_while_the_reader_keeps_up(tmp_path):
    buffer, log = tmp_path / "b.sqlite3", tmp_path / "sent.ndjson"

    async def main():
        async with Exchange(symbols=SYMBOLS, seed=5, rate=200, sent_log=log) as ex:
            s = settings_for(ex, buffer, queue_size=50, max_batch=20)
            async with running(s, slow_down=0.05) as c:
                lag = c.metrics.loop_lag
                await until(lambda: c.metrics.spilled_items > 500, timeout=20, what="spilling")
                # The reader spills on the loop thread; the promise is that this keeps the loop free.
                # From now on the lag watcher keeps its raw samples (one per 50 ms when the loop is
                # free): all taken while spilling, beside the control loop; enough that p99 is not
                # just the single worst one.
                c.metrics.loop_lag_samples = samples = []
                control = subprocess.Popen([sys.executable, "-c", CONTROL_LOOP, str(LAG_SAMPLES)],
                                           stdout=subprocess.PIPE, text=True)
                deadline = asyncio.get_running_loop().time() + 30
                while len(samples) < LAG_SAMPLES and asyncio.get_running_loop().time() < deadline:
                    await asyncio.sleep(0.05)
                assert c.writer.spill.active  # still spilling: the samples cover the spill
                assert c.metrics.connected == 1 and c.metrics.reconnects == 0
                out, _ = await asyncio.to_thread(control.communicate, timeout=60)
                machine = float(out)
                collector = p99(samples) if samples else float("inf")
                assert collector <= machine + LAG_P99_EXCESS, (
                    f"event-loop lag p99 {collector * 1000:.1f} ms > the machine's own {machine * 1000:.1f} ms "
                    f"+ {LAG_P99_EXCESS * 1000:g} ms; samples per bucket {dict(zip(BUCKETS + ('+Inf',), lag.counts))}")
                # a blocked loop also takes fewer samples: the bound above says so first
                assert len(samples) >= LAG_SAMPLES, f"only {len(samples)} loop-lag samples in 30 s"
                c.writer.slow_down = 0.0
                await until(lambda: not c.writer.spill.active, timeout=30, what="spill drained")
            assert ex.connections_accepted == 1  # no keepalive timeout, no reconnect

    asyncio.run(main())
    assert_contiguous(buffer, log)
    rows = query(buffer, "SELECT stream_id, update_id FROM depth_snapshot ORDER BY id")
    for sid in {s for s, _ in rows}:
        ids = [u for s, u in rows if s == sid]
        assert ids == sorted(ids), "reordered within a stream"


def test_receive_stamps_are_integer_microseconds_after_the_send(tmp_path):
    buffer, log = tmp_path / "b.sqlite3", tmp_path / "sent.ndjson"

    async def main():
        async with Exchange(symbols=["btcusdt"], seed=6, sent_log=log) as ex:  # Binance cadence: 100 ms
            async with running(settings_for(ex, buffer, symbols=["btcusdt"])) as c:
                await until(lambda: c.metrics.messages >= 10, what="ten messages")

    asyncio.run(main())
    sent = {}
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        sent[rec["last_update_id"]] = rec["send_us"]
    rows = query(buffer, "SELECT update_id, recv_us, typeof(recv_us) FROM depth_snapshot ORDER BY id")
    assert all(t == "integer" for _, _, t in rows)
    assert len(rows) >= 10
    stamps = [r for _, r, _ in rows]
    # One stamp per frame, in the order the frames were sent: strictly increasing, never shared
    # (a stamp taken per batch or per queue hand-off would repeat or run out of order).
    uids = [u for u, _, _ in rows]
    assert uids == sorted(uids)  # stored in the order sent (one stream)
    assert all(b > a for a, b in zip(stamps, stamps[1:])), stamps
    # Microseconds, not milliseconds scaled up: a ms clock gives only multiples of 1,000.
    assert any(t % 1000 for t in stamps), stamps
    assert all(recv >= sent[uid] for uid, recv, _ in rows)
    assert all(recv - sent[uid] < 1_000_000 for uid, recv, _ in rows)


def test_rate_limited_handshakes_honour_retry_after(tmp_path):
    buffer = tmp_path / "b.sqlite3"

    async def main():
        async with Exchange(symbols=SYMBOLS, seed=7, rate=50) as ex:
            ex.reject_connections(429, retry_after=1, count=2)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            async with running(settings_for(ex, buffer)) as c:
                await until(lambda: c.metrics.messages > 0, what="connected after 429s")
                waited = loop.time() - t0
                assert c.metrics.connect_failures == 2 and c.metrics.reconnects == 0
            assert waited >= 2.0  # two Retry-After: 1 honoured, although backoff_max is 0.2 s

    asyncio.run(main())


def test_metrics_endpoint_serves_prometheus_text(tmp_path):
    buffer = tmp_path / "b.sqlite3"

    async def main():
        async with Exchange(symbols=SYMBOLS, seed=8, rate=50) as ex:
            async with running(settings_for(ex, buffer, metrics_port=0)) as c:
                await until(lambda: c.metrics.messages > 10, what="rows")
                port = c.metrics_server.sockets[0].getsockname()[1]
                body = await asyncio.to_thread(
                    lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
                )
        return body

    body = asyncio.run(main())
    for name in [
        "orderbook_messages_total", "orderbook_duplicates_total", "orderbook_quarantined_total",
        "orderbook_reconnects_total", "orderbook_queue_depth", "orderbook_queue_utilization",
        "orderbook_commit_latency_seconds_bucket", "orderbook_event_loop_lag_seconds_bucket",
        'orderbook_last_message_age_seconds{stream="btcusdt@depth20@100ms"}', "orderbook_spill_bytes",
    ]:
        assert name in body, name
    messages = float(next(line.split()[1] for line in body.splitlines() if line.startswith("orderbook_messages_total ")))
    assert messages > 10
