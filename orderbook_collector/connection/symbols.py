"""``*`` symbols, the I/O half: read a market's ``exchangeInfo``.

The parsing and the subscribe/unsubscribe planning are sans-I/O in
:mod:`orderbook_collector.feed.symbols`. The GET goes through the market's rate-limited
REST client (:mod:`.rest`), so exchangeInfo (spot weight 20, USD-M 1) and the depth
snapshots share one weight budget and one 429/418 pause per market.
"""

from __future__ import annotations

from orderbook_collector.connection.rest import RestClient, RestError
from orderbook_core.streams import EXCHANGE_INFO
from orderbook_collector.feed.symbols import ExchangeInfoError, TradingSymbols, trading_symbols


async def fetch_trading_symbols(client: RestClient) -> TradingSymbols:
    """The TRADING symbols of the client's market now. Raises RestError or ExchangeInfoError."""
    path, weight = EXCHANGE_INFO[client.market]
    return trading_symbols(await client.get_json(path, {}, weight), client.market)


__all__ = ["ExchangeInfoError", "RestError", "fetch_trading_symbols"]
