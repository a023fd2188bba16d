"""What the archive must hold for a message the simulator sent, and the archive read back in
the same shape: (market, symbol, stream, *COLUMNS[dataset]) with times as epoch µs and levels
as (price, qty) pairs. Shared by the every-kind system test and the chaos oracle."""

from __future__ import annotations

import duckdb

#: dataset -> the archive columns compared, in order (after market, symbol, stream).
COLUMNS = {
    "trade": ("trade_id", "event_time", "trade_time", "price", "qty", "is_buyer_maker"),
    "agg_trade": ("agg_trade_id", "event_time", "trade_time", "first_trade_id", "last_trade_id", "price", "qty",
                  "is_buyer_maker"),
    "book_ticker": ("update_id", "best_bid", "best_bid_qty", "best_ask", "best_ask_qty", "event_time",
                    "transaction_time"),
    "depth_update": ("first_update_id", "last_update_id", "prev_update_id", "event_time", "transaction_time",
                     "bids", "asks"),
    "depth_snapshot": ("last_update_id", "first_update_id", "prev_update_id", "event_time", "transaction_time",
                       "bids", "asks"),
}
#: The same for the USD-M derivatives datasets (markPrice, forceOrder), kept apart: the spot and
#: USD-M kinds' tests iterate :data:`COLUMNS`.
DERIVATIVE_COLUMNS = {
    "mark_price": ("event_time", "mark_price", "index_price", "estimated_settle_price", "funding_rate",
                   "next_funding_time"),
    "liquidation": ("event_time", "side", "order_type", "time_in_force", "orig_qty", "price", "avg_price",
                    "status", "last_filled_qty", "filled_accum_qty", "trade_time"),
}
#: dataset -> its dedup id column (with market and stream, the dataset's dedup key).
ID = {"trade": "trade_id", "agg_trade": "agg_trade_id", "book_ticker": "update_id",
      "depth_update": "last_update_id", "depth_snapshot": "last_update_id"}
DERIVATIVE_ID = {"mark_price": "event_time", "liquidation": "event_time"}
TIMES = {"event_time", "trade_time", "transaction_time", "next_funding_time", "recv_time", "start_time", "end_time", "first_recv_time",
         "as_of"}
LEVELS = {"bids", "asks"}


def us(ms: int | None) -> int | None:
    return None if ms is None else ms * 1000


def pairs(levels) -> tuple:
    return tuple((float(p), float(q)) for p, q in levels)


def expected(line: dict) -> tuple:
    """The archive row a sent-log data line must become."""
    d, usdm, kind = line["data"], line["market"] in ("usdm", "coinm"), line["kind"]  # futures: E, T, pu
    head = (line["market"], line["stream"].split("@", 1)[0].upper(), line["stream"])
    if kind == "trade":
        return (*head, d["t"], us(d["E"]), us(d["T"]), float(d["p"]), float(d["q"]), d["m"])
    if kind == "agg_trade":
        return (*head, d["a"], us(d["E"]), us(d["T"]), d["f"], d["l"], float(d["p"]), float(d["q"]), d["m"])
    if kind == "book_ticker":
        return (*head, d["u"], float(d["b"]), float(d["B"]), float(d["a"]), float(d["A"]),
                us(d["E"]) if usdm else None, us(d["T"]) if usdm else None)
    if kind == "mark_price":  # a delivery contract's "r": "" and "T": 0 are nulls
        return (*head, us(d["E"]), float(d["p"]), float(d["i"]), float(d["P"]), float(d["r"]) if d["r"] else None,
                us(d["T"]) if d["T"] else None)
    if kind == "liquidation":
        o = d["o"]
        return (*head, us(d["E"]), o["S"], o["o"], o["f"], float(o["q"]), float(o["p"]), float(o["ap"]), o["X"],
                float(o["l"]), float(o["z"]), us(o["T"]))
    if kind == "depth_update":
        return (*head, d["U"], d["u"], d["pu"] if usdm else None, us(d["E"]), us(d["T"]) if usdm else None,
                pairs(d["b"]), pairs(d["a"]))
    if usdm:  # USD-M partial depth: a depthUpdate-shaped top N
        return (*head, d["u"], d["U"], d["pu"], us(d["E"]), us(d["T"]), pairs(d["b"]), pairs(d["a"]))
    return (*head, d["lastUpdateId"], None, None, None, None, pairs(d["bids"]), pairs(d["asks"]))


def _select(col: str) -> str:
    if col in TIMES:
        return f"epoch_us({col})"
    if col in LEVELS:
        return f"list_transform({col}, l -> [l.price, l.qty])"
    return col


def read(archive, dataset: str, cols) -> list[tuple]:
    """``cols`` of every row of ``dataset`` under ``archive`` (a local folder)."""
    sql = (f"SELECT {', '.join(_select(c) for c in cols)} "
           f"FROM read_parquet('{archive}/{dataset}/**/*.parquet', hive_partitioning = true)")
    return [tuple(tuple(tuple(x) for x in v) if c in LEVELS else v for c, v in zip(cols, row))
            for row in duckdb.connect().execute(sql).fetchall()]


def rows(archive, dataset: str) -> list[tuple]:
    """The archived rows of a stream dataset in the shape :func:`expected` returns."""
    return read(archive, dataset, ("market", "symbol", "stream", *{**COLUMNS, **DERIVATIVE_COLUMNS}[dataset]))
