"""Silence end to end: a stream the exchange stops sending while the connection stays up is a
``silence`` row in the buffer within the documented time, ends when it speaks again, and is a
``silent`` coverage record in the archive after ``archive_hour``.

The real collector (in process, as tests/collector/test_markets.py runs it) records spot
btcusdt and ethusdt from the simulated exchange over real sockets, with short silence settings.
Mid-session the exchange mutes ``btcusdt@depth20@100ms`` (on the clock: late after
max(10 × 100 ms, 1 s)) over its HTTP control, and ``btcusdt@trade`` (on change: contradicted by
the symbol's aggTrades flowing) by its method; later it unmutes both.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import urllib.request

import pytest
from dagster import DagsterInstance

from orderbook_assets.definitions import defs
from orderbook_assets.defs.partitions import hourly
from orderbook_collector.config import Settings
from orderbook_collector.connection.collector import SILENCE_TICK
from support.archive_rows import read
from support.markets import running, stored_counts, until
from support.procs import query
from tools.simulator.exchange import Exchange

# Live collector runs until a silence begins and ends, then archive runs: make test, not test-fast
# (tests/collector/test_silence.py proves the rules in milliseconds there).
pytestmark = pytest.mark.slow

KINDS = ["depth20@100ms", "trade", "aggTrade"]
DEPTH, TRADE = "btcusdt@depth20@100ms", "btcusdt@trade"
MIN_SECONDS = 1.0  # late after max(10 × 100 ms, 1 s) = 1 s
GRACE_SECONDS = 1.0
#: The detector judges every SILENCE_TICK; a loaded test machine may delay the tick a little.
SLACK_US = int((SILENCE_TICK + 1.5) * 1e6)


def settings_for(ex: Exchange, buffer) -> Settings:
    return Settings(symbols=["btcusdt", "ethusdt"], streams=KINDS, ws_url=ex.ws_url, rest_url=ex.rest_url,
                    buffer=buffer, metrics_port=-1, backoff_initial=0.05, backoff_max=0.2, min_session=0.0,
                    silence_min_seconds=MIN_SECONDS, silence_grace_seconds=GRACE_SECONDS)


def silence_rows(buffer) -> list[tuple]:
    return query(buffer, "SELECT s.name, x.event, x.recv_us, x.since_us, x.end_us, x.reason, x.ended_by "
                         "FROM silence x JOIN streams s USING (stream_id) ORDER BY x.id")


def post(url: str) -> int:
    with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=10) as r:
        return r.status


def now_us() -> int:
    return time.time_ns() // 1000


@pytest.mark.timeout(240)
def test_a_muted_stream_is_a_silence_in_the_buffer_and_in_the_coverage(tmp_path, monkeypatch):
    buffer, archive = tmp_path / "buffer.sqlite3", tmp_path / "archive"
    streams = [f"{s}@{k}" for s in ("btcusdt", "ethusdt") for k in KINDS]

    async def record():
        async with Exchange(symbols=["btcusdt", "ethusdt"], seed=3, rate=20) as ex:
            async with running(settings_for(ex, buffer)) as c:
                await until(lambda: buffer.exists() and all(stored_counts(buffer)[s] >= 20 for s in streams),
                            timeout=60, what="20 rows of every stream")
                urls = list(c.opened_urls)
                assert silence_rows(buffer) == []  # everything flows: nothing is silent
                muted_us = now_us()
                assert await asyncio.to_thread(post, f"{ex.rest_url}/control/mute?stream={DEPTH}&market=spot") == 200
                ex.mute(TRADE)
                await until(lambda: {r[0] for r in silence_rows(buffer)} == {DEPTH, TRADE}, timeout=30,
                            what="both muted streams recorded silent")
                assert c.metrics.silent_streams == 2
                assert dict(c.metrics.silent_events) == {"late": 1, "agg_trades_flow": 1, "trades_flow": 0,
                                                         "book_changes": 0, "never_delivered": 0, "poll_failed": 0}
                # the rest kept flowing on the same connection: no reconnect, no other stream silent
                before = stored_counts(buffer)
                await until(lambda: all(stored_counts(buffer)[s] > before[s] + 5 for s in streams
                                        if s not in (DEPTH, TRADE)), what="the other streams flowing")
                assert c.opened_urls == urls
                assert query(buffer, "SELECT count(*) FROM sessions WHERE closed_us IS NOT NULL")[0][0] == 0
                assert stored_counts(buffer)[DEPTH] == before[DEPTH]  # muted means nothing arrives
                unmuted_us = now_us()
                assert await asyncio.to_thread(post, f"{ex.rest_url}/control/unmute?stream={DEPTH}&market=spot") == 200
                ex.unmute(TRADE)
                await until(lambda: len(silence_rows(buffer)) == 4, timeout=30, what="both silences ended")
                assert c.metrics.silent_streams == 0
                assert query(buffer, "SELECT count(*) FROM silence WHERE end_us IS NULL")[0][0] == 0
        return muted_us, unmuted_us

    muted_us, unmuted_us = asyncio.run(record())
    rows = silence_rows(buffer)
    silent = {r[0]: r for r in rows if r[1] == "silent"}
    resumed = {r[0]: r for r in rows if r[1] == "resumed"}
    assert set(silent) == set(resumed) == {DEPTH, TRADE}
    # the partial depth: late, judged within a tick of 1 s after its last message
    _, _, judged, since, end, reason, ended_by = silent[DEPTH]
    assert reason == "late" and ended_by == "messages"
    assert muted_us - 2_000_000 < since < muted_us + 1_000_000, (since - muted_us)
    assert int(MIN_SECONDS * 1e6) <= judged - since <= int(MIN_SECONDS * 1e6) + SLACK_US, judged - since
    assert unmuted_us <= end == resumed[DEPTH][4] and resumed[DEPTH][3] == since
    # the trade stream: contradicted by the aggTrades, judged after the grace
    _, _, judged_t, since_t, end_t, reason_t, _ = silent[TRADE]
    assert reason_t == "agg_trades_flow"
    assert since_t < muted_us + 1_000_000 and judged_t - since_t >= int(GRACE_SECONDS * 1e6)
    assert unmuted_us <= end_t == resumed[TRADE][4]

    # through the archive: the coverage dataset has each silence, with its end
    monkeypatch.setenv("ORDERBOOK_BUFFER", str(buffer))
    monkeypatch.setenv("ORDERBOOK_ARCHIVE_URL", str(archive))
    monkeypatch.delenv("ORDERBOOK_CRASH_AT", raising=False)
    hours = sorted({hourly.get_partition_key_for_timestamp(t / 1e6) for (t,) in query(
        buffer, "SELECT recv_us FROM silence UNION SELECT recv_us FROM depth_snapshot")})
    assert 1 <= len(hours) <= 2  # the run may straddle an hour boundary
    job = defs.resolve_job_def("archive_hour")
    for partition in hours:
        result = job.execute_in_process(partition_key=partition, instance=DagsterInstance.ephemeral(),
                                        raise_on_error=False)
        assert result.success, partition
    coverage = read(archive, "coverage", ("record", "market", "dataset", "stream", "start_time", "end_time",
                                          "reason", "close_reason"))
    recorded = [r for r in coverage if r[0] == "silent"]
    # a silence whose start and end fell into different hours is a row in each: open, then closed
    closed = sorted(r for r in recorded if r[5] is not None)
    assert closed == sorted([
        ("silent", "spot", "depth_snapshot", DEPTH, since, end, "late", "messages"),
        ("silent", "spot", "trade", TRADE, since_t, end_t, "agg_trades_flow", "messages"),
    ])
    assert {(r[3], r[4]) for r in recorded} == {(DEPTH, since), (TRADE, since_t)}


def test_a_stream_subscribed_live_that_never_delivers_is_silent_until_unsubscribed(tmp_path):
    """``*``: a new listing is subscribed with SUBSCRIBE on the open connection; its trade stream
    is muted from the start, so it is acknowledged and never delivers (as a USD-M trade stream on
    the wrong route would). Its delisting unsubscribes it, which ends the silence."""
    buffer = tmp_path / "b.sqlite3"
    never = 2.0

    async def main():
        async with Exchange(symbols=["btcusdt", "ethusdt"], seed=9, rate=20) as ex:
            settings = dataclasses.replace(settings_for(ex, buffer), symbols=["*"], streams=["depth20@100ms", "trade"],
                                           symbols_refresh=0.3, silence_min_seconds=5.0, silence_never_seconds=never)
            async with running(settings) as c:
                await until(lambda: buffer.exists() and all(stored_counts(buffer)[f"{sym}@{k}"] >= 3
                            for sym in ("btcusdt", "ethusdt") for k in ("depth20@100ms", "trade")),
                            what="rows of both symbols")
                ex.list_symbol("solusdt")
                ex.mute("solusdt@trade")  # before the collector can know the listing: nothing ever sent
                await until(lambda: [r[:2] for r in silence_rows(buffer)] == [("solusdt@trade", "silent")],
                            timeout=30, what="the never-delivering subscription recorded silent")
                acked = query(buffer, "SELECT time_us FROM events WHERE kind = 'subscribe' AND stream = ?",
                              "solusdt@trade")[0][0]
                assert stored_counts(buffer)["solusdt@depth20@100ms"] > 0  # its sibling flows
                assert len(c.opened_urls) == 1  # subscribed on the open connection
                ex.delist_symbol("solusdt")
                await until(lambda: len(silence_rows(buffer)) == 2, timeout=30, what="the silence ended")
                unsubscribed = query(buffer, "SELECT time_us FROM events WHERE kind = 'unsubscribe' AND stream = ?",
                                     "solusdt@trade")[0][0]
        return acked, unsubscribed

    acked, unsubscribed = asyncio.run(main())
    (_, _, judged, since, end, reason, ended_by), resumed = silence_rows(buffer)
    assert reason == "never_delivered" and since == acked
    assert int(never * 1e6) <= judged - since <= int(never * 1e6) + SLACK_US
    assert resumed[1:] == ("resumed", end, since, end, "never_delivered", "unsubscribed")
    assert ended_by == "unsubscribed" and unsubscribed <= end


def test_a_usdm_trade_stream_on_the_wrong_route_is_silent_until_the_route_is_right(tmp_path):
    """Real-exchange routing: USD-M trades flow on ``/public``. The exchange then moves ``trade``
    to ``/market`` (planted with its route switch): the collector's subscription on ``/public`` is
    still acknowledged and listed, and delivers nothing, while the symbol's aggTrades flow on
    ``/market``: a ``silent`` record within the grace (plus a judging tick). Moving the route back
    ends the record; the other streams never stop."""
    buffer = tmp_path / "b.sqlite3"
    trade, agg = "usdm:btcusdt@trade", "usdm:btcusdt@aggTrade"

    async def main():
        async with Exchange(symbols=["btcusdt"], seed=5, rate=20) as ex:
            settings = dataclasses.replace(
                settings_for(ex, buffer), symbols=["btcusdt"], streams=["depth20@100ms"], usdm_symbols=["btcusdt"],
                usdm_streams=["trade", "aggTrade"], usdm_ws_url=ex.ws_url, usdm_rest_url=ex.rest_url)
            async with running(settings) as c:
                await until(lambda: buffer.exists() and min(stored_counts(buffer)[s] for s in (trade, agg)) >= 10,
                            timeout=60, what="USD-M trades and aggTrades on their routes")
                assert silence_rows(buffer) == []
                urls = list(c.opened_urls)
                assert any("/public/" in u and "btcusdt@trade" in u for u in urls)
                planted_us = now_us()
                assert await asyncio.to_thread(
                    post, f"{ex.rest_url}/control/route?market=usdm&kind=trade&route=market") == 200
                await until(lambda: [r[:2] for r in silence_rows(buffer)] == [(trade, "silent")], timeout=30,
                            what="the wrong-route trade stream recorded silent")
                judged = query(buffer, "SELECT recv_us FROM silence")[0][0]
                before = stored_counts(buffer)
                await until(lambda: stored_counts(buffer)[agg] > before[agg] + 5, what="aggTrades still flowing")
                assert stored_counts(buffer)[trade] == before[trade]  # acknowledged, listed, silent
                assert c.opened_urls == urls  # no reconnect: the connection stayed up
                corrected_us = now_us()
                assert await asyncio.to_thread(
                    post, f"{ex.rest_url}/control/route?market=usdm&kind=trade&route=public") == 200
                await until(lambda: len(silence_rows(buffer)) == 2, timeout=30, what="the silence ended")
                await until(lambda: stored_counts(buffer)[trade] > before[trade], what="trades again")
        return planted_us, judged, corrected_us

    planted_us, judged, corrected_us = asyncio.run(main())
    (_, _, _, since, end, reason, ended_by), resumed = silence_rows(buffer)
    assert reason == "agg_trades_flow" and ended_by == "messages"
    assert since < planted_us + 1_000_000  # the last trade before the move
    assert judged - planted_us <= int(GRACE_SECONDS * 1e6) + SLACK_US + 1_000_000
    assert corrected_us <= end and resumed[1] == "resumed"
