"""Step 5 (open interest): a buffer at version 4 is brought up to date in place, its rows kept,
and the new table holds polled answers under its dedup key."""

from __future__ import annotations


from orderbook_core import buffer
from orderbook_core.buffer import schema
from support.old_buffers import buffer_at


def make_v4(path) -> None:
    buffer_at(path, 4,
              "INSERT INTO streams (name, symbol, kind, market) VALUES ('usdm:btcusdt@trade', 'btcusdt', 'trade', 'usdm')",
              "INSERT INTO trade (stream_id, session_id, seq, recv_us, event_ms, trade_ms, trade_id, price, qty, "
              "is_buyer_maker) VALUES (1, 1, 0, 5, 4, 3, 77, 100.5, 0.25, 1)")


def test_a_version_4_buffer_gains_the_open_interest_table_and_keeps_its_rows(tmp_path):
    path = tmp_path / "v4.sqlite3"
    make_v4(path)
    conn = buffer.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION >= 5
    assert conn.execute("SELECT trade_id, price FROM trade").fetchall() == [(77, 100.5)]
    ids = buffer.stream_ids(conn, [("usdm:btcusdt@openInterest", "btcusdt", "openInterest", "usdm")])
    sid = ids["usdm:btcusdt@openInterest"]
    insert = ("INSERT OR IGNORE INTO open_interest (stream_id, market, symbol, recv_us, time_ms, open_interest) "
              "VALUES (?, 'usdm', 'BTCUSDT', ?, ?, ?)")
    with buffer.transaction(conn):
        conn.execute(insert, (sid, 10, 1589437530011, 10659.509))
        conn.execute(insert, (sid, 20, 1589437530011, 10659.509))  # the same answer polled twice: one row
        conn.execute(insert, (sid, 30, 1589437531011, 10660.0))
    assert conn.execute("SELECT recv_us, time_ms, open_interest FROM open_interest ORDER BY id").fetchall() == [
        (10, 1589437530011, 10659.509), (30, 1589437531011, 10660.0)]
    assert schema.OWNER["open_interest"] == "collector"
    conn.close()
