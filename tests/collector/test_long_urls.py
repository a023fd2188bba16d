"""A connection's URL stays under 8 KB, whatever the streams per connection: the names that do
not fit are subscribed by SUBSCRIBE (paced, in bounded requests), and a server that answers
HTTP 414 to a URL gets a shorter one. The simulator's WebSocket server answers 414 to a request
line over its limit (8,192 bytes, as many servers), as a real server would."""

from __future__ import annotations

import asyncio

import pytest
import websockets.http11

from orderbook_collector.config import Settings
from orderbook_collector.feed.symbols import URL_BUDGET, control_batches, control_message, url_streams
from support.markets import running, stored_counts, until
from support.procs import query
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
    carried = [len(u.split("streams=")[1].split("/")) for u in urls]
    # ~8 KB refused, ~4 KB refused, ~2 KB accepted: each 414 halves the names carried
    assert carried == [carried[0] // 2 ** i for i in range(3)], carried
    assert len(urls[-1]) < 2048 - len("GET  HTTP/1.1") < len(urls[-2])


# ---- the exact case: a server with an 8 KB request line and 2,000 streams ----------------

#: The simulator's WebSocket server (the ``websockets`` library's default, as many front ends):
#: a request line over it is answered with HTTP 414.
SERVER_LINE_LIMIT = 8192
TWO_THOUSAND = [f"s{i:04d}usdt" for i in range(2000)]  # two connections of up to 1,024 streams


def record_two_thousand(tmp_path) -> tuple[list[str], dict[str, int]]:
    """Record TWO_THOUSAND's depth20 until every stream stored rows; the URLs opened and the counters,
    with the SUBSCRIBE requests each connection needed (``subscribe_requests``, one count a session)."""
    assert websockets.http11.MAX_LINE_LENGTH == SERVER_LINE_LIMIT
    buffer = tmp_path / "b.sqlite3"

    async def main():
        # The simulator closes a connection that sends more than 5 control frames a second (1008).
        async with Exchange(symbols=TWO_THOUSAND, seed=5, rate=0.5) as ex:
            s = Settings(symbols=TWO_THOUSAND, streams=["depth20@100ms"], ws_url=ex.ws_url, rest_url=ex.rest_url,
                         buffer=buffer, metrics_port=-1, backoff_initial=0.05, backoff_max=0.2, min_session=0.0)
            async with running(s) as c:
                await until(lambda: len(stored_counts(buffer)) == len(TWO_THOUSAND), timeout=150,
                            what="every one of 2,000 streams storing rows")
                assert c.fatal is None and len(c.groups) == 2
                m = c.metrics
                return list(c.opened_urls), {"connected": m.connected, "reconnects": m.reconnects,
                                             "connect_failures": m.connect_failures}

    urls, counts = asyncio.run(main())
    counts["subscribe_requests"] = sorted(n for (n,) in query(
        buffer, "SELECT count(DISTINCT detail) FROM events WHERE kind = 'subscribe' GROUP BY session_id"))
    return urls, counts


@pytest.mark.slow
def test_two_thousand_streams_connect_through_an_8_kb_server_without_a_414(tmp_path):
    urls, counts = record_two_thousand(tmp_path)
    # Two URLs under 8 KB, each opened at the first try; the rest of each connection's ~1,000
    # streams went by SUBSCRIBE, paced: no connection was closed for too many control messages.
    assert len(urls) == 2 and max(len(u) for u in urls) <= URL_BUDGET < SERVER_LINE_LIMIT - len("GET  HTTP/1.1")
    assert counts == {"connected": 2, "reconnects": 0, "connect_failures": 0, "subscribe_requests": [3, 3]}


@pytest.mark.slow
def test_a_414_from_an_8_kb_server_splits_the_url_and_every_one_of_2000_streams_connects(tmp_path, monkeypatch):
    # The collector's own URLs stay under 8 KB, so this server never refuses one. To see what a
    # 414 does at exactly this limit, the collector starts as before the URL budget: each
    # connection's ~1,000 names (about 24 KB) in one URL.
    from orderbook_collector.connection import sessions

    def unbounded(prefix, names, cap=None):
        return url_streams(prefix, names, budget=32_000, cap=cap)

    monkeypatch.setattr(sessions, "url_streams", unbounded)
    urls, counts = record_two_thousand(tmp_path)
    by_group: dict[str, list[str]] = {}
    for url in urls:
        by_group.setdefault(url.split("streams=")[1].split("/")[0], []).append(url)
    assert len(by_group) == 2
    for tries in by_group.values():
        # Refused above the limit (24 KB, then 12 KB), the names carried halved each time, opened
        # once under it (6 KB).
        carried = [len(u.split("streams=")[1].split("/")) for u in tries]
        assert carried == [carried[0] // 2 ** i for i in range(3)], carried
        assert [len(u) > SERVER_LINE_LIMIT for u in tries] == [True, True, False], [len(u) for u in tries]
    # Never stopped: each 414 retried at once (not a failure to back off from), both connections
    # opened and none lost since; what their URLs no longer named went by SUBSCRIBE.
    assert counts == {"connected": 2, "reconnects": 0, "connect_failures": 0, "subscribe_requests": [3, 3]}
