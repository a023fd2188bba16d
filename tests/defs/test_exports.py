"""``backtest_exports``: a day of the archive kept as the backtesters' files next to the archive,
byte for byte what ``orderbook export`` writes, verified, unchanged by a re-run; off unless
``ORDERBOOK_EXPORT_FORMATS`` names formats."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import DagsterInstance

from orderbook_assets.analytics import backtest as bt
from orderbook_assets.archive import datasets
from orderbook_assets.definitions import build
from orderbook_assets.defs import exports
from orderbook_assets.settings import load
from orderbook_core.buffer.hours import hour_folder
from orderbook_core.errors import ConfigError

DAY = "2026-12-01"
T0 = 1_796_083_200_000_000  # 2026-12-01T00:00:00Z in µs
S, MS, H = 1_000_000, 1000, 3_600_000_000
STREAM = "btcusdt@depth@100ms"


def lv(*pairs):
    return [{"price": p, "qty": q} for p, q in pairs]


def write(archive: Path, dataset: str, rows: list[dict]) -> None:
    by_hour: dict[str, list[dict]] = {}
    for r in rows:
        by_hour.setdefault(hour_folder(r["recv_time"] // H * H), []).append(r)
    for folder, part in by_hour.items():
        path = archive / dataset / folder / "part-0.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(part, schema=datasets.DATASETS[dataset].schema), path)


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    root = tmp_path / "archive"
    base = dict(market="spot", symbol="BTCUSDT", stream=STREAM)
    write(root, "depth_rest_snapshot", [dict(base, recv_time=T0 - S, session_id=None, seq=None, last_update_id=100,
                                             bids=lv((100.0, 1.0)), asks=lv((100.5, 2.0)), reason="connect",
                                             event_time=None, transaction_time=None)])
    write(root, "depth_update", [
        dict(base, recv_time=T0 - S // 2, session_id=1, seq=1, event_time=T0 - S, transaction_time=None,
             first_update_id=101, last_update_id=102, prev_update_id=None, bids=lv((100.0, 1.5)), asks=[]),
        dict(base, recv_time=T0 + 10 * S, session_id=1, seq=2, event_time=T0 + 10 * S - MS, transaction_time=None,
             first_update_id=103, last_update_id=104, prev_update_id=None, bids=[], asks=lv((100.5, 0.0), (100.7, 1.0))),
    ])
    write(root, "trade", [
        dict(market="spot", symbol="BTCUSDT", stream="btcusdt@trade", recv_time=T0 + i * H + S, session_id=1, seq=i,
             event_time=T0 + i * H, trade_time=T0 + i * H - MS, trade_id=7 + i, price=100.25 + i / 4, qty=0.5,
             is_buyer_maker=bool(i % 2)) for i in range(3)])
    return root


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_day(monkeypatch, archive: Path, formats: str):
    monkeypatch.setenv("ORDERBOOK_ARCHIVE_URL", str(archive))
    monkeypatch.setenv("ORDERBOOK_EXPORT_FORMATS", formats)
    defs = build({"ORDERBOOK_EXPORT_FORMATS": formats})
    result = defs.resolve_job_def(exports.JOB).execute_in_process(partition_key=DAY,
                                                                   instance=DagsterInstance.ephemeral())
    assert result.success
    (mat,) = result.asset_materializations_for_node(exports.ASSET)
    return mat.metadata


def test_a_day_is_kept_next_to_the_archive_as_the_command_writes_it(archive, tmp_path, monkeypatch):
    meta = run_day(monkeypatch, archive, "tardis,hftbacktest")
    kept = files(archive / exports.PREFIX)
    expected = {}
    for fmt in ("tardis", "hftbacktest"):
        out = tmp_path / "cli" / fmt
        bt.export(str(archive), fmt, DAY, out)
        expected.update({f"{fmt}/{k}": v for k, v in files(out).items()})
    assert kept == expected  # byte for byte what `orderbook export` writes, every file of both formats
    assert f"tardis/binance/trades/{DAY}_BTCUSDT.csv.gz" in kept
    assert f"tardis/binance/incremental_book_L2/{DAY}_BTCUSDT.csv.gz" in kept
    assert any(k.startswith("hftbacktest/") and k.endswith(".npz") for k in kept)
    assert meta["files"].value == len(kept) and meta["rows"].value > 0
    # a re-run (late parts, a retry) publishes the same bytes again: nothing changes
    run_day(monkeypatch, archive, "tardis,hftbacktest")
    assert files(archive / exports.PREFIX) == kept


def test_a_day_with_nothing_archived_exports_nothing_and_says_so(tmp_path, monkeypatch):
    (tmp_path / "archive").mkdir()
    meta = run_day(monkeypatch, tmp_path / "archive", "tardis")
    assert meta["files"].value == 0 and "no data" in str(meta["notes"].value)
    assert not (tmp_path / "archive" / exports.PREFIX).exists()


def test_the_daily_export_is_off_unless_formats_are_named():
    def jobs(environ):
        return {j.name for j in build(environ).resolve_all_job_defs()}

    assert exports.JOB not in jobs({})
    assert exports.JOB in jobs({"ORDERBOOK_EXPORT_FORMATS": "tardis"})
    with pytest.raises(ConfigError, match="ORDERBOOK_EXPORT_FORMATS: 'csv' is not an export format"):
        load({"ORDERBOOK_EXPORT_FORMATS": "csv"})
