"""The sans-I/O decoder, fed literal frames."""

from __future__ import annotations

import orjson
import pytest

from orderbook_core.errors import ConfigError
from orderbook_collector.feed.protocol import (
    ControlReply,
    Decoder,
    DepthRecord,
    Quarantined,
    ServerShutdown,
    build_streams,
    unpack_levels,
)

STREAM = "btcusdt@depth20@100ms"


@pytest.fixture
def decoder():
    return Decoder(build_streams(["btcusdt", "ethusdt"], ["depth20@100ms", "depth5"]))


def test_depth_frame_decodes_to_exact_levels(decoder, frame):
    rec = decoder.decode(frame(40_000_000_123), 1_700_000_000_000_001, 7, 3)
    assert isinstance(rec, DepthRecord)
    assert (rec.stream, rec.update_id, rec.session_id, rec.seq, rec.n_bids) == (STREAM, 40_000_000_123, 7, 3, 20)
    bids, asks = unpack_levels(rec.levels, rec.n_bids)
    sent = orjson.loads(frame(1))["data"]
    assert bids == [(float(p), float(q)) for p, q in sent["bids"]]
    assert asks == [(float(p), float(q)) for p, q in sent["asks"]]
    assert len(rec.levels) == 40 * 16


def test_peek_routes_subscribed_data_without_parsing(decoder, frame):
    assert decoder.peek_stream(frame(1)) == STREAM
    assert decoder.peek_stream(frame(1, stream="xrpusdt@depth20@100ms")) is None
    assert decoder.peek_stream(b"binary") is None
    assert decoder.peek_stream('{"result":null,"id":1}') is None


def test_other_key_order_is_still_valid_data(decoder):
    raw = '{"data":{"bids":[["1.5","2"]],"asks":[["1.6","3"]],"lastUpdateId":5},"stream":"btcusdt@depth5"}'
    assert decoder.peek_stream(raw) is None
    rec = decoder.decode(raw, 1, 1, 0)
    assert isinstance(rec, DepthRecord) and rec.update_id == 5


@pytest.mark.parametrize(
    "raw, reason",
    [
        ("{\"stream\": garbage", "not_json"),
        (b"\x00\x01binary", "binary"),
        ('{"stream":"btcusdt@depth20@100ms","data":{"lastUpdateId":"12","bids":[],"asks":[]}}', "bad_integer"),
        ('{"stream":"btcusdt@depth20@100ms","data":{"bids":[],"asks":[]}}', "bad_integer"),
        ('{"stream":"btcusdt@depth20@100ms","data":{"lastUpdateId":1,"bids":[["1","2","3"]],"asks":[]}}', "bad_levels"),
        ('{"stream":"btcusdt@depth20@100ms","data":{"lastUpdateId":1,"bids":[["abc","2"]],"asks":[]}}', "bad_levels"),
        ('{"stream":"btcusdt@depth20@100ms","data":{"lastUpdateId":1,"bids":[["1","-2"]],"asks":[]}}', "out_of_range"),
        ('{"stream":"btcusdt@depth20@100ms","data":{"lastUpdateId":1,"bids":[["nan","2"]],"asks":[]}}', "out_of_range"),
        ('{"stream":"btcusdt@depth20@100ms","data":{"lastUpdateId":1,"bids":"x","asks":[]}}', "bad_levels"),
        ('{"stream":"dogeusdt@depth20@100ms","data":{"lastUpdateId":1,"bids":[],"asks":[]}}', "unknown_stream"),
        ('{"error":{"code":2,"msg":"Invalid request: invalid stream"},"id":null}', "error_reply"),
        ("[1,2,3]", "not_object"),
        ('{"foo":1}', "not_combined"),
    ],
)
def test_bad_frames_are_quarantined_with_reason_and_raw_bytes(decoder, raw, reason):
    rec = decoder.decode(raw, 5, 6, 7)
    assert isinstance(rec, Quarantined)
    assert rec.reason == reason
    assert rec.raw == (raw if isinstance(raw, bytes) else raw.encode())
    assert (rec.recv_us, rec.session_id, rec.seq) == (5, 6, 7)


def test_oversize_frame_is_quarantined_unparsed(frame):
    d = Decoder(build_streams(["btcusdt"], ["depth20@100ms"]), max_frame_bytes=100)
    rec = d.decode(frame(1), 1, 1, 0)
    assert isinstance(rec, Quarantined) and rec.reason == "oversize"


def test_too_many_levels_is_quarantined(decoder, frame):
    rec = decoder.decode(frame(1, stream="btcusdt@depth5", n=6), 1, 1, 0)
    assert isinstance(rec, Quarantined) and (rec.reason, rec.detail) == ("too_many_levels", "more than 5 levels on a side")


def test_control_and_shutdown_frames(decoder):
    assert decoder.decode('{"result":null,"id":3}', 1, 1, 0) == ControlReply(3, None, None)
    shutdown = '{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1700000000000}}'
    assert decoder.decode(shutdown, 1, 1, 0) == ServerShutdown(1700000000000)


def test_values_beyond_double_precision_are_counted(decoder):
    raw = '{"stream":"btcusdt@depth5","data":{"lastUpdateId":1,"bids":[["1.0000000000000001","2.00000000"]],"asks":[]}}'
    rec = decoder.decode(raw, 1, 1, 0)
    assert isinstance(rec, DepthRecord) and rec.wide_values == 1
    # Trailing zeros are not significant: Binance's 8-decimal padding never counts.
    assert decoder.decode(raw.replace("1.0000000000000001", "12345.12345678000000"), 1, 1, 0).wide_values == 0


def test_stream_kinds():
    assert [(x.levels, x.cadence_us) for x in build_streams(["btcusdt"], ["depth20@100ms", "depth5"])] == [
        (20, 100_000), (5, 1_000_000)]
    assert [x.type.dataset for x in build_streams(["btcusdt"], ["trade", "depth@100ms"])] == ["trade", "depth_update"]
    with pytest.raises(ConfigError, match="not a spot stream kind"):
        build_streams(["btcusdt"], ["depth7"])


def test_batch_decode_equals_one_by_one_decode_for_good_and_bad_frames(decoder, frame):
    good = [(frame(100 + i, mid=65000 + i), 10 + i, 1, i) for i in range(50)]
    assert decoder.decode_many(good) == [decoder.decode(*f) for f in good]
    mixed = good[:10] + [('{"stream": garbage', 99, 1, 50), (b"\x00", 100, 1, 51)] + good[10:]
    got = decoder.decode_many(mixed)
    assert got == [decoder.decode(*f) for f in mixed]
    assert [type(r).__name__ for r in got[10:12]] == ["Quarantined", "Quarantined"]


def test_batch_decode_counts_wide_values_like_the_strict_path(decoder):
    wide = '{"stream":"btcusdt@depth5","data":{"lastUpdateId":7,"bids":[["1.0000000000000001","2.00000000"]],"asks":[]}}'
    plain = '{"stream":"btcusdt@depth5","data":{"lastUpdateId":8,"bids":[["1.5","2"]],"asks":[]}}'
    got = decoder.decode_many([(plain, 1, 1, 0), (wide, 2, 1, 1)])
    assert [r.wide_values for r in got] == [0, 1]
