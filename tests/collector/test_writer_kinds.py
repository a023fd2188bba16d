"""Every stream kind on both markets lands in its own table, once: the dataset's dedup key
drops repeats into ``dropped`` (with the dataset), and ``buffer_hours`` tracks each dataset."""

from __future__ import annotations

import sqlite3
import time

import orjson

from orderbook_core.buffer.records import Frame, SessionOpen
from orderbook_core.streams import Market, spec
from orderbook_collector.writer.thread import Writer

T0 = 1_700_000_000_000_000
STREAMS = [
    spec("btcusdt", "trade"), spec("btcusdt", "aggTrade"), spec("btcusdt", "bookTicker"),
    spec("btcusdt", "depth@100ms"), spec("btcusdt", "depth@100ms", Market.USDM), spec("btcusdt", "depth5", Market.USDM),
]


def frame(stream: str, data: dict) -> str:
    return orjson.dumps({"stream": stream, "data": data}).decode()


def payloads(i: int) -> list[tuple[str, dict]]:
    """One message of each stream; ``i`` picks its ids, so i and i again is a repeat."""
    return [
        ("btcusdt@trade", {"e": "trade", "E": 5 + i, "s": "BTCUSDT", "t": 100 + i, "p": "65000.5", "q": "0.25",
                           "T": 4 + i, "m": bool(i % 2)}),
        ("btcusdt@aggTrade", {"e": "aggTrade", "E": 5, "s": "BTCUSDT", "a": 7 + i, "p": "65000.5", "q": "0.25",
                              "f": 100 + 2 * i, "l": 101 + 2 * i, "T": 4, "m": False}),
        ("btcusdt@bookTicker", {"u": 900 + i, "s": "BTCUSDT", "b": "65000.4", "B": "1.5", "a": "65000.6", "A": "2"}),
        ("btcusdt@depth@100ms", {"e": "depthUpdate", "E": 5, "s": "BTCUSDT", "U": 10 * i + 1, "u": 10 * i + 10,
                                 "b": [["65000.4", "0"]], "a": [["65000.6", "3"]]}),
        ("usdm:btcusdt@depth@100ms", {"e": "depthUpdate", "E": 5, "T": 4, "s": "BTCUSDT", "U": 10 * i + 1,
                                      "u": 10 * i + 10, "pu": 10 * i, "b": [], "a": [["65001", "1"]]}),
        ("usdm:btcusdt@depth5", {"e": "depthUpdate", "E": 5, "T": 4, "s": "BTCUSDT", "U": 10 * i + 1, "u": 10 * i + 10,
                                 "pu": 10 * i, "b": [["65000", "1"]], "a": [["65001", "1"]]}),
    ]


def test_each_kind_has_its_table_and_its_dedup_key(buffer_path):
    w = Writer(buffer_path, STREAMS, commit_interval=0.01)
    w.start()
    spot, usdm = T0, T0 + 1
    w.submit(SessionOpen(spot, "ws://x/stream", "[]", spot))
    w.submit(SessionOpen(usdm, "ws://x/public/stream", "[]", usdm, "usdm"))
    seqs = {spot: 0, usdm: 0}
    for i in (0, 1, 1):  # the second 1 repeats every dedup key
        for key, data in payloads(i):
            sid = usdm if key.startswith("usdm:") else spot
            name = key.split(":", 1)[-1]  # both markets have a btcusdt@depth@100ms
            assert w.submit(Frame(frame(name, data), T0 + seqs[sid], sid, seqs[sid]))
            seqs[sid] += 1
    assert w.stop(30)
    con = sqlite3.connect(buffer_path)
    counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
              for t in ("trade", "agg_trade", "book_ticker", "depth_update", "depth_snapshot")}
    assert counts == {"trade": 2, "agg_trade": 2, "book_ticker": 2, "depth_update": 4, "depth_snapshot": 2}
    assert con.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 0
    dropped = con.execute("SELECT session_id, dataset, update_id FROM dropped ORDER BY session_id, seq").fetchall()
    assert dropped == [(spot, "trade", 101), (spot, "agg_trade", 8), (spot, "book_ticker", 901),
                       (spot, "depth_update", 20), (usdm, "depth_update", 20), (usdm, "depth_snapshot", 20)]
    assert con.execute("SELECT session_id, market, messages, duplicates FROM sessions ORDER BY 1").fetchall() == [
        (spot, "spot", 8, 4), (usdm, "usdm", 4, 2)]
    keys = dict(con.execute("SELECT name, market FROM streams"))
    assert keys["btcusdt@depth@100ms"] == "spot" and keys["usdm:btcusdt@depth@100ms"] == "usdm"
    hours = dict(con.execute("SELECT dataset, rows FROM buffer_hours"))
    assert hours == counts
    t = con.execute("SELECT trade_id, price, qty, is_buyer_maker, trade_ms FROM trade ORDER BY trade_id").fetchall()
    assert t == [(100, 65000.5, 0.25, 0, 4), (101, 65000.5, 0.25, 1, 5)]
    u = con.execute("SELECT first_update_id, last_update_id, prev_update_id, transaction_ms FROM depth_update "
                    "ORDER BY stream_id, last_update_id").fetchall()
    assert u == [(1, 10, None, None), (11, 20, None, None), (1, 10, 0, 4), (11, 20, 10, 4)]
    snap = con.execute("SELECT update_id, first_update_id, prev_update_id, event_ms FROM depth_snapshot").fetchall()
    assert snap == [(10, 1, 0, 5), (20, 11, 10, 5)]
