"""Open interest polled over REST by the real collector from the simulated exchange, into a real
buffer and through ``archive_hour``: under a weight storm without a 429, every answer stored once
with its values, a failed poll a recorded gap (a silence of the series), a refused answer
quarantined with its reason; and the poll period planned within the weight allowance (sans I/O)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter

import duckdb
import pytest
from dagster import DagsterInstance

from orderbook_assets.archive import datasets, quality
from orderbook_assets.definitions import defs
from orderbook_assets.defs.partitions import hourly
from orderbook_collector.config import Settings, load
from orderbook_collector.connection.open_interest import OPEN_INTEREST_SHARE, PollPlan, poll_period
from orderbook_core.errors import ConfigError
from orderbook_core.streams import Market
from support.markets import running, until
from support.procs import query
from support.runs import checks_of, materialized
from tools.simulator.exchange import Exchange

USDM = Market.USDM
KEY = "usdm:btcusdt@openInterest"


def settings_for(ex: Exchange, buffer, **kw) -> Settings:
    base = Settings(
        symbols=["btcusdt"], streams=["trade"], ws_url=ex.ws_url, rest_url=ex.rest_url,
        usdm_symbols=["btcusdt"], usdm_streams=["trade"], usdm_ws_url=ex.ws_url, usdm_rest_url=ex.rest_url,
        buffer=buffer, metrics_port=-1, backoff_initial=0.05, backoff_max=0.2, min_session=0.0,
        open_interest_seconds=0.2,
    )
    return dataclasses.replace(base, **kw)


def stored(buffer) -> list[tuple]:
    """(symbol, time ms, open interest) of every stored answer, in the order stored."""
    return query(buffer, "SELECT symbol, time_ms, open_interest FROM open_interest ORDER BY id")


def answered(ex: Exchange) -> list[tuple]:
    """(symbol, time ms, open interest) of every good answer the exchange gave, in order."""
    return [(x["symbol"], x["time"], float(x["openInterest"])) for x in ex.open_interest_sent if x["fault"] is None]


# ---- sans I/O ----------------------------------------------------------------------------

def test_the_poll_period_is_the_one_asked_within_the_share_and_stretched_beyond():
    # 2400 a minute at share 0.5: 1200 allowed, a quarter of it (300) for open interest
    allowance = 1200
    assert OPEN_INTEREST_SHARE * allowance == 300
    assert poll_period(10, 1, allowance, 60.0, 5.0) == PollPlan(5.0, False)  # 120 a minute
    assert poll_period(25, 1, allowance, 60.0, 5.0) == PollPlan(5.0, False)  # 300 a minute: just fits
    plan = poll_period(100, 1, allowance, 60.0, 5.0)  # would be 1200 a minute
    assert plan == PollPlan(20.0, True) and 100 * 60 / plan.period == 300
    assert poll_period(0, 1, allowance, 60.0, 5.0) == PollPlan(5.0, False)


def test_the_setting_is_whole_seconds_and_off_by_default(tmp_path):
    env = {"ORDERBOOK_BUFFER": str(tmp_path / "b.sqlite3")}
    assert load([], env)[0].open_interest_seconds == 0
    assert load([], {**env, "ORDERBOOK_OPEN_INTEREST_SECONDS": "5"})[0].open_interest_seconds == 5.0
    for bad, why in (("-1", "out of range"), ("fast", "is not a whole number")):
        try:
            load([], {**env, "ORDERBOOK_OPEN_INTEREST_SECONDS": bad})
        except ConfigError as exc:
            assert str(exc).startswith("ORDERBOOK_OPEN_INTEREST_SECONDS") and why in str(exc), exc
        else:
            raise AssertionError(f"{bad!r} accepted")


# ---- on the simulated exchange ------------------------------------------------------------

@pytest.mark.slow
def test_open_interest_is_polled_under_a_weight_storm_without_a_429(tmp_path):
    """Twenty symbols asked every 0.1 s (far over the allowance) beside their diff streams' first
    snapshots, while other clients on the IP spend a quarter of every window: the poller stretches
    its period, the shared budget keeps the total within Binance's (no 429: without the budget the
    first snapshots alone would pass it), and every answer is stored once with its values."""
    buffer = tmp_path / "b.sqlite3"
    symbols = [f"s{i:02d}usdt" for i in range(20)]
    budget, window, others, share = 40, 1.0, 10, 0.5

    async def main():
        async with Exchange(symbols=symbols, seed=3, rate=10, weight_budget={USDM: budget},
                            weight_window=window) as ex:
            ex.weight_storm(others, USDM)
            s = settings_for(ex, buffer, symbols=symbols[:1], usdm_symbols=symbols, usdm_streams=["depth@100ms"],
                             usdm_depth_snapshot_limit=5, rest_weight_budget={USDM: budget},
                             rest_weight_window=window, rest_weight_share=share, open_interest_seconds=0.1)
            t0 = time.monotonic()  # before the poller starts: the elapsed time below is an upper bound
            async with running(s) as c:
                await until(lambda: min(Counter(r[0] for r in stored(buffer)).get(x.upper(), 0)
                                        for x in symbols) >= 2, timeout=90, what="two answers of every symbol")
                # the moment no poll is in flight: what was answered is what is stored
                await until(lambda: stored(buffer) == answered(ex), timeout=30, what="every answer stored")
                got, want = stored(buffer), answered(ex)
                plan = c.oi_pollers[USDM].plan
                weight = c.metrics.rest_weight["usdm"]
                polls = len(ex.open_interest_sent)
                elapsed = time.monotonic() - t0
            return ex, got, want, plan, weight, polls, elapsed

    ex, got, want, plan, weight, polls, elapsed = asyncio.run(main())
    rest = ex.stats()["rest"]["usdm"]
    assert (rest["429"], rest["418"]) == (0, 0), rest
    # the first snapshots (weight 2 each) and the answers: the others' 10 plus this is over the budget of a window
    assert rest["weight"] == weight >= 20 * 2 + 40 > budget - others
    # 20 symbols at weight 1 in a quarter of our 20 a second: each polled every 4 s, not 0.1 s
    assert plan == PollPlan(20 * 1 * window / (OPEN_INTEREST_SHARE * budget * share), True)
    # and the poller keeps to it: round k starts no earlier than k periods after the first, so in
    # ``elapsed`` seconds at most ``elapsed // period + 1`` rounds of 20 polls (a loaded machine
    # only polls less; polling at the 0.1 s asked, held back by the budget alone, polls more)
    assert polls <= len(symbols) * (elapsed // plan.period + 1), (polls, elapsed, plan)
    assert len(got) == len(set(got)) == len(want) >= 40
    assert got == want
    assert all(oi >= 0 for _, _, oi in got)


@pytest.mark.slow
def test_a_failed_poll_is_a_gap_and_a_refused_answer_is_quarantined_then_archived_once(tmp_path, monkeypatch):
    buffer, archive = tmp_path / "b.sqlite3", tmp_path / "archive"

    def silences():
        return query(buffer, "SELECT x.event, x.since_us, x.end_us, x.reason, x.ended_by FROM silence x "
                             "JOIN streams s USING (stream_id) WHERE s.name = ? ORDER BY x.id", KEY)

    async def main():
        async with Exchange(symbols=["btcusdt"], seed=4, rate=10) as ex:
            async with running(settings_for(ex, buffer)) as c:
                await until(lambda: len(stored(buffer)) >= 3, what="three answers")
                ex.fail_open_interest(3, "error")
                await until(lambda: [r[0] for r in silences()] == ["silent", "resumed"], what="a gap and its end")
                await until(lambda: len(stored(buffer)) >= len(answered(ex)) >= 8, what="answers after the gap")
                ex.fail_open_interest(1, "negative")
                await until(lambda: len(silences()) == 4, what="a refused answer's gap and its end")
                await until(lambda: stored(buffer) == answered(ex) and len(stored(buffer)) >= 12, what="more answers")
                return ex, c.metrics.open_interest_failures["usdm"]

    ex, failures = asyncio.run(main())
    assert failures == 4
    recv = query(buffer, "SELECT recv_us FROM open_interest ORDER BY id")
    faults = [i for i, x in enumerate(ex.open_interest_sent) if x["fault"]]
    good = [x for x in ex.open_interest_sent if x["fault"] is None]
    assert len(faults) == 4 and faults[:3] == list(range(faults[0], faults[0] + 3))
    # the 503 answers: silent since the last good answer's receive time, resumed at the next one's
    (e1, since1, end1, r1, by1), (e2, since1b, end1b, r2, by2), (e3, since2, end2, _, _), (e4, _, _, _, _) = silences()
    before_gap = faults[0]  # good answers before the first fault
    assert (e1, r1, by1, end1) == ("silent", "poll_failed", "messages", end1b)  # the open row got its end too
    assert (e2, r2, by2, since1b) == ("resumed", "poll_failed", "messages", since1)
    assert since1 == recv[before_gap - 1][0] and end1 == recv[before_gap][0]
    assert (e3, e4) == ("silent", "resumed") and since2 == recv[faults[3] - 3 - 1][0] and end2 == recv[faults[3] - 3][0]
    # the negative answer: not stored, quarantined with its body and reason
    (reason, detail, raw), = query(buffer, "SELECT reason, detail, raw FROM quarantine")
    assert (reason, detail) == ("out_of_range", "rest open interest of usdm:btcusdt@openInterest: open interest "
                                "('openInterest') must be non-negative and finite"), (reason, detail)
    assert raw.startswith(b'{"openInterest":"-')
    assert len(stored(buffer)) == len(good)

    # through archive_hour: every good answer once, equal values; the gaps in coverage; checks pass
    monkeypatch.setenv("ORDERBOOK_BUFFER", str(buffer))
    monkeypatch.setenv("ORDERBOOK_ARCHIVE_URL", str(archive))
    monkeypatch.delenv("ORDERBOOK_CRASH_AT", raising=False)
    hours = sorted({hourly.get_partition_key_for_timestamp(us / 1e6) for (us,) in
                    query(buffer, "SELECT recv_us FROM open_interest UNION SELECT recv_us FROM silence")})
    job = defs.resolve_job_def("archive_hour")
    checked = 0
    for partition in hours:
        result = job.execute_in_process(partition_key=partition, instance=DagsterInstance.ephemeral(),
                                        raise_on_error=False)
        assert result.success, partition
        if materialized(result, datasets.OPEN_INTEREST):
            checks = checks_of(result, datasets.OPEN_INTEREST)
            assert set(checks) == set(quality.CHECKS[datasets.OPEN_INTEREST])
            assert all(c.passed for c in checks.values()), {n: c.metadata for n, c in checks.items()}
            checked += 1
    assert checked >= 1  # the checks ran on the hour(s) holding the answers, not on none
    con = duckdb.connect()
    rows = con.execute(
        f"SELECT market, symbol, stream, epoch_ms(time), open_interest, session_id, seq "
        f"FROM read_parquet('{archive}/open_interest/**/*.parquet', hive_partitioning = true)").fetchall()
    assert Counter(rows) == Counter(("usdm", x["symbol"], "btcusdt@openInterest", x["time"],
                                     float(x["openInterest"]), None, None) for x in good)
    gaps = con.execute(
        "SELECT record, market, stream, dataset, reason, epoch_us(start_time), epoch_us(end_time) "
        f"FROM read_parquet('{archive}/coverage/**/*.parquet', hive_partitioning = true) "
        "WHERE record = 'silent' ORDER BY start_time").fetchall()
    assert gaps == [("silent", "usdm", "btcusdt@openInterest", "open_interest", "poll_failed", since1, end1),
                    ("silent", "usdm", "btcusdt@openInterest", "open_interest", "poll_failed", since2, end2)]
