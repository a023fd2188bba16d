"""Numbered migrations: a buffer made by an older program is brought up to date in place, rows kept."""

from __future__ import annotations

import sqlite3

import pytest

from orderbook_core import buffer
from orderbook_core.buffer import schema
from orderbook_core.errors import StorageError
from support.old_buffers import buffer_at


def make_v1(path) -> None:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    (step, sql), = [m for m in schema.MIGRATIONS if m[0] == 1]
    for stmt in sql.split(";"):
        if stmt.strip():
            con.execute(stmt)
    con.execute("INSERT INTO streams (name, symbol, kind) VALUES ('btcusdt@depth20@100ms', 'btcusdt', 'depth20@100ms')")
    con.execute("INSERT INTO depth_snapshot (stream_id, session_id, seq, recv_us, update_id, n_bids, levels) "
                "VALUES (1, 1, 0, 5, 42, 0, x'')")
    con.execute("PRAGMA user_version = 1")
    con.close()


def test_a_version_1_buffer_is_migrated_in_place(tmp_path):
    path = tmp_path / "old.sqlite3"
    make_v1(path)
    conn = buffer.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
    assert conn.execute("SELECT update_id, event_ms, prev_update_id FROM depth_snapshot").fetchall() == [(42, None, None)]
    assert conn.execute("SELECT market FROM streams").fetchall() == [("spot",)]
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert set(schema.OWNER) <= tables
    conn.close()


def test_every_table_has_one_owner(tmp_path):
    conn = buffer.connect(tmp_path / "new.sqlite3")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} - {"sqlite_sequence"}
    assert tables == set(schema.OWNER)
    assert set(schema.OWNER.values()) == {"collector", "archive"}


def test_a_buffer_newer_than_the_program_is_refused(tmp_path):
    path = tmp_path / "future.sqlite3"
    buffer.connect(path).close()
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(StorageError, match="newer than this program"):
        buffer.connect(path)


def make_v4(path, quarantined: list[tuple[int, str]]) -> None:
    """A buffer as the program of schema version 4 left it, with quarantined frames (seq, reason)."""
    buffer_at(path, 4, *[("INSERT INTO quarantine (recv_us, session_id, seq, reason, raw) VALUES (5, 1, ?, ?, x'00')",
                          q) for q in quarantined])


#: Free-text reasons exactly as the decoders of version 4 wrote them, and the member each became.
V4_REASONS = [
    ("binary frame", "binary"),
    ("oversize frame (1500000 characters > 1048576)", "oversize"),
    ("not JSON: unexpected character: line 1 column 12 (char 11)", "not_json"),
    ("not a JSON object", "not_object"),
    ('error reply: {"code":2,"msg":"Invalid request"} (id None)', "error_reply"),
    ("not a combined-stream message (needs 'stream' and 'data')", "not_combined"),
    ("unknown stream 'zzzusdt@depth20@100ms'", "unknown_stream"),
    ("unexpected ServerShutdown", "unexpected"),
    ("event type 'trade' is not 'depthUpdate'", "wrong_event"),
    ("payload symbol 'ETHUSDT' is not the stream's 'BTCUSDT'", "wrong_symbol"),
    ("last update id ('lastUpdateId') missing or not a non-negative 64-bit integer", "bad_integer"),
    ("price ('p') missing or not a decimal string", "bad_decimal"),
    ("price ('p') is not a decimal number: 'abc'", "bad_decimal"),
    ("buyer is maker ('m') missing or not true/false", "bad_boolean"),
    ("quantity ('q') must be non-negative and finite", "out_of_range"),
    ("a price or quantity is negative, zero-priced or not finite", "out_of_range"),
    ("first update id 3 is after the last 2", "ids_reversed"),
    ("first trade id 3 is after the last 2", "ids_reversed"),
    ("bids and asks must be lists", "bad_levels"),
    ("levels must be [price, qty] pairs of decimal numbers", "bad_levels"),
    ("more than 20 levels on a side", "too_many_levels"),
    ("rest depth snapshot of btcusdt@depth@100ms: a price or quantity is negative, zero-priced or not finite",
     "out_of_range"),
    ("rest depth snapshot of btcusdt@depth@100ms: not JSON: unexpected character", "not_json"),
]


def test_a_version_4_buffer_gets_reason_values_and_keeps_its_texts_as_detail(tmp_path):
    from orderbook_core.errors import QuarantineReason

    path = tmp_path / "v4.sqlite3"
    make_v4(path, [(seq, text) for seq, (text, _) in enumerate(V4_REASONS)])
    conn = buffer.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
        got = conn.execute("SELECT detail, reason FROM quarantine ORDER BY seq").fetchall()
    finally:
        conn.close()
    assert got == V4_REASONS
    # every member a version-4 decoder could name has an old text (liquidations came later)
    assert {r for _, r in V4_REASONS} == {r.value for r in QuarantineReason} - {"bad_word", "bad_order"}


def test_a_version_4_buffer_gains_the_mark_price_and_liquidation_tables(tmp_path):
    path = tmp_path / "v4.sqlite3"
    make_v4(path, [])
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("INSERT INTO streams (name, symbol, kind, market) VALUES ('usdm:btcusdt@aggTrade', 'btcusdt', "
                "'aggTrade', 'usdm')")
    con.execute("INSERT INTO agg_trade (stream_id, recv_us, session_id, seq, event_ms, trade_ms, agg_trade_id, "
                "first_trade_id, last_trade_id, price, qty, is_buyer_maker) VALUES (1, 5, 1, 0, 4, 3, 9, 1, 2, 1.5, 2, 0)")
    con.close()
    conn = buffer.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
    assert conn.execute("SELECT agg_trade_id, price FROM agg_trade").fetchall() == [(9, 1.5)]
    conn.execute("INSERT INTO mark_price (stream_id, recv_us, session_id, seq, event_ms, mark_price, index_price, "
                 "estimated_settle_price, funding_rate, next_funding_ms) VALUES (2, 6, 1, 1, 7, 1.0, 1.0, 1.0, NULL, NULL)")
    with pytest.raises(sqlite3.IntegrityError):  # the dedup key: one row per stream and event time
        conn.execute("INSERT INTO mark_price (stream_id, recv_us, session_id, seq, event_ms, mark_price, index_price, "
                     "estimated_settle_price) VALUES (2, 8, 1, 2, 7, 2.0, 2.0, 2.0)")
    cols = [r[1] for r in conn.execute("PRAGMA table_info(liquidation)")]
    assert cols == ["id", "stream_id", "recv_us", "session_id", "seq", "event_ms", "side", "order_type",
                    "time_in_force", "quantity", "price", "average_price", "status", "last_filled_quantity",
                    "filled_quantity", "trade_ms"]
    conn.close()
