"""``orderbook export``: the archive as the files backtesters read (docs/backtesting.md).

Usage::

    orderbook export --format tardis|hftbacktest --date YYYY-MM-DD [--symbols S ...]
                     [--out DIR] [--archive URL]

``--format tardis`` writes Tardis.dev's downloadable CSV layout, one gzip per exchange, data
type, symbol and UTC day, ``<out>/<exchange>/<data_type>/<date>_<SYMBOL>.csv.gz``:

======================  ===============================================  ======================
data type               from                                             ``timestamp`` is
======================  ===============================================  ======================
incremental_book_L2     ``depth_rest_snapshot`` + ``depth_update``       ``E`` (event time)
                        through :class:`~orderbook_assets.books.builder.BookBuilder`
trades                  ``trade``                                        ``T`` (trade time)
quotes, book_ticker     ``book_ticker``                                  USD-M ``E``; spot: none
                                                                         is sent, ``recv_time``
book_snapshot_25 / _5   ``depth_snapshot`` (partial depth) where         USD-M ``E``; spot: none
                        recorded, else ``book_snapshot``                 is sent, ``recv_time``;
                                                                         book_snapshot: its time
derivative_ticker       the ``derivative_ticker`` view's rule over       ``E`` (event time)
                        ``mark_price``, ``open_interest``, ``trade``,
                        ``agg_trade`` (as-of values looked back at most
                        :data:`TICKER_LOOKBACK_US` before the day)
liquidations            ``liquidation``, FILLED orders only              ``o.T`` (trade time)
======================  ===============================================  ======================

``local_timestamp`` is our ``recv_time``; both are µs since the epoch. ``--format hftbacktest``
writes hftbacktest's event array (``.npz``, key ``data``) per symbol and day,
``<out>/<exchange>/hftbacktest/<date>_<SYMBOL>.npz``, directly: the product does not import
hftbacktest (its constants are copied below).

The order book rules (the same for both formats):

* Each day starts with a snapshot block: the book at 00:00 UTC, rebuilt from the archive before
  the day (:func:`orderbook_assets.analytics.books.book_at`: an hour's end state or the newest REST
  snapshot before, and the diff chain up to 00:00). No block if that book is not known.
* Then every applied diff event's levels, as Binance sent them (quantity 0 deletes a level).
* A break (events missed) makes the book unknown: at the event that reveals it, every level
  the file's reader holds is deleted (amount 0), so the reader's book is empty, not stale, while
  ours is unknown; no rows until a snapshot bridges the chain again; then a new snapshot block,
  the whole rebuilt book at the bridging event's times. Snapshot rows after update rows mean
  "discard the book" (Tardis's own rule); the deletions make the same true for readers that only
  clear within the new snapshot's price range (hftbacktest's Tardis converter). The hftbacktest
  array also clears both sides at the break (``DEPTH_CLEAR_EVENT`` without a side).
* Levels come only from snapshots and events: nothing is invented.

* A snapshot that replaces a book the reader holds (it bridged a gap the known book did not
  see) deletes that book first, as at a break: two blocks back to back would read as one.

Memory: one symbol at a time; diff events a record batch at a time, other datasets an hour at
a time; the book, the day's REST snapshots of the stream and, for the hftbacktest array, the
events of the last :data:`HOLDBACK_US` (the day's rows go to a temporary file).
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from datetime import date as Date, datetime, timezone
from enum import Enum
from functools import lru_cache
from operator import itemgetter
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np
import pyarrow as pa

from orderbook_core.buffer.hours import HOUR_US
from orderbook_core.errors import ConfigError, OrderbookError
from orderbook_core.kinds import dec
from orderbook_core.streams import Market

from orderbook_assets.analytics import views
from orderbook_assets.analytics.books import LOOKBACK_US, ArchiveReader, Source, book_at
from orderbook_assets.archive.location import Location
from orderbook_assets.books.builder import BookBuilder, DiffEvent, Level, Outcome, Snapshot, Status
from orderbook_assets.books.hour import snapshot_rows

USER_ERROR = 2
DAY_US = 24 * HOUR_US

#: Tardis's exchange ids (docs.tardis.dev, downloadable CSV files).
EXCHANGE = {Market.SPOT: "binance", Market.USDM: "binance-futures", Market.COINM: "binance-delivery"}


class Format(str, Enum):
    TARDIS = "tardis"
    HFTBACKTEST = "hftbacktest"


class DataType(str, Enum):
    """Tardis's data type names (also the folder under the exchange)."""

    INCREMENTAL_BOOK_L2 = "incremental_book_L2"
    TRADES = "trades"
    QUOTES = "quotes"
    BOOK_TICKER = "book_ticker"
    BOOK_SNAPSHOT_25 = "book_snapshot_25"
    BOOK_SNAPSHOT_5 = "book_snapshot_5"
    DERIVATIVE_TICKER = "derivative_ticker"
    LIQUIDATIONS = "liquidations"


HEAD = ("exchange", "symbol", "timestamp", "local_timestamp")
HEADERS: dict[DataType, tuple[str, ...]] = {
    DataType.INCREMENTAL_BOOK_L2: (*HEAD, "is_snapshot", "side", "price", "amount"),
    DataType.TRADES: (*HEAD, "id", "side", "price", "amount"),
    DataType.QUOTES: (*HEAD, "ask_amount", "ask_price", "bid_price", "bid_amount"),
    DataType.BOOK_TICKER: (*HEAD, "ask_amount", "ask_price", "bid_price", "bid_amount"),
    DataType.BOOK_SNAPSHOT_25: (*HEAD, *(f"{s}[{i}].{v}" for i in range(25) for s in ("asks", "bids")
                                       for v in ("price", "amount"))),
    DataType.BOOK_SNAPSHOT_5: (*HEAD, *(f"{s}[{i}].{v}" for i in range(5) for s in ("asks", "bids")
                                      for v in ("price", "amount"))),
}
HEADERS[DataType.DERIVATIVE_TICKER] = (*HEAD, "funding_timestamp", "funding_rate", "predicted_funding_rate",
                                       "open_interest", "last_price", "index_price", "mark_price")
HEADERS[DataType.LIQUIDATIONS] = (*HEAD, "id", "side", "price", "amount")
#: How far before the day the export looks for the open interest and last trade of the day's
#: first mark prices (the view looks back without limit; a file is one day, read in bounded time).
TICKER_LOOKBACK_US = HOUR_US
#: The liquidation order status Tardis exports (its Binance mapper skips every other).
FILLED = "FILLED"
SNAPSHOT_DEPTH = {DataType.BOOK_SNAPSHOT_25: 25, DataType.BOOK_SNAPSHOT_5: 5}

# ---- hftbacktest's event array, copied from hftbacktest 2.4.x (py-hftbacktest/hftbacktest/types.py)
# as literals: the product must not depend on hftbacktest at runtime. The tests check each
# against the installed library.
EXCH_EVENT = 1 << 31
LOCAL_EVENT = 1 << 30
BUY_EVENT = 1 << 29
SELL_EVENT = 1 << 28
DEPTH_EVENT = 1
TRADE_EVENT = 2
DEPTH_CLEAR_EVENT = 3
DEPTH_SNAPSHOT_EVENT = 4
EVENT_DTYPE = np.dtype(
    [("ev", "u8"), ("exch_ts", "i8"), ("local_ts", "i8"), ("px", "f8"), ("qty", "f8"),
     ("order_id", "u8"), ("ival", "i8"), ("fval", "f8")],
    align=True,
)
#: Rows of the hftbacktest array are ordered a batch at a time; the last HOLDBACK_US of local
#: time wait for the next batch, so an event received later but stamped earlier by the exchange
#: (another stream, a few ms) still lands in exchange order.
HOLDBACK_US = 10_000_000


class ExportError(OrderbookError):
    """The export cannot be served as asked; the message is one sentence."""


# --------------------------------------------------------------------------- formatting


@lru_cache(maxsize=1 << 16)  # prices and amounts repeat: a hit costs a third of formatting
def num(x: float) -> str:
    """A price or quantity as plain decimal text: shortest round-trip digits, no exponent, no
    trailing ``.0`` (``100``, ``0.00001``), as Binance sends them."""
    s = repr(x)
    if "e" in s or "inf" in s or "nan" in s:
        return dec(x)
    return s[:-2] if s.endswith(".0") else s


def day_bounds(day: str | Date) -> tuple[int, int]:
    d = Date.fromisoformat(day) if isinstance(day, str) else day
    start = int(datetime(d.year, d.month, d.day, tzinfo=timezone.utc).timestamp()) * 1_000_000
    return start, start + DAY_US


# --------------------------------------------------------------------------- the book (sans-I/O)


class BookRow(tuple):
    """One row of ``incremental_book_L2``: ``(timestamp, local_timestamp, is_snapshot, bid, price,
    amount)``, built as ``BookRow((...))``. A plain tuple with named fields: a busy hour makes
    millions, and a NamedTuple's constructor (Python code) was a sixth of the export's time."""

    __slots__ = ()
    timestamp = property(itemgetter(0))
    local_timestamp = property(itemgetter(1))
    is_snapshot = property(itemgetter(2))
    bid = property(itemgetter(3))
    price = property(itemgetter(4))
    amount = property(itemgetter(5))


class Clear(NamedTuple):
    """The book became unknown at these times (a break): discard it."""

    timestamp: int
    local_timestamp: int


@dataclass
class BookStats:
    events: int = 0
    applied: int = 0
    snapshot_blocks: int = 0
    breaks: int = 0
    negative_latency: int = 0  # rows whose local_timestamp < timestamp
    worst_latency_us: int = 0  # the most negative local − exchange time seen (0: none)


class L2Rows:
    """Turns a diff stream into ``incremental_book_L2`` rows through :class:`BookBuilder`.

    Feed :meth:`start` (the book at the day's start, if known), then :meth:`snapshot` and
    :meth:`event` in update-id order (each snapshot before the first event whose ``u`` exceeds
    its id). Each call returns the rows (and :class:`Clear` markers) it produced. Times: the
    event's exchange time and its receive time, the latter as the stream's running maximum so
    that ``local_timestamp`` never goes back.
    """

    def __init__(self, market: Market | str, max_tail: int = 2000):
        self.builder = BookBuilder(Market(market), max_tail=max_tail)
        self.stats = BookStats()
        self._local = 0
        # the book a reader of our rows holds (price → amount, bids then asks): what a break deletes
        self._view: tuple[dict[float, float], dict[float, float]] = ({}, {})

    def start(self, t_us: int, last_update_id: int, bids: list[Level], asks: list[Level]) -> list[BookRow | Clear]:
        self.builder.load_known(last_update_id, bids, asks)
        return self._block(t_us, t_us)

    def snapshot(self, snap: Snapshot, exch_us: int, recv_us: int) -> list[BookRow | Clear]:
        was_known = self.builder.status is Status.KNOWN
        res = self.builder.snapshot(snap)
        return self._after(res, was_known, exch_us, recv_us, None)

    def event(self, ev: DiffEvent, exch_us: int, recv_us: int) -> list[BookRow | Clear]:
        self.stats.events += 1
        was_known = self.builder.status is Status.KNOWN
        res = self.builder.event(ev)
        return self._after(res, was_known, exch_us, recv_us, ev)

    def _after(self, res, was_known: bool, exch_us: int, recv_us: int, ev: DiffEvent | None) -> list[BookRow | Clear]:
        known = res.status is Status.KNOWN
        synced = res.outcome is Outcome.SYNCED or Outcome.SYNCED in res.replayed
        local = self._local = max(self._local, recv_us)
        if known and (synced or not was_known):
            return self._block(exch_us, local)
        if was_known and not known:
            return self._discard(exch_us, local)
        if known and res.outcome is Outcome.APPLIED and ev is not None:
            self.stats.applied += 1
            self._latency(exch_us, local, len(ev.bids) + len(ev.asks))
            for side, levels in zip(self._view, (ev.bids, ev.asks)):
                for p, q in levels:
                    if q == 0.0:
                        side.pop(p, None)
                    else:
                        side[p] = q
            return ([BookRow((exch_us, local, False, True, p, q)) for p, q in ev.bids]
                    + [BookRow((exch_us, local, False, False, p, q)) for p, q in ev.asks])
        return []

    def _discard(self, exch_us: int, local: int) -> list[BookRow | Clear]:
        """A break: the book is unknown from here (:meth:`_deletions`)."""
        self.stats.breaks += 1
        return self._deletions(exch_us, local)

    def _deletions(self, exch_us: int, local: int) -> list[BookRow | Clear]:
        """Every level a reader holds, deleted (amount 0): a reader that clears only within the
        next snapshot's price range (hftbacktest's Tardis converter) then holds an empty book,
        never a stale one, and never a mix after the next block. Update rows also keep two blocks
        apart: back to back, Tardis's readers would take them for one snapshot."""
        bids, asks = self._view
        rows: list[BookRow | Clear] = [Clear(exch_us, local)]
        rows += [BookRow((exch_us, local, False, True, p, 0.0)) for p in sorted(bids, reverse=True)]
        rows += [BookRow((exch_us, local, False, False, p, 0.0)) for p in sorted(asks)]
        self._view = ({}, {})
        self._latency(exch_us, local, len(rows) - 1)
        return rows

    def _block(self, exch_us: int, local: int) -> list[BookRow | Clear]:
        """A snapshot block: the whole book. A block that replaces a book the reader holds (a
        snapshot bridged a gap the known book did not see) deletes that book first."""
        out = self._deletions(exch_us, local) if self._view[0] or self._view[1] else []
        self.stats.snapshot_blocks += 1
        n = max(len(self.builder.bids), len(self.builder.asks))
        bids, asks = self.builder.top(n)
        self._view = (dict(bids), dict(asks))
        self._latency(exch_us, local, len(bids) + len(asks))
        return (out + [BookRow((exch_us, local, True, True, p, q)) for p, q in bids]
                + [BookRow((exch_us, local, True, False, p, q)) for p, q in asks])

    def _latency(self, exch_us: int, local: int, rows: int) -> None:
        if local < exch_us:
            self.stats.negative_latency += rows
            self.stats.worst_latency_us = min(self.stats.worst_latency_us, local - exch_us)


# --------------------------------------------------------------------------- CSV lines


def l2_lines(prefix: str, rows: Iterable[BookRow | Clear]) -> list[str]:
    out = []
    for r in rows:
        if type(r) is Clear:
            continue  # the deletions that follow it say it in Tardis's terms
        ts, local, snap, bid, price, amount = r
        out.append(f"{prefix}{ts},{local},{'true' if snap else 'false'},"
                   f"{'bid' if bid else 'ask'},{num(price)},{num(amount)}\n")
    return out


def _levels_cells(levels: list[dict] | None, i: int) -> tuple[str, str]:
    if levels is not None and i < len(levels):
        return num(levels[i]["price"]), num(levels[i]["qty"])
    return "", ""


def snapshot_line(prefix: str, ts: int, local: int, bids: list[dict], asks: list[dict], depth: int) -> str:
    cells = []
    for i in range(depth):
        cells.extend(_levels_cells(asks, i))
        cells.extend(_levels_cells(bids, i))
    return f"{prefix}{ts},{local}," + ",".join(cells) + "\n"


class CsvGz:
    """A deterministic gzip CSV (mtime 0, no file name in the header), written a chunk at a time;
    created on the first rows, so a symbol without data of a type gets no file."""

    def __init__(self, path: Path, header: tuple[str, ...]):
        self.path, self.header, self.rows = path, header, 0
        self._raw = self._gz = None

    def write(self, lines: list[str]) -> None:
        if not lines:
            return
        if self._gz is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._raw = open(self.path.with_name(self.path.name + ".part"), "wb")
            self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0, compresslevel=6)
            self._gz.write((",".join(self.header) + "\n").encode())
        self._gz.write("".join(lines).encode())
        self.rows += len(lines)

    def close(self) -> None:
        if self._gz is not None:
            self._gz.close()
            self._raw.close()
            os.replace(self._raw.name, self.path)


# --------------------------------------------------------------------------- hftbacktest array


def hbt_book_events(rows: list[BookRow | Clear]) -> np.ndarray:
    """hftbacktest events of book rows: a snapshot block becomes DEPTH_CLEAR_EVENT (both sides:
    no side flag) then DEPTH_SNAPSHOT_EVENT rows; a break a DEPTH_CLEAR_EVENT; updates DEPTH_EVENT.
    Times in ns; flags without EXCH/LOCAL (see :class:`HbtWriter`)."""
    items = []
    in_block = False
    for r in rows:
        if type(r) is Clear:
            items.append((DEPTH_CLEAR_EVENT, r.timestamp * 1000, r.local_timestamp * 1000, np.nan, 0.0, 0, 0, 0.0))
            in_block = False
            continue
        ts, local, snap, bid, price, amount = r
        if snap and not in_block:
            items.append((DEPTH_CLEAR_EVENT, ts * 1000, local * 1000, np.nan, 0.0, 0, 0, 0.0))
        in_block = snap
        kind = DEPTH_SNAPSHOT_EVENT if snap else DEPTH_EVENT
        items.append((kind | (BUY_EVENT if bid else SELL_EVENT), ts * 1000, local * 1000, price, amount, 0, 0, 0.0))
    return np.array(items, EVENT_DTYPE) if items else np.zeros(0, EVENT_DTYPE)


def order_events(data: np.ndarray) -> np.ndarray:
    """Flag and order a batch so hftbacktest's ``validate_event_order`` holds: rows whose exchange
    time is in order among their neighbours keep their receive-order place with both
    EXCH_EVENT and LOCAL_EVENT; any other row is split into a LOCAL_EVENT row at its receive-order
    place and an EXCH_EVENT row placed by its exchange time (what hftbacktest's own
    ``correct_event_order`` does). ``data`` must be sorted by ``local_ts``."""
    n = len(data)
    if n == 0:
        return data
    exch = data["exch_ts"]
    pmax = np.maximum.accumulate(exch)
    smin = np.minimum.accumulate(exch[::-1])[::-1]
    both = (exch >= pmax) & (exch <= smin)
    pos = np.arange(n, dtype=np.float64)
    both_exch = exch[both]
    both_pos = pos[both]
    split = ~both
    x = exch[split]
    k = np.searchsorted(both_exch, x, side="right")
    # an exchange-only row goes just before the first both-flag row stamped later (or at the end)
    slot = np.full(len(x), n + 0.5)
    if len(both_pos):
        later = k < len(both_pos)
        slot[later] = both_pos[k[later]] - 0.5
    ev = data["ev"]
    rows_local = data.copy()
    rows_local["ev"] = np.where(both, ev | EXCH_EVENT | LOCAL_EVENT, ev | LOCAL_EVENT)
    rows_exch = data[split].copy()
    rows_exch["ev"] = rows_exch["ev"] | EXCH_EVENT
    allrows = np.concatenate([rows_local, rows_exch])
    key_pos = np.concatenate([pos, slot])
    key_exch = np.concatenate([np.zeros(n, np.int64), x])
    order = np.lexsort((key_exch, key_pos))
    return allrows[order]


class HbtWriter:
    """The day's hftbacktest array of one symbol, written as ``<file>.npz`` with key ``data``
    (what ``np.load(...)['data']`` and hftbacktest's ``BacktestAsset().data([...])`` read).

    Batches are added in receive order; each is sorted by local time (trades first among equal
    times, as hftbacktest's converter wants), its latency made non-negative (local time raised
    to the exchange time: counted, never hidden), flagged and ordered (:func:`order_events`),
    and appended to a temporary file, so the day is never held in memory."""

    def __init__(self, path: Path):
        self.path = path
        self.rows = 0
        self.raised_local = 0  # rows whose local time was raised to the exchange time
        self.worst_latency_ns = 0
        self.exch_raised = 0  # rows whose exchange time had to be raised to keep order across batches
        self._pending = np.zeros(0, EVENT_DTYPE)
        self._last_exch = np.iinfo(np.int64).min
        self._last_local = np.iinfo(np.int64).min
        self._tmp = None

    def add(self, batch: np.ndarray, upto_local_ns: int | None) -> None:
        """Add events; emit every pending event with local time before ``upto_local_ns``
        minus the hold-back (None: everything, the day's end)."""
        data = np.concatenate([self._pending, batch]) if len(batch) else self._pending
        if len(batch):
            lat = data["local_ts"] - data["exch_ts"]
            neg = lat < 0
            # only the new rows are counted: pending ones were counted when added
            new_neg = neg[len(self._pending):]
            self.raised_local += int(new_neg.sum())
            if new_neg.any():
                self.worst_latency_ns = min(self.worst_latency_ns, int(lat[len(self._pending):].min()))
            data["local_ts"] = np.where(neg, data["exch_ts"], data["local_ts"])
            data = data[np.argsort(data["local_ts"], kind="stable")]
        if upto_local_ns is None:
            out, self._pending = data, np.zeros(0, EVENT_DTYPE)
        else:
            cut = int(np.searchsorted(data["local_ts"], upto_local_ns - HOLDBACK_US * 1000, side="left"))
            out, self._pending = data[:cut], data[cut:]
        if not len(out):
            return
        out = out.copy()
        low = out["exch_ts"] < self._last_exch
        if low.any():
            self.exch_raised += int(low.sum())
            out["exch_ts"] = np.maximum(out["exch_ts"], self._last_exch)
        out["local_ts"] = np.maximum(out["local_ts"], self._last_local)
        ordered = order_events(out)
        self._last_exch = int(ordered["exch_ts"][(ordered["ev"] & EXCH_EVENT) != 0].max())
        self._last_local = int(ordered["local_ts"][(ordered["ev"] & LOCAL_EVENT) != 0].max())
        if self._tmp is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = tempfile.TemporaryFile(dir=self.path.parent)
        self._tmp.write(ordered.tobytes())
        self.rows += len(ordered)

    def close(self) -> bool:
        """Write the ``.npz`` (a zip holding ``data.npy``) from the temporary file; False if empty."""
        self.add(np.zeros(0, EVENT_DTYPE), None)
        if self._tmp is None:
            return False
        header = np.lib.format.header_data_from_array_1_0(np.zeros(0, EVENT_DTYPE))
        header["shape"] = (self.rows,)
        part = self.path.with_name(self.path.name + ".part")
        with zipfile.ZipFile(part, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            info = zipfile.ZipInfo("data.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, header)
                self._tmp.seek(0)
                while chunk := self._tmp.read(1 << 22):
                    f.write(chunk)
        self._tmp.close()
        os.replace(part, self.path)
        return True


# --------------------------------------------------------------------------- reading the archive


def _levels_pairs(col: pa.ChunkedArray) -> list[list[Level]]:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    offsets = (arr.offsets.to_numpy() - arr.offsets[0].as_py()).tolist()
    values = arr.flatten()
    prices, qtys = values.field("price").to_pylist(), values.field("qty").to_pylist()
    return [list(zip(prices[offsets[i]:offsets[i + 1]], qtys[offsets[i]:offsets[i + 1]]))
            for i in range(len(offsets) - 1)]


class SymbolDay(NamedTuple):
    market: Market
    symbol: str


@dataclass
class FileSummary:
    path: Path
    rows: int


@dataclass
class Summary:
    files: list[FileSummary] = field(default_factory=list)
    books: dict[tuple[str, str], BookStats] = field(default_factory=dict)
    hbt: dict[tuple[str, str], HbtWriter] = field(default_factory=dict)
    negative_latency: dict[tuple[str, str, str], tuple[int, int]] = field(default_factory=dict)  # rows, worst µs

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    def lines(self) -> list[str]:
        out = [f"{f.path}: {f.rows} rows" for f in self.files]
        for (m, s), st in sorted(self.books.items()):
            out.append(f"{EXCHANGE[Market(m)]} {s} book: {st.events} diff events, {st.applied} applied, "
                       f"{st.snapshot_blocks} snapshot blocks, {st.breaks} breaks")
        for (m, s, what), (n, worst) in sorted(self.negative_latency.items()):
            if n:
                out.append(f"{EXCHANGE[Market(m)]} {s} {what}: {n} rows with local_timestamp before timestamp "
                           f"(worst {worst} µs; clock skew between the exchange and the collector)")
        for (m, s), w in sorted(self.hbt.items()):
            if w.raised_local:
                out.append(f"{EXCHANGE[Market(m)]} {s} hftbacktest: {w.raised_local} events had a negative feed "
                           f"latency (worst {w.worst_latency_ns // 1000} µs); their local time was raised to the "
                           "exchange time")
            if w.exch_raised:
                out.append(f"{EXCHANGE[Market(m)]} {s} hftbacktest: {w.exch_raised} events' exchange time was "
                           "raised to keep exchange order across batches")
        return out


class Exporter:
    """Exports one UTC day of an archive. ``reader`` is an open :class:`ArchiveReader`."""

    def __init__(self, reader: ArchiveReader, day: str, out: Path, symbols: Iterable[str] | None = None):
        self.r = reader
        self.day = Date.fromisoformat(day).isoformat()
        self.start_us, self.end_us = day_bounds(self.day)
        self.out = Path(out)
        self.symbols = sorted({s.upper() for s in symbols}) if symbols else None
        self.summary = Summary()

    # ---- what the day holds

    def symbol_days(self) -> list[SymbolDay]:
        found: set[tuple[str, str]] = set()
        for name in ("depth_update", "trade", "book_ticker", "depth_snapshot", "mark_price", "liquidation"):
            if not self.r.has(name):
                continue
            t = self.r.query(name, f"date = DATE '{self.day}'", [], "1", columns="DISTINCT market, symbol")
            found.update(zip(t.column("market").to_pylist(), t.column("symbol").to_pylist()))
        if self.symbols:
            found = {f for f in found if f[1] in self.symbols}
        return [SymbolDay(Market(m), s) for m, s in sorted(found)]

    def _hour(self, dataset: str, sd: SymbolDay, h: int, columns: str, order: str, extra: str = "",
              params: tuple = ()) -> pa.Table:
        return self.r.query(dataset, f"date = DATE '{self.day}' AND hour = {h} AND market = ? AND symbol = ?{extra}",
                            [sd.market.value, sd.symbol, *params], order, columns=columns)

    def _path(self, sd: SymbolDay, kind: str, ext: str = "csv.gz") -> Path:
        return self.out / EXCHANGE[sd.market] / kind / f"{self.day}_{sd.symbol}.{ext}"

    # ---- tardis

    def tardis(self) -> Summary:
        for sd in self.symbol_days():
            prefix = f"{EXCHANGE[sd.market]},{sd.symbol},"
            l2 = CsvGz(self._path(sd, DataType.INCREMENTAL_BOOK_L2.value), HEADERS[DataType.INCREMENTAL_BOOK_L2])
            for _h, rows in self.book_rows(sd):
                l2.write(l2_lines(prefix, rows))
            self._close(l2)
            trades = CsvGz(self._path(sd, DataType.TRADES.value), HEADERS[DataType.TRADES])
            for _h, t in self.trade_hours(sd):
                trades.write(self._trade_lines(prefix, t, sd))
            self._close(trades)
            self._quotes(sd, prefix)
            self._snapshots(sd, prefix)
            self._derivative_ticker(sd, prefix)
            self._liquidations(sd, prefix)
        return self.summary

    def _close(self, w: CsvGz) -> None:
        w.close()
        if w.rows:
            self.summary.files.append(FileSummary(w.path, w.rows))

    def _neg(self, sd: SymbolDay, what: str, ts: np.ndarray, local: np.ndarray) -> None:
        lat = local - ts
        n = int((lat < 0).sum())
        if n:
            key = (sd.market.value, sd.symbol, what)
            old_n, old_w = self.summary.negative_latency.get(key, (0, 0))
            self.summary.negative_latency[key] = (old_n + n, min(old_w, int(lat.min())))

    def trade_hours(self, sd: SymbolDay) -> Iterator[tuple[int, pa.Table]]:
        """(hour, the hour's trades in receive order), hours without trades left out."""
        if not self.r.has("trade"):
            return
        for h in range(24):
            t = self._hour("trade", sd, h, "epoch_us(trade_time) AS ts, epoch_us(recv_time) AS local, trade_id, "
                           "is_buyer_maker, price, qty", "recv_time, trade_id")
            if t.num_rows:
                yield h, t

    def _trade_lines(self, prefix: str, t: pa.Table, sd: SymbolDay) -> list[str]:
        ts, local = t.column("ts").to_numpy(), t.column("local").to_numpy()
        self._neg(sd, DataType.TRADES.value, ts, local)
        return [f"{prefix}{a},{b},{i},{'sell' if m else 'buy'},{num(p)},{num(q)}\n"
                for a, b, i, m, p, q in zip(ts.tolist(), local.tolist(), t.column("trade_id").to_pylist(),
                                            t.column("is_buyer_maker").to_pylist(), t.column("price").to_pylist(),
                                            t.column("qty").to_pylist())]

    def _quotes(self, sd: SymbolDay, prefix: str) -> None:
        if not self.r.has("book_ticker"):
            return
        writers = [CsvGz(self._path(sd, k.value), HEADERS[k]) for k in (DataType.QUOTES, DataType.BOOK_TICKER)]
        for h in range(24):
            t = self._hour("book_ticker", sd, h, "epoch_us(coalesce(event_time, recv_time)) AS ts, "
                           "epoch_us(recv_time) AS local, best_ask_qty, best_ask, best_bid, best_bid_qty",
                           "recv_time, update_id")
            if not t.num_rows:
                continue
            ts, local = t.column("ts").to_numpy(), t.column("local").to_numpy()
            self._neg(sd, DataType.QUOTES.value, ts, local)
            lines = [f"{prefix}{a},{b},{num(aq)},{num(ap)},{num(bp)},{num(bq)}\n"
                     for a, b, aq, ap, bp, bq in zip(ts.tolist(), local.tolist(), *(
                         t.column(c).to_pylist() for c in ("best_ask_qty", "best_ask", "best_bid", "best_bid_qty")))]
            for w in writers:
                w.write(lines)
        for w in writers:
            self._close(w)

    def _snapshots(self, sd: SymbolDay, prefix: str) -> None:
        """book_snapshot_25 and _5 from one stream: the deepest partial-depth one, else the
        ``book_snapshot`` rows (known books only) of the symbol's busiest diff stream."""
        partial = self._partial_stream(sd)
        rebuilt = self._busiest_stream("book_snapshot", sd) if partial is None else None
        if partial is None and rebuilt is None:
            return
        writers = {kind: CsvGz(self._path(sd, kind.value), HEADERS[kind]) for kind in SNAPSHOT_DEPTH}
        for h in range(24):
            if partial is not None:
                t = self._hour("depth_snapshot", sd, h, "epoch_us(coalesce(event_time, recv_time)) AS ts, "
                               "epoch_us(recv_time) AS local, bids, asks", "recv_time, last_update_id",
                               " AND stream = ?", (partial,))
            else:
                t = self._hour("book_snapshot", sd, h, "epoch_us(time) AS ts, epoch_us(time) AS local, bids, asks",
                               "time", " AND stream = ? AND known", (rebuilt,))
            if not t.num_rows:
                continue
            self._neg(sd, "book_snapshot", t.column("ts").to_numpy(), t.column("local").to_numpy())
            rows = list(zip(t.column("ts").to_pylist(), t.column("local").to_pylist(), t.column("bids").to_pylist(),
                            t.column("asks").to_pylist()))
            for kind, w in writers.items():
                w.write([snapshot_line(prefix, a, b, bids, asks, SNAPSHOT_DEPTH[kind]) for a, b, bids, asks in rows])
        for w in writers.values():
            self._close(w)

    def _relation(self, dataset: str, sd: SymbolDay, where: str, lo_us: int) -> str:
        """The symbol's rows of ``dataset`` from the day of ``lo_us`` to this day, narrowed by
        ``where``; a typed empty relation when the archive has no such files."""
        if not self.r.has(dataset):
            return f"({views.archived_sql(self.r.con, self.r.location, dataset, 0)})"
        first = datetime.fromtimestamp(lo_us / 1e6, tz=timezone.utc).date().isoformat()
        return (f"(SELECT * FROM {self.r._from(dataset)} WHERE date BETWEEN DATE '{first}' AND DATE '{self.day}' "
                f"AND market = {views._lit(sd.market.value)} AND symbol = {views._lit(sd.symbol)} AND {where})")

    def _derivative_ticker(self, sd: SymbolDay, prefix: str) -> None:
        """One row per mark price received that day: the ``derivative_ticker`` view's rows, Tardis's
        columns. Binance sends no predicted funding rate (the column stays empty, as Tardis's Binance
        mapper leaves it). Open interest and trades are read from :data:`TICKER_LOOKBACK_US` before
        the day up to its end, from the files of the days they were received."""
        if not self.r.has("mark_price"):
            return
        lo = self.start_us - TICKER_LOOKBACK_US

        def within(col: str, start: int) -> str:
            return f"{col} >= {ArchiveReader.ts(str(start))} AND {col} < {ArchiveReader.ts(str(self.end_us))}"

        sql = views.derivative_ticker_sql(
            # the day's file holds the mark prices received that day, as every other data type's
            mark_price=self._relation("mark_price", sd, within("recv_time", self.start_us), self.start_us),
            open_interest=self._relation("open_interest", sd, within("time", lo), lo),
            trade=self._relation("trade", sd, within("trade_time", lo), lo),
            agg_trade=self._relation("agg_trade", sd, within("trade_time", lo), lo))
        t = self.r.con.execute(
            "SELECT epoch_us(timestamp) AS ts, epoch_us(local_timestamp) AS local, epoch_us(next_funding_time) AS funding, "
            f"funding_rate, open_interest, last_price, index_price, mark_price FROM ({sql}) ORDER BY local, ts").to_arrow_table()
        if not t.num_rows:
            return
        ts, local = t.column("ts").to_numpy(), t.column("local").to_numpy()
        self._neg(sd, DataType.DERIVATIVE_TICKER.value, ts, local)
        w = CsvGz(self._path(sd, DataType.DERIVATIVE_TICKER.value), HEADERS[DataType.DERIVATIVE_TICKER])

        def cell(v) -> str:
            return "" if v is None else num(v)

        w.write([f"{prefix}{a},{b},{'' if f is None else f},{cell(r)},,{cell(oi)},{cell(lp)},{num(ip)},{num(mp)}\n"
                 for a, b, f, r, oi, lp, ip, mp in zip(ts.tolist(), local.tolist(), *(
                     t.column(c).to_pylist() for c in ("funding", "funding_rate", "open_interest", "last_price",
                                                       "index_price", "mark_price")))])
        self._close(w)

    def _liquidations(self, sd: SymbolDay, prefix: str) -> None:
        """Tardis's liquidations from ``liquidation``, by Tardis's own Binance rule (tardis-node's
        ``BinanceLiquidationsMapper``): FILLED orders only, ``o.T`` as the time, the average price
        ``o.ap`` and the filled quantity ``o.z``, the order's side in lower case, no id (Binance
        sends none)."""
        if not self.r.has("liquidation"):
            return
        t = self.r.con.execute(
            "SELECT epoch_us(trade_time) AS ts, epoch_us(recv_time) AS local, lower(side) AS side, avg_price, "
            f"filled_accum_qty FROM {self._relation('liquidation', sd, f'status = {views._lit(FILLED)}', self.start_us)} "
            "ORDER BY local, ts").to_arrow_table()
        if not t.num_rows:
            return
        ts, local = t.column("ts").to_numpy(), t.column("local").to_numpy()
        self._neg(sd, DataType.LIQUIDATIONS.value, ts, local)
        w = CsvGz(self._path(sd, DataType.LIQUIDATIONS.value), HEADERS[DataType.LIQUIDATIONS])
        w.write([f"{prefix}{a},{b},,{side},{num(p)},{num(q)}\n" for a, b, side, p, q in zip(
            ts.tolist(), local.tolist(), *(t.column(c).to_pylist() for c in ("side", "avg_price", "filled_accum_qty")))])
        self._close(w)

    def _partial_stream(self, sd: SymbolDay) -> str | None:
        """The deepest partial-depth stream of the symbol that day (``@depth20`` over ``@depth5``)."""
        if not self.r.has("depth_snapshot"):
            return None
        t = self.r.query("depth_snapshot", f"date = DATE '{self.day}' AND market = ? AND symbol = ? GROUP BY stream",
                         [sd.market.value, sd.symbol], "n DESC, stream", 1, "stream, max(len(bids)) AS n")
        return t.column("stream")[0].as_py() if t.num_rows else None

    # ---- the book

    def diff_stream(self, sd: SymbolDay) -> str | None:
        """The symbol's diff-depth stream with the most events that day (a symbol may have two)."""
        return self._busiest_stream("depth_update", sd)

    def _busiest_stream(self, dataset: str, sd: SymbolDay) -> str | None:
        if not self.r.has(dataset):
            return None
        t = self.r.query(dataset, f"date = DATE '{self.day}' AND market = ? AND symbol = ? GROUP BY stream",
                         [sd.market.value, sd.symbol], "n DESC, stream", 1, "stream, count(*) AS n")
        return t.column("stream")[0].as_py() if t.num_rows else None

    def book_rows(self, sd: SymbolDay) -> Iterator[tuple[int, list[BookRow | Clear]]]:
        """(hour, rows) of the day's ``incremental_book_L2``, a record batch of events at a time."""
        stream = self.diff_stream(sd)
        if stream is None:
            return
        rows = L2Rows(sd.market)
        self.summary.books[(sd.market.value, sd.symbol)] = rows.stats
        first: list[BookRow | Clear] = []
        at = book_at(self.r, sd.market.value, sd.symbol, self.start_us, stream=stream) \
            if self.r.has("depth_rest_snapshot") else None
        if at is not None and at.source is Source.DIFFS and at.last_update_id is not None:
            first = rows.start(self.start_us, at.last_update_id, at.bids, at.asks)
        snaps: list[Snapshot] = []
        if self.r.has("depth_rest_snapshot"):
            lo = self.start_us - LOOKBACK_US
            prev = datetime.fromtimestamp(lo / 1e6, tz=timezone.utc).date().isoformat()
            t = self.r.query("depth_rest_snapshot",
                             f"market = ? AND stream = ? AND recv_time >= {ArchiveReader.ts()} AND "
                             f"recv_time < {ArchiveReader.ts()} AND date BETWEEN DATE '{prev}' AND DATE '{self.day}'",
                             [sd.market.value, stream, lo, self.end_us], "last_update_id, recv_time")
            snaps = list(snapshot_rows(t)) if t.num_rows else []
        si = 0
        last_u = None
        out = first
        for h in range(24):
            where = f"date = DATE '{self.day}' AND hour = {h} AND market = ? AND symbol = ? AND stream = ?"
            for batch in self.r.batches("depth_update", where, [sd.market.value, sd.symbol, stream],
                                        "last_update_id, recv_time"):
                ts = batch.column("event_time").cast(pa.int64()).to_pylist()
                local = batch.column("recv_time").cast(pa.int64()).to_pylist()
                U, u = batch.column("first_update_id").to_pylist(), batch.column("last_update_id").to_pylist()
                pu = batch.column("prev_update_id").to_pylist()
                bids, asks = _levels_pairs(batch.column("bids")), _levels_pairs(batch.column("asks"))
                for i in range(batch.num_rows):
                    if u[i] == last_u:  # the same event from two sessions
                        continue
                    last_u = u[i]
                    while si < len(snaps) and snaps[si].last_update_id <= u[i]:
                        out.extend(rows.snapshot(snaps[si], ts[i], local[i]))
                        si += 1
                    out.extend(rows.event(DiffEvent(U[i], u[i], pu[i], bids[i], asks[i]), ts[i], local[i]))
                if out:
                    yield h, out
                    out = []
            if out:  # the start-of-day block of an hour without events
                yield h, out
                out = []


    # ---- hftbacktest

    def hftbacktest(self) -> Summary:
        for sd in self.symbol_days():
            w = HbtWriter(self._path(sd, "hftbacktest", "npz"))
            self.summary.hbt[(sd.market.value, sd.symbol)] = w
            trades, book = self.trade_hours(sd), self.book_rows(sd)
            next_trade, next_book = next(trades, None), next(book, None)
            for h in range(24):
                hour_ns = (self.start_us + h * HOUR_US) * 1000
                # Lower bounds of every later event's local time: the hour's start, then a batch's
                # last local time (the book's local times never go back), then the hour's end.
                if next_trade is not None and next_trade[0] == h:
                    w.add(hbt_trade_events(next_trade[1]), hour_ns)
                    next_trade = next(trades, None)
                while next_book is not None and next_book[0] == h:
                    events = hbt_book_events(next_book[1])
                    w.add(events, int(events["local_ts"].max()) if len(events) else hour_ns)
                    next_book = next(book, None)
                w.add(np.zeros(0, EVENT_DTYPE), hour_ns + HOUR_US * 1000)
            if w.close():
                self.summary.files.append(FileSummary(w.path, w.rows))
        return self.summary


def hbt_trade_events(t: pa.Table) -> np.ndarray:
    """hftbacktest TRADE_EVENT rows of a ``trade`` hour; the side is the taker's (buyer maker: a sell)."""
    arr = np.zeros(t.num_rows, EVENT_DTYPE)
    maker = t.column("is_buyer_maker").to_numpy(zero_copy_only=False)
    arr["ev"] = np.where(maker, TRADE_EVENT | SELL_EVENT, TRADE_EVENT | BUY_EVENT).astype(np.uint64)
    arr["exch_ts"] = t.column("ts").to_numpy() * 1000
    arr["local_ts"] = t.column("local").to_numpy() * 1000
    arr["px"] = t.column("price").to_numpy()
    arr["qty"] = t.column("qty").to_numpy()
    return arr


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="orderbook export",
        description="Write one UTC day of the archive as the files backtesters read (docs/backtesting.md).",
    )
    p.add_argument("--format", required=True, choices=[f.value for f in Format],
                   help="tardis: Tardis.dev's CSV layout (hftbacktest's converter, NautilusTrader's "
                        "TardisCSVDataLoader); hftbacktest: its .npz event arrays")
    p.add_argument("--date", required=True, help="the UTC day, YYYY-MM-DD")
    p.add_argument("--symbols", nargs="*", default=None, help="symbols to export (default: every symbol of the day)")
    p.add_argument("--out", default="export", help="output folder (default: ./export)")
    p.add_argument("--archive", default=None,
                   help="s3://bucket/prefix or a folder (default: $ORDERBOOK_ARCHIVE_URL or data/archive)")
    return p


def export(archive: str | Location, fmt: Format | str, day: str, out: str | Path,
           symbols: Iterable[str] | None = None) -> Summary:
    """Export ``day`` of ``archive`` in ``fmt`` under ``out`` (see the module docstring)."""
    fmt = Format(fmt)
    try:
        Date.fromisoformat(day)
    except ValueError:
        raise ConfigError("--date", f"{day!r} is not a date; give the UTC day as YYYY-MM-DD.") from None
    location = archive if isinstance(archive, Location) else Location.parse(str(archive))
    if not location.is_s3 and not Path(location.url).is_dir():
        raise ConfigError("ORDERBOOK_ARCHIVE_URL", f"the archive folder {location.url} does not exist; "
                                                   "point --archive at the folder the archive job writes.")
    with ArchiveReader(location) as r:
        ex = Exporter(r, day, Path(out), symbols)
        if not ex.symbol_days():
            raise ExportError(f"the archive at {location.url} holds no data for {ex.day}"
                              + (f" and symbols {', '.join(ex.symbols)}" if ex.symbols else "") + ".")
        return ex.tardis() if fmt is Format.TARDIS else ex.hftbacktest()


def main(argv: list[str] | None, locate: Callable[[str | None], Location]) -> int:
    """``orderbook export``; ``locate`` turns ``--archive`` (or None) into the archive
    (``analytics.query.archive_location``: the settings' ``ORDERBOOK_ARCHIVE_URL``)."""
    args = build_parser().parse_args(argv)
    try:
        summary = export(locate(args.archive), args.format, args.date, args.out, args.symbols)
    except OrderbookError as exc:
        print(f"orderbook export: {exc}", file=sys.stderr)
        return USER_ERROR
    for line in summary.lines():
        print(line)
    return 0
