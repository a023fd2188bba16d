"""The whole chain on the simulated exchange: the collector records diff and partial depth on
spot and USD-M, ``archive_hour`` runs through Dagster, and ``book_snapshot`` equals the
simulator's own books where known.

* A dropped diff event: unknown from the drop until the resync, 0 mismatches.
* Deep books (2000 levels a side) whose price trends and jumps past the REST snapshots' depth,
  partial snapshots whose ids never equal a diff event's u, a REST snapshot fetched while the
  books are known (reason 'rebase', through the collector's own REST path) that re-bases them,
  and one planted wrong level in that snapshot: rows past the
  horizon say how many levels they prove, every level shown is the exchange's (``GET
  /control/book`` is the oracle), every hour compared something, and the planted level is the
  one mismatch, which fails the blocking check.
* Diff depth and no snapshot that can prove it: "unproven", a failed WARN, never a pass.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import urllib.request
from datetime import datetime, timezone

import numpy as np
import orjson

import duckdb
import pyarrow.parquet as pq
import pytest
from dagster import AssetCheckSeverity, DagsterInstance

from orderbook_core.buffer.hours import HOUR_US
from orderbook_core.buffer.levels import pack, unpack
from orderbook_collector.config import Settings
from orderbook_core.streams import Market

from orderbook_assets.derived.book_hours import books_key, version_key
from orderbook_assets.definitions import defs
from support.markets import running, until
from support.procs import query
from support.runs import checks_of
from tools.simulator.exchange import Book, Exchange

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
                await until(lambda: all(diff_rows(buffer, m) >= 30 for m in (Market.SPOT, Market.USDM)), 90, "30 diff events a market")
                for m in (Market.SPOT, Market.USDM):
                    ex.drop_diff(DIFF, m)
                await until(lambda: synced_after_break(buffer) == 2, 90, "both markets synced after the drop")
                after = {m: diff_rows(buffer, m) for m in (Market.SPOT, Market.USDM)}
                await until(lambda: all(diff_rows(buffer, m) >= after[m] + 20 for m in (Market.SPOT, Market.USDM)), 90, "20 events more")
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
    for m in (Market.SPOT, Market.USDM):
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


# ---- deep, drifting books, misaligned partials, a re-base and a planted level ----------------

#: 2000 levels a side (the collector's REST snapshots hold 100 on spot, 500 on USD-M), a mid
#: that trends up and jumps (the asks leave the first snapshot's range within seconds), 40 book
#: steps a second (4x Binance's 100 ms), partial depth never at a diff event's id (the default).
DEEP = dict(symbols=["btcusdt"], seed=11, rate=40, book_levels=2000, trend=0.1, jump=0.005)
TOP = 20
#: Book steps kept by the simulator, so every id a row rests on can be asked of the oracle.
HISTORY = 20_000


def rest_rows(buffer, market: Market) -> list[tuple]:
    return query(buffer, "SELECT id, last_update_id, n_bids, levels, reason FROM depth_rest_snapshot "
                         "WHERE market = ? ORDER BY last_update_id", market.value)


def plant_wrong_level(buffer) -> tuple[int, float, float]:
    """Double the quantity of one bid of spot's second REST snapshot (the re-base), a
    bid 40 levels deep that the diff event straddling its id does not touch (an untouched level
    must equal the book exactly). Returns (snapshot id, price, planted qty)."""
    row_id, lid, n_bids, blob, _reason = rest_rows(buffer, Market.SPOT)[1]
    bids, asks = unpack(blob, n_bids)
    events = query(buffer, "SELECT u.first_update_id, u.last_update_id, u.n_bids, u.levels FROM depth_update u "
                           "JOIN streams s USING (stream_id) WHERE s.name = ? AND u.first_update_id <= ? "
                           "AND u.last_update_id >= ?", DIFF, lid + 1, lid + 1)
    touched = {p for _U, _u, nb, lv in events for p, _ in unpack(lv, nb)[0]}
    i = next(i for i in range(40, len(bids)) if bids[i][0] not in touched)
    price, qty = bids[i]
    bids[i] = (price, qty * 2)
    con = sqlite3.connect(buffer)
    with con:
        con.execute("UPDATE depth_rest_snapshot SET levels = ? WHERE id = ?",
                    (pack(np.array(bids + asks, dtype=float)), row_id))
    con.close()
    return lid, price, qty * 2


def oracle_top(rest_url: str, market: str, lid: int) -> tuple[list, list]:
    url = f"{rest_url}/control/book?symbol=btcusdt&market={market}&update_id={lid}&limit={TOP}"
    with urllib.request.urlopen(url, timeout=10) as r:
        book = orjson.loads(r.read())
    return ([(float(p), float(q)) for p, q in book["bids"]], [(float(p), float(q)) for p, q in book["asks"]])


@pytest.mark.slow  # a live collector until 800 diff events a market, then archive runs: make test, not test-fast
def test_deep_drifting_books_prove_only_what_they_know_and_a_planted_level_fails_the_check(env, monkeypatch):
    buffer, archive = env / "buffer.sqlite3", env / "archive"
    monkeypatch.setenv("ORDERBOOK_BOOK_DEPTH", str(TOP))
    monkeypatch.setenv("ORDERBOOK_BOOK_INTERVAL_MS", "100")
    monkeypatch.setattr(Book, "HISTORY", HISTORY)

    async def scenario():
        async with Exchange(**DEEP) as ex:
            # 100-level snapshots on both markets (USD-M's default 500 would take the drift longer to pass)
            settings = dataclasses.replace(settings_for(ex, buffer), depth_snapshot_limit=100,
                                           usdm_depth_snapshot_limit=100)
            async with running(settings) as collector:
                await until(lambda: all(diff_rows(buffer, m) >= 400 for m in (Market.SPOT, Market.USDM)), 120, "400 diff events a market")
                for m in (Market.SPOT, Market.USDM):  # a re-base through the collector's own REST path, while the books are known
                    collector.resyncers[m].request(KEYS[m], "rebase")
                await until(lambda: all(len(rest_rows(buffer, m)) >= 2 for m in (Market.SPOT, Market.USDM)), 60, "a re-base a market")
                after = {m: diff_rows(buffer, m) for m in (Market.SPOT, Market.USDM)}
                await until(lambda: all(diff_rows(buffer, m) >= after[m] + 400 for m in (Market.SPOT, Market.USDM)), 120, "400 more")
            planted = plant_wrong_level(buffer)
            hours = sorted({us // HOUR_US * HOUR_US for (us,) in query(buffer, "SELECT recv_us FROM depth_update")})
            results = []
            for h in hours:
                results.append(await asyncio.to_thread(run_hour, h))
            rows = [r for h in hours for r in pq.read_table(archive / books_key(h)).to_pylist()]
            ids = sorted({(r["market"], r["last_update_id"]) for r in rows if r["last_update_id"] is not None})
            oracle = {}
            for m, lid in ids:
                oracle[(m, lid)] = await asyncio.to_thread(oracle_top, ex.rest_url, m, lid)
            return planted, hours, results, rows, oracle

    planted, hours, results, rows, oracle = asyncio.run(scenario())
    # every level a row shows is the exchange's at the row's id: all TOP where known, the
    # proven prefix where the top reaches past the horizon
    known = [r for r in rows if r["known"]]
    partly = [r for r in rows if r["last_update_id"] is not None and not r["known"]]
    for r in known + partly:
        want_b, want_a = oracle[(r["market"], r["last_update_id"])]
        got_b = [(x["price"], x["qty"]) for x in r["bids"]]
        got_a = [(x["price"], x["qty"]) for x in r["asks"]]
        assert got_b == want_b[:len(got_b)] and got_a == want_a[:len(got_a)], r["time"]
        if r["known"]:
            assert r["known_levels"] == TOP and (got_b, got_a) == (want_b, want_a), r["time"]
        else:
            assert r["known_levels"] == min(len(got_b), len(got_a)) < TOP, r["time"]  # deep books: no side is short
    # the drift took the top past the first snapshots' horizon (rows say so), and the re-base
    # made rows complete again, on both markets
    for m in ("spot", "usdm"):
        assert [r for r in partly if r["market"] == m], m
        assert [r for r in known if r["market"] == m], m
    first_partly = min(r["time"] for r in partly if r["market"] == "spot")
    assert [r for r in known if r["market"] == "spot" and r["time"] > first_partly]  # re-based
    # every hour with diff rows compared something; the planted level is the one mismatch
    mismatches = []
    for result in results:
        check = checks_of(result, "book_snapshot")["book_matches_exchange"]
        for st in check.metadata["streams"].value:
            assert st["diff_events"] == 0 or st["comparable"] > 0, st
        mismatches += check.metadata["mismatch_levels"].value
    lid, price, qty = planted
    assert [(m["market"], m["source"], m["last_update_id"], m["levels"]) for m in mismatches] == [
        ("spot", "rest", lid, [{"side": "bid", "price": price, "exchange_qty": qty, "rebuilt_qty": qty / 2}])]
    failed = [r for r in results if not checks_of(r, "book_snapshot")["book_matches_exchange"].passed]
    assert len(failed) == 1 and not failed[0].success  # blocking: the run fails
    check = checks_of(failed[0], "book_snapshot")["book_matches_exchange"]
    assert check.severity is AssetCheckSeverity.ERROR and check.metadata["mismatches"].value == 1
    assert check.metadata["comparable"].value > 10 and check.metadata["levels_undecided"].value >= 0


def test_diff_depth_with_nothing_to_prove_it_against_is_unproven_not_passed(env):
    """Diff depth only: the REST snapshot that synced the book is not a proof of it (it would be
    compared with itself) and no partial depth is recorded: comparable 0 is "unproven", a failed
    WARN (the run goes on), never a pass."""
    buffer = env / "buffer.sqlite3"

    async def scenario():
        async with Exchange(symbols=["btcusdt"], seed=4, rate=40) as ex:
            settings = dataclasses.replace(settings_for(ex, buffer), streams=["depth@100ms"], usdm_symbols=[])
            async with running(settings):
                await until(lambda: diff_rows(buffer, Market.SPOT) >= 40, 60, "40 diff events")
        hours = sorted({us // HOUR_US * HOUR_US for (us,) in query(buffer, "SELECT recv_us FROM depth_update")})
        return [await asyncio.to_thread(run_hour, h) for h in hours]

    results = asyncio.run(scenario())
    assert results
    for result in results:
        assert result.success  # a WARN does not block
        check = checks_of(result, "book_snapshot")["book_matches_exchange"]
        assert not check.passed and check.severity is AssetCheckSeverity.WARN
        assert "unproven" in check.description and check.metadata["verdict"].value == "unproven"
        assert check.metadata["comparable"].value == 0 and check.metadata["unproven_streams"].value == 1
