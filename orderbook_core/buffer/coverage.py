"""What the buffer records besides the messages: sessions, refused frames and continuity.

The archive's coverage objects and its checks read these (``orderbook_assets.archive``):
the sessions of an hour, the seqs that explain a gap (duplicates dropped, frames
quarantined), and the continuity the collector wrote as data (``depth_sync``, ``trade_gap``,
``silence``, and the REST snapshots that re-based a diff stream). Rows of a part are read
with :data:`.reads.PART_ROWS`, like every part.
"""

from __future__ import annotations

import sqlite3

from orderbook_core.buffer.hours import HOUR_US
from orderbook_core.buffer.reads import PART_ROWS, IdRange


def sessions_overlapping(conn: sqlite3.Connection, hour_us: int) -> list[tuple]:
    """Sessions overlapping the hour, by id: (session_id, opened_us, closed_us, close_reason,
    duplicates, quarantined, lost); ``closed_us`` null while open."""
    return conn.execute(
        "SELECT session_id, opened_us, closed_us, close_reason, duplicates, quarantined, lost FROM sessions "
        "WHERE opened_us < ? AND (closed_us IS NULL OR closed_us >= ?) ORDER BY session_id",
        (hour_us + HOUR_US, hour_us),
    ).fetchall()


def dropped_seqs(conn: sqlite3.Connection, sessions: list[int]) -> list[tuple[int, int]]:
    """(session_id, seq) of every frame dropped as a duplicate in these sessions."""
    if not sessions:
        return []
    marks = ",".join("?" * len(sessions))
    return conn.execute(f"SELECT session_id, seq FROM dropped WHERE session_id IN ({marks})", sessions).fetchall()


def quarantined_seqs(conn: sqlite3.Connection, from_us: int, to_us: int) -> list[tuple[int, int]]:
    """(session_id, seq) of every frame quarantined with ``from_us <= recv_us < to_us``."""
    return conn.execute(
        "SELECT session_id, seq FROM quarantine WHERE recv_us >= ? AND recv_us < ?", (from_us, to_us),
    ).fetchall()


def sync_rows(conn: sqlite3.Connection, rng: IdRange) -> list[tuple]:
    """The ``depth_sync`` rows of a part, in id order: (stream_id, session_id, recv_us, event, reason,
    before_update_id, before_event_ms, after_first_update_id, after_last_update_id,
    after_prev_update_id, after_event_ms, snapshot_update_id)."""
    return conn.execute(
        "SELECT stream_id, session_id, recv_us, event, reason, before_update_id, before_event_ms, "
        "after_first_update_id, after_last_update_id, after_prev_update_id, after_event_ms, snapshot_update_id "
        f"FROM depth_sync WHERE {PART_ROWS} ORDER BY id", rng.params(),
    ).fetchall()


def trade_gap_rows(conn: sqlite3.Connection, rng: IdRange) -> list[tuple]:
    """The ``trade_gap`` rows of a part, in id order: (stream_id, session_id, recv_us, dataset,
    first_missing_id, last_missing_id, before_event_ms, after_event_ms)."""
    return conn.execute(
        "SELECT stream_id, session_id, recv_us, dataset, first_missing_id, last_missing_id, before_event_ms, "
        f"after_event_ms FROM trade_gap WHERE {PART_ROWS} ORDER BY id", rng.params(),
    ).fetchall()


def silence_rows(conn: sqlite3.Connection, rng: IdRange) -> list[tuple]:
    """The ``silence`` rows of a part, in id order: (stream_id, recv_us, event, since_us, end_us,
    reason, ended_by)."""
    return conn.execute(
        "SELECT stream_id, recv_us, event, since_us, end_us, reason, ended_by "
        f"FROM silence WHERE {PART_ROWS} ORDER BY id", rng.params(),
    ).fetchall()


def resync_rows(conn: sqlite3.Connection, rng: IdRange) -> list[tuple]:
    """The REST snapshots (``depth_rest_snapshot``) of a part, in id order: (stream_id, recv_us,
    last_update_id, reason, event_ms)."""
    return conn.execute(
        "SELECT stream_id, recv_us, last_update_id, reason, event_ms FROM depth_rest_snapshot "
        f"WHERE {PART_ROWS} ORDER BY id", rng.params(),
    ).fetchall()


def sampled_rows(conn: sqlite3.Connection, dataset: str, rng: IdRange) -> list[tuple]:
    """Per stream, what a part of a sampled dataset (``liquidation``) holds: (stream_id,
    first recv_us, last recv_us, rows), in stream order."""
    return conn.execute(
        f"SELECT stream_id, min(recv_us), max(recv_us), count(*) FROM {dataset} "
        f"WHERE {PART_ROWS} GROUP BY stream_id ORDER BY stream_id", rng.params(),
    ).fetchall()


def sync_breaks(conn: sqlite3.Connection, hour_us: int) -> list[tuple[int, int, int | None]]:
    """The hour's recorded diff-depth breaks (``depth_sync`` event 'break', by receive time):
    (stream_id, session_id, after_last_update_id)."""
    return conn.execute(
        "SELECT stream_id, session_id, after_last_update_id FROM depth_sync "
        "WHERE event = 'break' AND recv_us >= ? AND recv_us < ?", (hour_us, hour_us + HOUR_US),
    ).fetchall()


def trade_gaps(conn: sqlite3.Connection, hour_us: int) -> list[tuple[int, str, int, int]]:
    """The hour's recorded trade-id gaps (``trade_gap``, by receive time): (stream_id, dataset,
    first_missing_id, last_missing_id)."""
    return conn.execute(
        "SELECT stream_id, dataset, first_missing_id, last_missing_id FROM trade_gap WHERE recv_us >= ? AND recv_us < ?",
        (hour_us, hour_us + HOUR_US),
    ).fetchall()
