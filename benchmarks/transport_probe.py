"""The protocol behaviours the collector relies on, probed on one WebSocket client (issue 22).

Runs each probe against a local server with ``websockets``'s client or with picows's
``websockets``-compatible one, the names the collector takes from its transport
(``connect``, ``ConnectionClosed``, ``InvalidStatus``), and prints one line a probe:

* ``tls``: a ``wss://`` handshake to a server with a self-signed certificate, trusted by the
  client's SSL context (``openssl`` makes it), then one message;
* ``close-code``: the server closes with 1008 and a reason: the client's iteration ends with
  ``ConnectionClosed`` whose ``rcvd`` has the code and reason (what the session's end records);
* ``ping-timeout``: a server that never answers pings: the client gives up after
  ``ping_interval + ping_timeout``, sends 1011, and its iteration ends with ``ConnectionClosed``
  (no close frame received; the collector then reconnects);
* ``414`` and ``429``: handshake refusals as ``InvalidStatus`` with the status and headers
  (the URL halving; ``Retry-After`` honoured);
* ``server-close``: a clean close by the server (1001, what a shutdown ends with) ends the
  iteration without an exception, and ``close_code`` says 1001.

The make-before-break rotation, the ``serverShutdown`` event, reconnects and the 414 path of
the collector itself are covered by ``tests/collector`` (run them on picows with
``-p benchmarks.picows_swap``).

Usage: python benchmarks/transport_probe.py --transport websockets|picows
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

from websockets.asyncio.server import serve
from websockets.datastructures import Headers
from websockets.http11 import Response

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PING_INTERVAL = 0.3
PING_TIMEOUT = 0.3


def client(transport: str):
    if transport == "picows":
        try:
            from picows.websockets.asyncio.client import connect
            from picows.websockets.exceptions import ConnectionClosed, InvalidStatus
        except ImportError:
            raise SystemExit("picows is not importable here (the product's venv has none): "
                             "run the probe with a Python that has it") from None
    else:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidStatus
    return connect, ConnectionClosed, InvalidStatus


def self_signed(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it) for ``localhost``."""
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    return server, ssl.create_default_context(cafile=str(cert))


async def probe_tls(connect, tmp: Path) -> str:
    server_ctx, client_ctx = self_signed(tmp)

    async def hello(ws):
        await ws.send('{"hello":"tls"}')
        await ws.wait_closed()

    async with serve(hello, "localhost", 0, ssl=server_ctx) as srv:
        port = srv.sockets[0].getsockname()[1]
        async with connect(f"wss://localhost:{port}/", ssl=client_ctx, proxy=None) as ws:
            got = await ws.recv()
    assert got == '{"hello":"tls"}', got
    return "wss handshake with the client's SSL context, message received"


async def probe_close_code(connect, closed_type) -> str:
    async def policy(ws):
        await ws.send("one")
        await ws.close(1008, "too many requests")

    async with serve(policy, "127.0.0.1", 0) as srv:
        port = srv.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/", proxy=None) as ws:
            try:
                async for _ in ws:
                    pass
                raise AssertionError("iteration ended without ConnectionClosed")
            except closed_type as exc:
                code, reason = int(exc.rcvd.code), exc.rcvd.reason
    assert (code, reason) == (1008, "too many requests"), (code, reason)
    return f"ConnectionClosed.rcvd = {code} {reason!r}"


async def probe_server_close(connect) -> str:
    async def going_away(ws):
        await ws.send("one")
        await ws.close(1001, "server shutdown")

    async with serve(going_away, "127.0.0.1", 0) as srv:
        port = srv.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/", proxy=None) as ws:
            got = [m async for m in ws]
            code, reason = ws.close_code, ws.close_reason
    assert got == ["one"] and (int(code), reason) == (1001, "server shutdown"), (got, code, reason)
    return f"iteration ended cleanly; close_code {int(code)} {reason!r}"


async def probe_ping_timeout(connect, closed_type) -> str:
    """A hand-rolled server that completes the handshake, then never reads: no pong ever comes."""
    async def mute(reader, writer):
        request = await reader.readuntil(b"\r\n\r\n")
        key = next(line.split(":", 1)[1].strip() for line in request.decode().split("\r\n")
                   if line.lower().startswith("sec-websocket-key"))
        accept = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
        writer.write(f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode())
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(30)

    srv = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    t0 = time.monotonic()
    sent = rcvd = None
    try:
        async with asyncio.timeout(10):
            ws = await connect(f"ws://127.0.0.1:{port}/", ping_interval=PING_INTERVAL, ping_timeout=PING_TIMEOUT,
                               close_timeout=0.5, proxy=None)
            try:
                async for _ in ws:
                    pass
                raise AssertionError("iteration ended without ConnectionClosed")
            except closed_type as exc:
                sent, rcvd = exc.sent, exc.rcvd
    finally:
        srv.close()
    took = time.monotonic() - t0
    # websockets reports close_code 1006 here (no close frame came back), picows.websockets the
    # 1011 it sent: the collector records the exception's rcvd, None (1006) in both.
    assert sent is not None and int(sent.code) == 1011 and rcvd is None, (sent, rcvd)
    return (f"sent {int(sent.code)} {sent.reason!r}, received no close frame, after {took:.2f} s "
            f"(interval + timeout {PING_INTERVAL + PING_TIMEOUT:.1f} s, close timeout 0.5 s); close_code {ws.close_code!s}")


async def probe_refusal(connect, status_type, status: int) -> str:
    def refuse(_conn, _request):
        headers = Headers([("Retry-After", "7")]) if status == 429 else Headers()
        return Response(status, "refused", headers, b"")

    async with serve(lambda ws: ws.wait_closed(), "127.0.0.1", 0, process_request=refuse) as srv:
        port = srv.sockets[0].getsockname()[1]
        try:
            async with connect(f"ws://127.0.0.1:{port}/stream?streams=x", proxy=None):
                raise AssertionError("handshake accepted")
        except status_type as exc:
            got, retry_after = exc.response.status_code, exc.response.headers.get("Retry-After")
    assert got == status and (retry_after == "7" if status == 429 else True), (got, retry_after)
    return f"InvalidStatus, status_code {got}" + (f", Retry-After {retry_after}" if status == 429 else "")


async def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--transport", choices=["websockets", "picows"], default="websockets")
    args = p.parse_args()
    connect, closed_type, status_type = client(args.transport)
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        probes = {
            "tls": lambda: probe_tls(connect, Path(tmp)),
            "close-code": lambda: probe_close_code(connect, closed_type),
            "server-close": lambda: probe_server_close(connect),
            "ping-timeout": lambda: probe_ping_timeout(connect, closed_type),
            "414": lambda: probe_refusal(connect, status_type, 414),
            "429": lambda: probe_refusal(connect, status_type, 429),
        }
        for name, probe in probes.items():
            try:
                print(f"{args.transport:10} {name:13} ok: {await probe()}", flush=True)
            except Exception as exc:  # a probe's failure is its result
                failed += 1
                print(f"{args.transport:10} {name:13} FAILED: {type(exc).__name__}: {exc}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
