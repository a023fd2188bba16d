"""``orderbook replay`` serving a small archive: the archived messages in order with equal
values over Binance's combined-stream protocol, REST depth, and a gap as a disconnect."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError

from orderbook_core.buffer.hours import hour_folder

from orderbook_assets.analytics.replay import ReplayError, ReplayServer, dec
from support.book_tables import Part, Rest, Trd, Upd, partial, rest, trades, updates

H = 1_795_514_400_000_000
S = 1_000_000
MS = 1_000
DEADLINE = 30.0

# session 1: 0.0 .. 0.9 s; an outage; session 2 from 12 s (no session overlaps the gap)
UPD = [Upd(H + i * 100 * MS, 101 + 2 * i, 102 + 2 * i, bids=[(65000.01 - i, 0.5 + i)], asks=[(65001.5, 1e-05 * i)],
           session_id=1, seq=3 * i) for i in range(10)]
PART = [Part(H + i * 100 * MS + 30 * MS, 102 + 2 * i, [(65000.01, 1.25)], [(65001.5, 0.001)], session_id=1,
             seq=3 * i + 1) for i in range(10)]
TRD = [Trd(H + i * 100 * MS + 60 * MS, 7000 + i, 65000.5, 0.0123 * (i + 1), i % 2 == 0, session_id=1, seq=3 * i + 2)
       for i in range(10)]
UPD2 = [Upd(H + 12 * S + i * 100 * MS, 301 + i, 301 + i, bids=[(64990.0, 2.0 + i)], session_id=2, seq=i)
        for i in range(5)]
SNAPS = [Rest(H + 50 * MS, 100, [(65000.01, 1.0), (64999.0, 2.0), (64998.0, 3.0)], [(65001.5, 0.25)]),
         Rest(H + 12 * S + 10 * MS, 300, [(64990.0, 1.0)], [(65002.0, 0.5)], "gap")]
STREAMS = "btcusdt@depth@100ms/btcusdt@depth20@100ms/btcusdt@trade"


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    def put(dataset, table):
        folder = tmp_path / dataset / hour_folder(H)
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / "part-0001.parquet")

    put("depth_update", updates(UPD + UPD2))
    put("depth_snapshot", partial(PART))
    put("trade", trades(TRD))
    put("depth_rest_snapshot", rest(SNAPS))
    return tmp_path


def expected_session1() -> list[tuple]:
    """What Binance sent, from the literal rows (not from the replay's own payload code)."""
    out = []
    for i in range(10):
        u, p, t = UPD[i], PART[i], TRD[i]
        out.append((u.recv_us, "btcusdt@depth@100ms", {
            "e": "depthUpdate", "E": u.recv_us // MS, "s": "BTCUSDT", "U": u.U, "u": u.u,
            "b": [[float(x) for x in lv] for lv in u.bids], "a": [[float(x) for x in lv] for lv in u.asks]}))
        out.append((p.recv_us, "btcusdt@depth20@100ms", {
            "lastUpdateId": p.u, "bids": [list(lv) for lv in p.bids], "asks": [list(lv) for lv in p.asks]}))
        out.append((t.recv_us, "btcusdt@trade", {
            "e": "trade", "E": t.recv_us // MS, "s": "BTCUSDT", "t": t.trade_id, "p": t.price, "q": t.qty,
            "T": t.recv_us // MS - 1, "m": t.is_buyer_maker, "M": True}))
    return [(s, d) for _, s, d in sorted(out, key=lambda x: x[0])]


def as_values(frame: dict) -> tuple[str, dict]:
    """A received frame with its decimal strings turned into numbers (keys kept)."""
    data = dict(frame["data"])
    for k in ("bids", "asks", "b", "a"):
        if isinstance(data.get(k), list):
            data[k] = [[float(x) for x in lv] for lv in data[k]]
    for k in ("p", "q"):
        if isinstance(data.get(k), str):
            data[k] = float(data[k])
    return frame["stream"], data


def test_decimal_text_has_no_exponent_and_parses_back():
    for x in (1e-05, 65000.01, 0.1 + 0.2, 123456789.12345678, 0.0):
        assert "e" not in dec(x) and float(dec(x)) == x
    assert dec(1e-05) == "0.00001" and dec(2.0) == "2"


@pytest.mark.slow
def test_replay_sends_the_archived_messages_in_order_and_a_gap_disconnects(archive: Path):
    async def scenario():
        async with ReplayServer(str(archive), H, H + 20 * S, speed=4, port=0) as r:
            url = f"{r.ws_url}/stream?streams={STREAMS}"
            first: list[dict] = []
            async with connect(url) as ws:
                with pytest.raises(ConnectionClosedError) as closed:
                    while True:
                        first.append(orjson.loads(await asyncio.wait_for(ws.recv(), DEADLINE)))
            assert closed.value.rcvd is None  # no close frame: a network loss, as live
            async with connect(url) as ws:
                second = [orjson.loads(await asyncio.wait_for(ws.recv(), DEADLINE)) for _ in range(5)]
                rest_answer = await asyncio.to_thread(_get, f"{r.rest_url}/api/v3/depth?symbol=BTCUSDT&limit=1")
            await asyncio.wait_for(r.finished.wait(), DEADLINE)
            return first, second, rest_answer, r.disconnects

    first, second, rest_answer, disconnects = asyncio.run(scenario())
    assert [as_values(f) for f in first] == expected_session1()
    assert len(first) == 30 and disconnects == 1
    assert [as_values(f) for f in second] == [
        ("btcusdt@depth@100ms", {"e": "depthUpdate", "E": u.recv_us // MS, "s": "BTCUSDT", "U": u.U, "u": u.u,
                                 "b": [list(lv) for lv in u.bids], "a": []}) for u in UPD2]
    # during session 2 the snapshot the recording collector got then is served, cut to the limit
    assert rest_answer == {"lastUpdateId": 300, "bids": [["64990", "1"]], "asks": [["65002", "0.5"]]}


def test_waiting_for_subscribers_loses_nothing_to_late_connections_or_an_outage(archive: Path):
    """At speed 0 nothing paces the rows: without the wait, a second connection opened after the
    first message, or a reconnect after the archived outage, would find the rows already gone."""
    depth, others = STREAMS.split("/", 1)

    async def until_dropped(ws) -> list[dict]:
        got = []
        with pytest.raises(ConnectionClosedError) as closed:
            while True:
                got.append(orjson.loads(await asyncio.wait_for(ws.recv(), DEADLINE)))
        assert closed.value.rcvd is None
        return got

    async def scenario():
        async with ReplayServer(str(archive), H, H + 20 * S, speed=0, port=0, wait_for_subscribers=True) as r:
            async with connect(f"{r.ws_url}/stream?streams={depth}") as a:
                a_first = [orjson.loads(await asyncio.wait_for(a.recv(), DEADLINE))]
                # the clock is held at the first partial depth: nobody carries that stream yet
                async with connect(f"{r.ws_url}/stream?streams={others}") as b:
                    b_rows = await until_dropped(b)
                a_rows = a_first + await until_dropped(a)
            # reconnecting only once both drops are seen: the rows after the gap waited for it
            async with connect(f"{r.ws_url}/stream?streams={depth}") as a:
                after = [orjson.loads(await asyncio.wait_for(a.recv(), DEADLINE)) for _ in range(len(UPD2))]
                await asyncio.wait_for(r.finished.wait(), DEADLINE)
            return a_rows, b_rows, after, r.disconnects

    a_rows, b_rows, after, disconnects = asyncio.run(scenario())
    want = expected_session1()
    assert [as_values(f) for f in a_rows] == [w for w in want if w[0] == depth] and len(a_rows) == len(UPD)
    assert [as_values(f) for f in b_rows] == [w for w in want if w[0] != depth] and len(b_rows) == 20
    assert [as_values(f)[1]["U"] for f in after] == [u.U for u in UPD2]
    assert disconnects == 1


def test_rest_depth_before_the_clock_starts_and_errors(archive: Path):
    async def scenario():
        async with ReplayServer(str(archive), H, H + 20 * S, speed=1, port=0) as r:
            base = f"{r.rest_url}/api/v3/depth"
            return (await asyncio.to_thread(_get, f"{base}?symbol=btcusdt&limit=2"),
                    await asyncio.to_thread(_get, f"{base}?symbol=ETHUSDT"),
                    await asyncio.to_thread(_get, f"{r.rest_url}/fapi/v1/depth?symbol=BTCUSDT"))

    ok, unknown, usdm = asyncio.run(scenario())
    assert ok == {"lastUpdateId": 100, "bids": [["65000.01", "1"], ["64999", "2"]], "asks": [["65001.5", "0.25"]]}
    assert unknown == {"code": -1121, "msg": "Invalid symbol."}
    assert usdm["code"] == -1121  # no USD-M snapshots in this archive


def test_subscribe_on_a_bare_stream_endpoint(archive: Path):
    async def scenario():
        async with ReplayServer(str(archive), H, H + 20 * S, speed=2, port=0) as r:
            async with connect(f"{r.ws_url}/stream") as ws:
                await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1}))
                reply = orjson.loads(await asyncio.wait_for(ws.recv(), DEADLINE))
                await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 2}))
                got = []
                while len(got) < 3:
                    f = orjson.loads(await asyncio.wait_for(ws.recv(), DEADLINE))
                    got.append(f)
                return reply, got

    reply, got = asyncio.run(scenario())
    assert reply == {"result": None, "id": 1}
    listed = [g for g in got if g.get("id") == 2]
    assert listed == [{"result": ["btcusdt@trade"], "id": 2}]
    data = [g for g in got if "stream" in g]
    assert data and {g["stream"] for g in data} == {"btcusdt@trade"}


def test_the_command_refuses_bad_times_in_one_sentence(archive: Path):
    cmd = [sys.executable, "-m", "orderbook_assets.analytics.query", "replay", "--archive", str(archive),
           "--start", "yesterday", "--end", "2026-11-24T11:00:00Z"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith("orderbook replay: --start/--end must be ISO 8601")
    assert "Traceback" not in p.stderr


def _get(url: str) -> dict:
    try:
        with urllib.request.urlopen(url, timeout=DEADLINE) as resp:
            return orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return orjson.loads(exc.read())


def test_usdm_on_its_route_with_binance_futures_fields_and_apart_from_spot(tmp_path: Path):
    folder = tmp_path / "depth_update" / hour_folder(H)
    folder.mkdir(parents=True)
    spot = updates([Upd(H + 100 * MS, 1, 2, bids=[(1.0, 1.0)])], market="spot", stream="btcusdt@depth@100ms")
    fut = updates([Upd(H + 200 * MS, 50, 60, bids=[(65000.1, 0.003)], asks=[(65000.2, 0.0)], pu=49)],
                  market="usdm", stream="btcusdt@depth@100ms")
    pq.write_table(spot, folder / "part-0001.parquet")
    pq.write_table(fut, folder / "part-0002.parquet")

    async def scenario():
        async with ReplayServer(str(tmp_path), H, H + 2 * S, speed=1, port=0) as r:
            async with connect(f"{r.ws_url}/public/stream?streams=btcusdt@depth@100ms") as ws:
                return orjson.loads(await asyncio.wait_for(ws.recv(), DEADLINE))

    frame = asyncio.run(scenario())
    ms = (H + 200 * MS) // MS
    assert frame == {"stream": "btcusdt@depth@100ms", "data": {
        "e": "depthUpdate", "E": ms, "T": ms, "s": "BTCUSDT", "U": 50, "u": 60, "pu": 49,
        "b": [["65000.1", "0.003"]], "a": [["65000.2", "0"]]}}


def test_an_archive_without_stream_data_is_refused_in_one_sentence(tmp_path: Path):
    with pytest.raises(ReplayError, match=r"holds none of the stream datasets .*; check --archive"):
        ReplayServer(str(tmp_path), H, H + S)
