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
