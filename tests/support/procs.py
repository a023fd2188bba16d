"""Real processes for end-to-end tests: the simulator and the collector, on loopback."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: ``python -c JOB_RUN <job> [<partition key>]``: one Dagster run in a process of its own
#: (so a test can SIGKILL it), in-process executor, on the instance of $DAGSTER_HOME.
JOB_RUN = (
    "import sys\n"
    "from dagster import DagsterInstance\n"
    "from orderbook_assets.definitions import defs\n"
    "job = defs.resolve_job_def(sys.argv[1])\n"
    "kw = {'partition_key': sys.argv[2]} if len(sys.argv) > 2 else {}\n"
    "r = job.execute_in_process(instance=DagsterInstance.get(), raise_on_error=False, **kw)\n"
    "sys.exit(0 if r.success else 1)\n"
)


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update({k: str(v) for k, v in extra.items()})
    return env


class SimulatorProcess:
    """``python -m tools.simulator`` in its own process, controlled over HTTP."""

    def __init__(self, *args: str, sent_log: Path | None = None) -> None:
        cmd = [sys.executable, "-m", "tools.simulator", "--port", "0", *args]
        if sent_log is not None:
            cmd += ["--sent-log", str(sent_log)]
        self.proc = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        m = re.search(r"ws://127\.0\.0\.1:(\d+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"simulator did not start: {line!r}")
        self.port = int(m.group(1))
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.http_url = f"http://127.0.0.1:{self.port}"

    def control(self, name: str, **params) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        req = urllib.request.Request(f"{self.http_url}/control/{name}?{query}", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.read().decode()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> "SimulatorProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_collector(buffer: Path, ws_url: str, symbols: str = "btcusdt,ethusdt", **env: str) -> subprocess.Popen:
    base = dict(
        ORDERBOOK_SYMBOLS=symbols,
        ORDERBOOK_STREAMS="depth20@100ms",
        ORDERBOOK_WS_URL=ws_url,
        ORDERBOOK_BUFFER=str(buffer),
        ORDERBOOK_METRICS_PORT="-1",
        ORDERBOOK_LOG_LEVEL="WARNING",
    )
    base.update(env)
    return subprocess.Popen(
        [sys.executable, "-m", "orderbook_collector"], env=child_env(**base), stderr=subprocess.PIPE, text=True
    )


def query(buffer: Path, sql: str, *args) -> list[tuple]:
    """Read committed state through a separate connection, as any other process would."""
    conn = sqlite3.connect(f"file:{buffer}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except sqlite3.OperationalError:
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def stored_count(buffer: Path) -> int:
    if not buffer.exists():
        return 0
    return query(buffer, "SELECT count(*) FROM depth_snapshot")[0][0]


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children, grandchildren, ...), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def running(pids) -> set[int]:
    """The pids among ``pids`` that still run (zombies count as gone)."""
    alive = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.add(pid)
        except OSError:
            pass
    return alive
