"""Each stream kind's payload on each market, decoded from literal frames; bad ones quarantined with a reason."""

from __future__ import annotations

import orjson
import pytest

from orderbook_core.buffer import levels
from orderbook_core.buffer.records import (
    AggTradeRecord, BookTickerRecord, DepthRecord, DepthUpdateRecord, Quarantined, TradeRecord,
)
from orderbook_collector.feed.protocol import Decoder
from orderbook_core.streams import Market, spec

SPOT, USDM = Market.SPOT, Market.USDM


def decode(market: Market, name: str, data: dict):
    symbol, kind = name.split("@", 1)
    s = spec(symbol, kind, market)
    raw = orjson.dumps({"stream": name, "data": data}).decode()
    return Decoder([s]).decode(raw, 1_700_000_000_000_123, 7, 3)


def test_spot_diff_depth():
    r = decode(SPOT, "btcusdt@depth@100ms", {"e": "depthUpdate", "E": 1672515782136, "s": "BTCUSDT", "U": 157, "u": 160,
                                             "b": [["0.0024", "10"]], "a": [["0.0026", "0"]]})
    assert type(r) is DepthUpdateRecord
    assert (r.event_ms, r.transaction_ms, r.first_update_id, r.last_update_id, r.prev_update_id) == (
        1672515782136, None, 157, 160, None)
    assert levels.unpack(r.levels, r.n_bids) == ([(0.0024, 10.0)], [(0.0026, 0.0)])  # qty 0 removes a level
    assert (r.recv_us, r.session_id, r.seq) == (1_700_000_000_000_123, 7, 3)


def test_usdm_diff_depth_keeps_pu_and_transaction_time():
    r = decode(USDM, "btcusdt@depth@100ms", {"e": "depthUpdate", "E": 5, "T": 4, "s": "BTCUSDT", "U": 157, "u": 160,
                                             "pu": 149, "b": [], "a": [["65000.1", "1.5"]]})
    assert (r.transaction_ms, r.prev_update_id, r.n_bids) == (4, 149, 0)


def test_usdm_partial_depth_is_a_snapshot_with_update_ids():
    r = decode(USDM, "ethusdt@depth5@500ms", {"e": "depthUpdate", "E": 9, "T": 8, "s": "ETHUSDT", "U": 10, "u": 20,
                                              "pu": 9, "b": [["3500.1", "2"]], "a": [["3500.2", "1"]]})
    assert type(r) is DepthRecord
    assert (r.update_id, r.first_update_id, r.prev_update_id, r.event_ms, r.transaction_ms) == (20, 10, 9, 9, 8)


def test_trade_and_agg_trade():
    t = decode(SPOT, "btcusdt@trade", {"e": "trade", "E": 2, "s": "BTCUSDT", "t": 12345, "p": "65000.01",
                                       "q": "0.00100000", "T": 1, "m": True, "M": True})
    assert type(t) is TradeRecord and (t.trade_id, t.price, t.qty, t.is_buyer_maker, t.trade_ms) == (
        12345, 65000.01, 0.001, True, 1)
    a = decode(USDM, "btcusdt@aggTrade", {"e": "aggTrade", "E": 2, "s": "BTCUSDT", "a": 5, "p": "1.5", "q": "2",
                                          "f": 100, "l": 105, "T": 1, "m": False})
    assert type(a) is AggTradeRecord and (a.agg_trade_id, a.first_trade_id, a.last_trade_id) == (5, 100, 105)


def test_book_ticker_on_both_markets():
    s = decode(SPOT, "bnbusdt@bookTicker", {"u": 400900217, "s": "BNBUSDT", "b": "25.35190000", "B": "31.21000000",
                                            "a": "25.36520000", "A": "40.66000000"})
    assert type(s) is BookTickerRecord and (s.update_id, s.best_bid, s.best_ask_qty, s.event_ms) == (
        400900217, 25.3519, 40.66, None)
    f = decode(USDM, "bnbusdt@bookTicker", {"e": "bookTicker", "E": 3, "T": 2, "u": 1, "s": "BNBUSDT",
                                            "b": "1", "B": "1", "a": "2", "A": "1"})
    assert (f.event_ms, f.transaction_ms) == (3, 2)


@pytest.mark.parametrize("market, name, data, reason", [
    (SPOT, "btcusdt@trade", {"e": "trade", "E": 2, "s": "ETHUSDT", "t": 1, "p": "1", "q": "1", "T": 1, "m": True},
     "payload symbol 'ETHUSDT' is not the stream's 'BTCUSDT'"),
    (SPOT, "btcusdt@trade", {"e": "trade", "E": 2, "s": "BTCUSDT", "t": -1, "p": "1", "q": "1", "T": 1, "m": True},
     "trade id ('t') missing or not a non-negative 64-bit integer"),
    (SPOT, "btcusdt@trade", {"e": "trade", "E": 2, "s": "BTCUSDT", "t": 1, "p": "0", "q": "1", "T": 1, "m": True},
     "price ('p') must be positive and finite"),
    (SPOT, "btcusdt@trade", {"e": "trade", "E": 2, "s": "BTCUSDT", "t": 1, "p": "x", "q": "1", "T": 1, "m": True},
     "price ('p') is not a decimal number: 'x'"),
    (SPOT, "btcusdt@aggTrade", {"e": "aggTrade", "E": 2, "s": "BTCUSDT", "a": 1, "p": "1", "q": "1", "f": 9, "l": 8,
                                "T": 1, "m": "no"}, "first trade id 9 is after the last 8"),
    (SPOT, "btcusdt@depth", {"e": "depthUpdate", "E": 1, "s": "BTCUSDT", "U": 5, "u": 4, "b": [], "a": []},
     "first update id 5 is after the last 4"),
    (USDM, "btcusdt@depth", {"e": "depthUpdate", "E": 1, "T": 1, "s": "BTCUSDT", "U": 1, "u": 4, "b": [], "a": []},
     "previous update id ('pu') missing or not a non-negative 64-bit integer"),
    (USDM, "btcusdt@bookTicker", {"e": "trade", "E": 3, "T": 2, "u": 1, "s": "BTCUSDT", "b": "1", "B": "1", "a": "2",
                                  "A": "1"}, "event type 'trade' is not 'bookTicker'"),
])
def test_bad_payloads_are_quarantined_with_their_reason(market, name, data, reason):
    q = decode(market, name, data)
    assert type(q) is Quarantined
    assert q.detail == reason
    assert orjson.loads(q.raw)["data"] == data


# ---- REST depth snapshots: the same level validation as the WebSocket ----------------------

from orderbook_core.errors import FrameError  # noqa: E402
from orderbook_core.payloads import decode_rest_depth  # noqa: E402

REST_DIFF = spec("btcusdt", "depth@100ms")


def test_a_rest_depth_snapshot_is_decoded_on_each_market():
    r = decode_rest_depth(REST_DIFF, b'{"lastUpdateId":1027024,"bids":[["4.00000000","431.00000000"]],'
                                     b'"asks":[["4.00000200","12.00000000"]]}', 17, "gap", 100)
    assert (r.stream, r.market, r.symbol, r.recv_us, r.last_update_id, r.reason) == (
        "btcusdt@depth@100ms", "spot", "BTCUSDT", 17, 1027024, "gap")
    assert (r.event_ms, r.transaction_ms) == (None, None)  # spot's answer has no time
    assert levels.unpack(r.levels, r.n_bids) == ([(4.0, 431.0)], [(4.000002, 12.0)])
    u = decode_rest_depth(spec("btcusdt", "depth@100ms", USDM),
                          b'{"lastUpdateId":1027024,"E":1589436922972,"T":1589436922959,'
                          b'"bids":[["4.00000000","431.00000000"]],"asks":[]}', 17, "connect", 500)
    assert (u.stream, u.market, u.event_ms, u.transaction_ms, u.n_bids) == (
        "usdm:btcusdt@depth@100ms", "usdm", 1589436922972, 1589436922959, 1)


@pytest.mark.parametrize("body, words", [
    (b'{"lastUpdateId":5,"bids":[["NaN","1"]],"asks":[]}', "not finite"),
    (b'{"lastUpdateId":5,"bids":[["100.5","-1"]],"asks":[]}', "negative"),
    (b'{"lastUpdateId":5,"bids":[],"asks":[["0","1"]]}', "zero-priced"),
    (b'{"bids":[["100.5","1"]],"asks":[]}', "'lastUpdateId'"),
    (b'{"lastUpdateId":-1,"bids":[],"asks":[]}', "'lastUpdateId'"),
    (b'{"lastUpdateId":5,"bids":[["abc","1"]],"asks":[]}', "pairs of decimal numbers"),
    (b'{"lastUpdateId":5,"bids":[["100.5"]],"asks":[]}', "pairs of decimal numbers"),
    (b'{"lastUpdateId":5,"bids":{},"asks":[]}', "must be lists"),
    (b'{"lastUpdateId":5,"bids":[["1","1"],["2","1"]],"asks":[]}', "more than 1 levels"),
    (b'<html>502 Bad Gateway</html>', "unexpected character"),
    (b'[1, 2]', "not a JSON object"),
])
def test_a_bad_rest_depth_snapshot_is_refused_with_its_reason(body, words):
    with pytest.raises(FrameError) as err:
        decode_rest_depth(REST_DIFF, body, 17, "gap", 1)
    assert words in err.value.detail


def test_a_usdm_rest_snapshot_without_its_exchange_times_is_refused():
    usdm = spec("btcusdt", "depth@100ms", USDM)
    with pytest.raises(FrameError) as err:
        decode_rest_depth(usdm, b'{"lastUpdateId":5,"T":1,"bids":[],"asks":[]}', 17, "gap", 5)
    assert err.value.reason == "bad_integer" and "'E'" in err.value.detail


def test_a_level_the_websocket_refuses_the_rest_snapshot_refuses_too():
    """One validator: the levels of a quarantined diff event make a refused REST snapshot."""
    bad_levels = [["100.5", "NaN"]]
    ws = decode(SPOT, "btcusdt@depth@100ms", {"e": "depthUpdate", "E": 1, "s": "BTCUSDT", "U": 1, "u": 2,
                                               "b": bad_levels, "a": []})
    assert type(ws) is Quarantined
    with pytest.raises(FrameError) as err:
        decode_rest_depth(REST_DIFF, orjson.dumps({"lastUpdateId": 2, "bids": bad_levels, "asks": []}), 17, "gap", 5)
    assert (err.value.reason.value, err.value.detail) == (ws.reason, ws.detail)


# ---- USD-M markPrice and forceOrder (docs/binance-api.md section 8) --------------------------

from orderbook_core.buffer.records import LiquidationRecord, MarkPriceRecord  # noqa: E402

#: Binance's examples, as its USD-M "Mark Price Stream" and "Liquidation Order Streams" pages print them.
MARK = {"e": "markPriceUpdate", "E": 1562305380000, "s": "BTCUSDT", "p": "11794.15000000", "i": "11784.62659091",
        "P": "11784.25641265", "r": "0.00038167", "T": 1562306400000}
FORCE = {"e": "forceOrder", "E": 1568014460893, "o": {
    "s": "BTCUSDT", "S": "SELL", "o": "LIMIT", "f": "IOC", "q": "0.014", "p": "9910", "ap": "9910", "X": "FILLED",
    "l": "0.014", "z": "0.014", "T": 1568014460893}}


@pytest.mark.parametrize("kind", ["markPrice", "markPrice@1s"])
def test_usdm_mark_price(kind):
    r = decode(USDM, f"btcusdt@{kind}", MARK)
    assert r == MarkPriceRecord(f"usdm:btcusdt@{kind}", 1_700_000_000_000_123, 7, 3, 1562305380000, 11794.15,
                                11784.62659091, 11784.25641265, 0.00038167, 1562306400000, 0)


def test_a_negative_funding_rate_and_a_delivery_contracts_empty_funding_are_kept():
    neg = decode(USDM, "btcusdt@markPrice", {**MARK, "r": "-0.00012500"})
    assert neg.funding_rate == -0.000125
    # a delivery contract sends "r": "" and "T": 0 (COIN-M "Mark Price Stream"): no rate, no next funding
    dated = decode(USDM, "btcusdt261225@markPrice", {**MARK, "s": "BTCUSDT261225", "r": "", "T": 0})
    assert type(dated) is MarkPriceRecord
    assert (dated.funding_rate, dated.next_funding_ms) == (None, None)


def test_usdm_force_order():
    r = decode(USDM, "btcusdt@forceOrder", FORCE)
    assert r == LiquidationRecord("usdm:btcusdt@forceOrder", 1_700_000_000_000_123, 7, 3, 1568014460893, "SELL",
                                  "LIMIT", "IOC", 0.014, 9910.0, 9910.0, "FILLED", 0.014, 0.014, 1568014460893, 0)


def _order(**o):
    return {**FORCE, "o": {**FORCE["o"], **o}}


@pytest.mark.parametrize("name, data, detail, reason", [
    ("btcusdt@markPrice", {**MARK, "e": "forceOrder"}, "event type 'forceOrder' is not 'markPriceUpdate'", "wrong_event"),
    ("btcusdt@markPrice", {**MARK, "s": "ETHUSDT"}, "payload symbol 'ETHUSDT' is not the stream's 'BTCUSDT'", "wrong_symbol"),
    ("btcusdt@markPrice", {**MARK, "p": "0"}, "mark price ('p') must be positive and finite", "out_of_range"),
    ("btcusdt@markPrice", {**MARK, "p": "NaN"}, "mark price ('p') must be positive and finite", "out_of_range"),
    ("btcusdt@markPrice", {**MARK, "i": "-1"}, "index price ('i') must be non-negative and finite", "out_of_range"),
    ("btcusdt@markPrice", {**MARK, "P": "inf"}, "estimated settle price ('P') must be non-negative and finite", "out_of_range"),
    ("btcusdt@markPrice", {**MARK, "r": "nan"}, "funding rate ('r') must be finite", "out_of_range"),
    ("btcusdt@markPrice", {**MARK, "r": "-Infinity"}, "funding rate ('r') must be finite", "out_of_range"),
    ("btcusdt@markPrice", {**MARK, "r": 0.0001}, "funding rate ('r') missing or not a decimal string", "bad_decimal"),
    ("btcusdt@markPrice", {**MARK, "r": "1e"}, "funding rate ('r') is not a decimal number: '1e'", "bad_decimal"),
    ("btcusdt@markPrice", {**MARK, "T": -1}, "next funding time ('T') missing or not a non-negative 64-bit integer", "bad_integer"),
    ("btcusdt@markPrice@1s", {k: v for k, v in MARK.items() if k != "E"},
     "event time ('E') missing or not a non-negative 64-bit integer", "bad_integer"),
    ("btcusdt@forceOrder", {**FORCE, "o": None}, "liquidation order ('o') missing or not an object", "bad_order"),
    ("btcusdt@forceOrder", _order(s="ETHUSDT"), "payload symbol 'ETHUSDT' is not the stream's 'BTCUSDT'", "wrong_symbol"),
    ("btcusdt@forceOrder", _order(S="LONG"), "side ('S') missing or not BUY or SELL: 'LONG'", "bad_word"),
    ("btcusdt@forceOrder", _order(o=""), "order type ('o') missing or not an upper-case word: ''", "bad_word"),
    ("btcusdt@forceOrder", _order(q="0"), "quantity ('q') must be positive and finite", "out_of_range"),
    ("btcusdt@forceOrder", _order(p="-9910"), "price ('p') must be positive and finite", "out_of_range"),
    ("btcusdt@forceOrder", _order(ap="inf"), "average price ('ap') must be non-negative and finite", "out_of_range"),
    ("btcusdt@forceOrder", _order(z="0.015"), "filled quantities (last 0.014, accumulated 0.015) exceed the order's 0.014", "out_of_range"),
    ("btcusdt@forceOrder", _order(X=None), "order status ('X') missing or not an upper-case word: 'None'", "bad_word"),
    ("btcusdt@forceOrder", _order(T="1568014460893"), "trade time ('T') missing or not a non-negative 64-bit integer", "bad_integer"),
])
def test_bad_mark_price_and_force_order_payloads_are_quarantined_with_their_reason(name, data, detail, reason):
    q = decode(USDM, name, data)
    assert type(q) is Quarantined
    assert (q.reason, q.detail) == (reason, detail)
    assert orjson.loads(q.raw)["data"] == data


# ---- COIN-M markPrice and forceOrder (docs/binance-api.md section 8, COIN-M) ----------------

#: Binance's COIN-M examples: "Mark Price Stream" (a delivery contract, keys ``p, P, i``), the
#: perpetual of "Mark Price of All Symbols of a Pair", "All Market Liquidation Order Streams" (``ps``).
COINM_DATED_MARK = {"e": "markPriceUpdate", "E": 1596095725000, "s": "BTCUSD_201225", "p": "10934.62615417",
                    "P": "10962.17178236", "i": "10933.62615417", "r": "", "T": 0}
COINM_PERP_MARK = {"e": "markPriceUpdate", "E": 1596095725000, "s": "BTCUSD_PERP", "p": "11012.31359011",
                   "P": "10962.17178236", "i": "10933.62615417", "r": "0.00000000", "T": 1596096000000}
COINM_FORCE = {"e": "forceOrder", "E": 1591154240950, "o": {
    "s": "BTCUSD_200925", "ps": "BTCUSD", "S": "SELL", "o": "LIMIT", "f": "IOC", "q": "1", "p": "9425.5", "ap": "9496.5",
    "X": "FILLED", "l": "1", "z": "1", "T": 1591154240949}}


def test_coinm_mark_prices_of_a_delivery_contract_and_a_perpetual():
    dated = decode(Market.COINM, "btcusd_201225@markPrice", COINM_DATED_MARK)
    assert dated == MarkPriceRecord("coinm:btcusd_201225@markPrice", 1_700_000_000_000_123, 7, 3, 1596095725000,
                                    10934.62615417, 10933.62615417, 10962.17178236, None, None, 0)
    perp = decode(Market.COINM, "btcusd_perp@markPrice@1s", COINM_PERP_MARK)
    assert (perp.stream, perp.mark_price, perp.funding_rate, perp.next_funding_ms) == (
        "coinm:btcusd_perp@markPrice@1s", 11012.31359011, 0.0, 1596096000000)


def test_coinm_force_order_with_its_pair():
    r = decode(Market.COINM, "btcusd_200925@forceOrder", COINM_FORCE)
    assert r == LiquidationRecord("coinm:btcusd_200925@forceOrder", 1_700_000_000_000_123, 7, 3, 1591154240950,
                                  "SELL", "LIMIT", "IOC", 1.0, 9425.5, 9496.5, "FILLED", 1.0, 1.0, 1591154240949, 0)


@pytest.mark.parametrize("name, data, detail, reason", [
    # a pair's array holds every contract of the pair: another contract's element is not this stream's
    ("btcusd_201225@markPrice", COINM_PERP_MARK, "payload symbol 'BTCUSD_PERP' is not the stream's 'BTCUSD_201225'",
     "wrong_symbol"),
    ("btcusd_201225@markPrice", {**COINM_DATED_MARK, "T": None},
     "next funding time ('T') missing or not a non-negative 64-bit integer", "bad_integer"),
    ("btcusd_200925@forceOrder", {**COINM_FORCE, "o": {**COINM_FORCE["o"], "q": "0"}},
     "quantity ('q') must be positive and finite", "out_of_range"),
])
def test_bad_coinm_mark_price_and_force_order_payloads_are_quarantined_with_their_reason(name, data, detail, reason):
    q = decode(Market.COINM, name, data)
    assert type(q) is Quarantined
    assert (q.reason, q.detail) == (reason, detail)


def test_spot_has_no_mark_price_stream_to_decode():
    assert spec("btcusdt", "markPrice", SPOT) is None and spec("btcusdt", "forceOrder", SPOT) is None
