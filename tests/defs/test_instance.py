"""The repository's dagster.yaml, as Dagster loads it from DAGSTER_HOME."""

from __future__ import annotations

import shutil
from pathlib import Path

from dagster import DagsterInstance


def test_the_repository_instance_settings_turn_the_ui_sign_up_modal_off(tmp_path):
    shutil.copy(Path(__file__).resolve().parents[2] / "dagster.yaml", tmp_path / "dagster.yaml")
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.nux_enabled is False
