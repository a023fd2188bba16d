"""Binance's facts as the simulated exchange keeps them: literal tables, each with its source.

The simulator is the oracle of the product's tests, so it never takes its facts from the
product (``orderbook_core.streams``): a wrong fact there would then be proven against
itself. These tables are written from Binance's documentation and the issues listed in the
Sources of ``docs/binance-api.md`` (the team's fact sheet; the section is named beside each
entry); ``tests/doubles/test_facts_agree.py`` compares them with the product's, fact by fact.

Abbreviations in the citations: "spot streams" = binance/binance-spot-api-docs
``web-socket-streams.md``; "spot REST" = the same repository's ``rest-api.md``; "USD-M
streams" = developers.binance.com USDⓈ-M Futures "Websocket Market Streams" (with its
"Partial Book Depth Streams" and "Diff. Book Depth Streams" pages); "USD-M notice" = its
"Important WebSocket Change Notice" (2026-03-06, unrouted paths retired 2026-04-23).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from enum import Enum


class Market(str, Enum):
    SPOT = "spot"  # stream.binance.com, api.binance.com
    USDM = "usdm"  # fstream.binance.com, fapi.binance.com
    COINM = "coinm"  # dstream.binance.com, dapi.binance.com (fact sheet sections 4 and 7)


#: The futures markets: depth, bookTicker, trades with ``E`` and ``T``, diff depth with ``pu``.
FUTURES = (Market.USDM, Market.COINM)


class Route(str, Enum):
    """A USD-M path segment: ``wss://fstream.binance.com/<route>/stream?streams=...``."""

    PUBLIC = "public"
    MARKET = "market"


class Kind(str, Enum):
    """A family of streams, named as Binance names it after ``<symbol>@``."""

    DIFF_DEPTH = "depth"
    PARTIAL_DEPTH = "depth<levels>"
    TRADE = "trade"
    AGG_TRADE = "aggTrade"
    BOOK_TICKER = "bookTicker"
    MARK_PRICE = "markPrice"
    FORCE_ORDER = "forceOrder"
    KLINE = "kline_<interval>"  # not served yet; its route is known

    @property
    def dataset(self) -> str:
        return DATASET[self]


#: The kinds this simulator serves.
SERVED_KINDS = (Kind.PARTIAL_DEPTH, Kind.DIFF_DEPTH, Kind.TRADE, Kind.AGG_TRADE, Kind.BOOK_TICKER, Kind.MARK_PRICE,
                Kind.FORCE_ORDER)
#: What the sent log calls each served kind: the project's dataset names (DESIGN.md's
#: datasets table), a contract of ours rather than a Binance fact.
DATASET = {
    Kind.PARTIAL_DEPTH: "depth_snapshot", Kind.DIFF_DEPTH: "depth_update", Kind.TRADE: "trade",
    Kind.AGG_TRADE: "agg_trade", Kind.BOOK_TICKER: "book_ticker",
    Kind.MARK_PRICE: "mark_price", Kind.FORCE_ORDER: "liquidation",
}

# ---- stream names -------------------------------------------------------------------------

#: Depth update speeds as written after the kind, and their cadence in ms; "" is the default.
DEPTH_SPEEDS = {
    # spot streams, "Partial Book Depth Streams" and "Diff. Depth Stream":
    # <symbol>@depth<levels> OR @depth<levels>@100ms; <symbol>@depth OR @depth@100ms (1000ms or 100ms)
    Market.SPOT: {"": 1000, "@100ms": 100},
    # USD-M streams, "Partial Book Depth Streams" and "Diff. Book Depth Streams":
    # <symbol>@depth<levels> OR @500ms OR @100ms; <symbol>@depth OR @depth@500ms OR @depth@100ms
    # (250ms default, 500ms or 100ms); "@250ms" is not among the documented names
    Market.USDM: {"": 250, "@100ms": 100, "@500ms": 500},
    # COIN-M streams: the same names and speeds as USD-M (fact sheet section 4, "COIN-M")
    Market.COINM: {"": 250, "@100ms": 100, "@500ms": 500},
}
#: Levels of a partial depth stream: "Valid <levels> are 5, 10, or 20" (spot streams; USD-M streams).
PARTIAL_LEVELS = (5, 10, 20)
#: Event-driven streams on both markets (spot streams; USD-M streams): no cadence, no speed suffix.
EVENT_STREAMS = {"trade": Kind.TRADE, "aggTrade": Kind.AGG_TRADE, "bookTicker": Kind.BOOK_TICKER}
#: Futures-only streams, "<kind>" -> (kind, cadence in ms; 0 event-driven). Binance's USD-M pages
#: (fact sheet section 8): "Mark Price Stream": "<symbol>@markPrice or <symbol>@markPrice@1s",
#: "Update Speed 3000ms or 1000ms", pushed on a timer; "Liquidation Order Streams":
#: "<symbol>@forceOrder", "only the latest one liquidation order within 1000ms will be pushed
#: as the snapshot. If no liquidation happens in the interval of 1000ms, no stream will be pushed."
FUTURES_STREAMS = {
    "markPrice": (Kind.MARK_PRICE, 3000),
    "markPrice@1s": (Kind.MARK_PRICE, 1000),
    "forceOrder": (Kind.FORCE_ORDER, 0),
}
#: The spacing Binance keeps between two forceOrder messages of a symbol, ms ("within 1000ms").
FORCE_ORDER_WINDOW_MS = 1000
#: The keys of a ``markPriceUpdate``, in each market's order: USD-M "Mark Price Stream" example
#: ``e,E,s,p,i,P,r,T``; COIN-M "Mark Price Stream" example ``e,E,s,p,P,i,r,T`` (no pair), whose
#: ``r`` is "funding rate for perpetual symbol, \"\" will be shown for delivery symbol" and ``T``
#: "next funding time for perpetual symbol, 0 will be shown for delivery symbol".
MARK_PRICE_KEYS = {Market.USDM: ("e", "E", "s", "p", "i", "P", "r", "T"),
                   Market.COINM: ("e", "E", "s", "p", "P", "i", "r", "T")}
#: The keys of a forceOrder's order object ``o``: USD-M "Liquidation Order Streams" example;
#: COIN-M "All Market Liquidation Order Streams" example adds ``ps`` ("Pair") after ``s``.
FORCE_ORDER_KEYS = {Market.USDM: ("s", "S", "o", "f", "q", "p", "ap", "X", "l", "z", "T"),
                    Market.COINM: ("s", "ps", "S", "o", "f", "q", "p", "ap", "X", "l", "z", "T")}
#: A COIN-M symbol's contract part for the perpetual (``btcusd_perp``); any other (``btcusd_261225``)
#: is a delivery contract: no funding (fact sheet section 7, COIN-M symbols; the pages above).
COINM_PERPETUAL = "perp"


@dataclass(frozen=True, slots=True)
class NameFacts:
    """What a stream name after ``<symbol>@`` means on a market."""

    type: Kind
    levels: int  # levels per side of a partial depth stream, else 0
    cadence_us: int  # nominal interval between messages; 0 for event-driven streams


#: Every stream name the simulator serves, per market: "<kind>[@<speed>]" -> its facts.
STREAM_NAMES: dict[Market, dict[str, NameFacts]] = {
    m: {
        **{f"depth{speed}": NameFacts(Kind.DIFF_DEPTH, 0, ms * 1000) for speed, ms in speeds.items()},
        **{f"depth{n}{speed}": NameFacts(Kind.PARTIAL_DEPTH, n, ms * 1000)
           for n in PARTIAL_LEVELS for speed, ms in speeds.items()},
        **{name: NameFacts(kind, 0, 0) for name, kind in EVENT_STREAMS.items()},
        **({name: NameFacts(kind, 0, ms * 1000) for name, (kind, ms) in FUTURES_STREAMS.items()}
           if m in FUTURES else {}),  # COIN-M's "Mark Price Stream" and "Liquidation Order Streams" pages
    }
    for m, speeds in DEPTH_SPEEDS.items()
}


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """One stream name parsed, e.g. ``btcusdt@depth20@100ms`` on spot."""

    symbol: str  # lower case, as in the name
    kind: str  # the name after "@", e.g. "depth20@100ms"
    levels: int
    cadence_us: int
    market: Market
    type: Kind

    @property
    def name(self) -> str:
        return f"{self.symbol}@{self.kind}"


def parse_stream_name(name: str, market: Market = Market.SPOT) -> StreamSpec | None:
    """The spec of a served stream name on ``market``, or None.

    Symbols in stream names are lower case letters and digits ("All symbols for streams are
    lowercase": spot streams, USD-M streams); whether the symbol is listed is the exchange's
    business, not the grammar's.
    """
    if not isinstance(name, str) or "@" not in name:
        return None
    symbol, kind = name.split("@", 1)
    facts = STREAM_NAMES[Market(market)].get(kind)
    # COIN-M symbols are a pair and a contract, ``btcusd_perp`` or dated ``btcusd_261225`` (section 7)
    parts = symbol.split("_") if Market(market) is Market.COINM else [symbol]
    if facts is None or len(parts) != (2 if Market(market) is Market.COINM else 1) or not all(
            p.isascii() and p.isalnum() and p == p.lower() for p in parts):
        return None
    return StreamSpec(symbol, kind, facts.levels, facts.cadence_us, Market(market), facts.type)


def kind_named(text: str) -> Kind | None:
    """A served kind from its family name ("aggTrade"), a stream kind ("depth20@100ms") or its
    dataset ("agg_trade"), for the control switches; None if none matches."""
    for kind in SERVED_KINDS:
        if text in (kind.value, kind.dataset):
            return kind
    for names in STREAM_NAMES.values():
        if text in names:
            return names[text].type
    return None


# ---- USD-M routes -------------------------------------------------------------------------

#: The USD-M route that serves each kind since the 2026-04-23 split.
USDM_ROUTE = {
    # USD-M notice: /public carries the high-frequency streams, @depth* and @bookTicker
    Kind.PARTIAL_DEPTH: Route.PUBLIC,
    Kind.DIFF_DEPTH: Route.PUBLIC,
    Kind.BOOK_TICKER: Route.PUBLIC,
    # missing from the notice's list; on /public by four independent reports (fact sheet
    # section 7): tardis-dev/tardis-node src/realtimefeeds/binance.ts (BINANCE_FUTURES_PUBLIC_CHANNELS),
    # ccxt/ccxt#28083, BYTEX-TRADE/bytex#7 (frame counts per URL), binance/binance-public-data#472
    Kind.TRADE: Route.PUBLIC,
    # USD-M notice: /market carries @aggTrade, @kline_*, @markPrice, @forceOrder, ...;
    # BYTEX-TRADE/bytex#7 counted aggTrade, klines and markPrice on /market
    Kind.AGG_TRADE: Route.MARKET,
    Kind.MARK_PRICE: Route.MARKET,  # also fact sheet section 7, "Mark price and funding"
    Kind.FORCE_ORDER: Route.MARKET,  # also fact sheet section 7, "Liquidations"
    Kind.KLINE: Route.MARKET,
}
#: The retired unrouted ``/ws`` and ``/stream`` of USD-M still shake hands and accept
#: SUBSCRIBE, and serve what ``/public`` serves: depth flows "treated as /public" (USD-M
#: notice, fact sheet section 4) and ``@trade`` kept flowing there while aggTrade, markPrice
#: and forceOrder went silent (binance/binance-public-data#472).
UNROUTED_AS = Route.PUBLIC

# ---- connection limits --------------------------------------------------------------------

#: Streams one connection may carry.
MAX_STREAMS = {
    Market.SPOT: 1024,  # spot streams: "A single connection can listen to a maximum of 1024 streams"
    # USD-M streams: copies of the page disagree (200 in some, 1024 in others, fact sheet
    # sections 4 and 7; the copy that says 1024 still shows the retired unrouted URLs, so its
    # date is unclear). 200 is true under either: a client that plans for it only opens more
    # connections, while one that plans for 1024 could be refused if 200 holds.
    Market.USDM: 200,
    Market.COINM: 200,  # assumed as USD-M: COIN-M's page was not read for it
}
#: Incoming messages (control frames, pings, pongs) a connection may send per second before
#: it is closed with 1008: spot streams "5 incoming messages per second"; USD-M streams
#: "WebSocket connections have a limit of 10 incoming messages per second".
MAX_INCOMING_PER_SEC = {Market.SPOT: 5, Market.USDM: 10, Market.COINM: 10}  # COIN-M: section 4

# ---- REST ---------------------------------------------------------------------------------

#: ``REQUEST_WEIGHT`` per IP and minute: spot REST (exchangeInfo rateLimits) 6000; USD-M
#: "General Info" / exchangeInfo 2400 (fact sheet sections 3 and 4).
REST_WEIGHT_PER_MINUTE = {Market.SPOT: 6000, Market.USDM: 2400, Market.COINM: 2400}  # COIN-M: assumed as USD-M
#: Depth snapshot path per market (spot REST "Order book"; USD-M REST "Order Book").
DEPTH_PATH = {Market.SPOT: "/api/v3/depth", Market.USDM: "/fapi/v1/depth", Market.COINM: "/dapi/v1/depth"}
#: ``limit`` when the request names none: spot REST "Default 100; max 5000"; USD-M REST
#: "Default 500; Valid limits:[5, 10, 20, 50, 100, 500, 1000]".
DEPTH_DEFAULT_LIMIT = {Market.SPOT: 100, Market.USDM: 500, Market.COINM: 500}
#: Depth weight by limit, (highest limit, weight) steps, lowest first.
DEPTH_WEIGHT = {
    # spot REST "Order book", since 2023-10-19 (CHANGELOG): 1-100: 5, 101-500: 25,
    # 501-1000: 50, 1001-5000: 250; a limit over 5000 is answered (and weighed) as 5000
    Market.SPOT: ((100, 5), (500, 25), (1000, 50), (5000, 250)),
    # USD-M REST "Order Book": 5, 10, 20, 50: 2; 100: 5; 500: 10; 1000: 20
    Market.USDM: ((50, 2), (100, 5), (500, 10), (1000, 20)),
    Market.COINM: ((50, 2), (100, 5), (500, 10), (1000, 20)),  # section 4: "depth weights as USD-M"
}
#: The only limits USD-M accepts (USD-M REST "Order Book"); spot takes any limit >= 1.
USDM_DEPTH_LIMITS = (5, 10, 20, 50, 100, 500, 1000)
#: Weights of the other REST endpoints served: spot REST "Test connectivity" and "Check
#: server time" 1 (fact sheet section 5: time), "Exchange information" 20; USD-M REST the
#: same 1, 1 and "Exchange Information" 1 (the exchangeInfo weights are not in the fact
#: sheet: from the endpoint pages, unverified against a stored copy).
REST_WEIGHT = {
    "/api/v3/ping": 1, "/api/v3/time": 1, "/api/v3/exchangeInfo": 20,
    "/fapi/v1/ping": 1, "/fapi/v1/time": 1, "/fapi/v1/exchangeInfo": 1,
    # USD-M REST "Open Interest" (developers.binance.com .../usds-margined-futures/market-data/
    # rest-api/Open-Interest): weight 1, answer {"openInterest": "10659.509", "symbol": "BTCUSDT", "time": ...}
    "/fapi/v1/openInterest": 1,
    # COIN-M REST: the same endpoints under /dapi; "Open Interest" weight 1, its answer adds pair and contractType
    "/dapi/v1/ping": 1, "/dapi/v1/time": 1, "/dapi/v1/exchangeInfo": 1, "/dapi/v1/openInterest": 1,
}
#: The REST paths answering a symbol's open interest, per market (the same pages).
OPEN_INTEREST_PATH = {Market.USDM: "/fapi/v1/openInterest", Market.COINM: "/dapi/v1/openInterest"}
#: ``exchangeInfo`` per market: (path, weight), as above.
EXCHANGE_INFO = {Market.SPOT: ("/api/v3/exchangeInfo", 20), Market.USDM: ("/fapi/v1/exchangeInfo", 1),
                 Market.COINM: ("/dapi/v1/exchangeInfo", 1)}


def depth_weight(market: Market, limit: int) -> int | None:
    """The weight of a depth snapshot of ``limit`` levels, or None if the market refuses that limit."""
    market = Market(market)
    if limit < 1 or market in FUTURES and limit not in USDM_DEPTH_LIMITS:
        return None
    if market is Market.SPOT:
        limit = min(limit, 5000)
    for top, weight in DEPTH_WEIGHT[market]:
        if limit <= top:
            return weight
    return None


# ---- the exchange's daily files ------------------------------------------------------------

#: Where each market's daily files are under the site's ``data/`` folder (fact sheet section 7,
#: "The exchange's own archive": ``data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-YYYY-MM-DD.zip``;
#: USD-M under ``futures/um``), each zip beside a ``.CHECKSUM`` holding its SHA-256.
DAILY_PATH = {Market.SPOT: "spot", Market.USDM: "futures/um"}
#: The daily file kinds of the trade streams, as the site names their folders (section 7).
DAILY_KIND = {Kind.TRADE: "trades", Kind.AGG_TRADE: "aggTrades"}
#: Each file's columns, in order (section 7): spot adds ``is_best_match`` to both kinds.
DAILY_COLUMNS = {
    (Market.SPOT, Kind.TRADE): ("id", "price", "qty", "quote_qty", "time", "is_buyer_maker", "is_best_match"),
    (Market.SPOT, Kind.AGG_TRADE): ("agg_trade_id", "price", "quantity", "first_trade_id", "last_trade_id",
                                    "transact_time", "is_buyer_maker", "is_best_match"),
    (Market.USDM, Kind.TRADE): ("id", "price", "qty", "quote_qty", "time", "is_buyer_maker"),
    (Market.USDM, Kind.AGG_TRADE): ("agg_trade_id", "price", "quantity", "first_trade_id", "last_trade_id",
                                    "transact_time", "is_buyer_maker"),
}
#: Spot files' times are microseconds from this day, milliseconds before it; USD-M's are
#: milliseconds (section 7: "times in microseconds since 2025-01-01 (milliseconds before)").
SPOT_MICROSECONDS_FROM = date(2025, 1, 1)
#: Whether a market's files start with a header row. Section 7 says only "some files carry a
#: header row, some do not"; binance/binance-public-data#278: USD-M ``trades`` files have
#: column names after 2022-08-10, and #283: spot files have none (klines there; the spot trade
#: files seen have none either). Both layouts therefore exist, one per market here.
DAILY_HEADER = {Market.SPOT: False, Market.USDM: True}
#: How booleans are written: USD-M ``false`` (binance/binance-public-data#20 quotes a row);
#: spot ``True``/``False`` (as the spot files are generally reported; unverified against a
#: stored copy: the reconciliation reads either case).
DAILY_BOOLS = {Market.SPOT: ("False", "True"), Market.USDM: ("false", "true")}
