"""The universe on one host (issue 22): a soak at Binance's universe rates while ``archive_hour`` runs.

Three kinds of process, all started by this script on this machine:

* the **feed** (``--serve``): a hand-framed RFC 6455 server on loopback, as ``feed.py``, that
  serves whatever streams each connection names in its URL or SUBSCRIBEs (answering
  ``{"result":null,"id":N}``), spot on ``/spot``, USD-M on ``/usdm`` (the collector's ``/public``
  route), and the REST depth snapshots of both markets. It paces every stream at the same rate,
  ``rate / streams`` frames a second, in 10 ms ticks, ``--burst``× during the burst minute, and
  stops sending at the soak's end. Ids are consecutive per stream (diff ``U`` = previous ``u`` + 1,
  USD-M ``pu`` = previous ``u``, trade ids + 1): nothing is a duplicate, nothing a gap. A
  connection whose socket does not take its frames (``drain`` blocks) falls behind its schedule:
  the shortfall is printed as "behind", since Binance would not wait.
* **N collectors** (``--worker``): the real collector (``Collector``, in its own process, its own
  buffer), each with a disjoint slice of the symbols, as a fleet runs several on one host. Each
  records until the feed stops, then until its queue and spill are empty, and reports messages
  committed (rows counted in its buffer), spill peak bytes, CPU seconds, receive-to-commit p99.
* **archive_hour** runs back to back in a child process for the whole soak, on a copy of a cached
  hour of the same shape (``archive_hour.py``'s buffer: 2,240 symbols, diff depth and trades,
  interleaved sessions): the soak's own hour cannot be archived while it is being recorded (the
  hour has not ended), so this loads the machine as the archive of the previous hour would, and
  its rows/s under that load says how long a universe hour (30,000 × 3,600 rows) takes to archive.

Usage: python benchmarks/soak.py [--rate 30000] [--seconds 600] [--burst 5 --burst-at 120 --burst-seconds 60]
       [--collectors 1] [--spot 1450] [--usdm 790] [--archive-rows 200000]
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import hashlib
import json
import os
import re
import resource
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from feed import ws_frame  # noqa: E402

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
FIRST_ID = 1_000_000_000
#: Binance's universe (spot diff depth and trades of ~1,450 symbols, USD-M's of ~790), msg/s on average.
UNIVERSE_RATE = 30_000
TICK = 0.01  # seconds between the feed's writes on a connection
#: A collector is drained when nothing arrived for this long and its queue and spill are empty.
DRAIN_QUIET_S = 3.0
DRAIN_MAX_S = 600.0


def spot_symbols(n: int) -> list[str]:
    return [f"s{i:04d}usdt" for i in range(n)]


def usdm_symbols(n: int) -> list[str]:
    return [f"f{i:04d}usdt" for i in range(n)]


# --------------------------------------------------------------------------- feed


class Feed:
    def __init__(self, rate: float, n_streams: int, t_start: float, t_end: float, burst: float, burst_at: float,
                 burst_s: float, stats_path: Path) -> None:
        self.per_stream = rate / n_streams
        self.t_start, self.t_end = t_start, t_end
        self.burst, self.burst_from, self.burst_to = burst, t_start + burst_at, t_start + burst_at + burst_s
        self.next_id: dict[str, int] = {}
        self.sent = {"spot": 0, "usdm": 0}
        self.behind = 0.0  # frames due but not written by the soak's end (the socket did not take them)
        self.stats_path = stats_path
        self.connections = 0

    def rate_at(self, t: float) -> float:
        if t >= self.t_end:
            return 0.0  # the warmup is served at the average rate: a silent connection would be reconnected
        return self.per_stream * (self.burst if self.burst_from <= t < self.burst_to else 1.0)

    def frame(self, name: str, usdm: bool) -> bytes:
        first = self.next_id.get(name, FIRST_ID)
        ms = int(time.time() * 1000)
        sym, _, kind = name.partition("@")
        if kind == "trade":
            self.next_id[name] = first + 1
            tail = "" if usdm else ',"M":true'
            data = (f'{{"e":"trade","E":{ms},"T":{ms},"s":"{sym.upper()}","t":{first},"p":"101.25000000",'
                    f'"q":"0.50000000","m":{"true" if first & 1 else "false"}{tail}}}')
        else:
            last = first + 2
            self.next_id[name] = last + 1
            lv = first % 7
            b = f'[["{100 - lv * 0.01:.2f}","1.50000000"],["{99.9 - lv * 0.01:.2f}","2.00000000"]]'
            a = f'[["{100.01 + lv * 0.01:.2f}","0.75000000"],["{100.1 + lv * 0.01:.2f}","0.00000000"]]'
            if usdm:
                data = (f'{{"e":"depthUpdate","E":{ms},"T":{ms},"s":"{sym.upper()}","U":{first},"u":{last},'
                        f'"pu":{first - 1},"b":{b},"a":{a}}}')
            else:
                data = f'{{"e":"depthUpdate","E":{ms},"s":"{sym.upper()}","U":{first},"u":{last},"b":{b},"a":{a}}}'
        return ws_frame(f'{{"stream":"{name}","data":{data}}}'.encode())

    def write_stats(self) -> None:
        tmp = self.stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"sent": self.sent, "behind": round(self.behind),
                                   "connections": self.connections,
                                   "cpu_s": sum(resource.getrusage(resource.RUSAGE_SELF)[:2])}))
        os.replace(tmp, self.stats_path)


def rest_depth(path: str, query: str) -> bytes:
    ms = int(time.time() * 1000)
    extra = f',"E":{ms},"T":{ms}' if path.startswith("/fapi") else ""
    return (f'{{"lastUpdateId":{FIRST_ID - 1}{extra},"bids":[["99.99000000","1.00000000"]],'
            f'"asks":[["100.01000000","1.00000000"]]}}').encode()


async def serve_rest(first: bytes, reader, writer) -> None:
    request = first
    try:
        while True:
            target = request.decode("latin-1").split("\r\n")[0].split(" ")[1]
            path, _, query = target.partition("?")
            if path in ("/api/v3/depth", "/fapi/v1/depth"):
                status, body = "200 OK", rest_depth(path, query)
            else:
                status, body = "404 Not Found", b'{"code":-1,"msg":"not served by the soak feed"}'
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            await writer.drain()
            request = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def read_client(reader, writer, streams: list[str], closed: asyncio.Event) -> None:
    """Pings, closes and SUBSCRIBE/UNSUBSCRIBE requests from the collector."""
    try:
        while True:
            b0, b1 = await reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await reader.readexactly(8))
            mask = await reader.readexactly(4) if b1 & 0x80 else b"\0\0\0\0"
            raw = await reader.readexactly(n)
            data = bytes(c ^ mask[i % 4] for i, c in enumerate(raw))
            op = b0 & 0x0F
            if op == 0x9:
                writer.write(ws_frame(data, 0xA))
            elif op == 0x8:
                writer.write(ws_frame(data[:2], 0x8))
                return
            elif op == 0x1:
                req = json.loads(data)
                if req.get("method") == "SUBSCRIBE":
                    streams.extend(p for p in req["params"] if p not in streams)
                elif req.get("method") == "UNSUBSCRIBE":
                    for p in req["params"]:
                        if p in streams:
                            streams.remove(p)
                writer.write(ws_frame(json.dumps({"result": None, "id": req.get("id")}).encode()))
    except (asyncio.IncompleteReadError, ConnectionError):
        return
    finally:
        closed.set()


async def handle(feed: Feed, reader, writer) -> None:
    request = await reader.readuntil(b"\r\n\r\n")
    lines = request.decode("latin-1").split("\r\n")
    target = lines[0].split(" ")[1]
    if target.startswith(("/api/", "/fapi/")):
        await serve_rest(request, reader, writer)
        return
    headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:] if ":" in x)}
    accept = base64.b64encode(hashlib.sha1(headers["sec-websocket-key"].encode() + _GUID).digest()).decode()
    writer.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode())
    path, _, query = target.partition("?")
    usdm = path.startswith("/usdm")
    market = "usdm" if usdm else "spot"
    streams = [s for s in query.partition("streams=")[2].split("/") if s]
    closed = asyncio.Event()
    feed.connections += 1
    pings = asyncio.create_task(read_client(reader, writer, streams, closed))
    owed, cursor, last = 0.0, 0, time.time()
    try:
        while not closed.is_set():
            await asyncio.sleep(TICK)
            now = time.time()
            owed += feed.rate_at(now) * len(streams) * (now - last)
            last = now
            if now >= feed.t_end:
                feed.behind += owed
                await closed.wait()
                return
            n = int(owed)
            if n == 0 or not streams:
                continue
            owed -= n
            k = len(streams)
            chunk = [feed.frame(streams[(cursor + j) % k], usdm) for j in range(n)]
            cursor = (cursor + n) % k
            writer.write(b"".join(chunk))
            feed.sent[market] += n
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        pings.cancel()
        writer.close()


async def serve(args) -> None:
    feed = Feed(args.rate, args.streams, args.t_start, args.t_end, args.burst, args.burst_at, args.burst_seconds,
                Path(args.stats))
    server = await asyncio.start_server(lambda r, w: handle(feed, r, w), "127.0.0.1", 0, backlog=256)
    print(f"feed listening on 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        while True:
            await asyncio.sleep(0.5)
            feed.write_stats()


# --------------------------------------------------------------------------- collector worker


async def work(args) -> dict:
    from orderbook_collector.config import Settings
    from orderbook_collector.connection.collector import Collector

    spot = spot_symbols(args.spot)[args.index::args.of]
    usdm = usdm_symbols(args.usdm)[args.index::args.of]
    lat = array.array("q")

    def observer(records, commit_us):
        lat.extend(commit_us - r.recv_us for r in records[::10])  # 1 in 10: memory stays small

    base = f"http://127.0.0.1:{args.port}"
    settings = Settings(symbols=spot, streams=["depth@100ms", "trade"], ws_url=f"ws://127.0.0.1:{args.port}/spot",
                        rest_url=base, usdm_symbols=usdm, usdm_streams=["depth@100ms", "trade"],
                        usdm_ws_url=f"ws://127.0.0.1:{args.port}/usdm", usdm_rest_url=base,
                        buffer=Path(args.buffer), metrics_port=-1)
    c = Collector(settings, commit_observer=observer)
    task = asyncio.create_task(c.run())
    spill_peak, queue_peak, quiet_since, frames = 0, 0, None, -1
    samples = []
    while True:
        await asyncio.sleep(0.25)
        if task.done():
            raise RuntimeError(f"collector {args.index} stopped early: {task.exception()!r}")
        spill = c.metrics.spill_bytes()
        spill_peak, queue_peak = max(spill_peak, spill), max(queue_peak, c.metrics.queue_depth)
        now = time.time()
        if int(now) % 5 == 0 and (not samples or samples[-1][0] != int(now)):
            samples.append((int(now), c.metrics.frames, c.metrics.messages, spill, c.metrics.queue_depth))
        if now < args.t_end:
            continue
        if c.metrics.frames != frames:
            frames, quiet_since = c.metrics.frames, now
        drained = spill == 0 and c.metrics.queue_depth == 0
        if drained and now - quiet_since >= DRAIN_QUIET_S or now - args.t_end > args.drain_max:
            break
    drained_at = time.time()
    c.stop("soak done")
    await task
    cpu = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    conn = sqlite3.connect(args.buffer)
    rows = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("depth_update", "trade")}
    gaps = {"trade_gap_ids": conn.execute("SELECT coalesce(sum(last_missing_id - first_missing_id + 1), 0) "
                                          "FROM trade_gap").fetchone()[0],
            "depth_gap_breaks": conn.execute("SELECT count(*) FROM depth_sync WHERE event = 'break' "
                                             "AND reason != 'connect'").fetchone()[0]}
    conn.close()
    lat_sorted = sorted(lat)

    def pct(p):
        return lat_sorted[min(len(lat_sorted) - 1, int(p / 100 * len(lat_sorted)))] / 1000 if lat_sorted else None

    return {"index": args.index, "rows": rows, "frames": c.metrics.frames, "messages": c.metrics.messages,
            "duplicates": c.metrics.duplicates, "lost": c.metrics.lost, "spilled_items": c.metrics.spilled_items,
            "spill_peak": spill_peak, "spill_end": c.metrics.spill_bytes(), "queue_peak": queue_peak,
            "drain_s": drained_at - args.t_end, "cpu_s": cpu, "p50_ms": pct(50), "p99_ms": pct(99),
            "p999_ms": pct(99.9), "max_ms": pct(100), "reconnects": c.metrics.reconnects,
            "quarantined": sum(c.metrics.quarantined.values()), **gaps, "samples": samples}


# --------------------------------------------------------------------------- archive_hour under load


def archive_once(src: Path, work: Path) -> None:
    from archive_hour import HOUR_US, run_archive_hour

    elapsed, steps, ok = run_archive_hour(src, work, HOUR_US)
    print(json.dumps({"elapsed": elapsed, "ok": ok, "steps": steps}), flush=True)


def archive_loop(src: Path, work: Path, until: float, out: list, env: dict) -> None:
    while time.time() < until:
        t0 = time.time()
        p = subprocess.run([sys.executable, __file__, "--archive-once", str(src), str(work)], env=env,
                           capture_output=True, text=True)
        line = [x for x in p.stdout.splitlines() if x.startswith("{")]
        res = json.loads(line[-1]) if line else {"ok": False, "error": p.stderr[-500:]}
        res.update(start=t0, end=time.time())
        out.append(res)


# --------------------------------------------------------------------------- driver


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=30_000, help="average msg/s over every stream")
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--burst", type=float, default=5.0)
    ap.add_argument("--burst-at", type=float, default=120, help="seconds into the soak the burst minute starts")
    ap.add_argument("--burst-seconds", type=float, default=60)
    ap.add_argument("--warmup", type=float, default=20, help="seconds for the collectors to connect and subscribe")
    ap.add_argument("--collectors", type=int, default=1)
    ap.add_argument("--drain-max", type=float, default=DRAIN_MAX_S, help="seconds a collector may take to drain")
    ap.add_argument("--spot", type=int, default=1450)
    ap.add_argument("--usdm", type=int, default=790)
    ap.add_argument("--archive-rows", type=int, default=200_000, help="rows of the hour archived under load")
    ap.add_argument("--no-archive", action="store_true")
    # internal modes
    ap.add_argument("--serve", action="store_true")
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--archive-once", nargs=2)
    ap.add_argument("--streams", type=int)
    ap.add_argument("--t-start", type=float)
    ap.add_argument("--t-end", type=float)
    ap.add_argument("--stats")
    ap.add_argument("--port", type=int)
    ap.add_argument("--index", type=int)
    ap.add_argument("--of", type=int)
    ap.add_argument("--buffer")
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve(args))
        return
    if args.worker:
        print(json.dumps(asyncio.run(work(args))), flush=True)
        return
    if args.archive_once:
        archive_once(Path(args.archive_once[0]), Path(args.archive_once[1]))
        return

    n_streams = 2 * (args.spot + args.usdm)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    t_start = time.time() + args.warmup
    t_end = t_start + args.seconds
    common = ["--drain-max", str(args.drain_max), "--spot", str(args.spot), "--usdm", str(args.usdm), "--t-start", str(t_start), "--t-end", str(t_end)]
    feed = subprocess.Popen([sys.executable, __file__, "--serve", "--rate", str(args.rate), "--streams", str(n_streams),
                             "--burst", str(args.burst), "--burst-at", str(args.burst_at), "--burst-seconds",
                             str(args.burst_seconds), "--stats", str(tmp / "feed.json"), *common],
                            stdout=subprocess.PIPE, text=True, env=env)
    port = int(re.search(r":(\d+)", feed.stdout.readline()).group(1))
    workers = [subprocess.Popen([sys.executable, __file__, "--worker", "--port", str(port), "--index", str(i), "--of",
                                 str(args.collectors), "--buffer", str(tmp / f"buffer{i}.sqlite3"), *common],
                                stdout=subprocess.PIPE, text=True, env=env) for i in range(args.collectors)]
    archives: list[dict] = []
    arch = None
    if not args.no_archive:
        from archive_hour import hour_buffer

        src = hour_buffer(args.archive_rows, 2240, 50, 2)
        with sqlite3.connect(src) as c:
            archive_rows = c.execute("SELECT count(*) FROM raw_json").fetchone()[0]
        arch = threading.Thread(target=archive_loop, args=(src, tmp / "archive", t_end, archives, env), daemon=True)
        arch.start()
    try:
        results = [json.loads(w.communicate()[0].strip().splitlines()[-1]) for w in workers]
        if arch is not None:
            arch.join()
        stats = json.loads((tmp / "feed.json").read_text())
    finally:
        feed.kill()
        for w in workers:
            if w.poll() is None:
                w.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    sent = sum(stats["sent"].values())
    committed = sum(sum(r["rows"].values()) for r in results)
    load = os.getloadavg()
    print(f"soak: {args.spot} spot + {args.usdm} USD-M symbols, diff depth and trades = {n_streams:,} streams; "
          f"target {args.rate:,.0f} msg/s for {args.seconds:.0f} s, {args.burst:g}x for {args.burst_seconds:.0f} s "
          f"from {args.burst_at:.0f} s; {args.collectors} collector process(es); {stats['connections']} WebSocket "
          f"connections; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    target = args.rate * (args.seconds + (args.burst - 1) * args.burst_seconds)
    print(f"sent {sent:,} ({stats['sent']['spot']:,} spot, {stats['sent']['usdm']:,} USD-M) = "
          f"{sent / (args.seconds + args.warmup):,.0f} msg/s average over warmup and soak, burst included; "
          f"schedule {target + args.rate * args.warmup:,.0f}; behind at the end "
          f"{stats['behind']:,} frames (the socket did not take them); feed CPU {stats['cpu_s']:.0f} s")
    print(f"committed {committed:,} rows: {'every sent message stored once' if committed == sent else 'MISMATCH'} "
          f"(difference {committed - sent:+,})")
    for r in results:
        print(f"collector {r['index']}: {sum(r['rows'].values()):,} rows ({r['rows']['depth_update']:,} diff, "
              f"{r['rows']['trade']:,} trades), duplicates {r['duplicates']}, lost {r['lost']}, quarantined "
              f"{r['quarantined']}, reconnects {r['reconnects']} (trade ids recorded missing {r['trade_gap_ids']:,}, "
              f"diff-depth breaks other than at connect {r['depth_gap_breaks']:,}); CPU {r['cpu_s']:.0f} s = "
              f"{r['cpu_s'] / (args.seconds + args.warmup + r['drain_s']):.0%} of a core over its run; spill peak "
              f"{r['spill_peak']:,} B ({r['spilled_items']:,} items), at the end {r['spill_end']:,} B; queue peak "
              f"{r['queue_peak']:,}; drained {r['drain_s']:.0f} s after the feed stopped; receive-to-commit "
              f"p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, p99.9 {r['p999_ms']:.0f} ms, max {r['max_ms']:.0f} ms")
        print("  every 5 s (s from start, frames, committed, spill B, queue): " + "; ".join(
            f"{t - t_start:.0f}:{f},{m},{s},{q}" for t, f, m, s, q in r["samples"][::6]))
    if archives:
        ok = [a for a in archives if a.get("ok")]
        print(f"archive_hour under load: {len(archives)} run(s) of a {archive_rows:,}-row hour, {len(ok)} succeeded; "
              "seconds " + ", ".join(f"{a['end'] - a['start']:.0f}" for a in archives))
        if ok:
            best = min(a["elapsed"] for a in ok)
            hour_rows = UNIVERSE_RATE * 3600
            print(f"  {archive_rows / best:,.0f} rows/s at best under load: a universe hour ({hour_rows:,.0f} rows) "
                  f"would take {hour_rows / (archive_rows / best) / 60:,.0f} min (limit 15)")
            slow = max(ok, key=lambda a: a["elapsed"])
            print("  slowest run's steps: " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                         sorted(slow["steps"].items(), key=lambda kv: -kv[1])[:6]))
    print(json.dumps({"sent": stats["sent"], "committed": committed, "behind": stats["behind"],
                      "collectors": [{k: v for k, v in r.items() if k != "samples"} for r in results],
                      "archives": [{k: a.get(k) for k in ("elapsed", "ok")} for a in archives]}))


if __name__ == "__main__":
    main()
