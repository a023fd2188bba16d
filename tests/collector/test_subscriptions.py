"""``*`` follows listings on the live connections: a new listing is subscribed and a delisted
symbol unsubscribed without reconnecting, the changes are events, and the writer decodes the
new streams from the first frame (real simulator, real sockets, real buffer)."""

from __future__ import annotations

import asyncio
import dataclasses
import json

from orderbook_core.buffer.records import Frame, SessionOpen, SessionStreams, from_spill, to_spill
from orderbook_collector.config import Settings
from orderbook_core.streams import Market
from orderbook_collector.writer.thread import Writer
from support.procs import query
from support.markets import key, quiet, running, sent_counts, stored_counts, until
from tools.simulator.exchange import Exchange


def settings_for(ex: Exchange, buffer, **kw) -> Settings:
    base = Settings(
        symbols=["*"], streams=["depth20@100ms", "trade"], ws_url=ex.ws_url, rest_url=ex.rest_url,
        usdm_symbols=["*"], usdm_streams=["depth@100ms", "aggTrade"], usdm_ws_url=ex.ws_url,
        usdm_rest_url=ex.rest_url, symbols_refresh=0.3, buffer=buffer, metrics_port=-1,
        backoff_initial=0.05, backoff_max=0.2, min_session=0.0,
    )
    return dataclasses.replace(base, **kw)


STREAMS = {Market.SPOT: ["depth20@100ms", "trade"], Market.USDM: ["depth@100ms", "aggTrade"]}


def keys(symbol: str) -> list[str]:
    return [key(m.value, f"{symbol}@{k}") for m, kinds in STREAMS.items() for k in kinds]


def events(buffer, kind: str) -> dict[str, tuple[int, int]]:
    return {stream: (sid, t) for stream, sid, t in query(
        buffer, "SELECT stream, session_id, time_us FROM events WHERE kind = ? ORDER BY id", kind)}


def test_star_subscribes_a_listing_and_unsubscribes_a_delisting_without_reconnecting(tmp_path):
    buffer, log = tmp_path / "b.sqlite3", tmp_path / "sent.ndjson"

    async def main():
        async with Exchange(symbols=["btcusdt", "ethusdt"], seed=7, rate=20, sent_log=log) as ex:
            async with running(settings_for(ex, buffer)) as c:
                await until(lambda: all(stored_counts(buffer)[k] >= 3 for k in keys("btcusdt") + keys("ethusdt")),
                            what="rows of both symbols on both markets")
                sessions = query(buffer, "SELECT session_id, market, url FROM sessions ORDER BY 1")
                for m in (Market.SPOT, Market.USDM):
                    ex.list_symbol("solusdt", m)
                    ex.delist_symbol("ethusdt", m)
                await until(lambda: all(stored_counts(buffer)[k] >= 3 for k in keys("solusdt")),
                            what="rows of the new listing")
                await until(lambda: set(keys("ethusdt")) <= set(events(buffer, "unsubscribe")),
                            what="the delisted streams unsubscribed")
                # Quiesce, then everything sent must be stored.
                for m in (Market.SPOT, Market.USDM):
                    for sym in ("btcusdt", "solusdt"):
                        ex.delist_symbol(sym, m)
                await until(lambda: quiet(ex) and stored_counts(buffer) == sent_counts(ex), what="every sent message stored")
                assert (c.metrics.reconnects, c.metrics.connect_failures) == (0, 0)
                assert query(buffer, "SELECT session_id, market, url FROM sessions ORDER BY 1") == sessions
                rest = ex.stats()["rest"]
            return sessions, rest

    sessions, rest = asyncio.run(main())
    # One connection per market and route, never reopened; the URLs named the first symbols only.
    by_route = {(m, "market" if "/market/" in url else "public" if "/public/" in url else None): sid
                for sid, m, url in sessions}
    assert set(by_route) == {("spot", None), ("usdm", "public"), ("usdm", "market")}
    assert all("solusdt" not in url for _, _, url in sessions)
    route_of = {"depth20@100ms": None, "trade": None, "depth@100ms": "public", "aggTrade": "market"}

    subscribed, unsubscribed = events(buffer, "subscribe"), events(buffer, "unsubscribe")
    assert set(subscribed) == set(keys("solusdt"))  # and nothing else was subscribed mid-session
    assert set(unsubscribed) >= set(keys("ethusdt"))
    for k in keys("solusdt") + keys("ethusdt"):
        market = "usdm" if k.startswith("usdm:") else "spot"
        sid = (subscribed.get(k) or unsubscribed[k])[0]
        assert sid == by_route[(market, route_of[k.split("@", 1)[1]])], k  # on the live connection of its route

    # The new listing's frames are all stored and decoded (the writer knew its streams in time).
    sent = [json.loads(x) for x in log.read_text().splitlines()]
    for k in keys("solusdt"):
        market, name = ("usdm", k[5:]) if k.startswith("usdm:") else ("spot", k)
        ids = sorted(x["id"] for x in sent if "data" in x and x["market"] == market and x["stream"] == name)
        table, col = {"depth20@100ms": ("depth_snapshot", "update_id"), "trade": ("trade", "trade_id"),
                      "depth@100ms": ("depth_update", "last_update_id"),
                      "aggTrade": ("agg_trade", "agg_trade_id")}[name.split("@", 1)[1]]
        got = [u for (u,) in query(buffer, f"SELECT {col} FROM {table} JOIN streams s USING (stream_id) "
                                           f"WHERE s.name = ? ORDER BY {col}", k)]
        assert got == ids and got, k
    # Nothing of a delisted stream after its unsubscribe took effect.
    for k in keys("ethusdt"):
        table = {"depth20@100ms": "depth_snapshot", "trade": "trade", "depth@100ms": "depth_update",
                 "aggTrade": "agg_trade"}[k.split("@", 1)[1]]
        late = query(buffer, f"SELECT count(*) FROM {table} JOIN streams s USING (stream_id) "
                             "WHERE s.name = ? AND recv_us > ?", k, unsubscribed[k][1])
        assert late == [(0,)], k
    assert query(buffer, "SELECT count(*) FROM quarantine")[0][0] == 0
    assert query(buffer, "SELECT count(*) FROM events WHERE kind LIKE '%failed'")[0][0] == 0
    # exchangeInfo was read on each market, repeatedly, with no 429 or 418.
    assert rest["spot"]["requests"] >= 2 and rest["usdm"]["requests"] >= 2
    assert (rest["spot"]["429"], rest["spot"]["418"], rest["usdm"]["429"], rest["usdm"]["418"]) == (0, 0, 0, 0)


def test_the_writer_decodes_a_stream_added_mid_session_from_its_first_frame(buffer_path):
    """SessionStreams travels the queue (and the spill) ahead of the frames it announces."""
    sid = 1_700_000_000_000_000
    frame = json.dumps({"stream": "solusdt@trade", "data": {
        "e": "trade", "E": 5, "s": "SOLUSDT", "t": 1, "p": "150.5", "q": "2", "T": 4, "m": True, "M": True}})
    added = SessionStreams(sid, sid + 1, '["solusdt@trade"]')
    assert from_spill(to_spill(added)) == added
    w = Writer(buffer_path, [], commit_interval=0.01)
    w.start()
    w.submit(SessionOpen(sid, "ws://x/stream?streams=btcusdt@trade", '["btcusdt@trade"]', sid, "spot"))
    w.submit(added)
    w.submit(Frame(frame, sid + 2, sid, 0))
    assert w.stop(30)
    assert query(buffer_path, "SELECT s.name, s.market, t.trade_id FROM trade t JOIN streams s USING (stream_id)") == [
        ("solusdt@trade", "spot", 1)]
    assert query(buffer_path, "SELECT count(*) FROM quarantine") == [(0,)]


def test_a_listing_that_does_not_fit_opens_one_more_connection_and_keeps_the_full_one(tmp_path):
    buffer = tmp_path / "b.sqlite3"

    async def main():
        async with Exchange(symbols=["btcusdt", "ethusdt"], seed=8, rate=20) as ex:
            s = settings_for(ex, buffer, streams=["trade"], usdm_symbols=[], streams_per_connection=2)
            async with running(s) as c:
                await until(lambda: all(stored_counts(buffer)[f"{x}@trade"] >= 2 for x in ("btcusdt", "ethusdt")),
                            what="trades of both symbols")
                first = query(buffer, "SELECT session_id, url FROM sessions")
                ex.list_symbol("solusdt", Market.SPOT)
                await until(lambda: stored_counts(buffer)["solusdt@trade"] >= 2, what="trades of the new listing")
                assert (c.metrics.reconnects, c.metrics.connect_failures) == (0, 0)
                urls = list(c.opened_urls)
        return first, urls

    first, urls = asyncio.run(main())
    sessions = query(buffer, "SELECT session_id, url, close_reason FROM sessions ORDER BY 1")
    assert len(first) == 1 and first[0][1].endswith("streams=btcusdt@trade/ethusdt@trade")
    assert [(sid, url) for sid, url, _ in sessions[:1]] == first
    assert len(sessions) == 2 and sessions[1][1].endswith("/stream?streams=solusdt@trade")
    assert [reason for _, _, reason in sessions] == ["collector stopped"] * 2  # no connection ended before the stop
    assert len(urls) == 2
    assert query(buffer, "SELECT count(*) FROM events WHERE kind IN ('subscribe', 'unsubscribe')") == [(0,)]


def test_a_refused_exchange_info_keeps_the_symbols_and_waits_out_retry_after(tmp_path):
    """Spot exchangeInfo weighs 20: a budget of 30 answers the second read with 429. The collector
    keeps recording what it has, records the failure, and asks again only after Retry-After
    (asking earlier would earn a 418 ban)."""
    buffer = tmp_path / "b.sqlite3"

    async def main():
        async with Exchange(symbols=["btcusdt"], seed=9, rate=20, weight_budget={Market.SPOT: 30}) as ex:
            s = settings_for(ex, buffer, streams=["depth20@100ms"], usdm_symbols=[])
            async with running(s) as c:
                await until(lambda: ex.stats()["rest"]["spot"]["429"] == 1, what="the second read refused")
                n = stored_counts(buffer)["btcusdt@depth20@100ms"]
                # 40 more snapshots at 20 a second: two seconds, ~7 refresh intervals of 0.3 s.
                await until(lambda: stored_counts(buffer)["btcusdt@depth20@100ms"] >= n + 40, what="recording goes on")
                return ex.stats()["rest"]["spot"], c.metrics.rest_rate_limited["spot"]

    rest, limited = asyncio.run(main())
    assert (rest["requests"], rest["429"], rest["418"]) == (2, 1, 0)
    assert limited == 1  # the market's REST client saw it, and holds every spot request until Retry-After
