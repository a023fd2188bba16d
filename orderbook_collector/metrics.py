"""Prometheus text metrics, served on a local port.

Counters and gauges are plain attributes updated from the event loop and the
writer thread; reads of ints are atomic under the GIL and a scrape that sees a
value one batch old is fine. The HTTP endpoint is a tiny asyncio server so it
needs no extra dependency and never blocks the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict

log = logging.getLogger(__name__)

# Commit latency buckets in seconds.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


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

    def lines(self, name: str) -> list[str]:
        out, acc = [], 0
        for bound, n in zip(_BUCKETS, self.counts):
            acc += n
            out.append(f'{name}_bucket{{le="{bound}"}} {acc}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        out.append(f"{name}_sum {self.sum:.6f}")
        out.append(f"{name}_count {self.count}")
        return out


class Metrics:
    """Everything the collector exposes. Names are part of the interface."""

    def __init__(self) -> None:
        self.messages = 0  # stored in the buffer
        self.frames = 0  # received
        self.duplicates = 0
        self.quarantined: dict[str, int] = defaultdict(int)  # by reason class
        self.reconnects = 0
        self.rotations = 0
        self.lost = 0  # refused with disk and memory full: never acknowledged
        self.wide_values = 0  # values with more than 15 significant digits
        self.queue_depth = 0
        self.queue_capacity = 1
        self.spill_bytes = 0
        self.spilled_items = 0
        self.writer_errors: dict[str, int] = defaultdict(int)
        self.writer_degraded = 0  # 1 while writes fail (disk full, locked)
        self.loop_lag = Histogram()
        self.loop_lag_samples: list[float] | None = None  # set to a list to keep raw samples (benchmarks)
        self.commit_latency = Histogram()
        self.last_message_us: dict[str, int] = {}
        self.connected = 0

    def render(self) -> str:
        now_us = time.time_ns() // 1000
        lines = [
            "# HELP orderbook_messages_total Messages committed to the buffer.",
            "# TYPE orderbook_messages_total counter",
            f"orderbook_messages_total {self.messages}",
            "# TYPE orderbook_frames_received_total counter",
            f"orderbook_frames_received_total {self.frames}",
            "# HELP orderbook_duplicates_total Messages dropped by the dedup key.",
            "# TYPE orderbook_duplicates_total counter",
            f"orderbook_duplicates_total {self.duplicates}",
            "# HELP orderbook_quarantined_total Frames quarantined, by reason.",
            "# TYPE orderbook_quarantined_total counter",
        ]
        lines += [f'orderbook_quarantined_total{{reason="{r}"}} {n}' for r, n in sorted(self.quarantined.items())]
        lines += [
            "# TYPE orderbook_reconnects_total counter",
            f"orderbook_reconnects_total {self.reconnects}",
            "# TYPE orderbook_rotations_total counter",
            f"orderbook_rotations_total {self.rotations}",
            "# HELP orderbook_lost_total Frames refused while disk and memory were full (never acknowledged).",
            "# TYPE orderbook_lost_total counter",
            f"orderbook_lost_total {self.lost}",
            "# TYPE orderbook_wide_values_total counter",
            f"orderbook_wide_values_total {self.wide_values}",
            "# TYPE orderbook_queue_depth gauge",
            f"orderbook_queue_depth {self.queue_depth}",
            "# TYPE orderbook_queue_utilization gauge",
            f"orderbook_queue_utilization {self.queue_depth / max(self.queue_capacity, 1):.4f}",
            "# TYPE orderbook_spill_bytes gauge",
            f"orderbook_spill_bytes {self.spill_bytes}",
            "# TYPE orderbook_spilled_items_total counter",
            f"orderbook_spilled_items_total {self.spilled_items}",
            "# TYPE orderbook_writer_degraded gauge",
            f"orderbook_writer_degraded {self.writer_degraded}",
            "# TYPE orderbook_writer_errors_total counter",
        ]
        lines += [f'orderbook_writer_errors_total{{kind="{k}"}} {n}' for k, n in sorted(self.writer_errors.items())]
        lines += ["# TYPE orderbook_commit_latency_seconds histogram"]
        lines += self.commit_latency.lines("orderbook_commit_latency_seconds")
        lines += ["# TYPE orderbook_event_loop_lag_seconds histogram"]
        lines += self.loop_lag.lines("orderbook_event_loop_lag_seconds")
        lines += [
            "# TYPE orderbook_connected gauge",
            f"orderbook_connected {self.connected}",
            "# HELP orderbook_last_message_age_seconds Time since the last frame of each stream.",
            "# TYPE orderbook_last_message_age_seconds gauge",
        ]
        lines += [
            f'orderbook_last_message_age_seconds{{stream="{s}"}} {(now_us - t) / 1e6:.3f}'
            for s, t in sorted(self.last_message_us.items())
        ]
        return "\n".join(lines) + "\n"


async def serve(metrics: Metrics, host: str, port: int) -> asyncio.Server:
    """Serve ``GET /metrics`` (any path, really) as Prometheus text."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            body = metrics.render().encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)
