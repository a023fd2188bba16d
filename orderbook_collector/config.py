"""Collector settings: environment variables, mirrored by command-line flags.

Every setting is validated before anything starts; a bad one raises
:class:`~.errors.ConfigError` whose message is one sentence naming the setting
and the fix. The CLI prints it and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

from orderbook_core.buffer.db import DEFAULT_PATH
from orderbook_collector.feed.silence import Rules
from orderbook_core.errors import ConfigError
from orderbook_core.streams import (
    MARKET_TITLE,
    MAX_STREAMS,
    USDM_DEPTH_LIMITS,
    Market,
    StreamSpec,
    build_streams,
    depth_weight,
)

#: ``symbols`` value meaning every symbol the market lists as TRADING (followed as it changes).
ALL_SYMBOLS = "*"
#: The file form's setting; the env form's stream settings are refused next to it.
SUBSCRIPTIONS = "ORDERBOOK_SUBSCRIPTIONS"


class Subscription(NamedTuple):
    """Symbols times stream kinds on one market; ``symbols == ("*",)`` follows every TRADING symbol."""

    market: Market
    symbols: tuple[str, ...]
    kinds: tuple[str, ...]

    @property
    def all_symbols(self) -> bool:
        return self.symbols == (ALL_SYMBOLS,)


@dataclass(frozen=True)
class Settings:
    symbols: list[str] = field(default_factory=lambda: ["btcusdt"])
    streams: list[str] = field(default_factory=lambda: ["depth20@100ms"])
    ws_url: str = "wss://stream.binance.com:9443"
    rest_url: str = "https://api.binance.com"
    usdm_symbols: list[str] = field(default_factory=list)  # empty: no futures
    usdm_streams: list[str] = field(default_factory=lambda: ["depth@100ms"])
    usdm_ws_url: str = "wss://fstream.binance.com"
    usdm_rest_url: str = "https://fapi.binance.com"
    coinm_symbols: list[str] = field(default_factory=list)  # empty: no COIN-M futures
    coinm_streams: list[str] = field(default_factory=lambda: ["depth@100ms"])
    coinm_ws_url: str = "wss://dstream.binance.com"
    coinm_rest_url: str = "https://dapi.binance.com"
    #: The file form (ORDERBOOK_SUBSCRIPTIONS), parsed; when given it replaces the symbol and stream settings above.
    file_subscriptions: tuple[Subscription, ...] | None = None
    symbols_refresh: float = 300.0  # seconds between exchangeInfo reads for ``*``
    buffer: Path = DEFAULT_PATH
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9108  # 0 = any free port, -1 = no metrics server
    synchronous: str = "FULL"
    commit_interval: float = 0.02
    queue_size: int = 20_000
    max_batch: int = 2_000
    rotate_after: float = 23 * 3600.0  # before Binance's 24 h cut
    rotate_overlap: float = 5.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    min_session: float = 5.0  # a session shorter than this still waits before reconnecting
    stall_cadences: int = 50  # no data for this many cadences -> reconnect
    # Silence (feed/silence.py): a clock-driven stream is silent after max(cadences × its
    # cadence, min seconds); a contradiction counts after grace seconds; a stream with nothing
    # since its acknowledgement is silent after never seconds.
    silence_cadences: int = 10
    silence_min_seconds: float = 5.0
    silence_grace_seconds: float = 5.0
    silence_never_seconds: float = 300.0
    #: Streams per connection; None is Binance's limit of each market (1024 spot, 200 USD-M).
    streams_per_connection: int | None = None

    def subscriptions(self) -> list[Subscription]:
        """What to record: the file's subscriptions, or the environment form's (spot, then USD-M)."""
        if self.file_subscriptions is not None:
            return list(self.file_subscriptions)
        subs = [Subscription(Market.SPOT, tuple(self.symbols), tuple(self.streams))]
        if self.usdm_symbols:
            subs.append(Subscription(Market.USDM, tuple(self.usdm_symbols), tuple(self.usdm_streams)))
        if self.coinm_symbols:
            subs.append(Subscription(Market.COINM, tuple(self.coinm_symbols), tuple(self.coinm_streams)))
        return subs

    def markets(self) -> list[Market]:
        return list(dict.fromkeys(s.market for s in self.subscriptions()))

    # REST depth snapshots for diff-depth sync and re-basing (connection/rest.py, feed/rebase.py):
    # the share of each market's weight budget they may use, their depth limit and the re-base
    # period (None: planned from the budget and the number of diff streams), requests in flight
    # per market; the budget (default Binance's, per market) and its window are overridable for tests.
    rest_weight_share: float = 0.5
    depth_snapshot_limit: int | None = None
    usdm_depth_snapshot_limit: int | None = None
    coinm_depth_snapshot_limit: int | None = None
    rebase_seconds: float | None = None
    rest_concurrency: int = 4
    rest_weight_budget: dict | None = None
    rest_weight_window: float = 60.0
    #: Seconds between two polls of one futures symbol's open interest (connection/open_interest.py),
    #: every futures symbol recorded; 0: not polled.
    open_interest_seconds: float = 0.0

    def silence_rules(self) -> Rules:
        return Rules(self.silence_cadences, int(self.silence_min_seconds * 1e6),
                     int(self.silence_grace_seconds * 1e6), int(self.silence_never_seconds * 1e6))

    def snapshot_limit(self, market: Market) -> int | None:
        """The configured snapshot limit of ``market``; None: the deepest the re-base plan allows."""
        return {Market.SPOT: self.depth_snapshot_limit, Market.USDM: self.usdm_depth_snapshot_limit,
                Market.COINM: self.coinm_depth_snapshot_limit}[market]

    def stream_specs(self) -> list[StreamSpec]:
        """Every stream of the named symbols (``*`` streams come from exchangeInfo at run time)."""
        out: dict[StreamSpec, None] = {}
        for sub in self.subscriptions():
            if not sub.all_symbols:
                out.update(dict.fromkeys(build_streams(list(sub.symbols), list(sub.kinds), sub.market)))
        return list(out)

    def all_symbols_kinds(self, market: Market) -> list[str]:
        """The stream kinds recorded for every TRADING symbol of ``market`` (empty: no ``*``)."""
        kinds = [k for s in self.subscriptions() if s.market is market and s.all_symbols for k in s.kinds]
        return list(dict.fromkeys(kinds))

    def ws_base(self, market: Market) -> str:
        return {Market.SPOT: self.ws_url, Market.USDM: self.usdm_ws_url, Market.COINM: self.coinm_ws_url}[market]

    def rest_base(self, market: Market) -> str:
        return {Market.SPOT: self.rest_url, Market.USDM: self.usdm_rest_url, Market.COINM: self.coinm_rest_url}[market]

    def max_streams(self, market: Market) -> int:
        n = MAX_STREAMS[market]
        return n if self.streams_per_connection is None else min(n, self.streams_per_connection)

    def connection_groups(self) -> list[list[StreamSpec]]:
        """The named streams split into connections: one market and route each, within its limit."""
        by_route: dict[tuple[Market, str | None], list[StreamSpec]] = {}
        for s in self.stream_specs():
            by_route.setdefault((s.market, s.route), []).append(s)
        out = []
        for (market, _route), specs in by_route.items():
            n = self.max_streams(market)
            out += [specs[i : i + n] for i in range(0, len(specs), n)]
        return out


# setting name -> (env var, flag, help)
_FIELDS = {
    "symbols": ("ORDERBOOK_SYMBOLS", "--symbols", "spot: comma-separated symbols, e.g. btcusdt,ethusdt, or * for all"),
    "streams": ("ORDERBOOK_STREAMS", "--streams", "spot: comma-separated stream kinds, e.g. depth20@100ms,trade"),
    "ws_url": ("ORDERBOOK_WS_URL", "--ws-url", "spot WebSocket base URL"),
    "rest_url": ("ORDERBOOK_REST_URL", "--rest-url", "spot REST base URL"),
    "usdm_symbols": ("ORDERBOOK_USDM_SYMBOLS", "--usdm-symbols", "USD-M futures symbols or *; empty records no futures"),
    "usdm_streams": ("ORDERBOOK_USDM_STREAMS", "--usdm-streams", "USD-M stream kinds, e.g. depth@100ms,aggTrade,markPrice@1s,forceOrder"),
    "usdm_ws_url": ("ORDERBOOK_USDM_WS_URL", "--usdm-ws-url", "USD-M WebSocket base URL (without /public or /market)"),
    "usdm_rest_url": ("ORDERBOOK_USDM_REST_URL", "--usdm-rest-url", "USD-M REST base URL"),
    "coinm_symbols": ("ORDERBOOK_COINM_SYMBOLS", "--coinm-symbols",
                      "COIN-M futures symbols (e.g. btcusd_perp) or *; empty records no COIN-M"),
    "coinm_streams": ("ORDERBOOK_COINM_STREAMS", "--coinm-streams", "COIN-M stream kinds, e.g. depth@100ms,aggTrade"),
    "coinm_ws_url": ("ORDERBOOK_COINM_WS_URL", "--coinm-ws-url", "COIN-M WebSocket base URL"),
    "coinm_rest_url": ("ORDERBOOK_COINM_REST_URL", "--coinm-rest-url", "COIN-M REST base URL"),
    "subscriptions": (SUBSCRIPTIONS, "--subscriptions", "a TOML file of [[subscription]] tables (instead of the four symbol/stream settings)"),
    "symbols_refresh": ("ORDERBOOK_SYMBOLS_REFRESH_SECONDS", "--symbols-refresh-seconds", "how often * reads exchangeInfo (s)"),
    "buffer": ("ORDERBOOK_BUFFER", "--buffer", "SQLite buffer path"),
    "metrics_host": ("ORDERBOOK_METRICS_HOST", "--metrics-host", "address for the metrics endpoint"),
    "metrics_port": ("ORDERBOOK_METRICS_PORT", "--metrics-port", "port for /metrics (0 any free port, -1 off)"),
    "synchronous": ("ORDERBOOK_SYNCHRONOUS", "--synchronous", "SQLite synchronous level: FULL or NORMAL"),
    "commit_interval": ("ORDERBOOK_COMMIT_INTERVAL_MS", "--commit-interval-ms", "longest wait before a commit (ms)"),
    "queue_size": ("ORDERBOOK_QUEUE_SIZE", "--queue-size", "frames held in memory before spilling to disk"),
    "rotate_after": ("ORDERBOOK_ROTATE_AFTER_S", "--rotate-after-s", "open a replacement connection after this many seconds"),
    "silence_cadences": ("ORDERBOOK_SILENCE_CADENCES", "--silence-cadences",
                         "a clock-driven stream (partial depth) is silent after this many cadences without a message"),
    "silence_min_seconds": ("ORDERBOOK_SILENCE_MIN_SECONDS", "--silence-min-seconds",
                            "... and never before this many seconds"),
    "silence_grace_seconds": ("ORDERBOOK_SILENCE_GRACE_SECONDS", "--silence-grace-seconds",
                              "a stream quiet this long after its symbol's other streams showed it had to speak is silent"),
    "silence_never_seconds": ("ORDERBOOK_SILENCE_NEVER_SECONDS", "--silence-never-seconds",
                              "a stream that delivered nothing this long since its subscription was acknowledged is silent"),
    "rest_weight_share": ("ORDERBOOK_REST_WEIGHT_SHARE", "--rest-weight-share",
                          "share of each market's REST weight budget diff-depth snapshots may use (0-1]"),
    "depth_snapshot_limit": ("ORDERBOOK_DEPTH_SNAPSHOT_LIMIT", "--depth-snapshot-limit",
                             "levels per side of spot REST depth snapshots (1-5000)"),
    "coinm_depth_snapshot_limit": ("ORDERBOOK_COINM_DEPTH_SNAPSHOT_LIMIT", "--coinm-depth-snapshot-limit",
                                   "levels per side of COIN-M REST depth snapshots (5, 10, 20, 50, 100, 500, 1000)"),
    "usdm_depth_snapshot_limit": ("ORDERBOOK_USDM_DEPTH_SNAPSHOT_LIMIT", "--usdm-depth-snapshot-limit",
                                  "levels per side of USD-M REST depth snapshots (5, 10, 20, 50, 100, 500, 1000)"),
    "rebase_seconds": ("ORDERBOOK_REBASE_SECONDS", "--rebase-seconds",
                       "seconds between two REST re-bases of one diff stream (default: planned from the budget)"),
    "open_interest_seconds": ("ORDERBOOK_OPEN_INTEREST_SECONDS", "--open-interest-seconds",
                              "seconds between two open-interest polls of each futures symbol recorded (0: off)"),
}
#: The environment form of what to record; ORDERBOOK_SUBSCRIPTIONS replaces all four.
_ENV_FORM = ("symbols", "streams", "usdm_symbols", "usdm_streams", "coinm_symbols", "coinm_streams")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="orderbook-collector",
        description="Record Binance order-book streams durably into a SQLite buffer.",
        epilog="Each flag overrides the environment variable named in its help.",
    )
    for name, (env, flag, help_text) in _FIELDS.items():
        p.add_argument(flag, dest=name, default=None, help=f"{help_text} [{env}]")
    p.add_argument("--log-level", default=os.environ.get("ORDERBOOK_LOG_LEVEL", "INFO"), help="logging level [ORDERBOOK_LOG_LEVEL]")
    return p


def load(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> tuple[Settings, argparse.Namespace]:
    """Settings from flags, then the environment, then defaults. Raises ConfigError."""
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    raw = {}
    for name, (env, _flag, _help) in _FIELDS.items():
        value = getattr(args, name)
        if value is None:
            value = environ.get(env)
        if value is not None and value != "":
            raw[name] = value
    return _validate(raw), args


def _validate(raw: dict[str, str]) -> Settings:
    kw: dict = {}
    if "subscriptions" in raw:
        both = [_FIELDS[n][0] for n in _ENV_FORM if n in raw]
        if both:
            raise ConfigError(SUBSCRIPTIONS, f"is set together with {', '.join(both)}; "
                              f"describe every subscription in the file, or unset {SUBSCRIPTIONS}.")
        kw["file_subscriptions"] = read_subscriptions(Path(raw["subscriptions"]))
    for name, market, example in (("symbols", Market.SPOT, "btcusdt,ethusdt"), ("usdm_symbols", Market.USDM, "btcusdt"),
                                  ("coinm_symbols", Market.COINM, "btcusd_perp")):
        if name in raw:
            kw[name] = _symbols(raw[name].split(","), _FIELDS[name][0], example, market)
    for name, market in (("streams", Market.SPOT), ("usdm_streams", Market.USDM), ("coinm_streams", Market.COINM)):
        if name in raw:
            kw[name] = _kinds(raw[name].split(","), market, _FIELDS[name][0])
    for name, schemes, example in (
        ("ws_url", ("ws", "wss"), "wss://stream.binance.com:9443"),
        ("rest_url", ("http", "https"), "https://api.binance.com"),
        ("usdm_ws_url", ("ws", "wss"), "wss://fstream.binance.com"),
        ("usdm_rest_url", ("http", "https"), "https://fapi.binance.com"),
        ("coinm_ws_url", ("ws", "wss"), "wss://dstream.binance.com"),
        ("coinm_rest_url", ("http", "https"), "https://dapi.binance.com"),
    ):
        if name in raw:
            kw[name] = _url(raw[name], schemes, _FIELDS[name][0], example)
    if "symbols_refresh" in raw:
        kw["symbols_refresh"] = float(_int(raw["symbols_refresh"], "ORDERBOOK_SYMBOLS_REFRESH_SECONDS", 10, 86_400))
    if "buffer" in raw:
        kw["buffer"] = Path(raw["buffer"])
    kw["buffer"] = _writable(kw.get("buffer", Settings.buffer))
    if "metrics_host" in raw:
        kw["metrics_host"] = raw["metrics_host"]
    if "metrics_port" in raw:
        kw["metrics_port"] = _int(raw["metrics_port"], "ORDERBOOK_METRICS_PORT", -1, 65535)
    if "synchronous" in raw:
        level = raw["synchronous"].upper()
        if level not in ("FULL", "NORMAL"):
            raise ConfigError("ORDERBOOK_SYNCHRONOUS", f"{raw['synchronous']!r} is not FULL or NORMAL; use FULL (the default).")
        kw["synchronous"] = level
    if "commit_interval" in raw:
        kw["commit_interval"] = _int(raw["commit_interval"], "ORDERBOOK_COMMIT_INTERVAL_MS", 1, 1000) / 1000
    if "queue_size" in raw:
        kw["queue_size"] = _int(raw["queue_size"], "ORDERBOOK_QUEUE_SIZE", 10, 10_000_000)
    if "rotate_after" in raw:
        kw["rotate_after"] = float(_int(raw["rotate_after"], "ORDERBOOK_ROTATE_AFTER_S", 10, 86_000))
    kw.update(_rest(raw))
    for name, lo, hi in (("silence_cadences", 2, 10_000), ("silence_min_seconds", 1, 3600),
                         ("silence_grace_seconds", 1, 3600), ("silence_never_seconds", 10, 86_400)):
        if name in raw:
            n = _int(raw[name], _FIELDS[name][0], lo, hi)
            kw[name] = n if name == "silence_cadences" else float(n)
    return Settings(**kw)


def _symbols(items: list[str], setting: str, example: str, market: Market = Market.SPOT) -> list[str]:
    """Symbols as given, or ``["*"]``; each checked (a bad one names ``setting``)."""
    symbols = [s.strip().lower() for s in items if s.strip()]
    if not symbols:
        raise ConfigError(setting, f"no symbol given; set it to e.g. {example}, or * for every trading symbol.")
    if ALL_SYMBOLS in symbols:
        if len(symbols) > 1:
            raise ConfigError(setting, "* already means every trading symbol; give * alone or a list of symbols.")
        return symbols
    build_streams(symbols, [], market, symbols_setting=setting)  # validates the names on this market
    return list(dict.fromkeys(symbols))


def _kinds(items: list[str], market: Market, setting: str) -> list[str]:
    kinds = [k.strip() for k in items if k.strip()]
    if not kinds:
        raise ConfigError(setting, f"no stream kind given; set it to e.g. "
                                   f"{'depth20@100ms' if market is Market.SPOT else 'depth@100ms'}.")
    build_streams([], kinds, market, streams_setting=setting)  # validates the kinds on this market
    return list(dict.fromkeys(kinds))


_FILE_KEYS = {"market", "symbols", "streams"}


def read_subscriptions(path: Path) -> tuple[Subscription, ...]:
    """The ``[[subscription]]`` tables of a TOML file (see docs/configuration.md).

    Raises:
        ConfigError: naming ORDERBOOK_SUBSCRIPTIONS, the file, and the table at fault.
    """
    def bad(why: str) -> ConfigError:
        return ConfigError(SUBSCRIPTIONS, f"{path}: {why}")

    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise bad(f"cannot be read ({exc.strerror or exc}); point it to a readable TOML file.") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise bad(f"is not valid TOML ({exc}); fix the file.") from exc
    tables = doc.get("subscription")
    extra = set(doc) - {"subscription"}
    if extra:
        raise bad(f"unknown key {sorted(extra)[0]!r}; the file holds only [[subscription]] tables.")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise bad("has no [[subscription]] tables; add one with market, symbols and streams.")
    out: list[Subscription] = []
    for i, t in enumerate(tables, 1):
        where = f"subscription {i}"
        unknown = set(t) - _FILE_KEYS
        missing = _FILE_KEYS - set(t)
        if unknown or missing:
            what = f"unknown key {sorted(unknown)[0]!r}" if unknown else f"no {sorted(missing)[0]!r}"
            raise bad(f"{where} has {what}; give market, symbols and streams.")
        try:
            market = Market(t["market"])
        except ValueError:
            raise bad(f"{where}: market {t['market']!r} is not spot, usdm or coinm.") from None
        symbols, kinds = t["symbols"], t["streams"]
        if symbols == ALL_SYMBOLS:
            symbols = [ALL_SYMBOLS]
        if not _strings(symbols) or not _strings(kinds):
            raise bad(f"{where}: symbols and streams must be lists of strings (symbols may be \"*\").")
        try:
            syms = _symbols(symbols, SUBSCRIPTIONS, "[\"btcusd_perp\"]" if market is Market.COINM else "[\"btcusdt\"]", market)
            ks = _kinds(kinds, market, SUBSCRIPTIONS)
        except ConfigError as exc:
            raise bad(f"{where}: {str(exc).removeprefix(SUBSCRIPTIONS + ': ')}") from None
        out.append(Subscription(market, tuple(syms), tuple(ks)))
    return tuple(out)


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _rest(raw: dict[str, str]) -> dict:
    kw: dict = {}
    if "rest_weight_share" in raw:
        try:
            share = float(raw["rest_weight_share"])
        except ValueError:
            share = -1.0
        if not 0 < share <= 1:
            raise ConfigError("ORDERBOOK_REST_WEIGHT_SHARE",
                              f"{raw['rest_weight_share']!r} is not a share; use a number above 0 and at most 1, e.g. 0.5.")
        kw["rest_weight_share"] = share
    if "depth_snapshot_limit" in raw:
        n = _int(raw["depth_snapshot_limit"], "ORDERBOOK_DEPTH_SNAPSHOT_LIMIT", 1, 5000)
        kw["depth_snapshot_limit"] = n
    for name, market in (("usdm_depth_snapshot_limit", Market.USDM), ("coinm_depth_snapshot_limit", Market.COINM)):
        if name in raw:
            env = _FIELDS[name][0]
            n = _int(raw[name], env, 1, 1000)
            if depth_weight(market, n) is None:
                raise ConfigError(env, f"{MARKET_TITLE[market]} depth snapshots do not take limit={n}; use one of "
                                       f"{', '.join(map(str, USDM_DEPTH_LIMITS))}.")
            kw[name] = n
    if "rebase_seconds" in raw:
        kw["rebase_seconds"] = float(_int(raw["rebase_seconds"], "ORDERBOOK_REBASE_SECONDS", 1, 86_400))
    if "open_interest_seconds" in raw:
        kw["open_interest_seconds"] = float(_int(raw["open_interest_seconds"], "ORDERBOOK_OPEN_INTEREST_SECONDS", 0, 86_400))
    return kw


def _url(value: str, schemes: tuple[str, ...], setting: str, example: str) -> str:
    parsed = urlparse(value.strip())
    if parsed.scheme not in schemes or not parsed.hostname:
        raise ConfigError(setting, f"{value!r} is not a {' or '.join(schemes)} URL; use e.g. {example}.")
    try:
        parsed.port
    except ValueError as exc:
        raise ConfigError(setting, f"{value!r} has an invalid port; use e.g. {example}.") from exc
    return value.strip().rstrip("/")


def _int(value: str, setting: str, lo: int, hi: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(setting, f"{value!r} is not a whole number; use one from {lo} to {hi}.") from None
    if not lo <= n <= hi:
        raise ConfigError(setting, f"{n} is out of range; use a number from {lo} to {hi}.")
    return n


def _writable(path: Path) -> Path:
    parent = path.parent if str(path.parent) else Path(".")
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if path.is_dir():
        raise ConfigError("ORDERBOOK_BUFFER", f"{path} is a directory; give a file path such as data/buffer.sqlite3.")
    if not probe.is_dir() or not os.access(probe, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError("ORDERBOOK_BUFFER", f"{path} is not writable; choose a path in a folder you can write to.")
    return path
