"""What the UI shows of the checks matches what they mean: only ERROR checks are blocking."""

from __future__ import annotations

from orderbook_assets.archive import quality
from orderbook_assets.defs.assets import coverage
from orderbook_assets.defs.checks import CHECKS


def test_only_error_checks_are_declared_blocking():
    assert set(CHECKS) == set(quality.CHECKS)  # every dataset has its checks in the UI
    for dataset, checks in CHECKS.items():
        blocking = {spec.name: spec.blocking for spec in checks.check_specs}
        assert blocking == {name: severity == quality.ERROR for name, severity in quality.CHECKS[dataset].items()}, dataset
        assert {spec.asset_key.to_user_string() for spec in checks.check_specs} == {dataset}
    blocking = {spec.name: spec.blocking for spec in CHECKS["depth_snapshot"].check_specs}
    assert blocking["books_sane"] is False and blocking["no_duplicates"] is True
    assert {s.name: s.blocking for s in CHECKS["depth_update"].check_specs}["depth_continuity"] is True
    assert {s.name: s.blocking for s in CHECKS["trade"].check_specs}["trade_id_continuity"] is True
    (gaps,) = coverage.check_specs
    assert (gaps.name, gaps.blocking, quality.COVERAGE_CHECKS[gaps.name]) == ("coverage_gaps", False, quality.WARN)
    assert gaps.description.startswith("Warning only")
