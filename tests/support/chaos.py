#!/usr/bin/env python
"""Chaos run of the whole system, checked by an oracle that is never killed.

    python tests/support/chaos.py --duration SECONDS [--report PATH] [--seed N] [--workdir DIR]

This process (the oracle) starts:

* the simulated exchange (``python -m tools.simulator``) writing its sent log,
  the record of every data message handed to a connection;
* the collector (``python -m orderbook_collector``) recording every kind (depth20@100ms,
  depth@100ms, trade, aggTrade, bookTicker) on spot and USD-M (``--depth20-only``: spot
  depth20@100ms alone), SIGKILLed at random moments and restarted;
* moto (S3) behind :class:`~support.s3.FaultProxy`, which injects S3 5xx, SlowDown, resets,
  stalls, lost responses, corrupted bodies and silent PUT loss;
* archive runs (``archive_hour`` of the current hour, and of any earlier hour with rows
  left) and ``cleanup_buffer`` runs with retention 0, each a subprocess, SIGKILLed at
  random moments or left to finish;

and, for ``--duration`` seconds, disconnects, stalls, replays, serverShutdowns, rejected
handshakes and malformed frames on the feed. While that runs it samples what is
*acknowledged*: every row visible in the buffer to another connection (committed),
read incrementally by id and right before each collector kill.

Then the faults stop, new data must flow end to end, the feed is paused, the collector
is stopped with SIGTERM (exit 0), every touched hour is archived until nothing is left,
cleanup runs once more with retention 0, and the oracle checks:

1. every acknowledged message is in the archive exactly once (no duplicates at all);
2. every archived row equals what the simulator sent (prices and quantities as floats of
   the strings), and no archived row was never sent;
3. every message sent but neither acknowledged nor archived lies at a session boundary
   explained by a collector kill (the crash window: sent before the kill, after the last
   acknowledged message) or by a recorded outage (disconnect, stall, rotation, the time the
   collector was down after a kill); none is lost inside a session;
4. every kill, disconnect and stall appears in the coverage data (sessions table and the
   archived ``coverage`` dataset);
5. the buffer passes ``PRAGMA integrity_check``, no session is left open, every part is
   archived, every deleted row belongs to an archived part, and rows received after the
   faults stopped reached the archive.

Checks 1 to 3 (with crash windows and outages) are made on spot depth20@100ms; with every
kind, :meth:`Chaos._oracle_kinds` also checks every dataset on both markets: acknowledged
rows archived exactly once with the values sent, every seq missing inside a session a
quarantined frame or a dropped duplicate, every message neither stored nor archived at a
session boundary, and every diff-depth discontinuity and trade-id hole in the archive
recorded as a ``break`` or ``trade_gap`` coverage record with exactly its ids (or inside a
recorded one that a later replay partly filled; or, only where a cleanup run freed the
stream's last row before the restart, as a new start).

Exit status 0 when every check passes; the JSON report (``--report``) holds the figures.
"""

from __future__ import annotations

import argparse
import bisect
import json
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for p in (str(ROOT), str(ROOT / "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

import orjson  # noqa: E402

from support.procs import JOB_RUN, SimulatorProcess, child_env  # noqa: E402
from support.s3 import MotoServer, FaultProxy, s3_client  # noqa: E402
from support.archive_rows import COLUMNS, ID, expected, read  # noqa: E402
from orderbook_core.buffer import HOUR_US  # noqa: E402
from tools.simulator.exchange import MALFORMED_KINDS  # noqa: E402

BUCKET = "chaos"
PREFIX = "archive"
REGION = "eu-west-1"


def now_us() -> int:
    return time.time_ns() // 1000


def hour_key(hour_us: int) -> str:
    return datetime.fromtimestamp(hour_us / 1e6, tz=timezone.utc).strftime("%Y-%m-%d-%H:00")


def log(msg: str) -> None:
    print(f"[chaos {datetime.now(timezone.utc):%H:%M:%S.%f}"[:-3] + f"] {msg}", flush=True)


def ro_connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)


# --------------------------------------------------------------------------- acknowledged


class AckSampler:
    """Reads committed depth rows incrementally (ids only grow; cleanup never reuses them)."""

    def __init__(self, buffer: Path) -> None:
        self.buffer = buffer
        self.last_id = 0
        # (stream, update_id) -> (id, session_id, seq, recv_us)
        self.rows: dict[tuple[str, int], tuple[int, int, int, int]] = {}
        self.dup_ids: list = []  # the same key committed twice under different ids (must stay empty)
        self.samples = 0
        self.lock = threading.Lock()

    def sample(self) -> int:
        with self.lock:
            if not self.buffer.exists():
                return 0
            try:
                conn = ro_connect(self.buffer)
            except sqlite3.Error:
                return 0
            try:
                got = conn.execute(
                    "SELECT d.id, s.name, d.update_id, d.session_id, d.seq, d.recv_us FROM depth_snapshot d "
                    "JOIN streams s USING (stream_id) WHERE d.id > ? AND s.market = 'spot' ORDER BY d.id",
                    (self.last_id,),
                ).fetchall()
            except sqlite3.Error:
                return 0  # schema not there yet, or a transient error: the next sample catches up
            finally:
                conn.close()
            for rid, stream, uid, sid, seq, recv in got:
                key = (stream, uid)
                old = self.rows.get(key)
                if old is not None and old[0] != rid:
                    self.dup_ids.append((key, old[0], rid))
                self.rows[key] = (rid, sid, seq, recv)
                self.last_id = max(self.last_id, rid)
            self.samples += 1
            return len(got)


class KindSampler:
    """Reads committed rows of every stream dataset incrementally: (dataset, market, stream,
    dedup id) -> (row id, session_id, recv_us). The market prefix of a stream key is dropped:
    the archive names streams as subscribed, with a ``market`` column."""

    def __init__(self, buffer: Path) -> None:
        self.buffer = buffer
        self.last_id = {d: 0 for d in ID}
        self.rows: dict[tuple[str, str, str, int], tuple[int, int, int]] = {}
        self.dup_ids: list = []
        self.lock = threading.Lock()

    def sample(self) -> None:
        with self.lock:
            if not self.buffer.exists():
                return
            try:
                conn = ro_connect(self.buffer)
            except sqlite3.Error:
                return
            try:
                for dataset, col in BUFFER_ID.items():
                    got = conn.execute(
                        f"SELECT d.id, s.market, s.name, d.{col}, d.session_id, d.recv_us FROM {dataset} d "
                        "JOIN streams s USING (stream_id) WHERE d.id > ? ORDER BY d.id", (self.last_id[dataset],),
                    ).fetchall()
                    for rid, market, name, uid, sid, recv in got:
                        key = (dataset, market, name.split(":", 1)[-1], uid)
                        old = self.rows.get(key)
                        if old is not None and old[0] != rid:
                            self.dup_ids.append((key, old[0], rid))
                        self.rows[key] = (rid, sid, recv)
                        self.last_id[dataset] = max(self.last_id[dataset], rid)
            except sqlite3.Error:
                return  # schema not there yet, or a transient error: the next sample catches up
            finally:
                conn.close()


#: buffer table -> its dedup id column (the archive's is :data:`support.archive_rows.ID`)
BUFFER_ID = {"trade": "trade_id", "agg_trade": "agg_trade_id", "book_ticker": "update_id",
             "depth_update": "last_update_id", "depth_snapshot": "update_id"}
#: Every stream kind, recorded on spot and USD-M.
KINDS = ("depth20@100ms", "depth@100ms", "trade", "aggTrade", "bookTicker")


# --------------------------------------------------------------------------- the run


@dataclass
class Kill:
    n: int
    started_us: int
    kill_us: int
    queue_size: int


@dataclass
class Run:
    job: str
    key: str | None
    started_us: int
    ended_us: int = 0
    outcome: str = ""  # ok | failed | killed | timeout
    rc: int | None = None
    log: Path | None = None

    def error_tail(self, lines: int = 6) -> str:
        text = self.log.read_text(errors="replace").splitlines() if self.log and self.log.exists() else []
        return " | ".join(text[-lines:])


@dataclass
class Chaos:
    workdir: Path
    duration: float
    seed: int
    rate: float = 50.0
    symbols: str = "btcusdt,ethusdt"
    streams: str = "depth20@100ms"
    kill_every: tuple[float, float] = (1.5, 6.0)
    feed_fault_every: tuple[float, float] = (1.5, 5.0)
    s3_fault_every: tuple[float, float] = (0.3, 1.5)
    archive_kill_prob: float = 0.4
    every_kind: bool = True  # record every kind on spot and USD-M too (the depth20 oracle reads spot's)
    max_window_ms: float = 100.0
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.buffer = self.workdir / "buffer" / "buffer.sqlite3"
        self.buffer.parent.mkdir(parents=True, exist_ok=True)
        self.sent_log = self.workdir / "sent.ndjson"
        self.logs = self.workdir / "logs"
        self.logs.mkdir(exist_ok=True)
        self.dagster_home = self.workdir / "dagster_home"
        self.dagster_home.mkdir(exist_ok=True)
        self.sampler = AckSampler(self.buffer)
        self.kind_sampler = KindSampler(self.buffer)
        self.cleanups_ok: list[tuple[int, int]] = []  # (start, end) of each cleanup_buffer run that finished
        self.kills: list[Kill] = []
        self.collector_starts = 0
        self.feed_faults: list[dict] = []
        self.s3_injections: Counter = Counter()
        self.runs: list[Run] = []
        self.stop_chaos = threading.Event()
        self.collector: subprocess.Popen | None = None
        self.collector_lock = threading.Lock()
        self.archive_proc: subprocess.Popen | None = None
        self.thread_errors: list[str] = []

    # ---- processes ------------------------------------------------------------------

    def start_collector(self, queue_size: int) -> subprocess.Popen:
        self.collector_starts += 1
        env = child_env(
            ORDERBOOK_SYMBOLS=self.symbols, ORDERBOOK_STREAMS=self.streams, ORDERBOOK_WS_URL=self.sim.ws_url,
            ORDERBOOK_BUFFER=str(self.buffer), ORDERBOOK_METRICS_PORT="-1", ORDERBOOK_LOG_LEVEL="INFO",
            ORDERBOOK_QUEUE_SIZE=str(queue_size), ORDERBOOK_COMMIT_INTERVAL_MS="20",
        )
        if self.every_kind:
            env.update(ORDERBOOK_STREAMS=",".join(KINDS), ORDERBOOK_REST_URL=self.sim.http_url,
                       ORDERBOOK_USDM_SYMBOLS=self.symbols, ORDERBOOK_USDM_STREAMS=",".join(KINDS),
                       ORDERBOOK_USDM_WS_URL=self.sim.ws_url, ORDERBOOK_USDM_REST_URL=self.sim.http_url)
        out = open(self.logs / f"collector-{self.collector_starts:04d}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "orderbook_collector"], env=env, cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)
        out.close()
        return proc

    def archive_env(self, retention: str = "0") -> dict[str, str]:
        return child_env(
            DAGSTER_HOME=str(self.dagster_home), ORDERBOOK_BUFFER=str(self.buffer),
            ORDERBOOK_ARCHIVE_URL=f"s3://{BUCKET}/{PREFIX}", ORDERBOOK_RETENTION_HOURS=retention,
            AWS_ENDPOINT_URL_S3=self.proxy.url, AWS_REGION=REGION, AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing", ORDERBOOK_CRASH_AT="",
        )

    def run_job(self, job: str, key: str | None, kill_after: float | None, timeout: float = 180.0) -> Run:
        run = Run(job, key, now_us())
        args = [sys.executable, "-c", JOB_RUN, job] + ([key] if key else [])
        run.log = self.logs / f"run-{len(self.runs) + 1:04d}-{job}.log"
        out = open(run.log, "wb")
        proc = subprocess.Popen(args, env=self.archive_env(), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        self.archive_proc = proc
        limit = timeout if kill_after is None else min(kill_after, timeout)
        try:
            rc = proc.wait(limit)
            run.outcome = "ok" if rc == 0 else "killed" if rc == -signal.SIGKILL else "failed"
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            rc = proc.wait()
            run.outcome = "killed" if kill_after is not None and kill_after < timeout else "timeout"
        run.rc, run.ended_us = rc, now_us()
        if job == "cleanup_buffer" and run.outcome == "ok":
            self.cleanups_ok.append((run.started_us, run.ended_us))
        self.archive_proc = None
        self.runs.append(run)
        log(f"{job} {key or ''}: {run.outcome} after {(run.ended_us - run.started_us) / 1e6:.1f} s")
        return run

    # ---- chaos loops ----------------------------------------------------------------

    def _guard(self, fn):
        def wrapped():
            try:
                fn()
            except Exception:
                self.thread_errors.append(f"{fn.__name__}: {traceback.format_exc()}")
                log(f"ERROR in {fn.__name__}: {traceback.format_exc()}")
        return wrapped

    def collector_loop(self) -> None:
        rng = random.Random(self.rng.random())
        while not self.stop_chaos.is_set():
            queue_size = rng.choice((64, 256, 20000))
            started = now_us()
            with self.collector_lock:
                self.collector = self.start_collector(queue_size)
            if self.stop_chaos.wait(rng.uniform(*self.kill_every)):
                return  # the last collector keeps running into the quiet phase
            with self.collector_lock:
                proc = self.collector
                if proc.poll() is not None:
                    self.failures.append(f"collector exited by itself with {proc.returncode} (start {self.collector_starts})")
                    continue
                self.sample_all()  # acknowledged right before the kill
                kill_us = now_us()
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            self.kills.append(Kill(len(self.kills) + 1, started, kill_us, queue_size))
            self.stop_chaos.wait(rng.uniform(0.0, 0.5))

    def sample_all(self) -> None:
        self.sampler.sample()
        if self.every_kind:
            self.kind_sampler.sample()

    def sampler_loop(self) -> None:
        while not self.stop_chaos.wait(0.5):
            self.sample_all()

    def feed_fault_loop(self) -> None:
        rng = random.Random(self.rng.random())
        kinds = ["disconnect", "disconnect_abrupt", "stall_short", "stall_long", "malformed", "malformed",
                 "replay", "reject", "server_shutdown"]
        while not self.stop_chaos.wait(rng.uniform(*self.feed_fault_every)):
            kind = rng.choice(kinds)
            t = now_us()
            rec: dict = {"kind": kind, "t_us": t}
            try:
                if kind == "disconnect":
                    self.sim.control("disconnect", abrupt=0)
                elif kind == "disconnect_abrupt":
                    self.sim.control("disconnect", abrupt=1)
                elif kind in ("stall_short", "stall_long"):
                    secs = round(rng.uniform(1.0, 3.0) if kind == "stall_short" else rng.uniform(5.5, 8.0), 2)
                    rec["seconds"] = secs
                    self.sim.control("stall", seconds=secs)
                elif kind == "malformed":
                    rec["malformed"] = rng.choice(MALFORMED_KINDS)
                    # Only a live connection gets it: wait for the (restarting) collector to be connected,
                    # so every run tests the quarantine instead of sending into the void by chance.
                    deadline = time.monotonic() + 10
                    while (json.loads(self.sim.control("stats"))["connections_open"] == 0
                           and time.monotonic() < deadline and not self.stop_chaos.wait(0.05)):
                        pass
                    self.sim.control("inject_malformed", kind=rec["malformed"])
                elif kind == "replay":
                    rec["n"] = rng.randint(5, 60)
                    self.sim.control("replay_on_next_connect", n=rec["n"])
                    self.sim.control("disconnect", abrupt=0)
                elif kind == "reject":
                    self.sim.control("reject_connections", status=429, retry_after=1, count=1)
                    self.sim.control("disconnect", abrupt=1)
                elif kind == "server_shutdown":
                    self.sim.control("server_shutdown", grace=1)
            except Exception as exc:  # the simulator must answer; record and go on
                rec["error"] = repr(exc)
                self.failures.append(f"feed fault {kind} failed: {exc!r}")
            self.feed_faults.append(rec)

    def s3_fault_loop(self) -> None:
        rng = random.Random(self.rng.random())
        plan = [
            ("status_500", None), ("slowdown_503", None), ("reset", None), ("stall", None),
            ("lost_response", "PUT"), ("lost_response", "HEAD"), ("corrupt_body", "PUT"),
            ("silent_put_loss", "PUT"),
        ]
        while not self.stop_chaos.wait(rng.uniform(*self.s3_fault_every)):
            if self.proxy.pending > 6:
                continue  # do not queue faults faster than requests arrive
            kind, method = rng.choice(plan)
            where = f"/{BUCKET}/"
            self.proxy.inject(kind, count=rng.randint(1, 2), method=method, path_contains=where)
            self.s3_injections[kind] += 1

    def archive_loop(self) -> None:
        rng = random.Random(self.rng.random())
        first = True  # the first archive run is always killed, the first cleanup always runs
        self.stop_chaos.wait(2.0)  # let the collector commit something first
        while not self.stop_chaos.is_set():
            t = now_us()
            hours = set(self.hours_to_archive()) | {t - t % HOUR_US}
            for h in sorted(hours):
                if self.stop_chaos.is_set():
                    return
                kill = rng.uniform(0.5, 12.0) if first or rng.random() < self.archive_kill_prob else None
                self.run_job("archive_hour", hour_key(h), kill, timeout=120)
                first = False
            if (len(self.runs) < 3 or rng.random() < 0.6) and not self.stop_chaos.is_set():
                kill = rng.uniform(0.3, 6.0) if rng.random() < 0.3 else None
                self.run_job("cleanup_buffer", None, kill, timeout=120)
            self.stop_chaos.wait(rng.uniform(0.0, 2.0))

    def hours_to_archive(self) -> list[int]:
        """Hours with rows not in any part yet, or with parts not archived."""
        if not self.buffer.exists():
            return []
        try:
            conn = ro_connect(self.buffer)
            try:
                rows = conn.execute(
                    "SELECT b.hour_us FROM buffer_hours b WHERE b.dataset = 'depth_snapshot' AND ("
                    " b.max_id > coalesce((SELECT max(id_hi) FROM export_parts p WHERE p.dataset = b.dataset "
                    "                      AND p.hour_us = b.hour_us), 0)"
                    " OR EXISTS (SELECT 1 FROM export_parts p WHERE p.hour_us = b.hour_us AND p.state != 'archived'))"
                    " ORDER BY 1"
                ).fetchall()
            finally:
                conn.close()
        except sqlite3.Error:
            return []
        return [r[0] for r in rows]

    # ---- phases ---------------------------------------------------------------------

    def run(self) -> dict:
        t_start = now_us()
        with MotoServer() as moto, FaultProxy(moto.url, stall_seconds=3.0) as proxy:
            self.moto, self.proxy = moto, proxy
            self.sim = SimulatorProcess("--symbols", self.symbols, "--rate", str(self.rate), "--seed", str(self.seed),
                                        sent_log=self.sent_log)
            try:
                self._chaos_phase()
                quiet = self._quiet_phase()
                self._final_archive()
            finally:
                self.stop_chaos.set()
                if self.archive_proc is not None and self.archive_proc.poll() is None:
                    self.archive_proc.kill()
                with self.collector_lock:
                    if self.collector is not None and self.collector.poll() is None:
                        self.collector.kill()
                        self.collector.wait()
                self.sim.stop()
            report = self._oracle(quiet)
            report["s3_faults_fired"] = {k: v for k, v in proxy.injected.items()}
            report["s3_requests"] = len(proxy.requests)
            report["s3_outcomes"] = dict(Counter(str(r.outcome) for r in proxy.requests))
        report["wall_seconds"] = round((now_us() - t_start) / 1e6, 1)
        report["failures"] = self.failures + self.thread_errors
        report["notes"] = self.notes
        report["passed"] = not report["failures"]
        return report

    def _chaos_phase(self) -> None:
        log(f"chaos phase: {self.duration:.0f} s, simulator {self.sim.ws_url}, S3 proxy {self.proxy.url}, workdir {self.workdir}")
        threads = [threading.Thread(target=self._guard(f), name=f.__name__, daemon=True)
                   for f in (self.collector_loop, self.sampler_loop, self.feed_fault_loop, self.s3_fault_loop,
                             self.archive_loop)]
        for t in threads:
            t.start()
        self.stop_chaos.wait(self.duration)
        self.stop_chaos.set()
        log("faults stop")
        self.t_faults_stopped = now_us()
        # A run in flight is ended as the chaos ended: killed.
        proc = self.archive_proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        for t in threads:
            t.join(200)
            if t.is_alive():
                self.failures.append(f"thread {t.name} did not stop")
        self.proxy.clear()

    def _quiet_phase(self) -> dict:
        """Faults off: data must flow end to end again; then pause the feed and stop cleanly."""
        t_quiet = now_us()
        with self.collector_lock:
            if self.collector is None or self.collector.poll() is not None:
                self.collector = self.start_collector(20000)
        streams = [f"{s}@{self.streams}" for s in self.symbols.split(",")]
        deadline = time.monotonic() + 60
        flowing = False
        while time.monotonic() < deadline:
            self.sample_all()
            recent = {k[0] for k, v in self.sampler.rows.items() if v[3] > t_quiet + 8_000_000}
            if all(s in recent for s in streams):
                flowing = True
                break
            time.sleep(0.5)
        if not flowing:
            self.failures.append("after the faults stopped, new rows did not reach the buffer within 60 s for every stream")
        t_flow = now_us()
        self.sim.control("stall", seconds=3600)  # nothing more is sent: everything sent can be received
        time.sleep(1.0)
        with self.collector_lock:
            proc = self.collector
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = "timeout"
        if rc != 0:
            self.failures.append(f"collector did not exit 0 on SIGTERM: {rc}")
        self.sample_all()
        log(f"quiet phase: data flowing again, collector stopped with {rc}")
        return {"t_quiet_us": t_quiet, "t_flow_us": t_flow, "sigterm_rc": rc}

    def _final_archive(self) -> None:
        """Archive every touched hour until nothing is left; cleanup with retention 0."""
        def ledger_state():
            conn = ro_connect(self.buffer)
            try:
                return conn.execute("SELECT dataset, hour_us, part, state FROM export_parts ORDER BY 1, 2, 3").fetchall()
            finally:
                conn.close()

        for _round in range(4):
            hours = self.hours_to_archive()
            if not hours:
                break
            before = ledger_state()
            for h in hours:
                self.run_job("archive_hour", hour_key(h), None, timeout=200)
            if ledger_state() == before and self.runs[-1].outcome != "ok":
                break  # no progress without faults: report it instead of trying forever
        left = self.hours_to_archive()
        if left:
            last = self.runs[-1] if self.runs else None
            self.failures.append(f"hours still not archived with the faults off: {[hour_key(h) for h in left]}; "
                                 f"last run {last.outcome if last else None}: {last.error_tail() if last else ''}")
        run = self.run_job("cleanup_buffer", None, None, timeout=300)
        if run.outcome != "ok":
            self.failures.append(f"final cleanup_buffer run {run.outcome} (rc {run.rc}): {run.error_tail()}")

    # ---- the oracle -----------------------------------------------------------------

    def _load_sent(self):
        sent: dict[tuple[str, int], tuple[int, bytes]] = {}
        malformed = Counter()
        self.malformed_send_us: list[int] = []
        for line in self.sent_log.read_bytes().splitlines():
            rec = orjson.loads(line)
            if "last_update_id" not in rec:
                if "malformed" in rec:
                    malformed[rec["malformed"]] += 1
                    self.malformed_send_us.append(rec["send_us"])
                continue
            if rec["market"] != "spot" or rec["kind"] != "depth_snapshot":
                continue  # the every-kind oracle checks the others
            key = (rec["stream"], rec["last_update_id"])
            old = sent.get(key)
            if old is None or rec["send_us"] < old[0]:
                sent[key] = (rec["send_us"], rec["data"])
        return sent, malformed

    def _load_archive(self) -> tuple[list[tuple], list[dict], list[str]]:
        import duckdb

        client = s3_client(self.moto.url, REGION)
        local = self.workdir / "archive_copy"
        shutil.rmtree(local, ignore_errors=True)
        keys = []
        pages = []
        try:
            pages = list(client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX + "/"))
        except client.exceptions.NoSuchBucket:
            self.failures.append("the archive bucket does not exist: no archive run ever succeeded")
        for page in pages:
            for o in page.get("Contents", []):
                keys.append(o["Key"])
                p = local / o["Key"]
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read())
        con = duckdb.connect()
        depth_glob = local / PREFIX / "depth_snapshot"
        rows = []
        if depth_glob.exists():
            rows = con.execute(
                f"SELECT symbol, stream, epoch_us(recv_time), session_id, seq, last_update_id, bids, asks, hour, filename "
                f"FROM read_parquet('{depth_glob}/**/*.parquet', hive_partitioning = true, filename = true) "
                f"WHERE market = 'spot'"
            ).fetchall()
        cov = []
        cov_glob = local / PREFIX / "coverage"
        if cov_glob.exists():
            cur = con.execute(
                f"SELECT record, part, session_id, stream, epoch_us(start_time) AS start_time, "
                f"epoch_us(end_time) AS end_time, close_reason, epoch_us(as_of) AS as_of, market FROM read_parquet('{cov_glob}/**/*.parquet', hive_partitioning = true)"
            )
            names = [d[0] for d in cur.description]
            cov = [dict(zip(names, r)) for r in cur.fetchall()]
        return rows, cov, keys

    def _oracle(self, quiet: dict) -> dict:
        log("oracle: reading the sent log, the buffer and the archive")
        sent, malformed_sent = self._load_sent()
        archived_rows, cov_rows, object_keys = self._load_archive()
        ack = self.sampler.rows
        r: dict = {}
        fail = self.failures.append

        # -- exactly once, equal values, nothing invented
        arch: dict[tuple[str, int], tuple] = {}
        dup_archive = 0
        mismatched = []
        not_sent = []
        for sym, stream, recv, sid, seq, uid, bids, asks, hour, fname in archived_rows:
            key = (stream, uid)
            if key in arch:
                dup_archive += 1
                continue
            arch[key] = (sid, seq, recv)
            s = sent.get(key)
            if s is None:
                not_sent.append(key)
                continue
            data = s[1]
            want_b = [(float(p), float(q)) for p, q in data["bids"]]
            want_a = [(float(p), float(q)) for p, q in data["asks"]]
            got_b = [(x["price"], x["qty"]) for x in bids]
            got_a = [(x["price"], x["qty"]) for x in asks]
            if got_b != want_b or got_a != want_a or sym != stream.split("@")[0].upper():
                mismatched.append(key)
            if int(hour) != datetime.fromtimestamp(recv / 1e6, tz=timezone.utc).hour:
                mismatched.append(("wrong hour folder", key))
        seq_dups = len(archived_rows) - len({(a[3], a[4]) for a in archived_rows})
        ack_missing = [k for k in ack if k not in arch]
        unsampled = sum(1 for k in arch if k not in ack)
        r.update(
            messages_sent=len(sent), acknowledged_sampled=len(ack), archived_rows=len(archived_rows),
            archived_distinct=len(arch), duplicates_in_archive=dup_archive, session_seq_duplicates=seq_dups,
            duplicates_in_buffer=len(self.sampler.dup_ids), acknowledged_not_archived=len(ack_missing),
            archived_not_sent=len(not_sent), archived_values_mismatched=len(mismatched),
            archived_not_seen_by_sampler=unsampled, ack_samples=self.sampler.samples,
        )
        if dup_archive or seq_dups:
            fail(f"{dup_archive} duplicate (stream, update id) and {seq_dups} duplicate (session, seq) rows in the archive")
        if self.sampler.dup_ids:
            fail(f"{len(self.sampler.dup_ids)} keys committed twice in the buffer, e.g. {self.sampler.dup_ids[:3]}")
        if ack_missing:
            fail(f"{len(ack_missing)} acknowledged messages are not in the archive, e.g. {ack_missing[:5]}")
        if not_sent:
            fail(f"{len(not_sent)} archived rows were never sent, e.g. {not_sent[:5]}")
        if mismatched:
            fail(f"{len(mismatched)} archived rows differ from what was sent, e.g. {mismatched[:5]}")

        # -- every missing message is explained by a kill or a recorded outage
        conn = ro_connect(self.buffer)
        sessions = conn.execute(
            "SELECT session_id, opened_us, closed_us, close_reason, first_recv_us, last_recv_us FROM sessions ORDER BY 1"
        ).fetchall()
        stored = {**{k: (v[1], v[3]) for k, v in ack.items()}, **{k: (v[0], v[2]) for k, v in arch.items()}}
        by_stream: dict[str, list[tuple[int, int, int]]] = defaultdict(list)  # uid, session, send_us
        for (stream, uid), (sid, _recv) in stored.items():
            by_stream[stream].append((uid, sid, sent[(stream, uid)][0] if (stream, uid) in sent else 0))
        for v in by_stream.values():
            v.sort()
        kill_times = [k.kill_us for k in self.kills]
        windows: dict[int, dict] = {k.n: {"kill_us": k.kill_us, "lost": 0, "window_ms": 0.0} for k in self.kills}
        buckets = Counter()
        unexplained = []
        reasons = {s[0]: s[3] for s in sessions}
        outage_reasons = Counter()
        for (stream, uid), (send_us, _data) in sorted(sent.items()):
            if (stream, uid) in stored:
                continue
            lst = by_stream.get(stream, [])
            i = bisect.bisect_left(lst, (uid,))
            prev = lst[i - 1] if i > 0 else None
            nxt = lst[i] if i < len(lst) else None
            if prev is None:
                buckets["before_first_stored"] += 1
                continue
            if nxt is None:
                if send_us >= quiet["t_flow_us"]:
                    buckets["after_feed_paused"] += 1
                else:
                    unexplained.append((stream, uid, send_us, "after the last stored message"))
                continue
            if prev[1] == nxt[1]:
                unexplained.append((stream, uid, send_us, f"inside session {prev[1]}"))
                continue
            # a session boundary: a kill in between, or an outage closing session prev[1]
            j = bisect.bisect_left(kill_times, prev[2])
            kill = self.kills[j] if j < len(self.kills) and self.kills[j].kill_us <= nxt[2] else None
            if kill is not None and send_us <= kill.kill_us:
                w = windows[kill.n]
                w["lost"] += 1
                span = w.setdefault("streams", {}).setdefault(stream, [send_us, send_us, 0, prev[2]])
                span[0], span[1], span[2] = min(span[0], send_us), max(span[1], send_us), span[2] + 1
                buckets["crash_window"] += 1
            elif kill is not None:
                buckets["collector_down_after_kill"] += 1
            else:
                buckets["outage_session_boundary"] += 1
                reason = reasons.get(prev[1]) or "still open"
                if not reasons.get(prev[1]):
                    unexplained.append((stream, uid, send_us, f"session {prev[1]} ended without a recorded close"))
                outage_reasons[reason.split(":")[0].split("(")[0].strip()] += 1
        r["missing_by_cause"] = dict(buckets)
        r["outage_losses_by_close_reason"] = dict(outage_reasons)
        r["unexplained_losses"] = len(unexplained)
        if unexplained:
            fail(f"{len(unexplained)} sent messages lost without a crash or recorded outage, e.g. {unexplained[:5]}")
        # Data lost per kill and stream: from the first to the last lost message, plus the one
        # cadence each message stands for (one message lost = 1000/rate ms of data). Measured from
        # the lost messages themselves, not from the last acknowledged one, which may lie before an
        # outage (a disconnect, a reconnect) inside the same collector's life.
        cadence_ms = 1000.0 / self.rate
        for w in windows.values():
            st = w.get("streams", {})
            for name, (first, last, n, prev_send) in list(st.items()):
                st[name] = {"lost": n, "data_ms": round((last - first) / 1000 + cadence_ms, 1),
                            "last_ack_to_kill_ms": round((w["kill_us"] - prev_send) / 1000, 1)}
            w["window_ms"] = max((x["data_ms"] for x in st.values()), default=0.0)
        wl = [w["window_ms"] for w in windows.values()]
        lossy = [w for w in wl if w > 0]
        r["crash_windows"] = {
            "kills": len(wl), "kills_with_loss": len(lossy),
            "lost_messages": sum(w["lost"] for w in windows.values()),
            "max_ms": round(max(wl), 1) if wl else 0.0,
            "median_ms": round(statistics.median(wl), 1) if wl else 0.0,
            "median_ms_of_lossy": round(statistics.median(lossy), 1) if lossy else 0.0,
            "p90_ms": round(sorted(wl)[int(0.9 * (len(wl) - 1))], 1) if wl else 0.0,
            "per_kill": [{"kill": n, **w} for n, w in windows.items()],
        }
        over = [w for w in wl if w > self.max_window_ms]
        if over:
            fail(f"{len(over)} crash windows above {self.max_window_ms} ms: {sorted(over)[-5:]}")

        # -- outages in the coverage data
        self._check_coverage(conn, sessions, cov_rows, r)
        if self.every_kind:
            self._oracle_kinds(quiet, sessions, r)

        # -- the buffer itself
        integrity = conn.execute("PRAGMA integrity_check").fetchall()
        r["integrity_check"] = integrity[0][0] if len(integrity) == 1 else str(integrity)
        if integrity != [("ok",)]:
            fail(f"integrity_check: {integrity[:5]}")
        parts = conn.execute("SELECT dataset, hour_us, part, id_lo, id_hi, state, object_key FROM export_parts").fetchall()
        not_archived = [p for p in parts if p[5] != "archived"]
        if not_archived:
            fail(f"{len(not_archived)} export parts not archived at the end: {not_archived[:3]}")
        remaining = {row[0] for row in conn.execute("SELECT id FROM depth_snapshot")}
        left_elsewhere = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                          for t in ("depth_update", "depth_rest_snapshot", "trade", "agg_trade", "book_ticker",
                                    "depth_sync", "trade_gap")}
        r["buffer_rows_left_other_tables"] = {t: n for t, n in left_elsewhere.items() if n}
        if self.every_kind and any(left_elsewhere.values()):
            fail(f"rows left in the buffer after the final cleanup with retention 0: {r['buffer_rows_left_other_tables']}")
        ranges = defaultdict(list)
        for ds, h, _n, lo, hi, state, _k in parts:
            if ds == "depth_snapshot" and state == "archived":
                ranges[h].append((lo, hi))
        bad_deletes = []
        for key, (rid, _sid, _seq, recv) in ack.items():
            if rid in remaining:
                continue
            h = recv - recv % HOUR_US
            if not any(lo < rid <= hi for lo, hi in ranges.get(h, ())):
                bad_deletes.append((key, rid))
        if bad_deletes:
            fail(f"{len(bad_deletes)} rows deleted from the buffer outside any archived part: {bad_deletes[:3]}")
        r["buffer_rows_left"] = len(remaining)
        if remaining:
            fail(f"{len(remaining)} rows left in the buffer after the final cleanup with retention 0")
        open_sessions = [s for s in sessions if s[2] is None]
        if open_sessions:
            fail(f"{len(open_sessions)} sessions left open: {open_sessions[:3]}")
        ledger_keys = {f"{PREFIX}/{p[6]}" for p in parts if p[6]}
        orphans = [k for k in object_keys if k not in ledger_keys
                   and k.startswith(tuple(f"{PREFIX}/{d}/" for d in (*ID, "depth_rest_snapshot", "coverage")))]
        r["objects"] = len(object_keys)
        r["orphan_objects"] = len(orphans)
        if orphans:
            fail(f"{len(orphans)} objects in the archive that no ledger part names: {orphans[:3]}")
        r["quarantined"] = conn.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        r["dropped_duplicates"] = conn.execute("SELECT count(*) FROM dropped").fetchone()[0]
        r["sessions"] = len(sessions)
        r["spill_episodes"] = sum(p.read_text(errors="replace").count("spilling to") for p in self.logs.glob("collector-*.log"))
        conn.close()
        r["malformed_sent"] = dict(malformed_sent)
        # A malformed frame may go unquarantined only where data may be lost too: received in the
        # crash window, at most max_window_ms before a kill -9. Every other one must be quarantined.
        n_malformed = sum(malformed_sent.values())
        at_risk = sum(1 for t in self.malformed_send_us
                      if any(0 <= k.kill_us - t <= self.max_window_ms * 1000 for k in self.kills))
        r["malformed_in_crash_windows"] = at_risk
        if not n_malformed - at_risk <= r["quarantined"] <= n_malformed:
            fail(f"{r['quarantined']} frames quarantined; {n_malformed} malformed sent, {at_risk} of them "
                 f"in a crash window")

        # -- new data end to end after the faults stopped
        after = Counter(k[0] for k, v in arch.items() if v[2] > quiet["t_quiet_us"])
        r["archived_after_faults_stopped"] = dict(after)
        streams = [f"{s}@{self.streams}" for s in self.symbols.split(",")]
        if not all(after.get(s) for s in streams):
            fail(f"rows received after the faults stopped did not reach the archive for every stream: {dict(after)}")

        # -- what was done
        r["duration_s"] = self.duration
        r["seed"] = self.seed
        r["rate_per_stream"] = self.rate
        r["streams"] = streams
        r["collector_starts"] = self.collector_starts
        r["collector_kills"] = len(self.kills)
        r["feed_faults"] = dict(Counter(f["kind"] for f in self.feed_faults))
        r["s3_faults_injected"] = dict(self.s3_injections)
        r["runs"] = dict(Counter(f"{x.job}:{x.outcome}" for x in self.runs))
        return r

    def _oracle_kinds(self, quiet: dict, sessions, r: dict) -> None:
        """Every dataset on both markets: acknowledged rows archived once with the values sent,
        every message missing at a session boundary, every diff-depth discontinuity and
        trade-id hole in the archive recorded as a ``break`` or ``trade_gap`` coverage record."""
        fail = self.failures.append
        archive = self.workdir / "archive_copy" / PREFIX
        sent: dict[tuple, tuple[int, dict]] = {}
        for line in self.sent_log.read_bytes().splitlines():
            rec = orjson.loads(line)
            if "data" not in rec:
                continue
            key = (rec["kind"], rec["market"], rec["stream"], rec["id"])
            if key not in sent or rec["send_us"] < sent[key][0]:
                sent[key] = (rec["send_us"], rec)
        arch: dict[tuple, tuple[int, int, int]] = {}  # key -> (session, seq, recv_us)
        arch_rows: dict[tuple, tuple] = {}
        dups, seq_dups, not_sent, mismatched = Counter(), Counter(), [], []
        for dataset, cols in COLUMNS.items():
            if not (archive / dataset).exists():
                fail(f"nothing archived of {dataset}")
                continue
            seqs = Counter()
            idx = 3 + cols.index(ID[dataset])
            for row in read(archive, dataset, ("market", "symbol", "stream", *cols, "session_id", "seq", "recv_time")):
                values, (sid, seq, recv) = row[:-3], row[-3:]
                seqs[(sid, seq)] += 1
                key = (dataset, values[0], values[2], values[idx])
                if key in arch:
                    dups[dataset] += 1
                    continue
                arch[key], arch_rows[key] = (sid, seq, recv), values
                s = sent.get(key)
                if s is None:
                    not_sent.append(key)
                elif expected(s[1]) != values:
                    mismatched.append(key)
            seq_dups[dataset] = sum(n - 1 for n in seqs.values() if n > 1)
        ack = self.kind_sampler.rows
        ack_missing = [k for k in ack if k not in arch]
        r["every_kind"] = kinds = {
            "sent": Counter(k[0] for k in sent), "acknowledged_sampled": Counter(k[0] for k in ack),
            "archived": Counter(k[0] for k in arch), "streams_archived": sorted({f"{k[1]}:{k[2]}" for k in arch}),
            "duplicates_in_archive": sum(dups.values()), "session_seq_duplicates": sum(seq_dups.values()),
            "duplicates_in_buffer": len(self.kind_sampler.dup_ids), "acknowledged_not_archived": len(ack_missing),
            "archived_not_sent": len(not_sent), "archived_values_mismatched": len(mismatched),
        }
        if dups or any(seq_dups.values()):
            fail(f"every kind: duplicates in the archive {dict(dups)}, (session, seq) duplicates {dict(seq_dups)}")
        if self.kind_sampler.dup_ids:
            fail(f"every kind: keys committed twice in the buffer, e.g. {self.kind_sampler.dup_ids[:3]}")
        if ack_missing:
            fail(f"every kind: {len(ack_missing)} acknowledged rows not in the archive, e.g. {ack_missing[:5]}")
        if not_sent:
            fail(f"every kind: {len(not_sent)} archived rows never sent, e.g. {not_sent[:5]}")
        if mismatched:
            fail(f"every kind: {len(mismatched)} archived rows differ from what was sent, e.g. {mismatched[:5]}")

        # every seq gap inside a session is a frame quarantined or dropped as a duplicate (what a
        # kill loses is the uncommitted tail of a session, never a hole inside it)
        conn = ro_connect(self.buffer)
        try:
            explained = set(conn.execute("SELECT session_id, seq FROM quarantine UNION SELECT session_id, seq FROM dropped"))
        finally:
            conn.close()
        seqs_by_session: dict[int, set[int]] = defaultdict(set)
        for sid, seq, _recv in arch.values():
            seqs_by_session[sid].add(seq)
        seq_gaps = Counter()
        unexplained_seq = []
        for sid, seqs in seqs_by_session.items():
            for seq in range(0, max(seqs)):
                if seq in seqs:
                    continue
                if (sid, seq) in explained:
                    seq_gaps["quarantined_or_duplicate"] += 1
                else:
                    unexplained_seq.append((sid, seq))
        kinds["seq_gaps"] = dict(seq_gaps)
        kinds["unexplained_seq_gaps"] = len(unexplained_seq)
        if unexplained_seq:
            fail(f"every kind: {len(unexplained_seq)} seq numbers missing inside sessions and neither quarantined "
                 f"nor dropped as duplicates, e.g. {unexplained_seq[:5]}")

        # what was sent but is stored nowhere lies at a session boundary (a kill or a recorded outage)
        stored = {**{k: v[1] for k, v in ack.items()}, **{k: v[0] for k, v in arch.items()}}
        by_stream: dict[tuple, list[tuple[int, int]]] = defaultdict(list)
        for (dataset, m, stream, uid), sid in stored.items():
            by_stream[(dataset, m, stream)].append((uid, sid))
        for v in by_stream.values():
            v.sort()
        reasons = {s[0]: s[3] for s in sessions}
        causes, unexplained = Counter(), []
        for (dataset, m, stream, uid), (send_us, _) in sent.items():
            if (dataset, m, stream, uid) in stored:
                continue
            lst = by_stream.get((dataset, m, stream), [])
            i = bisect.bisect_left(lst, (uid,))
            prev, nxt = (lst[i - 1] if i > 0 else None), (lst[i] if i < len(lst) else None)
            if prev is None:
                causes["before_first_stored"] += 1
            elif nxt is None:
                if send_us >= quiet["t_flow_us"]:
                    causes["after_feed_paused"] += 1
                else:
                    unexplained.append((dataset, m, stream, uid, "after the last stored message"))
            elif prev[1] == nxt[1]:
                unexplained.append((dataset, m, stream, uid, f"inside session {prev[1]}"))
            elif not reasons.get(prev[1]):
                unexplained.append((dataset, m, stream, uid, f"session {prev[1]} ended without a recorded close"))
            else:
                causes["session_boundary"] += 1
        kinds["missing_by_cause"] = dict(causes)
        kinds["unexplained_losses"] = len(unexplained)
        if unexplained:
            fail(f"every kind: {len(unexplained)} sent messages lost inside a session, e.g. {unexplained[:5]}")

        # continuity: each discontinuity the archive holds is a recorded break or trade gap
        cov = read(archive, "coverage", ("record", "market", "stream", "first_id", "last_id", "reason"))
        breaks = {(m, s, a, b) for rec, m, s, a, b, _ in cov if rec == "break"}
        gaps = {(m, s, a, b) for rec, m, s, a, b, _ in cov if rec == "trade_gap"}
        # A message sent while the collector was down can come back later as a replay, after the
        # restart recorded the gap: the archive then holds part of a recorded gap, and the hole
        # left is inside the record (the record says more was missing than finally is).
        break_from: dict[tuple, list] = defaultdict(list)  # (market, stream, U after) -> u before
        for m, st, a, b in breaks:
            break_from[(m, st, b)].append(a)
        gap_ranges: dict[tuple, list] = defaultdict(list)
        for m, st, a, b in gaps:
            gap_ranges[(m, st)].append((a, b))
        cleaned = self.cleanups_ok

        def after_cleanup(recv_a: int, recv_b: int) -> bool:
            # the restart between two rows found the earlier one freed by cleanup (retention 0):
            # it could not know the last id, so it records the stream's start again, not a gap
            return any(recv_a <= start and end <= recv_b for start, end in cleaned)

        n_breaks = n_gaps = restarted_after_cleanup = filled_later = 0
        unrecorded = []
        for (dataset, m, stream), lst in sorted(by_stream.items()):
            if dataset not in ("depth_update", "trade", "agg_trade"):
                continue
            ids = [uid for uid, _ in lst if (dataset, m, stream, uid) in arch_rows]
            for a, b in zip(ids, ids[1:]):
                ka, kb = (dataset, m, stream, a), (dataset, m, stream, b)
                if dataset == "depth_update":
                    row_b = arch_rows[kb]
                    first_b, prev_b = row_b[3], row_b[5]
                    if (prev_b == a) if m == "usdm" else (first_b == a + 1):
                        continue
                    if (m, stream, a, first_b) in breaks:
                        n_breaks += 1
                    elif any(x is not None and x < a for x in break_from[(m, stream, first_b)]):
                        filled_later += 1
                    elif (m, stream, None, first_b) in breaks and after_cleanup(arch[ka][2], arch[kb][2]):
                        restarted_after_cleanup += 1
                    else:
                        unrecorded.append(("break", m, stream, a, first_b))
                elif b != a + 1:
                    if (m, stream, a + 1, b - 1) in gaps:
                        n_gaps += 1
                    elif any(f <= a + 1 and b - 1 <= l for f, l in gap_ranges[(m, stream)]):
                        filled_later += 1
                    elif after_cleanup(arch[ka][2], arch[kb][2]):
                        restarted_after_cleanup += 1
                    else:
                        unrecorded.append(("trade_gap", m, stream, a + 1, b - 1))
        kinds.update(breaks_recorded=n_breaks, trade_gaps_recorded=n_gaps, unrecorded_discontinuities=len(unrecorded),
                     restarts_after_cleanup=restarted_after_cleanup, recorded_then_partly_replayed=filled_later)
        if unrecorded:
            fail(f"every kind: {len(unrecorded)} discontinuities in the archive without a coverage record, "
                 f"e.g. {unrecorded[:5]}")

    def _check_coverage(self, conn, sessions, cov_rows, r) -> None:
        fail = self.failures.append
        # kills: every session the killed process opened is closed as a crash, before the kill
        kill_ok = kill_no_session = 0
        for k in self.kills:
            mine = [s for s in sessions if k.started_us <= s[1] <= k.kill_us]
            if not mine:
                kill_no_session += 1
                continue
            # each is closed at or before the kill: by the start-up repair ("crash or kill", at its
            # last stored message) or, if it had ended just before, with its own reason
            bad = [s for s in mine if s[2] is None or s[2] > k.kill_us or not s[3]]
            if bad:
                fail(f"kill {k.n} at {k.kill_us} is not recorded as a crash-closed session: {mine}")
            else:
                kill_ok += 1
        # disconnects: the session live at that moment ends within 15 s
        disc_ok = disc_none = 0
        for f in self.feed_faults:
            if f["kind"] not in ("disconnect", "disconnect_abrupt", "replay", "reject", "server_shutdown"):
                continue
            t = f["t_us"]
            live = [s for s in sessions if s[1] <= t and (s[2] is None or s[2] >= t) and s[4] is not None]
            if not live:
                disc_none += 1
                continue
            ended = [s for s in live if s[2] is not None and s[2] <= t + 15_000_000]
            if ended:
                disc_ok += 1
            else:
                killed = any(t <= k.kill_us <= t + 15_000_000 for k in self.kills)
                if killed:
                    disc_ok += 1
                else:
                    fail(f"{f['kind']} at {t} did not end the live session(s) {[s[0] for s in live]}")
        # stalls: a gap record in the archived coverage, or a session boundary, covers it per stream
        gaps = defaultdict(list)
        for c in cov_rows:
            if c["record"] == "gap" and c["market"] in ("spot", None):
                gaps[c["stream"]].append((c["start_time"], c["end_time"]))
        streams = [f"{s}@{self.streams}" for s in self.symbols.split(",")]
        stall_ok = stall_ambiguous = stall_no_session = 0
        uncovered = []
        for f in self.feed_faults:
            if not f["kind"].startswith("stall"):
                continue
            t, t0, t1 = f["t_us"], f["t_us"] + 300_000, f["t_us"] + int(f["seconds"] * 1e6) - 300_000
            # a stall silences the connections open when it starts; one opened later is not stalled
            # and may carry the streams meanwhile, so such stalls prove nothing either way
            if any(t - 300_000 < s[1] < t1 for s in sessions):
                stall_ambiguous += 1
                continue
            stalled = [s for s in sessions if s[1] < t and (s[2] is None or s[2] > t)]
            if not stalled:
                stall_no_session += 1  # the collector was not connected: the session gap records it
                continue
            for s in stalled:
                if s[2] is not None and s[2] <= t1 + 2_000_000:
                    continue  # the session ended in the stall (watchdog, kill, disconnect): a session boundary
                for st in streams:
                    if not any(a <= t0 and b >= t1 for a, b in gaps[st]):
                        uncovered.append((t, f["seconds"], s[0], st))
            stall_ok += 1
        if uncovered:
            fail(f"{len(uncovered)} stall(s) not in the coverage data (no gap record, no session boundary): {uncovered[:3]}")
        # the archived coverage names every session that received data
        cov_sessions = {c["session_id"] for c in cov_rows if c["record"] == "session"}
        with_data = {s[0] for s in sessions if s[4] is not None}
        missing_cov = sorted(with_data - cov_sessions)
        if missing_cov:
            fail(f"{len(missing_cov)} sessions with data are absent from the archived coverage: {missing_cov[:3]}")
        # the newest coverage snapshot of each session shows it closed, with the buffer's reason
        latest: dict[int, dict] = {}
        for c in cov_rows:
            if c["record"] == "session":
                if c["session_id"] not in latest or c["as_of"] >= latest[c["session_id"]]["as_of"]:
                    latest[c["session_id"]] = c
        reasons = {s[0]: s[3] for s in sessions}
        stale = [sid for sid, c in latest.items() if c["close_reason"] != reasons.get(sid)]
        r["coverage"] = {
            "kills_recorded": kill_ok, "kills_before_any_session": kill_no_session,
            "disconnects_recorded": disc_ok, "disconnects_with_no_live_session": disc_none,
            "stalls_checked": stall_ok, "stalls_uncovered": len(uncovered),
            "stalls_while_disconnected": stall_no_session, "stalls_ambiguous": stall_ambiguous,
            "gap_records": sum(len(v) for v in gaps.values()), "session_records": len(cov_sessions),
            "sessions_with_stale_close_in_coverage": len(stale),
        }
        if stale:
            self.notes.append(
                f"{len(stale)} sessions' newest archived coverage row still shows them open or with another "
                f"close reason than the buffer (the coverage object of the hour's last part was written before "
                f"the session was closed), e.g. {stale[:3]}"
            )


def main(argv: list[str] | None = None) -> int:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, required=True, help="seconds of faults")
    p.add_argument("--report", type=Path, default=None, help="write the JSON report here")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--rate", type=float, default=50.0, help="messages per second per stream")
    p.add_argument("--workdir", type=Path, default=None, help="keep buffer, logs and sent log here")
    p.add_argument("--max-window-ms", type=float, default=100.0, help="fail if a crash window loses more data")
    p.add_argument("--depth20-only", action="store_true",
                   help="record spot depth20@100ms only (the collector of before every kind)")
    a = p.parse_args(argv)
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    if a.workdir:
        a.workdir.mkdir(parents=True, exist_ok=True)
        workdir, cleanup = a.workdir, False
    else:
        workdir, cleanup = Path(tempfile.mkdtemp(prefix="orderbook-chaos-")), True
    chaos = Chaos(workdir, a.duration, seed, rate=a.rate, max_window_ms=a.max_window_ms,
                  every_kind=not a.depth20_only)
    report = chaos.run()
    report["command"] = " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:]))
    summary = {k: v for k, v in report.items() if k not in ("crash_windows",)}
    summary["crash_windows"] = {k: v for k, v in report["crash_windows"].items() if k != "per_kill"}
    print(json.dumps(summary, indent=2, default=str))
    if a.report:
        a.report.parent.mkdir(parents=True, exist_ok=True)
        a.report.write_text(json.dumps(report, indent=2, default=str))
    if report["passed"]:
        log("PASSED")
        if cleanup:
            shutil.rmtree(workdir, ignore_errors=True)
        return 0
    log(f"FAILED ({len(report['failures'])} failures); work directory kept: {workdir}")
    for f in report["failures"]:
        log(f"  - {f}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
