"""The Makefile's locks, as the README's table says: `make run` installs the runtime lock, `make
chaos` the dev lock, `make test` and test-fast the dev lock and the backtesters' lock (into a venv
of their own), and moving from one to the other installs only what is missing (checked with
`make -n` on stand-in venvs, so nothing is installed)."""

from __future__ import annotations

import re
import subprocess

import pytest

from support.procs import ROOT

RUNTIME, DEV = ".installed-runtime", ".installed-dev"


def installs(venv, target: str, *what_if: str) -> list[str]:
    """The lock files `make <target>` would install into ``venv`` (``what_if``: files taken as just
    changed); the backtesters' lock as ``backtest:<lock>`` (its venv a fresh stand-in next to ``venv``)."""
    backtest = venv.with_name("venv-backtest")
    out = subprocess.run(["make", "-n", target, f"VENV={venv}", f"BACKTEST_VENV={backtest}",
                          *[f"--what-if={f}" for f in what_if]],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [lock if where == str(venv) else f"backtest:{lock}"
            for where, lock in re.findall(r"(\S+)/bin/python -m pip install --quiet -r (\S+)", out)]


@pytest.fixture
def venv(tmp_path):
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    return tmp_path / "venv"


def test_a_fresh_checkout_installs_the_runtime_for_run_and_the_dev_lock_for_test(venv):
    for target in ("run", "demo", "fleet"):
        assert installs(venv, target) == ["requirements.lock"]
    for target in ("chaos", "bench"):
        assert installs(venv, target) == ["requirements-dev.lock"]
    for target in ("test", "test-fast"):
        assert installs(venv, target) == ["requirements-dev.lock", "backtest:requirements-backtest.lock"]


def test_run_then_test_adds_the_dev_lock_and_test_then_run_installs_nothing(venv):
    (venv / RUNTIME).touch()  # after `make run`
    assert installs(venv, "run") == []
    assert installs(venv, "chaos") == ["requirements-dev.lock"]
    (venv / DEV).touch()  # what the dev install stamps: both
    assert installs(venv, "run") == [] and installs(venv, "chaos") == []
    assert installs(venv, "test-fast") == ["backtest:requirements-backtest.lock"]
    (venv.with_name("venv-backtest") / ".installed-backtest").parent.mkdir()
    (venv.with_name("venv-backtest") / ".installed-backtest").touch()  # after its first install
    assert installs(venv, "test-fast") == []


def test_a_changed_lock_reinstalls_whatever_depends_on_it(venv):
    (venv / RUNTIME).touch()
    (venv / DEV).touch()
    assert installs(venv, "run", "requirements.lock") == ["requirements.lock"]
    assert installs(venv, "chaos", "requirements.lock") == ["requirements-dev.lock"]
    assert installs(venv, "run", "requirements-dev.lock") == []
    assert installs(venv, "chaos", "requirements-dev.lock") == ["requirements-dev.lock"]


def test_the_runtime_lock_holds_no_test_tool_and_the_dev_lock_the_same_pins_plus_them():
    def pins(name: str) -> dict[str, str]:
        text = (ROOT / name).read_text()
        return dict(re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", text, flags=re.M))

    runtime, dev = pins("requirements.lock"), pins("requirements-dev.lock")
    assert {"dagster", "duckdb", "pyarrow", "websockets"} <= runtime.keys()
    assert not {"pytest", "moto", "polars", "pyspark", "pyinstrument"} & runtime.keys()
    assert {"pytest", "moto", "polars", "pyspark"} <= dev.keys()
    assert {k: dev[k] for k in runtime} == runtime  # moving between them changes no version
