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

from tools.simulator.facts import SERVED_KINDS, Kind, Market
from tools.simulator.exchange import MALFORMED_KINDS, OVERSIZE_BYTES, Admission, Book, Exchange, StreamKey, WeightLimiter

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
    """REST snapshot + depthUpdate events (Binance's procedure) reproduce the depth20 stream
    (sampled at the diff events' ids: ``partials_aligned``)."""
    async def main():
        async with Exchange(**FAST, partials_aligned=True) as ex:
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


def test_a_restarted_simulator_never_repeats_update_ids():
    """``make demo`` restarted: the same seed, yet only ids above those of the last run."""
    from support.procs import SimulatorProcess

    async def ids(ws_url: str, n: int) -> list[int]:
        async with ws_connect(ws_url + "/stream?streams=btcusdt@depth20@100ms") as ws:
            return [m["data"]["lastUpdateId"] for m in await recv_data(ws, n)]

    with SimulatorProcess("--seed", "0", "--rate", "50") as sim:
        before = asyncio.run(ids(sim.ws_url, 20))
    with SimulatorProcess("--seed", "0", "--rate", "50") as again:
        after = asyncio.run(ids(again.ws_url, 5))
    assert before == sorted(before) and min(after) > max(before)


# ---- every kind on both markets (issue 12) ------------------------------------------------

TRADE_KEYS = {"e", "E", "s", "t", "p", "q", "T", "m", "M"}
AGG_KEYS = {"e", "E", "s", "a", "p", "q", "f", "l", "T", "m", "M"}
TICKER_KEYS = {"u", "s", "b", "B", "a", "A"}
SPOT_DIFF_KEYS = {"e", "E", "s", "U", "u", "b", "a"}
USDM_DEPTH_KEYS = {"e", "E", "T", "s", "U", "u", "pu", "b", "a"}


async def collect(ws, enough, timeout: float = 8.0) -> dict[str, list[dict]]:
    """Combined data messages by stream until ``enough(by_stream)`` holds."""
    by_stream: dict[str, list[dict]] = {}

    async def loop():
        while not enough(by_stream):
            msg = await recv_json(ws)
            if "data" in msg and not msg["stream"].startswith("!"):
                by_stream.setdefault(msg["stream"], []).append(msg["data"])
    await asyncio.wait_for(loop(), timeout)
    return by_stream


def at_least(**counts):
    """``enough`` for :func:`collect`: stream (with "@" written "__") -> minimum count."""
    want = {k.replace("__", "@"): v for k, v in counts.items()}
    return lambda got: all(len(got.get(s, ())) >= n for s, n in want.items())


def check_trades(trades: list[dict], aggs: list[dict], keys_t: set, keys_a: set, symbol: str) -> None:
    for t in trades:
        assert set(t) == keys_t and t["e"] == "trade" and t["s"] == symbol
        assert DECIMAL8.match(t["p"]) and DECIMAL8.match(t["q"]) and float(t["q"]) > 0
        assert type(t["m"]) is bool and t["T"] <= t["E"]
    for a in aggs:
        assert set(a) == keys_a and a["e"] == "aggTrade" and a["s"] == symbol and a["f"] <= a["l"]
    ids = [t["t"] for t in trades]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # consecutive per symbol
    agg_ids = [a["a"] for a in aggs]
    assert agg_ids == list(range(agg_ids[0], agg_ids[0] + len(agg_ids)))
    firsts = [a["f"] for a in aggs]
    assert all(b["f"] == a["l"] + 1 for a, b in zip(aggs, aggs[1:]))  # aggTrades tile the trade ids
    # an aggTrade is its trades: same price and side, quantities add up
    by_id = {t["t"]: t for t in trades}
    covered = [a for a in aggs if a["f"] in by_id and a["l"] in by_id]
    assert len(covered) >= 3, firsts
    for a in covered:
        parts = [by_id[i] for i in range(a["f"], a["l"] + 1)]
        assert {(p["p"], p["m"], p["T"]) for p in parts} == {(a["p"], a["m"], a["T"])}
        assert round(sum(float(p["q"]) for p in parts), 8) == float(a["q"])


def test_spot_trade_aggtrade_and_bookticker_payloads():
    async def main():
        async with Exchange(**FAST) as ex:
            url = ex.ws_url + "/stream?streams=btcusdt@trade/btcusdt@aggTrade/btcusdt@bookTicker"
            async with connect(url) as ws:
                return await collect(ws, at_least(btcusdt__trade=30, btcusdt__aggTrade=12, btcusdt__bookTicker=10))

    got = run(main())
    check_trades(got["btcusdt@trade"], got["btcusdt@aggTrade"], TRADE_KEYS, AGG_KEYS, "BTCUSDT")
    assert all(t["M"] is True for t in got["btcusdt@trade"])
    tickers = got["btcusdt@bookTicker"]
    for t in tickers:
        assert set(t) == TICKER_KEYS and t["s"] == "BTCUSDT" and float(t["b"]) < float(t["a"])
    us = [t["u"] for t in tickers]
    assert us == sorted(set(us))
    # every bookTicker is a change of the top of book
    assert all((a["b"], a["B"], a["a"], a["A"]) != (b["b"], b["B"], b["a"], b["A"]) for a, b in zip(tickers, tickers[1:]))


def test_usdm_payloads_on_the_public_and_market_routes():
    async def main():
        async with Exchange(**FAST) as ex:
            pub = ex.ws_url + "/public/stream?streams=ethusdt@depth@100ms/ethusdt@depth10@100ms/ethusdt@bookTicker/ethusdt@trade"
            mkt = ex.ws_url + "/market/stream?streams=ethusdt@aggTrade"
            async with connect(pub) as p, connect(mkt) as m:
                a = await collect(p, at_least(ethusdt__depth__100ms=15, ethusdt__depth10__100ms=15, ethusdt__bookTicker=5,
                                              ethusdt__trade=20))
                b = await collect(m, at_least(ethusdt__aggTrade=8))
        return a, b

    pub, mkt = run(main())
    no_m = {"e", "E", "s", "t", "p", "q", "T", "m"}
    check_trades(pub["ethusdt@trade"], mkt["ethusdt@aggTrade"], no_m, AGG_KEYS - {"M"}, "ETHUSDT")
    for name in ("ethusdt@depth@100ms", "ethusdt@depth10@100ms"):
        events = pub[name]
        for d in events:
            assert set(d) == USDM_DEPTH_KEYS and d["e"] == "depthUpdate" and d["s"] == "ETHUSDT"
            assert d["U"] <= d["u"] and d["T"] <= d["E"]
        assert all(b["pu"] == a["u"] for a, b in zip(events, events[1:]))  # the USD-M continuity rule
    for d in pub["ethusdt@depth10@100ms"]:  # full top 10, not a diff
        check_depth({"lastUpdateId": d["u"], "bids": d["b"], "asks": d["a"]}, 10)
    for t in pub["ethusdt@bookTicker"]:
        assert set(t) == TICKER_KEYS | {"e", "E", "T"} and t["e"] == "bookTicker"


def test_usdm_wrong_route_is_accepted_but_delivers_nothing():
    async def main():
        async with Exchange(**FAST, max_incoming_per_sec=None) as ex:
            pub = ex.ws_url + "/public/stream?streams=btcusdt@aggTrade/btcusdt@depth@100ms/btcusdt@trade"
            async with connect(pub) as p, connect(ex.ws_url + "/market/ws") as m:
                params = ["btcusdt@bookTicker", "btcusdt@trade", "btcusdt@aggTrade"]
                await m.send(orjson.dumps({"method": "SUBSCRIBE", "params": params, "id": 1}).decode())
                assert await reply(m, 1) == {"result": None, "id": 1}
                await m.send(orjson.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 2}).decode())
                listed = await reply(m, 2)
                got_p = await collect(p, at_least(btcusdt__depth__100ms=20, btcusdt__trade=20))
                got_m = []  # raw endpoint: bare payloads
                while len(got_m) < 20:
                    if "e" in (msg := await recv_json(m)):
                        got_m.append(msg)
            stats = ex.stats()
        return listed, got_p, got_m, stats

    listed, got_p, got_m, stats = run(main())
    assert listed["result"] == ["btcusdt@bookTicker", "btcusdt@trade", "btcusdt@aggTrade"]
    assert set(got_p) == {"btcusdt@depth@100ms", "btcusdt@trade"}  # the aggTrade on /public never arrives
    assert {m["e"] for m in got_m} == {"aggTrade"}  # nor bookTicker nor trade on /market
    assert stats["silent_subscriptions"] == 3
    assert "btcusdt@bookTicker" not in stats["sent"]["usdm"]


def _rebuild(market: Market, snap: dict, events: list[dict]) -> tuple[dict, dict[int, tuple[dict, dict]]]:
    """Binance's local-book procedure for ``market``; returns the final book and the book after each id."""
    book = {"b": dict(snap["bids"]), "a": dict(snap["asks"])}
    book_id, prev_u, states = snap["lastUpdateId"], None, {}
    for d in events:
        if prev_u is not None:  # a gap would mean a resync: the simulator must not cause one
            assert d["pu"] == prev_u if market is Market.USDM else d["U"] == prev_u + 1
        prev_u = d["u"]
        if d["u"] <= book_id:
            continue
        assert d["U"] <= book_id + 1
        for side in ("b", "a"):
            for p, q in d[side]:
                book[side].pop(p, None) if float(q) == 0 else book[side].__setitem__(p, q)
        book_id = d["u"]
        states[book_id] = ({**book["b"]}, {**book["a"]})
    return book, states


@pytest.mark.parametrize("market", [Market.SPOT, Market.USDM])
def test_rest_snapshot_plus_diffs_rebuilds_the_simulators_book(market):
    """Every stream of a symbol is cut from one book: the rebuilt book equals the simulator's
    whole book at every id, and partial depth and bookTicker agree with it at their ids
    (partials sampled at the diff events' ids: ``partials_aligned``)."""
    if market is Market.SPOT:
        path, streams, rest = "/stream", "btcusdt@depth@100ms/btcusdt@depth20@100ms/btcusdt@bookTicker", "/api/v3/depth?symbol=BTCUSDT&limit=5000"
    else:
        path, streams, rest = "/public/stream", "btcusdt@depth@100ms/btcusdt@depth20@100ms/btcusdt@bookTicker", "/fapi/v1/depth?symbol=BTCUSDT&limit=1000"

    async def main():
        async with Exchange(**FAST, partials_aligned=True) as ex:
            async with connect(ex.ws_url + path + "?streams=" + streams) as ws:
                first = await collect(ws, at_least(btcusdt__depth__100ms=2))
                _, headers, snap = await asyncio.to_thread(http_get, ex.rest_url + rest)
                more = await collect(ws, at_least(btcusdt__depth__100ms=40, btcusdt__bookTicker=10))
                diffs = first["btcusdt@depth@100ms"] + more["btcusdt@depth@100ms"]
                book, states = _rebuild(market, snap, diffs)
                oracle = {i: ex.book_state("btcusdt", i, market) for i in states}
        return snap, headers, more, book, states, oracle

    snap, headers, more, book, states, oracle = run(main())
    assert int(headers["X-MBX-USED-WEIGHT-1M"]) == (250 if market is Market.SPOT else 20)
    if market is Market.USDM:
        assert {"lastUpdateId", "E", "T", "bids", "asks"} == set(snap)
    assert len(states) >= 30
    for i, (bids, asks) in states.items():
        assert (bids, asks) == (oracle[i].bids, oracle[i].asks), i
    def top(side, n, bid):
        return sorted(side.items(), key=lambda x: -float(x[0]) if bid else float(x[0]))[:n]
    key_u = "lastUpdateId" if market is Market.SPOT else "u"
    partial = [d for d in more["btcusdt@depth20@100ms"] if d[key_u] in states]
    assert len(partial) >= 10
    for d in partial:
        bids, asks = states[d[key_u]]
        side_b, side_a = ("bids", "asks") if market is Market.SPOT else ("b", "a")
        assert [list(x) for x in top(bids, 20, True)] == d[side_b] and [list(x) for x in top(asks, 20, False)] == d[side_a]
    tickers = [t for t in more["btcusdt@bookTicker"] if t["u"] in states]
    assert len(tickers) >= 5
    for t in tickers:
        bids, asks = states[t["u"]]
        assert [[t["b"], t["B"]]] == [list(x) for x in top(bids, 1, True)]
        assert [[t["a"], t["A"]]] == [list(x) for x in top(asks, 1, False)]


def test_trades_move_the_book():
    """A taker's first fill is at the best level of the book before its step (asks for a buy,
    bids for a sell) and takes at most what that level held, changing it; the book
    history rewinds to any kept id, and no further."""
    book = Book("btcusdt", 3)
    book.advance_to(400)
    steps = [s for s in book.diffs if s.trades]
    assert len(steps) >= 100
    for s in steps:
        before = book.state_at(s.first_id - 1)
        first = s.trades[0]
        side = before.bids if first.buyer_maker else before.asks
        best = max(side, key=float) if first.buyer_maker else min(side, key=float)
        assert book.px(first.price) == best
        agg = s.aggs[0]  # the first level the taker reached: its trades, at most what the level held
        assert (agg.first, agg.price) == (first.id, first.price) and int(side[best].replace(".", "")) >= agg.qty
        assert agg.qty == sum(t.qty for t in s.trades if agg.first <= t.id <= agg.last)
        assert first.price in (s.undo_bids if first.buyer_maker else s.undo_asks)  # the level moved
    with pytest.raises(LookupError):
        book.state_at(book.last_id + 1)


def _rest_many(url: str, n: int) -> list[tuple[int, dict, dict]]:
    return [http_get(url) for _ in range(n)]


def test_rest_weights_429_then_418_with_retry_after():
    async def main():
        async with Exchange(**FAST, weight_budget={Market.SPOT: 30, Market.USDM: 10}, ban_seconds=90) as ex:
            spot = await asyncio.to_thread(_rest_many, ex.rest_url + "/api/v3/depth?symbol=BTCUSDT&limit=100", 8)
            fut = await asyncio.to_thread(_rest_many, ex.rest_url + "/fapi/v1/depth?symbol=BTCUSDT&limit=5", 6)
            bad = await asyncio.to_thread(http_get, ex.rest_url + "/fapi/v1/depth?symbol=BTCUSDT&limit=7")
            info = await asyncio.to_thread(http_get, ex.rest_url + "/fapi/v1/exchangeInfo")
            return spot, fut, bad, info, ex.stats()["rest"]

    spot, fut, bad, info, stats = run(main())
    assert [s for s, _, _ in spot] == [200] * 6 + [429, 418]
    assert [int(h["X-MBX-USED-WEIGHT-1M"]) for _, h, _ in spot] == [5, 10, 15, 20, 25, 30, 30, 30]
    assert 0 < int(spot[6][1]["Retry-After"]) <= 60 and spot[6][2]["code"] == -1003
    assert int(spot[7][1]["Retry-After"]) == 90
    # USD-M has its own budget: weight 2 for limit 5
    assert [s for s, _, _ in fut] == [200] * 5 + [429]
    assert [int(h["X-MBX-USED-WEIGHT-1M"]) for _, h, _ in fut] == [2, 4, 6, 8, 10, 10]
    assert bad[0] == 418  # still limited: a request inside the Retry-After is banned
    assert info[0] == 418
    assert stats["spot"]["429"] == 1 and stats["spot"]["418"] == 1 and stats["spot"]["requests"] == 8
    assert stats["usdm"]["429"] == 1 and stats["usdm"]["418"] == 2


def test_weight_limiter_window_ban_and_recovery():
    lim = WeightLimiter(budget=10, window=60, ban=120)
    assert [lim.admit(4, t).status for t in (0, 1, 2)] == [200, 200, 429]
    assert lim.admit(4, 30).status == 418 and lim.admit(1, 149).status == 418  # banned 30..150
    assert lim.admit(4, 151) == Admission(200, 0, 4)  # a new window, the ban over
    lim = WeightLimiter(budget=10, window=60, ban=120)
    assert lim.admit(8, 0).status == 200 and lim.admit(8, 10) == Admission(429, 50, 8)
    assert lim.admit(8, 61) == Admission(200, 0, 8)  # honouring Retry-After avoids the ban


def test_usdm_rest_depth_limits_and_spot_exchange_info():
    async def main():
        async with Exchange(**FAST) as ex:
            rows = []
            for limit in (5, 10, 20, 50, 100, 500, 1000, 7, 5000):
                rows.append(await asyncio.to_thread(http_get, ex.rest_url + f"/fapi/v1/depth?symbol=ETHUSDT&limit={limit}"))
            dflt = await asyncio.to_thread(http_get, ex.rest_url + "/fapi/v1/depth?symbol=ETHUSDT")
            info = await asyncio.to_thread(http_get, ex.rest_url + "/api/v3/exchangeInfo")
        return rows, dflt, info

    rows, dflt, info = run(main())
    weights = [int(h["X-MBX-USED-WEIGHT-1M"]) for _, h, _ in rows]
    assert [b - a for a, b in zip([0] + weights, weights)][:7] == [2, 2, 2, 2, 5, 10, 20]
    assert [s for s, _, _ in rows] == [200] * 7 + [400, 400] and rows[7][2]["code"] == -1130
    for (s, _, body), n in zip(rows, (5, 10, 20, 50)):
        assert len(body["bids"]) == len(body["asks"]) == n and body["T"] <= body["E"]
    assert dflt[0] == 200 and len(dflt[2]["bids"]) >= 100  # default 500: the whole simulated book
    st, headers, body = info
    assert st == 200 and int(headers["X-MBX-USED-WEIGHT-1M"]) == 20
    assert [(s["symbol"], s["status"]) for s in body["symbols"]] == [("BTCUSDT", "TRADING"), ("ETHUSDT", "TRADING")]
    assert body["rateLimits"][0] == {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000}


def test_exchange_info_follows_listings_and_delistings():
    async def main():
        async with Exchange(**FAST, max_incoming_per_sec=None) as ex:
            def info(market_path):
                return http_get(ex.rest_url + market_path)[2]["symbols"]

            def control(query):
                return post(urllib.request.Request(ex.rest_url + "/control/" + query, method="POST"))

            before = await asyncio.to_thread(info, "/api/v3/exchangeInfo")
            assert await asyncio.to_thread(control, "list_symbol?symbol=solusdt") == {"ok": True}  # both markets
            assert await asyncio.to_thread(control, "delist_symbol?symbol=ethusdt&market=spot") == {"ok": True}
            spot = await asyncio.to_thread(info, "/api/v3/exchangeInfo")
            fut = await asyncio.to_thread(info, "/fapi/v1/exchangeInfo")
            url = ex.ws_url + "/stream?streams=solusdt@trade/ethusdt@depth@100ms/btcusdt@depth@100ms"
            async with connect(url) as ws:
                got = await collect(ws, at_least(solusdt__trade=10, btcusdt__depth__100ms=20))
                ex.delist_symbol("solusdt")
                quiet_from = ex.streams[StreamKey(Market.SPOT, "solusdt@trade")].ring[-1].id
                after = await collect(ws, at_least(btcusdt__depth__100ms=20))
                ex.list_symbol("ethusdt")  # relisted: its book resumes where it stood
                back = await collect(ws, at_least(ethusdt__depth__100ms=5))
            bad = await asyncio.to_thread(post_status, ex.rest_url + "/control/delist_symbol?symbol=nopeusdt")
        return before, spot, fut, got, quiet_from, after, back, bad

    before, spot, fut, got, quiet_from, after, back, bad = run(main())
    assert [(s["symbol"], s["status"]) for s in before] == [("BTCUSDT", "TRADING"), ("ETHUSDT", "TRADING")]
    assert [(s["symbol"], s["status"], s["baseAsset"], s["quoteAsset"]) for s in spot] == [
        ("BTCUSDT", "TRADING", "BTC", "USDT"), ("ETHUSDT", "BREAK", "ETH", "USDT"), ("SOLUSDT", "TRADING", "SOL", "USDT")]
    assert [(s["symbol"], s["status"], s["contractType"]) for s in fut] == [
        ("BTCUSDT", "TRADING", "PERPETUAL"), ("ETHUSDT", "TRADING", "PERPETUAL"), ("SOLUSDT", "TRADING", "PERPETUAL")]
    assert "ethusdt@depth@100ms" not in got  # a halted symbol's streams are quiet
    assert all(t["t"] <= quiet_from for t in after.get("solusdt@trade", []))
    assert all(d["e"] == "depthUpdate" for d in back["ethusdt@depth@100ms"])
    assert bad == 400


def post_status(url: str) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.parametrize("market", [Market.SPOT, Market.USDM])
def test_drop_diff_leaves_exactly_one_gap(market, tmp_path):
    path = "/stream" if market is Market.SPOT else "/public/stream"
    log = tmp_path / "sent.ndjson"

    async def main():
        async with Exchange(**FAST, sent_log=str(log)) as ex:
            async with connect(ex.ws_url + path + "?streams=btcusdt@depth@100ms") as ws:
                events = (await collect(ws, at_least(btcusdt__depth__100ms=5)))["btcusdt@depth@100ms"]
                status = await asyncio.to_thread(
                    post_status, ex.rest_url + f"/control/drop_diff?stream=btcusdt@depth@100ms&market={market.value}")
                events += (await collect(ws, at_least(btcusdt__depth__100ms=15)))["btcusdt@depth@100ms"]
            return status, events, ex.stats()["dropped"]

    status, events, dropped = run(main())
    assert status == 200
    if market is Market.SPOT:
        gaps = [(a["u"], b["U"]) for a, b in zip(events, events[1:]) if b["U"] != a["u"] + 1]
    else:
        gaps = [(a["u"], b["pu"]) for a, b in zip(events, events[1:]) if b["pu"] != a["u"]]
    assert len(gaps) == 1
    assert dropped[market.value] == {"btcusdt@depth@100ms": 1}
    lost = [orjson.loads(x) for x in log.read_bytes().splitlines() if b'"fault"' in x]
    assert [(x["market"], x["stream"], x["fault"]) for x in lost] == [(market.value, "btcusdt@depth@100ms", "dropped")]
    prev_u, next_first = gaps[0]
    assert prev_u < lost[0]["id"]  # the dropped event's u lies in the hole the client sees
    assert lost[0]["id"] == (next_first - 1 if market is Market.SPOT else next_first)


def test_drop_trades_leaves_an_id_gap_of_n():
    async def main():
        async with Exchange(**FAST) as ex:
            async with connect(ex.ws_url + "/stream?streams=btcusdt@trade/btcusdt@aggTrade") as ws:
                got = await collect(ws, at_least(btcusdt__trade=3, btcusdt__aggTrade=2))
                ex.drop_trades("btcusdt@trade", 5)
                ex.drop_trades("btcusdt@aggTrade", 2)
                with pytest.raises(ValueError):
                    ex.drop_trades("btcusdt@depth5", 1)
                more = await collect(ws, at_least(btcusdt__trade=30, btcusdt__aggTrade=12))
            return got, more, ex.stats()["dropped"]["spot"]

    got, more, dropped = run(main())
    for name, key, n in (("btcusdt@trade", "t", 5), ("btcusdt@aggTrade", "a", 2)):
        ids = [m[key] for m in got[name] + more[name]]
        steps = [b - a for a, b in zip(ids, ids[1:])]
        assert sorted(steps)[-1] == n + 1 and steps.count(1) == len(steps) - 1, steps
        assert dropped[name] == n


def test_sent_log_records_every_kind_on_both_markets(tmp_path):
    path = tmp_path / "sent.ndjson"
    spot = "btcusdt@depth5/btcusdt@depth@100ms/btcusdt@trade/btcusdt@aggTrade/btcusdt@bookTicker"

    async def main():
        async with Exchange(**FAST, sent_log=str(path)) as ex:
            async with connect(ex.ws_url + "/stream?streams=" + spot) as a, \
                    connect(ex.ws_url + "/public/stream?streams=ethusdt@depth10@100ms/ethusdt@depth@100ms/ethusdt@bookTicker/ethusdt@trade") as b, \
                    connect(ex.ws_url + "/market/stream?streams=ethusdt@aggTrade/ethusdt@markPrice@1s/"
                            "ethusdt@forceOrder") as c:
                got = [await collect(a, at_least(btcusdt__depth5=3, btcusdt__trade=5, btcusdt__aggTrade=3, btcusdt__bookTicker=3)),
                       await collect(b, at_least(ethusdt__bookTicker=3, ethusdt__depth10__100ms=3, ethusdt__trade=5)),
                       await collect(c, at_least(ethusdt__aggTrade=3, ethusdt__markPrice__1s=2,
                                                 ethusdt__forceOrder=2))]
        return got

    got = run(main())
    lines = [orjson.loads(x) for x in path.read_bytes().splitlines()]
    logged = {(x["conn"], x["stream"], x["id"]): x for x in lines if "data" in x}
    ids = {"depth_snapshot": lambda d: d.get("lastUpdateId", d.get("u")), "depth_update": lambda d: d["u"],
           "trade": lambda d: d["t"], "agg_trade": lambda d: d["a"], "book_ticker": lambda d: d["u"],
           "mark_price": lambda d: d["E"], "liquidation": lambda d: d["E"]}
    kinds = set()
    for conn, (market, by_stream) in enumerate(zip(("spot", "usdm", "usdm"), got), 1):
        for stream, datas in by_stream.items():
            for d in datas:
                line = next(x for (c, s, _), x in logged.items() if c == conn and s == stream and x["data"] == d)
                assert line["market"] == market and ids[line["kind"]](d) == line["id"]
                assert ("last_update_id" in line) == line["kind"].startswith("depth")
                kinds.add((market, line["kind"]))
    futures_only = {Kind.MARK_PRICE, Kind.FORCE_ORDER}
    assert kinds == {(m, k.dataset) for m in ("spot", "usdm") for k in SERVED_KINDS
                     if m == "usdm" or k not in futures_only}


def test_control_book_equals_rest_snapshots_of_both_markets():
    async def main():
        async with Exchange(**FAST) as ex:
            out = []
            for rest, market in (("/api/v3/depth?symbol=ETHUSDT&limit=20", "spot"),
                                 ("/fapi/v1/depth?symbol=ETHUSDT&limit=20", "usdm")):
                snap = (await asyncio.to_thread(http_get, ex.rest_url + rest))[2]
                book = await asyncio.to_thread(http_get, ex.rest_url + (
                    f"/control/book?symbol=ethusdt&market={market}&update_id={snap['lastUpdateId']}&limit=20"))
                out.append((snap, book))
            missing = await asyncio.to_thread(http_get, ex.rest_url + "/control/book?symbol=ethusdt&update_id=5")
        return out, missing

    out, missing = run(main())
    for snap, (status, _, book) in out:
        assert status == 200 and book == {k: snap[k] for k in ("lastUpdateId", "bids", "asks")}
    assert out[0][0]["lastUpdateId"] != out[1][0]["lastUpdateId"] or out[0][0]["bids"] != out[1][0]["bids"]
    assert missing[0] == 404


def test_usdm_allows_ten_messages_per_second_then_1008():
    async def main():
        async with Exchange(**FAST) as ex:
            async with connect(ex.ws_url + "/public/ws") as ws:
                for i in range(10):
                    await ws.send(orjson.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}).decode())
                for i in range(10):
                    assert await reply(ws, i) == {"result": [], "id": i}
                await ws.send(orjson.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 99}).decode())
                with pytest.raises(ConnectionClosedError) as info:
                    await reply(ws, 99)
        assert info.value.rcvd.code == 1008
    run(main())


def test_handshake_checks_names_per_market_and_the_usdm_stream_limit():
    many = "/".join(f"s{i:03d}usdt@depth" for i in range(201))

    async def main():
        async with Exchange(symbols=["btcusdt"] + [f"s{i:03d}usdt" for i in range(201)], seed=1, rate=50) as ex:
            statuses = {}
            for path in ("/stream?streams=btcusdt@depth@500ms", "/public/stream?streams=btcusdt@depth@500ms",
                         "/public/stream?streams=" + many, "/stream?streams=" + many, "/private/stream"):
                try:
                    async with connect(ex.ws_url + path) as ws:
                        statuses[path] = 101
                        if "500ms" in path:
                            await recv_data(ws, 1)
                except InvalidStatus as exc:
                    statuses[path] = exc.response.status_code
        return list(statuses.values())

    assert run(main()) == [400, 101, 400, 101, 404]  # 500 ms is USD-M only; USD-M allows 200 streams


def test_partials_not_aligned_by_default_lie_inside_a_diff_event_and_are_the_book_there():
    """Binance does not say a partial snapshot's lastUpdateId is ever a diff event's u: by
    default the simulator's never is. Each lies strictly inside one diff event ([U, u)), and
    is the simulator's own book at that id."""
    async def main():
        async with Exchange(**FAST) as ex:
            url = ex.ws_url + "/stream?streams=btcusdt@depth@100ms/btcusdt@depth20@100ms"
            async with connect(url) as ws:
                msgs = await recv_data(ws, 60)
            parts = [m["data"] for m in msgs if m["stream"] == "btcusdt@depth20@100ms"]
            states = {d["lastUpdateId"]: ex.book_state("btcusdt", d["lastUpdateId"]) for d in parts}
            return msgs, parts, states

    msgs, parts, states = run(main())
    diffs = [m["data"] for m in msgs if m["stream"] == "btcusdt@depth@100ms"]
    assert len(parts) >= 20 and len(diffs) >= 20
    inside = 0
    for d in parts:
        lid = d["lastUpdateId"]
        assert lid not in {x["u"] for x in diffs}
        inside += any(x["U"] <= lid < x["u"] for x in diffs)
        st = states[lid]
        assert d["bids"] == [list(x) for x in sorted(st.bids.items(), key=lambda x: -float(x[0]))[:20]]
    assert inside >= len(parts) - 2  # the first and last may fall outside the diffs received


def test_deep_books_drift_past_a_snapshots_range():
    """Thousands of levels a side and a trend: the best bid leaves the range of a 100-level
    snapshot within a few hundred steps (a minute at 10 steps/s), and the levels it meets there
    rested since before the snapshot (a rebuilt book without them would be wrong)."""
    book = Book("btcusdt", 5, levels=3000, trend=0.3, jump=0.02)
    assert len(book.bids) >= 3000 and len(book.asks) >= 3000
    first = book.depth_payload(100)
    worst_ask = float(orjson.loads(first)["asks"][-1][0])
    resting = {p for p, _ in orjson.loads(book.depth_payload(5000))["asks"]}
    for step in range(1, 601):
        book.advance_to(step)
        best_bid = float(orjson.loads(book.depth_payload(1))["bids"][0][0])
        if best_bid > worst_ask:
            break
    assert best_bid > worst_ask, step
    top = orjson.loads(book.depth_payload(20))["asks"]
    assert {p for p, _ in top} & resting  # asks that never changed since the first snapshot


# ---- the exchange's daily files ----------------------------------------------------------

def read_daily(path: Path) -> tuple[str | None, list[list[str]]]:
    """(header line or None, rows) of one daily zip, after checking its .CHECKSUM."""
    import hashlib
    import zipfile

    digest, name = path.with_name(path.name + ".CHECKSUM").read_text().split()
    assert (digest, name) == (hashlib.sha256(path.read_bytes()).hexdigest(), path.name)
    with zipfile.ZipFile(path) as z:
        assert z.namelist() == [path.name.replace(".zip", ".csv")]
        lines = z.read(z.namelist()[0]).decode().splitlines()
    header = lines[0] if not lines[0][0].isdigit() else None
    return header, [x.split(",") for x in lines[1 if header else 0:]]


def post_json(req) -> tuple[int, dict]:
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, orjson.loads(r.read())


def test_daily_files_hold_every_trade_generated_sent_dropped_or_muted(tmp_path):
    """The files list every trade and aggTrade the book made that day, those dropped and muted
    too; what clients received is in them with equal values; spot in µs without header, USD-M in
    ms with one."""
    from datetime import datetime, timezone

    async def main():
        async with Exchange(symbols=["btcusdt"], seed=1, rate=50) as ex:
            async with connect(ex.ws_url + "/stream?streams=btcusdt@trade/btcusdt@aggTrade") as spot, \
                    connect(ex.ws_url + "/public/stream?streams=btcusdt@trade") as public, \
                    connect(ex.ws_url + "/market/stream?streams=btcusdt@aggTrade") as market:
                got = {"spot": await collect(spot, at_least(btcusdt__trade=5, btcusdt__aggTrade=3))}
                ex.drop_trades("btcusdt@trade", 4)
                ex.mute("btcusdt@aggTrade", Market.USDM)
                more = await collect(spot, at_least(btcusdt__trade=20, btcusdt__aggTrade=10))
                usdm = await collect(public, at_least(btcusdt__trade=20))
                ex.unmute("btcusdt@aggTrade", Market.USDM)
                usdm.update(await collect(market, at_least(btcusdt__aggTrade=3)))
                got["usdm"] = usdm
                for s in more:
                    got["spot"][s] += more[s]
                days = sorted({datetime.fromtimestamp(m["T"] / 1e3, timezone.utc).date()
                               for g in got.values() for ms in g.values() for m in ms})
                status = {}
                for d in days:  # a run across midnight writes both days
                    req = urllib.request.Request(f"{ex.rest_url}/control/daily_files?folder={tmp_path}&date={d}",
                                                 method="POST")
                    status[d] = await asyncio.to_thread(post_json, req)
                bad = urllib.request.Request(f"{ex.rest_url}/control/daily_files?folder={tmp_path}&date=2026-13-01",
                                             method="POST")
                with pytest.raises(urllib.error.HTTPError) as refused:
                    await asyncio.to_thread(post_json, bad)
                assert refused.value.code == 400
            return got, days, status, ex.stats()["dropped"]

    got, days, status, dropped = run(main(), timeout=30)
    assert dropped["spot"] == {"btcusdt@trade": 4}
    for d in days:
        code, body = status[d]
        assert code == 200 and body["ok"] and len(body["files"]) == 4, body
    for market, folder, unit in (("spot", "spot", 1000), ("usdm", "futures/um", 1)):
        rows, headers = {}, {}
        for kind in ("trades", "aggTrades"):
            rows[kind] = []
            for d in days:
                header, r = read_daily(tmp_path / "data" / folder / "daily" / kind / "BTCUSDT" /
                                       f"BTCUSDT-{kind}-{d}.zip")
                headers[kind] = header
                rows[kind] += r
        if market == "spot":
            assert headers == {"trades": None, "aggTrades": None}
            assert {r[-1] for r in rows["trades"] + rows["aggTrades"]} == {"True"}  # is_best_match
            assert all(len(r) == 7 for r in rows["trades"]) and all(len(r) == 8 for r in rows["aggTrades"])
        else:
            assert headers == {"trades": "id,price,qty,quote_qty,time,is_buyer_maker",
                               "aggTrades": "agg_trade_id,price,quantity,first_trade_id,last_trade_id,"
                                            "transact_time,is_buyer_maker"}
        trades = {int(r[0]): r for r in rows["trades"]}
        aggs = {int(r[0]): r for r in rows["aggTrades"]}
        # every id of the book, consecutive: the dropped and muted ones included
        assert list(trades) == list(range(min(trades), max(trades) + 1))
        assert list(aggs) == list(range(min(aggs), max(aggs) + 1))
        assert [int(a[3]) for a in aggs.values()] == [min(trades)] + [int(a[4]) + 1 for a in list(aggs.values())[:-1]]
        assert int(list(aggs.values())[-1][4]) == max(trades)  # aggTrades tile the trades exactly
        for t in got[market]["btcusdt@trade"]:
            r = trades[t["t"]]
            assert (float(r[1]), float(r[2]), int(r[4]), r[5].lower()) == \
                   (float(t["p"]), float(t["q"]), t["T"] * unit, str(t["m"]).lower()), (market, t, r)
            assert abs(float(r[3]) - float(t["p"]) * float(t["q"])) < 1e-6
        for a in got[market]["btcusdt@aggTrade"]:
            r = aggs[a["a"]]
            assert (float(r[1]), float(r[2]), int(r[3]), int(r[4]), int(r[5]), r[6].lower()) == \
                   (float(a["p"]), float(a["q"]), a["f"], a["l"], a["T"] * unit, str(a["m"]).lower())
        received = {t["t"] for t in got[market]["btcusdt@trade"]}
        assert len(set(trades) - received) > 0  # the files hold trades no client received
    spot_ids = [t["t"] for t in got["spot"]["btcusdt@trade"]]
    hole = [i for i in range(spot_ids[0], spot_ids[-1] + 1) if i not in set(spot_ids)]
    assert len(hole) == 4  # the dropped ones: never received, yet in the file (checked above)


def test_the_trade_tape_is_bounded_and_never_writes_a_short_day(tmp_path):
    from datetime import date

    from tools.simulator.daily import DAY_MS, Tape, write_day
    from tools.simulator.exchange import AggTrade, Trade

    day0 = 20_000  # 2024-10-04: spot files of that day are in milliseconds
    tape = Tape(Market.SPOT, "btcusdt", tick=10**6, limit=3)
    tape.record(day0 * DAY_MS + 5, [Trade(1, 6_500_000, 10**8, True), Trade(2, 6_500_000, 2 * 10**8, True)],
                [AggTrade(1, 6_500_000, 3 * 10**8, 1, 2, True)])
    tape.record(day0 * DAY_MS + 9, [Trade(3, 6_500_001, 10**7, False), Trade(4, 6_500_001, 10**7, False)],
                [AggTrade(2, 6_500_001, 2 * 10**7, 3, 4, False)])  # over the limit: the day is cut
    with pytest.raises(ValueError, match="trade_tape_limit"):
        write_day([tape], tmp_path, date(2024, 10, 4))
    tape.record((day0 + 1) * DAY_MS, [Trade(5, 6_500_000, 10**8, True)], [AggTrade(3, 6_500_000, 10**8, 5, 5, True)])
    aggs, trades = write_day([tape], tmp_path, date(2024, 10, 5))  # sorted: aggTrades first
    assert read_daily(aggs) == (None, [["3", "65000.00000000", "1.00000000", "5", "5", str((day0 + 1) * DAY_MS),
                                        "True", "True"]])
    assert read_daily(trades)[1] == [["5", "65000.00000000", "1.00000000", "65000.00000000",
                                      str((day0 + 1) * DAY_MS), "True", "True"]]
    tape.record((day0 + 2) * DAY_MS, [Trade(6, 6_500_000, 10**8, True)], [AggTrade(4, 6_500_000, 10**8, 6, 6, True)])
    assert sorted(tape.days) == [day0 + 1, day0 + 2]  # two days kept, the oldest forgotten
    with pytest.raises(ValueError, match="no longer kept"):
        write_day([tape], tmp_path, date(2024, 10, 4))
    assert write_day([tape], tmp_path, date(2024, 10, 8)) == []  # a day without trades: no file


def test_mark_price_keeps_binances_clock_and_force_order_one_a_second_on_the_market_route():
    """markPrice@1s ticks every second whatever ``rate`` says, forceOrder sends at most one
    liquidation a second (the latest fill), both only on USD-M's /market route."""
    async def main():
        async with Exchange(**FAST) as ex:
            loop = asyncio.get_running_loop()
            t0 = loop.time()  # before the subscription: what the stream sent fell due after it
            async with connect(ex.ws_url + "/market/stream?streams=btcusdt@markPrice@1s/btcusdt@forceOrder/"
                               "btcusdt@aggTrade") as m, \
                    connect(ex.ws_url + "/public/stream?streams=btcusdt@markPrice") as p:
                got = await collect(m, at_least(btcusdt__markPrice__1s=3, btcusdt__forceOrder=3))
                return got, ex.stats()["silent_subscriptions"], loop.time() - t0

    got, silent, elapsed = run(main())
    marks, forces = got["btcusdt@markPrice@1s"], got["btcusdt@forceOrder"]
    for d in marks:
        assert list(d) == ["e", "E", "s", "p", "i", "P", "r", "T"] and d["e"] == "markPriceUpdate"
        assert float(d["p"]) > 0 and d["T"] % 28_800_000 == 0 and d["T"] > d["E"]
    for d in forces:
        assert list(d) == ["e", "E", "o"] and d["e"] == "forceOrder"
        assert list(d["o"]) == ["s", "S", "o", "f", "q", "p", "ap", "X", "l", "z", "T"] and d["o"]["T"] <= d["E"]
    # rate=50 would tick every 20 ms: these are Binance's 1000 ms. Counted, not timed: on a fixed
    # 1 s grid at most ``elapsed + 1`` ticks fall due while the test reads (a late one goes out in a
    # burst with the next, so the gaps between event times say nothing on a loaded machine)
    for stream in (marks, forces):
        assert len(stream) <= elapsed + 1, (len(stream), elapsed)
        assert all(b["E"] > a["E"] for a, b in zip(stream, stream[1:]))
    assert silent == 1  # markPrice on /public: accepted, never fed


def test_coinm_mark_price_and_force_order_have_coinm_shapes_on_the_unrouted_path():
    """COIN-M's markPriceUpdate is ordered ``e,E,s,p,P,i,r,T`` and a delivery contract's has no
    funding (``"r": ""``, ``"T": 0``); its forceOrder's ``o`` carries the pair ``ps`` after ``s``
    (COIN-M "Mark Price Stream", "All Market Liquidation Order Streams")."""
    perp, dated = "btcusd_perp", "btcusd_261225"

    async def main():
        async with Exchange(symbols=["btcusdt"], coinm_symbols=[perp, dated], seed=1, rate=50) as ex:
            async with connect(ex.ws_url + f"/dstream/stream?streams={perp}@markPrice@1s/{dated}@markPrice@1s/"
                               f"{perp}@forceOrder") as c:
                return await collect(c, at_least(btcusd_perp__markPrice__1s=2, btcusd_261225__markPrice__1s=2,
                                                 btcusd_perp__forceOrder=2))

    got = run(main())
    for stream, funded in ((f"{perp}@markPrice@1s", True), (f"{dated}@markPrice@1s", False)):
        for d in got[stream]:
            assert list(d) == ["e", "E", "s", "p", "P", "i", "r", "T"] and d["s"] == stream.split("@")[0].upper()
            if funded:
                assert abs(float(d["r"])) <= 0.0001 and d["T"] % 28_800_000 == 0 and d["T"] > d["E"]
            else:
                assert (d["r"], d["T"]) == ("", 0)
    for d in got[f"{perp}@forceOrder"]:
        assert list(d) == ["e", "E", "o"] and d["e"] == "forceOrder"
        assert list(d["o"]) == ["s", "ps", "S", "o", "f", "q", "p", "ap", "X", "l", "z", "T"]
        assert (d["o"]["s"], d["o"]["ps"]) == ("BTCUSD_PERP", "BTCUSD")
