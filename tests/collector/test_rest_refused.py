"""A REST depth snapshot the kernel refuses (a NaN, negative or zero-priced level, no
lastUpdateId) is quarantined with its body and reason, never stored as a snapshot nor used to
sync; the stream stays broken and its snapshot is asked for again, which then syncs it.
A real HTTP server on loopback answers, a real writer stores into a real buffer."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson

from orderbook_core.buffer.levels import unpack
from orderbook_core.buffer.records import REST_SESSION, Frame, SessionOpen
from orderbook_core.streams import spec
from orderbook_collector.connection.rest import RestClient, Resyncer
from orderbook_collector.writer.thread import Writer
from support.markets import until

T0 = 1_700_000_000_000_000
DIFF = spec("btcusdt", "depth@100ms")
BAD = b'{"lastUpdateId":11,"bids":[["NaN","1.5"]],"asks":[["100.6","2"]]}'
GOOD = b'{"lastUpdateId":11,"bids":[["100.5","1.5"]],"asks":[["100.6","2"]]}'


class Depth(BaseHTTPRequestHandler):
    """Answers /api/v3/depth with the bad body, then (once the test releases it) the good one."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        srv = self.server
        with srv.lock:
            first = srv.asked == 0
            srv.asked += 1
        if not first:
            assert srv.release.wait(30), "the test never released the second answer"
        body = BAD if first else GOOD
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # the test's output is not the place for access logs
        pass


def diff(U, u):
    return orjson.dumps({"stream": DIFF.name, "data": {"e": "depthUpdate", "E": u, "s": "BTCUSDT", "U": U, "u": u,
                                                       "b": [["100.5", "1"]], "a": [["100.6", "0"]]}}).decode()


def rows(path, sql):
    con = sqlite3.connect(path)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_a_refused_rest_snapshot_is_quarantined_and_asked_for_again(buffer_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Depth)
    server.asked, server.lock, server.release = 0, threading.Lock(), threading.Event()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    w = Writer(buffer_path, [DIFF], commit_interval=0.01)
    w.start()

    async def main():
        client = RestClient(DIFF.market, f"http://127.0.0.1:{server.server_port}", 0.5)
        r = Resyncer(client, [DIFF], w.submit, 5)
        r.start()
        try:
            w.submit(SessionOpen(T0, "ws://x/stream", orjson.dumps([DIFF.name]).decode(), T0))
            w.submit(Frame(diff(10, 12), T0, T0, 0))  # the stream's first event: broken until a snapshot
            r.request(DIFF.key, "connect")
            await until(lambda: rows(buffer_path, "SELECT count(*) FROM quarantine") == [(1,)],
                        what="the refused snapshot in quarantine")
            # The second answer is held back: the refused one alone is no snapshot and synced nothing.
            assert rows(buffer_path, "SELECT count(*) FROM depth_rest_snapshot") == [(0,)]
            assert rows(buffer_path, "SELECT event FROM depth_sync") == [("break",)]
            server.release.set()
            await until(lambda: rows(buffer_path, "SELECT count(*) FROM depth_rest_snapshot") == [(1,)],
                        what="the snapshot asked for again")
            w.submit(Frame(diff(13, 15), T0 + 1, T0, 1))
        finally:
            await r.stop()
        return client.metrics

    try:
        metrics = asyncio.run(main())
    finally:
        server.release.set()
        assert w.stop(30)
        server.shutdown()
        server.server_close()
    (recv_us, session, seq, reason, detail, raw), = rows(
        buffer_path, "SELECT recv_us, session_id, seq, reason, detail, raw FROM quarantine")
    assert raw == BAD and (session, seq) == (REST_SESSION, 0) and recv_us > T0
    assert reason == "out_of_range"
    assert detail == f"rest depth snapshot of {DIFF.key}: a price or quantity is negative, zero-priced or not finite"
    # Only the good answer is a snapshot, and only it synced the stream.
    (last_id, n_bids, packed), = rows(buffer_path, "SELECT last_update_id, n_bids, levels FROM depth_rest_snapshot")
    assert (last_id, unpack(packed, n_bids)) == (11, ([(100.5, 1.5)], [(100.6, 2.0)]))
    assert rows(buffer_path, "SELECT event, reason, snapshot_update_id FROM depth_sync ORDER BY id") == [
        ("break", "connect", None), ("synced", "snapshot", 11)]
    assert server.asked == 2
    assert (metrics.rest_refused["spot"], metrics.rest_snapshots["spot"]) == (1, 1)
    assert w.metrics.quarantined["out_of_range"] == 1 and sum(w.metrics.quarantined.values()) == 1
    # No session has the REST id: the refusal is counted in no session's row.
    assert rows(buffer_path, "SELECT session_id, quarantined FROM sessions") == [(T0, 0)]
