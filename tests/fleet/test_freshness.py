"""``collector_fresh``: fails when the newest acknowledged message is too old or an hour is not archived
in time; run through Dagster on a real buffer."""

from __future__ import annotations

from contextlib import closing

from dagster import DagsterInstance, RunRequest, SkipReason, build_sensor_context

from orderbook_assets.archive import freshness as fr
from orderbook_core import buffer as buf
from orderbook_core.buffer import ledger
from orderbook_core.buffer.schema import PartState
from orderbook_core.buffer.records import BookTickerRecord, SessionOpen, TradeRecord
from orderbook_collector.writer.thread import store_records
from orderbook_assets.definitions import build
from orderbook_assets.defs.freshness import check_freshness_sensor
from orderbook_assets.defs.resources import BufferResource
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
        # parts verified but not yet archived leave the hour overdue; archived, it is not
        parts = ledger.plan_round(conn, BASE_HOUR_US)
        assert parts
        for p in parts:
            ledger.advance(conn, p, PartState.VERIFIED)
        assert fr.overdue_hours(conn, BASE_HOUR_US + HOUR_US + 31 * 60 * S, 30) == [BASE_HOUR_US]
        for p in parts:
            ledger.advance(conn, p, PartState.ARCHIVED)
        assert fr.overdue_hours(conn, BASE_HOUR_US + HOUR_US + 31 * 60 * S, 30) == []


def trades_and_tickers(path, trades_at: list[int], tickers_at: list[int]) -> None:
    """Store trades and bookTickers received at these times (one session), nothing else."""
    sid = min(trades_at + tickers_at)
    rows = [TradeRecord("btcusdt@trade", t, sid, 0, t // 1000, t // 1000, i, 100.5, 1.0, False, 0)
            for i, t in enumerate(trades_at)]
    rows += [BookTickerRecord("btcusdt@bookTicker", t, sid, 0, i, 100.4, 1.0, 100.6, 2.0, None, None, 0)
             for i, t in enumerate(tickers_at)]
    rows = [r._replace(seq=i) for i, r in enumerate(sorted(rows, key=lambda r: r.recv_us))]
    with closing(open_buffer(path)) as conn:
        ids = buf.stream_ids(conn, [("btcusdt@trade", "btcusdt", "trade"), ("btcusdt@bookTicker", "btcusdt", "bookTicker")])
        store_records(conn, ids, rows, ops=[SessionOpen(sid, "wss://test", "[]", sid)])


def test_a_collector_recording_only_trades_is_fresh_and_its_hours_are_watched(tmp_path):
    buffer = tmp_path / "buffer.sqlite3"
    trades_at = [BASE_HOUR_US + i * S for i in range(10)]
    trades_and_tickers(buffer, trades_at, [])
    with closing(open_buffer(buffer)) as conn:
        f = fr.freshness(conn, trades_at[-1] + 60 * S, max_age_s=120, deadline_min=30)
        assert (f.newest_recv_us, f.age_s, f.passed) == (trades_at[-1], 60.0, True)
        late = fr.freshness(conn, BASE_HOUR_US + HOUR_US + 31 * 60 * S, max_age_s=120, deadline_min=30)
        assert late.overdue_hours == [BASE_HOUR_US]  # the trades' hour is not archived


def test_the_newest_row_of_any_dataset_decides_and_too_old_is_not_fresh(tmp_path):
    buffer = tmp_path / "buffer.sqlite3"
    # trades stopped early; the bookTicker, newest of all, 200 s before "now"
    trades_and_tickers(buffer, [BASE_HOUR_US + S], [BASE_HOUR_US + 2 * S, BASE_HOUR_US + 100 * S])
    with closing(open_buffer(buffer)) as conn:
        f = fr.freshness(conn, BASE_HOUR_US + 300 * S, max_age_s=120, deadline_min=30)
        assert (f.newest_recv_us, f.age_s, f.fresh) == (BASE_HOUR_US + 100 * S, 200.0, False)
        assert fr.freshness(conn, BASE_HOUR_US + 160 * S, max_age_s=120, deadline_min=30).fresh


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


def test_the_verdict_leaves_out_what_changes_on_every_look(tmp_path):
    buffer = tmp_path / "buffer.sqlite3"
    rows = fill_buffer(buffer, ["btcusdt"], BASE_HOUR_US, 100)
    newest = max(r.recv_us for r in rows)
    with closing(open_buffer(buffer)) as conn:
        looks = [fr.freshness(conn, newest + s * S, max_age_s=120, deadline_min=30) for s in (1, 60)]
        assert {fr.verdict(f) for f in looks} == {"recording; overdue hours: none"}
        late = fr.freshness(conn, BASE_HOUR_US + HOUR_US + 31 * 60 * S, max_age_s=120, deadline_min=30)
        assert fr.verdict(late) == "stale; overdue hours: 2026-11-23T10:00Z"


def test_the_sensor_runs_the_check_only_when_the_verdict_changes(tmp_path, monkeypatch):
    """Quiet while nothing changes: no run (and none of a run's log lines) every 5 minutes."""
    buffer = tmp_path / "buffer.sqlite3"
    fill_buffer(buffer, ["btcusdt"], now_us() - 5 * S, 10)  # recording now
    resources = {"buffer": BufferResource(path=str(buffer))}

    def look(cursor):
        context = build_sensor_context(cursor=cursor, resources=resources)
        return check_freshness_sensor(context), context.cursor

    first, cursor = look(None)
    assert isinstance(first, RunRequest) and cursor == "recording; overdue hours: none"
    again, same = look(cursor)
    assert isinstance(again, SkipReason) and same == cursor
    assert again.skip_message == "unchanged: recording; overdue hours: none"
    monkeypatch.setenv("ORDERBOOK_FRESHNESS_SECONDS", "1")  # the collector "stopped" 5 s ago
    changed, stale = look(cursor)
    assert isinstance(changed, RunRequest) and stale == "stale; overdue hours: none"
    assert isinstance(look(stale)[0], SkipReason)
