"""The whole chain on the simulated exchange: the collector records diff and partial depth on
spot and USD-M with a dropped diff event, ``archive_hour`` runs through Dagster, and
``book_snapshot`` equals the simulator's own books where known, proves 0 mismatches against the
partial snapshots, and is unknown from the dropped event until the resync."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import datetime, timezone

import duckdb
import pyarrow.parquet as pq
import pytest
from dagster import DagsterInstance

from orderbook_core.buffer.hours import HOUR_US
from orderbook_collector.config import Settings
from orderbook_core.streams import Market

from orderbook_assets.analytics.book_hours import books_key, version_key
from orderbook_assets.definitions import defs
from support.markets import running, until
from support.procs import query
from support.runs import checks_of
from tools.simulator.exchange import Exchange

DIFF, PART = "btcusdt@depth@100ms", "btcusdt@depth20@100ms"
KEYS = {Market.SPOT: DIFF, Market.USDM: f"usdm:{DIFF}"}
#: Levels compared with the simulator's book: well inside the REST snapshots' depth (the
#: simulator keeps about 100 a side), where a rebuilt book is the exchange's level for level.
DEPTH = 50


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("ORDERBOOK_BUFFER", str(tmp_path / "buffer.sqlite3"))
    monkeypatch.setenv("ORDERBOOK_ARCHIVE_URL", str(tmp_path / "archive"))
    monkeypatch.setenv("ORDERBOOK_BOOK_DEPTH", str(DEPTH))
    monkeypatch.setenv("ORDERBOOK_BOOK_INTERVAL_MS", "50")
    monkeypatch.delenv("ORDERBOOK_CRASH_AT", raising=False)
    return tmp_path


def settings_for(ex: Exchange, buffer) -> Settings:
    return Settings(symbols=["btcusdt"], streams=["depth@100ms", "depth20@100ms"], ws_url=ex.ws_url,
                    rest_url=ex.rest_url, usdm_symbols=["btcusdt"], usdm_streams=["depth@100ms", "depth20@100ms"],
                    usdm_ws_url=ex.ws_url, usdm_rest_url=ex.rest_url, buffer=buffer, metrics_port=-1,
                    backoff_initial=0.05, backoff_max=0.2, min_session=0.0)


def diff_rows(buffer, market: Market) -> int:
    if not buffer.exists():
        return 0
    return query(buffer, "SELECT count(*) FROM depth_update JOIN streams s USING (stream_id) WHERE s.name = ?",
                 KEYS[market])[0][0]


def synced_after_break(buffer) -> int:
    """Markets whose diff stream was synced again after a gap (the dropped event)."""
    rows = query(buffer, "SELECT s.name, d.event, d.reason FROM depth_sync d JOIN streams s USING (stream_id) "
                         "ORDER BY d.id")
    done = set()
    for name, event, reason in rows:
        if event == "break" and reason == "gap":
            done.discard(name)
            done.add((name, "broken"))
        elif event == "synced" and (name, "broken") in done:
            done.add(name)
    return sum(1 for k in KEYS.values() if k in done)


def hour_key(hour_us: int) -> str:
    return datetime.fromtimestamp(hour_us / 1e6, tz=timezone.utc).strftime("%Y-%m-%d-%H:00")


def run_hour(hour_us: int):
    job = defs.resolve_job_def("archive_hour")
    return job.execute_in_process(partition_key=hour_key(hour_us), instance=DagsterInstance.ephemeral(),
                                  raise_on_error=False)


@pytest.mark.slow
def test_archive_hour_builds_book_snapshot_proved_and_equal_to_the_simulators_books(env):
    buffer, archive = env / "buffer.sqlite3", env / "archive"

    async def scenario():
        async with Exchange(symbols=["btcusdt"], seed=3, rate=40, book_levels=100) as ex:
            async with running(settings_for(ex, buffer)):
                await until(lambda: all(diff_rows(buffer, m) >= 30 for m in Market), 90, "30 diff events a market")
                for m in Market:
                    ex.drop_diff(DIFF, m)
                await until(lambda: synced_after_break(buffer) == 2, 90, "both markets synced after the drop")
                after = {m: diff_rows(buffer, m) for m in Market}
                await until(lambda: all(diff_rows(buffer, m) >= after[m] + 20 for m in Market), 90, "20 events more")
            hours = sorted({us // HOUR_US * HOUR_US for (us,) in query(buffer, "SELECT recv_us FROM depth_update")})
            results = []
            for h in hours:  # in order: an hour starts from the previous hour's end state
                results.append(await asyncio.to_thread(run_hour, h))
            tables = {h: pq.read_table(archive / books_key(h)) for h in hours}
            known = [r for t in tables.values() for r in t.to_pylist() if r["known"]]
            oracle = {(r["market"], r["last_update_id"]): ex.book_state("btcusdt", r["last_update_id"], Market(r["market"]))
                      for r in known}
            return hours, results, tables, known, oracle

    hours, results, tables, known, oracle = asyncio.run(scenario())
    comparable = 0
    for h, result in zip(hours, results):
        assert result.success
        mat = result.asset_materializations_for_node("book_snapshot")[0].metadata
        assert mat["sha256"].value and (archive / version_key(books_key(h), mat["sha256"].value)).exists()
        checks = checks_of(result, "book_snapshot")
        assert set(checks) == {"book_matches_exchange", "book_not_crossed"}
        proof = checks["book_matches_exchange"]
        assert proof.passed and proof.metadata["mismatches"].value == 0
        assert proof.metadata["matched"].value == proof.metadata["comparable"].value
        assert checks["book_not_crossed"].passed
        comparable += proof.metadata["comparable"].value
    assert comparable > 0
    # rebuilt books equal the simulator's own at every known point, on both markets
    assert {r["market"] for r in known} == {"spot", "usdm"} and len(known) > 50
    for r in known:
        st = oracle[(r["market"], r["last_update_id"])]
        assert [(x["price"], x["qty"]) for x in r["bids"]] == sorted(
            ((float(p), float(q)) for p, q in st.bids.items()), reverse=True)[:DEPTH], r["time"]
        assert [(x["price"], x["qty"]) for x in r["asks"]] == sorted(
            (float(p), float(q)) for p, q in st.asks.items())[:DEPTH], r["time"]
    # the dropped event: unknown from the last event before the hole until the event that
    # bridges the resync snapshot; no known point carries an id inside the hole
    con = duckdb.connect()
    for m in Market:
        ups = con.execute(
            f"SELECT epoch_us(recv_time), first_update_id, last_update_id, prev_update_id FROM "
            f"read_parquet('{archive}/depth_update/**/*.parquet') WHERE market = ? ORDER BY last_update_id",
            [m.value]).fetchall()
        usdm = m is Market.USDM

        def continues(i):
            return ups[i][3] == ups[i - 1][2] if usdm else ups[i][1] == ups[i - 1][2] + 1

        breaks = [i for i in range(1, len(ups)) if not continues(i)]
        assert len(breaks) == 1, m  # the dropped event, and only it
        last_good = ups[breaks[0] - 1]
        snaps = con.execute(
            f"SELECT epoch_us(recv_time), last_update_id FROM read_parquet('{archive}/depth_rest_snapshot/**/*.parquet') "
            "WHERE market = ? AND last_update_id > ? ORDER BY last_update_id", [m.value, last_good[2]]).fetchall()
        resync = snaps[0]
        bridge = next(u for u in ups if (u[2] >= resync[1] if usdm else u[2] > resync[1]))
        ids = [r["last_update_id"] for r in known if r["market"] == m.value]
        assert [i for i in ids if i < last_good[2]] and [i for i in ids if i >= bridge[2]]
        assert not [i for i in ids if last_good[2] <= i < resync[1]]
        stretch = [r for t in tables.values() for r in t.to_pylist()
                   if r["market"] == m.value and last_good[0] < r["time"].timestamp() * 1e6 < bridge[0]]
        assert stretch and not any(r["known"] for r in stretch), m
