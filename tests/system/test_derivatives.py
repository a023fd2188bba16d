"""USD-M markPrice and forceOrder end to end through the archive, and a silenced mark-price stream.

The real collector (in process, as tests/collector/test_markets.py runs it) records USD-M
btcusdt ``markPrice@1s``, ``markPrice`` (3 s), ``forceOrder`` and ``bookTicker`` (and spot
btcusdt ``bookTicker``, the spot subscription every Settings has) from the simulated exchange
over real sockets. The simulator keeps its own facts (``tools/simulator/facts.py``): markPrice on
its own clock, forceOrder the latest fill of each second. Mid-session the exchange mutes
``btcusdt@markPrice@1s`` while the market flows on, then unmutes it. Then ``archive_hour`` runs
through Dagster for every hour the data touches, and the archive is read back with DuckDB.

The oracle is the exchange's sent log:

* every sent mark price and liquidation is archived exactly once, with equal values, market,
  symbol and stream;
* every check of both datasets passes (mark prices were compared with the bookTicker's mid);
* the muted mark-price stream is a ``silence`` row in the buffer (reason ``late``: it missed
  its clock), a ``silent`` coverage record, and a coverage ``gap`` spanning the mute (more
  than 5 cadences without a message), while the forceOrder stream, quiet between liquidations,
  is never judged silent;
* coverage says the liquidations are a sample: one ``sampled`` row per round and stream whose
  ``messages`` add up to the archived liquidations.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest
from dagster import DagsterInstance

from orderbook_assets.archive import datasets, quality
from orderbook_assets.definitions import defs
from orderbook_assets.defs.partitions import hourly
from orderbook_collector.config import Settings
from orderbook_core.streams import Market
from support.archive_rows import DERIVATIVE_COLUMNS, expected, read, rows
from support.markets import key, quiet, running, sent_counts, stored_counts, until
from support.procs import query
from support.runs import checks_of, materialized
from tools.simulator.exchange import Exchange

SYMBOL = "btcusdt"
USDM_KINDS = ["markPrice@1s", "markPrice", "forceOrder", "bookTicker"]
MARK_1S = f"{SYMBOL}@markPrice@1s"
FORCE = f"{SYMBOL}@forceOrder"
#: Short silence settings: a 1 s clock stream is late after max(3 × 1 s, 1 s) = 3 s.
SILENCE_CADENCES = 3
#: Mark prices of the 3 s stream the market must deliver while the 1 s one is muted: more than
#: the 5 cadences (5 s) that make a coverage gap of the muted stream.
MUTED_FOR_3S_MARKS = 3


def settings_for(ex: Exchange, buffer) -> Settings:
    return Settings(
        symbols=[SYMBOL], streams=["bookTicker"], ws_url=ex.ws_url, rest_url=ex.rest_url,
        usdm_symbols=[SYMBOL], usdm_streams=USDM_KINDS, usdm_ws_url=ex.ws_url, usdm_rest_url=ex.rest_url,
        buffer=buffer, metrics_port=-1, backoff_initial=0.05, backoff_max=0.2, min_session=0.0,
        silence_cadences=SILENCE_CADENCES, silence_min_seconds=1.0,
    )


def silences(buffer) -> list[tuple]:
    return query(buffer, "SELECT s.name, x.event, x.reason, x.ended_by FROM silence x JOIN streams s USING (stream_id) "
                         "ORDER BY x.id")


async def record(ex: Exchange, buffer) -> None:
    usdm = {k: key("usdm", f"{SYMBOL}@{k}") for k in USDM_KINDS}
    stored = lambda k: stored_counts(buffer)[usdm[k]]  # noqa: E731
    async with running(settings_for(ex, buffer)):
        await until(lambda: buffer.exists() and stored("markPrice@1s") >= 4 and stored("markPrice") >= 2
                    and stored("forceOrder") >= 3, timeout=60, what="mark prices and liquidations stored")
        ex.mute(MARK_1S, Market.USDM)
        before = stored("markPrice")
        await until(lambda: ("usdm:" + MARK_1S, "silent", "late", None) in silences(buffer)
                    and stored("markPrice") >= before + MUTED_FOR_3S_MARKS, timeout=60,
                    what="the muted mark-price stream judged late while the 3 s one flows on")
        ex.unmute(MARK_1S, Market.USDM)
        after = stored("markPrice@1s")
        await until(lambda: ("usdm:" + MARK_1S, "resumed", "late", "messages") in silences(buffer)
                    and stored("markPrice@1s") >= after + 3 and stored("forceOrder") >= 8, timeout=60,
                    what="the mark-price stream speaking again, and more liquidations")
        # Quiesce: a halted symbol's streams go quiet; then everything sent must be stored.
        for m in (Market.SPOT, Market.USDM):  # the markets this test records
            ex.delist_symbol(SYMBOL, m)
        await until(lambda: quiet(ex) and stored_counts(buffer) == sent_counts(ex), timeout=60,
                    what="every sent message stored")


def hours_of(buffer) -> list[str]:
    hours = set()
    for table in (*datasets.DATASETS, "silence"):
        for (recv_us,) in query(buffer, f"SELECT DISTINCT recv_us / 3600000000 * 3600000000 FROM {table}"):
            hours.add(hourly.get_partition_key_for_timestamp(recv_us / 1e6))
    return sorted(hours)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_mark_prices_and_liquidations_archived_once_and_a_silenced_mark_price_stream_is_a_gap(tmp_path, monkeypatch):
    buffer, log, archive = tmp_path / "buffer.sqlite3", tmp_path / "sent.ndjson", tmp_path / "archive"

    async def exchange_and_record():
        async with Exchange(symbols=[SYMBOL], seed=23, rate=20, sent_log=log) as ex:
            await record(ex, buffer)

    asyncio.run(exchange_and_record())
    # forceOrder said nothing for whole seconds at a time, and was never judged silent for it
    assert [s for s in silences(buffer) if s[0] != "usdm:" + MARK_1S] == []
    assert query(buffer, "SELECT count(*) FROM quarantine")[0][0] == 0
    sent = [x for x in (json.loads(line) for line in log.read_text().splitlines()) if "data" in x]

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
        for name in (datasets.MARK_PRICE, datasets.LIQUIDATION, datasets.BOOK_TICKER):
            if not materialized(result, name):
                continue
            checks = checks_of(result, name)
            assert set(checks) == set(quality.CHECKS[name]), (partition, name)
            failed = {n: c.metadata for n, c in checks.items() if not c.passed}
            assert not failed, (partition, name, failed)
            if name == datasets.MARK_PRICE:
                compared += checks["mark_near_mid"].metadata["compared"].value
    assert compared > 0  # the mark prices met the book's mid: the warning could have fired

    # every sent mark price and liquidation archived exactly once, with equal values
    for dataset in DERIVATIVE_COLUMNS:
        want = Counter(expected(x) for x in sent if x["kind"] == dataset)
        got = Counter(rows(archive, dataset))
        assert sum(want.values()) >= 8, dataset
        assert max(got.values()) == 1, dataset
        assert got == want, (dataset, len(got), sum(want.values()))
    marks = {s for _, _, s, *_ in rows(archive, datasets.MARK_PRICE)}
    assert marks == {MARK_1S, f"{SYMBOL}@markPrice"}
    funding = [r for r in rows(archive, datasets.MARK_PRICE) if r[7] is not None and r[7] < 0]
    assert funding  # a negative funding rate survives the trip

    coverage = read(archive, "coverage", ("record", "market", "stream", "reason", "start_time", "end_time",
                                          "messages", "dataset"))
    # the muted mark-price stream: a silence (late: it missed its clock) and a gap over the mute
    silent = [c for c in coverage if c[0] == "silent"]
    assert [(c[1], c[2], c[3], c[7]) for c in silent] == [("usdm", MARK_1S, "late", "mark_price")], silent
    mark_1s = sorted(t for s, t in read(archive, datasets.MARK_PRICE, ("stream", "recv_time")) if s == MARK_1S)
    longest = max(zip(mark_1s, mark_1s[1:]), key=lambda p: p[1] - p[0])  # the mute, between two messages
    assert longest[1] - longest[0] > quality.GAP_CADENCES * 1_000_000
    gaps = [(c[4], c[5]) for c in coverage if c[0] == "gap" and c[2] == MARK_1S and c[1] == "usdm"]
    assert longest in gaps, (longest, gaps)
    # no gap of the forceOrder stream: it has no clock to miss
    assert not [c for c in coverage if c[0] == "gap" and c[2] == FORCE]
    # coverage says the liquidations are a sample, and how many it holds
    sampled = [c for c in coverage if c[0] == "sampled"]
    assert {(c[1], c[2], c[3], c[7]) for c in sampled} == {("usdm", FORCE, "latest_per_second", "liquidation")}
    assert sum(c[6] for c in sampled) == len(rows(archive, datasets.LIQUIDATION))
