"""``make fleet``: a whole fleet on one machine, on loopback, stopped by Ctrl-C.

A throwaway PostgreSQL cluster (the instance storage), the simulated exchange, two collectors
(``host_a``, ``host_b``: their own buffers, both recording the same streams), one code server per
collector (``dagster api grpc -m orderbook_assets.definitions``), a fleet code server that serves the
merge, the daemon and the webserver, all with ``deploy/dagster.yaml`` (compute logs kept locally,
since every process shares this machine). Everything lives in ``data/fleet/`` and each process's
output in ``data/fleet/logs/``. Signals and process groups as in ``make run`` (tools/run.py).
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tools.run import STOP_SIGNALS, PortTaken, _say, _spawn, _stop_all, check_port

ROOT = Path(__file__).resolve().parents[1]
DEPLOY_INSTANCE = ROOT / "deploy" / "dagster.yaml"
FLEET_DIR = Path("data") / "fleet"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
HOSTS = ("host_a", "host_b")


def instance_yaml(artifacts: Path, compute_logs: Path) -> str:
    """deploy/dagster.yaml for one machine: the same instance, with compute logs in a local folder
    (every process shares this machine, so the webserver reads them where the runs wrote them)."""
    config = yaml.safe_load(DEPLOY_INSTANCE.read_text())
    config["local_artifact_storage"]["config"]["base_dir"] = str(artifacts)
    config["compute_logs"] = {"module": "dagster._core.storage.local_compute_log_manager",
                              "class": "LocalComputeLogManager", "config": {"base_dir": str(compute_logs)}}
    return yaml.safe_dump(config, sort_keys=False)


def write_home(home: Path) -> Path:
    """A DAGSTER_HOME holding the one-machine fleet's dagster.yaml; artifact paths set explicitly."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(instance_yaml(home / "storage", home / "compute_logs"))
    return home


def workspace_yaml(locations: dict[str, int]) -> str:
    """The fleet's workspace: one grpc_server location per code server (name → port on loopback)."""
    return yaml.safe_dump({"load_from": [
        {"grpc_server": {"host": "127.0.0.1", "port": port, "location_name": name}} for name, port in locations.items()
    ]}, sort_keys=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dagster_bin() -> str:
    return str(Path(sys.executable).with_name("dagster"))


def code_server_cmd(port: int) -> list[str]:
    return [dagster_bin(), "api", "grpc", "-m", "orderbook_assets.definitions", "-h", "127.0.0.1", "-p", str(port)]


class Postgres:
    """A throwaway cluster in ``folder`` (initdb, pg_ctl), as the ``postgres`` user when run as root."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.uid = pwd.getpwnam("postgres").pw_uid if os.getuid() == 0 else None
        self.user = "postgres" if self.uid is not None else pwd.getpwuid(os.getuid()).pw_name

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/postgres"

    def _run(self, *cmd: str) -> None:
        def demote():
            if self.uid is not None:
                pw = pwd.getpwuid(self.uid)
                os.setgid(pw.pw_gid)
                os.setuid(pw.pw_uid)
        res = subprocess.run(cmd, preexec_fn=demote, capture_output=True, text=True, cwd="/")
        if res.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed: {res.stderr.strip() or res.stdout.strip()}")

    def start(self) -> None:
        if not (PG_BIN / "initdb").exists():
            raise SystemExit(f"PostgreSQL 15 is needed ({PG_BIN}/initdb); run `sh tools/system-deps.sh postgres`")
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.uid is not None:
            pw = pwd.getpwuid(self.uid)
            os.chown(self.folder, pw.pw_uid, pw.pw_gid)
        if not (self.folder / "data" / "PG_VERSION").exists():
            self._run(str(PG_BIN / "initdb"), "-D", str(self.folder / "data"), "-U", self.user, "--auth=trust",
                      "-E", "UTF8")
        opts = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories='' -c max_connections=200"
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.folder / "data"), "-l", str(self.folder / "server.log"),
                  "-o", opts, "-w", "start")

    def stop(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")
