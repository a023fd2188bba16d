"""The buffer's schema: every table, its one owner, and numbered migrations.

Tables (all times are integer microseconds since the epoch, UTC):

``streams``         stream_id ↔ stream name, symbol, kind.
``depth_snapshot``  one row per stored partial-depth message. ``id`` is
                    AUTOINCREMENT so ids are never reused, even after cleanup
                    deletes the newest rows: the export ledger relies on that.
                    ``levels`` packs float64 (price, qty) pairs, bids then asks.
                    The unique index on (stream_id, update_id) is the dedup key.
``buffer_hours``    per dataset and UTC hour: smallest and largest id and row
                    count, kept by the writer, so an export can find an hour's
                    rows by id range without an index on recv_us.
``sessions``        one row per WebSocket connection: the coverage ledger.
``dropped``         one row per message not stored because it was a duplicate,
                    so every seq gap in the stored rows is explained.
``quarantine``      frames that failed parsing or validation, raw bytes, reason and detail (step 5).
``events``          stalls, rotations, serverShutdown notices, spill episodes and
                    write-failure episodes (disk full, locked); disconnects are in
                    ``sessions`` (close time and reason).
``silence``         subscriptions judged silent and their ends (step 4).
``mark_price``,     USD-M markPrice and forceOrder messages (step 7).
``liquidation``
``open_interest``   polled open-interest answers (step 8).
``spill_state``     how far the spill files have been replayed, committed with the rows.
``export_parts``    the archive's ledger: each part's id range, state and archive location.

Owners: the collector's writer thread is the only writer of its tables; the archive
(Dagster runs) is the only writer of ``export_parts`` and deletes archived rows. Both
sides read everything.

Migrations are numbered steps applied in order inside one ``BEGIN IMMEDIATE``, with
``PRAGMA user_version`` recording the last one; whichever side opens a buffer first
brings it up to date. Never edit a released step: add the next one.
"""

from __future__ import annotations

import sqlite3
from enum import Enum

from orderbook_core.buffer.transactions import transaction
from orderbook_core.errors import StorageError


class PartState(str, Enum):
    """An export part's state in the ledger (``export_parts.state``); it only moves forward, in this order."""

    PLANNED = "planned"
    UPLOADED = "uploaded"
    VERIFIED = "verified"
    ARCHIVED = "archived"


#: Which side writes each table.
OWNER = {
    "streams": "collector",
    "depth_snapshot": "collector",
    "buffer_hours": "collector",
    "sessions": "collector",
    "dropped": "collector",
    "quarantine": "collector",
    "events": "collector",
    "spill_state": "collector",
    "export_parts": "archive",
    "depth_update": "collector",
    "trade": "collector",
    "agg_trade": "collector",
    "book_ticker": "collector",
    "depth_rest_snapshot": "collector",
    "depth_sync": "collector",
    "trade_gap": "collector",
    "silence": "collector",
    "mark_price": "collector",
    "liquidation": "collector",
    "open_interest": "collector",
}

_COLLECTOR_TABLES = """
CREATE TABLE IF NOT EXISTS streams (
    stream_id   INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    symbol      TEXT NOT NULL,
    kind        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS depth_snapshot (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id   INTEGER NOT NULL,
    session_id  INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    recv_us     INTEGER NOT NULL,
    update_id   INTEGER NOT NULL,
    n_bids      INTEGER NOT NULL,
    levels      BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS depth_snapshot_dedup ON depth_snapshot (stream_id, update_id);
CREATE TABLE IF NOT EXISTS buffer_hours (
    dataset     TEXT NOT NULL,
    hour_us     INTEGER NOT NULL,
    min_id      INTEGER NOT NULL,
    max_id      INTEGER NOT NULL,
    rows        INTEGER NOT NULL,
    PRIMARY KEY (dataset, hour_us)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sessions (
    session_id    INTEGER PRIMARY KEY,
    url           TEXT NOT NULL,
    streams       TEXT NOT NULL,
    opened_us     INTEGER NOT NULL,
    closed_us     INTEGER,
    close_reason  TEXT,
    first_recv_us INTEGER,
    last_recv_us  INTEGER,
    frames        INTEGER NOT NULL DEFAULT 0,
    messages      INTEGER NOT NULL DEFAULT 0,
    duplicates    INTEGER NOT NULL DEFAULT 0,
    quarantined   INTEGER NOT NULL DEFAULT 0,
    lost          INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS dropped (
    session_id  INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    stream_id   INTEGER NOT NULL,
    update_id   INTEGER NOT NULL,
    recv_us     INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS quarantine (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    recv_us     INTEGER NOT NULL,
    session_id  INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    raw         BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS quarantine_recv ON quarantine (recv_us);
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    time_us     INTEGER NOT NULL,
    session_id  INTEGER,
    stream      TEXT,
    kind        TEXT NOT NULL,
    detail      TEXT
);
CREATE INDEX IF NOT EXISTS events_time ON events (time_us);
CREATE TABLE IF NOT EXISTS spill_state (
    singleton   INTEGER PRIMARY KEY CHECK (singleton = 1),
    segment     TEXT NOT NULL,
    offset      INTEGER NOT NULL
);
"""

_ARCHIVE_TABLES = """
CREATE TABLE IF NOT EXISTS export_parts (
    dataset       TEXT NOT NULL,
    hour_us       INTEGER NOT NULL,
    part          INTEGER NOT NULL,
    id_lo         INTEGER NOT NULL,
    id_hi         INTEGER NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('planned', 'uploaded', 'verified', 'archived')),
    rows          INTEGER,
    bytes         INTEGER,
    sha256        TEXT,
    object_key    TEXT,
    first_recv_us INTEGER,
    last_recv_us  INTEGER,
    planned_us    INTEGER NOT NULL,
    updated_us    INTEGER NOT NULL,
    PRIMARY KEY (dataset, hour_us, part)
) WITHOUT ROWID;
"""

#: Step 2: every stream kind on both markets. A stream's ``name`` in ``streams`` is its key
#: (``StreamSpec.key``: the stream name, prefixed ``usdm:`` on USD-M, so both markets can
#: hold the same stream name). Each dataset has its table, its AUTOINCREMENT ids (the
#: archive's parts are id ranges) and its dedup key as a unique index. ``dropped.key``
#: holds the dropped row's dedup key value, whatever the dataset.
_EVERY_KIND = """
ALTER TABLE streams ADD COLUMN market TEXT NOT NULL DEFAULT 'spot';
ALTER TABLE sessions ADD COLUMN market TEXT NOT NULL DEFAULT 'spot';
ALTER TABLE depth_snapshot ADD COLUMN event_ms INTEGER;
ALTER TABLE depth_snapshot ADD COLUMN transaction_ms INTEGER;
ALTER TABLE depth_snapshot ADD COLUMN first_update_id INTEGER;
ALTER TABLE depth_snapshot ADD COLUMN prev_update_id INTEGER;
ALTER TABLE dropped ADD COLUMN dataset TEXT NOT NULL DEFAULT 'depth_snapshot';
CREATE TABLE depth_update (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id       INTEGER NOT NULL,
    recv_us         INTEGER NOT NULL,
    session_id      INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    event_ms        INTEGER NOT NULL,
    transaction_ms  INTEGER,
    first_update_id INTEGER NOT NULL,
    last_update_id  INTEGER NOT NULL,
    prev_update_id  INTEGER,
    n_bids          INTEGER NOT NULL,
    levels          BLOB NOT NULL
);
CREATE UNIQUE INDEX depth_update_dedup ON depth_update (stream_id, last_update_id);
CREATE TABLE trade (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id       INTEGER NOT NULL,
    recv_us         INTEGER NOT NULL,
    session_id      INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    event_ms        INTEGER NOT NULL,
    trade_ms        INTEGER NOT NULL,
    trade_id        INTEGER NOT NULL,
    price           REAL NOT NULL,
    qty             REAL NOT NULL,
    is_buyer_maker  INTEGER NOT NULL
);
CREATE UNIQUE INDEX trade_dedup ON trade (stream_id, trade_id);
CREATE TABLE agg_trade (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id       INTEGER NOT NULL,
    recv_us         INTEGER NOT NULL,
    session_id      INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    event_ms        INTEGER NOT NULL,
    trade_ms        INTEGER NOT NULL,
    agg_trade_id    INTEGER NOT NULL,
    first_trade_id  INTEGER NOT NULL,
    last_trade_id   INTEGER NOT NULL,
    price           REAL NOT NULL,
    qty             REAL NOT NULL,
    is_buyer_maker  INTEGER NOT NULL
);
CREATE UNIQUE INDEX agg_trade_dedup ON agg_trade (stream_id, agg_trade_id);
CREATE TABLE book_ticker (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id       INTEGER NOT NULL,
    recv_us         INTEGER NOT NULL,
    session_id      INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    update_id       INTEGER NOT NULL,
    best_bid        REAL NOT NULL,
    best_bid_qty    REAL NOT NULL,
    best_ask        REAL NOT NULL,
    best_ask_qty    REAL NOT NULL,
    event_ms        INTEGER,
    transaction_ms  INTEGER
);
CREATE UNIQUE INDEX book_ticker_dedup ON book_ticker (stream_id, update_id);
CREATE TABLE depth_rest_snapshot (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id       INTEGER NOT NULL,
    market          TEXT NOT NULL,
    symbol          TEXT NOT NULL,
    recv_us         INTEGER NOT NULL,
    last_update_id  INTEGER NOT NULL,
    n_bids          INTEGER NOT NULL,
    levels          BLOB NOT NULL,
    reason          TEXT NOT NULL,
    event_ms        INTEGER,
    transaction_ms  INTEGER
);
CREATE UNIQUE INDEX depth_rest_snapshot_dedup ON depth_rest_snapshot (market, symbol, last_update_id);
"""

#: Step 3: continuity as data. ``depth_sync`` holds one row per change of a diff-depth
#: stream's sync state: ``event`` 'break' when the book can no longer be rebuilt (reason
#: 'connect' for the first event of a session that does not continue the stream's last
#: stored event, 'gap' for spot ``U != previous u + 1`` or USD-M ``pu != previous u``;
#: ``before_*`` is the last good event, null if none, ``after_*`` the first new one), and
#: 'synced' when it can again (reason 'snapshot': ``snapshot_update_id`` is the REST
#: snapshot's lastUpdateId, ``after_*`` the first event applied on top of it). ``trade_gap``
#: holds one row per jump of a trade or aggTrade id: ``first_missing_id`` ..
#: ``last_missing_id`` inclusive were never received. Both are written by the writer in
#: the same transaction as the rows that reveal them; ``recv_us`` is the revealing frame's.
_CONTINUITY = """
CREATE TABLE depth_sync (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id             INTEGER NOT NULL,
    session_id            INTEGER NOT NULL,
    recv_us               INTEGER NOT NULL,
    event                 TEXT NOT NULL CHECK (event IN ('break', 'synced')),
    reason                TEXT NOT NULL,
    before_update_id      INTEGER,
    before_event_ms       INTEGER,
    after_first_update_id INTEGER,
    after_last_update_id  INTEGER,
    after_prev_update_id  INTEGER,
    after_event_ms        INTEGER,
    snapshot_update_id    INTEGER
);
CREATE INDEX depth_sync_recv ON depth_sync (recv_us);
CREATE TABLE trade_gap (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id         INTEGER NOT NULL,
    session_id        INTEGER NOT NULL,
    recv_us           INTEGER NOT NULL,
    dataset           TEXT NOT NULL CHECK (dataset IN ('trade', 'agg_trade')),
    first_missing_id  INTEGER NOT NULL,
    last_missing_id   INTEGER NOT NULL,
    before_event_ms   INTEGER,
    after_event_ms    INTEGER
);
CREATE INDEX trade_gap_recv ON trade_gap (recv_us);
"""

#: Step 4: silence as data. ``silence`` holds one row each time a subscription was judged
#: silent (``event`` 'silent': acknowledged, yet nothing where the stream had to speak;
#: ``since_us`` its last message or its acknowledgement, ``reason`` why, see
#: ``orderbook_collector/feed/silence.py``) and each time it ended ('resumed': the same
#: ``since_us``, ``end_us`` the first message after it or when no connection carried the
#: stream any more, ``ended_by`` which). The writer also sets ``end_us`` and ``ended_by`` on
#: the open 'silent' row, so the buffer alone says which silences are open; the 'resumed' row
#: is what carries the end into a later archive part. ``recv_us`` is when the collector decided.
_SILENCE = """
CREATE TABLE silence (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id   INTEGER NOT NULL,
    recv_us     INTEGER NOT NULL,
    event       TEXT NOT NULL CHECK (event IN ('silent', 'resumed')),
    since_us    INTEGER NOT NULL,
    end_us      INTEGER,
    reason      TEXT NOT NULL,
    ended_by    TEXT
);
CREATE INDEX silence_recv ON silence (recv_us);
CREATE INDEX silence_open ON silence (stream_id) WHERE end_us IS NULL;
"""

#: Step 5: quarantine reasons are a closed set (``orderbook_core.errors.QuarantineReason``):
#: ``reason`` holds a member's value, ``detail`` what exactly was wrong. Rows stored before
#: keep their free text as ``detail`` and get the member their text named (the texts were
#: fixed sentences of the decoders; a REST refusal's began 'rest depth snapshot of KEY: ').
_QUARANTINE_REASONS = """
ALTER TABLE quarantine ADD COLUMN detail TEXT NOT NULL DEFAULT '';
UPDATE quarantine SET detail = reason, reason = CASE
    WHEN reason LIKE 'error reply%' THEN 'error_reply'
    WHEN reason LIKE 'unexpected %' THEN 'unexpected'
    WHEN reason LIKE 'unknown stream%' THEN 'unknown_stream'
    WHEN reason LIKE 'oversize frame%' THEN 'oversize'
    WHEN reason LIKE 'binary frame%' THEN 'binary'
    WHEN reason LIKE '%not JSON:%' THEN 'not_json'
    WHEN reason LIKE '%not a JSON object%' THEN 'not_object'
    WHEN reason LIKE '%not a combined-stream message%' THEN 'not_combined'
    WHEN reason LIKE '%event type % is not %' THEN 'wrong_event'
    WHEN reason LIKE '%payload symbol % is not the stream%' THEN 'wrong_symbol'
    WHEN reason LIKE '%missing or not a non-negative 64-bit integer%' THEN 'bad_integer'
    WHEN reason LIKE '%missing or not a decimal string%' OR reason LIKE '%is not a decimal number%' THEN 'bad_decimal'
    WHEN reason LIKE '%missing or not true/false%' THEN 'bad_boolean'
    WHEN reason LIKE '%and finite%' OR reason LIKE '%zero-priced or not finite%' THEN 'out_of_range'
    WHEN reason LIKE '%is after the last%' THEN 'ids_reversed'
    WHEN reason LIKE '%must be lists%' OR reason LIKE '%pairs of decimal numbers%' THEN 'bad_levels'
    WHEN reason LIKE '%levels on a side%' THEN 'too_many_levels'
    ELSE 'unexpected' END;
"""

#: Step 6: where each part went. ``export_parts.location`` is the normalised archive URL
#: (``Location.url``: ``s3://bucket/prefix`` or an absolute folder) the part's object was
#: uploaded to, set with ``uploaded``; NULL for parts still planned and for parts recorded
#: before this step (location unknown: they are not checked against the archive in use).
_PART_LOCATION = """
ALTER TABLE export_parts ADD COLUMN location TEXT;
"""

#: Step 7: the USD-M derivatives streams. ``mark_price`` holds one row per markPriceUpdate
#: (``funding_rate`` and ``next_funding_ms`` null for a delivery contract, which sends none);
#: ``liquidation`` one row per forceOrder snapshot, the order's fields flattened. Both are on
#: the clock of their event time ``event_ms`` (a mark price every 3 s or 1 s, at most one
#: liquidation a second), which never repeats in a stream: it is their dedup key.
_DERIVATIVES = """
CREATE TABLE mark_price (
    id                      INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id               INTEGER NOT NULL,
    recv_us                 INTEGER NOT NULL,
    session_id              INTEGER NOT NULL,
    seq                     INTEGER NOT NULL,
    event_ms                INTEGER NOT NULL,
    mark_price              REAL NOT NULL,
    index_price             REAL NOT NULL,
    estimated_settle_price  REAL NOT NULL,
    funding_rate            REAL,
    next_funding_ms         INTEGER
);
CREATE UNIQUE INDEX mark_price_dedup ON mark_price (stream_id, event_ms);
CREATE TABLE liquidation (
    id                      INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id               INTEGER NOT NULL,
    recv_us                 INTEGER NOT NULL,
    session_id              INTEGER NOT NULL,
    seq                     INTEGER NOT NULL,
    event_ms                INTEGER NOT NULL,
    side                    TEXT NOT NULL,
    order_type              TEXT NOT NULL,
    time_in_force           TEXT NOT NULL,
    quantity                REAL NOT NULL,
    price                   REAL NOT NULL,
    average_price           REAL NOT NULL,
    status                  TEXT NOT NULL,
    last_filled_quantity    REAL NOT NULL,
    filled_quantity         REAL NOT NULL,
    trade_ms                INTEGER NOT NULL
);
CREATE UNIQUE INDEX liquidation_dedup ON liquidation (stream_id, event_ms);
"""

#: Step 8: open interest, polled over REST (no session, no seq). ``stream_id`` names the
#: series' pseudo-stream (``usdm:btcusdt@openInterest``); ``time_ms`` is Binance's ``time``; the
#: unique index is the dataset's dedup key. A failed poll is a ``silence`` row of the series.
_OPEN_INTEREST = """
CREATE TABLE open_interest (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id       INTEGER NOT NULL,
    market          TEXT NOT NULL,
    symbol          TEXT NOT NULL,
    recv_us         INTEGER NOT NULL,
    time_ms         INTEGER NOT NULL,
    open_interest   REAL NOT NULL
);
CREATE UNIQUE INDEX open_interest_dedup ON open_interest (market, symbol, time_ms);
CREATE INDEX open_interest_recv ON open_interest (recv_us);
"""

#: (version, statements): step N takes a buffer from user_version N-1 to N.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, _COLLECTOR_TABLES + _ARCHIVE_TABLES),
    (2, _EVERY_KIND),
    (3, _CONTINUITY),
    (4, _SILENCE),
    (5, _QUARANTINE_REASONS),
    (6, _PART_LOCATION),
    (7, _DERIVATIVES),
    (8, _OPEN_INTEREST),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]
#: Every statement of every step, in order: what a new buffer runs (benchmarks build one with it).
SCHEMA = ";\n".join(sql for _, sql in MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> None:
    """Apply the steps a buffer has not had yet; refuse a buffer newer than this program."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StorageError(
            f"buffer schema version {version} is newer than this program ({SCHEMA_VERSION}); upgrade orderbook"
        )
    if version == SCHEMA_VERSION:
        return
    with transaction(conn):
        for step, sql in MIGRATIONS:
            if step > version:
                for stmt in sql.split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
