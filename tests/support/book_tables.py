"""Arrow tables of ``depth_update``, ``depth_rest_snapshot`` and ``depth_snapshot`` rows with
exactly the columns of DESIGN.md "Datasets", built from literal values for the books tests."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import pyarrow as pa

from orderbook_core.buffer.levels import LEVELS

TS = pa.timestamp("us", tz="UTC")
Levels = Sequence[tuple[float, float]]


def _levels(rows: list[Levels]) -> pa.Array:
    return pa.array([[{"price": p, "qty": q} for p, q in side] for side in rows], type=LEVELS)


class Upd(NamedTuple):
    recv_us: int
    U: int
    u: int
    bids: Levels = ()
    asks: Levels = ()
    pu: int | None = None
    session_id: int = 1
    seq: int = 0


class Rest(NamedTuple):
    recv_us: int
    u: int
    bids: Levels
    asks: Levels
    reason: str = "connect"
    limit: int | None = None  # not a column of depth_rest_snapshot: added only when some row sets it


class Part(NamedTuple):
    recv_us: int
    u: int
    bids: Levels
    asks: Levels
    session_id: int = 1
    seq: int = 0


UPDATE_SCHEMA = pa.schema([
    ("market", pa.string()), ("symbol", pa.string()), ("stream", pa.string()), ("recv_time", TS),
    ("session_id", pa.int64()), ("seq", pa.int64()), ("event_time", TS), ("transaction_time", TS),
    ("first_update_id", pa.int64()), ("last_update_id", pa.int64()), ("prev_update_id", pa.int64()),
    ("bids", LEVELS), ("asks", LEVELS),
])
REST_SCHEMA = pa.schema([
    ("market", pa.string()), ("symbol", pa.string()), ("stream", pa.string()), ("recv_time", TS),
    ("last_update_id", pa.int64()), ("bids", LEVELS), ("asks", LEVELS), ("reason", pa.string()),
    ("event_time", TS), ("transaction_time", TS),
])
PARTIAL_SCHEMA = pa.schema([
    ("market", pa.string()), ("symbol", pa.string()), ("stream", pa.string()), ("recv_time", TS),
    ("session_id", pa.int64()), ("seq", pa.int64()), ("last_update_id", pa.int64()),
    ("bids", LEVELS), ("asks", LEVELS), ("event_time", TS), ("transaction_time", TS),
    ("first_update_id", pa.int64()), ("prev_update_id", pa.int64()),
])


def updates(rows: Sequence[Upd], market: str = "spot", symbol: str = "BTCUSDT",
            stream: str | None = None) -> pa.Table:
    stream = stream or f"{symbol.lower()}@depth@100ms"
    n = len(rows)
    usdm = market == "usdm"
    return pa.table([
        pa.array([market] * n), pa.array([symbol] * n), pa.array([stream] * n),
        pa.array([r.recv_us for r in rows], pa.int64()).cast(TS),
        pa.array([r.session_id for r in rows], pa.int64()), pa.array([r.seq for r in rows], pa.int64()),
        pa.array([r.recv_us // 1000 * 1000 for r in rows], pa.int64()).cast(TS),
        pa.array([r.recv_us // 1000 * 1000 if usdm else None for r in rows], pa.int64()).cast(TS),
        pa.array([r.U for r in rows], pa.int64()), pa.array([r.u for r in rows], pa.int64()),
        pa.array([r.pu for r in rows], pa.int64()),
        _levels([r.bids for r in rows]), _levels([r.asks for r in rows]),
    ], schema=UPDATE_SCHEMA)


def rest(rows: Sequence[Rest], market: str = "spot", symbol: str = "BTCUSDT", stream: str | None = None) -> pa.Table:
    stream = stream or f"{symbol.lower()}@depth@100ms"
    n = len(rows)
    t = pa.table([
        pa.array([market] * n), pa.array([symbol] * n), pa.array([stream] * n),
        pa.array([r.recv_us for r in rows], pa.int64()).cast(TS),
        pa.array([r.u for r in rows], pa.int64()),
        _levels([r.bids for r in rows]), _levels([r.asks for r in rows]),
        pa.array([r.reason for r in rows]),
        pa.array([None] * n, pa.int64()).cast(TS), pa.array([None] * n, pa.int64()).cast(TS),
    ], schema=REST_SCHEMA)
    if any(r.limit is not None for r in rows):  # sides shorter than it are whole (books.builder)
        t = t.append_column("limit", pa.array([r.limit for r in rows], pa.int64()))
    return t


def partial(rows: Sequence[Part], market: str = "spot", symbol: str = "BTCUSDT",
            stream: str | None = None) -> pa.Table:
    stream = stream or f"{symbol.lower()}@depth20@100ms"
    n = len(rows)
    nulls = pa.array([None] * n, pa.int64())
    return pa.table([
        pa.array([market] * n), pa.array([symbol] * n), pa.array([stream] * n),
        pa.array([r.recv_us for r in rows], pa.int64()).cast(TS),
        pa.array([r.session_id for r in rows], pa.int64()), pa.array([r.seq for r in rows], pa.int64()),
        pa.array([r.u for r in rows], pa.int64()),
        _levels([r.bids for r in rows]), _levels([r.asks for r in rows]),
        nulls.cast(TS), nulls.cast(TS), nulls, nulls,
    ], schema=PARTIAL_SCHEMA)


def empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()


class Trd(NamedTuple):
    recv_us: int
    trade_id: int
    price: float
    qty: float
    is_buyer_maker: bool = False
    session_id: int = 1
    seq: int = 0


TRADE_SCHEMA = pa.schema([
    ("market", pa.string()), ("symbol", pa.string()), ("stream", pa.string()), ("recv_time", TS),
    ("session_id", pa.int64()), ("seq", pa.int64()), ("event_time", TS), ("trade_time", TS),
    ("trade_id", pa.int64()), ("price", pa.float64()), ("qty", pa.float64()), ("is_buyer_maker", pa.bool_()),
])


def trades(rows: Sequence[Trd], market: str = "spot", symbol: str = "BTCUSDT", stream: str | None = None) -> pa.Table:
    stream = stream or f"{symbol.lower()}@trade"
    n = len(rows)
    return pa.table([
        pa.array([market] * n), pa.array([symbol] * n), pa.array([stream] * n),
        pa.array([r.recv_us for r in rows], pa.int64()).cast(TS),
        pa.array([r.session_id for r in rows], pa.int64()), pa.array([r.seq for r in rows], pa.int64()),
        pa.array([r.recv_us // 1000 * 1000 for r in rows], pa.int64()).cast(TS),
        pa.array([r.recv_us // 1000 * 1000 - 1000 for r in rows], pa.int64()).cast(TS),
        pa.array([r.trade_id for r in rows], pa.int64()), pa.array([r.price for r in rows], pa.float64()),
        pa.array([r.qty for r in rows], pa.float64()), pa.array([r.is_buyer_maker for r in rows], pa.bool_()),
    ], schema=TRADE_SCHEMA)
