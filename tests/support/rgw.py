"""A real Ceph RGW (Debian's Ceph 16 Pacific) on loopback: one mon, one memstore OSD, radosgw.

The recipe is the one in the shared docs/s3-compatible-stores.md, with free ports instead of
the fixed ones (other test runs may share the machine). Every daemon runs in the foreground
as our own child process and is stopped by its PID; all data lives in a temporary folder.

``tools/system-deps.sh ceph`` installs the packages (``make test`` runs it). If the binaries
are missing, :func:`start` raises: the RGW tests must fail loudly on a machine that cannot
run them, never pass by skipping.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph", "monmaptool", "ceph-authtool")
ACCESS_KEY = "TESTACCESSKEY000001"
SECRET_KEY = "testsecretkey00000000000000000000000001"

CONF = """\
[global]
fsid = {fsid}
mon_host = [v2:127.0.0.1:{mon2},v1:127.0.0.1:{mon1}]
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
run_dir = {d}/run
admin_socket = {d}/run/$name.asok
pid_file = {d}/run/$name.pid
log_file = {d}/log/$name.log
keyring = {d}/keyring
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
osd_crush_chooseleaf_type = 0
mon_max_pg_per_osd = 1000
ms_bind_ipv6 = false
ms_bind_port_min = {osd_lo}
ms_bind_port_max = {osd_hi}

[mon]
mon_data = {d}/mon/$cluster-$id
mon_initial_members = a
mon_allow_pool_delete = true

[osd]
osd_data = {d}/osd/$cluster-$id
osd_objectstore = memstore
memstore_device_bytes = 1073741824
osd_op_num_shards = 1
osd_op_num_threads_per_shard = 2

[client.rgw.a]
rgw_frontends = beast endpoint=127.0.0.1:{rgw}
rgw_data = {d}/rgw
rgw_thread_pool_size = 32
# without crc, radosgw hangs 300 s: its default `secure` mode cannot work with auth none
ms_mon_client_mode = crc
"""


class RgwUnavailable(RuntimeError):
    """Ceph is not installed or did not come up; the message says what to do."""


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _free_range(width: int) -> tuple[int, int]:
    """A run of ``width`` ports that are free right now (the OSD binds several)."""
    for base in range(20000, 40000, width + 7):
        ok = True
        for port in range(base, base + width):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base, base + width - 1
    raise RgwUnavailable("no free port range on 127.0.0.1 for the Ceph OSD")


class Rgw:
    """A running single-node Ceph with radosgw. ``url``, ``access_key``, ``secret_key``,
    ``startup_seconds``; :meth:`stop` kills every daemon by PID."""

    def __init__(self, root: Path) -> None:
        missing = [b for b in BINARIES if shutil.which(b) is None]
        if missing:
            raise RgwUnavailable(
                f"Ceph binaries missing ({', '.join(missing)}): run `tools/system-deps.sh ceph` as root "
                "(make test does) to install ceph-mon, ceph-osd, radosgw and ceph-common."
            )
        self.root = Path(root)
        self.procs: list[subprocess.Popen] = []
        self.access_key, self.secret_key = ACCESS_KEY, SECRET_KEY
        self.startup_seconds = 0.0
        self.url = ""

    # ------------------------------------------------------------------ helpers

    def _run(self, *cmd: str, timeout: float = 60) -> str:
        out = subprocess.run([*cmd], capture_output=True, text=True, timeout=timeout)
        if out.returncode:
            raise RgwUnavailable(f"{' '.join(cmd[:3])} failed ({out.returncode}): {out.stderr.strip()[-800:]}")
        return out.stdout

    def _daemon(self, *cmd: str) -> subprocess.Popen:
        log = open(self.root / "log" / f"{Path(cmd[0]).name}.stdout", "ab")
        proc = subprocess.Popen([*cmd, "-f"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def _wait(self, what: str, cond, timeout: float) -> None:
        """Poll ``cond`` until true: waiting on a condition, not sleeping for a guessed time."""
        deadline = time.monotonic() + timeout
        while True:
            for p in self.procs:
                if p.poll() is not None:
                    raise RgwUnavailable(f"{p.args[0]} exited with {p.returncode} while waiting for {what}; "
                                         f"see {self.root / 'log'}")
            if cond():
                return
            if time.monotonic() > deadline:
                raise RgwUnavailable(f"{what} not reached within {timeout:.0f} s; see {self.root / 'log'}")
            time.sleep(0.1)

    def _ceph(self, *args: str, timeout: float = 30) -> str:
        return self._run("ceph", "-c", str(self.conf), "--connect-timeout", "20", *args, timeout=timeout)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Rgw:
        t0 = time.monotonic()
        d = self.root
        for sub in ("run", "log", "mon", "osd", "rgw"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        mon2, mon1, rgw = _free_ports(3)
        osd_lo, osd_hi = _free_range(24)
        fsid, osd_uuid = str(uuid.uuid4()), str(uuid.uuid4())
        self.conf = d / "ceph.conf"
        self.conf.write_text(CONF.format(fsid=fsid, d=d, mon1=mon1, mon2=mon2, rgw=rgw, osd_lo=osd_lo, osd_hi=osd_hi))
        c = ("-c", str(self.conf))
        self._run("ceph-authtool", "--create-keyring", str(d / "keyring"), "--gen-key", "-n", "mon.", "--cap", "mon", "allow *")
        self._run("monmaptool", "--create", "--fsid", fsid, "--addv", "a",
                  f"[v2:127.0.0.1:{mon2},v1:127.0.0.1:{mon1}]", str(d / "monmap"))
        self._run("ceph-mon", *c, "--mkfs", "-i", "a", "--monmap", str(d / "monmap"), "--keyring", str(d / "keyring"))
        self._daemon("ceph-mon", *c, "-i", "a")
        osd_id = self._ceph("osd", "new", osd_uuid).strip()
        (d / "osd" / f"ceph-{osd_id}").mkdir(exist_ok=True)  # memstore's mkfs does not create it
        self._run("ceph-osd", *c, "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid, timeout=120)
        self._daemon("ceph-osd", *c, "-i", osd_id)
        self._wait("OSD up", lambda: json.loads(self._ceph("osd", "stat", "-f", "json")).get("num_up_osds") == 1, 120)
        self._daemon("radosgw", *c, "-n", "client.rgw.a")
        self.url = f"http://127.0.0.1:{rgw}"
        self._wait("radosgw answering HTTP", self._answers, 180)
        self._run("radosgw-admin", *c, "-n", "client.rgw.a", "user", "create", "--uid=test", "--display-name=test",
                  f"--access-key={ACCESS_KEY}", f"--secret-key={SECRET_KEY}", timeout=120)
        self.startup_seconds = time.monotonic() - t0
        return self

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=2) as resp:
                return resp.status < 500
        except urllib.error.HTTPError as exc:
            return exc.code < 500
        except OSError:
            return False

    def stop(self) -> None:
        """Kill every daemon we started, by PID, and reap it."""
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=15)
        self.procs.clear()

    def __enter__(self) -> Rgw:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def rgw_fixture():
    """The session fixture (``from support.rgw import rgw`` in a test module): one RGW for
    the whole session, started on first use, stopped by PID at the end."""
    import pytest

    @pytest.fixture(scope="session")
    def rgw(tmp_path_factory):
        server = Rgw(tmp_path_factory.mktemp("rgw"))
        with server:
            print(f"\nCeph RGW up at {server.url} in {server.startup_seconds:.1f} s")
            yield server

    return rgw


rgw = rgw_fixture()
