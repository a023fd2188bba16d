"""``*`` symbols sans-I/O: exchangeInfo parsing, subscription plans, Binance's connection limits."""

from __future__ import annotations

import orjson
import pytest

from orderbook_collector.feed.symbols import (
    AttemptLimiter,
    ControlPacer,
    ExchangeInfoError,
    control_message,
    plan_changes,
    trading_symbols,
)

SPOT_INFO = b"""{"timezone":"UTC","serverTime":1764547200000,"rateLimits":[],"exchangeFilters":[],"symbols":[
 {"symbol":"BTCUSDT","status":"TRADING","baseAsset":"BTC","quoteAsset":"USDT"},
 {"symbol":"ETHUSDT","status":"TRADING","baseAsset":"ETH","quoteAsset":"USDT"},
 {"symbol":"LUNAUSDT","status":"BREAK","baseAsset":"LUNA","quoteAsset":"USDT"}]}"""
USDM_INFO = b"""{"timezone":"UTC","serverTime":1764547200000,"symbols":[
 {"symbol":"BTCUSDT","pair":"BTCUSDT","contractType":"PERPETUAL","status":"TRADING"},
 {"symbol":"BTCUSDT_260327","pair":"BTCUSDT","contractType":"CURRENT_QUARTER","status":"TRADING"},
 {"symbol":"FTTUSDT","pair":"FTTUSDT","contractType":"PERPETUAL","status":"SETTLING"}]}"""


def test_only_trading_symbols_count_in_stream_case():
    assert trading_symbols(orjson.loads(SPOT_INFO)) == ({"btcusdt", "ethusdt"}, ())


def test_usdm_symbols_that_cannot_be_stream_names_are_reported_not_subscribed():
    got = trading_symbols(orjson.loads(USDM_INFO))
    assert got.symbols == {"btcusdt"} and got.skipped == ("BTCUSDT_260327",)


@pytest.mark.parametrize("info", [
    [], {"code": -1003, "msg": "Too many requests"}, {"symbols": {}}, {"symbols": [{"symbol": "BTCUSDT"}]},
    {"symbols": [{"symbol": 1, "status": "TRADING"}]},
])
def test_an_answer_without_a_symbol_list_is_an_error_not_an_empty_market(info):
    with pytest.raises(ExchangeInfoError):
        trading_symbols(info)


def test_plan_unsubscribes_in_place_and_fills_free_room_before_opening_connections():
    conns = [["a@trade", "b@trade", "c@trade"], ["d@trade", "e@trade"]]
    plan = plan_changes(conns, ["a@trade", "c@trade", "d@trade", "e@trade", "f@trade", "g@trade", "h@trade",
                                "i@trade", "j@trade"], limit=3)
    assert plan.unsubscribe == {0: ["b@trade"]}
    assert plan.subscribe == {0: ["f@trade"], 1: ["g@trade"]}
    assert plan.new == [["h@trade", "i@trade", "j@trade"]]
    after = [[n for n in c if n not in plan.unsubscribe.get(i, [])] + plan.subscribe.get(i, [])
             for i, c in enumerate(conns)] + plan.new
    assert [len(c) for c in after] == [3, 3, 3]


def test_plan_of_no_change_is_empty_and_a_first_plan_opens_connections_within_the_limit():
    assert plan_changes([["a@trade"]], ["a@trade"], 1024).empty
    first = plan_changes([], [f"s{i}@trade" for i in range(450)], 200)
    assert [len(c) for c in first.new] == [200, 200, 50] and not first.subscribe and not first.unsubscribe


def test_attempt_limiter_allows_300_in_5_minutes_then_waits_for_the_oldest_to_expire():
    lim = AttemptLimiter()
    for i in range(300):
        assert lim.delay(i * 0.1) == 0.0
        lim.record(i * 0.1)
    assert lim.delay(30.0) == pytest.approx(270.0)  # the first attempt (t=0) leaves the window at t=300
    assert lim.delay(300.0) == 0.0
    lim.record(300.0)
    assert lim.delay(300.05) == pytest.approx(0.05)  # the next oldest, t=0.1, leaves at 300.1


def test_control_messages_are_spaced_at_least_250_ms():
    pacer = ControlPacer()
    assert pacer.delay(10.0) == 0.0
    pacer.record(10.0)
    assert pacer.delay(10.1) == pytest.approx(0.15)
    assert pacer.delay(10.25) == 0.0
    pacer.record(10.3)
    assert pacer.delay(10.3) == pytest.approx(0.25)


def test_control_message_is_binance_json():
    assert orjson.loads(control_message("SUBSCRIBE", ["btcusdt@trade"], 7)) == {
        "method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 7}
