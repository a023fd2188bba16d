"""Open interest, polled over REST under the market's weight budget (it has no stream).

Every futures symbol recorded (named, or from ``*``) is polled once every
``ORDERBOOK_OPEN_INTEREST_SECONDS``, the symbols spread evenly over the period, through the
market's one :class:`~.rest.RestClient`: the same weight budget as the depth snapshots and
exchangeInfo, ``X-MBX-USED-WEIGHT-1M`` counted, a 429/418's ``Retry-After`` pausing every
request of the market. :func:`poll_period` (sans-I/O) stretches the period when the symbols
would take more than :data:`OPEN_INTEREST_SHARE` of the market's weight allowance, so polling
never starves the diff streams' repairs.

Each answer is decoded by the kernel (:func:`orderbook_core.payloads.decode_open_interest`) into an
:class:`OpenInterestRecord` for the writer (``open_interest``). A poll that fails (no answer, an
HTTP error, an answer the kernel refuses: quarantined with its body and reason) is a gap, recorded
as data: a ``silence`` row of the series (reason ``poll_failed``) since its last good answer, and a
'resumed' row at the next good one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, NamedTuple

from orderbook_core.buffer.records import REST_SESSION, Quarantined, SilenceRecord
from orderbook_core.errors import FrameError
from orderbook_core.payloads import decode_open_interest
from orderbook_core.streams import OPEN_INTEREST, Market, open_interest_key
from orderbook_collector.connection.rest import RestClient, RestError
from orderbook_collector.feed.silence import End, Reason

log = logging.getLogger("orderbook_collector.connection.collector")

#: The share of the market's REST weight allowance (``rest_weight_share`` × Binance's budget) open
#: interest may use: the rest stays for depth snapshots, repairs first.
OPEN_INTEREST_SHARE = 0.25


class PollPlan(NamedTuple):
    period: float  # seconds between two polls of one symbol
    stretched: bool  # the period asked for was too short for the symbols within the share


def poll_period(symbols: int, weight: int, allowance: int, window: float, requested: float) -> PollPlan:
    """The poll period of ``symbols`` symbols at ``weight`` each: ``requested``, or longer if their
    weight per ``window`` would pass :data:`OPEN_INTEREST_SHARE` of ``allowance`` (sans-I/O)."""
    if symbols == 0:
        return PollPlan(requested, False)
    shortest = symbols * weight * window / max(OPEN_INTEREST_SHARE * allowance, 1e-9)
    return PollPlan(max(requested, shortest), shortest > requested)


class OpenInterestPoller:
    """Polls one market's open interest for its recorded symbols.

    Args:
        client: the market's REST client (its budget is shared with depth snapshots).
        symbols: lower-case symbols to poll (``set_symbols`` follows ``*``).
        submit: hands a record, a silence row or a refused answer's quarantine row to the writer.
        seconds: the period asked for (``ORDERBOOK_OPEN_INTEREST_SECONDS``).
    """

    def __init__(self, client: RestClient, symbols, submit: Callable[[object], bool], seconds: float) -> None:
        if client.market not in OPEN_INTEREST:
            raise ValueError(f"{client.market.value} has no open interest")
        self.client, self.submit, self.seconds = client, submit, seconds
        self.path, self.weight = OPEN_INTEREST[client.market]
        self.symbols: list[str] = []
        self.plan = PollPlan(seconds, False)
        self.last_ok_us: dict[str, int] = {}  # symbol -> its last good answer's receive time
        self.failing: dict[str, int] = {}  # symbol -> since when its open silence runs (µs)
        self.polled = 0
        self._changed = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.set_symbols(symbols)

    @property
    def market(self) -> Market:
        return self.client.market

    def set_symbols(self, symbols) -> None:
        new = sorted(set(symbols))
        if new == self.symbols:
            return
        self.symbols = new
        b = self.client.budget
        plan = poll_period(len(new), self.weight, b.limit, b.window, self.seconds)
        if plan.stretched and plan != self.plan:
            log.warning("%s: ORDERBOOK_OPEN_INTEREST_SECONDS=%g is too short for %d symbol(s) within %.0f%% of the "
                        "REST weight allowed; polling each every %.1f s instead", self.market.value, self.seconds,
                        len(new), 100 * OPEN_INTEREST_SHARE, plan.period)
        self.plan = plan
        self._changed.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        """One round a period, its symbols spread evenly over it; a late round starts at once."""
        start = time.monotonic()
        while True:
            self._changed.clear()
            symbols, period = list(self.symbols), self.plan.period
            if not symbols:
                await self._changed.wait()
                start = time.monotonic()
                continue
            for i, sym in enumerate(symbols):
                wait = start + i * period / len(symbols) - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if sym in self.symbols:  # ``*`` may have dropped it meanwhile
                    await self.poll(sym)
            start = max(start + period, time.monotonic() - period)  # never a burst to catch up

    async def poll(self, symbol: str) -> bool:
        """Poll ``symbol`` once; True if its answer was handed to the writer."""
        market = self.market.value
        attempt_us = time.time_ns() // 1000
        try:
            body = await self.client.get(self.path, {"symbol": symbol.upper()}, self.weight)
        except RestError as exc:
            self.client.metrics.rest_errors[market] += 1
            self._failed(symbol, attempt_us, str(exc))
            return False
        recv_us = time.time_ns() // 1000
        try:
            record = decode_open_interest(self.market, symbol, body, recv_us)
        except FrameError as exc:
            key = open_interest_key(self.market, symbol)
            self.submit(Quarantined(recv_us, REST_SESSION, 0, exc.reason.value, body,
                                    f"rest open interest of {key}: {exc.detail}"))
            self.client.metrics.rest_refused[market] += 1
            self._failed(symbol, recv_us, f"refused: {exc.reason.value}")
            return False
        self.submit(record)
        self.polled += 1
        self.client.metrics.open_interest_polls[market] += 1
        since = self.failing.pop(symbol, None)
        if since is not None:
            log.info("%s: open interest polled again after %.1f s", record.stream, (recv_us - since) / 1e6)
            self.submit(SilenceRecord(record.stream, recv_us, "resumed", since, recv_us, Reason.POLL_FAILED.value,
                                      End.MESSAGES.value))
        self.last_ok_us[symbol] = recv_us
        return True

    def _failed(self, symbol: str, at_us: int, why: str) -> None:
        """A failed poll: the series is silent since its last good answer (or this attempt)."""
        self.client.metrics.open_interest_failures[self.market.value] += 1
        key = open_interest_key(self.market, symbol)
        if symbol in self.failing:
            log.debug("%s: open interest poll failed again (%s)", key, why)
            return
        since = self.last_ok_us.get(symbol, at_us)
        self.failing[symbol] = since
        log.warning("%s: open interest poll failed (%s); recorded as a gap until an answer comes", key, why)
        self.submit(SilenceRecord(key, time.time_ns() // 1000, "silent", since, None, Reason.POLL_FAILED.value, None))

