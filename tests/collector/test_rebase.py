"""Re-basing, sans I/O: the plan (limit and period within the weight share), the queue (repairs
first), the schedule (one re-base a slot, spread over the period). The clock is literal seconds."""

from __future__ import annotations

import pytest

from orderbook_collector.feed.rebase import (
    REBASE_MIN_SECONDS, REBASE_SHARE, STEP_LIMITS, Priority, RebasePlan, RebaseSchedule, SnapshotQueue, plan,
)
from orderbook_collector.feed.sync import SyncReason
from orderbook_core.streams import REST_WEIGHT_PER_MINUTE, Market, depth_weight

SHARE = 0.5  # ORDERBOOK_REST_WEIGHT_SHARE's default
ALLOWED = {m: int(REST_WEIGHT_PER_MINUTE[m] * SHARE) for m in Market}  # 3000 spot, 1200 USD-M a minute


def run(schedule: RebaseSchedule, until: float, fetch_delay: float = 0.0) -> list[tuple[float, str]]:
    """Drive the schedule slot by slot until ``until``; each re-base arrives ``fetch_delay`` later."""
    turns = []
    while schedule.next_slot is not None and schedule.next_slot <= until:
        now = schedule.next_slot
        stream = schedule.due(now)
        if stream is not None:
            turns.append((now, stream))
            schedule.based(stream, now + fetch_delay)
    return turns


def max_in_window(times: list[float], window: float) -> int:
    """The most turns any half-open window ``(t - window, t]`` holds (Binance's sliding minute).
    Slot times are sums of a float interval: a turn a rounding error inside the window's start counts as out."""
    i, most = 0, 0
    for j, t in enumerate(times):
        while times[i] <= t - window + 1e-6:
            i += 1
        most = max(most, j - i + 1)
    return most


# ---- the plan: the default limit and period from the budget -----------------------------------

def test_the_worked_example_of_the_docs():
    # 100 spot diff streams: 5000 levels (weight 250) would need 100 x 250 / 1500 a minute = 16.7 min > 10;
    # 1000 levels (weight 50) need 3.3 min: chosen, every 200 s.
    assert plan(Market.SPOT, 100, ALLOWED[Market.SPOT]) == RebasePlan(1000, 50, 200.0, 30, False)
    # 200 USD-M streams: 1000 levels (weight 20) need 200 x 20 / 600 a minute = 6.7 min: chosen, every 400 s.
    assert plan(Market.USDM, 200, ALLOWED[Market.USDM]) == RebasePlan(1000, 20, 400.0, 30, False)


@pytest.mark.parametrize("market, streams, limit, period", [
    (Market.SPOT, 0, 5000, REBASE_MIN_SECONDS),  # `*` before its first exchangeInfo
    (Market.SPOT, 1, 5000, REBASE_MIN_SECONDS),  # 250 a minute would do: never more often than a minute
    (Market.SPOT, 20, 5000, 200.0),
    (Market.SPOT, 300, 1000, 600.0),  # 300 x 50 / 1500 a minute: exactly ten minutes
    (Market.SPOT, 301, 500, 301.0),
    (Market.SPOT, 601, 100, 120.2),
    (Market.SPOT, 1500, 100, 300.0),  # every spot symbol: the lightest limit, every 5 min
    (Market.USDM, 300, 1000, 600.0),
    (Market.USDM, 301, 500, 301.0),
    (Market.USDM, 700, 100, 350.0),
    (Market.USDM, 4000, 50, 800.0),  # nothing fits ten minutes: the lightest limit at the period that fits
])
def test_the_default_limit_is_the_deepest_whose_rebases_fit_the_share_within_ten_minutes(market, streams, limit, period):
    allowed = ALLOWED[market]
    p = plan(market, streams, allowed)
    assert (p.limit, p.weight, p.stretched) == (limit, depth_weight(market, limit), False)
    assert p.period == pytest.approx(period)
    assert p.limit == expected_limit(market, streams, allowed)
    assert streams * p.weight * 60 / p.period <= REBASE_SHARE * allowed + 1e-9  # weight a minute


def expected_limit(market: Market, streams: int, allowed: int) -> int:
    """The rule as the docs state it, written out independently."""
    fits = [n for n in STEP_LIMITS[market] if streams * depth_weight(market, n) / (REBASE_SHARE * allowed) <= 10]
    return max(fits) if fits else min(STEP_LIMITS[market])


def test_the_step_limits_are_the_deepest_of_each_weight():
    for market, limits in STEP_LIMITS.items():
        weights = [depth_weight(market, n) for n in limits]
        assert weights == sorted(set(weights))  # one limit per weight, lightest first
    assert STEP_LIMITS[Market.SPOT] == (100, 500, 1000, 5000)
    assert all(depth_weight(Market.SPOT, n + 1) > depth_weight(Market.SPOT, n) for n in (100, 500, 1000))
    assert STEP_LIMITS[Market.USDM] == (50, 100, 500, 1000)


def test_a_set_limit_or_period_is_kept_and_a_too_short_period_is_stretched():
    spot = ALLOWED[Market.SPOT]
    assert plan(Market.SPOT, 100, spot, limit=100) == RebasePlan(100, 5, REBASE_MIN_SECONDS, 300, False)
    assert plan(Market.SPOT, 100, spot, period=120.0).limit == 500  # the deepest that fits 120 s: 100 x 25 / 1500 min
    assert plan(Market.SPOT, 3, spot, period=1.0) == RebasePlan(100, 5, 1.0, 300, False)
    p = plan(Market.SPOT, 100, spot, limit=1000, period=60.0)
    assert (p.period, p.stretched) == (200.0, True)  # 100 x 50 a minute is more than 1500
    # a test budget where one snapshot outweighs the re-base share: one a window per stream
    assert plan(Market.SPOT, 2, 8, window=5.0, limit=5, period=1.0) == RebasePlan(5, 5, 10.0, 1, True)


# ---- the schedule: spread, within the share, yielding -----------------------------------------

@pytest.mark.parametrize("market, streams", [(Market.SPOT, 1), (Market.SPOT, 7), (Market.SPOT, 100),
                                             (Market.SPOT, 1500), (Market.USDM, 200), (Market.USDM, 333)])
def test_turns_are_spread_one_a_slot_and_stay_within_the_share(market, streams):
    p = plan(market, streams, ALLOWED[market])
    s = RebaseSchedule(p.period, phase=0.37)
    names = [f"s{i}" for i in range(streams)]
    s.set_streams(names, now=0.0)
    turns = run(s, until=4 * p.period, fetch_delay=0.2)
    times = [t for t, _ in turns]
    assert len(set(times)) == len(times) == len(sorted(times))  # no two streams in the same instant
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) == pytest.approx(p.period / streams)  # evenly spaced: never a burst
    by_stream: dict[str, list[float]] = {}
    for t, name in turns:
        by_stream.setdefault(name, []).append(t)
    assert sorted(by_stream) == sorted(names)  # everyone's turn comes
    for ts in by_stream.values():  # once a period each
        assert [b - a for a, b in zip(ts, ts[1:])] == pytest.approx([p.period] * (len(ts) - 1))
        assert len(ts) >= 3
    weight = depth_weight(market, p.limit)
    assert max_in_window(times, 60.0) * weight <= REBASE_SHARE * ALLOWED[market]


def test_a_reconnect_storm_stands_in_for_the_turns_due_soon_after_and_moves_no_turn():
    s = RebaseSchedule(100.0)  # 10 streams: a slot every 10 s
    names = [f"s{i}" for i in range(10)]
    s.set_streams(names, now=0.0)
    before = run(s, until=300.0)
    assert before[:2] == [(50.0, "s5"), (60.0, "s6")]  # turns within half a period of joining pass
    assert before[-1] == (300.0, "s0")
    for i, n in enumerate(names):  # a reconnect: every stream gets a 'connect' snapshot around t=300
        s.based(n, 300.0 + i * 0.1)
    after = run(s, until=600.0)
    # s1..s5 (slots 310..350, under 50 s after their snapshot) pass; nobody's turn moves
    assert [t for t, _ in after] == [float(t) for t in range(360, 601, 10)]
    assert after[:5] == [(360.0, "s6"), (370.0, "s7"), (380.0, "s8"), (390.0, "s9"), (400.0, "s0")]
    assert after[5] == (410.0, "s1")


def test_a_slot_passes_while_a_rebase_still_waits_and_a_late_clock_makes_no_burst():
    s = RebaseSchedule(10.0)
    s.set_streams(["a", "b"], now=-100.0)
    s.based("a", -1000.0)
    s.based("b", -1000.0)
    assert s.due(-100.0) == "a"
    assert s.due(-95.0, busy=True) is None  # "a" has not started yet: b's slot passes
    assert s.due(-90.0) == "a"
    assert s.due(1000.0) == "b"  # the loop was late by 18 minutes: one re-base, not two hundred
    assert s.next_slot == 1005.0 and s.due(1004.9) is None


def test_streams_that_come_and_go_keep_the_others_places():
    s = RebaseSchedule(30.0)
    s.set_streams(["a", "b", "c"], now=0.0)
    for n in "abc":
        s.based(n, -100.0)
    assert s.due(0.0) == "a"
    s.set_streams(["a", "c", "d"], now=9.0)  # b delisted, d listed: it joins at the end, based now
    assert s.interval == 10.0
    assert s.due(10.0) == "c"
    assert s.due(20.0) is None  # d's turn, 11 s after it joined (its 'connect' snapshot stands in)
    assert s.due(30.0) == "a"
    s.set_streams([], now=31.0)
    assert s.next_slot is None and s.due(1e9) is None


# ---- the queue: repairs first --------------------------------------------------------------

def test_rebases_yield_to_repairs_and_fresh_bases():
    q = SnapshotQueue()
    assert q.add("a", SyncReason.REBASE, Priority.REBASE)
    assert q.add("b", SyncReason.CONNECT, Priority.CONNECT)
    assert q.add("c", SyncReason.GAP, Priority.REPAIR)
    assert q.add("d", SyncReason.CONNECT, Priority.REPAIR)
    assert not q.add("c", SyncReason.REBASE, Priority.REBASE)  # already waiting, more urgently
    assert q.pop(low_ready=False) == ("c", SyncReason.GAP, Priority.REPAIR)
    assert q.pop(low_ready=False) == ("d", SyncReason.CONNECT, Priority.REPAIR)
    assert q.pop(low_ready=False) is None  # the budget has no room now: the others wait, repairs would not
    assert q.add("e", SyncReason.GAP, Priority.REPAIR)
    assert q.pop(low_ready=False) == ("e", SyncReason.GAP, Priority.REPAIR)
    assert q.pop() == ("b", SyncReason.CONNECT, Priority.CONNECT)
    assert q.add("a", SyncReason.GAP, Priority.REPAIR)  # a waiting re-base becomes a repair when its stream breaks
    assert len(q) == 1 and q.waiting(Priority.REBASE) == 0
    assert q.pop(low_ready=False) == ("a", SyncReason.GAP, Priority.REPAIR)
    assert q.pop() is None and len(q) == 0
