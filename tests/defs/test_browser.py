"""The Dagster UI in a real browser: `dagster dev` + headless Chromium.

Starts `dagster dev` on a free port with a throw-away DAGSTER_HOME, asks the webserver's
GraphQL endpoint what it serves, then has headless Chromium render the asset graph and
the automation page and checks the names appear in the rendered DOM; a screenshot of
the asset graph is saved (to $ORDERBOOK_ARTIFACTS_DIR if set, else the test's tmp dir).
Skipped on a developer's machine without Chromium; where CI is set, a missing Chromium fails
the test instead (`make test` installs it), so CI cannot pass without the UI checked.
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

from support.requires import missing
from support.webserver import (CHROMIUM, chromium, free_port, graphql, rendered_texts, start_dagster_dev, stop,
                               wait_for_definitions)

REPO = Path(__file__).resolve().parents[2]
DEFINITIONS_MODULE = "orderbook_assets.definitions"
# Names the UI must show. The archive pipeline owns most of them; keep in step with definitions.py.
EXPECTED_ASSETS = ["depth_snapshot", "depth_update", "depth_rest_snapshot", "trade", "agg_trade", "book_ticker", "coverage", "archived_hour", "top_of_book_1s"]
EXPECTED_CHECKS = ["no_duplicates", "no_seq_gaps", "update_id_monotonic", "coverage_gaps", "books_sane",
                   "rows_reconciled"]
EXPECTED_SCHEDULES = ["archive_hour_schedule", "cleanup_buffer_schedule"]
EXPECTED_SENSORS = ["late_rows_sensor"]

pytestmark = pytest.mark.browser


@pytest.fixture(autouse=True)
def needs_chromium():
    if CHROMIUM is None:
        missing("Chromium is not installed (apt-get install -y chromium; `make test` installs it)")


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
        shown = rendered_texts(graph.stdout)
        absent = sorted(a for a in served_assets if a.split("/")[-1] not in shown)
        assert not absent, f"the rendered asset graph does not show {absent}; its texts: {sorted(shown)}"

        automation = chromium(f"{base}/automation", tmp, "--dump-dom")
        assert automation.returncode == 0, automation.stderr[-2000:]
        shown = rendered_texts(automation.stdout)
        absent = sorted(n for n in served_schedules | served_sensors if n not in shown)
        assert not absent, f"the rendered automation page does not show {absent}; its texts: {sorted(shown)}"

        owner = next(n for n in data["assetNodes"] if (n.get("assetChecksOrError") or {}).get("checks"))
        key = "/".join(owner["assetKey"]["path"])
        check_page = chromium(f"{base}/assets/{key}?view=checks", tmp, "--dump-dom")
        assert check_page.returncode == 0, check_page.stderr[-2000:]
        shown = rendered_texts(check_page.stdout)
        absent = sorted(c["name"] for c in owner["assetChecksOrError"]["checks"] if c["name"] not in shown)
        assert not absent, f"the checks tab of {key} does not show {absent}; its texts: {sorted(shown)}"

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
