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


def fleet_env(base: dict[str, str], home: Path, pg_url: str, archive: Path) -> dict[str, str]:
    """What every fleet process shares: the instance (home, PostgreSQL) and the archive."""
    env = dict(base)
    env.update(DAGSTER_HOME=str(home), DAGSTER_PG_URL=pg_url, ORDERBOOK_ARCHIVE_URL=str(archive),
               DAGSTER_DISABLE_TELEMETRY="1")
    env.pop("ORDERBOOK_HOST_ID", None)
    env.pop("ORDERBOOK_FLEET_HOSTS", None)
    return env


def host_env(env: dict[str, str], host: str, buffer: Path) -> dict[str, str]:
    """A collector's and its code server's settings: its id and its own buffer."""
    return dict(env, ORDERBOOK_HOST_ID=host, ORDERBOOK_BUFFER=str(buffer))


def merge_env(env: dict[str, str], hosts=HOSTS) -> dict[str, str]:
    return dict(env, ORDERBOOK_FLEET_HOSTS=",".join(hosts))


def webserver_cmd(workspace: Path, port: int) -> list[str]:
    return [str(Path(sys.executable).with_name("dagster-webserver")), "-w", str(workspace), "-h", "127.0.0.1",
            "-p", str(port)]


def daemon_cmd(workspace: Path) -> list[str]:
    return [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", str(workspace)]


def _parse(argv):
    p = argparse.ArgumentParser(prog="make fleet", description=__doc__.splitlines()[0])
    p.add_argument("--dagster-port", type=int, default=None, help="[DAGSTER_PORT, default 3000] the webserver")
    p.add_argument("--folder", default=str(FLEET_DIR), help="where the fleet keeps everything [data/fleet]")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from orderbook_assets.archive.source import SIMULATED
    from orderbook_assets.settings import DATA_SOURCE as SOURCE_ENV
    from tools.run import _int_env

    args = _parse(argv)
    folder = Path(args.folder).resolve()
    try:
        web_port = args.dagster_port if args.dagster_port is not None else _int_env("DAGSTER_PORT", 3000)
        check_port("127.0.0.1", web_port, "DAGSTER_PORT")
    except PortTaken as exc:
        _say(f"make fleet: {exc}", err=True)
        return 2
    logs = folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    home = write_home(folder / "dagster_home")
    pg = Postgres(folder / "postgres", free_port())
    requested: list[int] = []
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, _f: requested.append(signum))
    pg.start()
    children: list[tuple[str, subprocess.Popen]] = []

    def spawn(name: str, cmd: list[str], env: dict[str, str], death=signal.SIGTERM, **kw) -> subprocess.Popen:
        out = open(logs / f"{name}.log", "ab")
        proc = _spawn(cmd, env, death_signal=death, stdout=kw.pop("stdout", out), stderr=subprocess.STDOUT, **kw)
        children.append((name, proc))
        return proc

    status = 0
    try:
        env = fleet_env(dict(os.environ), home, pg.url, folder / "archive")
        env[SOURCE_ENV] = SIMULATED
        sim = spawn("simulator", [sys.executable, "-m", "tools.simulator", "--port", "0"], env, stdout=subprocess.PIPE)
        line = sim.stdout.readline().decode()
        url = line[line.index("ws://"):].split()[0] if "ws://" in line else None
        if url is None:
            raise SystemExit(f"the simulator did not start (it printed {line!r})")
        env.update(ORDERBOOK_WS_URL=url, ORDERBOOK_REST_URL=url.replace("ws://", "http://"))
        locations = {}
        for i, host in enumerate(HOSTS):
            henv = host_env(env, host, folder / host / "buffer.sqlite3")
            (folder / host).mkdir(exist_ok=True)
            spawn(f"collector-{host}", [sys.executable, "-m", "orderbook_collector"],
                  dict(henv, ORDERBOOK_METRICS_PORT=str(9108 + 1 + i)))
            locations[host] = free_port()
            spawn(f"code-server-{host}", code_server_cmd(locations[host]), henv)
        locations["fleet"] = free_port()
        spawn("code-server-fleet", code_server_cmd(locations["fleet"]), merge_env(env))
        workspace = folder / "workspace.yaml"
        workspace.write_text(workspace_yaml(locations))
        spawn("daemon", daemon_cmd(workspace), env, death=signal.SIGINT)
        spawn("webserver", webserver_cmd(workspace, web_port), env, death=signal.SIGINT)
        _say(f"fleet on one machine: UI on http://127.0.0.1:{web_port}, PostgreSQL on 127.0.0.1:{pg.port}, "
             f"everything in {folder}/ (process output in logs/) — Ctrl-C stops everything")
        while not requested:
            dead = [(n, p) for n, p in children if p.poll() is not None]
            if dead:
                _say(f"{dead[0][0]} exited with status {dead[0][1].returncode}; stopping the rest", err=True)
                status = dead[0][1].returncode or 1
                break
            time.sleep(0.2)
    finally:
        # As `make run` stops its children: collectors first (SIGTERM, each waited for), the daemon and
        # the webserver by SIGINT (their Ctrl-C path), code servers and the simulator by SIGTERM.
        def role(name: str) -> str:
            return "collector" if name.startswith("collector") else "dagster dev" if name in ("daemon", "webserver") else name
        status = _stop_all([(role(n), p) for n, p in children]) or status
        pg.stop()
    return status


if __name__ == "__main__":
    sys.exit(main())
