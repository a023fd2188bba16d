"""``*`` symbols, the I/O half: read a market's ``exchangeInfo``.

The parsing and the subscribe/unsubscribe planning are sans-I/O in
:mod:`orderbook_collector.feed.symbols`. The HTTP GET sits behind one small seam,
:func:`get_json`, so it can be routed through the per-market rate-limited REST client
(spot ``exchangeInfo`` weighs 20, USD-M 1) without touching the callers.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

from orderbook_collector.feed.streams import EXCHANGE_INFO, Market
from orderbook_collector.feed.symbols import ExchangeInfoError, TradingSymbols, trading_symbols

#: Seconds before an exchangeInfo request is given up (the spot answer is a few MB).
TIMEOUT = 30.0


class RestError(OSError):
    """A REST request failed (network, HTTP status, not JSON); ``retry_after`` from 429/418 if given."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


def _get(url: str) -> object:
    req = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "orderbook-collector"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        retry = exc.headers.get("Retry-After") if exc.headers else None
        raise RestError(f"GET {url}: HTTP {exc.code}", exc.code, float(retry) if retry else None) from exc
    except (urllib.error.URLError, OSError) as exc:
        raise RestError(f"GET {url}: {getattr(exc, 'reason', exc)}") from exc
    try:
        return json.loads(body)
    except ValueError as exc:
        raise RestError(f"GET {url}: the answer is not JSON") from exc


async def get_json(url: str) -> object:
    """GET ``url`` and return its JSON, off the event loop. Raises :class:`RestError`."""
    return await asyncio.to_thread(_get, url)


async def fetch_trading_symbols(market: Market, rest_base: str) -> TradingSymbols:
    """The TRADING symbols of ``market`` now. Raises RestError or ExchangeInfoError."""
    path, _weight = EXCHANGE_INFO[market]
    return trading_symbols(await get_json(rest_base + path))


__all__ = ["ExchangeInfoError", "RestError", "fetch_trading_symbols", "get_json"]
