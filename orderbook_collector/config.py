"""Collector settings: environment variables, mirrored by command-line flags.

Every setting is validated before anything starts; a bad one raises
:class:`~.errors.ConfigError` whose message is one sentence naming the setting
and the fix. The CLI prints it and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from orderbook_collector.errors import ConfigError
from orderbook_collector.feed.protocol import MAX_STREAMS_PER_CONNECTION, StreamSpec, build_streams
from orderbook_collector.feed.streams import DEPTH_DEFAULT_LIMIT, USDM_DEPTH_LIMITS, Market, depth_weight

#: Binance allows 1024 streams per spot connection.


@dataclass(frozen=True)
class Settings:
    symbols: list[str] = field(default_factory=lambda: ["btcusdt"])
    streams: list[str] = field(default_factory=lambda: ["depth20@100ms"])
    ws_url: str = "wss://stream.binance.com:9443"
    rest_url: str = "https://api.binance.com"
    buffer: Path = Path("data/buffer.sqlite3")
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
    streams_per_connection: int = MAX_STREAMS_PER_CONNECTION
    # REST depth snapshots for diff-depth sync (connection/rest.py): the share of each market's
    # weight budget they may use, their depth limit, requests in flight per market; the budget
    # (default Binance's, per market) and its window are overridable for tests.
    rest_weight_share: float = 0.5
    depth_snapshot_limit: int = DEPTH_DEFAULT_LIMIT[Market.SPOT]
    usdm_depth_snapshot_limit: int = DEPTH_DEFAULT_LIMIT[Market.USDM]
    rest_concurrency: int = 4
    rest_weight_budget: dict | None = None
    rest_weight_window: float = 60.0

    def snapshot_limit(self, market: Market) -> int:
        return self.depth_snapshot_limit if market is Market.SPOT else self.usdm_depth_snapshot_limit

    def rest_base_url(self, market: Market) -> str:
        # usdm_rest_url (ORDERBOOK_USDM_REST_URL) comes with the USD-M settings
        return self.rest_url if market is Market.SPOT else getattr(self, "usdm_rest_url", "https://fapi.binance.com")

    def stream_specs(self) -> list[StreamSpec]:
        return build_streams(self.symbols, self.streams)

    def connection_groups(self) -> list[list[StreamSpec]]:
        specs = self.stream_specs()
        n = self.streams_per_connection
        return [specs[i : i + n] for i in range(0, len(specs), n)]


# setting name -> (env var, flag, type, help)
_FIELDS = {
    "symbols": ("ORDERBOOK_SYMBOLS", "--symbols", "comma-separated symbols, e.g. btcusdt,ethusdt"),
    "streams": ("ORDERBOOK_STREAMS", "--streams", "comma-separated stream kinds, e.g. depth20@100ms"),
    "ws_url": ("ORDERBOOK_WS_URL", "--ws-url", "WebSocket base URL"),
    "rest_url": ("ORDERBOOK_REST_URL", "--rest-url", "REST base URL"),
    "buffer": ("ORDERBOOK_BUFFER", "--buffer", "SQLite buffer path"),
    "metrics_host": ("ORDERBOOK_METRICS_HOST", "--metrics-host", "address for the metrics endpoint"),
    "metrics_port": ("ORDERBOOK_METRICS_PORT", "--metrics-port", "port for /metrics (0 any free port, -1 off)"),
    "synchronous": ("ORDERBOOK_SYNCHRONOUS", "--synchronous", "SQLite synchronous level: FULL or NORMAL"),
    "commit_interval": ("ORDERBOOK_COMMIT_INTERVAL_MS", "--commit-interval-ms", "longest wait before a commit (ms)"),
    "queue_size": ("ORDERBOOK_QUEUE_SIZE", "--queue-size", "frames held in memory before spilling to disk"),
    "rotate_after": ("ORDERBOOK_ROTATE_AFTER_S", "--rotate-after-s", "open a replacement connection after this many seconds"),
    "rest_weight_share": ("ORDERBOOK_REST_WEIGHT_SHARE", "--rest-weight-share",
                          "share of each market's REST weight budget diff-depth snapshots may use (0-1]"),
    "depth_snapshot_limit": ("ORDERBOOK_DEPTH_SNAPSHOT_LIMIT", "--depth-snapshot-limit",
                             "levels per side of spot REST depth snapshots (1-5000)"),
    "usdm_depth_snapshot_limit": ("ORDERBOOK_USDM_DEPTH_SNAPSHOT_LIMIT", "--usdm-depth-snapshot-limit",
                                  "levels per side of USD-M REST depth snapshots (5, 10, 20, 50, 100, 500, 1000)"),
}


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
    if "symbols" in raw:
        kw["symbols"] = [s for s in raw["symbols"].split(",") if s.strip()]
        if not kw["symbols"]:
            raise ConfigError("ORDERBOOK_SYMBOLS", "no symbol given; set it to e.g. btcusdt,ethusdt.")
    if "streams" in raw:
        kw["streams"] = [s.strip() for s in raw["streams"].split(",") if s.strip()]
        if not kw["streams"]:
            raise ConfigError("ORDERBOOK_STREAMS", "no stream kind given; set it to e.g. depth20@100ms.")
    if "ws_url" in raw:
        kw["ws_url"] = _url(raw["ws_url"], ("ws", "wss"), "ORDERBOOK_WS_URL", "wss://stream.binance.com:9443")
    if "rest_url" in raw:
        kw["rest_url"] = _url(raw["rest_url"], ("http", "https"), "ORDERBOOK_REST_URL", "https://api.binance.com")
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
    settings = Settings(**kw)
    settings.stream_specs()  # validates symbols and kinds
    return settings


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
    if "usdm_depth_snapshot_limit" in raw:
        n = _int(raw["usdm_depth_snapshot_limit"], "ORDERBOOK_USDM_DEPTH_SNAPSHOT_LIMIT", 1, 1000)
        if depth_weight(Market.USDM, n) is None:
            raise ConfigError("ORDERBOOK_USDM_DEPTH_SNAPSHOT_LIMIT",
                              f"USD-M depth snapshots do not take limit={n}; use one of "
                              f"{', '.join(map(str, USDM_DEPTH_LIMITS))}.")
        kw["usdm_depth_snapshot_limit"] = n
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
