"""``orderbook replay`` serves archived USD-M mark prices and liquidations on ``/market`` as
Binance's ``markPriceUpdate`` and ``forceOrder`` payloads (rebuilt from the datasets' spec), and
the round trip holds: each frame decoded by the collector's decoder gives back the archived row."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from websockets.asyncio.client import connect

from orderbook_assets.analytics.replay import ReplayServer
from orderbook_assets.archive import datasets as ds
from orderbook_core.buffer.hours import hour_folder
from orderbook_core.payloads import decode_payload
from orderbook_core.streams import Market, parse_stream_name

H = 1_795_514_400_000_000
MS = 1_000
DEADLINE = 30.0
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MARK, FORCE = "btcusdt@markPrice@1s", "btcusdt@forceOrder"
DATED = "btcusdt261225@markPrice"  # a delivery contract: no funding rate, no next funding time


def ts(us: int | None):
    return None if us is None else pa.scalar(us, pa.timestamp("us", tz="UTC")).as_py()


def common(stream: str, recv_us: int, seq: int) -> dict:
    return {"market": "usdm", "symbol": stream.split("@")[0].upper(), "stream": stream, "recv_time": ts(recv_us),
            "session_id": 1, "seq": seq}


MARKS = [
    {**common(MARK, H + 100 * MS, 0), "event_time": ts(H + 99 * MS), "mark_price": 65000.12, "index_price": 64999.5,
     "estimated_settle_price": 64999.75, "funding_rate": 0.00038167, "next_funding_time": ts(H + 8 * 3600 * 10**6)},
    {**common(MARK, H + 1100 * MS, 2), "event_time": ts(H + 1099 * MS), "mark_price": 65001.0, "index_price": 65000.0,
     "estimated_settle_price": 65000.0, "funding_rate": -0.000125, "next_funding_time": ts(H + 8 * 3600 * 10**6)},
    {**common(DATED, H + 1200 * MS, 3), "event_time": ts(H + 1199 * MS), "mark_price": 66000.5, "index_price": 65000.0,
     "estimated_settle_price": 65000.0, "funding_rate": None, "next_funding_time": None},
]
LIQUIDATIONS = [
    {**common(FORCE, H + 600 * MS, 1), "event_time": ts(H + 598 * MS), "side": "SELL", "order_type": "LIMIT",
     "time_in_force": "IOC", "orig_qty": 0.014, "price": 9910.0, "avg_price": 9910.5, "status": "FILLED",
     "last_filled_qty": 0.004, "filled_accum_qty": 0.014, "trade_time": ts(H + 597 * MS)},
]


def archive(tmp_path) -> None:
    for dataset, rows in ((ds.MARK_PRICE, MARKS), (ds.LIQUIDATION, LIQUIDATIONS)):
        folder = tmp_path / dataset / hour_folder(H)
        folder.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=ds.DATASETS[dataset].schema), folder / "part-0001.parquet")


def test_mark_prices_and_liquidations_replay_as_binance_sends_them_and_decode_back(tmp_path):
    archive(tmp_path)

    async def scenario():
        async with ReplayServer(str(tmp_path), H, H + 2_000 * MS, speed=0, port=0, wait_for_subscribers=True) as r:
            async with connect(f"{r.ws_url}/market/stream?streams={MARK}/{FORCE}/{DATED}") as ws:
                return [orjson.loads(await asyncio.wait_for(ws.recv(), DEADLINE)) for _ in range(4)]

    frames = asyncio.run(scenario())
    assert [f["stream"] for f in frames] == [MARK, FORCE, MARK, DATED]  # in receive order
    # Binance's shapes (docs/binance-api.md section 8), key order included
    assert frames[0]["data"] == {"e": "markPriceUpdate", "E": (H + 99 * MS) // MS, "s": "BTCUSDT",
                                 "p": "65000.12", "i": "64999.5", "P": "64999.75", "r": "0.00038167",
                                 "T": (H + 8 * 3600 * 10**6) // MS}
    assert list(frames[0]["data"]) == ["e", "E", "s", "p", "i", "P", "r", "T"]
    assert frames[1]["data"] == {"e": "forceOrder", "E": (H + 598 * MS) // MS, "o": {
        "s": "BTCUSDT", "S": "SELL", "o": "LIMIT", "f": "IOC", "q": "0.014", "p": "9910", "ap": "9910.5",
        "X": "FILLED", "l": "0.004", "z": "0.014", "T": (H + 597 * MS) // MS}}
    assert (frames[3]["data"]["r"], frames[3]["data"]["T"]) == ("", 0)  # as Binance sends a delivery contract
    # the round trip: decoded as the collector decodes, each frame is its archived row again
    archived = [MARKS[0], LIQUIDATIONS[0], MARKS[1], MARKS[2]]
    for f, row in zip(frames, archived):
        spec = parse_stream_name(f["stream"], Market.USDM)
        rec = decode_payload(spec, f["data"], 0, 1, row["seq"], 0)
        got = {c: getattr(rec, c) for c in rec._fields if c not in ("stream", "recv_us", "session_id", "seq",
                                                                    "wide_values")}
        want = {c: v for c, v in row.items() if c not in common(f["stream"], 0, 0)}
        ms = {"event_time": "event_ms", "trade_time": "trade_ms", "next_funding_time": "next_funding_ms"}
        named = {"orig_qty": "quantity", "avg_price": "average_price", "last_filled_qty": "last_filled_quantity",
                 "filled_accum_qty": "filled_quantity"}  # dataset column -> record field
        want = {ms.get(c, named.get(c, c)): (None if v is None else (v - EPOCH) // timedelta(milliseconds=1))
                if c in ms else v for c, v in want.items()}
        assert got == want, f["stream"]
