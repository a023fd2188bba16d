"""The collector against a receive-only ``websockets`` client on the same feed, in the same run.

Issue 12's measure. A feed server (``benchmarks/feed.py``, its own process) serves the
same fixed frames over a real loopback WebSocket to each connection. For each feed
(``depth20`` alone; the ``mix``: 40 % diff depth, 30 % depth20, 20 % trades, 10 %
bookTicker by count) the script alternates rounds of

  1. a receive-only client: ``websockets`` with the collector's connection options, that
     only counts frames (first frame to last frame);
  2. the real collector (receive, stamp, queue, decode, validate, commit with
     ``synchronous=FULL``): first frame received to last message committed;

and prints each one's median msg/s and the median of the rounds' ratios (target >= 0.34,
stretch 0.5), and the CPU time each spends a message (process time over the run: on a
shared machine the steadier figure).

Transport ceilings (issue 22), when ``picows`` (and ``uvloop``) can be imported (the
product's venv has neither; the script says so in one line and runs as before): each
round also runs receive-only clients on the same feed, counted the same way (first frame to
last frame, the collector's ping, size and timeout settings):

  * ``picows``: a bare ``WSListener`` that takes each frame's payload as ``bytes`` (what a
    recorder must keep) and counts it, on the asyncio loop;
  * ``picows+uvloop``: the same on uvloop's loop;
  * ``picows.websockets``: picows's ``websockets``-compatible ``connect`` (``async for``
    over str messages, the collector's very options): what a drop-in move would get.

``--collector-transport picows.websockets`` (or ``picows.websockets+uvloop``) runs the
collector itself on that drop-in (``benchmarks/picows_swap.py`` swaps the names its
connection modules take from ``websockets``; the product is unchanged): what moving the
product would gain on this feed.

Each prints msg/s, its ratio to the ``websockets`` client of the same round, and the
collector's ratio to it. The feed process's CPU share during each client run is printed
too: near 100 % of a core, the feed (not the client) is the limit of that figure. Every
collector run is then checked: every frame stored once in its dataset's table, nothing
quarantined or dropped. A paced run of the mix at 10,000 msg/s measures receive-to-commit
and event-loop lag (p99 targets 100 ms and 10 ms); buffer bytes per message are
measured on the checkpointed buffers of the flat-out runs (target <= 800).

The writer queue holds the whole run, so a flat-out run measures what receiving, decoding
and committing cost, not the spill's disk path (a feed faster than the collector is not a
steady state: the spill exists to survive one, not to sustain it).

The collector records all four kinds here whatever ``ORDERBOOK_STREAMS`` accepts today
(the settings are given their stream specs directly).

Diff-depth sync: the collector's REST URL is the feed server, which answers
``/api/v3/depth`` with a snapshot just before each diff stream's first event. Each diff
stream therefore breaks once at connect and is synced by one snapshot (fetched once, off
the timed path's critical section: it is one request per stream per run), and from then
on the writer runs its continuity trackers on every diff and trade row, as it does in
steady state on the exchange. Each run waits for every diff stream to be synced before it
stops, and the check asserts exactly one 'break' and one 'synced' row per diff stream and
no trade gap: a run that re-synced or fetched snapshots in a loop would fail.

Usage: python benchmarks/ingest_vs_client.py [--count 60000] [--rounds 3] [--paced-seconds 15]
       [--feeds depth20,mix] [--profile-collector FEED]  (run only the collector, e.g. under py-spy)
       [--collector-transport websockets|picows.websockets|picows.websockets+uvloop] [--feed-format-per-frame]
       --rounds 0 runs only the paced run; --paced-seconds 0 skips it
       (picows: PYTHONPATH=$PWD /path/to/venv-with-picows/bin/python benchmarks/ingest_vs_client.py)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from websockets.asyncio.client import connect  # noqa: E402

import feed as feedmod  # noqa: E402
from orderbook_core import buffer  # noqa: E402
from orderbook_collector.config import Settings  # noqa: E402
from orderbook_collector.connection import collector as collector_mod  # noqa: E402
from orderbook_collector.connection import sessions as sessions_mod  # noqa: E402
from orderbook_core.streams import Kind  # noqa: E402

# Transport candidates (issue 22): measured when importable, never used by the product.
try:
    import picows
    from picows.websockets.asyncio.client import connect as picows_ws_connect
except ImportError:
    picows = None
try:
    import uvloop
except ImportError:
    uvloop = None

TABLE_OF = {"D": Kind.DIFF_DEPTH.dataset, "S": Kind.PARTIAL_DEPTH.dataset, "T": Kind.TRADE.dataset,
            "B": Kind.BOOK_TICKER.dataset}


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def start_feed(format_per_frame: bool = False) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, str(Path(__file__).parent / "feed.py")] + (["--format-per-frame"] if format_per_frame else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    port = int(re.search(r"ws://127\.0\.0\.1:(\d+)", proc.stdout.readline()).group(1))
    return proc, port


_runs = iter(range(1, 1 << 30))


def feed_url(port: int, feed: str, count: int, rate: float) -> str:
    """A URL of its own for each run: the feed server serves a run's frames once."""
    return f"ws://127.0.0.1:{port}/{next(_runs)}/{feed}/{count}/{rate:g}"


async def receive_only(port: int, feed: str, count: int, connect=connect) -> tuple[float, float]:
    """(msg/s, CPU µs a message) of a client that only receives and counts, connected as the collector connects.

    ``connect`` is ``websockets``'s, or picows's ``websockets``-compatible one (same options).
    """
    cpu0 = time.process_time()
    async with connect(
        f"{feed_url(port, feed, count, 0)}/stream?streams={stream_names(feed)}",
        open_timeout=sessions_mod.OPEN_TIMEOUT, close_timeout=sessions_mod.CLOSE_TIMEOUT,
        ping_interval=sessions_mod.PING_INTERVAL, ping_timeout=sessions_mod.PING_TIMEOUT,
        max_size=sessions_mod.WS_MAX_SIZE, max_queue=256, compression=None,
    ) as ws:
        n = 0
        t0 = 0.0
        async for _raw in ws:
            if n == 0:
                t0 = time.perf_counter()
            n += 1
            if n == count:
                break
        return count / (time.perf_counter() - t0), (time.process_time() - cpu0) / count * 1e6


async def warm_feed(port: int, feed: str, count: int) -> None:
    """Have the feed build (and cache) the frames of ``count`` frames of ``feed`` before any timed run:
    its CPU share during a client's run is then the serving alone."""
    async with connect(f"{feed_url(port, feed, count, 0)}/stream?streams={stream_names(feed)}",
                       max_size=sessions_mod.WS_MAX_SIZE, compression=None) as ws:
        await ws.recv()


def stream_names(feed: str) -> str:
    return "/".join(f"{s}@{k}" for s in feedmod.SYMBOLS for k in feedmod.feed_streams(feed))


if picows is not None:

    class _FrameCounter(picows.WSListener):
        """Counts data frames, taking each payload as bytes; resolves ``done`` at the last one."""

        def __init__(self, count: int, done: asyncio.Future) -> None:
            self.count, self.done, self.n, self.t0, self.t1 = count, done, 0, 0.0, 0.0

        def on_ws_frame(self, transport, frame) -> None:
            if frame.msg_type is not picows.WSMsgType.TEXT and frame.msg_type is not picows.WSMsgType.BINARY:
                return  # pongs to our pings (pings are answered by picows itself)
            frame.get_payload_as_bytes()
            self.n += 1
            if self.n == 1:
                self.t0 = time.perf_counter()
            if self.n == self.count:
                self.t1 = time.perf_counter()
                if not self.done.done():
                    self.done.set_result(None)

        def on_ws_disconnected(self, transport) -> None:
            if not self.done.done():
                self.done.set_exception(RuntimeError(f"disconnected after {self.n} of {self.count} frames"))


async def picows_receive_only(port: int, feed: str, count: int) -> tuple[float, float]:
    """(msg/s, CPU µs a message) of a bare picows client: the transport's ceiling on this feed."""
    cpu0 = time.process_time()
    done = asyncio.get_running_loop().create_future()
    transport, listener = await picows.ws_connect(
        lambda: _FrameCounter(count, done), f"{feed_url(port, feed, count, 0)}/stream?streams={stream_names(feed)}",
        websocket_handshake_timeout=sessions_mod.OPEN_TIMEOUT, enable_auto_ping=True,
        auto_ping_strategy=picows.WSAutoPingStrategy.PING_PERIODICALLY,
        auto_ping_idle_timeout=sessions_mod.PING_INTERVAL, auto_ping_reply_timeout=sessions_mod.PING_TIMEOUT,
        max_frame_size=sessions_mod.WS_MAX_SIZE,
    )
    await done
    transport.send_close(picows.WSCloseCode.OK)
    transport.disconnect()
    await transport.wait_disconnected()
    return count / (listener.t1 - listener.t0), (time.process_time() - cpu0) / count * 1e6


def transport_clients() -> dict:
    """The receive-only clients measured besides ``websockets``: name -> (runner, coroutine factory)."""
    if picows is None:
        return {}
    clients = {"picows": (asyncio.run, picows_receive_only)}
    if uvloop is not None:
        clients["picows+uvloop"] = (uvloop.run, picows_receive_only)
    clients["picows.websockets"] = (asyncio.run, lambda *a: receive_only(*a, connect=picows_ws_connect))
    return clients


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def with_feed_cpu(pid: int, run, coro) -> tuple[float, float, float]:
    """Run a client; (msg/s, CPU µs a message, the feed process's CPU share over the run)."""
    c0, w0 = cpu_seconds(pid), time.perf_counter()
    rate, cpu = run(coro)
    return rate, cpu, (cpu_seconds(pid) - c0) / (time.perf_counter() - w0)


async def run_collector(port: int, feed: str, count: int, rate: float, path: Path, observe: bool) -> dict:
    """Run the real collector on ``count`` frames of ``feed``; msg/s from first receive to last commit."""
    latencies: list[int] = []
    committed = 0
    first_recv = [None]
    last_commit = [0]
    done = threading.Event()

    def observer(records, commit_us):
        nonlocal committed
        if not records:
            return
        if first_recv[0] is None:
            first_recv[0] = min(r.recv_us for r in records)
        committed += len(records)
        last_commit[0] = commit_us
        if observe:
            latencies.extend(commit_us - r.recv_us for r in records)
        if committed >= count:
            done.set()

    settings = Settings(
        symbols=feedmod.SYMBOLS, streams=feedmod.feed_streams(feed), ws_url=feed_url(port, feed, count, rate),
        buffer=path, metrics_port=-1, stall_cadences=10_000, queue_size=count + 1000,
        rest_url=f"http://127.0.0.1:{port}",
    )
    cpu0 = time.process_time()
    c = collector_mod.Collector(settings, commit_observer=observer)
    c.metrics.loop_lag_samples = []
    task = asyncio.create_task(c.run())
    deadline = time.monotonic() + 60 + count / 1000
    while not done.is_set():
        await asyncio.sleep(0.02)
        if task.done():
            raise RuntimeError(f"collector stopped early: {c.fatal}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"collector committed {committed} of {count} frames before the deadline")
    cpu = time.process_time() - cpu0
    # The snapshots' rows are part of the run's record; they are not on the timed path.
    diff_streams = len(feedmod.SYMBOLS) if "D" in feedmod.FEEDS[feed] else 0
    while c.metrics.continuity["synced"] < diff_streams:
        await asyncio.sleep(0.02)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{c.metrics.continuity['synced']} of {diff_streams} diff streams synced by the deadline")
    c.stop("benchmark done")
    await task
    q = dict(c.metrics.quarantined)
    return {
        "rate": count / ((last_commit[0] - first_recv[0]) / 1e6),
        "cpu_us": cpu / count * 1e6,
        "spilled": c.metrics.spilled_items,
        "quarantined": {k: v for k, v in q.items() if v},
        "lat_p50_ms": pct(latencies, 50) / 1000,
        "lat_p99_ms": pct(latencies, 99) / 1000,
        "lag_p99_ms": pct(c.metrics.loop_lag_samples, 99) * 1000,
        "lag_max_ms": max(c.metrics.loop_lag_samples or [0]) * 1000,
    }


def check_buffer(path: Path, feed: str, count: int) -> int:
    """Every frame stored once in its table, nothing quarantined or dropped; returns bytes a message."""
    expected = Counter(TABLE_OF[feedmod.FEEDS[feed][n % len(feedmod.FEEDS[feed])]] for n in range(count))
    conn = sqlite3.connect(path)
    try:
        for table, n in expected.items():
            got = conn.execute(f"SELECT count(*), count(DISTINCT seq) FROM {table}").fetchone()
            if got != (n, n):
                raise AssertionError(f"{table}: {got} rows (distinct seqs) stored, {n} sent")
        for table in ("quarantine", "dropped", "trade_gap"):
            bad = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            if bad:
                raise AssertionError(f"{bad} rows in {table}")
        # Each diff stream: one break at connect, one snapshot, synced once, never broken again.
        diff_streams = len(feedmod.SYMBOLS) if "D" in feedmod.FEEDS[feed] else 0
        sync = Counter(conn.execute("SELECT event || ':' || reason FROM depth_sync").fetchall())
        want = Counter({("break:connect",): diff_streams, ("synced:snapshot",): diff_streams}) if diff_streams else Counter()
        snaps = conn.execute("SELECT count(*) FROM depth_rest_snapshot").fetchone()[0]
        if sync != want or snaps != diff_streams:
            raise AssertionError(f"depth_sync {dict(sync)} and {snaps} REST snapshots, want {dict(want)} and {diff_streams}")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # count the database, not a transient WAL
    finally:
        conn.close()
    return os.path.getsize(path) // count


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--count", type=int, default=60_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--feeds", default="depth20,mix")
    p.add_argument("--paced-rate", type=float, default=10_000)
    p.add_argument("--paced-seconds", type=float, default=15)
    p.add_argument("--profile-collector", metavar="FEED", help="only run the collector flat out on FEED, once")
    p.add_argument("--collector-transport", default="websockets",
                   choices=["websockets", "picows.websockets", "picows.websockets+uvloop"],
                   help="the collector's WebSocket client for this run (picows: benchmark only)")
    p.add_argument("--feed-format-per-frame", action="store_true",
                   help="the feed formats frames as it sends them, as before issue 22 (a slower baseline client)")
    args = p.parse_args()
    collector_loop = asyncio.run
    if args.collector_transport != "websockets":
        if picows is None or (args.collector_transport.endswith("+uvloop") and uvloop is None):
            p.error(f"--collector-transport {args.collector_transport} needs picows (and uvloop) importable")
        import picows_swap  # this process only: the product still imports websockets

        picows_swap.swap()
        if args.collector_transport.endswith("+uvloop"):
            collector_loop = uvloop.run
    proc, port = start_feed(args.feed_format_per_frame)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            if args.profile_collector:
                r = collector_loop(run_collector(port, args.profile_collector, args.count, 0, work / "p.sqlite3", False))
                print(f"collector {args.profile_collector}: {r['rate']:,.0f} msg/s, {r['cpu_us']:.1f} CPU µs a message")
                return
            extra = transport_clients()
            if not extra:
                print("picows not importable here (the product's venv has none): only the websockets client is measured")
            elif uvloop is None:
                print("uvloop not importable here: picows is measured on the asyncio loop only")
            for feed in args.feeds.split(",") if args.rounds else ():
                client, coll, ratios, cpu_c, cpu_k, sizes, feed_c = [], [], [], [], [], [], []
                ext = {name: {"rate": [], "cpu": [], "vs_ws": [], "coll_vs": [], "feed": []} for name in extra}
                asyncio.run(warm_feed(port, feed, args.count))
                for i in range(args.rounds):
                    rate, cpu, fshare = with_feed_cpu(proc.pid, asyncio.run, receive_only(port, feed, args.count))
                    client.append(rate)
                    cpu_c.append(cpu)
                    feed_c.append(fshare)
                    round_ext = {}
                    for name, (run, factory) in extra.items():
                        round_ext[name] = with_feed_cpu(proc.pid, run, factory(port, feed, args.count))
                    path = work / f"{feed}-{i}.sqlite3"
                    r = collector_loop(run_collector(port, feed, args.count, 0, path, False))
                    coll.append(r["rate"])
                    cpu_k.append(r["cpu_us"])
                    ratios.append(r["rate"] / rate)
                    sizes.append(check_buffer(path, feed, args.count))
                    print(f"  {feed} round {i + 1}: client {rate:,.0f} msg/s ({cpu:.1f} CPU µs/msg, feed {fshare:.0%}), "
                          f"collector {r['rate']:,.0f} msg/s ({r['cpu_us']:.1f} CPU µs/msg): {ratios[-1]:.3f}", flush=True)
                    for name, (x_rate, x_cpu, x_feed) in round_ext.items():
                        e = ext[name]
                        e["rate"].append(x_rate)
                        e["cpu"].append(x_cpu)
                        e["feed"].append(x_feed)
                        e["vs_ws"].append(x_rate / rate)
                        e["coll_vs"].append(r["rate"] / x_rate)
                        print(f"    {name:18} {x_rate:,.0f} msg/s ({x_cpu:.1f} CPU µs/msg, feed {x_feed:.0%}): "
                              f"{x_rate / rate:.2f}x websockets; collector {r['rate'] / x_rate:.3f} of it", flush=True)
                    path.unlink()
                c_med, k_med = statistics.median(client), statistics.median(coll)
                cc, ck = statistics.median(cpu_c), statistics.median(cpu_k)
                rows += [
                    (f"{feed}: receive-only client (feed CPU {statistics.median(feed_c):.0%})", "-", f"{c_med:,.0f} msg/s", "", ""),
                    (f"{feed}: collector, committed", "-", f"{k_med:,.0f} msg/s", f"{c_med:,.0f}", f"{k_med / c_med:.3f}"),
                    (f"{feed}: share of receive-only (per round)", ">= 0.34", f"{statistics.median(ratios):.3f}",
                     "", " ".join(f"{x:.2f}" for x in ratios)),
                    (f"{feed}: CPU µs a message, client/collector", "-", f"{cc:.1f} / {ck:.1f}", "", f"{cc / ck:.3f}"),
                    (f"{feed}: buffer bytes per message", "<= 800" if feed == "depth20" else "-", f"{max(sizes):,}", "", ""),
                ]
                for name, e in ext.items():
                    med = statistics.median
                    rows += [
                        (f"{feed}: {name} receive-only (feed CPU {med(e['feed']):.0%})", "-", f"{med(e['rate']):,.0f} msg/s",
                         f"{c_med:,.0f}", f"{med(e['rate']) / c_med:.3f}"),
                        (f"{feed}: {name} / websockets (per round)", "-", f"{med(e['vs_ws']):.2f}x", "",
                         " ".join(f"{x:.2f}" for x in e["vs_ws"])),
                        (f"{feed}: collector / {name} (per round)", "-", f"{med(e['coll_vs']):.3f}", "",
                         " ".join(f"{x:.2f}" for x in e["coll_vs"])),
                        (f"{feed}: {name} CPU µs a message", "-", f"{med(e['cpu']):.1f}", f"{cc:.1f}", f"{med(e['cpu']) / cc:.3f}"),
                    ]
            if args.paced_seconds:
                n_paced = int(args.paced_rate * args.paced_seconds)
                paced = collector_loop(run_collector(port, "mix", n_paced, args.paced_rate, work / "paced.sqlite3", True))
                check_buffer(work / "paced.sqlite3", "mix", n_paced)
                rate = f"{args.paced_rate:,.0f}/s mix"
                rows += [
                    (f"receive-to-commit p50 @ {rate}", "-", f"{paced['lat_p50_ms']:.1f} ms", "", ""),
                    (f"receive-to-commit p99 @ {rate}", "<= 100 ms", f"{paced['lat_p99_ms']:.1f} ms", "", ""),
                    (f"event-loop lag p99 @ {rate}", "<= 10 ms", f"{paced['lag_p99_ms']:.1f} ms", "", ""),
                    (f"event-loop lag max @ {rate}", "-", f"{paced['lag_max_ms']:.1f} ms", "", ""),
                    (f"frames spilled @ {rate}", "-", f"{paced['spilled']:,}", "", ""),
                ]
    finally:
        proc.kill()
    load = os.getloadavg()
    print(f"\n{args.rounds} rounds of {args.count:,} frames, medians; collector on {args.collector_transport}; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
          f"on {os.cpu_count()} CPUs")
    print(f"{'figure':58} {'target':>9} {'measured':>16} {'baseline':>12} {'ratio':>6}")
    for r in rows:
        print(f"{r[0]:58} {r[1]:>9} {r[2]:>16} {r[3]:>12} {r[4]:>6}")


if __name__ == "__main__":
    main()
