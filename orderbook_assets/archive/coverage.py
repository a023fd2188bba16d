"""The ``coverage`` dataset: sessions, gaps and continuity per archived round, without Dagster.

One Parquet object per round of an hour (the parts planned together, see ``ledger``):
``coverage/date=YYYY-MM-DD/hour=HH/part-NNNN-0-0.parquet`` (older ones carry their depth
twin's id range). Kinds of rows (column ``record``): ``session`` (one per connection session
overlapping the hour), ``gap`` (an interval of more than 5 cadences without a message of a
depth stream, found in the rows archived by the same run), and the continuity the collector
recorded as data in the round's rows: ``break`` and ``synced`` (a diff-depth stream lost and
regained continuity, from ``depth_sync``), ``resync`` (a REST snapshot fetched for a diff
stream, from ``depth_rest_snapshot``) and ``trade_gap`` (trade or aggTrade ids never
received, from ``trade_gap``), and ``silent`` (a subscription acknowledged that delivered nothing
where it had to, from ``silence``: one row per silence and round, its end null while open), and
``sampled`` (a stream whose kind Binance samples by design, ``streams.SAMPLED``: one row per
stream and round with rows, saying its rows are a sample and never every event).
Schema and usage: docs/datasets.md.

Session counters (duplicates, quarantined, lost, close) are a snapshot taken when the
part is exported, so unlike depth parts a coverage object is not a pure function of its
rows: the first one stored for a part wins, and a re-run that finds it keeps it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from orderbook_core.buffer import HOUR_US, reads
from orderbook_core.buffer import coverage as buffer_coverage


from orderbook_assets.archive import export
from orderbook_assets.archive.export import WRITER_OPTIONS
from orderbook_assets.archive.datasets import (COVERAGE_SCHEMA, DEPTH_REST, DEPTH_SYNC,  # noqa: F401
                                               DEPTH_UPDATE, OPEN_INTEREST, SILENCE, TRADE_GAP, TS)
from orderbook_core.buffer.ledger import Part
from orderbook_core.streams import OPEN_INTEREST_KIND, SAMPLED, Market, parse_stream_name
from orderbook_assets.archive.quality import Gap



def session_rows(conn: sqlite3.Connection, hour_us: int) -> list[tuple]:
    """Sessions overlapping the hour: (session_id, opened, closed, reason, duplicates, quarantined, lost)."""
    return buffer_coverage.sessions_overlapping(conn, hour_us)


def per_session_stats(con: duckdb.DuckDBPyConnection, view: str = "books") -> dict[int, tuple]:
    """session_id → (first_us, last_us, messages, min_seq, max_seq) over the step's rows in ``view``."""
    rows = con.execute(
        "SELECT session_id, epoch_us(min(recv_time)), epoch_us(max(recv_time)), count(*), min(seq), max(seq) "
        f"FROM {view} WHERE session_id IS NOT NULL GROUP BY session_id"
    ).fetchall()
    return {r[0]: r[1:] for r in rows}


def _ms(value: int | None) -> int | None:
    return None if value is None else value * 1000


#: The datasets of the kinds Binance samples (a forceOrder stream sends only the latest
#: liquidation of its symbol in each second), and what their ``sampled`` rows say about them.
SAMPLED_DATASETS = frozenset(k.dataset for k in SAMPLED)
SAMPLED_REASON = "latest_per_second"


def continuity_rows(conn: sqlite3.Connection, parts: list[Part], streams: dict) -> list[dict]:
    """The ``break``, ``synced``, ``resync``, ``trade_gap``, ``silent`` and ``sampled`` rows of a round's parts, read from
    the buffer (the parts are not archived yet, so their rows are there), in id order per table.

    ``streams``: ``export.stream_table`` (stream names as subscribed, and markets).
    """
    out: list[dict] = []
    for part in parts:
        rng = part.rows_range
        if part.dataset == DEPTH_SYNC:
            for (sid, session, recv, event, reason, before_u, before_ms, after_first, after_last, _after_prev,
                 after_ms, snapshot) in buffer_coverage.sync_rows(conn, rng):
                s = streams[sid]
                if event == "break":
                    out.append(dict(record="break", market=s.market, stream=s.name, session_id=session,
                                    start_time=_ms(before_ms), end_time=_ms(after_ms), first_recv_time=recv,
                                    reason=reason, first_id=before_u, last_id=after_first, dataset=DEPTH_UPDATE))
                else:
                    out.append(dict(record="synced", market=s.market, stream=s.name, session_id=session,
                                    start_time=_ms(after_ms), end_time=_ms(after_ms), first_recv_time=recv,
                                    reason=reason, first_id=after_first, last_id=after_last, snapshot_id=snapshot,
                                    dataset=DEPTH_UPDATE))
        elif part.dataset == TRADE_GAP:
            for sid, session, recv, dataset, first, last, before_ms, after_ms in buffer_coverage.trade_gap_rows(conn, rng):
                s = streams[sid]
                out.append(dict(record="trade_gap", market=s.market, stream=s.name, session_id=session,
                                start_time=_ms(before_ms), end_time=_ms(after_ms), first_recv_time=recv,
                                first_id=first, last_id=last, messages=last - first + 1, dataset=dataset))
        elif part.dataset == SILENCE:
            out += _silent_rows(conn, rng, streams)
        elif part.dataset in SAMPLED_DATASETS:
            for sid, first, last, n in buffer_coverage.sampled_rows(conn, part.dataset, rng):
                s = streams[sid]
                out.append(dict(record="sampled", market=s.market, stream=s.name, first_recv_time=first,
                                last_recv_time=last, messages=n, reason=SAMPLED_REASON, dataset=part.dataset))
        elif part.dataset == DEPTH_REST:
            for sid, recv, uid, reason, event_ms in buffer_coverage.resync_rows(conn, rng):
                s = streams[sid]
                out.append(dict(record="resync", market=s.market, stream=s.name, start_time=_ms(event_ms),
                                first_recv_time=recv, reason=reason, snapshot_id=uid, dataset=DEPTH_REST))
    return out


def _silent_rows(conn: sqlite3.Connection, rng: reads.IdRange, streams: dict) -> list[dict]:
    """One ``silent`` row per silence in the part: its 'silent' row (whose end the collector set
    if it ended before this export) and its 'resumed' row merged, so a silence that began and
    ended in one round is one row; one that spans rounds is a row in each (open, then closed)."""
    found: dict[tuple[int, int], dict] = {}
    for sid, recv, event, since, end, reason, ended_by in buffer_coverage.silence_rows(conn, rng):
        row = found.get((sid, since))
        if row is None:
            s = streams[sid]
            spec = parse_stream_name(s.name, Market(s.market))
            # a polled open-interest series (``btcusdt@openInterest``) is no Binance stream
            polled = s.name.endswith(f"@{OPEN_INTEREST_KIND}")
            row = found[(sid, since)] = dict(record="silent", market=s.market, stream=s.name, start_time=since,
                                             first_recv_time=recv, reason=reason,
                                             dataset=spec.dataset if spec else OPEN_INTEREST if polled else None)
        if event == "silent":
            row["first_recv_time"] = recv  # when the collector judged it
        if end is not None:
            row.update(end_time=end, seconds=(end - since) / 1e6, close_reason=ended_by)
    return list(found.values())


def build_table(
    part: Part,
    sessions: list[tuple],
    stats: dict[int, tuple],
    gaps: list[Gap],
    continuity: list[dict] = (),
) -> pa.Table:
    """The coverage rows of a part, in a fixed order (sessions by id, gaps by stream and start,
    then the round's continuity records as :func:`continuity_rows` lists them)."""
    cols: dict[str, list] = {f.name: [] for f in COVERAGE_SCHEMA}

    def add(**values: object) -> None:
        for name in cols:
            cols[name].append(values.get(name))

    common = dict(hour_start=part.hour_us, part=part.part, as_of=part.planned_us)
    for sid, opened, closed, reason, dups, quar, lost in sessions:
        first, last, messages, min_seq, max_seq = stats.get(sid, (None, None, 0, None, None))
        start = max(opened, part.hour_us)
        end = min(closed if closed is not None else part.planned_us, part.hour_us + HOUR_US)
        add(record="session", session_id=sid, start_time=opened, end_time=closed,
            seconds=max(0, end - start) / 1e6, first_recv_time=first, last_recv_time=last,
            messages=messages, min_seq=min_seq, max_seq=max_seq, duplicates=dups, quarantined=quar,
            lost=lost, close_reason=reason, **common)
    for stream, lo, hi, market in sorted(gaps):
        add(record="gap", market=market, stream=stream, start_time=lo, end_time=hi, seconds=(hi - lo) / 1e6, **common)
    for row in continuity:
        add(**row, **common)
    return pa.Table.from_pydict(cols, schema=COVERAGE_SCHEMA)


def gaps_of(table: pa.Table) -> list[Gap]:
    """The gaps a coverage object records, back as typed data."""
    g = table.filter(pc.equal(table["record"], "gap"))
    markets = g["market"].to_pylist() if "market" in g.column_names else [None] * g.num_rows
    return [
        Gap(stream, lo, hi, market or "spot")
        for stream, lo, hi, market in zip(
            g["stream"].to_pylist(),
            g["start_time"].cast(pa.int64()).to_pylist(),
            g["end_time"].cast(pa.int64()).to_pylist(),
            markets,
        )
    ]


def write_table(table: pa.Table, path: Path) -> tuple[int, str]:
    """Write coverage Parquet atomically (temp, fsync, rename); return (size, sha256)."""
    options = dict(WRITER_OPTIONS, use_dictionary=["record", "stream", "close_reason", "market", "dataset", "reason"])
    return export.write_table(table, path, options)
