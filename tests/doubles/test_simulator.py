"""Tests of the simulated Binance exchange (tools.simulator.exchange).

Each test runs its own asyncio loop (no pytest-asyncio) against a real loopback server.
The simulator is the oracle of other tests, so its promises are checked from the wire.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK, InvalidStatus

from orderbook_collector.feed.streams import Market
from tools.simulator.exchange import MALFORMED_KINDS, OVERSIZE_BYTES, Book, Exchange, StreamKey

REPO = Path(__file__).resolve().parents[2]
DECIMAL8 = re.compile(r"^\d+\.\d{8}$")
FAST = dict(symbols=["btcusdt", "ethusdt"], seed=1, rate=50)


def connect(url: str, **kw):
    """A client that never pauses reading: with websockets' default max_queue, a client
    that stops reading and then closes waits its full close_timeout (10 s) for a close
    frame stuck behind unread data, which would only slow these tests down."""
    return ws_connect(url, max_queue=None, **kw)


def run(coro, timeout: float = 15.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def recv_json(ws, timeout: float = 2.0):
    return orjson.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_data(ws, n: int) -> list[dict]:
    """The next ``n`` combined data messages, skipping replies and events."""
    out = []
    while len(out) < n:
        msg = await recv_json(ws)
        if "data" in msg and not msg["stream"].startswith("!"):
            out.append(msg)
    return out


async def reply(ws, rid):
    """The reply with id ``rid``; data frames interleave with replies on Binance too."""
    while True:
        msg = await recv_json(ws)
        if "id" in msg and msg["id"] == rid:
            return msg


def http_get(url: str) -> tuple[int, dict, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, dict(r.headers), orjson.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), orjson.loads(e.read())


def check_depth(data: dict, levels: int) -> None:
    assert set(data) == {"lastUpdateId", "bids", "asks"}
    assert type(data["lastUpdateId"]) is int and data["lastUpdateId"] > 2**31
    assert len(data["bids"]) == len(data["asks"]) == levels
    for side in (data["bids"], data["asks"]):
        for level in side:
            assert len(level) == 2 and all(isinstance(v, str) and DECIMAL8.match(v) for v in level)
    bids = [float(p) for p, _ in data["bids"]]
    asks = [float(p) for p, _ in data["asks"]]
    assert bids == sorted(bids, reverse=True) and len(set(bids)) == len(bids)
    assert asks == sorted(asks) and len(set(asks)) == len(asks)
    assert bids[0] < asks[0], "crossed book"


def test_combined_wrapper_payload_shape_and_increasing_ids():
    async def main():
        async with Exchange(**FAST) as ex:
            url = ex.ws_url + "/stream?streams=btcusdt@depth20@100ms/ethusdt@depth5"
            async with connect(url) as ws:
                msgs = await recv_data(ws, 20)
        last: dict[str, int] = {}
        for m in msgs:
            assert set(m) == {"stream", "data"}
            check_depth(m["data"], 20 if m["stream"].endswith("@100ms") else 5)
            assert m["data"]["lastUpdateId"] > last.get(m["stream"], 0)
            last[m["stream"]] = m["data"]["lastUpdateId"]
        assert set(last) == {"btcusdt@depth20@100ms", "ethusdt@depth5"}
        btc = next(m for m in msgs if m["stream"].startswith("btc"))["data"]
        assert 60_000 < float(btc["bids"][0][0]) < 70_000
    run(main())


def test_raw_endpoint_sends_bare_payloads_and_binance_cadence_by_default():
    async def main():
        async with Exchange(symbols=["btcusdt"], seed=2) as ex:  # default rate: 10/s
            async with connect(ex.ws_url + "/ws/btcusdt@depth10@100ms") as ws:
                t0 = time.monotonic()
                msgs = [await recv_json(ws) for _ in range(6)]
                elapsed = time.monotonic() - t0
        for m in msgs:
            check_depth(m, 10)
        assert 0.35 < elapsed < 2.0  # five intervals of 100 ms after the first message
    run(main())


def test_two_connections_get_identical_messages():
    async def main():
        async with Exchange(**FAST) as ex:
            url = ex.ws_url + "/stream?streams=btcusdt@depth20@100ms"
            async with connect(url) as a, connect(url) as b:
                ra = [await asyncio.wait_for(a.recv(), 2) for _ in range(15)]
                rb = [await asyncio.wait_for(b.recv(), 2) for _ in range(15)]
        by_id_a = {orjson.loads(f)["data"]["lastUpdateId"]: f for f in ra}
        by_id_b = {orjson.loads(f)["data"]["lastUpdateId"]: f for f in rb}
        common = set(by_id_a) & set(by_id_b)
        assert len(common) >= 10
        assert all(by_id_a[i] == by_id_b[i] for i in common)  # same bytes, not just same id
    run(main())


def test_control_messages_and_error_replies():
    async def main():
        async with Exchange(**FAST, max_incoming_per_sec=None) as ex:
            async with connect(ex.ws_url + "/stream") as ws:
                async def ask(obj):
                    await ws.send(orjson.dumps(obj).decode())
                    return await reply(ws, obj.get("id"))

                assert await ask({"method": "SUBSCRIBE", "params": ["btcusdt@depth5", "ethusdt@depth10@100ms"], "id": 1}) == {"result": None, "id": 1}
                assert (await recv_data(ws, 1))[0]["stream"] in ("btcusdt@depth5", "ethusdt@depth10@100ms")
                assert await ask({"method": "LIST_SUBSCRIPTIONS", "id": 2}) == {"result": ["btcusdt@depth5", "ethusdt@depth10@100ms"], "id": 2}
                assert await ask({"method": "UNSUBSCRIBE", "params": ["btcusdt@depth5"], "id": 3}) == {"result": None, "id": 3}
                assert (await ask({"method": "LIST_SUBSCRIPTIONS", "id": "abc4"}))["result"] == ["ethusdt@depth10@100ms"]
                assert await ask({"method": "GET_PROPERTY", "params": ["combined"], "id": 5}) == {"result": True, "id": 5}

                bad = await ask({"method": "SUBSCRIBE", "params": ["btcusdt@depth7"], "id": 6})
                assert bad == {"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": 6}
                assert (await ask({"method": "SUBSCRIBE", "params": ["dogeusdt@depth5"], "id": 7}))["error"]["code"] == 2
                assert (await ask({"method": "SET_PROPERTY", "params": ["colour", True], "id": 8}))["error"]["code"] == 0
                assert (await ask({"method": "SET_PROPERTY", "params": ["combined", "yes"], "id": 9}))["error"]["code"] == 1
                assert (await ask({"method": "FROB", "id": 10}))["error"]["code"] == 2
                assert (await ask({"params": [], "id": 11}))["error"]["code"] == 2
                await ws.send("{not json")
                assert (await reply(ws, None))["error"]["code"] == 3

                # SET_PROPERTY combined=false switches to bare payloads on the same connection
                assert await ask({"method": "SET_PROPERTY", "params": ["combined", False], "id": 12}) == {"result": None, "id": 12}
                while "stream" in (msg := await recv_json(ws)):
                    pass
                check_depth(msg, 10)
    run(main())


def test_more_than_five_messages_per_second_closes_with_1008():
    async def main():
        async with Exchange(**FAST) as ex:
            async with connect(ex.ws_url + "/stream") as ws:
                for i in range(5):
                    await ws.send(orjson.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}).decode())
                for i in range(5):
                    assert await reply(ws, i) == {"result": [], "id": i}  # five are allowed
                await ws.send(orjson.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 99}).decode())
                with pytest.raises(ConnectionClosedError) as info:
                    await reply(ws, 99)
        assert info.value.rcvd.code == 1008 and info.value.rcvd.reason == "Too many requests"
    run(main())


def test_invalid_stream_or_path_in_url_refuses_handshake():
    async def main():
        async with Exchange(**FAST) as ex:
            for path, status in [("/stream?streams=btcusdt@depth7", 400), ("/ws/dogeusdt@depth5", 400),
                                 ("/stream?streams=BTCUSDT@depth5", 400), ("/nope", 404)]:
                with pytest.raises(InvalidStatus) as info:
                    async with connect(ex.ws_url + path):
                        pass
                assert info.value.response.status_code == status, path
                if status == 400:
                    assert orjson.loads(info.value.response.body)["code"] == -1121
    run(main())


def test_rest_depth_time_and_unknown_symbol():
    async def main():
        async with Exchange(**FAST) as ex:
            ok = await asyncio.to_thread(http_get, ex.rest_url + "/api/v3/depth?symbol=BTCUSDT&limit=5")
            big = await asyncio.to_thread(http_get, ex.rest_url + "/api/v3/depth?symbol=ETHUSDT&limit=1000")
            bad = await asyncio.to_thread(http_get, ex.rest_url + "/api/v3/depth?symbol=NOPEUSDT")
            clock = await asyncio.to_thread(http_get, ex.rest_url + "/api/v3/time")
        assert ok[0] == 200 and ok[1]["Content-Type"].startswith("application/json")
        check_depth(ok[2], 5)
        assert big[0] == 200 and len(big[2]["bids"]) >= 100  # the whole simulated book
        assert bad[0] == 400 and bad[2] == {"code": -1121, "msg": "Invalid symbol."}
        assert clock[0] == 200 and abs(clock[2]["serverTime"] - time.time() * 1000) < 5000
    run(main())


def _is_good_data(frame, stream: str) -> bool:
    """True for a normal data message of ``stream`` (what the injections must not look like)."""
    if not isinstance(frame, str):
        return False
    try:
        msg = orjson.loads(frame)
        data = msg["data"]
        return msg["stream"] == stream and isinstance(data["lastUpdateId"], int) and all(
            isinstance(v, str) for lv in data["bids"] + data["asks"] for v in lv)
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return False


def test_each_malformed_kind_arrives_as_described(tmp_path):
    stream = "btcusdt@depth20@100ms"

    async def main():
        got = {}
        async with Exchange(**FAST, sent_log=str(tmp_path / "sent.ndjson")) as ex:
            async with connect(ex.ws_url + f"/stream?streams={stream}", max_size=None) as ws:
                await recv_data(ws, 1)
                for kind in MALFORMED_KINDS:
                    ex.inject_malformed(kind)
                    while _is_good_data(frame := await asyncio.wait_for(ws.recv(), 2), stream):
                        pass
                    got[kind] = frame
                assert _is_good_data(await asyncio.wait_for(ws.recv(), 2), stream)  # still flowing
        return got

    got = run(main())
    assert got["not_json"] == '{"stream": garbage'
    assert isinstance(got["binary"], bytes)
    assert orjson.loads(got["error_reply"]) == {"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": None}
    wrong = orjson.loads(got["wrong_types"])["data"]
    assert isinstance(wrong["bids"][0][0], float) and len(wrong["bids"][1]) == 3
    unknown = orjson.loads(got["unknown_stream"])
    assert unknown["stream"] == "zzzusdt@depth20@100ms" and "lastUpdateId" in unknown["data"]
    assert len(got["oversize"].encode()) == OVERSIZE_BYTES > 1 << 20
    missing = orjson.loads(got["missing_fields"])
    assert missing["stream"] == stream and "lastUpdateId" not in missing["data"]
    lines = [orjson.loads(x) for x in (tmp_path / "sent.ndjson").read_bytes().splitlines()]
    assert [x["malformed"] for x in lines if "malformed" in x] == list(MALFORMED_KINDS)
    assert all("data" not in x for x in lines if "malformed" in x)


def test_replay_on_next_connect_resends_recent_messages_first():
    async def main():
        async with Exchange(**FAST) as ex:
            url = ex.ws_url + "/stream?streams=btcusdt@depth5"
            async with connect(url) as a:
                seen_a = [await asyncio.wait_for(a.recv(), 2) for _ in range(6)]
                ex.replay_on_next_connect(3)
                async with connect(url) as b:
                    first_b = [await asyncio.wait_for(b.recv(), 2) for _ in range(5)]
                seen_a += [await asyncio.wait_for(a.recv(), 2) for _ in range(3)]
                async with connect(url) as c:  # the replay was for one connection only
                    first_c = orjson.loads(await asyncio.wait_for(c.recv(), 2))
        ids_b = [orjson.loads(f)["data"]["lastUpdateId"] for f in first_b]
        assert first_b[:3] == [f for f in seen_a if f in first_b[:3]]  # byte-identical duplicates
        assert ids_b[:3] == sorted(ids_b[:3]) and ids_b[3] > ids_b[2]
        assert first_c["data"]["lastUpdateId"] > max(ids_b)
    run(main())


def test_clean_versus_abrupt_disconnect():
    async def main():
        async with Exchange(**FAST) as ex:
            url = ex.ws_url + "/stream?streams=btcusdt@depth5"
            async with connect(url) as ws:
                await recv_data(ws, 1)
                await ex.disconnect(abrupt=False)
                with pytest.raises(ConnectionClosedOK) as clean:
                    await recv_data(ws, 100)
            async with connect(url) as ws:
                await recv_data(ws, 1)
                await ex.disconnect(abrupt=True)
                with pytest.raises(ConnectionClosedError) as abrupt:
                    await recv_data(ws, 100)
        assert clean.value.rcvd.code in (1000, 1001)
        assert abrupt.value.rcvd is None and abrupt.value.sent is None  # no close frame: 1006
    run(main())


def test_reject_connections_with_retry_after():
    async def main():
        async with Exchange(**FAST) as ex:
            ex.reject_connections(429, retry_after=7, count=2)
            statuses = []
            for _ in range(2):
                with pytest.raises(InvalidStatus) as info:
                    async with connect(ex.ws_url + "/stream?streams=btcusdt@depth5"):
                        pass
                statuses.append((info.value.response.status_code, info.value.response.headers["Retry-After"]))
            ex.reject_connections(418, retry_after=120, count=1)
            with pytest.raises(InvalidStatus) as ban:
                async with connect(ex.ws_url + "/stream"):
                    pass
            async with connect(ex.ws_url + "/stream?streams=btcusdt@depth5") as ws:  # then accepted
                assert (await recv_data(ws, 1))[0]["stream"] == "btcusdt@depth5"
        assert statuses == [(429, "7"), (429, "7")]
        assert ban.value.response.status_code == 418 and ban.value.response.headers["Retry-After"] == "120"
    run(main())


def test_server_shutdown_event_then_close_and_make_before_break():
    async def main():
        async with Exchange(**FAST) as ex:
            url = ex.ws_url + "/stream?streams=btcusdt@depth20@100ms"
            async with connect(url) as old:
                await recv_data(old, 1)
                shutdown = asyncio.create_task(ex.server_shutdown(grace=0.3))
                while (event := await recv_json(old))["stream"] != "!serverShutdown":
                    pass
                async with connect(url) as new:  # opened during the grace period
                    with pytest.raises(ConnectionClosedOK) as closed:
                        while True:
                            await recv_data(old, 1)
                    await shutdown
                    after = await recv_data(new, 3)  # the replacement survives
        assert event["data"]["e"] == "serverShutdown" and abs(event["data"]["E"] - time.time() * 1000) < 5000
        assert closed.value.rcvd.code == 1001
        assert len(after) == 3
    run(main())


def test_stall_pauses_data_without_queueing_it():
    async def main():
        async with Exchange(**FAST) as ex:
            async with connect(ex.ws_url + "/stream?streams=btcusdt@depth5") as ws:
                last = (await recv_data(ws, 2))[-1]["data"]["lastUpdateId"]
                ex.stall(0.4)
                got = [(time.monotonic(), last)]
                end = got[0][0] + 1.0
                while time.monotonic() < end:  # the connection stays open throughout
                    msg = (await recv_data(ws, 1))[0]  # await before reading the clock
                    got.append((time.monotonic(), msg["data"]["lastUpdateId"]))
                ring_ids = [m.last_update_id for m in ex.streams[StreamKey(Market.SPOT, "btcusdt@depth5")].ring]
        return got, ring_ids

    got, ring_ids = run(main())
    (t1, before), (t2, after) = max(zip(got, got[1:]), key=lambda p: p[1][0] - p[0][0])
    assert t2 - t1 >= 0.3
    missed = [i for i in ring_ids if before < i < after]
    assert len(missed) >= 10  # generated during the stall (50/s), never sent
    assert len(got) >= 15  # and the stream resumed


def test_sent_log_matches_what_clients_received(tmp_path):
    path = tmp_path / "sent.ndjson"

    async def main():
        async with Exchange(**FAST, sent_log=str(path)) as ex:
            url = ex.ws_url + "/stream?streams=btcusdt@depth20@100ms/ethusdt@depth5"
            async with connect(url) as a, connect(ex.ws_url + "/ws/ethusdt@depth10") as b:
                got_a = [await recv_json(a) for _ in range(12)]
                got_b = [await recv_json(b) for _ in range(6)]
            stats = ex.stats()
        return got_a, got_b, stats

    got_a, got_b, stats = run(main())
    lines = [orjson.loads(x) for x in path.read_bytes().splitlines()]
    for conn, got, combined in ((1, got_a, True), (2, got_b, False)):
        mine = [x for x in lines if x["conn"] == conn and "data" in x]
        assert len(mine) >= len(got)  # the client may hang up before reading everything
        for line, msg in zip(mine, got):
            if combined:
                assert (line["stream"], line["data"]) == (msg["stream"], msg["data"])
            else:
                assert line["data"] == msg and line["stream"] == "ethusdt@depth10"
            assert line["last_update_id"] == line["data"]["lastUpdateId"]
        send_us = [x["send_us"] for x in mine]
        assert send_us == sorted(send_us) and abs(send_us[0] / 1e6 - time.time()) < 60
    assert stats["connections_accepted"] == 2
    assert sum(stats["sent"]["spot"].values()) == sum(1 for x in lines if "data" in x)


def test_books_change_slowly_and_stay_uncrossed():
    async def main():
        async with Exchange(**FAST) as ex:
            async with connect(ex.ws_url + "/stream?streams=btcusdt@depth20@100ms") as ws:
                return [m["data"] for m in await recv_data(ws, 25)]

    snaps = run(main())
    shared = []
    for prev, cur in zip(snaps, snaps[1:]):
        check_depth(cur, 20)
        for side in ("bids", "asks"):
            shared.append(len({p for p, _ in prev[side]} & {p for p, _ in cur[side]}) / 20)
    assert min(shared) >= 0.7 and sum(shared) / len(shared) >= 0.9
    assert snaps[0] != snaps[-1]  # but it does move
    # the diff of consecutive snapshots is small: a handful of levels change per step
    changed = [len({tuple(lv) for lv in a["bids"] + a["asks"]} ^ {tuple(lv) for lv in b["bids"] + b["asks"]})
               for a, b in zip(snaps, snaps[1:])]
    assert sum(changed) / len(changed) < 12


def test_books_are_deterministic_for_a_seed():
    def sequence(seed):
        book = Book("btcusdt", seed)
        out = []
        for step in range(1, 60):
            book.advance_to(step)
            out.append(book.depth_payload(20))
        return out

    assert sequence(7) == sequence(7)
    assert sequence(7) != sequence(8)


def test_diff_depth_rebuilds_the_partial_depth_book():
    """REST snapshot + depthUpdate events (Binance's procedure) reproduce the depth20 stream."""
    async def main():
        async with Exchange(**FAST) as ex:
            url = ex.ws_url + "/stream?streams=btcusdt@depth@100ms/btcusdt@depth20@100ms"
            async with connect(url) as ws:
                first = await recv_data(ws, 2)
                _, _, snap = await asyncio.to_thread(http_get, ex.rest_url + "/api/v3/depth?symbol=BTCUSDT&limit=5000")
                return first + await recv_data(ws, 40), snap

    msgs, snap = run(main())
    book = {"b": dict(snap["bids"]), "a": dict(snap["asks"])}
    book_id, prev_u = snap["lastUpdateId"], None
    rebuilt = {}  # book id -> (top-20 bids, top-20 asks) of the rebuilt book
    for d in (m["data"] for m in msgs if m["stream"] == "btcusdt@depth@100ms"):
        assert d["e"] == "depthUpdate" and d["s"] == "BTCUSDT" and d["U"] <= d["u"]
        assert prev_u is None or d["U"] == prev_u + 1  # no gaps between events
        prev_u = d["u"]
        if d["u"] <= book_id:
            continue
        assert d["U"] <= book_id + 1
        for side in ("b", "a"):
            for p, q in d[side]:
                book[side].pop(p) if q == "0.00000000" else book[side].__setitem__(p, q)
        book_id = d["u"]
        rebuilt[book_id] = (sorted(book["b"].items(), key=lambda x: -float(x[0]))[:20],
                            sorted(book["a"].items(), key=lambda x: float(x[0]))[:20])
    snaps = [m["data"] for m in msgs if m["stream"] == "btcusdt@depth20@100ms"]
    checked = [d for d in snaps if d["lastUpdateId"] in rebuilt]
    assert len(checked) >= 8  # a snapshot taken between two tickers' runs can skip an id
    for d in checked:
        bids, asks = rebuilt[d["lastUpdateId"]]
        assert [list(x) for x in bids] == d["bids"] and [list(x) for x in asks] == d["asks"]


def post(req: urllib.request.Request) -> dict:
    with urllib.request.urlopen(req, timeout=5) as r:
        return orjson.loads(r.read())


def test_cli_prints_its_line_serves_control_and_exits_0_on_sigterm(tmp_path):
    log_path = tmp_path / "sent.ndjson"
    with subprocess.Popen(
        [sys.executable, "-m", "tools.simulator", "--port", "0", "--rate", "20",
         "--symbols", "btcusdt", "--sent-log", str(log_path)],
        cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    ) as proc:
        try:
            _drive_cli(proc, log_path)
        finally:
            if proc.poll() is None:
                proc.kill()


def _drive_cli(proc: subprocess.Popen, log_path: Path) -> None:
    line = proc.stdout.readline()
    m = re.fullmatch(r"simulator listening on ws://127\.0\.0\.1:(\d+)\n", line)
    assert m, line
    port = int(m[1])

    async def main():
        async with connect(f"ws://127.0.0.1:{port}/stream?streams=btcusdt@depth5") as ws:
            await recv_data(ws, 1)
            req = urllib.request.Request(f"http://127.0.0.1:{port}/control/disconnect?arg=1", method="POST")
            resp = await asyncio.to_thread(post, req)
            with pytest.raises(ConnectionClosed) as info:
                await recv_data(ws, 100)
        return resp, info.value

    resp, closed = run(main())
    assert resp == {"ok": True} and closed.rcvd is None  # abrupt, as asked over HTTP
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert proc.stdout.read() == ""  # exactly one line on stdout
    assert any(b'"last_update_id"' in x for x in log_path.read_bytes().splitlines())
