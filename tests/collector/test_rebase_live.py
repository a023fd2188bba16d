"""Re-basing against the simulated exchange on loopback, into a real buffer: periodic 'rebase'
snapshots of every diff stream within the REST budget, a 'connect' snapshot after every
reconnect, also when the ids continue (then no break), and repairs ahead of re-bases."""

from __future__ import annotations

import asyncio
import statistics

import pytest
from websockets.asyncio.client import connect

from orderbook_collector.config import Settings
from orderbook_collector.connection.rest import RestClient, Resyncer
from orderbook_collector.feed.sync import SyncReason
from orderbook_core.streams import Market, spec
from support.markets import running, until
from support.procs import query
from tools.simulator.exchange import Exchange

SPOT = ["btcusdt", "ethusdt", "bnbusdt"]
USDM = ["btcusdt", "ethusdt"]
PERIOD = 1.5  # ORDERBOOK_REBASE_SECONDS, short for the test
TURNS = 4  # re-bases of each stream to see


def settings(ex: Exchange, buffer, **kw) -> Settings:
    return Settings(
        symbols=SPOT, streams=["depth@100ms"], ws_url=ex.ws_url, rest_url=ex.rest_url, buffer=buffer,
        metrics_port=-1, backoff_initial=0.05, backoff_max=0.2, min_session=0.0, **kw,
    )


def snapshots(buffer, reason: str) -> dict[str, list[int]]:
    """recv_us of the stored REST snapshots of ``reason``, per diff stream key."""
    out: dict[str, list[int]] = {}
    for name, recv in query(buffer, "SELECT s.name, r.recv_us FROM depth_rest_snapshot r JOIN streams s "
                                    "USING (stream_id) WHERE r.reason = ? ORDER BY r.id", reason):
        out.setdefault(name, []).append(recv)
    return out


@pytest.mark.slow  # re-bases timed over several periods: make test, not test-fast
def test_every_diff_stream_is_rebased_at_about_the_period_within_the_budget(tmp_path):
    buffer = tmp_path / "b.sqlite3"
    keys = [f"{s}@depth@100ms" for s in SPOT] + [f"usdm:{s}@depth@100ms" for s in USDM]

    async def main():
        async with Exchange(symbols=SPOT, seed=21) as ex:
            s = settings(ex, buffer, usdm_symbols=USDM, usdm_streams=["depth@100ms"], usdm_ws_url=ex.ws_url,
                         usdm_rest_url=ex.rest_url, rebase_seconds=PERIOD)
            async with running(s) as c:
                await until(lambda: sorted(snapshots(buffer, "rebase")) == sorted(keys)
                            and min(map(len, snapshots(buffer, "rebase").values())) >= TURNS,
                            timeout=60, what=f"{TURNS} re-bases of every diff stream")
                plans = {m.value: r.plan for m, r in c.resyncers.items()}
                return ex.stats()["rest"], plans

    rest, plans = asyncio.run(main())
    assert {m: (r["429"], r["418"]) for m, r in rest.items()} == {"spot": (0, 0), "usdm": (0, 0), "coinm": (0, 0)}
    assert {m: (p.period, p.limit) for m, p in plans.items()} == {"spot": (PERIOD, 100), "usdm": (PERIOD, 100)}
    rebases = snapshots(buffer, "rebase")
    for key in keys:
        gaps = [(b - a) / 1e6 for a, b in zip(rebases[key], rebases[key][1:])]
        print(f"{key}: re-based every {statistics.median(gaps):.2f} s (min {min(gaps):.2f}, max {max(gaps):.2f})")
        assert 0.8 * PERIOD <= statistics.median(gaps) <= 1.3 * PERIOD, (key, gaps)
        assert min(gaps) >= 0.5 * PERIOD, (key, gaps)  # one turn a period, never a burst
    # the streams' turns are spread over the period (a burst would put them all at once)
    for market, n in (("spot", len(SPOT)), ("usdm", len(USDM))):
        times = sorted(t for k, ts in rebases.items() if (k.startswith("usdm:") == (market == "usdm")) for t in ts)
        gaps = [(b - a) / 1e6 for a, b in zip(times, times[1:])]
        assert 0.6 * PERIOD / n <= statistics.median(gaps) <= 1.5 * PERIOD / n, (market, gaps)
    # re-bases are data: the streams stayed synced, no break beyond each stream's first connect
    assert query(buffer, "SELECT event, reason, count(*) FROM depth_sync GROUP BY 1, 2 ORDER BY 1") == [
        ("break", "connect", len(keys)), ("synced", "snapshot", len(keys))]


def test_a_reconnect_whose_ids_continue_fetches_a_connect_snapshot_of_every_diff_stream_and_breaks_nothing(tmp_path):
    buffer = tmp_path / "b.sqlite3"
    keys = [f"{s}@depth@100ms" for s in SPOT]

    def sessions() -> list[int]:
        return [sid for sid, in query(buffer, "SELECT session_id FROM sessions ORDER BY session_id")]

    async def main():
        async with Exchange(symbols=SPOT, seed=22) as ex, \
                connect(ex.ws_url + "/stream?streams=" + "/".join(keys), max_queue=None):
            # (another subscriber keeps the simulator's streams publishing while the collector is
            # away: a stream nobody listens to stops, and restarts with a gap, as Binance's would)
            await until(lambda: len(ex.conns) == 1, what="the other subscriber")
            others = set(ex.conns)
            # a re-base period far beyond the test: every snapshot here is a 'connect' one
            async with running(settings(ex, buffer, rebase_seconds=3600.0)):
                await until(lambda: query(buffer, "SELECT count(*) FROM depth_sync WHERE event = 'synced'")[0][0]
                            == len(keys), what="every stream synced")
                # The next connection first replays each stream's recent messages: the ids continue.
                ex.replay_on_next_connect(100)
                # the disconnect switch, for the collector's connection only
                await asyncio.gather(*(c.ws.close() for n, c in list(ex.conns.items()) if n not in others))
                await until(lambda: len(sessions()) == 2, what="the reconnect")
                second = sessions()[1]
                await until(lambda: all(any(t > second for t in snapshots(buffer, "connect").get(k, []))
                                        for k in keys), what="a connect snapshot of every stream after the reconnect")
                # data goes on in the new session: the breaks it could have caused would be there by now
                await until(lambda: query(buffer, "SELECT count(*) FROM depth_update WHERE session_id = ?",
                                          second)[0][0] >= 20 * len(keys), what="data in the new session")
                return second, ex.stats()["rest"]["spot"]

    second, rest = asyncio.run(main())
    assert (rest["429"], rest["418"]) == (0, 0)
    bases = snapshots(buffer, "connect")
    assert sorted(bases) == sorted(keys)
    for k in keys:  # one repair at the first session, one fresh base after the reconnect
        assert len(bases[k]) == 2 and bases[k][0] < second < bases[k][1]
    assert snapshots(buffer, "rebase") == {}
    assert query(buffer, "SELECT event, reason, count(*) FROM depth_sync GROUP BY 1, 2 ORDER BY 1") == [
        ("break", "connect", len(keys)), ("synced", "snapshot", len(keys))]  # the first session's only
    assert query(buffer, "SELECT count(*) FROM depth_update WHERE session_id = ?", second)[0][0] > 0


def test_a_rebase_waiting_for_the_budget_lets_a_later_repair_go_first():
    async def main():
        async with Exchange(symbols=["btcusdt", "ethusdt", "bnbusdt"]) as ex:
            got = []
            # 5 weight a second: one snapshot of weight 5 fills the window
            client = RestClient(Market.SPOT, ex.rest_url, 1.0, budget=5, window=1.0)
            x, a, b = (spec(sym, "depth@100ms") for sym in ("btcusdt", "ethusdt", "bnbusdt"))
            r = Resyncer(client, [x, a, b], got.append, 5, rebase_seconds=3600.0)
            r.start()
            r.request(x.key, SyncReason.GAP)
            await until(lambda: len(got) == 1, what="the window filled")
            r.request(a.key, SyncReason.REBASE)  # asked first, but it is only a re-base
            r.request(b.key, SyncReason.GAP)
            await until(lambda: len(got) == 3, timeout=20, what="two more windows")
            await r.stop()
            return got, ex.stats()["rest"]["spot"]

    got, rest = asyncio.run(main())
    assert [(g.symbol, g.reason) for g in got] == [("BTCUSDT", "gap"), ("BNBUSDT", "gap"), ("ETHUSDT", "rebase")]
    assert got[2].recv_us - got[1].recv_us > 0.5e6  # a window apart: the re-base waited for its own room
    assert (rest["429"], rest["418"]) == (0, 0)
