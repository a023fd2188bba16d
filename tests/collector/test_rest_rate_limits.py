"""The REST client never earns a 418: its budget counts every request in flight against what the
exchange reports, and after a 429 nothing is sent until its Retry-After has passed (the
simulator bans any request inside a 429's Retry-After, as Binance may)."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from orderbook_collector.connection.rest import RestClient, WeightBudget
from orderbook_core.streams import Market
from tools.simulator.exchange import Exchange

USDM = Market.USDM
DEPTH = ("/fapi/v1/depth", {"symbol": "BTCUSDT", "limit": 100}, 5)  # weight 5 on USD-M


async def _burst(client: RestClient, n: int) -> list[object]:
    return await asyncio.gather(*(client.get(*DEPTH) for _ in range(n)), return_exceptions=True)


@pytest.mark.slow
def test_a_whole_share_beside_others_spending_60_percent_earns_no_429_nor_418():
    """Share 1.0 of a budget of 100 per 1 s window while other clients on the IP spend 60 at the
    start of every window: 24 snapshots of weight 5 (three windows' worth of the 40 left) asked
    at once, four in flight. Every one is answered, and the exchange never answered 429 or 418."""
    async def main():
        async with Exchange(symbols=["btcusdt"], weight_budget={USDM: 100}, weight_window=1.0,
                            ban_seconds=5.0) as ex:
            ex.weight_storm(60, USDM)
            client = RestClient(USDM, ex.rest_url, 1.0, budget=100, window=1.0)
            t0 = time.monotonic()
            got = await _burst(client, 24)
            took = time.monotonic() - t0
            client.close()
            return got, ex.stats()["rest"]["usdm"], took, client.metrics

    got, rest, took, metrics = asyncio.run(main())
    print(f"24 requests beside a 60 % storm answered in {took:.1f} s")  # docs/collector.md quotes it
    errors = [g for g in got if isinstance(g, BaseException)]
    assert not errors, errors[:3]
    assert (rest["429"], rest["418"]) == (0, 0), rest
    assert rest["weight"] == metrics.rest_weight["usdm"] == 24 * 5
    assert took < 6.0  # the 40 left of each window (about three), not one request a window (24 s)


# ---- the budget, sans I/O ------------------------------------------------------------------

def test_requests_in_flight_count_on_top_of_the_exchange_count_until_it_has_seen_them():
    b = WeightBudget(limit=100, window=10.0)
    assert b.count(0) is None and b.delay(5, 0) == 0  # nothing known: one request goes alone
    first = b.spend(5, 0)
    assert b.delay(5, 0) == math.inf  # ... and the others wait for its answer
    b.answered(first, used=65, now=0.1)  # others on the IP spent 60
    assert b.count(0.1) == 65
    sent = [b.spend(5, 0.2) for _ in range(4)]  # four in flight together: 85 at most
    assert b.count(0.2) == 85
    # The second answer went before the rest were counted: 70 is this one and the earlier ones;
    # the three still in flight and whatever was sent meanwhile come on top, never forgotten.
    b.answered(sent[0], used=70, now=0.3)
    assert b.count(0.3) == 85
    assert b.delay(15, 0.3) == 0 and b.delay(16, 0.3) == pytest.approx(10.0)
    # The last answer counts them all, but three went before it and were in flight: whether the
    # exchange had counted them when it answered is not known, so they count again (twice at worst).
    b.answered(sent[3], used=85, now=0.4)
    assert b.count(0.4) == 100
    assert b.count(10.4) is None  # a window after the last answer: the exchange's window is over


def test_a_429_holds_everything_until_the_longest_retry_after_then_one_request_goes_alone():
    b = WeightBudget(limit=100, window=10.0)
    b.answered(b.spend(5, 0), used=5, now=0)
    sent = [b.spend(5, 1) for _ in range(4)]
    b.answered(sent[0], used=100, now=1.1)
    b.pause(2, now=1.1)  # 429, Retry-After 2
    b.answered(sent[1], used=100, now=1.2)
    b.pause(3, now=1.2)  # the next in flight: 429 too, a longer Retry-After
    b.answered(sent[2], used=95, now=1.3)  # a 200 the exchange counted before: it keeps the pause
    assert b.delay(1, 1.3) == pytest.approx(2.9)
    assert b.delay(1, 4.19) > 0
    assert b.count(4.2) is None  # the window the 429 spoke of is over
    assert b.delay(1, 4.2) == math.inf  # one request still in flight: wait for it
    b.answered(sent[3], used=None, now=4.3)  # it failed without an answer
    assert b.delay(1, 4.3) == 0
    probe = b.spend(1, 4.3)
    assert b.delay(1, 4.3) == math.inf
    b.answered(probe, used=41, now=4.4)
    assert b.delay(1, 4.4) == 0 and b.count(4.4) == 41


def test_429s_to_four_requests_in_flight_hold_every_request_until_the_longest_retry_after():
    """Four requests in flight are all answered 429 (Retry-After 1, 2, 1, 1 s) and four more wait
    for a slot: nothing reaches the exchange before the longest Retry-After has passed (it would
    be banned: 418), then one request alone learns the new count and the rest follow."""
    async def main():
        async with Exchange(symbols=["btcusdt"], ban_seconds=5.0) as ex:
            client = RestClient(USDM, ex.rest_url, 0.5)
            await client.get(*DEPTH)  # the budget knows the count: four may go together
            ex.rate_limit_together([1, 2, 1, 1], USDM)
            t0 = time.monotonic()
            got = await _burst(client, 8)
            took = time.monotonic() - t0
            client.close()
            return got, ex.stats()["rest"]["usdm"], took, client.metrics

    got, rest, took, metrics = asyncio.run(main())
    errors = [g for g in got if isinstance(g, BaseException)]
    assert not errors, errors[:3]
    assert (rest["requests"], rest["429"], rest["418"]) == (1 + 4 + 8, 4, 0), rest
    assert (metrics.rest_rate_limited["usdm"], metrics.rest_banned["usdm"]) == (4, 0)
    assert took >= 2.0  # the longest Retry-After, counted from the client's own receipt of it


def test_a_request_admitted_before_the_loop_heard_of_a_429_is_held_back_in_its_thread():
    """Another worker thread has just received a 429 (Retry-After 1 s) the event loop has not
    read yet: a request the budget already let go is not sent but waits out the Retry-After
    (the exchange would ban it: 418)."""
    async def main():
        async with Exchange(symbols=["btcusdt"], ban_seconds=5.0) as ex:
            client = RestClient(USDM, ex.rest_url, 0.5)
            t0 = time.monotonic()
            ex.limiters[USDM].limited_until = t0 + 1.0  # the exchange answered that 429
            client._stop_until = t0 + 1.0  # and that thread wrote what it said
            await client.get(*DEPTH)
            took = time.monotonic() - t0
            client.close()
            return ex.stats()["rest"]["usdm"], took

    rest, took = asyncio.run(main())
    assert (rest["requests"], rest["429"], rest["418"]) == (1, 0, 0)
    assert took >= 1.0
