"""A frame source for benchmarks: a WebSocket server in its own process that sends
pre-built depth20 combined-stream frames (~1.3 KB) as fast as possible or at a paced rate.

Frames rotate over a few hundred realistic books; each gets a fresh lastUpdateId, so
none is a duplicate. Prints ``blaster listening on ws://127.0.0.1:PORT`` when ready.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

sys.path.insert(0, __import__("os").path.dirname(__file__) + "/../tests")

from support.frames import depth_frame  # noqa: E402

from websockets.asyncio.server import serve  # noqa: E402


def templates(symbols: list[str], n: int = 200) -> list[tuple[str, str]]:
    """Frames split around the update id so each send only formats one integer."""
    out = []
    for i in range(n):
        sym = symbols[i % len(symbols)]
        raw = depth_frame(999_999_999_999, stream=f"{sym}@depth20@100ms", mid=65000 + (i % 50) * 0.01)
        head, tail = raw.split("999999999999")
        out.append((head, tail))
    return out


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rate", type=float, default=0, help="messages per second; 0 = as fast as possible")
    p.add_argument("--count", type=int, default=100_000)
    p.add_argument("--symbols", default="btcusdt,ethusdt,bnbusdt,solusdt")
    args = p.parse_args()
    frames = templates(args.symbols.split(","))
    done = asyncio.Event()

    async def handler(ws):
        uid = 50_000_000_000
        sent = 0
        t0 = time.perf_counter()
        burst = 50 if args.rate == 0 else max(1, int(args.rate / 1000))
        while sent < args.count:
            for _ in range(min(burst, args.count - sent)):
                head, tail = frames[sent % len(frames)]
                uid += 1
                await ws.send(f"{head}{uid}{tail}")
                sent += 1
            if args.rate:
                ahead = sent / args.rate - (time.perf_counter() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            else:
                await asyncio.sleep(0)
        await asyncio.sleep(3600)  # keep the connection open; the benchmark closes it

    async with serve(handler, "127.0.0.1", 0, max_size=None, compression=None) as server:
        print(f"blaster listening on ws://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
        await done.wait()


if __name__ == "__main__":
    asyncio.run(main())
