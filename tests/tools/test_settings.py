"""`make run` / `make demo` validate every setting before starting anything: a bad one is one
sentence naming the setting and the command the user ran, exit 2, no traceback, nothing started."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from support.procs import ROOT, child_env


def run_launcher(tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess:
    for name in ("dagster.yaml", "workspace.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    return subprocess.run([sys.executable, "-m", "tools.run", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env=child_env(DAGSTER_PORT="0", ORDERBOOK_METRICS_PORT="0",
                                                    ORDERBOOK_SIMULATOR_PORT="0", **env))


@pytest.mark.parametrize(("args", "command"), [(("--simulator",), "make demo"), ((), "make run")])
def test_a_bad_stream_kind_is_one_line_naming_the_setting_and_the_command(tmp_path, args, command):
    result = run_launcher(tmp_path, *args, ORDERBOOK_STREAMS="depth20@100ms,nosuchkind")
    assert result.returncode == 2
    assert result.stdout == ""  # nothing announced: nothing started
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{command}: ORDERBOOK_STREAMS: "), lines
    assert "nosuchkind" in lines[0]
    assert not (tmp_path / "data").exists() and not (tmp_path / ".dagster_home").exists()


def test_an_archive_url_of_another_scheme_is_refused_before_anything_starts(tmp_path):
    result = run_launcher(tmp_path, ORDERBOOK_ARCHIVE_URL="ftp://host/x")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("make run: ORDERBOOK_ARCHIVE_URL: "), lines
    assert not (tmp_path / "data").exists() and not (tmp_path / ".dagster_home").exists()
