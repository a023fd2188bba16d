"""``make fleet`` (tools/fleet.py) itself: its ready line, and a folder PostgreSQL cannot use.

- "ready" is printed only once the webserver serves every code location: the GraphQL query made
  right after that line lists host_a, host_b and fleet loaded, without anyone pressing Reload.
- A fleet folder that PostgreSQL's user cannot enter stops before initdb with one sentence naming
  the folder and the fix (exit 2), whether the fleet runs as root (PostgreSQL then runs as the
  ``postgres`` user, so the check asks as that user) or as anyone else.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from support.procs import child_env
from support.requires import missing
from support.webserver import free_port, graphql
from tools.fleet import PG_BIN

LOCATIONS = "{ workspaceOrError { ... on Workspace { locationEntries { name locationOrLoadError { __typename } } } } }"
#: The whole fleet (PostgreSQL, simulator, two collectors, three code servers, daemon, webserver)
#: up on a busy two-core machine.
READY_TIMEOUT = 400.0
STOP_TIMEOUT = 90.0


def fleet_cmd(folder: Path, web_port: int) -> list[str]:
    return [sys.executable, "-m", "tools.fleet", "--folder", str(folder), "--dagster-port", str(web_port)]


def needs_postgres() -> None:
    if not (PG_BIN / "initdb").exists():
        missing(f"PostgreSQL 15 is not installed ({PG_BIN}/initdb missing); run `sh tools/system-deps.sh postgres`")


@pytest.fixture
def open_folder():
    """A folder outside pytest's root-only temp tree that PostgreSQL's user can enter (as root it
    runs as ``postgres``), removed afterwards whoever owns what is in it."""
    folder = Path(tempfile.mkdtemp(prefix="orderbook-fleet-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder, ignore_errors=True)


def lines_of(stream) -> queue.Queue:
    """The process's output line by line, read by a thread so the test can wait with a deadline."""
    out: queue.Queue = queue.Queue()

    def pump():
        for line in stream:
            out.put(line)
        out.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return out


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ready_only_when_every_location_answers(open_folder):
    needs_postgres()
    web_port = free_port()
    proc = subprocess.Popen(fleet_cmd(open_folder / "fleet", web_port),
                            env=child_env(ORDERBOOK_METRICS_PORT="0", DAGSTER_PORT=""),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    printed: list[str] = []
    try:
        out = lines_of(proc.stdout)
        deadline = time.monotonic() + READY_TIMEOUT
        while not any("ready:" in line for line in printed):
            line = out.get(timeout=max(deadline - time.monotonic(), 0.1))
            assert line is not None, "make fleet ended before ready:\n" + "".join(printed)
            printed.append(line)
        # At once, no Reload and no retry: every location is served.
        entries = graphql(f"http://127.0.0.1:{web_port}", LOCATIONS)["workspaceOrError"]["locationEntries"]
        assert {e["name"]: e["locationOrLoadError"]["__typename"] for e in entries} == {
            "host_a": "RepositoryLocation", "host_b": "RepositoryLocation", "fleet": "RepositoryLocation"}
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, "".join(printed)


def test_a_folder_postgres_cannot_enter_is_one_sentence(open_folder):
    needs_postgres()
    closed = open_folder / "closed"
    closed.mkdir(mode=0o000)
    closed.chmod(0o000)  # mkdir's mode passes through the umask; this one does not
    res = subprocess.run(fleet_cmd(closed / "fleet", free_port()), env=child_env(DAGSTER_PORT=""),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    message = res.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert message.startswith("make fleet: --folder: ") and str(closed) in message, message
    assert "--folder /var/tmp/orderbook-fleet" in message, message
    if os.getuid() == 0:  # root may enter anything; PostgreSQL's user may not
        assert message.startswith(f"make fleet: --folder: PostgreSQL runs as the user postgres, who cannot enter "
                                  f"{closed};"), message
        assert f"chmod o+x {closed}" in message, message
    assert "initdb" not in res.stdout + res.stderr
    assert not (closed / "fleet" / "postgres" / "data").exists()
