"""The demo's archive says it is simulated: a marker object at its root and the UI's metadata."""

from __future__ import annotations

from dagster import DagsterInstance

from orderbook_assets import settings
from orderbook_assets.archive import source
from orderbook_assets.definitions import defs

from support.runs import checks_of, materialized
from support.buffer_rows import BASE_HOUR_US, fill_buffer

KEY = "2026-11-23-10:00"


def run_hour(tmp_path, monkeypatch, origin: str | None):
    monkeypatch.setenv("ORDERBOOK_BUFFER", str(tmp_path / "buffer.sqlite3"))
    monkeypatch.setenv("ORDERBOOK_ARCHIVE_URL", str(tmp_path / "archive"))
    if origin is None:
        monkeypatch.delenv(settings.DATA_SOURCE, raising=False)
    else:
        monkeypatch.setenv(settings.DATA_SOURCE, origin)
    fill_buffer(tmp_path / "buffer.sqlite3", ["btcusdt"], BASE_HOUR_US + 5_000_000, 50)
    job = defs.resolve_job_def("archive_hour")
    return job.execute_in_process(partition_key=KEY, instance=DagsterInstance.ephemeral(), raise_on_error=False)


def test_a_simulated_archive_carries_a_marker_and_says_so_in_the_metadata(tmp_path, monkeypatch):
    result = run_hour(tmp_path, monkeypatch, source.SIMULATED)
    assert result.success
    marker = tmp_path / "archive" / source.MARKER_KEY
    assert "simulated exchange" in marker.read_text()
    for node in ("depth_snapshot", "archived_hour"):
        meta = materialized(result, node)[0].metadata
        assert "simulated" in meta["data_source"].value


def test_real_data_has_no_marker(tmp_path, monkeypatch):
    result = run_hour(tmp_path, monkeypatch, None)
    assert result.success
    assert not (tmp_path / "archive" / source.MARKER_KEY).exists()
    assert materialized(result, "depth_snapshot")[0].metadata["data_source"].value == "Binance"


def test_an_hour_without_rows_archives_nothing_at_all(tmp_path, monkeypatch):
    """Not even derived files: an empty bars file would claim an hour that holds no data."""
    monkeypatch.setenv("ORDERBOOK_BUFFER", str(tmp_path / "buffer.sqlite3"))
    monkeypatch.setenv("ORDERBOOK_ARCHIVE_URL", str(tmp_path / "archive"))
    monkeypatch.setenv(settings.DATA_SOURCE, source.SIMULATED)
    fill_buffer(tmp_path / "buffer.sqlite3", ["btcusdt"], BASE_HOUR_US + 5_000_000, 50)  # rows in 10:00 only
    job = defs.resolve_job_def("archive_hour")
    result = job.execute_in_process(partition_key="2026-11-23-11:00", instance=DagsterInstance.ephemeral(),
                                    raise_on_error=False)
    assert result.success
    archived = [p for p in (tmp_path / "archive").rglob("*") if p.is_file()] if (tmp_path / "archive").exists() else []
    assert archived == []
    bars_meta = result.asset_materializations_for_node("top_of_book_1s")[0].metadata
    assert "nothing written" in bars_meta["path"].value
