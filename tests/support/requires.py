"""What a test needs from the machine (a system package, root to mount a file system).

A developer without it gets a skip that says what to install. CI (``CI`` set, as `.ci/run`
runs) installs or has everything, so there a missing piece is a broken CI set-up, and a
skip would hide that the promise went untested: the test fails instead.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(what: str) -> None:
    """Skip (developer machine) or fail (CI) because ``what`` is not available here."""
    if in_ci():
        pytest.fail(f"CI is set but {what}: this test must run in CI, so fix the CI machine set-up", pytrace=False)
    pytest.skip(what)


@contextlib.contextmanager
def tmpfs(mnt: Path, size_mib: int) -> Iterator[Path]:
    """A real size-limited tmpfs at ``mnt``, so disk-full tests get a real ENOSPC (mounting needs root)."""
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode:
        missing(f"cannot mount a tmpfs here ({res.stderr.strip() or 'needs root'}); "
                "the disk-full test needs a real size-limited file system")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
