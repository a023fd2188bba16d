"""The collector against the simulated exchange, for the markets and ``*`` tests: running it,
waiting on conditions, counting what was sent and what was stored per stream key."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import Counter

from orderbook_collector.config import Settings
from orderbook_collector.connection.collector import Collector
from support.procs import query
from tools.simulator.exchange import Exchange

#: The buffer tables of the stream datasets.
DATASETS = ("trade", "agg_trade", "book_ticker", "depth_update", "depth_snapshot", "mark_price", "liquidation")


@contextlib.asynccontextmanager
async def running(settings: Settings):
    collector = Collector(settings)
    task = asyncio.create_task(collector.run())
    try:
        yield collector
    finally:
        collector.stop("test over")
        await asyncio.wait_for(task, 60)


async def until(predicate, timeout=30.0, what="condition"):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        with contextlib.suppress(sqlite3.OperationalError):  # the buffer may not exist yet
            if predicate():
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def key(market: str, stream: str) -> str:
    return stream if market == "spot" else f"{market}:{stream}"


def stored_counts(buffer) -> Counter:
    """Rows per stream key, over every dataset."""
    n: Counter = Counter()
    if not buffer.exists():
        return n
    for dataset in DATASETS:
        for name, count in query(buffer, f"SELECT s.name, count(*) FROM {dataset} JOIN streams s USING (stream_id) "
                                         "GROUP BY s.name"):
            n[name] += count
    return n


def sent_counts(ex: Exchange) -> Counter:
    """Messages the exchange handed to connections, per stream key."""
    sent = ex.stats()["sent"]
    return Counter({key(m, stream): n for m, streams in sent.items() for stream, n in streams.items()})


def quiet(ex: Exchange) -> bool:
    """Nothing left in any connection's outbox: what was generated was handed over."""
    return not any(conn.outbox for conn in ex.conns.values())
