"""The exchange's own daily files: every trade and aggTrade the books generated, per UTC day.

Binance publishes, per market, symbol and UTC day, a zip of one CSV of every trade (and one of
every aggTrade), with a ``.CHECKSUM`` beside it: every trade the exchange made, including those
a client never received. The simulator keeps the same record: a :class:`Tape` per book, fed where
the book makes its trades (sent, dropped by a fault, muted or never subscribed alike), and
:func:`write_day` writes a day of it in the site's layout (:mod:`.facts`, "the exchange's daily
files")::

    <folder>/data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2026-12-07.zip        (+ .zip.CHECKSUM)
    <folder>/data/spot/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2026-12-07.zip
    <folder>/data/futures/um/daily/trades/BTCUSDT/BTCUSDT-trades-2026-12-07.zip
    <folder>/data/futures/um/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2026-12-07.zip

Spot times are microseconds (milliseconds before 2025-01-01), USD-M's milliseconds; the
books stamp trades in milliseconds, so a spot file's times end in ``000``. USD-M files carry a
header row, spot files none (both exist on Binance). Prices are spot's 8-decimal strings, USD-M's
without trailing zeros, as each site writes them.

Memory is bounded: a tape keeps compact columns (about 60 bytes a trade, aggTrades included) of
the current and the previous UTC day only, and at most ``limit`` trades a day; a day over the limit is marked cut and
is refused by :func:`write_day` rather than written short (a short file would be a false loss).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from array import array
from dataclasses import dataclass, field
from datetime import date as Date
from datetime import datetime, timezone
from pathlib import Path

from .facts import (DAILY_BOOLS, DAILY_COLUMNS, DAILY_HEADER, DAILY_KIND, DAILY_PATH, SPOT_MICROSECONDS_FROM, Kind,
                    Market)

E8 = 10**8
DAY_MS = 86_400_000
#: UTC days a tape keeps: the current one and the one before (its file is written after midnight).
DAYS_KEPT = 2
#: Trades a tape keeps per day by default: about 90 MB at the cap (measured: 58 bytes a trade,
#: its share of aggTrades included); a day of the default 10 book steps a second makes about
#: 1.15 million trades (measured: 1.33 trades a step).
DEFAULT_LIMIT = 1_500_000
#: Rows per write to the zip: bounded memory while writing a large day.
ROWS_PER_WRITE = 10_000


@dataclass
class _Day:
    """One UTC day of one book's trades and aggTrades, as parallel columns (prices in ticks,
    quantities in 1e-8, times in ms)."""

    t_id: array = field(default_factory=lambda: array("q"))
    t_price: array = field(default_factory=lambda: array("q"))
    t_qty: array = field(default_factory=lambda: array("q"))
    t_ms: array = field(default_factory=lambda: array("q"))
    t_maker: bytearray = field(default_factory=bytearray)
    a_id: array = field(default_factory=lambda: array("q"))
    a_price: array = field(default_factory=lambda: array("q"))
    a_qty: array = field(default_factory=lambda: array("q"))
    a_first: array = field(default_factory=lambda: array("q"))
    a_last: array = field(default_factory=lambda: array("q"))
    a_ms: array = field(default_factory=lambda: array("q"))
    a_maker: bytearray = field(default_factory=bytearray)
    cut: bool = False  # over the limit: later trades of the day were not kept


class Tape:
    """Every trade and aggTrade one book generated, per UTC day (the last :data:`DAYS_KEPT`)."""

    def __init__(self, market: Market, symbol: str, tick: int, limit: int = DEFAULT_LIMIT):
        self.market, self.symbol, self.tick, self.limit = Market(market), symbol.upper(), tick, limit
        self.days: dict[int, _Day] = {}  # day number since the epoch -> its columns
        self.forgotten = -1  # the last day number dropped to keep memory bounded

    def record(self, time_ms: int, trades, aggs) -> None:
        """One book step's trades and aggTrades (objects with the book's fields), all at ``time_ms``."""
        if not trades and not aggs:
            return
        n = time_ms // DAY_MS
        d = self.days.get(n)
        if d is None:
            d = self.days[n] = _Day()
            for old in sorted(self.days)[:-DAYS_KEPT]:
                del self.days[old]
                self.forgotten = max(self.forgotten, old)
        if d.cut or len(d.t_id) + len(trades) > self.limit:
            d.cut = True  # a step is kept whole or not at all: its trades and aggTrades agree
            return
        for t in trades:
            d.t_id.append(t.id)
            d.t_price.append(t.price)
            d.t_qty.append(t.qty)
            d.t_ms.append(time_ms)
            d.t_maker.append(t.buyer_maker)
        for g in aggs:
            d.a_id.append(g.id)
            d.a_price.append(g.price)
            d.a_qty.append(g.qty)
            d.a_first.append(g.first)
            d.a_last.append(g.last)
            d.a_ms.append(time_ms)
            d.a_maker.append(g.buyer_maker)

    def day(self, day: Date) -> _Day | None:
        """A copy of the day's columns (None if it made no trade), so it can be written while the
        book goes on; ValueError if they are not complete."""
        n = (day - Date(1970, 1, 1)).days
        if n <= self.forgotten:
            raise ValueError(f"{self.market.value} {self.symbol}: the trades of {day} are no longer kept; the simulator "
                             f"keeps the last {DAYS_KEPT} UTC days, so write a day's files before the next one ends")
        d = self.days.get(n)
        if d is not None and d.cut:
            raise ValueError(f"{self.market.value} {self.symbol}: more than {self.limit} trades on {day}, the rest were "
                             "not kept; raise the Exchange's trade_tape_limit")
        if d is None:
            return None
        return _Day(*(array(c.typecode, c) if isinstance(c, array) else bytearray(c)
                      for c in (d.t_id, d.t_price, d.t_qty, d.t_ms, d.t_maker,
                                d.a_id, d.a_price, d.a_qty, d.a_first, d.a_last, d.a_ms, d.a_maker)))


def _price(value_e8: int, trim: bool) -> str:
    text = f"{value_e8 // E8}.{value_e8 % E8:08d}"
    return text.rstrip("0").rstrip(".") if trim else text


def _rows(tape: Tape, d: _Day, kind: Kind, day: Date):
    """The CSV lines of one file, in id order."""
    market = tape.market
    trim = market is Market.USDM  # USD-M files write prices and quantities without trailing zeros
    texts: dict[int, str] = {}  # prices repeat: format each once

    def px(ticks: int) -> str:
        t = texts.get(ticks)
        if t is None:
            t = texts[ticks] = _price(ticks * tape.tick, trim)
        return t
    scale = 1000 if market is Market.SPOT and day >= SPOT_MICROSECONDS_FROM else 1
    no, yes = DAILY_BOOLS[market]
    best = (f",{yes}",) if market is Market.SPOT else ("",)  # is_best_match: spot only, always true
    if kind is Kind.TRADE:
        for i in range(len(d.t_id)):
            p, q = d.t_price[i], d.t_qty[i]
            yield (f"{d.t_id[i]},{px(p)},{_price(q, trim)},{_price(p * tape.tick * q // E8, trim)},"
                   f"{d.t_ms[i] * scale},{yes if d.t_maker[i] else no}{best[0]}\n")
    else:
        for i in range(len(d.a_id)):
            yield (f"{d.a_id[i]},{px(d.a_price[i])},{_price(d.a_qty[i], trim)},"
                   f"{d.a_first[i]},{d.a_last[i]},{d.a_ms[i] * scale},{yes if d.a_maker[i] else no}{best[0]}\n")


def site_path(market: Market, kind: Kind, symbol: str, day: Date) -> str:
    """The file's path under the site's ``data/`` folder."""
    name = f"{symbol.upper()}-{DAILY_KIND[kind]}-{day.isoformat()}.zip"
    return f"{DAILY_PATH[Market(market)]}/daily/{DAILY_KIND[kind]}/{symbol.upper()}/{name}"


def take(tapes, day: Date) -> list[tuple[Tape, _Day]]:
    """Copies of ``day``'s columns of every tape with trades that day (:func:`write_taken` writes
    them, in another thread if need be). ValueError when a tape no longer keeps the day or kept
    only part of it."""
    # COIN-M's daily files are not simulated (DAILY_PATH names spot's and USD-M's only)
    return [(tape, d) for tape in tapes if tape.market in DAILY_PATH and (d := tape.day(day)) is not None]


def write_day(tapes, folder: str | Path, day: Date) -> list[Path]:
    """Write ``day``'s trades and aggTrades files of every tape that has trades that day under
    ``folder/data/`` (with their ``.CHECKSUM``); returns the zips written, sorted.

    Raises ValueError when a tape no longer keeps the day or kept only part of it."""
    return write_taken(take(tapes, day), folder, day)


def write_taken(taken: list[tuple[Tape, _Day]], folder: str | Path, day: Date) -> list[Path]:
    """Write what :func:`take` took; returns the zips written, sorted."""
    root = Path(folder) / "data"
    written = []
    for tape, d in taken:
        for kind in (Kind.TRADE, Kind.AGG_TRADE):
            path = root / site_path(tape.market, kind, tape.symbol, day)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".part")
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z, \
                    z.open(path.name[:-len(".zip")] + ".csv", "w") as raw, \
                    io.TextIOWrapper(raw, encoding="ascii", newline="") as out:
                if DAILY_HEADER[tape.market]:
                    out.write(",".join(DAILY_COLUMNS[(tape.market, kind)]) + "\n")
                batch = []
                for line in _rows(tape, d, kind, day):
                    batch.append(line)
                    if len(batch) >= ROWS_PER_WRITE:
                        out.write("".join(batch))
                        batch.clear()
                out.write("".join(batch))
            h = hashlib.sha256()
            with open(tmp, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
            digest = h.hexdigest()
            tmp.replace(path)  # a reader never sees a half-written zip under the real name
            path.with_name(path.name + ".CHECKSUM").write_text(f"{digest}  {path.name}\n")
            written.append(path)
    return sorted(written)


def today() -> Date:
    return datetime.now(timezone.utc).date()
