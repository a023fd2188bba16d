"""What a test needs from the machine (a system package, root to mount a file system).

A developer without it gets a skip that says what to install. CI (``CI`` set, as `.ci/run`
runs) installs or has everything, so there a missing piece is a broken CI set-up, and a
skip would hide that the promise went untested: the test fails instead.
"""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(what: str) -> None:
    """Skip (developer machine) or fail (CI) because ``what`` is not available here."""
    if in_ci():
        pytest.fail(f"CI is set but {what}: this test must run in CI, so fix the CI machine set-up", pytrace=False)
    pytest.skip(what)
