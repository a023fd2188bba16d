"""Markets, stream kinds and subscribed streams: Binance's facts, as pure data.

A stream is ``<symbol>@<kind>`` on a market. Every kind has its dataset (the buffer
table and the archive folder it goes to) and, on USD-M futures, its route: since
2026-04-23 ``wss://fstream.binance.com`` serves depth, bookTicker and trade on ``/public``
and aggTrade (with klines, markPrice, forceOrder) on ``/market``; a stream on the other
route delivers nothing, silently.

Sources, as named beside each fact (the Sources of ``docs/binance-api.md``, whose section
is given too): "spot streams" = binance/binance-spot-api-docs ``web-socket-streams.md``;
"spot REST" = the same repository's ``rest-api.md`` and ``CHANGELOG.md``; "USD-M streams" =
developers.binance.com USDⓈ-M Futures "Websocket Market Streams", "Partial Book Depth
Streams", "Diff. Book Depth Streams"; "USD-M notice" = its "Important WebSocket Change
Notice" (2026-03-06); "USD-M REST" = its "Order Book" and "Exchange Information" pages;
USD-M "Mark Price Stream" and "Liquidation Order Streams" are its pages of those names
(``docs/binance-api.md`` section 8).
The simulator keeps its own copy of these facts (``tools/simulator/facts.py``);
``tests/doubles/test_facts_agree.py`` compares the two.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

from orderbook_core.errors import ConfigError


class Market(str, Enum):
    SPOT = "spot"
    USDM = "usdm"
    COINM = "coinm"  # COIN-M futures: wss://dstream.binance.com, https://dapi.binance.com


#: The futures markets: their payloads carry ``E``, ``T`` and ``pu`` as USD-M's do ("COIN-M
#: streams": diff depth ``e,E,T,s,ps,U,u,pu,b,a``, bookTicker ``e,u,s,b,B,a,A,T,E,ps``; the
#: extra ``ps``, the pair, is not recorded: it is the symbol up to ``_``).
FUTURES = frozenset({Market.USDM, Market.COINM})


class Kind(str, Enum):
    """What a stream carries; the value is the dataset it is archived as."""

    PARTIAL_DEPTH = "depth_snapshot"
    DIFF_DEPTH = "depth_update"
    TRADE = "trade"
    AGG_TRADE = "agg_trade"
    BOOK_TICKER = "book_ticker"
    MARK_PRICE = "mark_price"  # USD-M markPrice: mark, index, estimated settle price, funding
    LIQUIDATION = "liquidation"  # USD-M forceOrder: a liquidation order snapshot

    @property
    def dataset(self) -> str:
        return self.value


#: Binance's limit on streams per connection. Spot: 1024 (spot streams, "Limits"). USD-M:
#: copies of the USD-M streams page disagree, 200 or 1024 (docs/binance-api.md sections 4 and
#: 7; the copy saying 1024 still shows the retired unrouted URLs, so its date is unclear): we
#: keep 200, true under either, where planning for 1024 could see connections refused.
MAX_STREAMS = {Market.SPOT: 1024, Market.USDM: 200, Market.COINM: 200}  # COIN-M: as USD-M (unverified)
#: The spot limit (kept for callers that record spot only).
MAX_STREAMS_PER_CONNECTION = MAX_STREAMS[Market.SPOT]
#: Binance's limit on connection attempts per IP: 300 per 5 minutes (spot streams, since
#: 2023-02, shared with the WS-API; USD-M undocumented: docs/binance-api.md "Not verified", same assumed).
MAX_CONNECTION_ATTEMPTS = (300, 300.0)
#: Shortest spacing of control messages (SUBSCRIBE, UNSUBSCRIBE) on one connection, seconds:
#: 5 incoming messages a second close a spot connection (1008), pings and pongs count too
#: (spot streams); 250 ms was reliable in QuantConnect/Lean#5583 (docs/binance-api.md section 5).
CONTROL_SPACING = 0.25
#: ``exchangeInfo`` per market: (path, REST weight): spot REST "Exchange information" 20,
#: USD-M REST "Exchange Information" 1 (neither weight is in docs/binance-api.md; unverified there).
EXCHANGE_INFO = {Market.SPOT: ("/api/v3/exchangeInfo", 20), Market.USDM: ("/fapi/v1/exchangeInfo", 1),
                 Market.COINM: ("/dapi/v1/exchangeInfo", 1)}  # COIN-M REST "Exchange Information"
#: The key of a symbol's trading status in ``exchangeInfo``: ``status`` on spot and USD-M,
#: ``contractStatus`` on COIN-M (COIN-M REST "Exchange Information": ``"contractStatus": "TRADING"``).
EXCHANGE_INFO_STATUS = {Market.SPOT: "status", Market.USDM: "status", Market.COINM: "contractStatus"}
#: How each market is called in settings and messages.
MARKET_TITLE = {Market.SPOT: "spot", Market.USDM: "USD-M", Market.COINM: "COIN-M"}
#: USD-M routes by kind: ``wss://fstream.binance.com/<route>/stream?streams=...``.
USDM_ROUTE = {
    # USD-M notice: /public carries the high-frequency streams, @depth* and @bookTicker
    Kind.PARTIAL_DEPTH: "public", Kind.DIFF_DEPTH: "public", Kind.BOOK_TICKER: "public",
    # missing from the notice's lists; /public by four independent reports (docs/binance-api.md
    # section 7): tardis-dev/tardis-node src/realtimefeeds/binance.ts (BINANCE_FUTURES_PUBLIC_CHANNELS),
    # ccxt/ccxt#28083, BYTEX-TRADE/bytex#7 (frame counts per URL), binance/binance-public-data#472
    Kind.TRADE: "public",
    # USD-M notice: /market carries @aggTrade, @kline_*, @markPrice, @forceOrder; BYTEX-TRADE/bytex#7
    Kind.AGG_TRADE: "market",
    # USD-M notice: /market carries @markPrice and @forceOrder (docs/binance-api.md section 8)
    Kind.MARK_PRICE: "market", Kind.LIQUIDATION: "market",
}
#: Whether COIN-M (``wss://dstream.binance.com``) routes its streams by kind as USD-M does
#: (``/public``, ``/market``): not settled (docs/binance-api.md section 7: one client claims
#: ``dstream/market/ws``, Binance's COIN-M pages still show the unrouted ``/ws`` and ``/stream``).
#: The one place to change when it is: True subscribes COIN-M streams on :data:`USDM_ROUTE`'s paths.
COINM_ROUTED = False
#: The markets that route their streams by kind, and how.
ROUTES: dict[Market, dict[Kind, str]] = {Market.USDM: USDM_ROUTE, **({Market.COINM: USDM_ROUTE} if COINM_ROUTED else {})}
#: Incoming messages (control frames, pings, pongs) a connection may send per second:
#: spot streams "5 incoming messages per second"; USD-M streams "10 incoming messages per second".
MAX_INCOMING_PER_SEC = {Market.SPOT: 5, Market.USDM: 10, Market.COINM: 10}  # COIN-M: docs/binance-api.md section 4
#: REST ``REQUEST_WEIGHT`` budget per IP and minute (``X-MBX-USED-WEIGHT-1M`` counts against it):
#: spot REST / exchangeInfo ``rateLimits`` 6000; USD-M 2400 (docs/binance-api.md sections 3 and 4).
REST_WEIGHT_PER_MINUTE = {Market.SPOT: 6000, Market.USDM: 2400, Market.COINM: 2400}  # COIN-M: as USD-M (unverified)
#: REST depth-snapshot path per market (spot REST "Order book"; USD-M REST "Order Book").
DEPTH_PATH = {Market.SPOT: "/api/v3/depth", Market.USDM: "/fapi/v1/depth", Market.COINM: "/dapi/v1/depth"}
#: The ``limit`` values ``/fapi/v1/depth`` accepts (USD-M REST "Order Book"; spot takes any 1..5000, spot REST).
USDM_DEPTH_LIMITS = (5, 10, 20, 50, 100, 500, 1000)
#: Default ``limit`` of a depth snapshot per market: spot REST "Default 100", USD-M REST "Default 500".
DEPTH_DEFAULT_LIMIT = {Market.SPOT: 100, Market.USDM: 500, Market.COINM: 500}
#: Depth-snapshot weight by limit: (highest limit, weight) steps, lowest first.
_DEPTH_WEIGHT = {
    Market.SPOT: ((100, 5), (500, 25), (1000, 50), (5000, 250)),  # spot REST "Order book", since 2023-10-19 (CHANGELOG)
    Market.USDM: ((50, 2), (100, 5), (500, 10), (1000, 20)),  # USD-M REST "Order Book"
    Market.COINM: ((50, 2), (100, 5), (500, 10), (1000, 20)),  # COIN-M REST "Order Book": the same steps
}
#: Open interest has no stream: it is polled over REST, ``GET <path>?symbol=<SYMBOL>`` of
#: (path, weight) per market. USD-M REST "Open Interest" (developers.binance.com, .../usds-margined-futures/
#: market-data/rest-api/Open-Interest): ``/fapi/v1/openInterest``, weight 1, answer
#: ``{"openInterest": "10659.509", "symbol": "BTCUSDT", "time": 1589437530011}`` ("time": transaction time).
#: COIN-M REST "Open Interest": ``/dapi/v1/openInterest``, weight 1, the answer adds ``pair`` and
#: ``contractType`` (not recorded) and counts contracts.
OPEN_INTEREST = {Market.USDM: ("/fapi/v1/openInterest", 1), Market.COINM: ("/dapi/v1/openInterest", 1)}
#: A polled open-interest series is kept in the buffer's ``streams`` table as the pseudo-stream
#: ``<market>:<symbol>@openInterest`` (no Binance stream has that name), so its rows carry a
#: stream like every dataset's and its failed polls can be silences of that stream.
OPEN_INTEREST_KIND = "openInterest"


def open_interest_key(market: Market, symbol: str) -> str:
    """The buffer key of ``symbol``'s open-interest series on ``market`` (``usdm:btcusdt@openInterest``)."""
    return f"{market.value}:{symbol.lower()}@{OPEN_INTEREST_KIND}"


def parse_open_interest_key(key: str) -> tuple[Market, str] | None:
    """(market, lower-case symbol) of an :func:`open_interest_key`, or None if ``key`` is not one."""
    head, _, kind = key.partition("@")
    market, _, symbol = head.partition(":")
    if kind != OPEN_INTEREST_KIND or not symbol or market not in {m.value for m in OPEN_INTEREST}:
        return None
    return Market(market), symbol


#: Event-driven streams (trades, bookTicker) have no nominal cadence.
EVENT_DRIVEN = 0
#: Kinds Binance pushes on a timer whether or not anything changed ("every 1000 ms"; markPrice
#: "pushed every 3 seconds or every second", USD-M "Mark Price Stream"); the others push on
#: change (diff depth when the book moved, trades when one happens).
ON_CLOCK = frozenset({Kind.PARTIAL_DEPTH, Kind.MARK_PRICE})
#: Kinds that are a sample by design: USD-M "Liquidation Order Streams": "For each symbol, only
#: the latest one liquidation order within 1000ms will be pushed as the snapshot. If no
#: liquidation happens in the interval of 1000ms, no stream will be pushed." Liquidations in
#: between are never sent, and a symbol may have none for hours: such a stream is never
#: judged silent for saying nothing, and its dataset never claims completeness.
SAMPLED = frozenset({Kind.LIQUIDATION})

_SYMBOL_RE = re.compile(r"^[a-z0-9]{2,20}$")
#: COIN-M symbols are a pair and a contract: ``btcusd_perp``, dated ``btcusd_261225`` (COIN-M streams' examples).
_COINM_SYMBOL_RE = re.compile(r"^[a-z0-9]{2,20}_[a-z0-9]{2,10}$")
_SYMBOL_RES = {Market.SPOT: _SYMBOL_RE, Market.USDM: _SYMBOL_RE, Market.COINM: _COINM_SYMBOL_RE}
_DEPTH_RE = re.compile(r"^depth(5|10|20)?(?:@(\d+)ms)?$")
#: Update speeds each market offers for depth streams (ms); the first is the default, named by
#: leaving the speed out (spot streams: ``<symbol>@depth OR <symbol>@depth@100ms``, 1000 ms or
#: 100 ms; USD-M streams, partial and diff depth pages: ``<symbol>@depth OR @depth@500ms OR
#: @depth@100ms``, 250 ms, 500 ms or 100 ms: no ``@250ms`` name is documented).
#: Partial depth levels 5, 10 or 20, and trade, aggTrade, bookTicker on both: the same pages.
_SPEEDS = {Market.SPOT: (1000, 100), Market.USDM: (250, 100, 500), Market.COINM: (250, 100, 500)}
_EVENT_KINDS = {"trade": Kind.TRADE, "aggTrade": Kind.AGG_TRADE, "bookTicker": Kind.BOOK_TICKER}
#: The derivatives kinds, per market that offers them (a futures market is one entry here; the
#: spot market has none). USD-M "Mark Price Stream": ``<symbol>@markPrice or
#: <symbol>@markPrice@1s``, "Update Speed: 3000ms or 1000ms"; "Liquidation Order Streams":
#: ``<symbol>@forceOrder``, "Update Speed: 1000ms", event-driven (nothing when no liquidation).
_FUTURES_KINDS = {
    "markPrice": (Kind.MARK_PRICE, 3_000_000), "markPrice@1s": (Kind.MARK_PRICE, 1_000_000),
    "forceOrder": (Kind.LIQUIDATION, EVENT_DRIVEN),
}
#: Every futures market (:data:`FUTURES`) offers them, with the same payloads (COIN-M's pages
#: give the same keys, docs/binance-api.md section 8).
_MARKET_KINDS: dict[Market, dict[str, tuple[Kind, int]]] = {
    m: _FUTURES_KINDS if m in FUTURES else {} for m in Market}


class StreamKind(NamedTuple):
    type: Kind
    levels: int  # levels per side of a partial-depth snapshot; 0 otherwise
    cadence_us: int  # nominal interval between messages; EVENT_DRIVEN for trades, bookTicker, forceOrder


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """One subscribed stream, e.g. ``btcusdt@depth20@100ms`` on spot."""

    symbol: str  # lower case, as in the stream name
    kind: str  # as subscribed, e.g. "depth20@100ms"
    levels: int  # levels per side the exchange sends (partial depth), else 0
    cadence_us: int  # nominal interval between messages, EVENT_DRIVEN for event streams
    market: Market = Market.SPOT
    type: Kind = Kind.PARTIAL_DEPTH

    @property
    def name(self) -> str:
        return f"{self.symbol}@{self.kind}"

    @property
    def key(self) -> str:
        """The stream's key in the buffer and in records: its name, prefixed ``usdm:`` on USD-M
        (both markets have a ``btcusdt@depth@100ms``)."""
        return self.name if self.market is Market.SPOT else f"{self.market.value}:{self.name}"

    @property
    def dataset(self) -> str:
        return self.type.dataset

    @property
    def route(self) -> str | None:
        """The path segment this stream must be subscribed on (:data:`ROUTES`); None where unrouted."""
        routes = ROUTES.get(self.market)
        return routes[self.type] if routes is not None else None


def depth_weight(market: Market, limit: int) -> int | None:
    """The REST weight of a depth snapshot of ``limit`` levels, or None if the market refuses that limit."""
    if limit < 1 or market in FUTURES and limit not in USDM_DEPTH_LIMITS:
        return None
    if market is Market.SPOT:
        limit = min(limit, 5000)  # a larger limit is answered (and weighed) as 5000
    return next((w for top, w in _DEPTH_WEIGHT[market] if limit <= top), None)


def parse_symbol(symbol: str, setting: str = "ORDERBOOK_SYMBOLS", market: Market = Market.SPOT) -> str:
    """Return the lower-case symbol or raise :class:`ConfigError`."""
    s = symbol.strip().lower()
    if not _SYMBOL_RES[market].match(s):
        if market is Market.COINM:
            raise ConfigError(setting, f"{symbol!r} is not a COIN-M symbol; use a pair and a contract such as "
                                       "btcusd_perp or btcusd_261225.")
        raise ConfigError(setting, f"{symbol!r} is not a Binance symbol; use 2-20 letters and digits such as btcusdt.")
    return s


def stream_kind(kind: str, market: Market = Market.SPOT) -> StreamKind | None:
    """What ``kind`` (as in a stream name) is on ``market``, or None if the market has no such stream."""
    k = kind.strip()
    if k in _EVENT_KINDS:
        return StreamKind(_EVENT_KINDS[k], 0, EVENT_DRIVEN)
    if k in _MARKET_KINDS[market]:
        t, cadence_us = _MARKET_KINDS[market][k]
        return StreamKind(t, 0, cadence_us)
    m = _DEPTH_RE.match(k)
    if not m:
        return None
    speeds = _SPEEDS[market]
    ms = int(m.group(2)) if m.group(2) else speeds[0]
    if ms not in speeds or (m.group(2) and int(m.group(2)) == speeds[0]):
        return None  # each market names its default speed by leaving it out
    if m.group(1):
        return StreamKind(Kind.PARTIAL_DEPTH, int(m.group(1)), ms * 1000)
    return StreamKind(Kind.DIFF_DEPTH, 0, ms * 1000)


def kinds_offered(market: Market) -> str:
    """The stream kinds ``market`` offers, in words (for error messages)."""
    speeds = sorted(_SPEEDS[market][1:])
    depth = f"depth5, depth10, depth20 or depth (each optionally {' or '.join(f'@{ms}ms' for ms in speeds)})"
    extra = "".join(f", {k}" for k in _MARKET_KINDS[market])
    return f"{depth}, trade, aggTrade{extra} or bookTicker"


def build_streams(
    symbols: list[str], kinds: list[str], market: Market = Market.SPOT, *,
    symbols_setting: str = "ORDERBOOK_SYMBOLS", streams_setting: str = "ORDERBOOK_STREAMS",
) -> list[StreamSpec]:
    """The cross product of ``symbols`` and ``kinds`` on ``market``, validated, in a stable order.

    Raises:
        ConfigError: a symbol is not a Binance symbol, or ``market`` does not offer a kind
            (the message names the setting given).
    """
    out: dict[StreamSpec, None] = {}
    specs = [(k.strip(), stream_kind(k, market)) for k in kinds]
    for k, sk in specs:
        if sk is None:
            raise ConfigError(
                streams_setting,
                f"{k!r} is not a {MARKET_TITLE[market]} stream kind; use {kinds_offered(market)} "
                f"(for example {'depth20@100ms' if market is Market.SPOT else 'depth@100ms'}).",
            )
    for sym in symbols:
        s = parse_symbol(sym, symbols_setting, market)
        for k, sk in specs:
            out.setdefault(StreamSpec(s, k, sk.levels, sk.cadence_us, market, sk.type), None)
    return list(out)


def spec(symbol: str, kind: str, market: Market = Market.SPOT) -> StreamSpec | None:
    """The spec of ``<symbol>@<kind>`` on ``market``, or None if the market has no such stream."""
    sk = stream_kind(kind, market)
    if sk is None or not _SYMBOL_RES[market].match(symbol):
        return None
    return StreamSpec(symbol, kind.strip(), sk.levels, sk.cadence_us, market, sk.type)


def parse_stream_name(name: str, market: Market = Market.SPOT) -> StreamSpec | None:
    """The spec of a full stream name such as ``btcusdt@depth@100ms``, or None."""
    if not isinstance(name, str) or "@" not in name:
        return None
    symbol, kind = name.split("@", 1)
    return spec(symbol, kind, market)
