"""COIN-M mark prices and liquidations end to end through the archive, USD-M's alongside.

The real collector (in process) records from the simulated exchange over real sockets: COIN-M
``markPrice@1s``, ``forceOrder``, ``bookTicker`` and diff depth of the perpetual ``btcusd_perp``
and of the delivery contract ``btcusd_261225`` (``/dstream``, unrouted), and USD-M ``btcusdt``
``markPrice@1s`` and ``forceOrder`` (``/market``). The simulator keeps its own facts
(``tools/simulator/facts.py``): COIN-M's ``markPriceUpdate`` key order, a delivery contract's
``"r": ""`` and ``"T": 0``, the pair ``ps`` in forceOrder's ``o``. Then ``archive_hour`` runs
through Dagster for every hour the data touches, and the archive is read back with DuckDB.

The oracle is the exchange's sent log:

* every sent mark price and liquidation of both markets, and every COIN-M bookTicker and diff
  event, is archived exactly once, with equal values, market, symbol and stream; the delivery
  contract's funding rate and next funding time are nulls;
* every check of the four datasets passes (COIN-M mark prices met the bookTicker's mid);
* coverage says each liquidation stream is a sample: ``sampled`` rows per market and stream whose
  ``messages`` add up to that stream's archived liquidations;
* the round trip: ``orderbook replay`` serves that archive (COIN-M under ``/dstream``, its REST
  depth under ``/dapi``), the collector records it again (syncing COIN-M's diff streams from the
  replay), and archived again it holds the same mark prices, liquidations, bookTickers and diff
  depth events, every column but the recording's own.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import duckdb
import pytest
from dagster import DagsterInstance

from orderbook_assets.analytics.replay import ReplayServer
from orderbook_assets.archive import datasets, pipeline, quality
from orderbook_assets.archive.store import LocalStore
from orderbook_assets.definitions import defs
from orderbook_assets.defs.partitions import hourly
from orderbook_collector.config import Settings
from orderbook_core.buffer.hours import hour_of
from orderbook_core.streams import Market
from support.archive_rows import DERIVATIVE_COLUMNS, expected, read, rows
from support.buffer_rows import open_buffer
from support.markets import key, quiet, running, sent_counts, stored_counts, until
from support.procs import query
from support.runs import checks_of, materialized
from tools.simulator.exchange import Exchange

#: An end-to-end run of the real collector and archive: make test runs it, test-fast does not.
pytestmark = pytest.mark.slow

PERP, DATED, USDM_SYMBOL = "btcusd_perp", "btcusd_261225", "btcusdt"
COINM_KINDS = ["markPrice@1s", "forceOrder", "bookTicker", "depth@100ms"]
USDM_KINDS = ["markPrice@1s", "forceOrder"]
#: Messages of each mark-price and liquidation stream to wait for: at 1 a second, a few seconds.
MARKS, LIQUIDATIONS = 6, 4
#: The replay's pace: real time × 2, so the collector's REST depth request meets the snapshot the
#: recording got (at speed 0 the clock would run past it while the request is under way).
REPLAY_SPEED = 2.0
#: The datasets recorded here, all of them replayed in the round trip.
REPLAYED = (datasets.MARK_PRICE, datasets.LIQUIDATION, datasets.BOOK_TICKER, datasets.DEPTH_UPDATE)
FORCE_STREAMS = {("coinm", f"{PERP}@forceOrder"), ("coinm", f"{DATED}@forceOrder"),
                 ("usdm", f"{USDM_SYMBOL}@forceOrder")}


def settings_for(ex: Exchange | ReplayServer, buffer) -> Settings:
    return Settings(
        symbols=[], streams=["trade"], ws_url=ex.ws_url, rest_url=ex.rest_url,  # no spot
        usdm_symbols=[USDM_SYMBOL], usdm_streams=USDM_KINDS, usdm_ws_url=ex.ws_url, usdm_rest_url=ex.rest_url,
        coinm_symbols=[PERP, DATED], coinm_streams=COINM_KINDS, coinm_ws_url=ex.ws_url + "/dstream",
        coinm_rest_url=ex.rest_url,
        buffer=buffer, metrics_port=-1, backoff_initial=0.05, backoff_max=0.2, min_session=0.0,
    )


async def record(ex: Exchange, buffer) -> None:
    marks = [key("coinm", f"{s}@markPrice@1s") for s in (PERP, DATED)] + [key("usdm", f"{USDM_SYMBOL}@markPrice@1s")]
    forces = [key(m, s) for m, s in FORCE_STREAMS]
    async with running(settings_for(ex, buffer)):
        await until(lambda: buffer.exists() and all(stored_counts(buffer)[s] >= MARKS for s in marks)
                    and all(stored_counts(buffer)[s] >= LIQUIDATIONS for s in forces), timeout=60,
                    what="mark prices and liquidations of both markets stored")
        # Quiesce: a halted symbol's streams go quiet; then everything sent must be stored.
        ex.delist_symbol(USDM_SYMBOL, Market.USDM)
        for s in (PERP, DATED):
            ex.delist_symbol(s, Market.COINM)
        await until(lambda: quiet(ex) and stored_counts(buffer) == sent_counts(ex), timeout=60,
                    what="every sent message stored")


async def record_replay(archive, start_us: int, end_us: int, buffer) -> None:
    """The collector recording ``orderbook replay`` of the archive until every archived message is stored."""
    want = Counter(key(m, st) for d in REPLAYED for m, _, st, *_ in rows(archive, d))
    async with ReplayServer(str(archive), start_us, end_us, speed=REPLAY_SPEED, port=0, wait_for_subscribers=True) as r:
        async with running(settings_for(r, buffer)):
            await until(lambda: buffer.exists() and stored_counts(buffer) == want, timeout=60,
                        what="every archived message recorded again from the replay")
            assert r.disconnects == 0


def hours_of(buffer) -> list[str]:
    hours = set()
    for table in datasets.DATASETS:
        for (recv_us,) in query(buffer, f"SELECT DISTINCT recv_us / 3600000000 * 3600000000 FROM {table}"):
            hours.add(hourly.get_partition_key_for_timestamp(recv_us / 1e6))
    return sorted(hours)


@pytest.mark.timeout(240)
def test_coinm_mark_prices_and_liquidations_archived_once_beside_usdm(tmp_path, monkeypatch):
    buffer, log, archive = tmp_path / "buffer.sqlite3", tmp_path / "sent.ndjson", tmp_path / "archive"

    async def exchange_and_record():
        async with Exchange(symbols=[USDM_SYMBOL], coinm_symbols=[PERP, DATED], seed=29, rate=20, sent_log=log) as ex:
            await record(ex, buffer)

    asyncio.run(exchange_and_record())
    assert query(buffer, "SELECT count(*) FROM quarantine")[0][0] == 0
    assert query(buffer, "SELECT count(*) FROM silence")[0][0] == 0
    sent = [x for x in (json.loads(line) for line in log.read_text().splitlines()) if "data" in x]
    # the premise: COIN-M's own shapes went over the wire
    coinm_marks = [x["data"] for x in sent if x["market"] == "coinm" and x["kind"] == "mark_price"]
    assert {tuple(d) for d in coinm_marks} == {("e", "E", "s", "p", "P", "i", "r", "T")}
    assert {(d["r"], d["T"]) for d in coinm_marks if d["s"] == DATED.upper()} == {("", 0)}
    assert {x["data"]["o"]["ps"] for x in sent if x["market"] == "coinm" and x["kind"] == "liquidation"} == {"BTCUSD"}

    monkeypatch.setenv("ORDERBOOK_BUFFER", str(buffer))
    monkeypatch.setenv("ORDERBOOK_ARCHIVE_URL", str(archive))
    monkeypatch.delenv("ORDERBOOK_CRASH_AT", raising=False)
    keys = hours_of(buffer)
    assert 1 <= len(keys) <= 2  # the run may straddle an hour boundary
    job = defs.resolve_job_def("archive_hour")
    compared = 0
    for partition in keys:
        result = job.execute_in_process(partition_key=partition, instance=DagsterInstance.ephemeral(),
                                        raise_on_error=False)
        assert result.success, partition
        for name in REPLAYED:
            if not materialized(result, name):
                continue
            checks = checks_of(result, name)
            assert set(checks) == set(quality.CHECKS[name]), (partition, name)
            failed = {n: c.metadata for n, c in checks.items() if not c.passed}
            assert not failed, (partition, name, failed)
            if name == datasets.MARK_PRICE:
                compared += checks["mark_near_mid"].metadata["compared"].value
    assert compared > 0  # COIN-M mark prices met their book's mid: the warning could have fired

    # every sent mark price and liquidation archived exactly once, with equal values
    for dataset in DERIVATIVE_COLUMNS:
        want = Counter(expected(x) for x in sent if x["kind"] == dataset)
        got = Counter(rows(archive, dataset))
        assert max(got.values()) == 1, dataset
        assert got == want, (dataset, len(got), sum(want.values()))
        per_stream = Counter((m, s) for m, _, s, *_ in got.elements())
        assert min(per_stream.values()) >= LIQUIDATIONS and {m for m, _ in per_stream} == {"coinm", "usdm"}, dataset
    for dataset in (datasets.BOOK_TICKER, datasets.DEPTH_UPDATE):  # COIN-M's alone
        want = Counter(expected(x) for x in sent if x["kind"] == dataset)
        got = Counter(rows(archive, dataset))
        assert max(got.values()) == 1 and got == want, (dataset, len(got), sum(want.values()))
        assert {(m, sym) for m, sym, *_ in got} == {("coinm", PERP.upper()), ("coinm", DATED.upper())}, dataset
    dated = [r for r in rows(archive, datasets.MARK_PRICE) if r[1] == DATED.upper()]
    assert len(dated) >= MARKS and {(r[7], r[8]) for r in dated} == {(None, None)}  # no funding on a delivery
    perp = [r for r in rows(archive, datasets.MARK_PRICE) if r[1] == PERP.upper()]
    assert all(r[7] is not None and r[8] is not None for r in perp) and len(perp) >= MARKS

    # coverage says each liquidation stream is a sample, and how many it holds
    coverage = read(archive, "coverage", ("record", "market", "stream", "reason", "messages", "dataset"))
    sampled = [c for c in coverage if c[0] == "sampled"]
    assert {(c[1], c[2], c[3], c[5]) for c in sampled} == {(m, s, "latest_per_second", "liquidation")
                                                          for m, s in FORCE_STREAMS}
    archived = Counter((m, s) for m, _, s, *_ in rows(archive, datasets.LIQUIDATION))
    counted: Counter = Counter()
    for c in sampled:
        counted[(c[1], c[2])] += c[4]
    assert counted == archived and set(archived) == FORCE_STREAMS

    # the round trip: replayed (COIN-M under /dstream, USD-M on /market), recorded and archived again
    lo, hi = duckdb.connect().execute(
        "SELECT epoch_us(min(recv_time)), epoch_us(max(recv_time)) + 1 FROM read_parquet(["
        + ", ".join(f"'{archive}/{d}/**/*.parquet'" for d in REPLAYED)
        + "], union_by_name = true)").fetchone()
    again, buffer2 = tmp_path / "again", tmp_path / "again.sqlite3"
    asyncio.run(record_replay(archive, lo, hi, buffer2))
    synced = query(buffer2, "SELECT DISTINCT s.name FROM depth_sync d JOIN streams s USING (stream_id) "
                            "WHERE d.event = 'synced'")
    assert sorted(n for (n,) in synced) == [key("coinm", f"{s}@depth@100ms") for s in (DATED, PERP)]
    assert query(buffer2, "SELECT count(*) FROM quarantine")[0][0] == 0
    conn = open_buffer(buffer2)
    try:
        for h in sorted({hour_of(us) for d in REPLAYED for (us,) in conn.execute(f"SELECT recv_us FROM {d}")}):
            pipeline.export_and_upload(conn, LocalStore(again), tmp_path / "staging", h)
    finally:
        conn.close()
    for dataset in REPLAYED:
        assert Counter(rows(again, dataset)) == Counter(rows(archive, dataset)), dataset
