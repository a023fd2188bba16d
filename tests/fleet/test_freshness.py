"""``collector_fresh``: fails when the newest acknowledged message is too old or an hour is not archived
in time; run through Dagster on a real buffer."""

from __future__ import annotations

from contextlib import closing

from dagster import DagsterInstance

from orderbook_assets.archive import freshness as fr
from orderbook_assets.definitions import build
from orderbook_core.buffer import now_us
from support.buffer_rows import BASE_HOUR_US, HOUR_US, fill_buffer, open_buffer

S = 1_000_000


def test_newest_message_age_and_overdue_hours(tmp_path):
    buffer = tmp_path / "buffer.sqlite3"
    rows = fill_buffer(buffer, ["btcusdt"], BASE_HOUR_US, 100)
    newest = max(r.recv_us for r in rows)
    with closing(open_buffer(buffer)) as conn:
        f = fr.freshness(conn, newest + 60 * S, max_age_s=120, deadline_min=30)
        assert (f.newest_recv_us, f.age_s, f.fresh) == (newest, 60.0, True)
        assert f.overdue_hours == [] and f.passed  # the hour ended less than 30 min ago
        late = fr.freshness(conn, BASE_HOUR_US + HOUR_US + 31 * 60 * S, max_age_s=120, deadline_min=30)
        assert not late.fresh and late.overdue_hours == [BASE_HOUR_US]
        assert late.problems() == [f"the newest acknowledged message is {late.age_s:.0f} s old (limit 120 s)",
                                   "1 hour(s) not archived 30 min after their end"]


def test_the_check_runs_per_host_and_fails_on_a_silent_collector(tmp_path, monkeypatch):
    buffer = tmp_path / "buffer.sqlite3"
    monkeypatch.setenv("ORDERBOOK_BUFFER", str(buffer))
    monkeypatch.setenv("ORDERBOOK_ARCHIVE_URL", str(tmp_path / "archive"))
    defs = build({"ORDERBOOK_HOST_ID": "host_a"})
    job = defs.resolve_job_def("check_freshness_host_a")
    fill_buffer(buffer, ["btcusdt"], now_us() - 5 * S, 10)  # recording now
    result = job.execute_in_process(instance=DagsterInstance.ephemeral(), raise_on_error=False)
    [check] = result.get_asset_check_evaluations()
    assert (check.asset_key.to_user_string(), check.check_name, check.passed) == ("host_a/collector", "collector_fresh", True)
    monkeypatch.setenv("ORDERBOOK_FRESHNESS_SECONDS", "1")  # now everything is too old
    result = job.execute_in_process(instance=DagsterInstance.ephemeral(), raise_on_error=False)
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and "s old (limit 1 s)" in check.metadata["problems"].value
