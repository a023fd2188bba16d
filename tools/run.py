"""``make run``: the collector and ``dagster dev`` together, stopped together.

Both run as child processes in their own process groups. Ctrl-C or SIGTERM is
passed on: SIGTERM to the collector (it drains its queue and closes its session),
SIGINT to dagster dev (it stops its daemon and webserver), and we wait for both.
If either child dies on its own, the other is stopped too, so nothing keeps
running half-configured.

``--simulator`` also starts the local simulated exchange and points the
collector at it: the way to try the product without reaching Binance.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time

STOP_TIMEOUT = 30.0


def _default_sigint() -> None:
    # A shell starts background jobs with SIGINT ignored and children inherit that;
    # dagster dev only shuts its services down through KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _spawn(cmd: list[str], env: dict[str, str], **kw) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_default_sigint, **kw)


def _start_simulator(env: dict[str, str], port: int) -> tuple[subprocess.Popen, str]:
    proc = _spawn(
        [sys.executable, "-m", "tools.simulator", "--port", str(port)],
        env,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    m = re.search(r"ws://[\d.]+:\d+", line)
    if not m:
        proc.terminate()
        raise SystemExit(f"the simulator did not start (it printed {line!r})")
    return proc, m.group(0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make run", description=__doc__.splitlines()[0])
    p.add_argument("--simulator", action="store_true", help="also start the simulated exchange and record from it")
    p.add_argument("--simulator-port", type=int, default=9443)
    p.add_argument("--dagster-port", type=int, default=int(os.environ.get("DAGSTER_PORT", "3000")))
    args = p.parse_args(argv)

    env = dict(os.environ)
    env.setdefault("DAGSTER_HOME", os.path.abspath(".dagster_home"))
    os.makedirs(env["DAGSTER_HOME"], exist_ok=True)
    # Dagster reads dagster.yaml only from DAGSTER_HOME: the repository's copy is the source.
    shutil.copyfile("dagster.yaml", os.path.join(env["DAGSTER_HOME"], "dagster.yaml"))
    children: list[tuple[str, subprocess.Popen]] = []
    if args.simulator:
        sim, url = _start_simulator(env, args.simulator_port)
        children.append(("simulator", sim))
        env["ORDERBOOK_WS_URL"] = url
        env["ORDERBOOK_REST_URL"] = url.replace("ws://", "http://")
        print(f"simulated exchange at {url}", flush=True)
    children.append(("collector", _spawn([sys.executable, "-m", "orderbook_collector"], env)))
    dagster = [os.path.join(os.path.dirname(sys.executable), "dagster"), "dev", "-h", "127.0.0.1", "-p", str(args.dagster_port), "-w", "workspace.yaml"]
    children.append(("dagster dev", _spawn(dagster, env)))
    print(f"Dagster UI on http://127.0.0.1:{args.dagster_port} — Ctrl-C stops everything", flush=True)

    stopping = False

    def request_stop(signum, _frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    status = 0
    while not stopping:
        for name, proc in children:
            if proc.poll() is not None:
                print(f"{name} exited with status {proc.returncode}; stopping the rest", file=sys.stderr)
                status = proc.returncode or 1
                stopping = True
                break
        time.sleep(0.2)
    # Collector first, so its last session closes while the exchange is still up.
    ordered = sorted(children, key=lambda c: c[0] != "collector")
    for name, proc in ordered:
        if proc.poll() is None:
            # dagster dev stops its webserver and daemon on SIGINT (its Ctrl-C path) only.
            os.kill(proc.pid, signal.SIGINT if name == "dagster dev" else signal.SIGTERM)
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
            print(f"{name} did not stop within {STOP_TIMEOUT:.0f} s; killing it", file=sys.stderr)
            os.killpg(proc.pid, signal.SIGKILL)
            status = status or 1
    return status


if __name__ == "__main__":
    sys.exit(main())
