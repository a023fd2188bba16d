"""A real PostgreSQL 15 cluster for the fleet tests (one per module), and a Dagster home on it."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from support.postgres import remove, start_cluster


@pytest.fixture(scope="module")
def postgres():
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        remove(cluster)


@pytest.fixture
def pg_url(postgres) -> str:
    """A fresh database of the cluster for one test."""
    return postgres.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def fleet_home(tmp_path: Path, pg_url: str, monkeypatch) -> Path:
    """A DAGSTER_HOME with the one-machine fleet's dagster.yaml (deploy/dagster.yaml, local compute logs)."""
    from tools.fleet import write_home

    monkeypatch.setenv("DAGSTER_PG_URL", pg_url)
    return write_home(tmp_path / "dagster_home")
