"""Diff-depth resync against the simulated exchange on loopback, into a real buffer: breaks,
REST snapshots under the weight budget, 429/418 Retry-After, trade-id gaps, restarts."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
import urllib.error
import urllib.request

import pytest
from websockets.asyncio.client import connect

from orderbook_core.buffer.levels import unpack
from orderbook_collector.config import Settings, load
from orderbook_core.errors import ConfigError
from orderbook_collector.connection.rest import RestClient, RestError, Resyncer, WeightBudget
from orderbook_core.streams import Market, spec
from support.markets import running, until
from support.procs import query
from tools.simulator.exchange import Exchange

DIFF = "btcusdt@depth@100ms"


def settings_for(ex: Exchange, buffer, **kw) -> Settings:
    base = Settings(
        symbols=["btcusdt"], streams=["depth@100ms"], ws_url=ex.ws_url, rest_url=ex.rest_url, buffer=buffer,
        metrics_port=-1, backoff_initial=0.05, backoff_max=0.2, min_session=0.0,
    )
    return dataclasses.replace(base, **kw)


def sync_events(buffer) -> list[tuple]:
    return query(buffer, "SELECT event, reason FROM depth_sync ORDER BY id")


# ---- the budget, sans I/O ------------------------------------------------------------------

def test_budget_spreads_weight_over_the_window_and_counts_others_on_the_ip():
    b = WeightBudget(limit=100, window=10.0)
    for i in range(4):  # answers without a count: our own weight of the last window alone decides
        assert b.delay(25, now=i) == 0
        b.answered(b.spend(25, now=i), used=None, now=i)
    assert b.delay(25, now=4) == pytest.approx(6.0)  # the first 25 leave the window at t=10
    assert b.delay(25, now=10) == 0
    b.answered(b.spend(25, now=10), used=100, now=10)  # a count: the exchange's window is full
    assert b.delay(25, now=11) == pytest.approx(9.0)  # until that count is a window old
    b = WeightBudget(limit=100, window=10.0)
    b.answered(b.spend(10, now=0), used=80, now=1)  # the exchange counts 80: 70 of them someone else's
    assert b.delay(25, now=1) == pytest.approx(10.0)  # 80 + 25 > 100 until that count is a window old
    assert b.delay(20, now=1) == 0
    b.answered(b.spend(5, now=2), used=100, now=2)  # others alone fill our share: wait that count out
    assert b.delay(5, now=3) == pytest.approx(9.0)
    b.pause(30, now=12)
    assert b.delay(1, now=13) == pytest.approx(29.0)


# ---- 429 and 418 ---------------------------------------------------------------------------

@pytest.mark.slow  # waits out the stated Retry-After seconds: make test, not test-fast
def test_429_and_418_retry_after_pause_the_market_for_the_stated_time():
    async def main():
        # The simulator allows 10 weight per 3 s window; the client believes it has 1000.
        async with Exchange(symbols=["btcusdt"], weight_budget={Market.SPOT: 10}, weight_window=3.0,
                            ban_seconds=2.0) as ex:
            client = RestClient(Market.SPOT, ex.rest_url, 1.0, budget=1000)
            params = {"symbol": "BTCUSDT", "limit": 5}
            await client.get_json("/api/v3/depth", params, 5)
            await client.get_json("/api/v3/depth", params, 5)
            t0 = time.monotonic()
            answer = await client.get_json("/api/v3/depth", params, 5)  # 429, pause, then served
            waited = time.monotonic() - t0
            assert "lastUpdateId" in answer
            rest = ex.stats()["rest"]["spot"]
            assert (rest["429"], rest["418"]) == (1, 0)  # came back after Retry-After, not before: no ban
            assert client.metrics.rest_rate_limited["spot"] == 1
            assert waited > 0.5  # Retry-After is the rest of the 3 s window, rounded up to whole seconds

            # A request inside a 429's Retry-After earns a 418 ban of 2 s: the client sits it out.
            ex.limiters[Market.SPOT].used = 10  # the window is full again
            for _ in range(2):  # a plain client without a budget: 429, then 418 (banned)
                with contextlib.suppress(urllib.error.HTTPError):
                    await asyncio.to_thread(urllib.request.urlopen, ex.rest_url + "/api/v3/depth?symbol=BTCUSDT&limit=5")
            assert ex.stats()["rest"]["spot"]["418"] == 1
            t0 = time.monotonic()
            await client.get_json("/api/v3/depth", params, 5)
            waited = time.monotonic() - t0
            # 418s are counted apart; a second one when the ban ends inside the plain client's 429
            # window (a 429 this client never saw: the simulator bans anything inside it)
            assert client.metrics.rest_rate_limited["spot"] == 1 and client.metrics.rest_banned["spot"] >= 1
            assert waited >= 1.0  # Retry-After: ceil of what is left of the 2 s ban
            client.close()

    asyncio.run(main())


def test_a_client_that_is_refused_three_times_raises():
    async def main():
        async with Exchange(symbols=["btcusdt"], weight_budget={Market.SPOT: 1}, weight_window=1.0) as ex:
            client = RestClient(Market.SPOT, ex.rest_url, 1.0, budget=1000)
            with pytest.raises(RestError) as err:
                await client.get_json("/api/v3/depth", {"symbol": "BTCUSDT", "limit": 5}, 5)
            assert err.value.status == 429
            client.close()

    asyncio.run(main())


# ---- a dropped diff event ------------------------------------------------------------------

def apply(book: dict[float, float], levels) -> None:
    for price, qty in levels:
        if qty == 0:
            book.pop(price, None)
        else:
            book[price] = qty


def test_dropped_diff_event_is_a_break_then_a_snapshot_then_synced_and_the_book_rebuilds(tmp_path):
    buffer = tmp_path / "b.sqlite3"

    async def main():
        async with Exchange(symbols=["btcusdt"], seed=4) as ex:
            # limit 1000 > the simulated book's depth: the snapshot is the whole book
            s = settings_for(ex, buffer, depth_snapshot_limit=1000)
            async with running(s) as c:
                await until(lambda: ("synced", "snapshot") in sync_events(buffer), what="initial sync")
                ex.drop_diff(DIFF)
                await until(lambda: ("break", "gap") in sync_events(buffer), what="the gap recorded")
                await until(lambda: sync_events(buffer)[-1] == ("synced", "snapshot"), what="synced again")
                last_u = query(buffer, "SELECT max(last_update_id) FROM depth_update")[0][0]
                oracle = ex.book_state("btcusdt", last_u)
                rest = ex.stats()["rest"]["spot"]
                assert (rest["429"], rest["418"]) == (0, 0)
                assert c.metrics.rest_weight["spot"] == 2 * 50 <= 6000 * s.rest_weight_share
                return last_u, oracle

    last_u, oracle = asyncio.run(main())
    assert sync_events(buffer) == [("break", "connect"), ("synced", "snapshot"), ("break", "gap"),
                                   ("synced", "snapshot")]
    (before_u, before_ms, first, last, after_ms), = query(
        buffer, "SELECT before_update_id, before_event_ms, after_first_update_id, after_last_update_id, after_event_ms "
                "FROM depth_sync WHERE reason = 'gap'")
    assert first > before_u + 1 and before_ms is not None and after_ms >= before_ms
    assert query(buffer, "SELECT count(*) FROM depth_update WHERE first_update_id > ? AND last_update_id < ?",
                 before_u, first)[0][0] == 0  # nothing stored in the hole
    (L, n_bids, levels, reason), = query(
        buffer, "SELECT last_update_id, n_bids, levels, reason FROM depth_rest_snapshot WHERE last_update_id = "
                "(SELECT snapshot_update_id FROM depth_sync WHERE event = 'synced' ORDER BY id DESC LIMIT 1)")
    assert reason == "gap"
    U, u = query(buffer, "SELECT after_first_update_id, after_last_update_id FROM depth_sync ORDER BY id DESC LIMIT 1")[0]
    assert U <= L + 1 <= u  # the snapshot bridges the first event applied on top of it
    bids_l, asks_l = unpack(levels, n_bids)
    bids, asks = dict(bids_l), dict(asks_l)
    events = query(buffer, "SELECT n_bids, levels FROM depth_update WHERE last_update_id > ? AND last_update_id <= ? "
                           "ORDER BY last_update_id", L, last_u)
    assert events
    for nb, blob in events:
        b, a = unpack(blob, nb)
        apply(bids, b)
        apply(asks, a)
    assert bids == {float(p): float(q) for p, q in oracle.bids.items()}
    assert asks == {float(p): float(q) for p, q in oracle.asks.items()}


# ---- a resync storm ----------------------------------------------------------------------

@pytest.mark.slow
def test_a_reconnect_of_500_diff_streams_resyncs_within_the_weight_budget(tmp_path):
    buffer = tmp_path / "b.sqlite3"
    symbols = [f"s{i:03d}usdt" for i in range(500)]
    budget, window = 2000, 5.0  # per window on the simulator: one storm (500 x 5) needs more than a window

    def synced_streams() -> int:
        return query(buffer, "SELECT count(*) FROM (SELECT stream_id, max(id) AS last FROM depth_sync GROUP BY 1) x "
                             "JOIN depth_sync d ON d.id = x.last WHERE d.event = 'synced'")[0][0]

    async def main():
        async with Exchange(symbols=symbols, seed=5, rate=2, book_levels=30,
                            weight_budget={Market.SPOT: budget}, weight_window=window) as ex:
            s = settings_for(ex, buffer, symbols=symbols, depth_snapshot_limit=5, streams_per_connection=200,
                             rest_weight_budget={Market.SPOT: budget}, rest_weight_window=window,
                             rest_weight_share=0.5, stall_cadences=1000)
            async with running(s) as c:
                await until(lambda: synced_streams() == 500, timeout=120, what="500 streams synced")
                t0 = time.monotonic()
                # Each of the three connections is refused once with Retry-After 1 s: down for
                # over a second, every stream (an event each 0.5 s) misses data.
                ex.reject_connections(429, retry_after=1, count=3)
                await ex.disconnect()
                await until(lambda: query(buffer, "SELECT count(*) FROM depth_sync WHERE reason = 'connect'")[0][0]
                            == 1000, timeout=60, what="500 reconnect breaks")
                await until(lambda: synced_streams() == 500, timeout=120, what="500 streams synced again")
                took = time.monotonic() - t0
                rest = ex.stats()["rest"]["spot"]
                assert (rest["429"], rest["418"]) == (0, 0)
                assert rest["weight"] == c.metrics.rest_weight["spot"] >= 2 * 500 * 5
                return took

    took = asyncio.run(main())
    print(f"500 diff streams re-snapshotted after a reconnect in {took:.1f} s")  # docs/collector.md quotes it
    # 2500 weight at 1000 per 5 s window cannot go in less than two windows' time.
    assert took >= window * 1.5, took


# ---- trade ids ---------------------------------------------------------------------------

def test_dropped_trades_are_a_gap_with_exactly_the_missing_ids(tmp_path):
    buffer, log = tmp_path / "b.sqlite3", tmp_path / "sent.ndjson"

    async def main():
        async with Exchange(symbols=["btcusdt"], seed=6, rate=20, sent_log=str(log)) as ex:
            async with running(settings_for(ex, buffer, streams=["trade"])):
                await until(lambda: query(buffer, "SELECT count(*) FROM trade")[0][0] > 10, what="trades")
                ex.drop_trades("btcusdt@trade", 4)
                await until(lambda: query(buffer, "SELECT count(*) FROM trade_gap")[0][0] == 1, what="the gap")

    asyncio.run(main())
    dropped = [json.loads(x)["id"] for x in log.read_text().splitlines() if '"fault":"dropped"' in x]
    assert len(dropped) == 4 and dropped == list(range(dropped[0], dropped[0] + 4))
    assert query(buffer, "SELECT dataset, first_missing_id, last_missing_id FROM trade_gap") == [
        ("trade", dropped[0], dropped[-1])]
    assert query(buffer, "SELECT count(*) FROM trade WHERE trade_id BETWEEN ? AND ?", dropped[0], dropped[-1]) == [(0,)]


# ---- restarts ----------------------------------------------------------------------------

def test_a_restart_whose_data_continues_records_no_break_and_one_that_does_not_records_connect(tmp_path):
    buffer = tmp_path / "b.sqlite3"

    async def main():
        async with Exchange(symbols=["btcusdt"], seed=7, rate=10) as ex, \
                connect(ex.ws_url + "/stream?streams=btcusdt@depth@100ms/btcusdt@trade", max_queue=None):
            # (another subscriber keeps the simulator's streams publishing while the collector is down)
            s = settings_for(ex, buffer, streams=["depth@100ms", "trade"])
            async with running(s):
                await until(lambda: ("synced", "snapshot") in sync_events(buffer), what="synced")
            # The next connection first replays the streams' recent history (the simulator's
            # ring): the events missed while the collector was down arrive, so the data continues.
            ex.replay_on_next_connect(100)
            async with running(s) as c:
                await until(lambda: c.metrics.messages > 40, what="data after the restart")
            assert sync_events(buffer) == [("break", "connect"), ("synced", "snapshot")]
            assert query(buffer, "SELECT count(*) FROM trade_gap") == [(0,)]
            before = query(buffer, "SELECT max(last_update_id) FROM depth_update")[0][0]
            last_trade = query(buffer, "SELECT max(trade_id) FROM trade")[0][0]
            book = ex.books[Market.SPOT]["btcusdt"]
            # Without replay, what the exchange publishes while the collector is down is missed.
            await until(lambda: book.last_id > before and book.next_trade_id - 1 > last_trade, what="the book moving on")
            published = book.next_trade_id - 1  # at least this trade was missed
            async with running(s):
                await until(lambda: len(sync_events(buffer)) == 4, what="a connect break and a sync")
                await until(lambda: query(buffer, "SELECT max(trade_id) FROM trade")[0][0] > published,
                            what="a trade after the restart")
            return before, last_trade

    before, last_trade = asyncio.run(main())
    assert sync_events(buffer)[2:] == [("break", "connect"), ("synced", "snapshot")]
    (b,), = query(buffer, "SELECT before_update_id FROM depth_sync WHERE reason = 'connect' ORDER BY id DESC LIMIT 1")
    assert b == before
    assert query(buffer, "SELECT count(*), min(first_missing_id) FROM trade_gap") == [(1, last_trade + 1)]


def test_a_failing_snapshot_is_retried_later_without_holding_up_the_others():
    async def main():
        async with Exchange(symbols=["btcusdt", "ethusdt"]) as ex:
            got = []
            client = RestClient(Market.SPOT, ex.rest_url, 0.5, concurrency=1)
            specs = [spec("zzzusdt", "depth@100ms"), spec("btcusdt", "depth@100ms"), spec("ethusdt", "depth@100ms")]
            r = Resyncer(client, specs, got.append, 5)
            r.start()
            for s in specs:
                r.request(s.key, "connect")
            r.request("btcusdt@depth@100ms", "gap")  # already pending: not asked twice
            await until(lambda: client.metrics.rest_errors["spot"] >= 2, timeout=10, what="the unknown symbol retried")
            await r.stop()
            return got

    got = asyncio.run(main())
    # one worker: the unknown symbol failed first, yet both others were fetched, once each
    assert sorted((g.symbol, g.reason) for g in got) == [("BTCUSDT", "connect"), ("ETHUSDT", "connect")]
    assert all(g.n_bids == 5 and len(g.levels) == 10 * 16 and g.stream.endswith("@depth@100ms") for g in got)


@pytest.mark.parametrize("env, setting, words", [
    ({"ORDERBOOK_REST_WEIGHT_SHARE": "0"}, "ORDERBOOK_REST_WEIGHT_SHARE", "above 0 and at most 1"),
    ({"ORDERBOOK_REST_WEIGHT_SHARE": "half"}, "ORDERBOOK_REST_WEIGHT_SHARE", "not a share"),
    ({"ORDERBOOK_DEPTH_SNAPSHOT_LIMIT": "6000"}, "ORDERBOOK_DEPTH_SNAPSHOT_LIMIT", "out of range"),
    ({"ORDERBOOK_USDM_DEPTH_SNAPSHOT_LIMIT": "200"}, "ORDERBOOK_USDM_DEPTH_SNAPSHOT_LIMIT", "5, 10, 20, 50, 100, 500, 1000"),
    ({"ORDERBOOK_REBASE_SECONDS": "0"}, "ORDERBOOK_REBASE_SECONDS", "from 1 to 86400"),
    ({"ORDERBOOK_REBASE_SECONDS": "often"}, "ORDERBOOK_REBASE_SECONDS", "not a whole number"),
])
def test_bad_rest_settings_name_the_setting_and_the_fix(env, setting, words, tmp_path):
    with pytest.raises(ConfigError) as err:
        load([], {"ORDERBOOK_BUFFER": str(tmp_path / "b.sqlite3"), **env})
    assert err.value.setting == setting and words in str(err.value)


def test_rest_settings_are_read_from_the_environment(tmp_path):
    s, _ = load([], {"ORDERBOOK_BUFFER": str(tmp_path / "b.sqlite3"), "ORDERBOOK_REST_WEIGHT_SHARE": "0.25",
                     "ORDERBOOK_DEPTH_SNAPSHOT_LIMIT": "1000", "ORDERBOOK_USDM_DEPTH_SNAPSHOT_LIMIT": "100"})
    assert (s.rest_weight_share, s.snapshot_limit(Market.SPOT), s.snapshot_limit(Market.USDM)) == (0.25, 1000, 100)
    default = load([], {"ORDERBOOK_BUFFER": str(tmp_path / "b.sqlite3")})[0]
    # unset: the limit and the re-base period are planned from the budget (feed/rebase.py)
    assert (default.snapshot_limit(Market.SPOT), default.snapshot_limit(Market.USDM), default.rebase_seconds) == (
        None, None, None)
    assert load([], {"ORDERBOOK_BUFFER": str(tmp_path / "b.sqlite3"), "ORDERBOOK_REBASE_SECONDS": "300"})[0] \
        .rebase_seconds == 300.0


def test_usdm_snapshots_come_from_fapi_with_their_exchange_times():
    async def main():
        async with Exchange(symbols=["btcusdt"]) as ex:
            got = []
            client = RestClient(Market.USDM, ex.rest_url, 0.5)
            usdm = spec("btcusdt", "depth@100ms", Market.USDM)
            r = Resyncer(client, [usdm], got.append, 50)
            r.start()
            r.request(usdm.key, "gap")
            await until(lambda: got, timeout=10, what="the USD-M snapshot")
            await r.stop()
            book = ex.book_state("btcusdt", market=Market.USDM)
            return got[0], book, ex.stats()["rest"]

    rec, book, rest = asyncio.run(main())
    assert (rec.stream, rec.market, rec.symbol, rec.reason) == ("usdm:btcusdt@depth@100ms", "usdm", "BTCUSDT", "gap")
    assert rec.event_ms > 0 and rec.transaction_ms > 0 and rec.n_bids == 50
    assert rec.last_update_id <= book.last_update_id
    assert (rest["usdm"]["weight"], rest["spot"]["weight"]) == (2, 0)  # limit 50 weighs 2 on USD-M


def test_the_resync_and_continuity_metrics_are_exposed():
    from orderbook_collector.metrics import Metrics, render

    m = Metrics()
    m.rest_weight["spot"] += 50
    m.rest_rate_limited["usdm"] += 1
    m.continuity["break"] += 2
    text = render(m).decode()
    for line in ('orderbook_rest_weight_total{market="spot"} 50.0', 'orderbook_rest_rate_limited_total{market="usdm"} 1.0',
                 'orderbook_depth_sync_total{event="break"} 2.0', "orderbook_trade_gaps_total 0.0",
                 'orderbook_rest_snapshots_total{market="spot"} 0.0', 'orderbook_resync_pending{market="spot"} 0.0'):
        assert line in text, line
