"""Reading what a Dagster run materialized, by asset (the stream datasets share one step)."""

from __future__ import annotations

from dagster import AssetKey


def materialized(result, asset: str) -> list:
    """The materializations of ``asset`` in an in-process run's result, in order."""
    key = AssetKey(asset)
    return [e.step_materialization_data.materialization for e in result.get_asset_materialization_events()
            if e.asset_key == key]


def checks_of(result, asset: str) -> dict:
    """check name → evaluation, for one asset's checks in the run."""
    key = AssetKey(asset)
    return {e.check_name: e for e in result.get_asset_check_evaluations() if e.asset_key == key}
