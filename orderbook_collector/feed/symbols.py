"""``*`` symbols, sans-I/O: which symbols a market trades, and how to follow its changes.

:func:`trading_symbols` reads an ``exchangeInfo`` answer; :func:`plan_changes` turns the
streams wanted now and the streams each live connection carries into SUBSCRIBE and
UNSUBSCRIBE lists per connection plus new connections, never above the market's streams
per connection. :func:`url_streams` and :func:`control_batches` keep a connection's URL and
each control request under a size servers take. :class:`AttemptLimiter` and :class:`ControlPacer` keep Binance's
connection-attempt and control-message limits with the clock handed in, so tests feed
them literal times. Nothing here touches a socket or a clock.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

import orjson

from orderbook_core.errors import ConfigError
from orderbook_core.streams import CONTROL_SPACING, EXCHANGE_INFO_STATUS as STATUS_KEY, MAX_CONNECTION_ATTEMPTS, Market, parse_symbol

#: The only status whose symbols ``*`` records (spot BREAK, USD-M SETTLING etc. are not trading).
TRADING = "TRADING"


class ExchangeInfoError(ValueError):
    """An ``exchangeInfo`` answer without a usable symbol list; the previous list stays in force."""


class TradingSymbols(NamedTuple):
    symbols: frozenset[str]  # lower case, as in stream names
    skipped: tuple[str, ...]  # TRADING symbols whose names cannot be stream names (e.g. BTCUSDT_260327)


def trading_symbols(info: object, market: Market = Market.SPOT) -> TradingSymbols:
    """The TRADING symbols of ``market``'s ``exchangeInfo`` answer (spot and USD-M say ``status``;
    COIN-M says ``contractStatus``: COIN-M REST "Exchange Information").

    Raises:
        ExchangeInfoError: the answer has no ``symbols`` list of objects with ``symbol`` and a status.
    """
    status = STATUS_KEY[market]
    entries = info.get("symbols") if isinstance(info, dict) else None
    if not isinstance(entries, list):
        raise ExchangeInfoError("exchangeInfo has no 'symbols' list")
    found: set[str] = set()
    skipped: list[str] = []
    for e in entries:
        if not isinstance(e, dict) or not isinstance(e.get("symbol"), str) or not isinstance(e.get(status), str):
            raise ExchangeInfoError(f"exchangeInfo symbol entry without 'symbol' and {status!r}: {str(e)[:80]}")
        if e[status] != TRADING:
            continue
        try:
            found.add(parse_symbol(e["symbol"], market=market))
        except ConfigError:
            skipped.append(e["symbol"])
    return TradingSymbols(frozenset(found), tuple(skipped))


class Plan(NamedTuple):
    """What to change on the live connections of one market and route.

    ``unsubscribe[i]`` and ``subscribe[i]`` are stream names for connection ``i`` (as
    given to :func:`plan_changes`); ``new`` are the streams of connections to open.
    """

    unsubscribe: dict[int, list[str]]
    subscribe: dict[int, list[str]]
    new: list[list[str]]

    @property
    def empty(self) -> bool:
        return not (self.unsubscribe or self.subscribe or self.new)


def plan_changes(connections: list[list[str]], wanted: list[str], limit: int) -> Plan:
    """Move ``connections`` (streams per live connection) to carry exactly ``wanted``.

    Streams no longer wanted are unsubscribed where they are; streams not carried yet fill
    the connections' free room in order (a connection never exceeds ``limit``), and what is
    left goes to new connections of at most ``limit`` streams. ``wanted`` keeps its order.
    """
    want = dict.fromkeys(wanted)
    carried = {name for conn in connections for name in conn}
    unsubscribe = {i: [n for n in conn if n not in want] for i, conn in enumerate(connections)}
    unsubscribe = {i: names for i, names in unsubscribe.items() if names}
    todo = [n for n in want if n not in carried]
    subscribe: dict[int, list[str]] = {}
    for i, conn in enumerate(connections):
        room = limit - (len(conn) - len(unsubscribe.get(i, ())))
        if room > 0 and todo:
            subscribe[i], todo = todo[:room], todo[room:]
    new = [todo[j : j + limit] for j in range(0, len(todo), limit)]
    return Plan(unsubscribe, subscribe, new)


class AttemptLimiter:
    """At most ``limit`` connection attempts in any ``window`` seconds (Binance: 300 per 5 min per IP).

    Call :meth:`delay` for how long to wait before the next attempt, then :meth:`record`
    when the attempt is made (successful or not: Binance counts attempts).
    """

    def __init__(self, limit: int = MAX_CONNECTION_ATTEMPTS[0], window: float = MAX_CONNECTION_ATTEMPTS[1]):
        self.limit, self.window = limit, window
        self._times: deque[float] = deque()

    def delay(self, now: float) -> float:
        while self._times and now - self._times[0] >= self.window:
            self._times.popleft()
        if len(self._times) < self.limit:
            return 0.0
        return self._times[0] + self.window - now

    def record(self, now: float) -> None:
        self._times.append(now)


class ControlPacer:
    """Control messages of one connection at least ``spacing`` seconds apart (Binance: 5 incoming/s)."""

    def __init__(self, spacing: float = CONTROL_SPACING):
        self.spacing = spacing
        self._last: float | None = None

    def delay(self, now: float) -> float:
        return 0.0 if self._last is None else max(0.0, self._last + self.spacing - now)

    def record(self, now: float) -> None:
        self._last = now


def control_message(method: str, streams: list[str], request_id: int) -> str:
    """A SUBSCRIBE or UNSUBSCRIBE request as Binance takes it."""
    return orjson.dumps({"method": method, "params": streams, "id": request_id}).decode()



#: Longest URL a connection opens with, bytes: HTTP servers commonly cap the request line at 8 KB
#: and answer 414 above it, while a connection may carry 1,024 streams (about 25 KB of names).
#: What does not fit is subscribed by SUBSCRIBE once the connection is open.
URL_BUDGET = 8000


def url_streams(prefix: str, names: list[str], budget: int = URL_BUDGET, cap: int | None = None) -> list[str]:
    """The leading ``names`` that ``prefix + "/".join(...)`` holds within ``budget`` bytes (at most
    ``cap`` of them; at least one, so a connection always has a stream to open with)."""
    out: list[str] = []
    size = len(prefix.encode())
    for n in names[: cap if cap is not None else len(names)]:
        size += len(n.encode()) + (1 if out else 0)
        if out and size > budget:
            break
        out.append(n)
    return out


def control_batches(names: list[str], budget: int = URL_BUDGET) -> list[list[str]]:
    """``names`` in order, split into control requests of at most ``budget`` bytes each."""
    batches: list[list[str]] = []
    room = 0
    for n in names:
        cost = len(n.encode()) + 3  # quoted, and a comma
        if not batches or cost > room:
            batches.append([])
            room = budget - len(control_message("SUBSCRIBE", [], 2**31))
        batches[-1].append(n)
        room -= cost
    return batches
