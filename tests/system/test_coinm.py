"""COIN-M end to end: the real collector records ``btcusd_perp`` diff depth, trade, aggTrade and
bookTicker from the simulated exchange's COIN-M market (``/dstream``, REST ``/dapi``) and polls its
open interest, while the exchange drops one diff event and three trades; ``archive_hour`` archives
it, and the archive is read back with DuckDB.

The oracle is the exchange's sent log and its own books:

* every sent message is archived exactly once, with equal values, market ``coinm``, symbol and stream;
* the dropped diff is a ``break`` followed by a ``gap`` REST snapshot (``/dapi/v1/depth``, equal to
  the exchange's book at its id, no 429) and a ``synced`` record; the dropped trades one ``trade_gap``;
* every open-interest answer the exchange gave is archived once with its values;
* every check of every dataset with rows passes.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import duckdb
import pytest
from dagster import DagsterInstance

from orderbook_assets.archive import datasets, quality
from orderbook_assets.definitions import defs
from orderbook_assets.defs.partitions import hourly
from orderbook_collector.config import Settings
from orderbook_core.streams import Market
from support.archive_rows import COLUMNS, expected, read, rows
from support.markets import key, quiet, running, sent_counts, stored_counts, until
from support.procs import query
from support.runs import checks_of, materialized
from tools.simulator.exchange import Exchange

#: An end-to-end run of the real collector and archive: make test runs it, test-fast does not.
pytestmark = pytest.mark.slow

COINM = Market.COINM
SYMBOL = "btcusd_perp"
DIFF = f"{SYMBOL}@depth@100ms"
KINDS = ["depth@100ms", "trade", "aggTrade", "bookTicker"]
DROPPED_TRADES = 3
SNAPSHOT_LIMIT = 50


def settings_for(ex: Exchange, buffer) -> Settings:
    return Settings(
        symbols=[], streams=["trade"], ws_url=ex.ws_url, rest_url=ex.rest_url,  # no spot: COIN-M alone
        coinm_symbols=[SYMBOL], coinm_streams=KINDS, coinm_ws_url=ex.ws_url + "/dstream", coinm_rest_url=ex.rest_url,
        coinm_depth_snapshot_limit=SNAPSHOT_LIMIT, open_interest_seconds=0.5,
        buffer=buffer, metrics_port=-1, backoff_initial=0.05, backoff_max=0.2, min_session=0.0,
    )


def answered(ex: Exchange) -> list[tuple]:
    return [(x["market"], x["symbol"], x["time"], float(x["openInterest"])) for x in ex.open_interest_sent]


async def record(ex: Exchange, buffer) -> None:
    streams = [key(COINM.value, f"{SYMBOL}@{k}") for k in KINDS]

    def synced(n: int):
        return lambda: len(query(buffer, "SELECT 1 FROM depth_sync WHERE event = 'synced'")) >= n

    async with running(settings_for(ex, buffer)):
        await until(lambda: buffer.exists() and all(stored_counts(buffer)[s] >= 5 for s in streams)
                    and synced(1)(), timeout=60, what="every COIN-M stream stored and the diff stream synced")
        ex.drop_diff(DIFF, COINM)
        ex.drop_trades(f"{SYMBOL}@trade", DROPPED_TRADES, COINM)
        await until(lambda: len(query(buffer, "SELECT 1 FROM trade_gap")) == 1 and synced(2)(), timeout=60,
                    what="the trade gap recorded and the diff stream synced again")
        await until(lambda: all(stored_counts(buffer)[s] >= 20 for s in streams), timeout=60,
                    what="more rows of every stream after the faults")
        ex.delist_symbol(SYMBOL, COINM)  # its streams go quiet; then everything sent must be stored
        await until(lambda: quiet(ex) and stored_counts(buffer) == sent_counts(ex)
                    and len(query(buffer, "SELECT 1 FROM open_interest")) == len(ex.open_interest_sent) >= 3,
                    timeout=60, what="every sent message and open-interest answer stored")


@pytest.mark.timeout(240)
def test_coinm_through_the_archive_once_with_a_resync_and_a_trade_gap_recorded(tmp_path, monkeypatch):
    buffer, log, archive = tmp_path / "buffer.sqlite3", tmp_path / "sent.ndjson", tmp_path / "archive"

    async def exchange_and_record():
        async with Exchange(symbols=["btcusdt"], coinm_symbols=[SYMBOL], seed=21, rate=20, sent_log=log) as ex:
            await record(ex, buffer)
            return ex, answered(ex)

    ex, oi_sent = asyncio.run(exchange_and_record())
    rest = ex.stats()["rest"]
    assert (rest["coinm"]["429"], rest["coinm"]["418"]) == (0, 0), rest
    assert rest["spot"]["requests"] == rest["usdm"]["requests"] == 0  # COIN-M's REST went to /dapi
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    sent = [x for x in lines if "data" in x]
    dropped = [x for x in lines if x.get("fault") == "dropped"]
    assert {x["market"] for x in sent} == {"coinm"}
    with_pair = [x["data"]["ps"] for x in sent if x["kind"] in ("depth_update", "book_ticker")]
    assert with_pair and set(with_pair) == {"BTCUSD"}

    monkeypatch.setenv("ORDERBOOK_BUFFER", str(buffer))
    monkeypatch.setenv("ORDERBOOK_ARCHIVE_URL", str(archive))
    monkeypatch.delenv("ORDERBOOK_CRASH_AT", raising=False)
    hours = set()
    for table in (*datasets.DATASETS, "depth_sync", "trade_gap"):
        for (recv_us,) in query(buffer, f"SELECT DISTINCT recv_us / 3600000000 * 3600000000 FROM {table}"):
            hours.add(hourly.get_partition_key_for_timestamp(recv_us / 1e6))
    job = defs.resolve_job_def("archive_hour")
    checked = set()
    for partition in sorted(hours):
        result = job.execute_in_process(partition_key=partition, instance=DagsterInstance.ephemeral(),
                                        raise_on_error=False)
        assert result.success, partition
        for name in datasets.DATASETS:
            if not materialized(result, name):
                continue
            checks = checks_of(result, name)
            assert set(checks) == set(quality.CHECKS[name]), (partition, name)
            failed = {n: c.metadata for n, c in checks.items() if not c.passed}
            assert not failed, (partition, name, failed)
            checked.add(name)
    assert checked >= set(datasets.DATASETS) - {datasets.DEPTH}  # no partial depth recorded here

    # every sent message archived exactly once, with equal values
    for dataset in ("depth_update", "trade", "agg_trade", "book_ticker"):
        want = Counter(expected(x) for x in sent if x["kind"] == dataset)
        got = Counter(rows(archive, dataset))
        assert sum(want.values()) >= 20, dataset  # the premise: the recording waited for 20 of each
        assert max(got.values()) == 1, dataset
        assert got == want, (dataset, len(got), sum(want.values()))
        assert {(m, sym) for m, sym, *_ in got} == {("coinm", "BTCUSD_PERP")}, dataset

    # the dropped diff: a gap break, a gap snapshot from /dapi equal to the exchange's book, synced again
    coverage = read(archive, "coverage", ("record", "market", "stream", "reason", "first_id", "last_id",
                                          "snapshot_id", "messages", "dataset"))
    diffs = [x["data"] for x in sent if x["stream"] == DIFF]
    (before, after), = [(a["u"], b["U"]) for a, b in zip(diffs, diffs[1:]) if b["pu"] != a["u"]]
    breaks = [(c[1], c[2], c[3], c[4], c[5]) for c in coverage if c[0] == "break"]
    assert breaks == [("coinm", DIFF, "connect", None, diffs[0]["U"]), ("coinm", DIFF, "gap", before, after)]
    snaps = read(archive, "depth_rest_snapshot", ("market", "symbol", "stream", "last_update_id", "reason",
                                                  "bids", "asks"))
    assert {(m, s, st) for m, s, st, *_ in snaps} == {("coinm", "BTCUSD_PERP", DIFF)}
    assert [r[4] for r in snaps].count("gap") == 1
    for _, _, _, uid, _, bids, asks in snaps:
        book = ex.book_state(SYMBOL, uid, COINM)
        want_bids = sorted(((float(p), float(q)) for p, q in book.bids.items()), reverse=True)[:SNAPSHOT_LIMIT]
        want_asks = sorted((float(p), float(q)) for p, q in book.asks.items())[:SNAPSHOT_LIMIT]
        assert (bids, asks) == (tuple(want_bids), tuple(want_asks)), uid
    synced = [c for c in coverage if c[0] == "synced"]
    assert len(synced) == len(snaps) and {c[1] for c in synced} == {"coinm"}

    # the dropped trades: one trade_gap, exactly the dropped ids
    ids = sorted(x["id"] for x in dropped if x["stream"] == f"{SYMBOL}@trade")
    assert len(ids) == DROPPED_TRADES and ids == list(range(ids[0], ids[0] + DROPPED_TRADES))
    assert [(c[1], c[2], c[4], c[5], c[7], c[8]) for c in coverage if c[0] == "trade_gap"] == [
        ("coinm", f"{SYMBOL}@trade", ids[0], ids[-1], DROPPED_TRADES, "trade")]

    # COIN-M open interest (contracts, with pair and contractType in the answer): every answer once
    got = duckdb.connect().execute(
        "SELECT market, symbol, epoch_ms(time), open_interest, stream "
        f"FROM read_parquet('{archive}/open_interest/**/*.parquet', hive_partitioning = true)").fetchall()
    assert Counter(g[:4] for g in got) == Counter(oi_sent) and {g[4] for g in got} == {f"{SYMBOL}@openInterest"}
    assert {g[0] for g in got} == {"coinm"} and len(got) >= 3
