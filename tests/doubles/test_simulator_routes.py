"""USD-M routes on the simulated exchange: the retired unrouted paths, and the route switch.

Binance accepts a stream on the wrong route (handshake, SUBSCRIBE, LIST_SUBSCRIPTIONS all
succeed) and sends nothing for it; the simulator must do the same, so that a product that
picked the wrong route is caught by silence, and ``set_route`` must move a kind at once
on open connections, so that a test can plant a wrong route and then correct it.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import orjson
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from tools.simulator.exchange import Exchange
from tools.simulator.facts import Kind, Route

FAST = dict(symbols=["btcusdt"], seed=3, rate=50, max_incoming_per_sec=None)
#: Long enough for any wait here on a loaded machine; the waits end on their condition.
WAIT = 10.0


def run(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def connect(url: str):
    return ws_connect(url, max_queue=None)


class Reader:
    """Everything one connection received, by stream; replies by id."""

    def __init__(self, ws, combined: bool = True):
        self.ws, self.combined = ws, combined
        self.data: dict[str, list[dict]] = {}
        self.replies: dict[int, dict] = {}
        self.arrived = asyncio.Event()  # set on every frame: the waits below re-check then
        self.task = asyncio.create_task(self._loop())

    async def _loop(self):
        try:
            await self._read()
        except ConnectionClosed:  # a failing test closes mid-read; its assertion says why
            pass

    async def _read(self):
        async for raw in self.ws:
            msg = orjson.loads(raw)
            if "id" in msg and ("result" in msg or "error" in msg):
                self.replies[msg["id"]] = msg
            elif self.combined:
                self.data.setdefault(msg["stream"], []).append(msg["data"])
            else:
                self.data.setdefault(f'{msg["s"].lower()}@{msg["e"]}', []).append(msg)
            self.arrived.set()

    def count(self, stream: str) -> int:
        return len(self.data.get(stream, ()))

    async def until(self, cond, what: str):
        async def loop():
            while not cond():
                self.arrived.clear()
                await self.arrived.wait()
        try:
            await asyncio.wait_for(loop(), WAIT)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}; got {({k: len(v) for k, v in self.data.items()})}")

    async def request(self, rid: int, method: str, params: list | None = None) -> dict:
        """A control request; when its reply is here, every frame queued before it is here too
        (one writer per connection keeps the order)."""
        req = {"method": method, "id": rid, **({"params": params} if params is not None else {})}
        await self.ws.send(orjson.dumps(req).decode())
        await self.until(lambda: rid in self.replies, f"the reply to {method} {rid}")
        return self.replies[rid]

    async def close(self):
        await self.ws.close()
        await asyncio.gather(self.task, return_exceptions=True)


def test_unrouted_usdm_paths_accept_everything_and_serve_only_what_public_serves():
    async def main():
        async with Exchange(**FAST) as ex:
            url = ex.ws_url + "/fstream/stream?streams=btcusdt@depth@100ms/btcusdt@trade/btcusdt@aggTrade"
            async with connect(url) as a, connect(ex.ws_url + "/fstream/ws") as b, \
                    connect(ex.ws_url + "/fstream/public/stream?streams=btcusdt@aggTrade") as c, \
                    connect(ex.ws_url + "/fstream/market/stream?streams=btcusdt@aggTrade") as d:
                ra, rb, rc, rd = Reader(a), Reader(b, combined=False), Reader(c), Reader(d)
                sub = await rb.request(1, "SUBSCRIBE", ["btcusdt@aggTrade", "btcusdt@bookTicker"])
                listed = await rb.request(2, "LIST_SUBSCRIPTIONS")
                # aggTrade flows on its route (so it is being generated) ...
                await rd.until(lambda: rd.count("btcusdt@aggTrade") >= 10, "aggTrade on /fstream/market")
                await ra.until(lambda: ra.count("btcusdt@depth@100ms") >= 10 and ra.count("btcusdt@trade") >= 10,
                               "depth and trade on the unrouted /fstream/stream")
                await rb.until(lambda: rb.count("btcusdt@bookTicker") >= 5, "bookTicker on the unrouted /fstream/ws")
                # ... and a round trip on each other connection proves nothing of it was queued there
                for i, r in enumerate((ra, rb, rc), 10):
                    await r.request(i, "LIST_SUBSCRIPTIONS")
                stats = ex.stats()
                for r in (ra, rb, rc, rd):
                    await r.close()
        return ra.data, rb.data, rc.data, sub, listed, stats

    a, b, c, sub, listed, stats = run(main())
    assert sub == {"result": None, "id": 1}
    assert listed["result"] == ["btcusdt@aggTrade", "btcusdt@bookTicker"]
    assert set(a) == {"btcusdt@depth@100ms", "btcusdt@trade"}  # the aggTrade is silent
    assert set(b) == {"btcusdt@bookTicker"}
    assert c == {}  # aggTrade on /public
    assert stats["silent_subscriptions"] == 3


def test_route_switch_plants_a_wrong_route_and_corrects_it_on_open_connections():
    async def main():
        async with Exchange(**FAST) as ex:
            pub = ex.ws_url + "/public/stream?streams=btcusdt@trade/btcusdt@depth@100ms"
            mkt = ex.ws_url + "/market/stream?streams=btcusdt@trade"
            async with connect(pub) as p, connect(mkt) as m:
                rp, rm = Reader(p), Reader(m)
                await rp.until(lambda: rp.count("btcusdt@trade") >= 10, "trade on /public")
                await rm.request(1, "LIST_SUBSCRIPTIONS")
                silent_before = rm.count("btcusdt@trade")

                # plant the wrong route over HTTP: trade moves to /market
                req = urllib.request.Request(ex.rest_url + "/control/route?market=usdm&kind=trade&route=market", method="POST")
                answer = await asyncio.to_thread(lambda: orjson.loads(urllib.request.urlopen(req, timeout=5).read()))
                assert ex.routes[Kind.TRADE] is Route.MARKET
                await rm.until(lambda: rm.count("btcusdt@trade") >= 10, "trade on /market once planted there")
                first_on_market = rm.data["btcusdt@trade"][0]["t"]
                await rp.request(2, "LIST_SUBSCRIPTIONS")
                public_after_plant = [t["t"] for t in rp.data["btcusdt@trade"]]
                depth_seen = rp.count("btcusdt@depth@100ms")

                # correct it with the method: trade back on /public
                ex.set_route("trade", "public")
                mark = len(rp.data["btcusdt@trade"])
                await rp.until(lambda: len(rp.data["btcusdt@trade"]) >= mark + 10, "trade on /public once corrected")
                first_back = rp.data["btcusdt@trade"][mark]["t"]
                await rm.request(3, "LIST_SUBSCRIPTIONS")
                market_trades = [t["t"] for t in rm.data["btcusdt@trade"]]
                await rp.until(lambda: rp.count("btcusdt@depth@100ms") > depth_seen, "depth on /public throughout")
                stats = ex.stats()
                await rp.close()
                await rm.close()
        return answer, silent_before, first_on_market, public_after_plant, first_back, market_trades, stats

    answer, silent_before, first_on_market, public_after_plant, first_back, market_trades, stats = run(main())
    assert answer == {"ok": True}
    assert silent_before == 0  # trade on /market was silent until planted there
    # after the plant, /public got no trade generated after /market's first one
    assert max(public_after_plant) < first_on_market
    # after the correction, /market got no trade generated after /public's first one again
    assert max(market_trades) < first_back
    # each stream was silent once: /market at subscription, /public at the plant, /market at the correction
    assert stats["silent_subscriptions"] == 3


def test_route_switch_refuses_what_it_cannot_route():
    async def main():
        async with Exchange(**FAST) as ex:
            bad = [("kline_1m", "market", "usdm"), ("trade", "private", "usdm"), ("trade", "market", "spot")]
            statuses = []
            for kind, route, market in bad:
                req = urllib.request.Request(
                    ex.rest_url + f"/control/route?market={market}&kind={kind}&route={route}", method="POST")
                try:
                    await asyncio.to_thread(urllib.request.urlopen, req, timeout=5)
                    statuses.append(200)
                except urllib.error.HTTPError as e:
                    statuses.append(e.code)
            return statuses, dict(ex.routes)

    statuses, routes = run(main())
    assert statuses == [400, 400, 400]
    assert routes[Kind.TRADE] is Route.PUBLIC  # nothing changed
