"""A real `dagster dev` for tests: start it on a free port, ask its GraphQL API, stop its process group."""

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
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
STARTUP_TIMEOUT = 90.0


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


class _TextNodes(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.texts: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in _VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        if tag in self.open:
            while self.open.pop() != tag:
                pass

    def handle_data(self, data):
        if data.strip() and "body" in self.open and not {"script", "style", "template", "noscript"} & set(self.open):
            self.texts.append(data.strip())


_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def rendered_texts(dom: str) -> set[str]:
    """The text nodes a user sees in a `--dump-dom` page: inside <body>, outside scripts and styles,
    each whole. A name counts as shown only as a text node of its own, not as a substring of
    a longer name, an attribute, a URL or a JSON blob."""
    parser = _TextNodes()
    parser.feed(dom)
    parser.close()
    return set(parser.texts)
