"""Reconciliation with the exchange's own daily files: literal Parquet in the datasets' schemas on
one side, zips in the exchange's format (with their .CHECKSUM) on the other, ids dropped on purpose."""

from __future__ import annotations

import hashlib
import http.server
import json
import subprocess
import sys
import threading
import zipfile
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orderbook_assets.analytics import reconcile as rc
from orderbook_assets.archive import datasets as ds

ROOT = Path(__file__).resolve().parents[2]
DAY = date(2026, 11, 23)
DAY_US = int(datetime(2026, 11, 23, tzinfo=timezone.utc).timestamp()) * 1_000_000
HOUR_US = 3_600_000_000
STEP_US = 60_000_000  # one trade a minute


def trade_us(i: int, first: int, day_us: int = DAY_US) -> int:
    """The exchange time of trade ``i``: one a minute from 00:10 (ms precision plus 123 µs in µs files)."""
    return day_us + 600_000_000 + (i - first) * STEP_US


@dataclass
class Plan:
    """One stream: the exchange's ids, and what the archive does with them."""

    market: str
    symbol: str
    dataset: str
    first: int  # the exchange's first id of the day
    last: int
    archived: tuple[int, int]  # the archive's first and last id
    dropped: dict[str, list[int]] = field(default_factory=dict)  # Missing → ids missing from the archive
    not_official: list[int] = field(default_factory=list)  # ids the exchange file lacks
    changed_price: list[int] = field(default_factory=list)
    day_us: int = DAY_US

    @property
    def stream(self) -> str:
        return f"{self.symbol.lower()}@{'trade' if self.dataset == ds.TRADE else 'aggTrade'}"

    def time(self, i: int) -> int:
        return trade_us(i, self.first, self.day_us)

    def price(self, i: int) -> float:
        return 50_000.0 + (i % 97) * 0.01

    def qty(self, i: int) -> float:
        return round(0.001 * (1 + i % 13), 6)

    def maker(self, i: int) -> bool:
        return i % 3 == 0

    def archived_ids(self) -> list[int]:
        gone = {i for ids in self.dropped.values() for i in ids}
        return [i for i in range(self.archived[0], self.archived[1] + 1) if i not in gone]

    def official_ids(self) -> list[int]:
        return [i for i in range(self.first, self.last + 1) if i not in self.not_official]


def write_archive(root: Path, plans: list[Plan], coverage: list[dict]) -> None:
    by_hour: dict[tuple[str, int], list[dict]] = {}
    for p in plans:
        for seq, i in enumerate(p.archived_ids()):
            t = p.time(i) // 1000 * 1000  # the stream carries milliseconds
            row = dict(market=p.market, symbol=p.symbol, stream=p.stream, recv_time=t + 20_000, session_id=1 if t < p.day_us + 12 * HOUR_US else 2,
                       seq=seq, event_time=t, trade_time=t, price=p.price(i) + (1.0 if i in p.changed_price else 0.0),
                       qty=p.qty(i), is_buyer_maker=p.maker(i))
            if p.dataset == ds.TRADE:
                row["trade_id"] = i
            else:
                row.update(agg_trade_id=i, first_trade_id=10 * i, last_trade_id=10 * i + 2)
            by_hour.setdefault((p.dataset, (t + 20_000) // HOUR_US * HOUR_US), []).append(row)
    for (name, hour), rows in by_hour.items():
        schema = ds.DATASETS[name].schema
        folder = root / name / f"date={_day(hour)}" / f"hour={_hh(hour)}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / "part-0001-0-1.parquet")
    cov_hours: dict[int, list[dict]] = {}
    for row in coverage:
        cov_hours.setdefault(row["hour_start"], []).append(row)
    for hour, rows in cov_hours.items():
        folder = root / "coverage" / f"date={_day(hour)}" / f"hour={_hh(hour)}"
        folder.mkdir(parents=True, exist_ok=True)
        full = [{f.name: r.get(f.name) for f in ds.COVERAGE_SCHEMA} for r in rows]
        pq.write_table(pa.Table.from_pylist(full, schema=ds.COVERAGE_SCHEMA), folder / "part-0001-0-0.parquet")


def _day(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, timezone.utc).strftime("%Y-%m-%d")


def _hh(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, timezone.utc).strftime("%H")


def cov(record: str, hour_us: int, **values) -> dict:
    return dict(record=record, hour_start=hour_us, part=1, as_of=hour_us + HOUR_US, **values)


def csv_text(p: Plan, unit: rc.TimeUnit, header: bool) -> str:
    cols = rc.KINDS[p.dataset].columns[p.market]
    lines = [",".join(cols)] if header else []
    for i in p.official_ids():
        t = p.time(i) + 123 if unit is rc.TimeUnit.MICROSECONDS else p.time(i) // 1000
        m = "True" if p.maker(i) else "False"
        if p.dataset == ds.TRADE:
            row = [i, f"{p.price(i):.8f}", f"{p.qty(i):.8f}", f"{p.price(i) * p.qty(i):.8f}", t, m]
        else:
            row = [i, f"{p.price(i):.8f}", f"{p.qty(i):.8f}", 10 * i, 10 * i + 2, t, m]
        if len(cols) > len(row):
            row.append("True")
        lines.append(",".join(map(str, row)))
    return "\n".join(lines) + "\n"


def write_zip(folder: Path, p: Plan, unit: rc.TimeUnit, header: bool, day: date = DAY, flat: bool = False) -> Path:
    stream = rc.Stream(p.market, p.symbol, p.dataset)
    path = folder / stream.file_name(day) if flat else folder / "data" / stream.site_path(day)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(path.name.replace(".zip", ".csv"), csv_text(p, unit, header))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_name(path.name + ".CHECKSUM").write_text(f"{digest}  {path.name}\n")
    return path


# --------------------------------------------------------------------------- the scenario

SPOT = Plan("spot", "BTCUSDT", ds.TRADE, first=1000, last=1999, archived=(1010, 1989),
            dropped={rc.Missing.TRADE_GAP: [1100, 1101, 1102, 1103, 1104],
                     rc.Missing.OUTAGE: [1300, 1301, 1302],
                     rc.Missing.SILENT: [1400, 1401],
                     rc.Missing.LOST_SILENTLY: [1500, 1700, 1701]},
            not_official=[1800], changed_price=[1600])
USDM = Plan("usdm", "BTCUSDT", ds.TRADE, first=5000, last=5299, archived=(5000, 5299),
            dropped={rc.Missing.LOST_SILENTLY: [5050]})
AGG = Plan("spot", "ETHUSDT", ds.AGG_TRADE, first=700, last=899, archived=(700, 899))


def scenario_coverage() -> list[dict]:
    t = SPOT.time
    hour = lambda us: us // HOUR_US * HOUR_US  # noqa: E731
    return [
        # session 1 until a minute after trade 1299, session 2 from a minute before trade 1303: trades 1300-1302 in between
        cov("session", DAY_US, session_id=1, start_time=DAY_US - HOUR_US, end_time=t(1299) + 30_000_000),
        cov("session", hour(t(1303)), session_id=2, start_time=t(1303) - 30_000_000, end_time=None),
        cov("session", DAY_US + 23 * HOUR_US, session_id=2, start_time=t(1303) - 30_000_000, end_time=None),
        cov("trade_gap", hour(t(1105)), market="spot", stream=SPOT.stream, dataset=ds.TRADE, session_id=1,
            first_id=1100, last_id=1104, start_time=t(1099), end_time=t(1105), messages=5),
        # a trade_gap of another stream and market with the same ids: must not explain anything here
        cov("trade_gap", hour(t(1500)), market="usdm", stream=SPOT.stream, dataset=ds.TRADE, session_id=1,
            first_id=1500, last_id=1500, start_time=t(1499), end_time=t(1501), messages=1),
        cov("silent", hour(t(1400)), market="spot", stream=SPOT.stream, start_time=t(1399) + 1_000_000,
            end_time=t(1402) - 1_000_000),
    ]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reconcile")
    archive, official = tmp / "archive", tmp / "official"
    write_archive(archive, [SPOT, USDM, AGG], scenario_coverage())
    write_zip(official, SPOT, rc.TimeUnit.MICROSECONDS, header=True)
    write_zip(official, USDM, rc.TimeUnit.MILLISECONDS, header=False)
    write_zip(official, AGG, rc.TimeUnit.MICROSECONDS, header=False)
    return archive, official


def by_stream(report: rc.Report) -> dict[tuple[str, str, str], rc.StreamReport]:
    return {(s.market, s.symbol, s.dataset): s for s in report.streams}


def test_finds_exactly_the_dropped_trades_and_tells_known_gaps_from_silent_loss(world):
    archive, official = world
    report = rc.reconcile(DAY, str(official), str(archive))
    streams = by_stream(report)
    assert set(streams) == {("spot", "BTCUSDT", "trade"), ("usdm", "BTCUSDT", "trade"), ("spot", "ETHUSDT", "agg_trade")}
    spot = streams["spot", "BTCUSDT", "trade"]
    assert spot.status is rc.Status.COMPARED and spot.time_unit is rc.TimeUnit.MICROSECONDS
    assert spot.official_rows == 999 and spot.archived_rows == len(SPOT.archived_ids())
    assert spot.missing == {rc.Missing.OUTSIDE_SPAN: 20, rc.Missing.TRADE_GAP: 5, rc.Missing.OUTAGE: 3,
                            rc.Missing.SILENT: 2, rc.Missing.LOST_SILENTLY: 3}
    assert spot.lost_silently_ranges == [[1500, 1500], [1700, 1701]]
    assert (spot.extra, spot.extra_ids) == (1, [1800])
    assert spot.differing == {"price": 1, "qty": 0, "time": 0, "is_buyer_maker": 0}
    assert spot.differing_examples == [{"id": 1600, "field": "price", "archived": SPOT.price(1600) + 1.0,
                                        "official": SPOT.price(1600)}]
    usdm = streams["usdm", "BTCUSDT", "trade"]
    assert usdm.time_unit is rc.TimeUnit.MILLISECONDS and usdm.lost_silently_ranges == [[5050, 5050]]
    assert usdm.missing[rc.Missing.LOST_SILENTLY] == 1 and sum(usdm.missing.values()) == 1
    agg = streams["spot", "ETHUSDT", "agg_trade"]
    assert agg.matched == 200 and sum(agg.missing.values()) == 0 and agg.extra == 0
    assert agg.differing == {c: 0 for c in rc.COMPARED[ds.AGG_TRADE]}
    assert report.lost_silently == 4


def test_a_changed_value_of_every_kind_is_flagged(tmp_path):
    plan = Plan("spot", "BTCUSDT", ds.AGG_TRADE, first=1, last=50, archived=(1, 50))
    write_archive(tmp_path / "archive", [plan], [])
    path = write_zip(tmp_path / "official", plan, rc.TimeUnit.MILLISECONDS, header=True)
    text = csv_text(plan, rc.TimeUnit.MILLISECONDS, header=True).splitlines()
    row = text[10].split(",")  # id 10
    row[2], row[3], row[5], row[6] = "9.5", "0", str(int(row[5]) + 1), "True" if row[6] == "False" else "False"
    text[10] = ",".join(row)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(path.name.replace(".zip", ".csv"), "\n".join(text) + "\n")
    path.with_name(path.name + ".CHECKSUM").write_text(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n")
    s = rc.reconcile(DAY, str(tmp_path / "official"), str(tmp_path / "archive")).streams[0]
    assert s.differing == {"price": 0, "qty": 1, "time": 1, "is_buyer_maker": 1, "first_trade_id": 1, "last_trade_id": 0}
    assert {e["id"] for e in s.differing_examples} == {10}


@pytest.mark.parametrize("unit,header,day", [
    (rc.TimeUnit.MILLISECONDS, True, date(2024, 6, 3)),  # spot before 2025: milliseconds
    (rc.TimeUnit.MICROSECONDS, False, DAY),
    (rc.TimeUnit.MILLISECONDS, False, DAY),
])
def test_reads_both_time_units_with_and_without_header(tmp_path, unit, header, day):
    day_us = int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp()) * 1_000_000
    plan = Plan("spot", "SOLUSDT", ds.TRADE, first=1, last=100, archived=(1, 100), dropped={"x": [40]}, day_us=day_us)
    write_archive(tmp_path / "archive", [plan], [cov("session", day_us, session_id=1, start_time=day_us, end_time=day_us + 24 * HOUR_US)])
    write_zip(tmp_path / "official", plan, unit, header, day=day, flat=True)  # a flat folder, as downloaded by hand
    s = rc.reconcile(day, str(tmp_path / "official"), str(tmp_path / "archive")).streams[0]
    assert s.time_unit is unit and s.official_rows == 100 and s.matched == 99
    assert s.lost_silently_ranges == [[40, 40]] and s.differing["time"] == 0 and s.differing["price"] == 0


def test_unit_detection_and_header_sniffing_on_literal_values(tmp_path):
    assert rc.unit_of(1_735_689_600_000, 1_735_775_999_999, "f") is rc.TimeUnit.MILLISECONDS
    assert rc.unit_of(1_735_689_600_000_000, 1_735_775_999_999_999, "f") is rc.TimeUnit.MICROSECONDS
    with pytest.raises(rc.ReconcileInputError, match="mixes"):
        rc.unit_of(1_735_689_600_000, 1_735_775_999_999_999, "f")
    (tmp_path / "h.csv").write_text("id,price,qty\n1,2,3\n")
    (tmp_path / "n.csv").write_text("1,2,3\n")
    assert rc.sniff(tmp_path / "h.csv") == rc.CsvShape(True, 3) and rc.sniff(tmp_path / "n.csv") == rc.CsvShape(False, 3)


def run_cli(*args: str, env_archive: Path | None = None) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("ORDERBOOK_ARCHIVE_URL", None)
    return subprocess.run([sys.executable, "-m", "orderbook_assets.analytics.query", "reconcile", *args],
                          capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)


def test_cli_exit_1_on_silent_loss_with_json(world):
    archive, official = world
    out = run_cli("--date", str(DAY), "--official", str(official), "--archive", str(archive), "--json")
    assert out.returncode == 1, out.stderr
    doc = json.loads(out.stdout)
    assert doc["lost_silently"] == 4 and doc["date"] == "2026-11-23"
    spot = next(s for s in doc["streams"] if s["market"] == "spot" and s["dataset"] == "trade")
    assert spot["missing"]["lost_silently"] == 3 and spot["missing"]["outside_span"] == 20
    assert spot["time_unit"] == "us" and spot["extra_ids"] == [1800]


def test_cli_exit_0_when_nothing_was_lost_silently(world):
    archive, official = world
    out = run_cli("--date", str(DAY), "--official", str(official), "--archive", str(archive), "--symbols", "ethusdt")
    assert out.returncode == 0, out.stderr
    assert "spot ETHUSDT agg_trade: 200 official (us), 200 archived, 200 matched" in out.stdout
    assert "lost silently: 0" in out.stdout


def test_a_zip_that_does_not_match_its_checksum_is_refused(world, tmp_path):
    archive, _ = world
    official = tmp_path / "official"
    path = write_zip(official, AGG, rc.TimeUnit.MICROSECONDS, header=False)
    with zipfile.ZipFile(path, "a") as z:  # changed after its checksum was taken
        z.writestr("extra.txt", "x")
    out = run_cli("--date", str(DAY), "--official", str(official), "--archive", str(archive), "--symbols", "ETHUSDT")
    assert out.returncode == 2
    assert "does not match its .CHECKSUM" in out.stderr and out.stderr.count("\n") == 1 and out.stdout == ""
    path.with_name(path.name + ".CHECKSUM").unlink()
    with pytest.raises(rc.ReconcileInputError, match="no .CHECKSUM"):
        rc.reconcile(DAY, str(official), str(archive), ["ETHUSDT"])


def test_bad_input_exits_2(world, tmp_path):
    archive, official = world
    assert run_cli("--date", "2026-13-01", "--official", str(official), "--archive", str(archive)).returncode == 2
    empty = run_cli("--date", str(DAY), "--official", str(tmp_path), "--archive", str(archive))
    assert empty.returncode == 2 and "has no file for any" in empty.stderr
    other_day = run_cli("--date", "2026-11-20", "--official", str(official), "--archive", str(archive))
    assert other_day.returncode == 2 and "holds no trades" in other_day.stderr


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_base_url_form_against_a_local_http_server(world):
    archive, official = world
    handler = lambda *a, **k: _Quiet(*a, directory=str(official), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        from_url = rc.reconcile(DAY, url, str(archive))
        from_folder = rc.reconcile(DAY, str(official), str(archive))
        assert [s.official_file for s in from_url.streams] == [
            f"{url}/data/{rc.Stream(s.market, s.symbol, s.dataset).site_path(DAY)}" for s in from_url.streams]
        strip = lambda r: [dict(d, official_file=None) for d in r.to_dict()["streams"]]  # noqa: E731
        assert strip(from_url) == strip(from_folder)
        out = run_cli("--date", str(DAY), "--official", url + "/data", "--archive", str(archive), "--json")
        assert out.returncode == 1 and json.loads(out.stdout)["lost_silently"] == 4
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- the daily Dagster asset


def run_day(monkeypatch, archive: Path, official: Path, tmp_path: Path):
    from dagster import instance_for_test

    from orderbook_assets.definitions import build
    from orderbook_assets import settings
    from orderbook_assets.defs import reconcile as defs_rc

    monkeypatch.setenv("ORDERBOOK_ARCHIVE_URL", str(archive))
    monkeypatch.setenv(settings.OFFICIAL_URL, str(official))
    monkeypatch.setenv("ORDERBOOK_BUFFER", str(tmp_path / "buffer.sqlite3"))
    for name in ("ORDERBOOK_HOST_ID", "ORDERBOOK_FLEET_HOSTS"):
        monkeypatch.delenv(name, raising=False)
    defs = build()
    job = defs.resolve_job_def(defs_rc.JOB)
    (tmp_path / "dagster").mkdir()
    with instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        result = job.execute_in_process(partition_key=str(DAY), instance=instance, raise_on_error=False)
        checks = [e for e in result.get_asset_check_evaluations() if e.check_name == defs_rc.CHECK]
        mats = [e.step_materialization_data.materialization for e in result.get_asset_materialization_events()]
        stored = instance.get_latest_materialization_event(AssetKey(defs_rc.ASSET))
    return result, checks, mats, stored


from dagster import AssetKey  # noqa: E402


def test_daily_asset_materializes_and_its_blocking_check_fails_on_silent_loss(world, monkeypatch, tmp_path):
    archive, official = world
    result, checks, mats, stored = run_day(monkeypatch, archive, official, tmp_path)
    assert len(mats) == 1 and mats[0].partition == str(DAY) and stored is not None
    assert mats[0].metadata["lost_silently"].value == 4 and mats[0].metadata["streams_compared"].value == 3
    assert len(checks) == 1 and not checks[0].passed and checks[0].blocking
    # blocking: the failed check fails the run, so nothing downstream of the day would run
    assert not result.success and [e.event_type_value for e in result.all_events if "FAIL" in e.event_type_value] == [
        "STEP_FAILURE", "PIPELINE_FAILURE"]
    assert checks[0].metadata["lost_silently"].value == 4


def test_daily_check_passes_when_nothing_was_lost_silently(monkeypatch, tmp_path):
    plan = Plan("spot", "BTCUSDT", ds.TRADE, first=1, last=100, archived=(3, 100), dropped={rc.Missing.TRADE_GAP: [50]})
    write_archive(tmp_path / "archive", [plan], [cov("trade_gap", DAY_US, market="spot", stream=plan.stream,
                                                     dataset=ds.TRADE, first_id=50, last_id=50)])
    write_zip(tmp_path / "official", plan, rc.TimeUnit.MICROSECONDS, header=True)
    result, checks, mats, _ = run_day(monkeypatch, tmp_path / "archive", tmp_path / "official", tmp_path)
    assert result.success and len(checks) == 1 and checks[0].passed
    assert mats[0].metadata["report"].value["streams"][0]["missing"] == {
        "outside_span": 2, "trade_gap": 1, "silent": 0, "outage": 0, "lost_silently": 0}


def test_reconciliation_is_off_unless_configured():
    from dagster import Definitions

    from orderbook_assets.definitions import build

    off = build({})
    assert "reconcile_day" not in {j.name for j in off.resolve_all_job_defs()}
    on = build({"ORDERBOOK_OFFICIAL_URL": "https://data.binance.vision"})
    assert on.resolve_job_def("reconcile_day") is not None
    assert on.resolve_schedule_def("reconcile_day_schedule").job_name == "reconcile_day"
    node = on.resolve_asset_graph().get(AssetKey("trade_reconciliation"))
    assert set(node.parent_keys) == {AssetKey("trade"), AssetKey("agg_trade"), AssetKey("coverage")}
    Definitions.validate_loadable(on)
    fleet = build({"ORDERBOOK_OFFICIAL_URL": "x", "ORDERBOOK_FLEET_HOSTS": "a,b"})
    assert set(fleet.resolve_asset_graph().get(AssetKey("trade_reconciliation")).parent_keys) == {
        AssetKey(["fleet", n]) for n in ("trade", "agg_trade", "coverage")}
    host_only = build({"ORDERBOOK_OFFICIAL_URL": "x", "ORDERBOOK_HOST_ID": "a"})
    assert "reconcile_day" not in {j.name for j in host_only.resolve_all_job_defs()}


def test_a_flat_folder_tells_the_market_by_the_columns_and_unproven_is_no_pass(world, tmp_path):
    archive, _ = world
    write_zip(tmp_path, USDM, rc.TimeUnit.MILLISECONDS, header=True, flat=True)  # same name as spot's file
    report = rc.reconcile(DAY, str(tmp_path), str(archive), ["BTCUSDT"])
    streams = by_stream(report)
    assert streams["usdm", "BTCUSDT", "trade"].status is rc.Status.COMPARED
    assert streams["usdm", "BTCUSDT", "trade"].lost_silently_ranges == [[5050, 5050]]
    spot = streams["spot", "BTCUSDT", "trade"]
    assert spot.status is rc.Status.UNPROVEN and spot.matched == 0 and "unproven" in spot.summary()


def test_a_csv_of_the_wrong_shape_is_refused(world, tmp_path):
    archive, _ = world
    path = tmp_path / "data" / rc.Stream("spot", "ETHUSDT", ds.AGG_TRADE).site_path(DAY)
    path.parent.mkdir(parents=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(path.name.replace(".zip", ".csv"), "1,2,3\n")
    path.with_name(path.name + ".CHECKSUM").write_text(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n")
    with pytest.raises(rc.ReconcileInputError, match="has 3 columns, but spot aggTrades files have 8"):
        rc.reconcile(DAY, str(tmp_path), str(archive), ["ETHUSDT"])
