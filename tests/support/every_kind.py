"""A buffer holding every stream dataset on spot and USD-M, and what the archive must hold for it.

:func:`fill` stores, for one hour, diff depth, partial depth, trades, aggTrades and bookTicker
(and on USD-M mark prices and liquidations)
through the collector's writer function (:func:`store_records`), and REST snapshots,
``depth_sync`` and ``trade_gap`` rows with SQL as the collector's schema step 3 defines them
(the writer path for those records is another branch's work). It returns the rows expected in
each dataset, in the archive's columns, so tests compare archived values with what went in.

The data is continuous except where :class:`Defects` plants something, and holds, as real data
would, one recorded diff-depth break (a jump of U with its ``depth_sync`` 'break' and 'synced'
rows and a REST snapshot) and one recorded trade-id gap (with its ``trade_gap`` row).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from orderbook_core import buffer
from orderbook_core.buffer.records import (AggTradeRecord, BookTickerRecord, DepthRecord, DepthUpdateRecord,
                                                LiquidationRecord, MarkPriceRecord, OpenInterestRecord, SessionOpen, TradeRecord)
from orderbook_collector.writer.thread import store_records

SPOT, USDM = "spot", "usdm"


@dataclass
class Defects:
    """What to plant (each off by default)."""

    unrecorded_break: bool = False  # a diff event skipped with no depth_sync row
    unrecorded_trade_gap: bool = False  # trade ids skipped with no trade_gap row
    crossed_ticker: bool = False  # one bookTicker with bid >= ask
    backwards_ticker: bool = False  # a bookTicker update id lower than the one before, same session


def _ts(us: int | None):
    return None if us is None else datetime.fromtimestamp(us / 1e6, tz=timezone.utc)


def _levels(bids, asks):
    return [{"price": p, "qty": q} for p, q in bids], [{"price": p, "qty": q} for p, q in asks]


def _blob(bids, asks) -> bytes:
    return np.array(bids + asks, dtype="<f8").tobytes()


class Streams:
    """The streams of one market, registered in the buffer as the collector does (``usdm:`` keys)."""

    def __init__(self, conn, market: str, symbol: str, kinds: list[str]):
        self.market, self.symbol = market, symbol
        prefix = "" if market == SPOT else f"{market}:"
        self.name = {k: f"{symbol}@{k}" for k in kinds}
        self.key = {k: prefix + n for k, n in self.name.items()}
        self.ids = buffer.stream_ids(conn, [(self.key[k], symbol, k, market) for k in kinds])

    def common(self, kind: str, recv_us: int, session: int | None, seq: int | None) -> dict:
        return {"market": self.market, "symbol": self.symbol.upper(), "stream": self.name[kind],
                "recv_time": _ts(recv_us), "session_id": session, "seq": seq}


def fill(conn, hour_us: int, n: int = 40, *, defects: Defects = Defects(), offset_us: int = 1_000_000,
         first_trade: int = 5_000, session_base: int = 0, seq0: int = 0,
         first_update: int = 1_000_000) -> dict[str, list[dict]]:
    """Store ``n`` events of each kind per market from ``hour_us + offset_us``; return the expected
    archive rows per dataset (column → value, times as UTC datetimes)."""
    out: dict[str, list[dict]] = {d: [] for d in
                                  ("depth_snapshot", "depth_update", "depth_rest_snapshot", "trade", "agg_trade",
                                   "book_ticker", "mark_price", "liquidation", "open_interest")}
    spot = Streams(conn, SPOT, "btcusdt", ["depth@100ms", "depth20@100ms", "trade", "aggTrade", "bookTicker"])
    usdm = Streams(conn, USDM, "btcusdt", ["depth@100ms", "depth5@100ms", "bookTicker", "markPrice@1s", "forceOrder"])
    sessions = {SPOT: hour_us + offset_us + session_base, USDM: hour_us + offset_us + session_base + 1}
    store_records(conn, {**spot.ids, **usdm.ids}, [], ops=[
        SessionOpen(sessions[SPOT], "wss://spot", json.dumps(list(spot.name.values())), sessions[SPOT], SPOT),
        SessionOpen(sessions[USDM], "wss://usdm", json.dumps(list(usdm.name.values())), sessions[USDM], USDM),
    ])
    records, polled = [], []
    oi_key = f"{USDM}:btcusdt@openInterest"  # the polled series, as the collector's writer registers it
    oi_ids = buffer.stream_ids(conn, [(oi_key, "btcusdt", "openInterest", USDM)])
    seq = {SPOT: seq0, USDM: seq0}
    rest_rows, sync_rows, gap_rows = [], [], []

    def next_seq(market):
        seq[market] += 1
        return seq[market] - 1

    u = {SPOT: first_update, USDM: first_update + 6_000_000}
    trade_id, agg_id = first_trade, first_trade // 2
    for i in range(n):
        t0 = hour_us + offset_us + i * 100_000
        ms = t0 // 1000
        mid = 100.0 + (i % 7) * 0.01
        bids, asks = [(round(mid - 0.01 * (k + 1), 2), 1.0 + k) for k in range(3)], \
                     [(round(mid + 0.01 * (k + 1), 2), 2.0 + k) for k in range(3)]
        for s in (spot, usdm):
            m = s.market
            # diff depth: spot continues with U = u + 1, USD-M with pu = u
            first = u[m] + 1
            skip = i == n // 2 and (m == SPOT or defects.unrecorded_break and m == USDM)
            if skip:
                first += 10  # ten update ids never received
            last = first + 2
            prev = u[m] if m == USDM else None
            if skip and m == USDM:
                prev = u[m] + 10  # pu continues an event we never got
            sq = next_seq(m)
            rec = DepthUpdateRecord(s.key["depth@100ms"], t0 + 1, sessions[m], sq, ms, ms - 1 if m == USDM else None,
                                    first, last, prev, len(bids), _blob(bids, asks), 0)
            records.append(rec)
            b, a = _levels(bids, asks)
            out["depth_update"].append({**s.common("depth@100ms", t0 + 1, sessions[m], sq),
                                        "event_time": _ts(ms * 1000), "transaction_time": _ts((ms - 1) * 1000) if m == USDM else None,
                                        "first_update_id": first, "last_update_id": last, "prev_update_id": prev,
                                        "bids": b, "asks": a})
            if skip and m == SPOT:  # recorded: the break, a REST snapshot, synced again
                sid = s.ids[s.key["depth@100ms"]]
                sync_rows.append((sid, sessions[m], t0 + 1, "break", "gap", u[m], ms - 100, first, last, prev, ms, None))
                rest_rows.append((sid, m, s.symbol.upper(), t0 + 50, last, len(bids), _blob(bids, asks), "gap", None, None))
                out["depth_rest_snapshot"].append({**s.common("depth@100ms", t0 + 50, None, None),
                                                   "last_update_id": last, "bids": b, "asks": a, "reason": "gap",
                                                   "event_time": None, "transaction_time": None})
                sync_rows.append((sid, sessions[m], t0 + 60, "synced", "snapshot", None, None, first, last, prev, ms, last))
            u[m] = last
            # partial depth
            kind = "depth20@100ms" if m == SPOT else "depth5@100ms"
            sq = next_seq(m)
            usdm_fields = (ms, ms - 1, last - 2, u[m] - 3) if m == USDM else (None, None, None, None)
            records.append(DepthRecord(s.key[kind], t0 + 2, sessions[m], sq, last, len(bids), _blob(bids, asks), 0,
                                       *usdm_fields))
            out["depth_snapshot"].append({**s.common(kind, t0 + 2, sessions[m], sq), "last_update_id": last,
                                          "bids": b, "asks": a,
                                          "event_time": _ts(usdm_fields[0] * 1000) if m == USDM else None,
                                          "transaction_time": _ts(usdm_fields[1] * 1000) if m == USDM else None,
                                          "first_update_id": usdm_fields[2], "prev_update_id": usdm_fields[3]})
            # bookTicker
            sq = next_seq(m)
            bb, ba = bids[0][0], asks[0][0]
            if defects.crossed_ticker and m == SPOT and i == 3:
                bb, ba = ba, bb
            tid = last
            if defects.backwards_ticker and m == SPOT and i == 5:
                tid = 10  # far below the previous ticker's update id
            times = (ms, ms - 1) if m == USDM else (None, None)
            records.append(BookTickerRecord(s.key["bookTicker"], t0 + 3, sessions[m], sq, tid, bb, 1.5, ba, 2.5, *times, 0))
            out["book_ticker"].append({**s.common("bookTicker", t0 + 3, sessions[m], sq), "update_id": tid,
                                       "best_bid": bb, "best_bid_qty": 1.5, "best_ask": ba, "best_ask_qty": 2.5,
                                       "event_time": _ts(times[0] * 1000) if m == USDM else None,
                                       "transaction_time": _ts(times[1] * 1000) if m == USDM else None})
        # USD-M mark price (the mark near the book's mid) and, every other event, a liquidation
        sq = next_seq(USDM)
        rate = (i % 5 - 2) * 1e-5  # signed
        funding_ms = (ms // 28_800_000 + 1) * 28_800_000
        records.append(MarkPriceRecord(usdm.key["markPrice@1s"], t0 + 6, sessions[USDM], sq, ms, mid, mid - 0.01,
                                       mid - 0.01, rate, funding_ms, 0))
        out["mark_price"].append({**usdm.common("markPrice@1s", t0 + 6, sessions[USDM], sq), "event_time": _ts(ms * 1000),
                                  "mark_price": mid, "index_price": mid - 0.01, "estimated_settle_price": mid - 0.01,
                                  "funding_rate": rate, "next_funding_time": _ts(funding_ms * 1000)})
        if i % 2 == 0:
            sq = next_seq(USDM)
            side = "SELL" if i % 4 == 0 else "BUY"
            records.append(LiquidationRecord(usdm.key["forceOrder"], t0 + 7, sessions[USDM], sq, ms, side, "LIMIT", "IOC",
                                             0.5, mid, mid, "FILLED", 0.5, 0.5, ms - 1, 0))
            out["liquidation"].append({**usdm.common("forceOrder", t0 + 7, sessions[USDM], sq),
                                       "event_time": _ts(ms * 1000), "side": side, "order_type": "LIMIT",
                                       "time_in_force": "IOC", "orig_qty": 0.5, "price": mid, "avg_price": mid,
                                       "status": "FILLED", "last_filled_qty": 0.5, "filled_accum_qty": 0.5,
                                       "trade_time": _ts((ms - 1) * 1000)})
        # spot trades and aggTrades
        if i == n // 3 or (defects.unrecorded_trade_gap and i == 2 * n // 3):
            if i == n // 3:
                gap_rows.append((spot.ids[spot.key["trade"]], sessions[SPOT], t0 + 4, "trade", trade_id, trade_id + 4,
                                 ms - 100, ms))
            trade_id += 5
        sq = next_seq(SPOT)
        buyer = i % 2 == 0
        records.append(TradeRecord(spot.key["trade"], t0 + 4, sessions[SPOT], sq, ms, ms - 2, trade_id, mid, 0.25, buyer, 0))
        out["trade"].append({**spot.common("trade", t0 + 4, sessions[SPOT], sq), "event_time": _ts(ms * 1000),
                             "trade_time": _ts((ms - 2) * 1000), "trade_id": trade_id, "price": mid, "qty": 0.25,
                             "is_buyer_maker": buyer})
        sq = next_seq(SPOT)
        records.append(AggTradeRecord(spot.key["aggTrade"], t0 + 5, sessions[SPOT], sq, ms, ms - 2, agg_id, trade_id,
                                      trade_id, mid, 0.25, buyer, 0))
        out["agg_trade"].append({**spot.common("aggTrade", t0 + 5, sessions[SPOT], sq), "event_time": _ts(ms * 1000),
                                 "trade_time": _ts((ms - 2) * 1000), "agg_trade_id": agg_id, "first_trade_id": trade_id,
                                 "last_trade_id": trade_id, "price": mid, "qty": 0.25, "is_buyer_maker": buyer})
        trade_id += 1
        agg_id += 1
        if i % 5 == 0:  # USD-M open interest, polled (no session): every half second
            oi = 12_000.5 + i
            polled.append(OpenInterestRecord(oi_key, USDM, "BTCUSDT", t0 + 6, ms - 3, oi))
            out["open_interest"].append({"market": USDM, "symbol": "BTCUSDT", "stream": "btcusdt@openInterest",
                                         "recv_time": _ts(t0 + 6), "session_id": None, "seq": None,
                                         "time": _ts((ms - 3) * 1000), "open_interest": oi})
    store_records(conn, {**spot.ids, **usdm.ids, **oi_ids}, records, others=polled)
    with buffer.transaction(conn):
        conn.executemany(
            "INSERT INTO depth_rest_snapshot (stream_id, market, symbol, recv_us, last_update_id, n_bids, levels, reason, "
            "event_ms, transaction_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rest_rows)
        conn.executemany(
            "INSERT INTO depth_sync (stream_id, session_id, recv_us, event, reason, before_update_id, before_event_ms, "
            "after_first_update_id, after_last_update_id, after_prev_update_id, after_event_ms, snapshot_update_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", sync_rows)
        conn.executemany(
            "INSERT INTO trade_gap (stream_id, session_id, recv_us, dataset, first_missing_id, last_missing_id, "
            "before_event_ms, after_event_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", gap_rows)
    return out
