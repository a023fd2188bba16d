"""Literal frames for the sans-I/O tests: what Binance sends, byte for byte."""

from __future__ import annotations

import orjson


def depth_levels(mid: float, n: int = 20, tick: float = 0.01) -> tuple[list, list]:
    bids = [[f"{mid - tick * (i + 1):.8f}", f"{0.5 + i * 0.25:.8f}"] for i in range(n)]
    asks = [[f"{mid + tick * i:.8f}", f"{1.0 + i * 0.125:.8f}"] for i in range(n)]
    return bids, asks


def depth_frame(update_id: int, stream: str = "btcusdt@depth20@100ms", mid: float = 65432.10, n: int = 20) -> str:
    bids, asks = depth_levels(mid, n)
    return orjson.dumps({"stream": stream, "data": {"lastUpdateId": update_id, "bids": bids, "asks": asks}}).decode()
