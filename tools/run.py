"""``make run``: the collector and ``dagster dev`` together, stopped together.

Both run as child processes in their own process groups. Ctrl-C, SIGTERM or a
closed terminal (SIGHUP) is passed on: SIGTERM to the collector (it drains its
queue and closes its session), SIGINT to dagster dev (it stops its daemon and
webserver), and we wait for both; anything left in a child's process group is then
stopped too. If either child dies on its own, the other is stopped too, so nothing
keeps running half-configured. If the launcher itself is killed (SIGKILL, OOM),
each child gets its stop signal from the kernel (``PR_SET_PDEATHSIG``), so nothing
records forever without a parent.

``--simulator`` (``make demo``) also starts the local simulated exchange and points
the collector at it. The demo is one world: its buffer, archive, Dagster instance
and data-source marker (``simulated``) are fixed in ``data/demo/``, an exported
buffer or archive elsewhere is refused rather than mixed with simulated data, and
``data/demo/demo.env`` holds those variables for the archive and query commands.
It records several symbols and every stream kind on spot, USD-M and COIN-M, and
open interest. Its hourly partitions
start where its data starts (:func:`demo_partitions_start`), not at the project's default.

Every setting is validated before anything starts: a bad one is one sentence naming
it, prefixed with the command run (``make run:`` / ``make demo:``), exit 2.

Ports (each checked before anything starts; a taken one is one sentence, exit 2):
``DAGSTER_PORT`` (UI, 3000), ``ORDERBOOK_METRICS_PORT`` (collector, 9108) and, for
the demo, ``ORDERBOOK_SIMULATOR_PORT`` (9443).
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timezone

from orderbook_assets import settings as archive_settings
from orderbook_assets.archive.location import Location
from orderbook_assets.archive import source as archive_source
from orderbook_assets.archive.source import SIMULATED
from orderbook_assets.archive.store import open_store
from orderbook_assets.settings import DATA_SOURCE as SOURCE_ENV
from orderbook_collector.config import SUBSCRIPTIONS as SUBSCRIPTIONS_ENV
from orderbook_collector.config import Settings
from orderbook_collector.config import load as load_collector_settings
from orderbook_core import buffer as buf
from orderbook_core.buffer import ledger
from orderbook_core.errors import ConfigError
from orderbook_core.streams import Market

STOP_TIMEOUT = 30.0
DEMO_DIR = os.path.join("data", "demo")
#: What the demo records unless told otherwise: several symbols and every stream kind on each of
#: the three markets, and open interest, so every dataset, view (``derivative_ticker`` too),
#: example query and rebuilt book has data.
DEMO_KINDS = "depth20@100ms,depth@100ms,trade,aggTrade,bookTicker"
#: The futures markets' own kinds on top: mark price (the 1 s clock, so a few seconds of demo show
#: several) and liquidations (the simulator's fire within a second of a trade).
DEMO_FUTURES_KINDS = f"{DEMO_KINDS},markPrice@1s,forceOrder"
DEMO_MIX = {
    "ORDERBOOK_SYMBOLS": "btcusdt,ethusdt,solusdt",
    "ORDERBOOK_STREAMS": DEMO_KINDS,
    "ORDERBOOK_USDM_SYMBOLS": "btcusdt,ethusdt",
    "ORDERBOOK_USDM_STREAMS": DEMO_FUTURES_KINDS,
    "ORDERBOOK_COINM_SYMBOLS": "btcusd_perp,ethusd_perp",
    "ORDERBOOK_COINM_STREAMS": DEMO_FUTURES_KINDS,
}
#: Open interest of every futures symbol, polled this often (seconds): a few polls a minute keep
#: derivative_ticker's open interest fresh at a cost of one REST weight a poll.
DEMO_OPEN_INTEREST_SECONDS = "5"
#: Not part of what to record (ORDERBOOK_SUBSCRIPTIONS does not replace it): set for the demo
#: unless the user set it.
OPEN_INTEREST_ENV = "ORDERBOOK_OPEN_INTEREST_SECONDS"
#: The Dagster partitions' first hour (read by orderbook_assets/defs/partitions.py) and its key format.
PARTITIONS_START_ENV = "ORDERBOOK_PARTITIONS_START"
PARTITION_KEY = "%Y-%m-%d-%H:00"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1
#: asyncio's own default for servers (loop.create_server): SO_REUSEADDR on POSIX, not on Windows.
REUSE_ADDRESS = os.name == "posix" and sys.platform != "cygwin"


class PortTaken(Exception):
    """A port we need is in use or cannot be bound; ``str(err)`` is one sentence."""


def _say(text: str, err: bool = False) -> None:
    # After SIGHUP the terminal is gone and writes fail with EIO: stopping must go on.
    try:
        print(text, file=sys.stderr if err else sys.stdout, flush=True)
    except OSError:
        pass


def _child_setup(death_signal: int):
    parent = os.getpid()

    def setup() -> None:
        # A shell starts background jobs with SIGINT ignored and children inherit that;
        # dagster dev only shuts its services down through KeyboardInterrupt.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(death_signal), 0, 0, 0)
            if os.getppid() != parent:  # the launcher died before prctl took effect
                os.kill(os.getpid(), death_signal)

    return setup


def _spawn(cmd: list[str], env: dict[str, str], death_signal: int = signal.SIGTERM, **kw) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_child_setup(death_signal), **kw)


def check_port(host: str, port: int, setting: str, host_setting: str | None = None) -> None:
    """Raise PortTaken (one sentence naming the setting at fault) unless ``host:port`` can be bound now."""
    if port == 0:
        return
    if not 0 < port < 65536:
        raise PortTaken(f"{setting}: {port} is not a port; use a number from 1 to 65535.")
    with socket.socket() as s:
        try:
            # As the servers themselves bind (asyncio, aiohttp, uvicorn): with SO_REUSEADDR, so the
            # TIME-WAIT connections of a server stopped a moment ago do not hold its port. listen()
            # is where Linux refuses a port another socket listens on, so the check listens too.
            if REUSE_ADDRESS:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
            s.listen()
        except OSError as exc:
            if host_setting and (isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL):
                raise PortTaken(f"{host_setting}: {host} is not an address of this machine "
                                f"({exc.strerror or exc}); use one such as 127.0.0.1.") from None
            why = "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc.strerror or exc})"
            raise PortTaken(
                f"{setting}: port {port} on {host} {why}; stop what holds it or set {setting} to a free port."
            ) from None


def _start_simulator(env: dict[str, str], port: int, who: str, settings: Settings) -> tuple[subprocess.Popen, str]:
    proc = _spawn(
        [sys.executable, "-m", "tools.simulator", "--port", str(port), "--symbols", simulator_symbols(settings),
         "--coinm-symbols", simulator_symbols(settings, coinm=True)],
        env,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    m = re.search(r"ws://[\d.]+:\d+", line)
    if not m:
        proc.terminate()
        raise SystemExit(f"{who}: the simulator did not start (it printed {line!r})")
    return proc, m.group(0)


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise PortTaken(f"{name}: {value!r} is not a port number; use e.g. {default}.") from None


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="make run", description=__doc__.splitlines()[0])
    p.add_argument("--simulator", action="store_true", help="also start the simulated exchange and record from it")
    p.add_argument("--simulator-port", type=int, default=None, help="[ORDERBOOK_SIMULATOR_PORT, default 9443]")
    p.add_argument("--dagster-port", type=int, default=None, help="[DAGSTER_PORT, default 3000]")
    return p.parse_args(argv)


def demo_world() -> dict[str, str]:
    """Where the demo keeps everything, fixed (absolute, from the working directory): its buffer,
    its archive, its Dagster instance, and the marker saying its data is simulated."""
    return {
        "ORDERBOOK_BUFFER": os.path.abspath(os.path.join(DEMO_DIR, "buffer.sqlite3")),
        "ORDERBOOK_ARCHIVE_URL": os.path.abspath(os.path.join(DEMO_DIR, "archive")),
        "DAGSTER_HOME": os.path.abspath(os.path.join(DEMO_DIR, "dagster_home")),
        SOURCE_ENV: SIMULATED,
    }


def demo_partitions_start(world: dict[str, str], now: float | None = None) -> str:
    """The demo's first partition: the earliest of the hour it was first started (kept in
    data/demo/demo.env), its buffer's first hour, and the current hour. A fresh demo then
    offers one partition, not every hour since the project's default start, and a restart
    never hides hours it recorded before."""
    now = time.time() if now is None else now
    hours = [int(now // 3600) * 3600]
    previous = _demo_env_value(PARTITIONS_START_ENV)
    if previous:
        try:
            hours.append(int(datetime.strptime(previous, PARTITION_KEY).replace(tzinfo=timezone.utc).timestamp()))
        except ValueError:
            pass  # not ours (edited by hand): the buffer and the clock decide
    path = world["ORDERBOOK_BUFFER"]
    if os.path.isfile(path):
        try:
            conn = buf.connect_readonly(path)
            try:
                oldest = ledger.progress(conn).oldest_buffered_hour
            finally:
                conn.close()
        except sqlite3.Error:
            oldest = None  # unreadable here: the collector will say why
        if oldest is not None:
            hours.append(oldest // 1_000_000)
    return datetime.fromtimestamp(min(hours), tz=timezone.utc).strftime(PARTITION_KEY)


def _demo_env_value(name: str) -> str | None:
    """A variable as data/demo/demo.env (written by :func:`write_demo_env`) holds it."""
    try:
        with open(os.path.join(DEMO_DIR, "demo.env")) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(f"{name}="):
            values = shlex.split(line.split("=", 1)[1])
            return values[0] if values else None
    return None


def _same_place(name: str, given: str, ours: str) -> bool:
    if name == "ORDERBOOK_ARCHIVE_URL":
        return Location.parse(given).url == Location.parse(ours).url
    return os.path.realpath(given) == os.path.realpath(ours)


def _environment(args: argparse.Namespace, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The children's environment. Raises ConfigError for settings that would mix simulated
    and real data."""
    env = dict(os.environ if environ is None else environ)
    if args.simulator:
        world = demo_world()
        # One world: an exported buffer or archive (a real one, say) is refused, not silently
        # used or silently replaced; the demo's own (data/demo/demo.env sourced) is fine.
        for name, what in (("ORDERBOOK_BUFFER", "buffer"), ("ORDERBOOK_ARCHIVE_URL", "archive")):
            given = env.get(name, "").strip()
            if given and not _same_place(name, given, world[name]):
                raise ConfigError(name, f"{given!r} is set, but the demo records simulated data into its own "
                                        f"{what} ({world[name]}) only; unset {name} for make demo.")
        given = env.get(SOURCE_ENV, "").strip().lower()
        if given and given != SIMULATED:
            raise ConfigError(SOURCE_ENV, f"{given!r} is set, but the demo's data is simulated; unset {SOURCE_ENV} for make demo.")
        env.update(world)  # DAGSTER_HOME too: `make` exports its own default, which is not the demo's
        if not env.get(PARTITIONS_START_ENV, "").strip():
            env[PARTITIONS_START_ENV] = demo_partitions_start(world)
        if not env.get(SUBSCRIPTIONS_ENV):
            for name, value in DEMO_MIX.items():
                env[name] = env.get(name) or value
        env[OPEN_INTEREST_ENV] = env.get(OPEN_INTEREST_ENV) or DEMO_OPEN_INTEREST_SECONDS
    else:
        if env.get(SOURCE_ENV, "").strip().lower() == SIMULATED:
            raise ConfigError(SOURCE_ENV, f"is {SIMULATED}, which marks the demo's data (data/demo/demo.env sets it); "
                                          f"unset it for make run, which records from Binance.")
        # Absolute, because dagster dev runs in DAGSTER_HOME (see main) and its runs inherit that folder.
        for name, default in ((archive_settings.BUFFER, str(archive_settings.DEFAULT_PATH)),
                              (archive_settings.ARCHIVE_URL, archive_settings.DEFAULT_ARCHIVE)):
            value = env.get(name) or default
            if "://" not in value:
                env[name] = os.path.abspath(value)
        env.setdefault("DAGSTER_HOME", os.path.abspath(".dagster_home"))
    return env


def write_demo_env(env: dict[str, str]) -> str:
    """data/demo/demo.env: every variable the documented archive and query commands need to act
    on the demo's world (``set -a; . data/demo/demo.env; set +a`` before them)."""
    path = os.path.join(DEMO_DIR, "demo.env")
    os.makedirs(DEMO_DIR, exist_ok=True)
    lines = ["# Written by `make demo`: the demo's buffer, archive, Dagster instance, data-source marker and first hour.",
             "# Before a documented command: set -a; . data/demo/demo.env; set +a"]
    lines += [f"{name}={shlex.quote(env[name])}" for name in (*demo_world(), PARTITIONS_START_ENV)]
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)
    return path


def mark_demo_archive(env: dict[str, str]) -> None:
    """The demo's archive exists, marked simulated, from the start: the documented ``orderbook query
    --with-tail`` examples then answer from the buffer before the first hour is archived (the query
    refuses an archive folder that does not exist) and note the data is simulated."""
    archive_source.mark(open_store(Location.parse(env["ORDERBOOK_ARCHIVE_URL"])))


def command(args: argparse.Namespace) -> str:
    """What the user ran, as every message of ours names it."""
    return "make demo" if args.simulator else "make run"


def check_settings(env: dict[str, str]) -> Settings:
    """Every setting the children will read, validated here, before anything starts: a bad one
    is one sentence (ConfigError), never a child's traceback after the UI came up."""
    settings, _ = load_collector_settings([], environ=env)
    archive_settings.load(env)  # every archive-side setting the Dagster location will read
    return settings


def simulator_symbols(settings: Settings, coinm: bool = False) -> str:
    """The simulator serves only the symbols it is given: the demo's and any the user named, spot
    and USD-M's (one list: they share names) or, ``coinm``, COIN-M's (names of their own)."""
    named = [s for sub in settings.subscriptions() if not sub.all_symbols and (sub.market is Market.COINM) == coinm
             for s in sub.symbols]
    demo = DEMO_MIX["ORDERBOOK_COINM_SYMBOLS" if coinm else "ORDERBOOK_SYMBOLS"].split(",")
    return ",".join(dict.fromkeys([*demo, *named]))


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        env = _environment(args)
        settings = check_settings(env)
        dagster_port = args.dagster_port if args.dagster_port is not None else _int_env("DAGSTER_PORT", 3000)
        sim_port = args.simulator_port if args.simulator_port is not None else _int_env("ORDERBOOK_SIMULATOR_PORT", 9443)
        metrics_port = _int_env("ORDERBOOK_METRICS_PORT", 9108)
        check_port("127.0.0.1", dagster_port, "DAGSTER_PORT")
        if metrics_port > 0:
            check_port(env.get("ORDERBOOK_METRICS_HOST") or "127.0.0.1", metrics_port, "ORDERBOOK_METRICS_PORT",
                       "ORDERBOOK_METRICS_HOST")
        if args.simulator:
            check_port("127.0.0.1", sim_port, "ORDERBOOK_SIMULATOR_PORT")
    except (PortTaken, ConfigError) as exc:
        _say(f"{command(args)}: {exc}", err=True)
        return 2
    if dagster_port == 0:  # dagster dev needs a real number to print and serve
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dagster_port = s.getsockname()[1]

    if args.simulator:
        write_demo_env(env)
        mark_demo_archive(env)
    os.makedirs(env["DAGSTER_HOME"], exist_ok=True)
    # Dagster reads dagster.yaml only from DAGSTER_HOME: the repository's copy is the source.
    shutil.copyfile("dagster.yaml", os.path.join(env["DAGSTER_HOME"], "dagster.yaml"))
    requested: list[int] = []

    def request_stop(signum, _frame) -> None:
        requested.append(signum)

    # Installed before the first child starts: a signal during start-up stops what started.
    for sig in STOP_SIGNALS:
        signal.signal(sig, request_stop)

    children: list[tuple[str, subprocess.Popen]] = []
    if args.simulator:
        sim, url = _start_simulator(env, sim_port, command(args), settings)
        children.append(("simulator", sim))
        env["ORDERBOOK_WS_URL"] = url
        env["ORDERBOOK_REST_URL"] = url.replace("ws://", "http://")
        # The simulator serves USD-M on the same port (/public, /market, /fapi): demo futures never reach Binance.
        env["ORDERBOOK_USDM_WS_URL"] = url
        env["ORDERBOOK_USDM_REST_URL"] = url.replace("ws://", "http://")
        # And COIN-M: its streams under /dstream (dstream.binance.com's paths), its REST under /dapi.
        env["ORDERBOOK_COINM_WS_URL"] = f"{url}/dstream"
        env["ORDERBOOK_COINM_REST_URL"] = url.replace("ws://", "http://")
        _say(f"simulated exchange at {url}; demo data in {DEMO_DIR}/ (marked simulated)")
    children.append(("collector", _spawn([sys.executable, "-m", "orderbook_collector"], env)))
    dagster = [os.path.join(os.path.dirname(sys.executable), "dagster"), "dev", "-h", "127.0.0.1",
               "-p", str(dagster_port), "-w", os.path.abspath("workspace.yaml")]
    # dagster dev stops its webserver and daemon on SIGINT (its Ctrl-C path) only. It runs in
    # DAGSTER_HOME: started beside the repository's dagster.yaml it warns that the file is not
    # used, which is true but moot, as the copy in DAGSTER_HOME is the same file.
    children.append(("dagster dev", _spawn(dagster, _quiet_dagster(env), death_signal=signal.SIGINT,
                                           cwd=env["DAGSTER_HOME"])))
    _say(f"Dagster UI on http://127.0.0.1:{dagster_port} — Ctrl-C stops everything")
    return _supervise(children, requested)


def _quiet_dagster(env: dict[str, str]) -> dict[str, str]:
    """dagster dev's own FutureWarning that ``dagster dev`` is superseded by ``dg dev`` (a CLI
    this project does not install) says nothing a user of ``make run`` can act on."""
    quiet = "ignore:Function `dev_command` is superseded:FutureWarning"
    return dict(env, PYTHONWARNINGS=",".join(filter(None, [env.get("PYTHONWARNINGS"), quiet])))


def _supervise(children: list[tuple[str, subprocess.Popen]], requested: list[int]) -> int:
    status = 0
    while not requested:
        for name, proc in children:
            if proc.poll() is not None:
                _say(f"{name} exited with status {proc.returncode}; stopping the rest", err=True)
                status = proc.returncode or 1
                requested.append(0)
                break
        time.sleep(0.2)
    return _stop_all(children) or status


def _stop_all(children: list[tuple[str, subprocess.Popen]]) -> int:
    status = 0
    # Collector first, so its last session closes while the exchange is still up.
    ordered = sorted(children, key=lambda c: c[0] != "collector")
    for name, proc in ordered:
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGINT if name == "dagster dev" else signal.SIGTERM, only_leader=True)
        if name == "collector":
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
    deadline = time.monotonic() + STOP_TIMEOUT
    for name, proc in ordered:
        try:
            proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            _say(f"{name} did not stop within {STOP_TIMEOUT:.0f} s; killing it", err=True)
            status = status or 1
        # What a child started and left behind (its process group) goes too.
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
    return status


def _signal_group(pgid: int, sig: int, only_leader: bool = False) -> None:
    try:
        if only_leader:
            os.kill(pgid, sig)
        else:
            os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    sys.exit(main())
