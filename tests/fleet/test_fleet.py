"""A fleet on one machine, every part real: PostgreSQL, the simulated exchange, two collectors with
their own buffers recording the same streams (depth20 and trades), a code server per collector and one for the merge
(``dagster api grpc`` on loopback ports), the daemon and the webserver.

- Archive runs of each host's hour, launched through the webserver's GraphQL mutation (as the UI
  does), run in the process tree of that host's code server (DefaultRunLauncher).
- host_b is SIGKILLed for 20 s and restarted: the merged hour holds every message the simulator
  sent (host_a was up throughout), each once, and no coverage gap while host_a was up, while
  host_b's own coverage shows its outage.
- The merge of each hour is requested by ``fleet_merge_sensor`` (the daemon) once both hosts archived it.
- host_b's code server is killed (its process group, as a host crash would) in the middle of its
  archive run and started again: run monitoring marks the run failed once over its maximum
  runtime, run retries start it again on the new server, and the host's parts hold each of its
  buffer's rows exactly once.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import duckdb
import orjson
import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from support.procs import SimulatorProcess, child_env, descendants, query, running, wait_for
from support.webserver import free_port, graphql
from tools.fleet import (code_server_cmd, daemon_cmd, fleet_env, host_env, merge_env, webserver_cmd, workspace_yaml,
                         write_home)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
S = 1_000_000
HOSTS = ("host_a", "host_b")
#: The killed run is marked failed by run monitoring once it has run this long (then retried).
MAX_RUNTIME = 25

LAUNCH = """
mutation($p: ExecutionParams!) {
  launchRun(executionParams: $p) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""
LOCATIONS = "{ workspaceOrError { ... on Workspace { locationEntries { name locationOrLoadError { __typename } } } } }"


class Proc:
    """A child process in its own process group, its output in a file."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], logs: Path) -> None:
        self.name, self.cmd, self.env, self.log_path = name, cmd, env, logs / f"{name}.log"
        self.start()

    def start(self) -> None:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill_group(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever it left in its group
        except ProcessLookupError:
            pass
        self.proc.wait()
        return self.proc.returncode


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {n: float(v) for n, _, v in (line.rpartition(" ") for line in text.splitlines() if line and line[0] != "#")}


def sent_by_conn(log: Path) -> dict[int, list[tuple[str, str, int]]]:
    """conn → (dataset, stream, dedup id) of every data frame the simulator sent it."""
    out: dict[int, list[tuple[str, str, int]]] = {}
    for line in log.read_bytes().splitlines():
        rec = orjson.loads(line)
        if "data" in rec and "conn" in rec:
            out.setdefault(rec["conn"], []).append((rec["kind"], rec["stream"], rec["id"]))
    return out


def rows(buffer: Path) -> int:
    return query(buffer, "SELECT count(*) FROM depth_snapshot")[0][0] if buffer.exists() else 0


def launch(base: str, location: str, job: str, partition: str, **tags: str) -> str:
    params = {"selector": {"repositoryLocationName": location, "repositoryName": "__repository__", "jobName": job},
              "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition},
                                             *({"key": k, "value": v} for k, v in tags.items())]},
              "mode": "default"}
    result = graphql(base, LAUNCH, {"p": params})["launchRun"]
    assert result["__typename"] == "LaunchRunSuccess", result
    return result["run"]["runId"]


def worker_pid(instance: DagsterInstance, run_id: str) -> int | None:
    """The run worker's pid: the process that reported the run's start."""
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.RUN_START):
        return entry.dagster_event.pid
    return None


def wait_run(instance: DagsterInstance, run_id: str, timeout: float, *, what: str) -> DagsterRunStatus:
    def finished():
        run = instance.get_run_by_id(run_id)
        return run.status if run.is_finished else None

    return wait_for(finished, timeout=timeout, interval=0.5, what=what)


def hours_of(*buffers: Path) -> list[str]:
    lo = min(query(b, "SELECT min(recv_us) FROM depth_snapshot")[0][0] for b in buffers)
    hi = max(query(b, "SELECT max(recv_us) FROM depth_snapshot")[0][0] for b in buffers)
    hour = 3600 * S
    return [time.strftime("%Y-%m-%d-%H:00", time.gmtime(h / S)) for h in range(lo // hour * hour, hi + 1, hour)]


def test_fleet_on_one_machine(tmp_path, postgres, pg_url, monkeypatch):
    logs = tmp_path / "logs"
    logs.mkdir()
    home = write_home(tmp_path / "dagster_home")
    archive = tmp_path / "archive"
    env = fleet_env(child_env(ORDERBOOK_LOG_LEVEL="INFO", ORDERBOOK_STREAMS="depth20@100ms,trade",
                              ORDERBOOK_SYMBOLS="btcusdt"), home, pg_url, archive)
    monkeypatch.setenv("DAGSTER_PG_URL", pg_url)
    buffers = {h: tmp_path / h / "buffer.sqlite3" for h in HOSTS}
    for b in buffers.values():
        b.parent.mkdir()
    procs: list[Proc] = []
    sent_log = tmp_path / "sent.ndjson"
    instance = DagsterInstance.from_config(str(home))
    with SimulatorProcess("--symbols", "btcusdt", sent_log=sent_log) as sim:
        env.update(ORDERBOOK_WS_URL=sim.ws_url, ORDERBOOK_REST_URL=sim.http_url)
        try:
            # ---- Dagster: a code server per host and one for the merge, then daemon and webserver
            ports = {h: free_port() for h in (*HOSTS, "fleet")}
            servers = {h: Proc(f"code-server-{h}", code_server_cmd(ports[h]), host_env(env, h, buffers[h]), logs)
                       for h in HOSTS}
            servers["fleet"] = Proc("code-server-fleet", code_server_cmd(ports["fleet"]), merge_env(env, HOSTS), logs)
            procs += servers.values()
            workspace = tmp_path / "workspace.yaml"
            workspace.write_text(workspace_yaml(ports))
            web_port = free_port()
            base = f"http://127.0.0.1:{web_port}"
            # ---- collectors: host_a first (the simulator's connection 1), then host_b (connection 2)
            mports = {h: free_port() for h in HOSTS}
            collectors = {h: Proc(f"collector-{h}", [sys.executable, "-m", "orderbook_collector"],
                                  dict(host_env(env, h, buffers[h]), ORDERBOOK_METRICS_PORT=str(mports[h])), logs)
                          for h in HOSTS[:1]}
            procs += collectors.values()
            wait_for(lambda: rows(buffers["host_a"]) > 0, timeout=60, what="host_a's first rows")
            collectors["host_b"] = Proc("collector-host_b", [sys.executable, "-m", "orderbook_collector"],
                                        dict(host_env(env, "host_b", buffers["host_b"]),
                                             ORDERBOOK_METRICS_PORT=str(mports["host_b"])), logs)
            procs.append(collectors["host_b"])
            for name, cmd in (("daemon", daemon_cmd(workspace)), ("webserver", webserver_cmd(workspace, web_port))):
                procs.append(Proc(name, cmd, env, logs))

            # ---- host_b records 5 s, is killed for 20 s (host_a records on), then records again
            wait_for(lambda: rows(buffers["host_b"]) >= 50, timeout=60, what="5 s of host_b's rows")
            collectors["host_b"].kill_group()
            killed_us = time.time_ns() // 1000
            wait_for(lambda: query(buffers["host_a"], "SELECT max(recv_us) FROM depth_snapshot")[0][0]
                     >= killed_us + 20 * S, timeout=60, interval=0.2, what="20 s of host_a's rows after the kill")
            collectors["host_b"].start()
            restarted_us = time.time_ns() // 1000
            wait_for(lambda: query(buffers["host_b"], "SELECT count(*) FROM depth_snapshot WHERE recv_us > ?",
                                   restarted_us)[0][0] >= 30, timeout=60, what="host_b recording again")
            # quiesce: no more data; each live connection receives everything it was sent, then a clean stop
            sim.control("stall", seconds=600)
            live = {"host_a": 1, "host_b": 3}  # the simulator numbers connections in accept order

            def all_received() -> bool:
                sent = sent_by_conn(sent_log)
                return all(metrics(mports[h])["orderbook_frames_received_total"] == len(sent.get(c, ())) for h, c in
                           live.items())

            wait_for(all_received, timeout=30, interval=0.2, what="every frame sent to reach the live collectors")
            for h in HOSTS:
                assert collectors[h].stop() == 0, collectors[h].log()[-3000:]
            sent = sent_by_conn(sent_log)
            assert sorted(sent) == [1, 2, 3], f"unexpected connections {sorted(sent)}"

            # ---- the webserver serves the three locations
            def loaded():
                entries = graphql(base, LOCATIONS)["workspaceOrError"]["locationEntries"]
                return {e["name"] for e in entries if e["locationOrLoadError"]["__typename"] == "RepositoryLocation"}

            wait_for(lambda: loaded() == {*HOSTS, "fleet"}, timeout=120, interval=1, what="three code locations loaded")

            # ---- each host's hours, launched through the webserver, run under that host's code server
            partitions = hours_of(*buffers.values())
            for key in partitions:
                run_id = launch(base, "host_a", "archive_hour_host_a", key)
                pid = wait_for(lambda: worker_pid(instance, run_id), timeout=120, interval=0.1,
                               what="host_a's run worker to start")
                tree = descendants(servers["host_a"].pid)
                assert pid in tree and pid not in descendants(servers["host_b"].pid), (pid, tree)
                assert wait_run(instance, run_id, 120, what="host_a's run") == DagsterRunStatus.SUCCESS

            # host_b's first hour: its code server dies mid-run (with its run worker), and comes back
            first, *rest = partitions
            run_id = launch(base, "host_b", "archive_hour_host_b", first, **{"dagster/max_runtime": str(MAX_RUNTIME)})
            pid = wait_for(lambda: worker_pid(instance, run_id), timeout=120, interval=0.1,
                           what="host_b's run worker to start")
            assert pid in descendants(servers["host_b"].pid)
            servers["host_b"].kill_group()
            wait_for(lambda: not running([pid]), timeout=10, what="the run worker to die with its code server")
            servers["host_b"].start()
            try:
                status = wait_run(instance, run_id, 240, what="the orphaned run marked failed")
            except AssertionError as exc:
                monitoring = [line for line in (logs / "daemon.log").read_text(errors="replace").splitlines()
                              if "Monitoring" in line or run_id in line]
                raise AssertionError(f"{exc}; run status {instance.get_run_by_id(run_id).status}; daemon:\n"
                                     + "\n".join(monitoring[-40:])) from None
            assert status == DagsterRunStatus.FAILURE

            def retry_done():
                retries = [r for r in instance.get_runs() if r.tags.get("dagster/root_run_id") == run_id]
                return retries[0] if retries and retries[0].is_finished else None

            retry = wait_for(retry_done, timeout=180, interval=1, what="the retry of host_b's run")
            assert retry.status == DagsterRunStatus.SUCCESS, retry.status
            for key in rest:
                rid = launch(base, "host_b", "archive_hour_host_b", key)
                assert wait_run(instance, rid, 120, what="host_b's run") == DagsterRunStatus.SUCCESS

            # ---- the merge of each hour: requested by fleet_merge_sensor once both hosts archived it
            archived_at = max(r.end_time for r in instance.get_run_records(RunsFilter(job_name="archive_hour_host_b")))

            def merged_by_sensor() -> bool:
                done = instance.get_run_records(RunsFilter(job_name="merge_fleet_hour",
                                                           statuses=[DagsterRunStatus.SUCCESS],
                                                           tags={"dagster/sensor_name": "fleet_merge_sensor"}))
                keys = {r.dagster_run.tags["dagster/partition"] for r in done if r.start_time > archived_at}
                return keys == set(partitions)

            wait_for(merged_by_sensor, timeout=180, interval=1, what="the sensor's merge of every hour")
        finally:
            for p in reversed(procs):
                p.stop(signal.SIGINT if p.name in ("daemon", "webserver") else signal.SIGTERM)
            instance.dispose()

    con = duckdb.connect()
    # host_b's parts: each of its buffer's rows once, although its run was killed and retried
    b_rows = query(buffers["host_b"], "SELECT count(*), count(DISTINCT update_id) FROM depth_snapshot")[0]
    b_parts = con.execute(f"SELECT count(*), count(DISTINCT last_update_id) FROM read_parquet("
                          f"'{archive}/hosts/collector=host_b/depth_snapshot/**/*.parquet')").fetchone()
    assert b_parts == b_rows and b_rows[0] == b_rows[1]
    # the merged dataset: every message the simulator sent (host_a was up throughout), each once
    merged = con.execute(f"SELECT stream, last_update_id FROM read_parquet('{archive}/depth_snapshot/**/*.parquet')"
                         ).fetchall()
    every = {(stream, i) for ks in sent.values() for kind, stream, i in ks if kind == "depth_snapshot"}
    assert len(merged) == len(set(merged)), "a message twice in the merged dataset"
    assert set(merged) == every, (len(every - set(merged)), len(set(merged) - every))
    # trades the same way (dedup key market, stream, trade_id), and the merged stream has no trade-id gap
    trades = con.execute(f"SELECT stream, trade_id FROM read_parquet('{archive}/trade/**/fleet.parquet')").fetchall()
    every_trade = {(stream, i) for ks in sent.values() for kind, stream, i in ks if kind == "trade"}
    assert every_trade and len(trades) == len(set(trades)), "a trade twice in the merged dataset"
    assert set(trades) == every_trade, (len(every_trade - set(trades)), len(set(trades) - every_trade))
    merged_gaps = con.execute(f"SELECT count(*) FROM read_parquet('{archive}/coverage/**/fleet.parquet') "
                              "WHERE record = 'trade_gap' AND collector IS NULL").fetchone()[0]
    assert merged_gaps == 0
    # a merged gap only where every collector was silent: while host_a was up, each merged gap lies
    # inside a gap of host_a's own coverage and of host_b's (host_a may itself fall silent, e.g. a
    # seconds-long stall of the shared exchange, so "no merged gap at all" is not the promise);
    # host_b's own coverage shows its 20 s outage
    t0, t1 = (query(buffers["host_a"], f"SELECT {f}(recv_us) FROM depth_snapshot")[0][0] for f in ("min", "max"))

    def gaps(glob: str) -> list[tuple]:
        return con.execute(f"SELECT stream, epoch_us(start_time), epoch_us(end_time) FROM read_parquet('{glob}') "
                           "WHERE record = 'gap'").fetchall()

    merged_silence = [g for g in gaps(f"{archive}/coverage/**/fleet.parquet") if g[1] < t1 and g[2] > t0]
    a_gaps, b_gaps = (gaps(f"{archive}/hosts/collector={h}/coverage/**/*.parquet") for h in HOSTS)
    for stream, lo, hi in merged_silence:
        for own in (a_gaps, b_gaps):
            assert any(s == stream and a <= lo and b >= hi for s, a, b in own), (stream, lo, hi, own)
    assert [g for g in b_gaps if g[1] <= killed_us and g[2] >= restarted_us and g[2] - g[1] >= 20 * S], b_gaps
