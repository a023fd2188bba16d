"""Shared fixtures. Everything is real: files in tmp_path, sockets on loopback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from support.frames import depth_frame
from support.requires import tmpfs


@pytest.fixture(scope="session", autouse=True)
def dagster_home(tmp_path_factory) -> Path:
    """Every Dagster instance in the suite (in-process or CLI child) lives in a throw-away home."""
    import os

    home = tmp_path_factory.mktemp("dagster_home")
    old = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("DAGSTER_HOME", None)
    else:
        os.environ["DAGSTER_HOME"] = old


@pytest.fixture
def buffer_path(tmp_path: Path) -> Path:
    return tmp_path / "buffer.sqlite3"


@pytest.fixture
def frame():
    return depth_frame


@pytest.fixture
def small_fs(tmp_path: Path):
    """A real 8 MiB tmpfs, so disk-full tests get a real ENOSPC (needs root to mount)."""
    with tmpfs(tmp_path / "small_fs", 8) as mnt:
        yield mnt


def pytest_collection_modifyitems(config, items):
    """Tests under tests/doubles/ test the test doubles, not the product: mark them so."""
    doubles = Path(__file__).parent / "doubles"
    for item in items:
        if doubles in Path(item.fspath).parents:
            item.add_marker(pytest.mark.doubles)
