"""The Dagster UI in a real browser: `dagster dev` + headless Chromium.

Starts `dagster dev` on a free port with a throw-away DAGSTER_HOME, asks the webserver's
GraphQL endpoint what it serves, then has headless Chromium render the asset graph and
the automation page and checks the names appear in the rendered DOM; a screenshot of
the asset graph is saved (to $ORDERBOOK_ARTIFACTS_DIR if set, else the test's tmp dir).
Skipped where Chromium is missing; `make test` installs it in CI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEFINITIONS_MODULE = "orderbook_assets.definitions"
# Names the UI must show. The archive pipeline owns most of them; keep in step with definitions.py.
EXPECTED_ASSETS = ["depth_snapshot", "coverage", "archived_hour", "top_of_book_1s"]
EXPECTED_CHECKS = ["no_duplicates", "no_seq_gaps", "update_id_monotonic", "coverage_gaps", "books_sane",
                   "rows_reconciled"]
EXPECTED_SCHEDULES = ["archive_hour_schedule", "cleanup_buffer_schedule"]
EXPECTED_SENSORS = ["late_rows_sensor"]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
STARTUP_TIMEOUT = 90.0

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install -y chromium); "
                                                "`make test` installs it in CI"),
]

GRAPHQL_QUERY = """
{ assetNodes { assetKey { path } assetChecksOrError { ... on AssetChecks { checks { name } } } }
  repositoriesOrError { ... on RepositoryConnection { nodes { name location { name }
      schedules { name } sensors { name } } } } }
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(base: str, query: str, variables: dict | None = None) -> dict:
    req = urllib.request.Request(f"{base}/graphql", data=json.dumps({"query": query, "variables": variables or {}}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        body = json.load(resp)
    if body.get("errors"):
        raise AssertionError(f"GraphQL errors: {body['errors']}")
    return body["data"]


def chromium(url: str, tmp: Path, *args: str, budget_ms: int = 15_000) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'chromium-profile'}", "--window-size=1400,900",
         f"--virtual-time-budget={budget_ms}", *args, url],
        capture_output=True, text=True, timeout=90,
    )


def start_dagster_dev(module: str, port: int, tmp: Path, cwd: Path, extra_env: dict[str, str] | None = None):
    home = tmp / "dagster_home"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home), "ORDERBOOK_ARCHIVE_URL": str(tmp / "archive"),
           "ORDERBOOK_BUFFER": str(tmp / "buffer.sqlite3"), "DAGSTER_DISABLE_TELEMETRY": "1",
           **(extra_env or {})}
    log = open(tmp / "dagster-dev.log", "wb")
    dagster = Path(sys.executable).with_name("dagster")
    proc = subprocess.Popen([str(dagster), "dev", "-m", module, "-h", "127.0.0.1", "-p", str(port)],
                            cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def stop(proc: subprocess.Popen) -> None:
    """End the `dagster dev` process group we started (webserver, daemon, code server)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def wait_for_definitions(base: str, proc: subprocess.Popen, log_path: Path) -> dict:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"dagster dev exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
        try:
            data = graphql(base, GRAPHQL_QUERY)
            if data["assetNodes"] and data["repositoriesOrError"].get("nodes"):
                return data
        except (urllib.error.URLError, ConnectionError, AssertionError, KeyError, TimeoutError) as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"dagster dev did not serve definitions in {STARTUP_TIMEOUT:.0f} s ({last}):\n"
                         f"{log_path.read_text()[-3000:]}")


def check_ui(module: str, cwd: Path, tmp: Path, assets: list[str], checks: list[str],
             schedules: list[str], sensors: list[str]) -> Path:
    """Run the whole browser check; returns the screenshot path."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc, log = start_dagster_dev(module, port, tmp, cwd)
    try:
        data = wait_for_definitions(base, proc, tmp / "dagster-dev.log")
        served_assets = {"/".join(n["assetKey"]["path"]) for n in data["assetNodes"]}
        served_checks = {c["name"] for n in data["assetNodes"]
                         for c in (n.get("assetChecksOrError") or {}).get("checks", [])}
        repos = data["repositoriesOrError"]["nodes"]
        served_schedules = {s["name"] for r in repos for s in r["schedules"]}
        served_sensors = {s["name"] for r in repos for s in r["sensors"]}
        assert set(assets) <= served_assets, f"assets missing from the UI: {set(assets) - served_assets}"
        assert set(checks) <= served_checks and served_checks, f"asset checks served: {served_checks}"
        assert set(schedules) <= served_schedules and served_schedules, f"schedules served: {served_schedules}"
        assert set(sensors) <= served_sensors and served_sensors, f"sensors served: {served_sensors}"

        graphql(base, "mutation { setNuxSeen }")  # no "join the community" dialog over the screenshot

        graph = chromium(f"{base}/asset-groups", tmp, "--dump-dom")
        assert graph.returncode == 0, graph.stderr[-2000:]
        missing = [a for a in served_assets if a.split("/")[-1] not in graph.stdout]
        assert not missing, f"the rendered asset graph does not show {missing}"

        automation = chromium(f"{base}/automation", tmp, "--dump-dom")
        missing = [n for n in served_schedules | served_sensors if n not in automation.stdout]
        assert not missing, f"the rendered automation page does not show {missing}"

        owner = next(n for n in data["assetNodes"] if (n.get("assetChecksOrError") or {}).get("checks"))
        key = "/".join(owner["assetKey"]["path"])
        check_page = chromium(f"{base}/assets/{key}?view=checks", tmp, "--dump-dom")
        missing = [c["name"] for c in owner["assetChecksOrError"]["checks"] if c["name"] not in check_page.stdout]
        assert not missing, f"the checks tab of {key} does not show {missing}"

        out_dir = Path(os.environ.get("ORDERBOOK_ARTIFACTS_DIR") or tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        shot = out_dir / "dagster-asset-graph.png"
        taken = chromium(f"{base}/asset-groups", tmp, f"--screenshot={shot}")
        assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
        return shot
    finally:
        stop(proc)
        log.close()


def test_dagster_ui_shows_assets_checks_schedules_and_sensors(tmp_path):
    """The asset graph, checks, schedules and sensor of orderbook_assets.definitions render in Chromium."""
    check_ui(DEFINITIONS_MODULE, REPO, tmp_path, EXPECTED_ASSETS, EXPECTED_CHECKS,
             EXPECTED_SCHEDULES, EXPECTED_SENSORS)
