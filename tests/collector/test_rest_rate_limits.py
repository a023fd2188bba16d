"""The REST client never earns a 418: its budget counts every request in flight against what the
exchange reports, and after a 429 nothing is sent until its Retry-After has passed (the
simulator bans any request inside a 429's Retry-After, as Binance may)."""

from __future__ import annotations

import asyncio
import time

from orderbook_collector.connection.rest import RestClient, RestError
from orderbook_core.streams import Market
from tools.simulator.exchange import Exchange

USDM = Market.USDM
DEPTH = ("/fapi/v1/depth", {"symbol": "BTCUSDT", "limit": 100}, 5)  # weight 5 on USD-M


async def _burst(client: RestClient, n: int) -> list[object]:
    return await asyncio.gather(*(client.get(*DEPTH) for _ in range(n)), return_exceptions=True)


def test_a_whole_share_beside_others_spending_60_percent_earns_no_429_nor_418():
    """Share 1.0 of a budget of 100 per 1 s window while other clients on the IP spend 60 at the
    start of every window: 24 snapshots of weight 5 (three windows' worth of the 40 left) asked
    at once, four in flight. Every one is answered, and the exchange never answered 429 or 418."""
    async def main():
        async with Exchange(symbols=["btcusdt"], weight_budget={USDM: 100}, weight_window=1.0,
                            ban_seconds=5.0) as ex:
            ex.weight_storm(60, USDM)
            client = RestClient(USDM, ex.rest_url, 1.0, budget=100, window=1.0)
            t0 = time.monotonic()
            got = await _burst(client, 24)
            took = time.monotonic() - t0
            client.close()
            return got, ex.stats()["rest"]["usdm"], took, client.metrics

    got, rest, took, metrics = asyncio.run(main())
    errors = [g for g in got if isinstance(g, BaseException)]
    assert not errors, errors[:3]
    assert (rest["429"], rest["418"]) == (0, 0), rest
    assert rest["weight"] == metrics.rest_weight["usdm"] == 24 * 5
    assert took < 10.0  # about 40 a window: three windows and a few probes, not one request a window
