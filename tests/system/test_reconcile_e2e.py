"""Reconciliation end to end: the exchange's own daily files against what the pipeline archived.

The real collector (in process, as tests/system/test_every_kind.py runs it) records trade and
aggTrade of btcusdt on spot and USD-M from the simulated exchange over real sockets. Meanwhile:

* the exchange drops three USD-M aggTrade messages (``drop_trades``): a hole the collector sees
  and records as a ``trade_gap``;
* the exchange mutes the USD-M trades for a while (``mute``), the aggTrades flowing: a
  ``silent`` record, and a ``trade_gap`` once the stream speaks again;
* trades are lost silently: with the spot symbol halted (so no new spot trade can arrive), the
  test deletes the newest spot rows of the session from the buffer with SQL, the tail of the
  spot trades and the aggTrades that came after them; ``archive_hour`` archives that round; the
  symbol trades again, its ids continuing the deleted ones, and a second round archives the rest.
  The deleted ids sit inside the recorded span, in no recorded gap, and were received: a loss
  without a record. (Deleted mid-round, the hourly ``trade_id_continuity`` and ``no_seq_gaps``
  checks would block the round, coverage included; at a round's edge they cannot see it, since
  each round checks its own parts: that is what the reconciliation is there to catch.)

Then the simulator writes its daily files for the day (every trade it generated, sent or not;
spot in µs, USD-M in ms) and ``orderbook reconcile --json`` runs as a subprocess. It must exit 1
and classify, per stream, exactly: the dropped and the muted ids as ``trade_gap`` (a recorded
trade_gap comes before a silent record), the deleted ids as
``lost_silently``, every other missing id as outside the recorded span, nothing extra, no value
differing. A ``.CHECKSUM`` rewritten wrong makes it exit 2.

The scenario needs one UTC day: a run that could reach midnight starts after it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from dagster import DagsterInstance

from orderbook_assets.definitions import defs
from orderbook_assets.defs.partitions import hourly
from orderbook_collector.config import Settings
from orderbook_core.streams import Market
from support.archive_rows import read
from support.markets import key, quiet, running, sent_counts, stored_counts, until
from support.procs import query
from tools.simulator.exchange import Exchange

ROOT = Path(__file__).resolve().parents[2]
SPOT, USDM = Market.SPOT, Market.USDM
SYMBOL = "btcusdt"
KINDS = ["trade", "aggTrade"]
STREAMS = [key(m.value, f"{SYMBOL}@{k}") for m in (Market.SPOT, Market.USDM) for k in KINDS]
SPOT_KEYS = [key("spot", f"{SYMBOL}@{k}") for k in KINDS]
DROPPED = 3  # USD-M aggTrade messages the exchange drops: a recorded trade_gap
DELETED = 3  # newest spot trade rows deleted from the buffer: lost silently
#: The longest this test may take; a run that would reach midnight within it starts after midnight.
RUN_SECONDS = 300
ID = {"trade": "trade_id", "agg_trade": "agg_trade_id"}
MUTED = key("usdm", f"{SYMBOL}@trade")


def silence_rows(buffer) -> list[tuple]:
    return query(buffer, "SELECT s.name, x.event, x.since_us, x.end_us FROM silence x JOIN streams s USING (stream_id) "
                         "ORDER BY x.id")


def settings_for(ex: Exchange, buffer) -> Settings:
    return Settings(symbols=[SYMBOL], streams=KINDS, ws_url=ex.ws_url, rest_url=ex.rest_url,
                    usdm_symbols=[SYMBOL], usdm_streams=KINDS, usdm_ws_url=ex.ws_url, usdm_rest_url=ex.rest_url,
                    buffer=buffer, metrics_port=-1, backoff_initial=0.05, backoff_max=0.2, min_session=0.0,
                    silence_min_seconds=1.0, silence_grace_seconds=1.0)


def seconds_to_midnight() -> float:
    now = datetime.now(timezone.utc)
    return (datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), timezone.utc) - now).total_seconds()


def hours_of(buffer) -> list[str]:
    """The partition keys of every hour with a stored trade, aggTrade or trade_gap."""
    hours = set()
    for table in ("trade", "agg_trade", "trade_gap"):
        for (recv_us,) in query(buffer, f"SELECT DISTINCT recv_us / 3600000000 * 3600000000 FROM {table}"):
            hours.add(hourly.get_partition_key_for_timestamp(recv_us / 1e6))
    return sorted(hours)


def archive_round(buffer) -> list[str]:
    """``archive_hour`` for every hour with rows (an hour archived before gets a further part)."""
    job = defs.resolve_job_def("archive_hour")
    keys = hours_of(buffer)
    for partition in keys:
        result = job.execute_in_process(partition_key=partition, instance=DagsterInstance.ephemeral(),
                                        raise_on_error=False)
        # every hourly check passed: the loss at the round's edge is invisible to them
        assert result.success, partition
    return keys


def delete_spot_tail(path) -> dict[str, list[int]]:
    """Delete the spot session's newest rows: the last DELETED trades and every aggTrade after the
    first of them, so the session's seq ends cleanly (no seq gap inside the round). Returns the
    ids deleted per dataset."""
    conn = sqlite3.connect(path, timeout=30)  # the collector writes meanwhile: wait for its lock
    try:
        sid = {n: i for n, i in conn.execute("SELECT name, stream_id FROM streams")}
        session, cut = conn.execute(
            "SELECT session_id, min(seq) FROM (SELECT session_id, seq FROM trade WHERE stream_id = ? "
            "ORDER BY id DESC LIMIT ?)", (sid[f"{SYMBOL}@trade"], DELETED)).fetchone()
        deleted = {}
        with conn:
            for table, name in (("trade", f"{SYMBOL}@trade"), ("agg_trade", f"{SYMBOL}@aggTrade")):
                where = "stream_id = ? AND session_id = ? AND seq >= ?"
                args = (sid[name], session, cut)
                deleted[table] = [r[0] for r in conn.execute(f"SELECT {ID[table]} FROM {table} WHERE {where} "
                                                             f"ORDER BY 1", args)]
                conn.execute(f"DELETE FROM {table} WHERE {where}", args)
        return deleted
    finally:
        conn.close()


def ranges(ids: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for i in sorted(ids):
        if out and i == out[-1][1] + 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return out


def reconcile_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("ORDERBOOK_ARCHIVE_URL", None)
    return subprocess.run([sys.executable, "-m", "orderbook_assets.analytics.query", "reconcile", *args],
                          capture_output=True, text=True, env=env, timeout=180, cwd=ROOT)


@pytest.mark.slow  # a system run of a minute or more (five near midnight UTC): make test, not test-fast
@pytest.mark.timeout(2 * RUN_SECONDS + 60)
def test_reconcile_finds_exactly_the_silent_loss_against_the_exchanges_own_files(tmp_path, monkeypatch):
    buffer, log = tmp_path / "buffer.sqlite3", tmp_path / "sent.ndjson"
    archive, official = tmp_path / "archive", tmp_path / "official"
    monkeypatch.setenv("ORDERBOOK_BUFFER", str(buffer))
    monkeypatch.setenv("ORDERBOOK_ARCHIVE_URL", str(archive))
    monkeypatch.delenv("ORDERBOOK_CRASH_AT", raising=False)

    async def scenario():
        if seconds_to_midnight() < RUN_SECONDS:  # the scenario needs one UTC day
            day = datetime.now(timezone.utc).date()
            await until(lambda: datetime.now(timezone.utc).date() != day, timeout=RUN_SECONDS + 5,
                        what="midnight UTC")
        async with Exchange(symbols=[SYMBOL], seed=21, rate=20, sent_log=str(log)) as ex:
            async with running(settings_for(ex, buffer)):
                await until(lambda: buffer.exists() and all(stored_counts(buffer)[s] >= 10 for s in STREAMS),
                            timeout=60, what="10 rows of every stream")
                ex.drop_trades(f"{SYMBOL}@aggTrade", DROPPED, USDM)
                await until(lambda: query(buffer, "SELECT count(*) FROM trade_gap")[0][0] == 1, timeout=60,
                            what="the dropped aggTrades recorded as a trade_gap")
                # halt spot: no spot trade can arrive while its tail is deleted and the round cut
                ex.delist_symbol(SYMBOL, SPOT)
                await until(lambda: quiet(ex) and all(stored_counts(buffer)[s] == sent_counts(ex)[s]
                                                      for s in SPOT_KEYS), what="every spot trade sent stored")
                deleted = delete_spot_tail(buffer)
                first_round = await asyncio.to_thread(archive_round, buffer)  # USD-M keeps flowing meanwhile
                ex.list_symbol(SYMBOL, SPOT)
                after = stored_counts(buffer)
                await until(lambda: all(stored_counts(buffer)[s] >= after[s] + 10 for s in STREAMS), timeout=60,
                            what="10 more rows of every stream")
                # USD-M trades muted while the aggTrades flow: a silent record. Muted with the symbol
                # halted and everything sent stored, so every muted trade is made after the silence began.
                ex.delist_symbol(SYMBOL, USDM)
                await until(lambda: quiet(ex) and all(stored_counts(buffer)[s] == sent_counts(ex)[s]
                                                      for s in STREAMS if s not in SPOT_KEYS),
                            what="every USD-M trade sent stored")
                ex.mute(f"{SYMBOL}@trade", USDM)
                ex.list_symbol(SYMBOL, USDM)
                await until(lambda: [r[:2] for r in silence_rows(buffer)] == [(MUTED, "silent")], timeout=30,
                            what="the muted USD-M trade stream recorded silent")
                ex.unmute(f"{SYMBOL}@trade", USDM)
                await until(lambda: len(silence_rows(buffer)) == 2, timeout=30, what="the silence ended")
                for m in (Market.SPOT, Market.USDM):
                    ex.delist_symbol(SYMBOL, m)
                gone = {key("spot", f"{SYMBOL}@trade"): len(deleted["trade"]),
                        key("spot", f"{SYMBOL}@aggTrade"): len(deleted["agg_trade"])}
                await until(lambda: quiet(ex) and all(stored_counts(buffer)[s] + gone.get(s, 0) == sent_counts(ex)[s]
                                                      for s in STREAMS), timeout=60, what="every trade sent stored")
        return ex, deleted, first_round

    ex, deleted, first_round = asyncio.run(scenario())
    assert len(deleted["trade"]) == DELETED, deleted  # aggTrades too when they came after them
    second_round = archive_round(buffer)
    assert first_round and second_round

    # the exchange's own files of the day the trades were made
    days = {datetime.fromtimestamp(ms / 1e3, timezone.utc).date()
            for table in ("trade", "agg_trade") for (ms,) in query(buffer, f"SELECT DISTINCT trade_ms FROM {table}")}
    assert len(days) == 1, days  # started after midnight if it was near
    (day,) = days
    files = ex.write_daily_files(str(official), day)
    assert len(files) == 4, files

    # what each stream's comparison must find, from independent sources: the exchange's own
    # record (its tape), the archive's rows, the sent log's dropped ids, the deleted ids
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    dropped = sorted(x["id"] for x in lines if x.get("fault") == "dropped")
    assert len(dropped) == DROPPED and dropped == list(range(dropped[0], dropped[0] + DROPPED))
    # the muted trades: made (in the exchange's own record) and never sent, between sent ones
    n = (day - datetime(1970, 1, 1).date()).days
    usdm_tape = ex.tapes[(USDM, SYMBOL)].days[n]
    sent_usdm = [x["id"] for x in lines if "data" in x and x["market"] == "usdm" and x["stream"] == f"{SYMBOL}@trade"]
    muted = sorted(set(usdm_tape.t_id) - set(sent_usdm))
    muted = [i for i in muted if sent_usdm[0] < i < sent_usdm[-1]]
    assert muted and muted == list(range(muted[0], muted[-1] + 1)), muted
    # the collector saw both holes when the stream spoke again: trade_gap records, exactly
    assert sorted(query(buffer, "SELECT first_missing_id, last_missing_id, dataset FROM trade_gap")) == sorted([
        (dropped[0], dropped[-1], "agg_trade"), (muted[0], muted[-1], "trade")])
    # and the muted stream's silent record holds every muted trade (exchange time inside it)
    silent = [r for r in read(archive, "coverage", ("record", "market", "stream", "start_time", "end_time"))
              if r[0] == "silent" and r[4] is not None]
    assert [r[1:3] for r in silent] == [("usdm", f"{SYMBOL}@trade")], silent
    times = {i: ms * 1000 for i, ms in zip(usdm_tape.t_id, usdm_tape.t_ms)}
    assert all(silent[0][3] <= times[i] <= silent[0][4] for i in muted)
    expect_lost = {("spot", "trade"): deleted["trade"], ("spot", "agg_trade"): deleted["agg_trade"]}
    # a recorded trade_gap comes first: the muted ids are inside both records, and counted as trade_gap
    expect_gap = {("usdm", "agg_trade"): dropped, ("usdm", "trade"): muted}

    out = reconcile_cli("--date", str(day), "--official", str(official), "--archive", str(archive), "--json")
    assert out.returncode == 1, (out.returncode, out.stderr)
    doc = json.loads(out.stdout)
    assert doc["date"] == str(day) and doc["lost_silently"] == sum(map(len, expect_lost.values()))
    reports = {(s["market"], s["dataset"]): s for s in doc["streams"]}
    assert set(reports) == {(m.value, d) for m in (Market.SPOT, Market.USDM) for d in ("trade", "agg_trade")}
    for (market, dataset), s in sorted(reports.items()):
        tape = ex.tapes[(Market(market), SYMBOL)].days[n]
        theirs = set(tape.t_id if dataset == "trade" else tape.a_id)
        ours = {i for m, i in read(archive, dataset, ("market", ID[dataset])) if m == market}
        assert ours <= theirs, (market, dataset, sorted(ours - theirs)[:5])
        missing = theirs - ours
        outside = {i for i in missing if i < min(ours) or i > max(ours)}
        inside = sorted(missing - outside)
        lost = expect_lost.get((market, dataset), [])
        gap = expect_gap.get((market, dataset), [])
        # the only ids missing inside the recorded span are exactly the dropped and the deleted ones
        assert inside == sorted(lost + gap), (market, dataset, inside)
        assert (s["status"], s["symbol"]) == ("compared", SYMBOL.upper())
        assert s["time_unit"] == ("us" if market == "spot" else "ms"), (market, dataset)
        assert s["official_rows"] == len(theirs) and s["archived_rows"] == len(ours) == s["matched"]
        assert s["missing"] == {"outside_span": len(outside), "trade_gap": len(gap), "silent": 0, "outage": 0,
                                "lost_silently": len(lost)}, (market, dataset)
        assert s["lost_silently_ranges"] == ranges(lost), (market, dataset)
        assert (s["extra"], s["archived_duplicates"]) == (0, 0)
        assert not any(s["differing"].values()), (market, dataset, s["differing_examples"])

    # a .CHECKSUM that does not match its zip: bad input, nothing reported
    checksum = Path(files[0] + ".CHECKSUM")
    digest, name = checksum.read_text().split()
    checksum.write_text(f"{'0' * 64 if digest != '0' * 64 else 'f' * 64}  {name}\n")
    bad = reconcile_cli("--date", str(day), "--official", str(official), "--archive", str(archive), "--json")
    assert bad.returncode == 2 and bad.stdout == "", (bad.returncode, bad.stdout[:200])
    assert "does not match its .CHECKSUM" in bad.stderr
