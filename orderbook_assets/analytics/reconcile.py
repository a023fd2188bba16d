"""Reconciliation of the archived trades with the exchange's own daily files (no Dagster).

Binance publishes every trade and aggregate trade of a UTC day as a zip of one CSV, beside a
``.CHECKSUM`` file holding its SHA-256 (``<hex>  <file name>``)::

    data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2026-11-23.zip          (+ .CHECKSUM)
    data/spot/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2026-11-23.zip
    data/futures/um/daily/trades/BTCUSDT/BTCUSDT-trades-2026-11-23.zip    (USD-M)
    data/futures/um/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2026-11-23.zip

:func:`reconcile` compares, per stream (market, symbol, dataset ``trade`` or ``agg_trade``) the
archive recorded that day, the exchange's rows with the archive's by id, and says for every id
the exchange has and we do not why we do not have it, in this order (the first that applies):

``outside_span``   before the first or after the last id we archived of the stream that day:
                   the collector was not recording the stream then ("not recorded: outside the
                   recorded span"), never a loss of ours;
``trade_gap``      inside a ``trade_gap`` record of the stream (ids the collector saw missing);
``silent``         at a time inside a ``silent`` coverage record of the stream (a subscription
                   that went quiet, recorded as such);
``outage``         at a time no connection session was open (coverage ``session`` rows of any
                   market: sessions do not name their market, so a session of either market
                   counts as recording, which can only make a loss look silent, never hide
                   one), or inside a ``gap`` record of the stream itself; an archive without
                   any session record of the day proves no outage;
``lost_silently``  any other: the pipeline lost it without a record. The goal is zero.

It also counts the ids we have that the exchange does not (``extra``), and the rows whose values
differ (``price``, ``qty``, ``time``, ``is_buyer_maker``; aggTrades also ``first_trade_id`` and
``last_trade_id``). Times are compared in milliseconds, the unit the WebSocket streams carry: the
spot files hold microseconds since 2025-01-01 (milliseconds before), USD-M files milliseconds, and
the unit of each file is told by the magnitude of its times and reported.

Bad input (a zip whose SHA-256 does not match its ``.CHECKSUM``, no ``.CHECKSUM``, a CSV of the
wrong shape, an unreachable site, a day without archived trades, no official file for any
archived stream) raises :class:`ReconcileInputError`; nothing is reported then.
A stream without an official file is reported ``unproven``, never as a pass.

Memory is bounded per stream: each zip is streamed to a temporary CSV, which DuckDB reads,
and the archive is read one stream at a time (the parts are sorted by symbol, so Parquet
statistics skip the other symbols' row groups).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import asdict, dataclass, field
from datetime import date as Date
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Callable
from pathlib import Path

import duckdb

from orderbook_core.errors import ConfigError, OrderbookError

from orderbook_assets.archive import datasets
from orderbook_assets.archive.location import Location, S3Settings

#: How long one HTTP request to the exchange's site may take before the download counts as failed.
HTTP_TIMEOUT_S = 60.0
#: Examples kept per finding: enough to look them up, small enough for a summary.
EXAMPLES = 10
#: Exchange times below this are milliseconds since the epoch (1e14 ms is the year 5138), above it
#: microseconds (1e14 µs is 1973): the two units cannot be confused for any real trade.
MICROSECONDS_ABOVE = 10**14
CHUNK = 1 << 20
#: DuckDB's memory for one reconciliation; beyond it, it spills to disk (measured: docs/analysts.md).
MEMORY_LIMIT = "512MB"


class ReconcileInputError(OrderbookError):
    """Bad input, nothing compared (a checksum that does not match, a file of the wrong shape, an
    unreachable site, a bad date, a day without archived trades): the message is one sentence."""


class TimeUnit(StrEnum):
    MILLISECONDS = "ms"
    MICROSECONDS = "us"


class Missing(StrEnum):
    """Why an id the exchange has is not in the archive (module docstring), in order of precedence."""

    OUTSIDE_SPAN = "outside_span"
    TRADE_GAP = "trade_gap"
    SILENT = "silent"
    OUTAGE = "outage"
    LOST_SILENTLY = "lost_silently"


class Status(StrEnum):
    COMPARED = "compared"
    UNPROVEN = "unproven"  # no official file for the stream: nothing compared, never a pass


@dataclass(frozen=True)
class FileKind:
    """One kind of the exchange's daily files: its folder name and its columns per market."""

    folder: str
    columns: dict[str, tuple[str, ...]]  # market → CSV columns, in order
    id: str
    time: str
    qty: str


_TRADE_COLS = ("id", "price", "qty", "quote_qty", "time", "is_buyer_maker")
_AGG_COLS = ("agg_trade_id", "price", "quantity", "first_trade_id", "last_trade_id", "transact_time", "is_buyer_maker")
KINDS = {
    datasets.TRADE: FileKind("trades", {"spot": (*_TRADE_COLS, "is_best_match"), "usdm": _TRADE_COLS},
                             "id", "time", "qty"),
    datasets.AGG_TRADE: FileKind("aggTrades", {"spot": (*_AGG_COLS, "is_best_match"), "usdm": _AGG_COLS},
                                 "agg_trade_id", "transact_time", "quantity"),
}
#: Where each market's files are on the exchange's site (and in a folder mirroring it).
MARKET_PATHS = {"spot": "spot", "usdm": "futures/um"}
#: The archive's id column per dataset.
ARCHIVE_ID = {datasets.TRADE: "trade_id", datasets.AGG_TRADE: "agg_trade_id"}
#: Values compared per dataset (the archive's names).
COMPARED = {
    datasets.TRADE: ("price", "qty", "time", "is_buyer_maker"),
    datasets.AGG_TRADE: ("price", "qty", "time", "is_buyer_maker", "first_trade_id", "last_trade_id"),
}


@dataclass(frozen=True, order=True)
class Stream:
    market: str
    symbol: str
    dataset: str

    def file_name(self, day: Date) -> str:
        kind = KINDS[self.dataset].folder
        return f"{self.symbol}-{kind}-{day.isoformat()}.zip"

    def site_path(self, day: Date) -> str:
        """The file's path under the site's ``data/`` folder."""
        return f"{MARKET_PATHS[self.market]}/daily/{KINDS[self.dataset].folder}/{self.symbol}/{self.file_name(day)}"


@dataclass
class StreamReport:
    """What one stream's comparison found (counts of ids; examples as [first, last] id ranges)."""

    market: str
    symbol: str
    dataset: str
    status: Status
    official_file: str | None = None
    time_unit: TimeUnit | None = None
    official_rows: int = 0
    archived_rows: int = 0
    archived_duplicates: int = 0
    matched: int = 0
    missing: dict[str, int] = field(default_factory=lambda: {m.value: 0 for m in Missing})
    lost_silently_ranges: list[list[int]] = field(default_factory=list)
    extra: int = 0
    extra_ids: list[int] = field(default_factory=list)
    differing: dict[str, int] = field(default_factory=dict)
    differing_examples: list[dict] = field(default_factory=list)

    @property
    def lost_silently(self) -> int:
        return self.missing[Missing.LOST_SILENTLY]

    def summary(self) -> str:
        name = f"{self.market} {self.symbol} {self.dataset}"
        if self.status is Status.UNPROVEN:
            return f"{name}: unproven (no official file)"
        m = self.missing
        diff = ", ".join(f"{k} {v}" for k, v in self.differing.items() if v) or "none"
        text = (f"{name}: {self.official_rows} official ({self.time_unit}), {self.archived_rows} archived, "
                f"{self.matched} matched; missing: lost silently {m[Missing.LOST_SILENTLY]}, "
                f"in trade_gap {m[Missing.TRADE_GAP]}, in silent {m[Missing.SILENT]}, in outage {m[Missing.OUTAGE]}, "
                f"not recorded (outside the recorded span) {m[Missing.OUTSIDE_SPAN]}; "
                f"ours only {self.extra}; differing: {diff}")
        if self.lost_silently_ranges:
            text += "; lost ids " + ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in self.lost_silently_ranges)
        return text


@dataclass
class Report:
    day: Date
    archive: str
    official: str
    streams: list[StreamReport]

    @property
    def lost_silently(self) -> int:
        return sum(s.lost_silently for s in self.streams)

    @property
    def compared(self) -> list[StreamReport]:
        return [s for s in self.streams if s.status is Status.COMPARED]

    def to_dict(self) -> dict:
        return {
            "date": self.day.isoformat(), "archive": self.archive, "official": self.official,
            "lost_silently": self.lost_silently, "streams": [asdict(s) for s in self.streams],
        }


# --------------------------------------------------------------------------- the exchange's files


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def verify_checksum(zip_path: Path, checksum_text: str) -> None:
    """Raise ReconcileInputError unless ``checksum_text`` (``<hex>  <name>``) holds the zip's SHA-256."""
    words = checksum_text.split()
    expected = words[0].lower() if words else ""
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        raise ReconcileInputError(f"{zip_path.name}.CHECKSUM holds no SHA-256; download it again from the exchange's site.")
    actual = sha256_of(zip_path)
    if actual != expected:
        raise ReconcileInputError(
            f"{zip_path.name} does not match its .CHECKSUM (SHA-256 {actual}, expected {expected}); "
            "the file is damaged or not the exchange's, download it again."
        )


def extract_csv(zip_path: Path, dest: Path) -> Path:
    """Stream the one CSV of the zip to ``dest`` (a folder); return its path."""
    try:
        with zipfile.ZipFile(zip_path) as z:
            members = [n for n in z.namelist() if n.lower().endswith(".csv")]
            if len(members) != 1:
                raise ReconcileInputError(f"{zip_path.name} holds {len(members)} CSV files, not one; it is not a daily trades file.")
            out = dest / Path(members[0]).name
            with z.open(members[0]) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
            return out
    except zipfile.BadZipFile as exc:
        raise ReconcileInputError(f"{zip_path.name} is not a zip file ({exc}); download it again.") from exc


@dataclass(frozen=True)
class CsvShape:
    header: bool
    columns: int


def sniff(csv_path: Path) -> CsvShape:
    """A header row is there when the first field of the first line is not an integer id."""
    with open(csv_path, "rb") as f:
        first = f.readline().decode("utf-8", "replace").strip()
    if not first:
        return CsvShape(False, 0)
    fields = first.split(",")
    return CsvShape(not fields[0].strip().lstrip("-").isdigit(), len(fields))


def unit_of(low: int, high: int, name: str) -> TimeUnit:
    """The time unit of a file from the magnitude of its smallest and largest times."""
    lo_us, hi_us = low >= MICROSECONDS_ABOVE, high >= MICROSECONDS_ABOVE
    if lo_us != hi_us:
        raise ReconcileInputError(f"{name} mixes millisecond and microsecond times ({low} and {high}); it is not the exchange's file.")
    return TimeUnit.MICROSECONDS if hi_us else TimeUnit.MILLISECONDS


@dataclass(frozen=True)
class Official:
    """A verified official file of one stream, extracted."""

    name: str  # where it came from (path or URL), for the report
    csv: Path
    shape: CsvShape


class Source:
    """The exchange's files: a folder (as downloaded: the site's tree or flat) or the site's base URL."""

    def __init__(self, where: str, workdir: Path):
        self.where = where
        self.workdir = workdir
        self.is_url = urllib.parse.urlsplit(where).scheme in ("http", "https")
        if not self.is_url and not Path(where).is_dir():
            raise ReconcileInputError(f"the official files' folder {where} does not exist; pass --official a folder or an http(s) URL.")

    def fetch(self, stream: Stream, day: Date) -> Official | None:
        """The stream's file of ``day``, verified and extracted; None when the source has none."""
        got = self._url(stream, day) if self.is_url else self._folder(stream, day)
        if got is None:
            return None
        name, zip_path, checksum, flat = got
        if checksum is None:
            raise ReconcileInputError(f"{name} has no .CHECKSUM beside it; download {zip_path.name}.CHECKSUM too.")
        verify_checksum(zip_path, checksum)
        out = self.workdir / "csv"
        out.mkdir(exist_ok=True)
        csv = extract_csv(zip_path, out)
        if self.is_url:
            zip_path.unlink()  # the disk, like memory, holds one stream at a time
        shape = sniff(csv)
        kind = KINDS[stream.dataset]
        if shape.columns != len(kind.columns[stream.market]):
            csv.unlink()
            other = [m for m, cols in kind.columns.items() if len(cols) == shape.columns]
            if flat and other:  # a flat folder: the column count tells the market, and this is the other one
                return None
            raise ReconcileInputError(f"{name} has {shape.columns} columns, but {stream.market} {kind.folder} files have "
                                    f"{len(kind.columns[stream.market])}; it is not the exchange's file.")
        return Official(name, csv, shape)

    def _folder(self, stream: Stream, day: Date):
        """(name, zip, checksum text or None, flat) of the first candidate path that exists."""
        root = Path(self.where)
        rel = stream.site_path(day)
        candidates = [(root / "data" / rel, False), (root / rel, False),
                      (root / stream.symbol / stream.file_name(day), True), (root / stream.file_name(day), True)]
        for path, flat in candidates:
            if path.is_file():
                checksum = path.with_name(path.name + ".CHECKSUM")
                return str(path), path, checksum.read_text() if checksum.is_file() else None, flat
        return None

    def _url(self, stream: Stream, day: Date):
        base = self.where.rstrip("/")
        url = f"{base}/{stream.site_path(day)}" if base.endswith("/data") else f"{base}/data/{stream.site_path(day)}"
        dest = self.workdir / "zip"
        dest.mkdir(exist_ok=True)
        zip_path = dest / stream.file_name(day)
        if not _download(url, zip_path):
            return None
        checksum = dest / (zip_path.name + ".CHECKSUM")
        return url, zip_path, checksum.read_text() if _download(url + ".CHECKSUM", checksum) else None, False


def _download(url: str, dest: Path) -> bool:
    """Stream ``url`` to ``dest``; False on 404 (the site has no such file)."""
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as resp, open(dest, "wb") as out:
            shutil.copyfileobj(resp, out, CHUNK)
        return True
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise ReconcileInputError(f"{url} answered HTTP {exc.code}; check --official or try again later.") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ReconcileInputError(f"cannot download {url} ({reason}); check --official and the network.") from exc


# --------------------------------------------------------------------------- the archive


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _day_bounds(day: Date) -> tuple[int, int]:
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    return int(start.timestamp()) * 1_000_000, int((start + timedelta(days=1)).timestamp()) * 1_000_000


class Archive:
    """The archive's trades of a day, read with DuckDB like the analysts' views."""

    def __init__(self, con: duckdb.DuckDBPyConnection, url: str, day: Date, s3: S3Settings | None = None):
        from orderbook_assets.analytics import views  # httpfs from its package, the S3 secret, file counts

        self.con, self.day = con, day
        self.location = Location.parse(url)
        con.execute("SET TimeZone = 'UTC'")
        if self.location.is_s3:
            views.configure_s3(con, self.location, s3)
        elif not self.location.path.is_dir():
            raise ConfigError("ORDERBOOK_ARCHIVE_URL", f"the archive folder {self.location.url} does not exist; "
                              "pass --archive or set ORDERBOOK_ARCHIVE_URL to the folder the archive job writes.")
        self.files = {name: views.count_files(con, self.location.glob(name))
                      for name in (datasets.TRADE, datasets.AGG_TRADE, datasets.COVERAGE)}
        self.lo_us, self.hi_us = _day_bounds(day)

    def _source(self, name: str) -> str:
        # A trade of the day may be received just after midnight, or be filed under the previous
        # day's last hour by a clock running behind: read the neighbouring days, keep the day's trades.
        days = ", ".join(f"DATE '{self.day + timedelta(days=d)}'" for d in (-1, 0, 1))
        return (f"(SELECT * FROM read_parquet({_lit(self.location.glob(name))}, hive_partitioning = true, "
                f"union_by_name = true, hive_types = {{'date': DATE, 'hour': INTEGER}}) WHERE date IN ({days}))")

    def streams(self) -> list[Stream]:
        out: set[Stream] = set()
        for name in (datasets.TRADE, datasets.AGG_TRADE):
            if not self.files[name]:
                continue
            rows = self.con.execute(
                f"SELECT DISTINCT coalesce(market, 'spot'), symbol FROM {self._source(name)} "
                "WHERE epoch_us(trade_time) >= ? AND epoch_us(trade_time) < ?", [self.lo_us, self.hi_us]).fetchall()
            # COIN-M's daily files (futures/cm, with base_qty) are not read yet: its trades are not reconciled
            out.update(Stream(m, s, name) for m, s in rows if m in MARKET_PATHS)
        return sorted(out)

    def load(self, stream: Stream) -> tuple[int, int, list[str]]:
        """The stream's rows of the day into the table ``ours``, one row an id (the earliest received
        of any duplicates); returns (archived rows, duplicates, stream names)."""
        idc = ARCHIVE_ID[stream.dataset]
        extra = ", first_trade_id, last_trade_id" if stream.dataset == datasets.AGG_TRADE else ""
        self.con.execute(
            f"CREATE OR REPLACE TEMP TABLE ours AS SELECT {idc} AS id, stream, price, qty, "
            f"epoch_us(trade_time) AS time_us, is_buyer_maker{extra}, recv_time FROM {self._source(stream.dataset)} "
            "WHERE coalesce(market, 'spot') = ? AND symbol = ? AND epoch_us(trade_time) >= ? AND epoch_us(trade_time) < ?",
            [stream.market, stream.symbol, self.lo_us, self.hi_us])
        rows, ids = self.con.execute("SELECT count(*), count(DISTINCT id) FROM ours").fetchone()
        if rows != ids:  # the archive promises none; sorting only when there are some keeps a busy day cheap
            self.con.execute("CREATE OR REPLACE TEMP TABLE ours AS SELECT DISTINCT ON (id) * FROM ours ORDER BY id, recv_time")
        names = [r[0] for r in self.con.execute("SELECT DISTINCT stream FROM ours ORDER BY 1").fetchall()]
        return rows, rows - ids, names

    def known(self, stream: Stream, names: list[str]) -> None:
        """The stream's recorded gaps into the tables ``id_gaps`` (lo, hi), ``quiet`` (lo_us, hi_us:
        silent records and the stream's own gap records) and ``sessions`` (lo_us, hi_us)."""
        self.con.execute("CREATE OR REPLACE TEMP TABLE id_gaps (lo BIGINT, hi BIGINT)")
        self.con.execute("CREATE OR REPLACE TEMP TABLE quiet (kind VARCHAR, lo BIGINT, hi BIGINT)")
        self.con.execute("CREATE OR REPLACE TEMP TABLE sessions (lo BIGINT, hi BIGINT)")
        if not self.files[datasets.COVERAGE]:
            return
        lo, hi = self.lo_us - 3_600_000_000, self.hi_us + 3_600_000_000
        cov = (f"(SELECT * FROM read_parquet({_lit(self.location.glob(datasets.COVERAGE))}, hive_partitioning = false, "
               f"union_by_name = true) WHERE epoch_us(hour_start) >= {lo} AND epoch_us(hour_start) < {hi})")
        have = {r[0] for r in self.con.execute(f"DESCRIBE SELECT * FROM {cov}").fetchall()}
        market = "coalesce(market, 'spot')" if "market" in have else "'spot'"
        raw_market = "market" if "market" in have else "NULL"
        streams = ", ".join(_lit(n) for n in names) or "NULL"
        if {"first_id", "last_id", "dataset"} <= have:
            self.con.execute(
                f"INSERT INTO id_gaps SELECT DISTINCT first_id, last_id FROM {cov} WHERE record = 'trade_gap' "
                f"AND {market} = ? AND dataset = ? AND stream IN ({streams})", [stream.market, stream.dataset])
        # 'silent' is matched by its name alone: a record of the stream, or of the whole market (stream null).
        self.con.execute(
            f"INSERT INTO quiet SELECT record, epoch_us(start_time), coalesce(epoch_us(end_time), {self.hi_us}) FROM {cov} "
            f"WHERE ((record = 'silent' AND (stream IN ({streams}) OR stream IS NULL) AND ({raw_market} = ? OR {raw_market} IS NULL)) "
            f"OR (record = 'gap' AND stream IN ({streams}) AND {market} = ?)) AND start_time IS NOT NULL",
            [stream.market, stream.market])
        # A session still open at its last export was open at least until then (as_of).
        self.con.execute(
            f"INSERT INTO sessions SELECT min(epoch_us(start_time)), coalesce(max(epoch_us(end_time)), "
            f"max(epoch_us(as_of))) FROM {cov} WHERE record = 'session' GROUP BY {'collector, ' if 'collector' in have else ''}session_id")


# --------------------------------------------------------------------------- the comparison


def _read_official(con: duckdb.DuckDBPyConnection, stream: Stream, off: Official) -> TimeUnit:
    """The official file into the table ``theirs`` (times in µs); returns the file's time unit."""
    kind = KINDS[stream.dataset]
    cols = kind.columns[stream.market]
    types = {c: "VARCHAR" if c.startswith("is_") else ("DOUBLE" if c in ("price", "qty", "quantity", "quote_qty")
                                                       else "BIGINT") for c in cols}
    spec = "{" + ", ".join(f"{_lit(c)}: {_lit(t)}" for c, t in types.items()) + "}"
    con.execute(f"CREATE OR REPLACE TEMP TABLE raw AS SELECT * FROM read_csv({_lit(str(off.csv))}, header = "
                f"{'true' if off.shape.header else 'false'}, delim = ',', quote = '\"', auto_detect = false, columns = {spec})")
    low, high = con.execute(f"SELECT min({kind.time}), max({kind.time}) FROM raw").fetchone()
    unit = TimeUnit.MILLISECONDS if low is None else unit_of(low, high, off.name)
    scale = 1000 if unit is TimeUnit.MILLISECONDS else 1
    extra = ", first_trade_id, last_trade_id" if stream.dataset == datasets.AGG_TRADE else ""
    con.execute(f"CREATE OR REPLACE TEMP TABLE theirs AS SELECT {kind.id} AS id, price, {kind.qty} AS qty, "
                f"{kind.time} * {scale} AS time_us, lower(trim(is_buyer_maker)) IN ('true', '1') AS is_buyer_maker{extra} "
                "FROM raw")
    con.execute("DROP TABLE raw")
    return unit


def _ranges(con: duckdb.DuckDBPyConnection, table: str) -> list[list[int]]:
    """Consecutive ids of ``table`` collapsed into [first, last] ranges, the first few."""
    return [list(r) for r in con.execute(
        f"SELECT min(id), max(id) FROM (SELECT id, id - row_number() OVER (ORDER BY id) AS grp FROM {table}) "
        f"GROUP BY grp ORDER BY 1 LIMIT {EXAMPLES}").fetchall()]


def compare(con: duckdb.DuckDBPyConnection, stream: Stream, off: Official, report: StreamReport) -> None:
    """Compare ``theirs`` (read from ``off``) with ``ours``, given ``id_gaps``, ``quiet`` and ``sessions``."""
    report.time_unit = _read_official(con, stream, off)
    report.official_rows = con.execute("SELECT count(*) FROM theirs").fetchone()[0]
    span = con.execute("SELECT min(id), max(id) FROM ours").fetchone()
    first, last = (span[0], span[1]) if span[0] is not None else (0, -1)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE missing AS
        SELECT t.id, CASE
            WHEN t.id < {first} OR t.id > {last} THEN '{Missing.OUTSIDE_SPAN}'
            WHEN EXISTS (SELECT 1 FROM id_gaps g WHERE t.id BETWEEN g.lo AND g.hi) THEN '{Missing.TRADE_GAP}'
            WHEN EXISTS (SELECT 1 FROM quiet q WHERE q.kind = 'silent' AND t.time_us BETWEEN q.lo AND q.hi)
                THEN '{Missing.SILENT}'
            WHEN EXISTS (SELECT 1 FROM quiet q WHERE q.kind = 'gap' AND t.time_us BETWEEN q.lo AND q.hi)
              OR (EXISTS (SELECT 1 FROM sessions)
                  AND NOT EXISTS (SELECT 1 FROM sessions s WHERE t.time_us BETWEEN s.lo AND s.hi)) THEN '{Missing.OUTAGE}'
            ELSE '{Missing.LOST_SILENTLY}' END AS why
        FROM theirs t ANTI JOIN ours o ON o.id = t.id""")
    for why, n in con.execute("SELECT why, count(*) FROM missing GROUP BY why").fetchall():
        report.missing[why] = n
    con.execute(f"CREATE OR REPLACE TEMP TABLE lost AS SELECT id FROM missing WHERE why = '{Missing.LOST_SILENTLY}'")
    report.lost_silently_ranges = _ranges(con, "lost")
    con.execute("CREATE OR REPLACE TEMP TABLE extra AS SELECT o.id FROM ours o ANTI JOIN theirs t ON t.id = o.id")
    report.extra = con.execute("SELECT count(*) FROM extra").fetchone()[0]
    report.extra_ids = [r[0] for r in con.execute(f"SELECT id FROM extra ORDER BY 1 LIMIT {EXAMPLES}").fetchall()]
    # Times in ms: the unit the streams carry (a µs file's sub-millisecond part is not in a ms stream).
    exprs = {c: (f"o.time_us // 1000 IS DISTINCT FROM t.time_us // 1000" if c == "time" else f"o.{c} IS DISTINCT FROM t.{c}")
             for c in COMPARED[stream.dataset]}
    counts = con.execute("SELECT count(*), " + ", ".join(f"count(*) FILTER (WHERE {e})" for e in exprs.values())
                         + " FROM ours o JOIN theirs t ON t.id = o.id").fetchone()
    report.matched = counts[0]
    report.differing = dict(zip(exprs, counts[1:]))
    for col, e in exprs.items():
        if not report.differing[col]:
            continue
        c = "time_us" if col == "time" else col
        for rid, ours, theirs in con.execute(
                f"SELECT o.id, o.{c}, t.{c} FROM ours o JOIN theirs t ON t.id = o.id WHERE {e} ORDER BY 1 LIMIT {EXAMPLES}"
        ).fetchall():
            report.differing_examples.append({"id": rid, "field": col, "archived": ours, "official": theirs})
    for table in ("theirs", "missing", "lost", "extra"):
        con.execute(f"DROP TABLE {table}")


def reconcile(day: Date, official: str, archive_url: str, symbols: list[str] | None = None,
              s3: S3Settings | None = None) -> Report:
    """Compare the archive's trades and aggTrades of ``day`` (UTC) with the exchange's files.

    ``official``: a folder of the exchange's zips (with their ``.CHECKSUM`` files) or the site's
    base URL (``https://data.binance.vision``). ``symbols``: only these (default: every symbol the
    archive has trades of that day).

    Raises:
        ReconcileInputError: bad input (checksum, shape, unreachable), no trades archived that day,
            or no official file for any of them (nothing compared is no answer).
        ConfigError: a bad archive URL or S3 settings.
    """
    con = duckdb.connect()
    try:
        with tempfile.TemporaryDirectory(prefix="orderbook-reconcile-") as tmp:
            # Memory bounded whatever the day's size: DuckDB spills beyond the limit to the work folder.
            con.execute(f"SET memory_limit = {_lit(MEMORY_LIMIT)}")
            con.execute(f"SET temp_directory = {_lit(str(Path(tmp) / 'spill'))}")
            source = Source(official, Path(tmp))
            arch = Archive(con, archive_url, day, s3)
            wanted = {s.upper() for s in symbols} if symbols else None
            streams = [s for s in arch.streams() if wanted is None or s.symbol in wanted]
            if not streams:
                which = f" of {', '.join(sorted(wanted))}" if wanted else ""
                raise ReconcileInputError(f"the archive at {arch.location.url} holds no trades{which} on {day}; "
                                        "pick a day it recorded (or check --archive and --symbols).")
            report = Report(day, arch.location.url, official, [])
            for stream in streams:
                r = StreamReport(stream.market, stream.symbol, stream.dataset, Status.UNPROVEN)
                report.streams.append(r)
                off = source.fetch(stream, day)
                if off is None:
                    continue
                r.status, r.official_file = Status.COMPARED, off.name
                r.archived_rows, r.archived_duplicates, names = arch.load(stream)
                arch.known(stream, names)
                compare(con, stream, off, r)
                off.csv.unlink()  # the disk, like memory, holds one stream at a time
            if not report.compared:
                raise ReconcileInputError(f"{official} has no file for any of the {len(streams)} archived stream(s) of "
                                        f"{day} (e.g. {streams[0].site_path(day)}); check --official and the date.")
            return report
    finally:
        con.close()


# --------------------------------------------------------------------------- the command

LOST = 1
BAD_INPUT = 2


def build_parser():
    import argparse

    p = argparse.ArgumentParser(
        prog="orderbook reconcile",
        description="Compare the archive's trades and aggTrades of one UTC day with the exchange's own daily files. "
                    "Exit 0: nothing lost silently; 1: something was; 2: bad input.",
    )
    p.add_argument("--date", required=True, help="the UTC day, YYYY-MM-DD")
    p.add_argument("--official", required=True, metavar="PATH_OR_URL",
                   help="a folder of the exchange's daily zips with their .CHECKSUM files, or the site's base URL "
                        "(e.g. https://data.binance.vision)")
    p.add_argument("--archive", default=None,
                   help="s3://bucket/prefix or a folder (default: $ORDERBOOK_ARCHIVE_URL or data/archive)")
    p.add_argument("--symbols", nargs="+", default=None, metavar="SYMBOL",
                   help="only these symbols (space or comma separated; default: every symbol archived that day)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def parse_day(text: str) -> Date:
    try:
        return Date.fromisoformat(text)
    except ValueError:
        raise ReconcileInputError(f"--date {text!r} is not a day; use YYYY-MM-DD, e.g. 2026-11-23.") from None


def main(argv: list[str] | None, locate: Callable[[str | None], Location]) -> int:
    """``orderbook reconcile``; returns the exit status. ``locate`` turns ``--archive`` (or None)
    into the archive (``analytics.query.archive_location``: the settings' ``ORDERBOOK_ARCHIVE_URL``)."""
    import json
    import sys

    args = build_parser().parse_args(argv)
    symbols = [s for item in args.symbols or () for s in item.split(",") if s.strip()] or None
    try:
        day = parse_day(args.date)
        report = reconcile(day, args.official, locate(args.archive).url, symbols)
    except (OrderbookError, duckdb.Error) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"orderbook reconcile: {text}", file=sys.stderr)
        return BAD_INPUT
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(f"{report.day}: {len(report.compared)} of {len(report.streams)} stream(s) compared with {report.official}")
        for s in report.streams:
            print("  " + s.summary())
        print(f"lost silently: {report.lost_silently}")
    return LOST if report.lost_silently else 0
