"""Every stream kind on spot and USD-M, end to end through the archive.

The real collector (in process, as tests/collector/test_markets.py runs it) records
depth20@100ms, depth@100ms, trade, aggTrade and bookTicker of both markets from the simulated
exchange over real sockets, while the exchange drops one diff event of each diff stream and
three messages of each trade and aggTrade stream. Then ``archive_hour`` runs through Dagster
for every hour the data touches, and the archive is read back with DuckDB as analysts do.

The oracle is the exchange's sent log (every frame it handed to the one connection per route,
and every message it dropped) and its own books (``book_state``) for the REST snapshots:

* every sent message is archived exactly once, with equal values, market, symbol and stream;
* each diff stream's dropped event is a ``break`` coverage record (from the last ``u`` before
  it to the ``U`` after it), followed by a ``gap`` REST snapshot equal to the exchange's book at
  its id (fetched within the market's REST weight budget: no 429) and a ``synced`` record; each trade stream's dropped ids are one ``trade_gap`` record
  with exactly that range;
* the book rebuilt from the archive with ``book_at`` (REST snapshot plus diffs) right before
  the dropped diff and at the last diff after it equals the exchange's book at that id;
* every check of every dataset passes: the breaks and gaps are recorded, so they explain
  themselves. (The hour's ``coverage_gaps`` warning is not asserted: seconds of an hour are
  recorded, so the rest of the hour is rightly a gap.)
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest
from dagster import DagsterInstance

from orderbook_assets.analytics.books import Source, book_at
from orderbook_assets.archive import datasets, quality
from orderbook_assets.definitions import defs
from orderbook_assets.defs.partitions import hourly
from orderbook_collector.config import Settings
from orderbook_core.streams import Market
from support.archive_rows import COLUMNS, ID, expected, read, rows
from support.markets import key, quiet, running, sent_counts, stored_counts, until
from support.procs import query
from support.runs import checks_of, materialized
from tools.simulator.exchange import Exchange

SPOT, USDM = Market.SPOT, Market.USDM
MARKETS = (SPOT, USDM)  # COIN-M end to end: tests/system/test_coinm.py, test_coinm_derivatives.py
SYMBOL = "btcusdt"
DIFF = f"{SYMBOL}@depth@100ms"
TRADE_STREAMS = (f"{SYMBOL}@trade", f"{SYMBOL}@aggTrade")
DROPPED_TRADES = 3
BOOK_DEPTH = 10  # compared levels of a rebuilt book: well inside what the snapshot's 50 levels cover
SNAPSHOT_LIMIT = 50  # below the simulator's 100 levels: the snapshot is a top of book, as on Binance

KINDS = ["depth20@100ms", "depth@100ms", "trade", "aggTrade", "bookTicker"]


def settings_for(ex: Exchange, buffer) -> Settings:
    return Settings(
        symbols=[SYMBOL], streams=KINDS, ws_url=ex.ws_url, rest_url=ex.rest_url,
        usdm_symbols=[SYMBOL], usdm_streams=KINDS, usdm_ws_url=ex.ws_url, usdm_rest_url=ex.rest_url,
        buffer=buffer, metrics_port=-1, backoff_initial=0.05, backoff_max=0.2, min_session=0.0,
        depth_snapshot_limit=SNAPSHOT_LIMIT, usdm_depth_snapshot_limit=SNAPSHOT_LIMIT,
        open_interest_seconds=0.5,  # USD-M open interest polled too: every dataset has rows
    )


def hours_of(buffer) -> list[str]:
    """The partition keys of every hour with a row in the buffer."""
    hours = set()
    for table in (*datasets.DATASETS, "depth_sync", "trade_gap"):
        for (recv_us,) in query(buffer, f"SELECT DISTINCT recv_us / 3600000000 * 3600000000 FROM {table}"):
            hours.add(hourly.get_partition_key_for_timestamp(recv_us / 1e6))
    return sorted(hours)


async def record(ex: Exchange, buffer) -> None:
    streams = [key(m.value, f"{SYMBOL}@{k}") for m in MARKETS for k in KINDS]

    def synced(n: int):
        return lambda: len(query(buffer, "SELECT 1 FROM depth_sync WHERE event = 'synced'")) >= n

    def rows(table: str):
        return query(buffer, f"SELECT count(*) FROM {table}")[0][0]

    async with running(settings_for(ex, buffer)):
        await until(lambda: buffer.exists() and all(stored_counts(buffer)[s] >= 5 for s in streams)
                    and synced(2)(), timeout=60, what="every stream stored and both diff streams synced")
        for m in MARKETS:
            ex.drop_diff(DIFF, m)
            for s in TRADE_STREAMS:
                ex.drop_trades(s, DROPPED_TRADES, m)
        await until(lambda: rows("trade_gap") >= 4 and synced(4)(), timeout=60,
                    what="the four trade gaps recorded and both diff streams synced again")
        await until(lambda: all(stored_counts(buffer)[s] >= 20 for s in streams), timeout=60,
                    what="more rows of every stream after the faults")
        # Quiesce: a halted symbol's streams go quiet; then everything sent must be stored.
        for m in MARKETS:
            ex.delist_symbol(SYMBOL, m)
        await until(lambda: quiet(ex) and stored_counts(buffer) == sent_counts(ex), timeout=60,
                    what="every sent message stored")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_every_kind_on_both_markets_through_the_archive_once_with_breaks_and_gaps_recorded(tmp_path, monkeypatch):
    buffer, log, archive = tmp_path / "buffer.sqlite3", tmp_path / "sent.ndjson", tmp_path / "archive"

    async def exchange_and_record():
        async with Exchange(symbols=[SYMBOL], seed=12, rate=20, sent_log=log) as ex:
            await record(ex, buffer)
            return ex

    ex = asyncio.run(exchange_and_record())
    # the snapshots came within each market's REST weight budget: the exchange answered no 429 nor 418
    budgets = {m: b for m, b in ex.stats()["rest"].items() if m in ("spot", "usdm")}
    assert {m: (b["429"], b["418"]) for m, b in budgets.items()} == {"spot": (0, 0), "usdm": (0, 0)}, budgets
    assert min(b["requests"] for b in budgets.values()) >= 2, budgets  # the connect and the gap snapshot
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    sent = [x for x in lines if "data" in x]
    dropped = [x for x in lines if x.get("fault") == "dropped"]
    assert not [x for x in lines if "data" not in x and "fault" not in x]  # no malformed, no shutdown
    assert not [x for x in sent if x.get("replay")]

    monkeypatch.setenv("ORDERBOOK_BUFFER", str(buffer))
    monkeypatch.setenv("ORDERBOOK_ARCHIVE_URL", str(archive))
    monkeypatch.delenv("ORDERBOOK_CRASH_AT", raising=False)
    keys = hours_of(buffer)
    assert 1 <= len(keys) <= 2  # the run may straddle an hour boundary
    job = defs.resolve_job_def("archive_hour")
    checked = set()
    for partition in keys:
        result = job.execute_in_process(partition_key=partition, instance=DagsterInstance.ephemeral(),
                                        raise_on_error=False)
        assert result.success, partition
        for name in datasets.DATASETS:
            if not materialized(result, name):
                continue  # a dataset with no row in this hour
            checks = checks_of(result, name)
            assert set(checks) == set(quality.CHECKS[name]), (partition, name)
            failed = {n: c.metadata for n, c in checks.items() if not c.passed}
            assert not failed, (partition, name, failed)
            checked.add(name)
    assert checked == set(datasets.DATASETS)

    # every sent message archived exactly once, with equal values
    for dataset, cols in COLUMNS.items():
        want = Counter(expected(x) for x in sent if x["kind"] == dataset)
        got = Counter(rows(archive, dataset))
        assert sum(want.values()) > 20, dataset
        assert max(got.values()) == 1, dataset  # nothing doubled
        assert got == want, (dataset, len(got), sum(want.values()))
        assert {(m, s) for m, _, s, *_ in got} == {(m.value, f"{SYMBOL}@{k}") for m in MARKETS for k in KINDS
                                                   if datasets_of(k) == dataset}, dataset

    # receive times: local, after the send, and (session, seq) unique per market
    for dataset in COLUMNS:
        recv = read(archive, dataset, ("market", "session_id", "seq", "recv_time"))
        assert Counter((m, s, q) for m, s, q, _ in recv).most_common(1)[0][1] == 1, dataset
    send_us = {(x["market"], x["stream"], x["id"]): x["send_us"] for x in sent}
    for dataset, idcol in ID.items():
        for m, s, i, recv in read(archive, dataset, ("market", "stream", idcol, "recv_time")):
            lag = recv - send_us[(m, s, i)]
            assert -2_000 <= lag <= 30_000_000, (dataset, m, s, i, lag)

    # the dropped diffs: one break each, a gap snapshot equal to the exchange's book, synced again
    coverage = read(archive, "coverage", ("record", "market", "stream", "reason", "first_id", "last_id",
                                          "snapshot_id", "messages", "dataset"))
    rest = read(archive, "depth_rest_snapshot", ("market", "symbol", "stream", "last_update_id", "reason",
                                                 "bids", "asks"))
    for m in MARKETS:
        diffs = [x["data"] for x in sent if x["market"] == m.value and x["stream"] == DIFF]
        jumps = [(a["u"], b["U"]) for a, b in zip(diffs, diffs[1:]) if b["U"] != a["u"] + 1]
        assert len(jumps) == 1 and len([x for x in dropped if x["market"] == m.value and x["stream"] == DIFF]) == 1
        (before, after), = jumps
        breaks = [c for c in coverage if c[0] == "break" and c[1] == m.value]
        # the first event is a break from nothing ("connect"), the dropped one a "gap"
        assert [(c[2], c[3], c[4], c[5], c[8]) for c in breaks] == [
            (DIFF, "connect", None, diffs[0]["U"], "depth_update"), (DIFF, "gap", before, after, "depth_update")], m
        snaps = [r for r in rest if r[0] == m.value]
        assert {r[2] for r in snaps} == {DIFF} and {r[1] for r in snaps} == {SYMBOL.upper()}
        gap_snaps = [r for r in snaps if r[4] == "gap"]
        assert len(gap_snaps) == 1, snaps
        assert len(snaps) >= 2  # the first sync's and the gap's
        for _, _, _, uid, _, bids, asks in snaps:
            book = ex.book_state(SYMBOL, uid, m)
            want_bids = sorted(((float(p), float(q)) for p, q in book.bids.items()), reverse=True)[:SNAPSHOT_LIMIT]
            want_asks = sorted((float(p), float(q)) for p, q in book.asks.items())[:SNAPSHOT_LIMIT]
            assert (bids, asks) == (tuple(want_bids), tuple(want_asks)), (m, uid)
        resyncs = sorted((c[3], c[6]) for c in coverage if c[0] == "resync" and c[1] == m.value)
        assert resyncs == sorted((r[4], r[3]) for r in snaps), m
        synced = [c for c in coverage if c[0] == "synced" and c[1] == m.value]
        assert gap_snaps[0][3] in {c[6] for c in synced}, (m, synced)  # synced again on the gap snapshot
        assert len(synced) == len(snaps), m

    # the dropped trades: one trade_gap each, exactly the dropped range
    gaps = sorted((c[1], c[2], c[4], c[5], c[7], c[8]) for c in coverage if c[0] == "trade_gap")
    want_gaps = []
    for m in MARKETS:
        for s in TRADE_STREAMS:
            ids = sorted(x["id"] for x in dropped if x["market"] == m.value and x["stream"] == s)
            assert len(ids) == DROPPED_TRADES and ids == list(range(ids[0], ids[0] + DROPPED_TRADES)), (m, s, ids)
            want_gaps.append((m.value, s, ids[0], ids[-1], DROPPED_TRADES, "trade" if s.endswith("@trade") else "agg_trade"))
    assert gaps == sorted(want_gaps)

    # the book rebuilt from the archive (REST snapshot + diffs) is the exchange's book, on each
    # side of the dropped diff
    recv = dict(((m, u), t) for m, u, t in read(archive, "depth_update", ("market", "last_update_id", "recv_time")))
    for m in MARKETS:
        diffs = [x["data"] for x in sent if x["market"] == m.value and x["stream"] == DIFF]
        (i,) = [i for i, (a, b) in enumerate(zip(diffs, diffs[1:])) if b["U"] != a["u"] + 1]
        # before the drop: one event earlier than the last one before it (book_at answers from diffs
        # only where the next event continues the chain; right before a break it falls back)
        for u in (diffs[i - 1]["u"], diffs[-1]["u"]):
            got = book_at(archive, m.value, SYMBOL, recv[(m.value, u)], depth=BOOK_DEPTH)
            assert (got.source, got.last_update_id) == (Source.DIFFS, u), (m, u, got.reason)
            book = ex.book_state(SYMBOL, u, m)
            want_bids = sorted(((float(p), float(q)) for p, q in book.bids.items()), reverse=True)[:BOOK_DEPTH]
            want_asks = sorted((float(p), float(q)) for p, q in book.asks.items())[:BOOK_DEPTH]
            assert ([tuple(x) for x in got.bids], [tuple(x) for x in got.asks]) == (want_bids, want_asks), (m, u)


def datasets_of(kind: str) -> str:
    return {"depth20@100ms": "depth_snapshot", "depth@100ms": "depth_update", "trade": "trade",
            "aggTrade": "agg_trade", "bookTicker": "book_ticker"}[kind]
