"""Prometheus metrics, served on a local port by ``prometheus_client``.

Counters and gauges are plain attributes updated from the event loop and the
writer thread; reads of ints are atomic under the GIL and a scrape that sees a
value one batch old is fine. Plain attributes keep the per-frame cost at one
integer add; :class:`Exposition` turns them into metric families at scrape time
(``prometheus_client`` writes the text format), next to the process metrics.

Every labelled family has all its series from the start, so an alert such as
"last message age > 30 s" also fires for a stream that never delivered anything:
``orderbook_last_message_age_seconds`` counts from the collector's start until a
stream's first frame. The archive's progress is read from the buffer's export ledger
(read-only), so one scrape target tells whether the archive keeps up.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable
from enum import Enum
from pathlib import Path

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from orderbook_core.buffer.db import connect_readonly
from orderbook_core.buffer import ledger
from orderbook_core.errors import QuarantineReason
from orderbook_core.streams import Market

MARKETS = tuple(m.value for m in Market)

log = logging.getLogger(__name__)

# Commit latency and event-loop lag buckets in seconds.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
HOUR_S = 3600

class WriteFailure(str, Enum):
    """Why a buffer write failed (``writer.thread.classify_sqlite_error``): the metric's label."""

    LOCKED = "locked"
    DISK_FULL = "disk_full"
    IO = "io"
    OTHER = "other"


#: The label values, every series from the start (a quarantine's label is its stored reason).
QUARANTINE_REASONS = tuple(r.value for r in QuarantineReason)
WRITER_ERROR_KINDS = tuple(k.value for k in WriteFailure)


class Histogram:
    def __init__(self) -> None:
        self.counts = [0] * (len(_BUCKETS) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        i = 0
        while i < len(_BUCKETS) and value > _BUCKETS[i]:
            i += 1
        self.counts[i] += 1
        self.sum += value
        self.count += 1

    def buckets(self) -> list[tuple[str, int]]:
        out, acc = [], 0
        for bound, n in zip(_BUCKETS, self.counts):
            acc += n
            out.append((str(bound), acc))
        out.append(("+Inf", self.count))
        return out


class Metrics:
    """Everything the collector exposes. Names are part of the interface.

    Args:
        streams: the stream names recorded; each gets its age series at once.
    """

    def __init__(self, streams: list[str] = ()) -> None:
        self.started_us = time.time_ns() // 1000
        self.messages = 0  # stored in the buffer
        self.frames = 0  # received
        self.duplicates = 0
        self.quarantined: dict[str, int] = {r: 0 for r in QUARANTINE_REASONS}
        self.reconnects = 0  # connections opened again after one was lost
        self.connect_failures = 0  # attempts to connect that failed
        self.rotations = 0
        self.duplicate_sessions = 0  # sessions that dropped nearly everything as duplicates
        self.lost = 0  # refused with disk and memory full: never acknowledged
        self.wide_values = 0  # values with more than 15 significant digits
        self.queue_depth = 0
        self.queue_capacity = 1
        # The spill's bytes not yet replayed, asked at scrape time (the writer sets it to its spill's
        # count): a value the writer thread copied would stay stale exactly while the spill grows,
        # since that thread is then stuck retrying a commit (another process holding the write lock).
        self.spill_bytes: Callable[[], int] = lambda: 0
        self.spilled_items = 0
        self.writer_errors: dict[str, int] = defaultdict(int, {k: 0 for k in WRITER_ERROR_KINDS})
        self.writer_degraded = 0  # 1 while writes fail (disk full, locked)
        self.loop_lag = Histogram()
        self.loop_lag_samples: list[float] | None = None  # set to a list to keep raw samples (benchmarks)
        self.commit_latency = Histogram()
        self.last_message_us: dict[str, int] = {}
        self.connected = 0
        # Diff-depth sync and trade ids (writer thread): depth_sync rows by event, trade_gap rows.
        self.continuity: dict[str, int] = {"break": 0, "synced": 0, "gap": 0}
        self.rest_snapshots_stored = 0
        # Silence (event loop, feed/silence.py): streams silent now, silences begun by reason
        # (the collector gives every reason its series at start).
        self.silent_streams = 0
        self.silent_events: dict[str, int] = defaultdict(int)
        # REST (event loop), per market: snapshots fetched, weight spent, 429 and 418 answers received.
        self.rest_snapshots: dict[str, int] = defaultdict(int)
        self.rest_weight: dict[str, int] = defaultdict(int)
        self.rest_rate_limited: dict[str, int] = defaultdict(int)
        self.rest_banned: dict[str, int] = defaultdict(int)
        self.rest_errors: dict[str, int] = defaultdict(int)
        self.rest_refused: dict[str, int] = defaultdict(int)  # answers the kernel refused (quarantined)
        self.resync_pending: dict[str, int] = defaultdict(int)
        # Open interest (event loop, connection/open_interest.py), per market: answers polled, polls failed.
        self.open_interest_polls: dict[str, int] = defaultdict(int)
        self.open_interest_failures: dict[str, int] = defaultdict(int)
        self.add_streams(streams)

    def add_streams(self, streams) -> None:
        """Give each stream its age series now: until its first frame it ages from the start."""
        for name in streams:
            self.last_message_us.setdefault(name, self.started_us)


class Exposition:
    """A ``prometheus_client`` collector reading :class:`Metrics` (and the buffer) at scrape time.

    Args:
        metrics: the collector's counters.
        buffer: the SQLite buffer, opened read-only per scrape for the archive's progress.
    """

    def __init__(self, metrics: Metrics, buffer: str | Path | None = None) -> None:
        self.metrics = metrics
        self.buffer = Path(buffer) if buffer is not None else None

    def registry(self) -> CollectorRegistry:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        ProcessCollector(registry=registry)
        return registry

    def collect(self):
        m = self.metrics
        now_us = time.time_ns() // 1000

        def counter(name: str, doc: str, value: float):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], value)
            return c

        def gauge(name: str, doc: str, value: float):
            return GaugeMetricFamily(name, doc, value=value)

        yield counter("orderbook_messages", "Messages committed to the buffer.", m.messages)
        yield counter("orderbook_frames_received", "WebSocket frames received.", m.frames)
        yield counter("orderbook_duplicates", "Messages dropped by the dedup key.", m.duplicates)
        q = CounterMetricFamily("orderbook_quarantined", "Frames and REST answers quarantined, by reason.", labels=["reason"])
        for reason, n in sorted(m.quarantined.items()):
            q.add_metric([reason], n)
        yield q
        yield counter("orderbook_reconnects", "Connections opened again after a connection was lost.", m.reconnects)
        yield counter("orderbook_connect_failures", "Connection attempts that failed (each is retried with backoff).",
                      m.connect_failures)
        yield counter("orderbook_rotations", "Make-before-break rotations (24 h cut, serverShutdown).", m.rotations)
        yield counter("orderbook_duplicate_sessions",
                      "Sessions that dropped nearly all their messages as duplicates (a feed replaying old ids).",
                      m.duplicate_sessions)
        yield counter("orderbook_lost", "Frames refused while disk and memory were full (never acknowledged).", m.lost)
        yield counter("orderbook_wide_values", "Prices or quantities with more than 15 significant digits.", m.wide_values)
        yield gauge("orderbook_queue_depth", "Items waiting for the writer thread.", m.queue_depth)
        yield gauge("orderbook_queue_utilization", "Queue depth over capacity.", m.queue_depth / max(m.queue_capacity, 1))
        yield gauge("orderbook_spill_bytes", "Bytes spilled to disk and not yet replayed.", m.spill_bytes())
        yield counter("orderbook_spilled_items", "Items that went through the spill files.", m.spilled_items)
        yield gauge("orderbook_writer_degraded", "1 while buffer writes fail (disk full, locked).", m.writer_degraded)
        e = CounterMetricFamily("orderbook_writer_errors", "Failed buffer commits, by kind.", labels=["kind"])
        for kind, n in sorted(m.writer_errors.items()):
            e.add_metric([kind], n)
        yield e
        yield _histogram("orderbook_commit_latency_seconds", "Time to commit one batch.", m.commit_latency)
        yield _histogram("orderbook_event_loop_lag_seconds", "Event-loop scheduling delay.", m.loop_lag)
        yield gauge("orderbook_connected", "Open WebSocket connections.", m.connected)
        age = GaugeMetricFamily("orderbook_last_message_age_seconds",
                                "Time since the last frame of each stream (since start until its first one).",
                                labels=["stream"])
        for stream, t in sorted(m.last_message_us.items()):
            age.add_metric([stream], round((now_us - t) / 1e6, 3))
        yield age
        yield from self._continuity()
        yield from self._archive(now_us)

    def _continuity(self):
        m = self.metrics
        c = CounterMetricFamily("orderbook_depth_sync", "Diff-depth sync changes stored (break, synced).",
                                labels=["event"])
        for event in ("break", "synced"):
            c.add_metric([event], m.continuity[event])
        yield c
        yield CounterMetricFamily("orderbook_trade_gaps", "Trade or aggTrade id gaps recorded.",
                                  value=m.continuity["gap"])
        yield GaugeMetricFamily("orderbook_silent_streams",
                                "Subscriptions silent now: acknowledged, yet nothing where they had to speak.",
                                value=m.silent_streams)
        s = CounterMetricFamily("orderbook_silent_events",
                                "Silences begun (each is a silence row in the buffer), by reason.", labels=["reason"])
        for reason, n in sorted(m.silent_events.items()):
            s.add_metric([reason], n)
        yield s
        yield CounterMetricFamily("orderbook_rest_snapshots_stored", "REST depth snapshots stored in the buffer.",
                                  value=m.rest_snapshots_stored)
        for name, doc, values in (
            ("orderbook_rest_snapshots", "REST depth snapshots fetched, by market.", m.rest_snapshots),
            ("orderbook_rest_weight", "REST request weight spent, by market.", m.rest_weight),
            ("orderbook_rest_rate_limited", "REST answers 429 (each pauses the market for its Retry-After), by market.",
             m.rest_rate_limited),
            ("orderbook_rest_banned", "REST answers 418, the IP banned (no request of the market until its "
             "Retry-After), by market.", m.rest_banned),
            ("orderbook_rest_errors", "REST requests that failed otherwise (retried), by market.", m.rest_errors),
            ("orderbook_rest_refused", "REST depth snapshots refused by validation (quarantined, asked again), by market.",
             m.rest_refused),
            ("orderbook_open_interest_polls", "Open-interest answers polled, by market.", m.open_interest_polls),
            ("orderbook_open_interest_failures", "Open-interest polls failed (each begins or extends a silence), by market.",
             m.open_interest_failures),
        ):
            f = CounterMetricFamily(name, doc, labels=["market"])
            for market in MARKETS:
                f.add_metric([market], values.get(market, 0))
            yield f
        g = GaugeMetricFamily("orderbook_resync_pending", "Diff streams waiting for a REST snapshot, by market.",
                              labels=["market"])
        for market in MARKETS:
            g.add_metric([market], m.resync_pending.get(market, 0))
        yield g

    def _archive(self, now_us: int):
        newest, oldest_waiting = _archive_progress(self.buffer) if self.buffer else (None, None)
        yield GaugeMetricFamily(
            "orderbook_archive_newest_hour_timestamp_seconds",
            "Start of the newest hour with an archived part (0 before the first).",
            value=(newest or 0) / 1e6,
        )
        # Behind = the end of the newest archived hour; before any, the oldest buffered hour's end.
        since = newest if newest is not None else oldest_waiting
        lag = 0.0 if since is None else max(now_us / 1e6 - (since / 1e6 + HOUR_S), 0.0)
        yield GaugeMetricFamily(
            "orderbook_archive_lag_seconds",
            "Seconds since the end of the newest archived hour (or of the oldest buffered hour before any).",
            value=round(lag, 3),
        )


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=h.buckets(), sum_value=h.sum)


def _archive_progress(path: Path) -> tuple[int | None, int | None]:
    """(newest archived hour, oldest buffered hour) in µs, read-only; (None, None) if unreadable."""
    if not path.exists():
        return None, None
    try:
        conn = connect_readonly(path, timeout=0.5)
        try:
            newest, oldest = ledger.progress(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:  # a scrape must never fail because the archive side is busy
        log.debug("archive progress unavailable: %s", exc)
        return None, None
    return newest, oldest


def render(metrics: Metrics, buffer: str | Path | None = None) -> bytes:
    """The Prometheus text exposition of everything (process metrics included)."""
    return generate_latest(Exposition(metrics, buffer).registry())


async def serve(metrics: Metrics, host: str, port: int, buffer: str | Path | None = None) -> asyncio.Server:
    """Serve ``GET /metrics`` (any path, really) as Prometheus text.

    Raises:
        OSError: the address cannot be bound (taken port, unknown host).
    """
    registry = Exposition(metrics, buffer).registry()
    loop = asyncio.get_running_loop()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            # Off the loop: the scrape reads /proc and the buffer.
            body = await loop.run_in_executor(None, generate_latest, registry)
            writer.write(
                f"HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE_LATEST}\r\n".encode()
                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)
