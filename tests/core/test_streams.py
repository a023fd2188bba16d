"""Stream kinds per market, their datasets and USD-M routes: Binance's facts as data."""

from __future__ import annotations

import pytest

from orderbook_core.errors import ConfigError
from orderbook_core.streams import (
    EVENT_DRIVEN,
    ON_CLOCK,
    REST_WEIGHT_PER_MINUTE,
    SAMPLED,
    build_streams,
    Kind,
    Market,
    depth_weight,
    parse_stream_name,
    spec,
    stream_kind,
)

SPOT, USDM = Market.SPOT, Market.USDM


@pytest.mark.parametrize("market, kind, want", [
    (SPOT, "depth20", (Kind.PARTIAL_DEPTH, 20, 1_000_000)),
    (SPOT, "depth5@100ms", (Kind.PARTIAL_DEPTH, 5, 100_000)),
    (SPOT, "depth", (Kind.DIFF_DEPTH, 0, 1_000_000)),
    (SPOT, "depth@100ms", (Kind.DIFF_DEPTH, 0, 100_000)),
    (USDM, "depth10", (Kind.PARTIAL_DEPTH, 10, 250_000)),
    (USDM, "depth20@500ms", (Kind.PARTIAL_DEPTH, 20, 500_000)),
    (USDM, "depth@100ms", (Kind.DIFF_DEPTH, 0, 100_000)),
    (USDM, "depth", (Kind.DIFF_DEPTH, 0, 250_000)),
    (SPOT, "trade", (Kind.TRADE, 0, EVENT_DRIVEN)),
    (USDM, "aggTrade", (Kind.AGG_TRADE, 0, EVENT_DRIVEN)),
    (SPOT, "bookTicker", (Kind.BOOK_TICKER, 0, EVENT_DRIVEN)),
])
def test_kinds_each_market_offers(market, kind, want):
    assert tuple(stream_kind(kind, market)) == want


@pytest.mark.parametrize("market, kind", [
    (SPOT, "depth20@250ms"), (SPOT, "depth@500ms"), (SPOT, "depth20@1000ms"), (USDM, "depth20@1000ms"),
    (USDM, "depth@250ms"), (USDM, "depth10@250ms"),  # the default is named by leaving the speed out
    (SPOT, "depth7"), (SPOT, "kline_1m"), (SPOT, "Trade"),
])
def test_kinds_a_market_does_not_offer(market, kind):
    assert stream_kind(kind, market) is None


def test_datasets_and_usdm_routes():
    assert spec("btcusdt", "depth@100ms", USDM).dataset == "depth_update"
    assert spec("btcusdt", "depth20", USDM).route == "public"
    assert spec("btcusdt", "bookTicker", USDM).route == "public"
    assert spec("btcusdt", "aggTrade", USDM).route == "market"
    assert spec("btcusdt", "trade", USDM).route == "public"  # not "market": docs/binance-api.md section 7
    assert spec("btcusdt", "trade", SPOT).route is None
    assert spec("btcusdt", "markPrice", USDM).route == "market"  # docs/binance-api.md section 8
    assert spec("btcusdt", "markPrice@1s", USDM).route == "market"
    assert spec("btcusdt", "forceOrder", USDM).route == "market"
    assert {k.dataset for k in Kind} == {"depth_snapshot", "depth_update", "trade", "agg_trade", "book_ticker",
                                         "mark_price", "liquidation"}


def test_full_names():
    s = parse_stream_name("ethusdt@depth20@100ms")
    assert (s.symbol, s.kind, s.levels, s.name) == ("ethusdt", "depth20@100ms", 20, "ethusdt@depth20@100ms")
    assert parse_stream_name("ETHUSDT@trade") is None  # stream names are lower case
    assert parse_stream_name("ethusdt") is None


def test_depth_snapshot_weights_and_limits_per_market():
    spot = [depth_weight(Market.SPOT, n) for n in (1, 100, 101, 500, 501, 1000, 1001, 5000, 6000, 0)]
    assert spot == [5, 5, 25, 25, 50, 50, 250, 250, 250, None]  # above 5000 is answered as 5000
    usdm = [depth_weight(Market.USDM, n) for n in (5, 10, 20, 50, 100, 500, 1000, 7, 5000)]
    assert usdm == [2, 2, 2, 2, 5, 10, 20, None, None]
    assert REST_WEIGHT_PER_MINUTE == {Market.SPOT: 6000, Market.USDM: 2400, Market.COINM: 2400}


def test_mark_price_and_force_order_are_usdm_kinds_with_their_cadences():
    # USD-M "Mark Price Stream": 3000ms or 1000ms, on the clock; "Liquidation Order Streams": event-driven
    assert spec("btcusdt", "markPrice", USDM).cadence_us == 3_000_000
    assert spec("btcusdt", "markPrice@1s", USDM).cadence_us == 1_000_000
    assert spec("btcusdt", "forceOrder", USDM).cadence_us == EVENT_DRIVEN
    assert spec("btcusdt", "markPrice", USDM).type in ON_CLOCK
    assert spec("btcusdt", "forceOrder", USDM).type in SAMPLED
    assert spec("btcusdt", "forceOrder", USDM).type not in ON_CLOCK
    for name in ("markPrice", "markPrice@1s", "forceOrder"):
        assert spec("btcusdt", name, SPOT) is None  # spot has no such stream
    for bad in ("markPrice@3s", "markPrice@1000ms", "forceOrder@1s"):
        assert spec("btcusdt", bad, USDM) is None
    with pytest.raises(ConfigError) as e:
        build_streams(["btcusdt"], ["markPrice@2s"], USDM, streams_setting="ORDERBOOK_USDM_STREAMS")
    assert "ORDERBOOK_USDM_STREAMS" in str(e.value)
    assert "markPrice, markPrice@1s, forceOrder" in str(e.value)
