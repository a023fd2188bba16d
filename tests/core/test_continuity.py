"""The diff rule has four users (the collector's sync tracker, the book builder, the archive's
``depth_continuity`` check and the fleet merge's own breaks, both SQL) and one definition (``orderbook_core.continuity``): on a table of
literal cases, spot and USD-M, all three agree with it.

The cases include those where the copies disagreed before the kernel: a spot event that
overlaps the previous one (``U <= u`` < ``u'``; the tracker called it a break, the builder
applied it, Binance's procedure applies it) and a USD-M event that continues a snapshot by
``pu == L`` alone (the builder synced on it, the tracker refused the snapshot).
"""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

from orderbook_assets.archive.datasets import DEPTH_UPDATE, DEPTH_UPDATE_SCHEMA
from orderbook_assets.archive.merge import merged_continuity
from orderbook_assets.archive.quality import depth_continuity
from orderbook_assets.books.builder import BookBuilder, DiffEvent, Outcome, Snapshot
from orderbook_collector.feed.sync import DiffDepthTracker, LastEvent, SnapshotRequest
from orderbook_core import continuity
from orderbook_core.buffer.records import DepthRestSnapshotRecord, DepthSyncRecord, DepthUpdateRecord
from orderbook_core.streams import Market

S1 = 7

#: (market, previous u, U, u, pu, continues?) for events newer than the previous one
CONTINUES = [
    ("spot", 100, 101, 105, None, True),     # U == u + 1: the usual case
    ("spot", 100, 98, 105, None, True),      # overlaps the previous event: Binance applies it
    ("spot", 100, 100, 100 + 1, None, True),  # overlap by one id
    ("spot", 100, 102, 105, None, False),    # 101 is missing
    ("spot", 100, 150, 160, None, False),
    ("usdm", 100, 130, 140, 100, True),      # pu == previous u (ids are not contiguous)
    ("usdm", 100, 101, 140, 100, True),
    ("usdm", 100, 101, 140, 99, False),      # U looks fine, pu says an event was missed
    ("usdm", 100, 90, 140, 95, False),       # straddles, but pu does not chain
    ("usdm", 100, 130, 140, None, False),    # no pu at all
]

#: (market, snapshot id L, events in id order as (U, u, pu), index of the first applied, or None)
BRIDGES = [
    ("spot", 100, [(95, 100, None), (101, 105, None)], 1),  # u == L is stale on spot
    ("spot", 100, [(99, 103, None)], 0),                    # straddles L + 1
    ("spot", 100, [(90, 96, None), (97, 101, None)], 1),     # U <= L + 1 <= u
    ("spot", 100, [(102, 105, None)], None),                # older than the first event: refused
    ("usdm", 100, [(90, 100, 89)], 0),                      # u == L bridges on USD-M (U <= L <= u)
    ("usdm", 100, [(80, 99, 79), (100, 110, 99)], 1),        # u < L is stale on USD-M
    ("usdm", 100, [(101, 110, 100)], 0),                    # pu == L: continues the snapshot exactly
    ("usdm", 100, [(105, 110, 103)], None),                 # starts past L and pu != L: refused
]


def _record(U, u, pu, sid=S1, stream="s"):
    return DepthUpdateRecord(stream, u * 10, sid, u, u * 100, None, U, u, pu, 0, b"", 0)


@pytest.mark.parametrize("market, prev_u, U, u, pu, expected", CONTINUES)
def test_the_predicate(market, prev_u, U, u, pu, expected):
    assert continuity.continues(market, prev_u, U, u, pu) is expected


@pytest.mark.parametrize("market, prev_u, U, u, pu, expected", CONTINUES)
def test_the_tracker_breaks_exactly_where_the_rule_does_not_continue(market, prev_u, U, u, pu, expected):
    t = DiffDepthTracker("s", Market(market), LastEvent(prev_u, prev_u * 100, S1), synced=True)
    out = t.on_event(_record(U, u, pu))
    breaks = [o for o in out if type(o) is DepthSyncRecord and o.event == "break"]
    assert (not breaks) is expected, out


@pytest.mark.parametrize("market, prev_u, U, u, pu, expected", CONTINUES)
def test_the_builder_breaks_exactly_where_the_rule_does_not_continue(market, prev_u, U, u, pu, expected):
    b = BookBuilder(Market(market))
    b.load_known(prev_u, [(1.0, 1.0)], [(2.0, 1.0)])
    outcome = b.event(DiffEvent(U, u, pu, [], [])).outcome
    assert outcome is (Outcome.APPLIED if expected else Outcome.BREAK)


@pytest.mark.parametrize("market, prev_u, U, u, pu, expected", CONTINUES)
def test_the_archive_check_flags_exactly_where_the_rule_does_not_continue(market, prev_u, U, u, pu, expected):
    con = duckdb.connect()
    con.execute("""CREATE TABLE books (market VARCHAR, stream VARCHAR, session_id BIGINT, seq BIGINT,
                   recv_time TIMESTAMPTZ, first_update_id BIGINT, last_update_id BIGINT, prev_update_id BIGINT)""")
    con.execute("""CREATE TABLE breaks (market VARCHAR, stream VARCHAR, after_last_update_id BIGINT)""")
    prev_pu = None if market == "spot" else prev_u - 5
    con.execute("INSERT INTO books VALUES (?, 's', 1, 0, now(), ?, ?, ?), (?, 's', 1, 1, now(), ?, ?, ?)",
                [market, prev_u - 5, prev_u, prev_pu, market, U, u, pu])
    result = depth_continuity(con)
    assert result.passed is expected and result.count == (0 if expected else 1)


@pytest.mark.parametrize("market, prev_u, U, u, pu, expected", CONTINUES)
def test_the_fleet_merge_records_a_break_exactly_where_the_rule_does_not_continue(market, prev_u, U, u, pu, expected):
    prev_pu = None if market == "spot" else prev_u - 5
    t0 = 1_765_000_000_000_000
    rows = [dict(market=market, symbol="BTCUSDT", stream="s", recv_time=t0 + i, session_id=1, seq=i, event_time=t0 + i,
                 transaction_time=None, first_update_id=a, last_update_id=b, prev_update_id=p, bids=[], asks=[])
            for i, (a, b, p) in enumerate([(prev_u - 5, prev_u, prev_pu), (U, u, pu)])]
    table = pa.Table.from_pylist(rows, schema=DEPTH_UPDATE_SCHEMA)
    breaks = [r for r in merged_continuity({DEPTH_UPDATE: table}) if r["record"] == "break"]
    assert (not breaks) is expected, breaks


@pytest.mark.parametrize("market, L, events, first_applied", BRIDGES)
def test_tracker_and_builder_sync_on_the_same_event(market, L, events, first_applied):
    t = DiffDepthTracker("s", Market(market))
    for U, u, pu in events:
        t.on_event(_record(U, u, pu))
    out = t.on_snapshot(DepthRestSnapshotRecord("s", market, "X", 1, L, 0, b"", "gap", None, None))
    synced = [o for o in out if type(o) is DepthSyncRecord and o.event == "synced"]

    b = BookBuilder(Market(market))
    b.snapshot(Snapshot(L, [(1.0, 1.0)], [(2.0, 1.0)]))
    outcomes = [b.event(DiffEvent(U, u, pu, [], [])).outcome for U, u, pu in events]

    if first_applied is None:
        assert not synced and SnapshotRequest("s", "connect") in out
        assert Outcome.SYNCED not in outcomes
        assert not any(continuity.bridges(market, L, U, u, pu) for U, u, pu in events
                       if not continuity.stale(market, L, u))
    else:
        U, u, pu = events[first_applied]
        assert [s.after_last_update_id for s in synced] == [u]
        assert outcomes.index(Outcome.SYNCED) == first_applied
        assert all(continuity.stale(market, L, e[1]) for e in events[:first_applied])
        assert continuity.bridges(market, L, U, u, pu)
