"""Rebuilt books against the simulated exchange's own books (its oracle, ``book_state``).

A small recorder stands in for the collector (which does not archive diff depth on this
branch yet): it records diff and partial depth over the simulator's WebSocket as Binance's
clients do, fetches REST snapshots after buffering (and again after a dropped diff event),
and turns what it received into the datasets' columns. ``book_snapshot`` built from them must
equal the simulator's book at every known point, prove 0 mismatches against the partial
snapshots, and be unknown (never wrong) from the dropped event until the resync snapshot.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from websockets.asyncio.client import connect

from orderbook_core.buffer.hours import HOUR_US
from orderbook_core.streams import Market

from orderbook_assets.books.hour import Settings, build_hour
from support.book_tables import TS, Part, Rest, Upd, partial, rest, updates
from tools.simulator.exchange import Exchange

H = 1_795_514_400_000_000
DEADLINE = 20.0
DIFFS = 60


def _levels(side: list[list[str]]) -> list[tuple[float, float]]:
    return [(float(p), float(q)) for p, q in side]


async def record(ex: Exchange, market: Market, drop_after: int, resync_after: int):
    usdm = market is Market.USDM
    diff, part = "btcusdt@depth@100ms", "btcusdt@depth20@100ms"
    path = "/public/stream" if usdm else "/stream"
    rest_url = f"{ex.rest_url}/{'fapi/v1' if usdm else 'api/v3'}/depth?symbol=BTCUSDT&limit=1000"
    ups, parts, snaps = [], [], []
    n = 0
    async with connect(f"{ex.ws_url}{path}?streams={diff}/{part}") as ws:
        while n < DIFFS:
            raw = await asyncio.wait_for(ws.recv(), DEADLINE)
            recv = time.time_ns() // 1000
            f = orjson.loads(raw)
            d = f["data"]
            if f["stream"] == diff:
                n += 1
                ups.append(Upd(recv, d["U"], d["u"], _levels(d["b"]), _levels(d["a"]), d.get("pu")))
                if n in (3, resync_after):  # a collector buffers events, then fetches the snapshot
                    body = await asyncio.to_thread(lambda: urllib.request.urlopen(rest_url, timeout=DEADLINE).read())
                    s = orjson.loads(body)
                    snaps.append(Rest(time.time_ns() // 1000, s["lastUpdateId"], _levels(s["bids"]), _levels(s["asks"]),
                                      limit=1000))  # the book's ~110 levels a side: whole sides
                if n == drop_after:
                    ex.drop_diff(diff, market)
            else:
                lid = d["u"] if usdm else d["lastUpdateId"]
                parts.append(Part(recv, lid, _levels(d["b"] if usdm else d["bids"]),
                                  _levels(d["a"] if usdm else d["asks"])))
    return ups, parts, snaps


def _shift(rows, first):
    """Receive times moved to the end of the hour ``H`` (the points before them are cheap)."""
    return [r._replace(recv_us=H + (r.recv_us - first)) for r in rows]


@pytest.mark.parametrize("market", [Market.SPOT, Market.USDM])
def test_rebuilt_books_equal_the_simulators_and_a_dropped_diff_is_unknown_until_the_resync(market: Market):
    async def scenario():
        async with Exchange(symbols=["btcusdt"], seed=3, rate=40, book_levels=100) as ex:
            ups, parts, snaps = await record(ex, market, drop_after=25, resync_after=40)
            # the recording's last row lands 1 s before the hour's end: few points after it
            first = max(r.recv_us for r in ups + parts + snaps) - (HOUR_US - 1_000_000)
            m = market.value
            out = build_hour(H, updates(_shift(ups, first), market=m),
                             rest(_shift(snaps, first), market=m), None,
                             Settings(depth=1000, interval_us=10_000),  # every 10 ms: between most events
                             partial=partial(_shift(parts, first), market=m))
            rows = out.table.filter(pc.field("time") >= pa.scalar(H + HOUR_US - 10_000_000, TS)).to_pylist()
            known = [r for r in rows if r["known"]]
            oracle = {lid: ex.book_state("btcusdt", lid, market)
                      for lid in sorted({r["last_update_id"] for r in known})}
            return ups, parts, snaps, first, out, rows, known, oracle

    ups, parts, snaps, first, out, rows, known, oracle = asyncio.run(scenario())
    assert len(known) > 50
    for r in known:
        st = oracle[r["last_update_id"]]
        want_b = sorted(((float(p), float(q)) for p, q in st.bids.items()), reverse=True)
        want_a = sorted((float(p), float(q)) for p, q in st.asks.items())
        assert [(x["price"], x["qty"]) for x in r["bids"]] == want_b, r["time"]
        assert [(x["price"], x["qty"]) for x in r["asks"]] == want_a, r["time"]
    proof = out.proof
    # no partial snapshot's id is a diff event's u (the simulator's default): every one is proven
    # around its id, inside the event that straddles it
    assert not {p.u for p in parts} & {u.u for u in ups}
    assert proof.comparable > 10 and proof.mismatches == [] and proof.matched == proof.comparable
    assert proof.crossed == []
    # the dropped event: unknown from the last event before the hole until the event that
    # bridges the resync snapshot; no known point carries an id inside the hole
    def continues(i):
        return ups[i].pu == ups[i - 1].u if market is Market.USDM else ups[i].U == ups[i - 1].u + 1

    broke_at = next(i for i in range(1, len(ups)) if not continues(i))
    assert broke_at >= 20 and all(continues(i) for i in range(broke_at + 1, len(ups)))  # one hole only
    last_good, resync = ups[broke_at - 1], snaps[1]
    bridge = next(u for u in ups if (u.u >= resync.u if market is Market.USDM else u.u > resync.u))
    ids = [r["last_update_id"] for r in known]
    # points after the last good event are decided by the next one, which breaks: unknown
    assert [i for i in ids if i < last_good.u] and last_good.u not in ids
    assert not [i for i in ids if last_good.u <= i < resync.u]
    assert [i for i in ids if i >= bridge.u]
    t_lo, t_hi = H + last_good.recv_us - first, H + bridge.recv_us - first
    stretch = [r for r in rows if t_lo < r["time"].timestamp() * 1_000_000 < t_hi]
    assert len(stretch) > 5 and not any(r["known"] for r in stretch)
