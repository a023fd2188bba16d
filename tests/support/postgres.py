"""A throwaway PostgreSQL 15 cluster for tests: initdb in a temp folder, ``pg_ctl`` on a free
loopback port, no Unix socket, trust authentication, stopped and deleted afterwards.

Debian's server binaries live in ``/usr/lib/postgresql/<major>/bin`` (package ``postgresql-15``,
installed by ``tools/system-deps.sh postgres``). PostgreSQL refuses to run as root: when the
tests run as root (containers, CI), the cluster runs as the ``postgres`` system user the
package creates, in a folder outside pytest's root-only temp tree.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from support.requires import missing
from support.webserver import free_port

MAJOR = 15
BIN = Path(f"/usr/lib/postgresql/{MAJOR}/bin")
START_TIMEOUT = 60.0


@dataclass
class PostgresCluster:
    folder: Path
    port: int
    user: str  # the database superuser (the OS user the server runs as)
    _run_as: int | None  # uid to drop to (None: ourselves)

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; dagster-postgres ships psycopg2.
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{database}"

    def _run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        def demote():
            if self._run_as is not None:
                pw = pwd.getpwuid(self._run_as)
                os.setgid(pw.pw_gid)
                os.setuid(pw.pw_uid)

        res = subprocess.run(list(cmd), capture_output=True, text=True, preexec_fn=demote, timeout=timeout,
                             cwd=self.folder, env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C.UTF-8"})
        if check and res.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res

    def psql(self, sql: str, database: str = "postgres") -> str:
        return self._run(str(BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user,
                         "-d", database, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql).stdout.strip()

    def create_database(self, name: str) -> str:
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def stop(self) -> None:
        self._run(str(BIN / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop", check=False)


def start_cluster() -> PostgresCluster:
    """initdb + pg_ctl start on a free loopback port; fails (CI) or skips when PostgreSQL is missing."""
    if not (BIN / "initdb").exists():
        missing(f"PostgreSQL {MAJOR} is not installed ({BIN}/initdb missing); run `sh tools/system-deps.sh postgres`")
    run_as = None
    user = pwd.getpwuid(os.getuid()).pw_name
    folder = Path(tempfile.mkdtemp(prefix="orderbook-pg-"))
    if os.getuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            missing("the tests run as root and there is no `postgres` user to run PostgreSQL as")
        run_as, user = pw.pw_uid, "postgres"
        os.chown(folder, pw.pw_uid, pw.pw_gid)
    cluster = PostgresCluster(folder, free_port(), user, run_as)
    data = folder / "data"
    cluster._run(str(BIN / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync")
    opts = (f"-c listen_addresses=127.0.0.1 -c port={cluster.port} -c unix_socket_directories='' "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
    cluster._run(str(BIN / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-o", opts, "-w",
                 "-t", str(int(START_TIMEOUT)), "start")
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        res = cluster._run(str(BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(cluster.port), check=False)
        if res.returncode == 0:
            return cluster
        if time.monotonic() > deadline:
            log = (folder / "server.log").read_text() if (folder / "server.log").exists() else ""
            raise RuntimeError(f"PostgreSQL did not accept connections in {START_TIMEOUT:.0f} s:\n{log[-3000:]}")
        time.sleep(0.2)


def remove(cluster: PostgresCluster) -> None:
    cluster.stop()
    shutil.rmtree(cluster.folder, ignore_errors=True)
