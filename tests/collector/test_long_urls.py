"""A connection's URL stays under 8 KB, whatever the streams per connection: the names that do
not fit are subscribed by SUBSCRIBE (paced, in bounded requests), and a server that answers
HTTP 414 to a URL gets a shorter one. The simulator's WebSocket server answers 414 to a request
line over its limit (8,192 bytes, as many servers), as a real server would."""

from __future__ import annotations

import asyncio

import websockets.http11

from orderbook_collector.config import Settings
from orderbook_collector.feed.symbols import URL_BUDGET, control_batches, control_message, url_streams
from support.markets import running, stored_counts, until
from tools.simulator.exchange import Exchange

PREFIX = "wss://stream.binance.com:9443/stream?streams="
NAMES = [f"s{i:03d}usdt@depth20@100ms" for i in range(1024)]  # about 24 KB of names


# ---- sans I/O ------------------------------------------------------------------------------

def test_the_url_takes_the_leading_names_that_fit_under_the_budget():
    names = url_streams(PREFIX, NAMES)
    assert names == NAMES[: len(names)]
    assert len(PREFIX + "/".join(names)) <= URL_BUDGET < len(PREFIX + "/".join(NAMES[: len(names) + 1]))
    assert url_streams(PREFIX, NAMES[:3]) == NAMES[:3]  # a short list: all of it
    assert url_streams(PREFIX, NAMES, cap=5) == NAMES[:5]  # after a 414: at most the cap
    assert url_streams(PREFIX, ["x" * 9000]) == ["x" * 9000]  # never none: a connection needs a stream


def test_the_rest_goes_in_subscribe_requests_each_under_the_budget():
    rest = NAMES[len(url_streams(PREFIX, NAMES)):]
    batches = control_batches(rest)
    assert [n for b in batches for n in b] == rest and len(batches) > 1
    assert max(len(control_message("SUBSCRIBE", b, 2**31)) for b in batches) <= URL_BUDGET
    assert control_batches([]) == []


# ---- against the simulator -------------------------------------------------------------------

def record_many(tmp_path, symbols: list[str]) -> list[str]:
    buffer = tmp_path / "b.sqlite3"

    async def main() -> list[str]:
        async with Exchange(symbols=symbols, seed=3, rate=1) as ex:
            s = Settings(symbols=symbols, streams=["depth20@100ms"], ws_url=ex.ws_url, rest_url=ex.rest_url,
                         buffer=buffer, metrics_port=-1, backoff_initial=0.05, backoff_max=0.2, min_session=0.0)
            async with running(s) as c:
                # Every stream of the one connection stores data: those in its URL and those subscribed.
                await until(lambda: len(stored_counts(buffer)) == len(symbols), timeout=90,
                            what="every stream storing rows")
                assert c.fatal is None and len(c.groups) == 1
                return list(c.opened_urls)

    return asyncio.run(main())


def test_streams_beyond_an_8_kb_url_are_subscribed_and_all_recorded(tmp_path):
    symbols = [f"s{i:03d}usdt" for i in range(600)]  # 600 names: about 14 KB, one connection
    urls = record_many(tmp_path, symbols)
    assert len(urls) == 1 and len(urls[0]) <= URL_BUDGET


def test_a_414_halves_the_url_and_the_connection_opens(tmp_path, monkeypatch):
    # A server whose request line is limited to 2 KB (the client's response parsing is unaffected).
    monkeypatch.setattr(websockets.http11, "MAX_LINE_LENGTH", 2048)
    symbols = [f"s{i:03d}usdt" for i in range(400)]
    urls = record_many(tmp_path, symbols)
    assert len(urls) >= 3  # ~8 KB refused, ~4 KB refused, ~2 KB accepted
    assert [len(u) for u in urls] == sorted((len(u) for u in urls), reverse=True)
    assert len(urls[-1]) < 2048 - len("GET  HTTP/1.1")
