"""The fleet merge on literal tables: every message once, the earliest copy with its collector,
gaps only where every collector was silent, the same bytes whatever the input order."""

from __future__ import annotations

import pyarrow as pa
import pytest

from orderbook_assets.archive import merge
from orderbook_assets.archive.datasets import DEPTH, DEPTH_SCHEMA
from orderbook_assets.archive.store import LocalStore
from orderbook_collector.errors import ConfigError

HOUR = 1_795_428_000_000_000  # 2026-11-23 10:00 UTC
S = 1_000_000
STREAM = "btcusdt@depth20@100ms"
LEVELS = [{"price": 1.0, "qty": 2.0}]


def rows(session: int, items: list[tuple[int, int]], stream: str = STREAM) -> pa.Table:
    """items: (recv offset in µs from the hour, last_update_id); seq 0, 1, 2, ... within the session."""
    return pa.table({
        "symbol": [stream.split("@")[0].upper()] * len(items), "stream": [stream] * len(items),
        "recv_time": pa.array([HOUR + t for t, _ in items], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "session_id": [session] * len(items), "seq": list(range(len(items))),
        "last_update_id": [u for _, u in items], "bids": [LEVELS] * len(items), "asks": [LEVELS] * len(items),
    }).cast(DEPTH_SCHEMA)


def test_every_key_once_earliest_copy_kept_with_its_collector():
    a = merge.HostTable("a", rows(1, [(100, 10), (200, 11), (300, 12)]))
    b = merge.HostTable("b", rows(7, [(150, 10), (180, 11), (300, 12), (400, 13)]))
    out = merge.merge_rows(DEPTH, [a, b])
    got = [(r["last_update_id"], r["collector"], r["session_id"], r["seq"]) for r in out.to_pylist()]
    # 10: a first (100 < 150); 11: b first (180 < 200); 12: the same µs, the collector id breaks the tie; 13: b only
    assert got == [(10, "a", 1, 0), (11, "b", 7, 1), (12, "a", 1, 2), (13, "b", 7, 3)]
    assert out.schema.names == [*DEPTH_SCHEMA.names, "collector"]


def test_sharded_collectors_are_unioned_and_keys_are_per_stream():
    eth = "ethusdt@depth20@100ms"
    a = merge.HostTable("a", rows(1, [(100, 10)]))
    b = merge.HostTable("b", rows(2, [(100, 10)], stream=eth))  # same update id, another stream
    out = merge.merge_rows(DEPTH, [a, b])
    assert sorted((r["symbol"], r["collector"]) for r in out.to_pylist()) == [("BTCUSDT", "a"), ("ETHUSDT", "b")]


def test_gap_only_where_every_collector_was_silent():
    every_100ms = lambda lo, hi: [(t, t) for t in range(lo, hi, 100_000)]  # noqa: E731
    # a is down from 10 s to 30 s, b from 20 s to 40 s: both are silent from 20 s to 30 s only
    a = merge.HostTable("a", rows(1, every_100ms(0, 10 * S) + every_100ms(30 * S, 60 * S)))
    b = merge.HostTable("b", rows(2, every_100ms(0, 20 * S) + every_100ms(40 * S, 60 * S)))
    gaps = merge.merged_gaps([a, b], HOUR, HOUR + 60 * S)
    assert [(g.stream, g.start_us - HOUR, g.end_us - HOUR) for g in gaps] == [(STREAM, 20 * S - 100_000, 30 * S)]
    assert merge.merged_gaps([a], HOUR, HOUR + 60 * S)[0].start_us == HOUR + 10 * S - 100_000


def test_merged_objects_are_deterministic_and_verified(tmp_path):
    store = LocalStore(tmp_path / "archive")
    refs = []
    for host, table in (("a", rows(1, [(100, 10), (200, 11)])), ("b", rows(5, [(150, 10), (250, 12)]))):
        path, key = tmp_path / f"{host}.parquet", f"{merge.host_prefix(host)}/{DEPTH}/part.parquet"
        _, sha = merge.write_table(table, path, {})
        store.put_if_absent(key, path, sha)
        refs.append(merge.PartRef(host, key, sha))
    first = merge.merge_hour(store, tmp_path / "staging", HOUR, refs)
    again = merge.merge_hour(store, tmp_path / "staging", HOUR, list(reversed(refs)))
    assert first.objects == again.objects and first.rows == 3
    assert first.kept == {"a": 2, "b": 1} and first.input_rows == {"a": 2, "b": 2}
    key = merge.object_key(DEPTH, HOUR)
    assert key == "depth_snapshot/date=2026-11-23/hour=10/fleet.parquet"
    assert store.head(key)[1] == first.objects[key]
    # a part whose bytes differ from what its collector verified is refused
    bad = merge.PartRef("a", refs[0].object_key, "0" * 64)
    with pytest.raises(Exception, match="does not hash"):
        merge.merge_hour(store, tmp_path / "staging", HOUR, [bad, refs[1]])


@pytest.mark.parametrize("value", ["Tokyo", "a-b", "", "x" * 33, "a/b"])
def test_a_bad_host_id_is_one_sentence_naming_the_setting(value):
    with pytest.raises(ConfigError, match="ORDERBOOK_HOST_ID"):
        merge.check_host_id(value)
