"""Every stream kind on both markets, end to end: the simulated exchange over real sockets,
the collector, the buffer file. What the exchange sent is stored once, with equal values, on
the right market, through a connection on the right route."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import urllib.parse

from orderbook_core.buffer.levels import unpack
from orderbook_collector.config import Settings
from orderbook_core.streams import Market
from support.markets import key, quiet, running, sent_counts, stored_counts, until
from support.procs import query
from tools.simulator.exchange import Exchange

KINDS = ["depth20@100ms", "depth@100ms", "trade", "aggTrade", "bookTicker"]
SPOT, USDM = Market.SPOT, Market.USDM


def settings_for(ex: Exchange, buffer, **kw) -> Settings:
    base = Settings(
        symbols=["btcusdt"], streams=KINDS, ws_url=ex.ws_url, rest_url=ex.rest_url,
        usdm_symbols=["btcusdt"], usdm_streams=KINDS, usdm_ws_url=ex.ws_url, usdm_rest_url=ex.rest_url,
        buffer=buffer, metrics_port=-1, backoff_initial=0.05, backoff_max=0.2, min_session=0.0,
    )
    return dataclasses.replace(base, **kw)


def pairs(levels) -> list[tuple[float, float]]:
    return [(float(p), float(q)) for p, q in levels]


def expected_row(line: dict) -> tuple:
    """The buffer row a sent message must become (the same tuple as :data:`STORED` selects)."""
    d, usdm, k = line["data"], line["market"] == "usdm", key(line["market"], line["stream"])
    kind = line["kind"]
    if kind == "trade":
        return k, d["t"], d["E"], d["T"], float(d["p"]), float(d["q"]), int(d["m"])
    if kind == "agg_trade":
        return k, d["a"], d["E"], d["T"], d["f"], d["l"], float(d["p"]), float(d["q"]), int(d["m"])
    if kind == "book_ticker":
        return (k, d["u"], float(d["b"]), float(d["B"]), float(d["a"]), float(d["A"]),
                d.get("E") if usdm else None, d.get("T") if usdm else None)
    if kind == "depth_update":
        return (k, d["U"], d["u"], d["pu"] if usdm else None, d["E"], d["T"] if usdm else None,
                pairs(d["b"]), pairs(d["a"]))
    if usdm:  # partial depth on USD-M: a depthUpdate-shaped full top N
        return k, d["u"], d["U"], d["pu"], d["E"], d["T"], pairs(d["b"]), pairs(d["a"])
    return k, d["lastUpdateId"], None, None, None, None, pairs(d["bids"]), pairs(d["asks"])


J = "JOIN streams s USING (stream_id) JOIN sessions x USING (session_id)"
#: dataset -> SELECT of (row tuple..., stream market, session market, session url)
STORED = {
    "trade": f"SELECT s.name, trade_id, event_ms, trade_ms, price, qty, is_buyer_maker, s.market, x.market, x.url FROM trade {J}",
    "agg_trade": f"SELECT s.name, agg_trade_id, event_ms, trade_ms, first_trade_id, last_trade_id, price, qty, "
                 f"is_buyer_maker, s.market, x.market, x.url FROM agg_trade {J}",
    "book_ticker": f"SELECT s.name, update_id, best_bid, best_bid_qty, best_ask, best_ask_qty, event_ms, transaction_ms, "
                   f"s.market, x.market, x.url FROM book_ticker {J}",
    "depth_update": f"SELECT s.name, first_update_id, last_update_id, prev_update_id, event_ms, transaction_ms, n_bids, "
                    f"levels, s.market, x.market, x.url FROM depth_update {J}",
    "depth_snapshot": f"SELECT s.name, update_id, first_update_id, prev_update_id, event_ms, transaction_ms, n_bids, "
                      f"levels, s.market, x.market, x.url FROM depth_snapshot {J}",
}
ROUTE = {"trade": "public", "agg_trade": "market", "book_ticker": "public", "depth_update": "public",
         "depth_snapshot": "public"}


def stored_rows(buffer, dataset: str) -> list[tuple]:
    out = []
    for row in query(buffer, STORED[dataset]):
        *values, stream_market, session_market, url = row
        if dataset in ("depth_update", "depth_snapshot"):
            *head, n_bids, levels = values
            bids, asks = unpack(levels, n_bids)
            values = [*head, [tuple(b) for b in bids], [tuple(a) for a in asks]]
        path = urllib.parse.urlsplit(url).path
        want_path = "/stream" if session_market == "spot" else f"/{ROUTE[dataset]}/stream"
        assert stream_market == session_market and path == want_path, (dataset, values[0], session_market, url)
        out.append(tuple(values))
    return out


def test_every_kind_on_both_markets_is_stored_once_with_the_values_sent_on_the_right_route(tmp_path):
    buffer, log = tmp_path / "b.sqlite3", tmp_path / "sent.ndjson"
    streams = [key(m.value, f"btcusdt@{k}") for m in (SPOT, USDM) for k in KINDS]

    async def main():
        async with Exchange(symbols=["btcusdt"], seed=5, rate=20, sent_log=log) as ex:
            async with running(settings_for(ex, buffer)) as c:
                await until(lambda: all(stored_counts(buffer)[s] >= 5 for s in streams), what="5 rows of every stream")
                # Quiesce: a halted symbol's streams go quiet; then everything sent must be stored.
                for m in (Market.SPOT, Market.USDM):
                    ex.delist_symbol("btcusdt", m)
                await until(lambda: quiet(ex) and stored_counts(buffer) == sent_counts(ex), what="every sent message stored")
                urls = list(c.opened_urls)
            silent = ex.stats()["silent_subscriptions"]
        return urls, silent

    urls, silent = asyncio.run(main())
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    data = [x for x in lines if "data" in x]
    assert {key(x["market"], x["stream"]) for x in data} == set(streams)
    for dataset in STORED:
        want = sorted(expected_row(x) for x in data if x["kind"] == dataset)
        got = sorted(stored_rows(buffer, dataset))
        assert got == want, dataset  # once each (the dedup key never hid a sent message), values equal
    assert query(buffer, "SELECT count(*) FROM quarantine")[0][0] == 0
    assert query(buffer, "SELECT count(*) FROM dropped")[0][0] == 0

    # Routes: USD-M depth, bookTicker and trade only on /public, aggTrade only on /market.
    routes = {}
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        names = urllib.parse.parse_qs(parts.query)["streams"][0].split("/")
        routes.setdefault(parts.path, set()).update(n.split("@", 1)[1] for n in names)
    assert routes == {
        "/stream": set(KINDS),
        "/public/stream": {"depth20@100ms", "depth@100ms", "bookTicker", "trade"},
        "/market/stream": {"aggTrade"},
    }
    assert silent == 0  # the exchange never saw a stream on a route that would leave it silent
