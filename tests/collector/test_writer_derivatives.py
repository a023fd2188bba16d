"""USD-M markPrice and forceOrder frames land in ``mark_price`` and ``liquidation`` once: their
dedup key is the event time (a repeat goes to ``dropped`` with its dataset), bad ones to quarantine."""

from __future__ import annotations

import sqlite3

import orjson

from orderbook_collector.writer.thread import Writer
from orderbook_core.buffer.records import Frame, SessionOpen
from orderbook_core.streams import Market, spec

T0 = 1_700_000_000_000_000
STREAMS = [spec("btcusdt", "markPrice@1s", Market.USDM), spec("btcusdt", "forceOrder", Market.USDM)]


def mark(i: int, rate: str = "0.00010000", next_funding: int = 1_700_006_400_000) -> dict:
    return {"e": "markPriceUpdate", "E": 1_700_000_000_000 + 1000 * i, "s": "BTCUSDT", "p": f"6500{i}.5",
            "i": "65000.1", "P": "65000.2", "r": rate, "T": next_funding}


def force(i: int) -> dict:
    return {"e": "forceOrder", "E": 1_700_000_000_500 + 1000 * i, "o": {
        "s": "BTCUSDT", "S": "BUY" if i % 2 else "SELL", "o": "LIMIT", "f": "IOC", "q": "0.5", "p": "65010",
        "ap": "65005.5", "X": "FILLED", "l": "0.2", "z": "0.5", "T": 1_700_000_000_499 + 1000 * i}}


def test_mark_price_and_liquidation_rows_once_by_event_time(buffer_path):
    w = Writer(buffer_path, STREAMS, commit_interval=0.01)
    w.start()
    sid = T0
    w.submit(SessionOpen(sid, "ws://x/market/stream", "[]", sid, "usdm"))
    frames = [("btcusdt@markPrice@1s", mark(0)), ("btcusdt@forceOrder", force(0)),
              ("btcusdt@markPrice@1s", mark(1, rate="-0.00002500")), ("btcusdt@forceOrder", force(1)),
              ("btcusdt@markPrice@1s", mark(1, rate="-0.00002500")),  # a repeat (a rotation's overlap)
              ("btcusdt@markPrice@1s", mark(2, rate="", next_funding=0)),  # as a delivery contract sends it
              ("btcusdt@forceOrder", {**force(2), "o": {**force(2)["o"], "S": "HOLD"}})]
    for seq, (name, data) in enumerate(frames):
        assert w.submit(Frame(orjson.dumps({"stream": name, "data": data}).decode(), T0 + seq, sid, seq))
    assert w.stop(30)
    con = sqlite3.connect(buffer_path)
    assert con.execute("SELECT seq, event_ms, mark_price, index_price, estimated_settle_price, funding_rate, "
                       "next_funding_ms FROM mark_price ORDER BY id").fetchall() == [
        (0, 1_700_000_000_000, 65000.5, 65000.1, 65000.2, 0.0001, 1_700_006_400_000),
        (2, 1_700_000_001_000, 65001.5, 65000.1, 65000.2, -0.000025, 1_700_006_400_000),
        (5, 1_700_000_002_000, 65002.5, 65000.1, 65000.2, None, None)]
    assert con.execute("SELECT seq, event_ms, side, order_type, time_in_force, quantity, price, average_price, "
                       "status, last_filled_quantity, filled_quantity, trade_ms FROM liquidation ORDER BY id").fetchall() == [
        (1, 1_700_000_000_500, "SELL", "LIMIT", "IOC", 0.5, 65010.0, 65005.5, "FILLED", 0.2, 0.5, 1_700_000_000_499),
        (3, 1_700_000_001_500, "BUY", "LIMIT", "IOC", 0.5, 65010.0, 65005.5, "FILLED", 0.2, 0.5, 1_700_000_001_499)]
    assert con.execute("SELECT seq, dataset, update_id FROM dropped").fetchall() == [(4, "mark_price", 1_700_000_001_000)]
    assert con.execute("SELECT seq, reason, detail FROM quarantine").fetchall() == [
        (6, "bad_word", "side ('S') missing or not BUY or SELL: 'HOLD'")]
    assert dict(con.execute("SELECT dataset, rows FROM buffer_hours")) == {"mark_price": 3, "liquidation": 2}
