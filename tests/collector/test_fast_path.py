"""The batch fast path returns exactly what the strict decoder returns, frame by frame.

Literal frames of every kind on both markets, then the same frames damaged one byte at a
time (a digit, point, quote, bracket, comma, minus, letter or space inserted, deleted or
replaced at every kind of position) and shuffled into batches: ``decode_many`` must equal
``decode`` on each one, record for record and reason for reason.
"""

from __future__ import annotations

import random

import orjson
import pytest

from orderbook_core.buffer import levels
from orderbook_core.buffer.records import DepthRecord, DepthUpdateRecord, Quarantined
from orderbook_collector.feed.protocol import Decoder
from orderbook_core.streams import Market, spec

SPOT, USDM = Market.SPOT, Market.USDM
STREAMS = {
    SPOT: [spec("btcusdt", k) for k in ("depth20@100ms", "depth5", "depth@100ms", "trade", "aggTrade", "bookTicker")],
    USDM: [spec("btcusdt", k, USDM) for k in ("depth5@500ms", "depth@100ms", "trade", "aggTrade", "bookTicker",
                                              "markPrice@1s", "forceOrder")],
}


def frame(name: str, data: dict) -> str:
    return orjson.dumps({"stream": name, "data": data}).decode()


def samples(market: Market) -> list[str]:
    lv = [["65000.01000000", "0.50000000"], ["64999.99", "12"], ["100", "0.00000001"]]
    out = []
    if market is SPOT:
        out += [
            frame("btcusdt@depth20@100ms", {"lastUpdateId": 42, "bids": lv, "asks": lv[:2]}),
            frame("btcusdt@depth5", {"lastUpdateId": 43, "bids": [], "asks": lv}),
            frame("btcusdt@depth5", {"lastUpdateId": 44, "bids": lv, "asks": []}),
            frame("btcusdt@depth5", {"lastUpdateId": 45, "bids": [], "asks": []}),
            frame("btcusdt@depth@100ms", {"e": "depthUpdate", "E": 5, "s": "BTCUSDT", "U": 10, "u": 12,
                                          "b": lv, "a": [["65000.5", "0.00000000"]]}),
            frame("btcusdt@bookTicker", {"u": 9, "s": "BTCUSDT", "b": "1.5", "B": "2", "a": "1.6", "A": "0"}),
        ]
    else:
        out += [
            frame("btcusdt@depth5@500ms", {"e": "depthUpdate", "E": 9, "T": 8, "s": "BTCUSDT", "U": 10, "u": 20,
                                           "pu": 9, "b": lv, "a": lv}),
            frame("btcusdt@depth@100ms", {"e": "depthUpdate", "E": 5, "T": 4, "s": "BTCUSDT", "U": 10, "u": 12,
                                          "pu": 9, "b": [], "a": [["65000.5", "0"]]}),
            frame("btcusdt@bookTicker", {"e": "bookTicker", "E": 3, "T": 2, "u": 1, "s": "BTCUSDT", "b": "1",
                                         "B": "1", "a": "2", "A": "1"}),
            frame("btcusdt@markPrice@1s", {"e": "markPriceUpdate", "E": 7, "s": "BTCUSDT", "p": "65000.1",
                                           "i": "64999.9", "P": "64999.95", "r": "-0.00012500", "T": 28800000}),
            frame("btcusdt@forceOrder", {"e": "forceOrder", "E": 8, "o": {
                "s": "BTCUSDT", "S": "SELL", "o": "LIMIT", "f": "IOC", "q": "0.014", "p": "9910", "ap": "9910",
                "X": "FILLED", "l": "0.014", "z": "0.014", "T": 7}}),
        ]
    out += [
        frame("btcusdt@trade", {"e": "trade", "E": 2, "s": "BTCUSDT", "t": 12345, "p": "65000.01", "q": "0.001",
                                "T": 1, "m": True, "M": True}),
        frame("btcusdt@aggTrade", {"e": "aggTrade", "E": 2, "s": "BTCUSDT", "a": 5, "p": "1.5", "q": "2", "f": 100,
                                   "l": 105, "T": 1, "m": False}),
    ]
    return out


def damaged(raw: str, rng: random.Random, n: int) -> list[str]:
    out = []
    alphabet = '0123456789."[],:-e }{a'
    for _ in range(n):
        pos = rng.randrange(len(raw) + 1)
        op = rng.randrange(3)
        ch = rng.choice(alphabet)
        if op == 0:
            out.append(raw[:pos] + ch + raw[pos:])
        elif op == 1 and pos < len(raw):
            out.append(raw[:pos] + raw[pos + 1 :])
        elif pos < len(raw):
            out.append(raw[:pos] + ch + raw[pos + 1 :])
    return out


def assert_same(decoder: Decoder, raws: list[str]) -> None:
    frames = [(raw, 1_700_000_000_000_000 + i, 7, i) for i, raw in enumerate(raws)]
    got = decoder.decode_many(frames)
    want = [decoder.decode(*f) for f in frames]
    for f, g, w in zip(frames, got, want):
        assert g == w, f[0]


@pytest.mark.parametrize("market", [SPOT, USDM])
def test_plain_frames_take_the_fast_path_and_equal_the_strict_path(market):
    decoder = Decoder(STREAMS[market])
    raws = samples(market)
    frames = [(raw, 1 + i, 7, i) for i, raw in enumerate(raws)]
    out = [None] * len(frames)
    assert decoder._fast.decode_into(frames, out) == []  # every plain frame is taken
    assert out == [decoder.decode(*f) for f in frames]
    assert not any(type(r) is Quarantined for r in out)


def test_levels_are_packed_exactly():
    decoder = Decoder(STREAMS[SPOT])
    rec, = decoder.decode_many([(samples(SPOT)[0], 1, 7, 0)])
    assert type(rec) is DepthRecord
    assert levels.unpack(rec.levels, rec.n_bids) == (
        [(65000.01, 0.5), (64999.99, 12.0), (100.0, 1e-08)], [(65000.01, 0.5), (64999.99, 12.0)])
    diff, = decoder.decode_many([(samples(SPOT)[4], 1, 7, 0)])
    assert type(diff) is DepthUpdateRecord and levels.unpack(diff.levels, diff.n_bids)[1] == [(65000.5, 0.0)]


@pytest.mark.parametrize("market", [SPOT, USDM])
def test_damaged_frames_decode_as_the_strict_path_decodes_them(market):
    rng = random.Random(12)
    decoder = Decoder(STREAMS[market])
    good = samples(market)
    bad = [d for raw in good for d in damaged(raw, rng, 300)]
    mixed = good * 3 + bad
    rng.shuffle(mixed)
    for i in range(0, len(mixed), 97):  # batches mixing good and bad frames of every kind
        assert_same(decoder, mixed[i : i + 97])
    assert_same(decoder, bad)  # every damaged frame in one batch
    kinds = {type(decoder.decode(raw, 1, 7, 0)).__name__ for raw in bad}
    assert "Quarantined" in kinds and "DepthRecord" in kinds  # the damage hit both outcomes


def test_digits_outside_the_value_slots_are_not_numbers():
    decoder = Decoder(STREAMS[SPOT])
    raws = [
        '{"stream":"btcusdt@depth5","data":{"lastUpdateId":1,"bids":[1["1.5","2"]],"asks":[]}}',
        '{"stream":"btcusdt@depth5","data":{"lastUpdateId":1,"bids":[["1.5"5,"2"]],"asks":[]}}',
        '{"stream":"btcusdt@depth5","data":{"lastUpdateId":1,"bi5ds":[["1.5","2"]],"asks":[]}}',
        '{"stream":"btcusdt@depth5","data":{"lastUpdateId":1,"bids":[["1.5","2"]],"asks":[]}}7',
        '{"stream":"btcusdt@depth5","data":{"lastUpdateId":1,"bids":[["1.5",""]],"asks":[]}}',
        '{"stream":"btcusdt@depth5","data":{"lastUpdateId":1,"bids":[["0","2"]],"asks":[]}}',
        '{"stream":"btcusdt@depth5","data":{"lastUpdateId":1,"bids":[["1.5","2"]],"asks":[["01","1."]]}}',
        '{"stream":"btcusdt@depth5","data":{"lastUpdateId":1,"bids":[["1.5","2"]],"asks":[["1e3","-0"]]}}',
        '{"stream":"btcusdt@depth5","data":{"lastUpdateId":1,"bids":[["1.5","2"]],"asks":[["1.5.1","1"]]}}',
    ]
    assert_same(decoder, raws)
    got = decoder.decode_many([(r, 1, 7, i) for i, r in enumerate(raws)])
    assert [type(r).__name__ for r in got] == ["Quarantined"] * 3 + ["Quarantined", "Quarantined", "Quarantined",
                                                                        "DepthRecord", "DepthRecord", "Quarantined"]


def test_wide_values_are_counted_in_every_kind():
    decoder = Decoder(STREAMS[SPOT])
    raws = [
        '{"stream":"btcusdt@depth5","data":{"lastUpdateId":7,"bids":[["1.0000000000000001","2.00000000"]],"asks":[]}}',
        frame("btcusdt@trade", {"e": "trade", "E": 2, "s": "BTCUSDT", "t": 1, "p": "65000.0100000000001",
                                "q": "0.001", "T": 1, "m": True}),
        '{"stream":"btcusdt@depth5","data":{"lastUpdateId":8,"bids":[["1.5","2"]],"asks":[]}}',
    ]
    got = decoder.decode_many([(r, 1, 7, i) for i, r in enumerate(raws)])
    assert [r.wide_values for r in got] == [1, 1, 0]
    assert_same(decoder, raws)
