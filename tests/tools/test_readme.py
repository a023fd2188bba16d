"""The shell commands of the README and the docs pages run as written from the repository root after `make venv`."""

from __future__ import annotations

import importlib.util
import re

from support.procs import ROOT

#: How the docs run a command on the demo's world: the shell exports what data/demo/demo.env holds.
DEMO_ENV = "set -a; . data/demo/demo.env; set +a; "


def shell_lines() -> list[str]:
    text = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_every_python_module_the_readme_runs_exists():
    modules = {m for line in shell_lines() for m in re.findall(r"python -m ([\w.]+)", line)}
    assert modules, "the README runs no module?"
    missing = sorted(m for m in modules if importlib.util.find_spec(m) is None)
    assert not missing, missing


def test_dagster_commands_use_the_venv_and_the_instance_the_ui_shows():
    lines = [line for line in shell_lines() if re.search(r"(^|\s|/)dagster ", line)]
    assert lines
    for line in lines:
        assert ".venv/bin/dagster " in line, line  # no activated environment is assumed
        # Else a throwaway instance the UI never shows; the demo's file sets the demo's instance.
        assert "DAGSTER_HOME=" in line or line.startswith(DEMO_ENV), line


def test_the_demo_forms_source_the_file_the_demo_writes():
    demo_lines = [line for line in shell_lines() if "demo.env" in line]
    assert len(demo_lines) >= 3  # the README's example, the archive jobs, the query
    for line in demo_lines:
        assert line.startswith(DEMO_ENV), line
