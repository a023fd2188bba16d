"""What the UI shows of the checks matches what they mean: only ERROR checks are blocking."""

from __future__ import annotations

from orderbook_assets.archive import quality
from orderbook_assets.defs.assets import coverage
from orderbook_assets.defs.checks import depth_snapshot_checks


def test_only_error_checks_are_declared_blocking():
    blocking = {spec.name: spec.blocking for spec in depth_snapshot_checks.check_specs}
    assert blocking == {name: severity == quality.ERROR for name, severity in quality.CHECKS.items()}
    assert blocking["books_sane"] is False and blocking["no_duplicates"] is True
    (gaps,) = coverage.check_specs
    assert (gaps.name, gaps.blocking, quality.COVERAGE_CHECKS[gaps.name]) == ("coverage_gaps", False, quality.WARN)
    assert gaps.description.startswith("Warning only")
