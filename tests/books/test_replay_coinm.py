"""``orderbook replay`` serves archived COIN-M diff depth, mark prices and liquidations under
``/dstream`` (unrouted, as ``streams.COINM_ROUTED`` says) and its REST depth under
``/dapi/v1/depth``, in COIN-M's payload shapes; and the round trip holds: each frame decoded by
the collector's decoder is its archived row again.

A USD-M mark price of the same hour is archived beside them: it goes to the ``/market``
connection only, and no COIN-M row goes there (the market column keeps them apart).
"""

from __future__ import annotations

import asyncio
import urllib.request
from datetime import datetime, timedelta, timezone

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from websockets.asyncio.client import connect

from orderbook_assets.analytics.replay import ReplayServer
from orderbook_assets.archive import datasets as ds
from orderbook_core import kinds
from orderbook_core.buffer import levels
from orderbook_core.buffer.hours import hour_folder
from orderbook_core.payloads import decode_payload, decode_rest_depth
from orderbook_core.streams import Market, parse_stream_name

H = 1_795_514_400_000_000
MS = 1_000
DEADLINE = 30.0
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
DIFF, MARK, FORCE = "btcusd_perp@depth@100ms", "btcusd_perp@markPrice@1s", "btcusd_perp@forceOrder"
DATED = "btcusd_261225@markPrice"  # a delivery contract: no funding rate, no next funding time
USDM_MARK = "btcusdt@markPrice@1s"
COINM_STREAMS = (DIFF, MARK, FORCE, DATED)


def ts(us: int | None):
    return None if us is None else pa.scalar(us, pa.timestamp("us", tz="UTC")).as_py()


def common(stream: str, recv_us: int, seq: int, market: str = "coinm") -> dict:
    return {"market": market, "symbol": stream.split("@")[0].upper(), "stream": stream, "recv_time": ts(recv_us),
            "session_id": 1, "seq": seq}


def lv(*pairs) -> list[dict]:
    return [{"price": p, "qty": q} for p, q in pairs]


FUNDING_AT = ts(H + 8 * 3600 * 10**6)
DIFFS = [
    {**common(DIFF, H + 100 * MS, 0), "event_time": ts(H + 99 * MS), "transaction_time": ts(H + 98 * MS),
     "first_update_id": 501, "last_update_id": 510, "prev_update_id": 500,
     "bids": lv((65000.1, 12.0), (64999.9, 0.0)), "asks": lv((65000.5, 3.0))},
    {**common(DIFF, H + 200 * MS, 1), "event_time": ts(H + 199 * MS), "transaction_time": ts(H + 198 * MS),
     "first_update_id": 511, "last_update_id": 515, "prev_update_id": 510,
     "bids": [], "asks": lv((65000.5, 0.0), (65001.0, 7.0))},
]
MARKS = [
    {**common(MARK, H + 150 * MS, 2), "event_time": ts(H + 149 * MS), "mark_price": 65000.3, "index_price": 64999.8,
     "estimated_settle_price": 64999.75, "funding_rate": -0.0001, "next_funding_time": FUNDING_AT},
    {**common(DATED, H + 250 * MS, 3), "event_time": ts(H + 249 * MS), "mark_price": 66100.5,
     "index_price": 64999.8, "estimated_settle_price": 65010.0, "funding_rate": None, "next_funding_time": None},
    {**common(USDM_MARK, H + 300 * MS, 0, "usdm"), "event_time": ts(H + 299 * MS), "mark_price": 65010.0,
     "index_price": 65005.0, "estimated_settle_price": 65005.0, "funding_rate": 0.0001,
     "next_funding_time": FUNDING_AT},
]
LIQUIDATIONS = [
    {**common(FORCE, H + 350 * MS, 4), "event_time": ts(H + 349 * MS), "side": "BUY", "order_type": "LIMIT",
     "time_in_force": "IOC", "orig_qty": 3.0, "price": 65020.0, "avg_price": 65001.0, "status": "FILLED",
     "last_filled_qty": 1.0, "filled_accum_qty": 3.0, "trade_time": ts(H + 348 * MS)},
]
SNAPSHOT = {"market": "coinm", "symbol": "BTCUSD_PERP", "stream": DIFF, "recv_time": ts(H + 120 * MS),
            "last_update_id": 505, "bids": lv((65000.1, 10.0), (64999.9, 4.0)), "asks": lv((65000.5, 3.0)),
            "reason": "connect", "event_time": ts(H + 119 * MS), "transaction_time": ts(H + 118 * MS)}


def archive(tmp_path) -> None:
    for dataset, rows in ((ds.DEPTH_UPDATE, DIFFS), (ds.MARK_PRICE, MARKS), (ds.LIQUIDATION, LIQUIDATIONS),
                          (ds.DEPTH_REST, [SNAPSHOT])):
        folder = tmp_path / dataset / hour_folder(H)
        folder.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=ds.DATASETS[dataset].schema), folder / "part-0001.parquet")


def ms(t) -> int:
    return (t - EPOCH) // timedelta(milliseconds=1)


def decoded(spec: kinds.DatasetSpec, record) -> dict:
    """The record's values by dataset column, as the archive holds them (times in ms, levels as dicts)."""
    out = {}
    for f in spec.fields:
        got = [getattr(record, b) for b in f.buffer]
        if f.type is kinds.Type.LEVELS:
            bids, asks = levels.unpack(got[1], got[0])
            out["bids"], out["asks"] = lv(*bids), lv(*asks)
        else:
            out[f.column] = got[0]
    return out


def archived(spec: kinds.DatasetSpec, row: dict) -> dict:
    """The row's own values (not the common columns), times in ms as the records carry them."""
    out = {}
    for f in spec.fields:
        if f.type is kinds.Type.LEVELS:
            out["bids"], out["asks"] = row["bids"], row["asks"]
        elif f.type in (kinds.Type.MS, kinds.Type.MS_NULL):
            out[f.column] = None if row[f.column] is None else ms(row[f.column])
        else:
            out[f.column] = row[f.column]
    return out


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=DEADLINE) as r:
        return r.read()


def test_coinm_depth_mark_prices_and_liquidations_replay_under_dstream_and_decode_back(tmp_path):
    archive(tmp_path)

    async def scenario():
        async with ReplayServer(str(tmp_path), H, H + 2_000 * MS, speed=0, port=0, wait_for_subscribers=True) as r:
            rest = await asyncio.to_thread(_get, f"{r.rest_url}/dapi/v1/depth?symbol=BTCUSD_PERP&limit=5")
            async with connect(f"{r.ws_url}/dstream/stream?streams={'/'.join(COINM_STREAMS)}/{USDM_MARK}") as d, \
                    connect(f"{r.ws_url}/market/stream?streams={USDM_MARK}/{MARK}") as m:
                coinm = [orjson.loads(await asyncio.wait_for(d.recv(), DEADLINE)) for _ in range(5)]
                usdm = [orjson.loads(await asyncio.wait_for(m.recv(), DEADLINE))]
                await asyncio.wait_for(r.finished.wait(), DEADLINE)
            return rest, coinm, usdm, r.sent

    rest, coinm, usdm, sent = asyncio.run(scenario())
    assert sent == 6  # each archived row went to exactly one connection: its market's
    assert [f["stream"] for f in coinm] == [DIFF, MARK, DIFF, DATED, FORCE]  # in receive order
    assert [f["stream"] for f in usdm] == [USDM_MARK]
    # COIN-M's shapes (docs/binance-api.md sections 4 and 8), key order included
    assert coinm[0]["data"] == {"e": "depthUpdate", "E": ms(DIFFS[0]["event_time"]),
                                "T": ms(DIFFS[0]["transaction_time"]), "s": "BTCUSD_PERP", "ps": "BTCUSD",
                                "U": 501, "u": 510, "pu": 500, "b": [["65000.1", "12"], ["64999.9", "0"]],
                                "a": [["65000.5", "3"]]}
    assert list(coinm[0]["data"]) == ["e", "E", "T", "s", "ps", "U", "u", "pu", "b", "a"]
    assert coinm[1]["data"] == {"e": "markPriceUpdate", "E": ms(MARKS[0]["event_time"]), "s": "BTCUSD_PERP",
                                "p": "65000.3", "P": "64999.75", "i": "64999.8", "r": "-0.0001",
                                "T": ms(FUNDING_AT)}
    assert list(coinm[1]["data"]) == ["e", "E", "s", "p", "P", "i", "r", "T"]
    assert (coinm[3]["data"]["r"], coinm[3]["data"]["T"]) == ("", 0)  # as Binance sends a delivery contract
    assert coinm[4]["data"] == {"e": "forceOrder", "E": ms(LIQUIDATIONS[0]["event_time"]), "o": {
        "s": "BTCUSD_PERP", "ps": "BTCUSD", "S": "BUY", "o": "LIMIT", "f": "IOC", "q": "3", "p": "65020",
        "ap": "65001", "X": "FILLED", "l": "1", "z": "3", "T": ms(LIQUIDATIONS[0]["trade_time"])}}
    assert list(coinm[4]["data"]["o"]) == ["s", "ps", "S", "o", "f", "q", "p", "ap", "X", "l", "z", "T"]
    assert list(usdm[0]["data"]) == ["e", "E", "s", "p", "i", "P", "r", "T"]  # USD-M's own order

    # the round trip: decoded as the collector decodes, each frame is its archived row again
    rows = [(Market.COINM, DIFFS[0], ds.DEPTH_UPDATE), (Market.COINM, MARKS[0], ds.MARK_PRICE),
            (Market.COINM, DIFFS[1], ds.DEPTH_UPDATE), (Market.COINM, MARKS[1], ds.MARK_PRICE),
            (Market.COINM, LIQUIDATIONS[0], ds.LIQUIDATION)]
    for f, (market, row, dataset) in zip(coinm + usdm, rows + [(Market.USDM, MARKS[2], ds.MARK_PRICE)]):
        spec = kinds.SPECS[dataset]
        record = decode_payload(parse_stream_name(f["stream"], market), f["data"], 0, 1, row["seq"], 0)
        assert type(record) is spec.record, f["stream"]
        assert decoded(spec, record) == archived(spec, row), f["stream"]

    # REST depth from /dapi: the archived snapshot, cut to the limit, read back by the collector's decoder
    answer = orjson.loads(rest)
    assert (answer["lastUpdateId"], answer["E"], answer["T"]) == (505, ms(SNAPSHOT["event_time"]),
                                                                   ms(SNAPSHOT["transaction_time"]))
    snap = decode_rest_depth(parse_stream_name(DIFF, Market.COINM), rest, 0, "connect", 5)
    assert (snap.market, snap.symbol, snap.last_update_id) == ("coinm", "BTCUSD_PERP", 505)
    assert levels.unpack(snap.levels, snap.n_bids) == ([(65000.1, 10.0), (64999.9, 4.0)], [(65000.5, 3.0)])
