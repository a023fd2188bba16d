"""A fixed feed served over a real loopback WebSocket, cheap enough not to be the bottleneck.

Runs as its own process (``python benchmarks/feed.py``) and prints
``feed listening on ws://127.0.0.1:PORT`` when ready. Each connection chooses its feed by
the URL path, so the collector (which appends ``/stream?streams=...`` to its base URL) and
a bare client can be pointed at the very same frames::

    ws://127.0.0.1:PORT/<run>/<feed>/<count>/<rate>/stream?streams=...

The same port answers ``GET /api/v3/depth?symbol=...`` (HTTP/1.1, keep-alive) with a REST
depth snapshot consistent with the feed: ``lastUpdateId`` is the id just before every
diff stream's first event (``FIRST_ID - 1``), so the collector's diff-depth sync takes
the first event it stored as the one applied on top of it, whenever the answer arrives,
and every diff stream is synced once per run (one 'break' at connect, one 'synced').

``feed`` is ``depth20`` (spot ``depth20@100ms`` frames of ~1.3 KB) or ``mix`` (by count:
40 % diff depth ~400 B, 30 % depth20 ~1.3 KB, 20 % trades ~180 B, 10 % bookTicker
~150 B); ``count`` frames are sent, as fast as the socket takes them (``rate`` 0) or
paced at ``rate`` frames a second, once per ``run`` token: a reconnect with the same token
(the collector's stall watchdog, while it drains a backlog) gets no frames. Every connection gets the same sequence: ids are
consecutive per stream (diff ``U`` = previous ``u`` + 1, trade ids +1), so nothing is a
duplicate and nothing is a gap.

The server speaks RFC 6455 by hand: after the handshake it writes pre-framed text
frames in large chunks (server frames are unmasked), answers pings and closes. A
``websockets`` server costs ~15 µs a frame, which on two shared cores would make the
server, not the client under test, the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import hashlib
import struct
import time
from collections.abc import Iterator

SYMBOLS = ["btcusdt", "ethusdt", "bnbusdt", "solusdt"]
#: The mix's kinds, in the order one cycle of ten frames sends them (4 diff, 3 depth20, 2 trade, 1 bookTicker).
MIX_CYCLE = "DSDTDSBDST"
STREAM_KINDS = {"D": "depth@100ms", "S": "depth20@100ms", "T": "trade", "B": "bookTicker"}
FEEDS = {"depth20": "S", "mix": MIX_CYCLE}
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_T0_MS = 1_795_000_000_000
#: Every stream's first id (diff ``U``, depth20 ``lastUpdateId``, trade id, bookTicker ``u``).
FIRST_ID = 1_000_000_000
_served: set[str] = set()
#: Format each frame as it is sent, as this feed did before issue 22 (``--format-per-frame``):
#: ~2 µs a frame in the feed, and a socket kept less full, so a receive-only ``websockets``
#: client measured ~0.65x its rate on the cached feed (depth20, same run).
FORMAT_PER_FRAME = False


def feed_streams(feed: str) -> list[str]:
    """The stream kinds a feed carries (for the subscriber's settings)."""
    return sorted({STREAM_KINDS[c] for c in FEEDS[feed]}, key=list(STREAM_KINDS.values()).index)


def _levels(mid: float, n_bids: int, n_asks: int, tick: float, seed: int) -> str:
    bids = ",".join(f'["{mid - tick * (i + 1):.8f}","{0.5 + ((i + seed) % 7) * 0.25:.8f}"]' for i in range(n_bids))
    asks = ",".join(f'["{mid + tick * i:.8f}","{1.0 + ((i + seed) % 5) * 0.125:.8f}"]' for i in range(n_asks))
    return bids, asks


def _templates(kind: str, sym: int) -> list[str]:
    """Frames of one kind and symbol as ``str.format`` templates over ``{i}`` (ids) and ``{e}`` (ms)."""
    s = SYMBOLS[sym]
    mid = 65000.0 / (sym + 1)
    out = []
    for v in range(25):
        m = mid + v * 0.37
        if kind == "S":
            bids, asks = _levels(m, 20, 20, 0.01, v)
            body = f'"lastUpdateId":{{i}},"bids":[{bids}],"asks":[{asks}]'
        elif kind == "D":
            bids, asks = _levels(m, 4 + v % 2, 4 - v % 2, 0.01, v)
            body = (f'"e":"depthUpdate","E":{{e}},"s":"{s.upper()}","U":{{first}},"u":{{i}},'
                    f'"b":[{bids}],"a":[{asks}]')
        elif kind == "T":
            body = (f'"e":"trade","E":{{e}},"s":"{s.upper()}","t":{{i}},"p":"{m:.8f}",'
                    f'"q":"{0.001 * (v + 1):.8f}","T":{{e}},"m":{"true" if v % 2 else "false"},"M":true')
        else:
            body = (f'"u":{{i}},"s":"{s.upper()}","b":"{m:.8f}","B":"{1 + v * 0.5:.8f}",'
                    f'"a":"{m + 0.01:.8f}","A":"{2 + v * 0.25:.8f}"')
        out.append(f'{{{{"stream":"{s}@{STREAM_KINDS[kind]}","data":{{{{{body}}}}}}}}}')
    return out


def frames(feed: str, count: int) -> Iterator[bytes]:
    """The feed's ``count`` frames as UTF-8 text, the same sequence every time."""
    cycle = FEEDS[feed]
    templates = {(k, s): _templates(k, s) for k in set(cycle) for s in range(len(SYMBOLS))}
    next_id = {key: FIRST_ID for key in templates}
    for n in range(count):
        kind = cycle[n % len(cycle)]
        key = (kind, (n // len(cycle)) % len(SYMBOLS))
        first = next_id[key]
        last = first + 2 if kind == "D" else first  # a diff event spans a few update ids
        next_id[key] = last + 1
        t = templates[key][n % 25]
        yield t.format(i=last, first=first, e=_T0_MS + n // 10).encode()


@functools.lru_cache(maxsize=4)
def framed(feed: str, count: int) -> tuple[bytes, ...]:
    """The feed's frames, framed, built once per (feed, count) and served from memory.

    Formatting a frame costs the feed ~2 µs: enough to make the feed, not a fast client
    (picows takes ~1 µs a frame), the limit of a flat-out run. Built before the first frame
    is written, so no client's timed window (first frame to last) includes it.
    """
    return tuple(ws_frame(payload) for payload in frames(feed, count))


def ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


async def _read_frames(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, closed: asyncio.Event) -> None:
    """Answer the client's pings; end on its close frame or EOF."""
    try:
        while True:
            b0, b1 = await reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await reader.readexactly(8))
            mask = await reader.readexactly(4) if b1 & 0x80 else b"\0\0\0\0"
            data = bytes(c ^ mask[i % 4] for i, c in enumerate(await reader.readexactly(n)))
            op = b0 & 0x0F
            if op == 0x9:
                writer.write(ws_frame(data, 0xA))
            elif op == 0x8:
                writer.write(ws_frame(data[:2], 0x8))
                return
    except (asyncio.IncompleteReadError, ConnectionError):
        return
    finally:
        closed.set()


def depth_snapshot(query: str) -> bytes:
    """The REST depth answer for ``symbol=...``: 20 levels a side, the book just before the feed's first diff event."""
    params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
    sym = params.get("symbol", "").lower()
    mid = 65000.0 / (SYMBOLS.index(sym) + 1) if sym in SYMBOLS else 100.0
    bids, asks = _levels(mid, 20, 20, 0.01, 0)
    return f'{{"lastUpdateId":{FIRST_ID - 1},"bids":[{bids}],"asks":[{asks}]}}'.encode()


async def serve_rest(first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer REST depth requests on one keep-alive connection until the client closes it."""
    request = first
    try:
        while True:
            target = request.decode("latin-1").split("\r\n")[0].split(" ")[1]
            path, _, query = target.partition("?")
            if path == "/api/v3/depth":
                status, body = "200 OK", depth_snapshot(query)
            else:
                status, body = "404 Not Found", b'{"code":-1,"msg":"not served by the benchmark feed"}'
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            await writer.drain()
            request = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    request = await reader.readuntil(b"\r\n\r\n")
    lines = request.decode("latin-1").split("\r\n")
    path = lines[0].split(" ")[1]
    if path.startswith("/api/"):
        await serve_rest(request, reader, writer)
        return
    headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:] if ":" in x)}
    accept = base64.b64encode(hashlib.sha1(headers["sec-websocket-key"].encode() + _GUID).digest()).decode()
    writer.write(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
    )
    run, feed, count, rate = path.strip("/").split("/")[:4]
    count, rate = int(count), float(rate)
    if run in _served:
        count = 0
    _served.add(run)
    closed = asyncio.Event()
    pings = asyncio.create_task(_read_frames(reader, writer, closed))
    # Paced: one chunk a millisecond; flat out: chunks of 256 frames.
    per_chunk = max(1, round(rate / 1000)) if rate else 256
    chunk: list[bytes] = []
    sent = 0
    # Cached: built before the pacing clock starts; --format-per-frame: formatted as sent.
    run_frames = (ws_frame(f) for f in frames(feed, count)) if FORMAT_PER_FRAME else framed(feed, count)
    t0 = time.perf_counter()
    try:
        for frame in run_frames:
            chunk.append(frame)
            if len(chunk) < per_chunk:
                continue
            writer.write(b"".join(chunk))
            sent += len(chunk)
            chunk.clear()
            await writer.drain()
            if rate:
                ahead = sent / rate - (time.perf_counter() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            if closed.is_set():
                return
        if chunk:
            writer.write(b"".join(chunk))
            await writer.drain()
        await closed.wait()  # stay open: the client closes when it has counted everything
    except ConnectionError:
        pass
    finally:
        pings.cancel()
        writer.close()


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--format-per-frame", action="store_true", help="format frames as they are sent (before issue 22)")
    args = p.parse_args()
    global FORMAT_PER_FRAME
    FORMAT_PER_FRAME = args.format_per_frame
    server = await asyncio.start_server(handle, "127.0.0.1", args.port)
    print(f"feed listening on ws://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
