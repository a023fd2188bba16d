"""Every quarantine reason is reachable by a literal malformed input, stored as its enum value
(with the detail beside it) and counted under that value; the docs list every reason."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from orderbook_core.errors import FrameError, QuarantineReason as Q
from orderbook_core.payloads import decode_rest_depth
from orderbook_core.buffer.records import Frame, Quarantined, SessionOpen
from orderbook_collector.feed.protocol import Decoder, build_streams
from orderbook_core.streams import Market
from orderbook_collector.metrics import QUARANTINE_REASONS
from orderbook_collector.writer.thread import Writer

DOCS = Path(__file__).resolve().parents[2] / "docs" / "collector.md"
SPOT = build_streams(["btcusdt"], ["depth5", "depth@100ms", "trade", "aggTrade"])
D5 = '{"stream":"btcusdt@depth5","data":%s}'
DIFF = '{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT",%s}}'
TRADE = '{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":1,"T":1,%s}}'
#: The liquidation reasons need a USD-M forceOrder stream.
USDM = build_streams(["btcusdt"], ["forceOrder"], Market.USDM)
FORCE = '{"stream":"btcusdt@forceOrder","data":{"e":"forceOrder","E":1,"o":%s}}'
ORDER = '{"s":"BTCUSDT","S":%s,"o":"LIMIT","f":"IOC","q":"1","p":"1","ap":"1","X":"FILLED","l":"1","z":"1","T":1}'

#: One literal frame per reason the decoder gives, and a word its detail must hold.
FRAMES = {
    Q.BINARY: (b"\x00\x01binary", "bytes"),
    Q.NOT_JSON: ('{"stream": garbage', ""),
    Q.NOT_OBJECT: ("[1,2,3]", "list"),
    Q.ERROR_REPLY: ('{"error":{"code":2,"msg":"Invalid request"},"id":null}', "Invalid request"),
    Q.NOT_COMBINED: ('{"foo":1}', "'stream'"),
    Q.UNKNOWN_STREAM: ('{"stream":"dogeusdt@depth5","data":{}}', "dogeusdt@depth5"),
    Q.WRONG_EVENT: (DIFF.replace('"depthUpdate"', '"trade"') % '"U":1,"u":2,"b":[],"a":[]', "'trade'"),
    Q.WRONG_SYMBOL: (DIFF.replace('"BTCUSDT"', '"ETHUSDT"') % '"U":1,"u":2,"b":[],"a":[]', "'ETHUSDT'"),
    Q.BAD_INTEGER: (D5 % '{"lastUpdateId":"12","bids":[],"asks":[]}', "'lastUpdateId'"),
    Q.BAD_DECIMAL: (TRADE % '"p":1.5,"q":"1","m":true', "'p'"),
    Q.BAD_BOOLEAN: (TRADE % '"p":"1.5","q":"1","m":1', "'m'"),
    Q.OUT_OF_RANGE: (D5 % '{"lastUpdateId":1,"bids":[["1","-2"]],"asks":[]}', "negative"),
    Q.IDS_REVERSED: (DIFF % '"U":3,"u":2,"b":[],"a":[]', "after the last"),
    Q.BAD_LEVELS: (D5 % '{"lastUpdateId":1,"bids":[["1","2","3"]],"asks":[]}', "pairs"),
    Q.TOO_MANY_LEVELS: (D5 % ('{"lastUpdateId":1,"bids":[%s],"asks":[]}' % ",".join(['["1","1"]'] * 6)), "5 levels"),
    Q.BAD_WORD: (FORCE % (ORDER % '"LONG"'), "'S'"),
    Q.BAD_ORDER: (FORCE % "[]", "'o'"),
}


@pytest.mark.parametrize("reason", list(FRAMES), ids=str)
def test_each_reason_comes_from_a_literal_malformed_frame(reason):
    raw, word = FRAMES[reason]
    rec = Decoder(USDM if reason in (Q.BAD_WORD, Q.BAD_ORDER) else SPOT).decode(raw, 5, 6, 7)
    assert type(rec) is Quarantined
    assert (rec.reason, type(rec.reason)) == (reason.value, str)  # a plain string: it crosses the spill
    assert word in rec.detail
    assert rec.raw == (raw if isinstance(raw, bytes) else raw.encode())


def test_an_oversize_frame_is_quarantined_unparsed():
    rec = Decoder(SPOT, max_frame_bytes=10).decode('{"stream":"btcusdt@depth5"}', 1, 1, 0)
    assert (rec.reason, rec.detail) == (Q.OVERSIZE.value, "27 characters > 10")


def test_a_rest_answer_is_refused_with_the_same_reasons():
    with pytest.raises(FrameError) as err:
        decode_rest_depth(SPOT[1], b'{"lastUpdateId":5,"bids":[["1","1"],["2","1"]],"asks":[]}', 1, "gap", 1)
    assert (err.value.reason, err.value.detail) == (Q.TOO_MANY_LEVELS, "more than 1 levels on a side")
    with pytest.raises(FrameError) as err:
        decode_rest_depth(SPOT[1], b"<html>502 Bad Gateway</html>", 1, "gap", 1)
    assert err.value.reason is Q.NOT_JSON


def test_the_writer_stores_and_counts_the_reason_value_and_keeps_the_detail(buffer_path):
    """A data-looking frame that decodes to a control message is UNEXPECTED, the one reason
    the writer gives itself; a decoder's reason goes through the same way."""
    w = Writer(buffer_path, SPOT, commit_interval=0.01)
    w.start()
    w.submit(SessionOpen(1, "ws://x", "[]", 1))
    w.submit(Frame('{"stream":"btcusdt@depth5","data":{"e":"serverShutdown","E":1}}', 10, 1, 0))
    w.submit(Frame(FRAMES[Q.BAD_BOOLEAN][0], 11, 1, 1))
    assert w.stop()
    conn = sqlite3.connect(buffer_path)
    try:
        stored = conn.execute("SELECT seq, reason, detail FROM quarantine ORDER BY seq").fetchall()
    finally:
        conn.close()
    assert stored == [(0, "unexpected", "ServerShutdown"), (1, "bad_boolean", "buyer is maker ('m') missing or not true/false")]
    assert {r: n for r, n in w.metrics.quarantined.items() if n} == {"unexpected": 1, "bad_boolean": 1}


def test_every_reason_is_reachable_and_a_metric_series_from_the_start():
    assert set(FRAMES) | {Q.OVERSIZE, Q.UNEXPECTED} == set(Q)
    assert QUARANTINE_REASONS == tuple(r.value for r in Q)


def test_the_collector_docs_list_every_reason_and_no_other():
    text = DOCS.read_text()
    table = text[text.index("<!-- quarantine reasons -->"):text.index("<!-- /quarantine reasons -->")]
    assert re.findall(r"^\| `([a-z_]+)` \|", table, re.M) == [r.value for r in Q]
