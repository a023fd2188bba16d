"""Every statement the collector's writer runs on the buffer (the one write connection's SQL).

The writer thread (``orderbook_collector.writer``) decides *what* goes into a batch and when it
commits; these functions say *how* each piece lands in its table, inside the caller's
transaction, and what the reads at start return. Keeping them here keeps every query on the
buffer's tables in the buffer package, next to the schema that defines them.
"""

from __future__ import annotations

import sqlite3
from typing import Iterable, NamedTuple

from orderbook_core.buffer.hours import HOUR_US
from orderbook_core.buffer.records import DepthRestSnapshotRecord, Event, OpenInterestRecord, Quarantined, Row, SessionClose, SessionOpen
from orderbook_core.buffer.rows import OTHER_TABLES, RowTable


class SessionCounts(NamedTuple):
    """What one batch adds to a session's row."""

    session_id: int
    messages: int
    duplicates: int
    quarantined: int
    max_seq: int
    first_recv_us: int | None
    last_recv_us: int | None


def open_sessions(conn: sqlite3.Connection, ops: Iterable[SessionOpen]) -> None:
    conn.executemany(
        "INSERT OR IGNORE INTO sessions (session_id, url, streams, opened_us, market) VALUES (?, ?, ?, ?, ?)", ops)


def insert_rows(conn: sqlite3.Connection, stream_ids: dict[str, int], t: RowTable,
                rows: list[Row]) -> tuple[int, list[Row]]:
    """Insert one dataset's rows (``INSERT OR IGNORE`` on its dedup key), record the refused
    ones in ``dropped`` and keep ``buffer_hours``; returns (rows stored, rows refused)."""
    before_id = last_id(conn, t.table)
    before = conn.total_changes
    conn.executemany(
        f"INSERT OR IGNORE INTO {t.table} (stream_id, {', '.join(t.columns)}) VALUES ({', '.join('?' * (len(t.columns) + 1))})",
        t.params(stream_ids, rows),
    )
    stored = conn.total_changes - before
    dropped: list[Row] = []
    if stored < len(rows):
        kept = set(conn.execute(f"SELECT session_id, seq FROM {t.table} WHERE id > ?", (before_id,)))
        dropped = [r for r in rows if (r.session_id, r.seq) not in kept]
        conn.executemany(
            "INSERT OR IGNORE INTO dropped (session_id, seq, stream_id, update_id, recv_us, reason, dataset) "
            "VALUES (?, ?, ?, ?, ?, 'duplicate', ?)",
            [(r.session_id, r.seq, stream_ids[r.stream], t.key(r), r.recv_us, t.table) for r in dropped],
        )
    note_hours(conn, t.table, before_id)
    return stored, dropped


def insert_quarantine(conn: sqlite3.Connection, quarantined: Iterable[Quarantined]) -> None:
    conn.executemany("INSERT INTO quarantine (recv_us, session_id, seq, reason, raw, detail) VALUES (?, ?, ?, ?, ?, ?)",
                     [(q.recv_us, q.session_id, q.seq, q.reason, q.raw, q.detail) for q in quarantined])


def insert_snapshots(conn: sqlite3.Connection, stream_ids: dict[str, int],
                     snapshots: list[DepthRestSnapshotRecord]) -> int:
    """Insert REST snapshots (dedup key: market, symbol, lastUpdateId); return how many were new."""
    t = OTHER_TABLES[DepthRestSnapshotRecord]
    sql = (f"INSERT OR IGNORE INTO {t.table} (stream_id, {', '.join(t.columns)}) "
           f"VALUES ({', '.join('?' * (len(t.columns) + 1))})")
    before_id = last_id(conn, t.table)
    before = conn.total_changes
    conn.executemany(sql, [(stream_ids[s.stream], *t.values(s)) for s in snapshots])
    stored = conn.total_changes - before
    if stored:
        note_hours(conn, t.table, before_id)
    return stored


def insert_open_interest(conn: sqlite3.Connection, stream_ids: dict[str, int], rows: list[OpenInterestRecord]) -> int:
    """Insert polled open interest (dedup key: market, symbol, time); return how many were new
    (a repeated answer, same transaction time, is the value already stored)."""
    t = OTHER_TABLES[OpenInterestRecord]
    before = conn.total_changes
    conn.executemany(f"INSERT OR IGNORE INTO {t.table} (stream_id, {', '.join(t.columns)}) "
                     f"VALUES ({', '.join('?' * (len(t.columns) + 1))})", [(stream_ids[r.stream], *t.values(r)) for r in rows])
    return conn.total_changes - before


def insert_others(conn: sqlite3.Connection, stream_ids: dict[str, int], rows: list) -> None:
    """Insert continuity rows (``depth_sync``, ``trade_gap``, ``silence``): no dedup key, no seq."""
    groups: dict[type, list] = {}
    for r in rows:
        groups.setdefault(type(r), []).append(r)
    for rtype, rs in groups.items():
        t = OTHER_TABLES[rtype]
        conn.executemany(
            f"INSERT INTO {t.table} (stream_id, {', '.join(t.columns)}) VALUES ({', '.join('?' * (len(t.columns) + 1))})",
            [(stream_ids[r.stream], *t.values(r)) for r in rs],
        )


def end_silence(conn: sqlite3.Connection, stream_id: int, since_us: int, end_us: int, ended_by: str) -> None:
    """Give a stream's open 'silent' row its end (the 'resumed' row is stored beside it)."""
    conn.execute("UPDATE silence SET end_us = ?, ended_by = ? WHERE stream_id = ? AND "
                 "event = 'silent' AND since_us = ? AND end_us IS NULL", (end_us, ended_by, stream_id, since_us))


def add_session_counts(conn: sqlite3.Connection, counts: Iterable[SessionCounts]) -> None:
    conn.executemany(
        "UPDATE sessions SET messages = messages + ?, duplicates = duplicates + ?, quarantined = quarantined + ?, "
        "frames = max(frames, ? + 1), first_recv_us = coalesce(first_recv_us, ?), "
        "last_recv_us = max(coalesce(last_recv_us, 0), ?) WHERE session_id = ?",
        [(c.messages, c.duplicates, c.quarantined, c.max_seq, c.first_recv_us, c.last_recv_us, c.session_id)
         for c in counts],
    )


def record_ops(conn: sqlite3.Connection, ops: Iterable[SessionOpen | SessionClose | Event]) -> None:
    """Events, and sessions closed (after the batch's rows: a close is the session's last word)."""
    for op in ops:
        if type(op) is Event:
            conn.execute("INSERT INTO events (time_us, session_id, stream, kind, detail) VALUES (?, ?, ?, ?, ?)", op)
        elif type(op) is SessionClose:
            conn.execute("UPDATE sessions SET closed_us = ?, close_reason = ? WHERE session_id = ?",
                         (op.closed_us, op.reason, op.session_id))


def save_spill_position(conn: sqlite3.Connection, position: tuple[str, int]) -> None:
    conn.execute("INSERT INTO spill_state (singleton, segment, offset) VALUES (1, ?, ?) "
                 "ON CONFLICT (singleton) DO UPDATE SET segment = excluded.segment, offset = excluded.offset",
                 position)


def last_id(conn: sqlite3.Connection, table: str) -> int:
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
    return row[0] if row else 0


def note_hours(conn: sqlite3.Connection, table: str, before_id: int) -> None:
    """Add the rows inserted after ``before_id`` to ``buffer_hours``."""
    conn.execute(
        "INSERT INTO buffer_hours (dataset, hour_us, min_id, max_id, rows) "
        f"SELECT ?, recv_us - recv_us % ?, min(id), max(id), count(*) FROM {table} WHERE id > ? "
        "GROUP BY 2 ORDER BY 2 "
        "ON CONFLICT (dataset, hour_us) DO UPDATE SET min_id = min(min_id, excluded.min_id), "
        "max_id = max(max_id, excluded.max_id), rows = rows + excluded.rows",
        (table, HOUR_US, before_id),
    )


# ---- what the writer reads at start ----------------------------------------------------------


def spill_position(conn: sqlite3.Connection) -> tuple[str, int] | None:
    """Where the spill's replay stands (committed with the rows it replayed), None if nowhere."""
    row = conn.execute("SELECT segment, offset FROM spill_state").fetchone()
    return tuple(row) if row else None  # type: ignore[return-value]


def known_streams(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    """(symbol, kind, market) of every stream the buffer has ever held."""
    return conn.execute("SELECT symbol, kind, market FROM streams").fetchall()


def open_session_markets(conn: sqlite3.Connection) -> dict[int, str]:
    """session_id → market of the sessions not closed (a restart finds their frames in the spill)."""
    return dict(conn.execute("SELECT session_id, market FROM sessions WHERE closed_us IS NULL"))


def last_diff_event(conn: sqlite3.Connection, stream_id: int) -> tuple[tuple[int, int, int] | None, bool]:
    """A diff stream's last stored event (last_update_id, event_ms, session_id), and whether its
    last recorded sync state is 'synced'."""
    row = conn.execute("SELECT last_update_id, event_ms, session_id FROM depth_update WHERE stream_id = ? "
                       "ORDER BY last_update_id DESC LIMIT 1", (stream_id,)).fetchone()
    state = conn.execute("SELECT event FROM depth_sync WHERE stream_id = ? ORDER BY id DESC LIMIT 1",
                         (stream_id,)).fetchone()
    return (tuple(row) if row else None), bool(state) and state[0] == "synced"  # type: ignore[return-value]


def last_trade(conn: sqlite3.Connection, dataset: str, id_column: str, stream_id: int) -> tuple[int | None, int | None]:
    """A trade (or aggTrade) stream's highest stored id and that row's event ms."""
    row = conn.execute(f"SELECT {id_column}, event_ms FROM {dataset} WHERE stream_id = ? "
                       f"ORDER BY {id_column} DESC LIMIT 1", (stream_id,)).fetchone()
    return tuple(row) if row else (None, None)  # type: ignore[return-value]
