"""``make fleet``: a whole fleet on one machine, on loopback, stopped by Ctrl-C.

A throwaway PostgreSQL cluster (the instance storage), the simulated exchange, two collectors
(``host_a``, ``host_b``: their own buffers, both recording the same streams), one code server per
collector (``dagster api grpc -m orderbook_assets.definitions``), a fleet code server that serves the
merge, the daemon and the webserver, all with ``deploy/dagster.yaml`` (compute logs kept locally,
since every process shares this machine). Everything lives in ``data/fleet/`` and each process's
output in ``data/fleet/logs/``. Signals and process groups as in ``make run`` (tools/run.py).

It says it is ready only once the webserver serves every code location: the daemon and the webserver
start after each code server answers the gRPC health check (a webserver started while the code
servers load keeps ``DagsterUserCodeUnreachableError`` for each until someone presses Reload), and
the ready line waits until the webserver's GraphQL lists every location loaded.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from orderbook_core.errors import ConfigError, OrderbookError
from tools.run import STOP_SIGNALS, PortTaken, _say, _spawn, _stop_all, check_port

ROOT = Path(__file__).resolve().parents[1]
DEPLOY_INSTANCE = ROOT / "deploy" / "dagster.yaml"
FLEET_DIR = Path("data") / "fleet"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
HOSTS = ("host_a", "host_b")
#: How long the code servers and then the webserver may take to load the definitions: tens of
#: seconds each on a busy two-core machine, so generous; past it the fleet stops and says which.
LOAD_TIMEOUT = 300.0
#: One try of a code server's health check or of the webserver's GraphQL; a loading server may
#: not answer at all, and the next try comes after POLL_INTERVAL.
TRY_TIMEOUT = 5.0
POLL_INTERVAL = 0.5
#: The service name Dagster's code servers report SERVING for (what `dagster api grpc-health-check` asks).
CODE_SERVER_SERVICE = "DagsterApi"
LOCATIONS_QUERY = """{ workspaceOrError { __typename ... on PythonError { message }
  ... on Workspace { locationEntries { name locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


class FleetNotReady(OrderbookError):
    """A part of the fleet did not come up; ``str(err)`` is one sentence saying which and why."""


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
        res = subprocess.run(cmd, preexec_fn=self._demote, capture_output=True, text=True, cwd="/")
        if res.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed: {res.stderr.strip() or res.stdout.strip()}")

    def _demote(self) -> None:
        if self.uid is not None:
            pw = pwd.getpwuid(self.uid)
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)

    def blocked(self) -> tuple[str, Path] | None:
        """What PostgreSQL's user cannot do on the way to its folder (``("enter", folder)`` or
        ``("write in", folder)``), asked as that user so permissions, groups and ACLs all count."""
        way = [*reversed(self.folder.parents), self.folder]
        # `test` as the user initdb runs as: os.access would answer for us, and root may do anything.
        script = ('for d; do [ -x "$d" ] || { printf "enter\\n%s" "$d"; exit; }; done; '
                  '[ -w "$d" ] || printf "write in\\n%s" "$d"')
        res = subprocess.run(["/bin/sh", "-c", script, "sh", *map(str, way)], preexec_fn=self._demote,
                             capture_output=True, text=True, cwd="/")
        verb, _, where = res.stdout.partition("\n")
        return (verb, Path(where)) if verb else None

    def start(self) -> None:
        if not (PG_BIN / "initdb").exists():
            raise SystemExit(f"PostgreSQL 15 is needed ({PG_BIN}/initdb); run `sh tools/system-deps.sh postgres`")
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.uid is not None:
            pw = pwd.getpwuid(self.uid)
            os.chown(self.folder, pw.pw_uid, pw.pw_gid)
        blocked = self.blocked()
        if blocked is not None:
            verb, where = blocked
            fix = f"chmod o+x {where}" if verb == "enter" else f"chown {self.user} {where}"
            raise ConfigError("--folder", f"PostgreSQL runs as the user {self.user}, who cannot {verb} {where}; "
                              f"give the fleet a folder {self.user} can use (.venv/bin/python -m tools.fleet "
                              f"--folder /var/tmp/orderbook-fleet) or let it in ({fix})")
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


def code_server_serving(port: int) -> bool:
    """Whether the code server on ``port`` answers the health check (it loads the definitions first)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=CODE_SERVER_SERVICE), timeout=TRY_TIMEOUT)
        except grpc.RpcError:
            return False
    return answer.status == health_pb2.HealthCheckResponse.SERVING


def location_errors(base: str) -> dict[str, str | None] | None:
    """Each location the webserver lists → None once loaded, "" while it loads, else its load error;
    None while the webserver does not answer yet."""
    request = urllib.request.Request(f"{base}/graphql", data=json.dumps({"query": LOCATIONS_QUERY}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TRY_TIMEOUT) as resp:
            data = json.load(resp).get("data") or {}
    except (OSError, http.client.HTTPException, ValueError):  # refused, reset or cut short while it starts
        return None
    workspace = data.get("workspaceOrError") or {}
    if workspace.get("__typename") != "Workspace":
        return None
    out: dict[str, str | None] = {}
    for entry in workspace["locationEntries"]:
        loaded = entry["locationOrLoadError"]
        if loaded is None:
            out[entry["name"]] = ""
        else:
            out[entry["name"]] = None if loaded["__typename"] == "RepositoryLocation" else loaded.get("message") or "?"
    return out


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
        # The collectors' /metrics on the ports after ORDERBOOK_METRICS_PORT (9109, 9110); 0 any free, -1 none.
        metrics_base = _int_env("ORDERBOOK_METRICS_PORT", 9108)
        check_port("127.0.0.1", web_port, "DAGSTER_PORT")
    except PortTaken as exc:
        _say(f"make fleet: {exc}", err=True)
        return 2
    logs = folder / "logs"
    try:
        logs.mkdir(parents=True, exist_ok=True)
        home = write_home(folder / "dagster_home")
    except PermissionError as exc:
        _say(f"make fleet: --folder: {exc.filename} cannot be created here ({exc.strerror}); give the fleet a "
             "folder you can write (.venv/bin/python -m tools.fleet --folder /var/tmp/orderbook-fleet).", err=True)
        return 2
    pg = Postgres(folder / "postgres", free_port())
    requested: list[int] = []
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, _f: requested.append(signum))
    try:
        pg.start()
    except ConfigError as exc:
        _say(f"make fleet: {exc}.", err=True)
        return 2
    children: list[tuple[str, subprocess.Popen]] = []

    def spawn(name: str, cmd: list[str], env: dict[str, str], death=signal.SIGTERM, **kw) -> subprocess.Popen:
        out = open(logs / f"{name}.log", "ab")
        proc = _spawn(cmd, env, death_signal=death, stdout=kw.pop("stdout", out), stderr=subprocess.STDOUT, **kw)
        children.append((name, proc))
        return proc

    def dead() -> tuple[str, subprocess.Popen] | None:
        return next(((n, p) for n, p in children if p.poll() is not None), None)

    def wait(ready, what: str) -> bool:
        """Poll ``ready`` until true (True), a stop is requested (False), a child dies or LOAD_TIMEOUT passes."""
        deadline = time.monotonic() + LOAD_TIMEOUT
        while not requested:
            if ready():
                return True
            if (gone := dead()) is not None:
                raise FleetNotReady(f"{gone[0]} exited with status {gone[1].returncode} while waiting for {what} "
                                    f"(see {logs / (gone[0] + '.log')})")
            if time.monotonic() > deadline:
                raise FleetNotReady(f"{what} took more than {LOAD_TIMEOUT:.0f} s (see {logs}/)")
            time.sleep(POLL_INTERVAL)
        return False

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
                  dict(henv, ORDERBOOK_METRICS_PORT=str(metrics_base + 1 + i if metrics_base > 0 else metrics_base)))
            locations[host] = free_port()
            spawn(f"code-server-{host}", code_server_cmd(locations[host]), henv)
        locations["fleet"] = free_port()
        spawn("code-server-fleet", code_server_cmd(locations["fleet"]), merge_env(env))
        workspace = folder / "workspace.yaml"
        workspace.write_text(workspace_yaml(locations))
        _say(f"make fleet: starting in {folder}/ (process output in logs/); loading the code locations "
             f"{', '.join(locations)}")
        waiting = dict(locations)

        def servers_up() -> bool:
            for name, port in list(waiting.items()):
                if code_server_serving(port):
                    del waiting[name]
            return not waiting

        if wait(servers_up, "the code servers " + ", ".join(locations)):
            spawn("daemon", daemon_cmd(workspace), env, death=signal.SIGINT)
            spawn("webserver", webserver_cmd(workspace, web_port), env, death=signal.SIGINT)
            base = f"http://127.0.0.1:{web_port}"
            seen: dict[str, str | None] = {}

            def served() -> bool:
                seen.clear()
                seen.update(location_errors(base) or {})
                failed = {n: e for n, e in seen.items() if e}
                if failed:
                    name, error = next(iter(failed.items()))
                    raise FleetNotReady(f"the webserver could not load the code location {name}: "
                                        f"{(error.strip().splitlines() or [error])[0]}")
                return set(seen) == set(locations) and all(e is None for e in seen.values())

            if wait(served, "the webserver to load every code location"):
                _say(f"make fleet: ready: UI on {base} with every code location loaded ({', '.join(locations)}), "
                     f"PostgreSQL on 127.0.0.1:{pg.port}, everything in {folder}/ (process output in logs/) "
                     "— Ctrl-C stops everything")
        while not requested:
            if (gone := dead()) is not None:
                _say(f"{gone[0]} exited with status {gone[1].returncode}; stopping the rest", err=True)
                status = gone[1].returncode or 1
                break
            time.sleep(0.2)
    except FleetNotReady as exc:
        _say(f"make fleet: {exc}; stopping the rest", err=True)
        status = 1
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
