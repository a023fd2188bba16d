"""The README's run command: collector + dagster dev (+ simulator) start together and stop together."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from support.procs import ROOT, child_env, query, wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_starts_everything_and_ctrl_c_stops_everything(tmp_path):
    port = free_port()
    buffer = tmp_path / "buffer.sqlite3"
    env = child_env(
        DAGSTER_HOME=str(tmp_path / "dagster_home"), ORDERBOOK_BUFFER=str(buffer),
        ORDERBOOK_ARCHIVE_URL=str(tmp_path / "archive"), ORDERBOOK_METRICS_PORT="0",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.run", "--simulator", "--simulator-port", "0",
         "--dagster-port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        wait_for(lambda: buffer.exists() and query(buffer, "SELECT count(*) FROM depth_snapshot")[0][0] > 10,
                 timeout=60, what="the collector storing the simulator's books")

        def ui_up():
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2).status == 200
            except OSError:
                return False

        wait_for(ui_up, timeout=90, interval=0.5, what="the Dagster UI")
        assert (tmp_path / "dagster_home" / "dagster.yaml").exists()  # the repository's instance settings
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends
        assert proc.wait(45) == 0
        assert time.monotonic() - t0 < 30
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = proc.stdout.read()
    assert "Dagster UI on" in out
    # Nothing is left running: the collector closed its session, dagster dev its services.
    assert query(buffer, "SELECT close_reason FROM sessions")[-1][0] == "collector stopped"
    left = subprocess.run(["pgrep", "-f", f"-p {port}"], capture_output=True, text=True).stdout.split()
    assert not [p for p in left if int(p) != os.getpid()]
