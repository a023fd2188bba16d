"""The fleet merge on literal tables, for every dataset kind: every message once by the dataset's
dedup key, the earliest copy with its collector, gaps only where every collector was silent,
each collector's continuity kept and the merged streams' own, the same bytes whatever the input order."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orderbook_assets.archive import export, merge
from orderbook_assets.archive.datasets import (AGG_TRADE, BOOK_TICKER, COVERAGE, COVERAGE_SCHEMA, DATASETS, DEPTH,
                                               DEPTH_REST, DEPTH_SCHEMA, DEPTH_SCHEMA_V1, DEPTH_UPDATE, LIQUIDATION,
                                               MARK_PRICE, OPEN_INTEREST, TRADE)
from orderbook_assets.archive.store import LocalStore
from orderbook_core.errors import ConfigError

HOUR = 1_795_428_000_000_000  # 2026-11-23 10:00 UTC
S = 1_000_000
LEVELS = [{"price": 1.0, "qty": 2.0}]
STREAMS = {DEPTH: "btcusdt@depth20@100ms", DEPTH_UPDATE: "btcusdt@depth@100ms", DEPTH_REST: "btcusdt@depth@100ms",
           TRADE: "btcusdt@trade", AGG_TRADE: "btcusdt@aggTrade", BOOK_TICKER: "btcusdt@bookTicker",
           MARK_PRICE: "btcusdt@markPrice@1s", LIQUIDATION: "btcusdt@forceOrder",
           OPEN_INTEREST: "btcusdt@openInterest"}


def table(dataset: str, rows: list[dict]) -> pa.Table:
    """Literal rows of ``dataset`` (its DATASETS schema, or coverage's): ``recv_time`` and other
    times as µs from the hour; the columns a row leaves out get a plain value (nullable ones: null)."""
    schema = COVERAGE_SCHEMA if dataset == COVERAGE else DATASETS[dataset].schema
    id_col = None if dataset == COVERAGE else DATASETS[dataset].dedup[-1]
    cols = {}
    for f in schema:
        values = []
        for i, r in enumerate(rows):
            if f.name in r:
                v = r[f.name]
            elif f.name == "id" or f.name == id_col:
                v = r["id"]
            elif f.nullable:
                v = None
            elif f.name == "market":
                v = "spot"
            elif f.name == "symbol":
                v = "BTCUSDT"
            elif f.name == "stream":
                v = STREAMS[dataset]
            elif f.name == "seq":
                v = i
            elif f.name == "session_id":
                v = 1
            elif f.name in ("bids", "asks"):
                v = LEVELS
            elif f.type == pa.timestamp("us", tz="UTC"):
                v = 0
            elif f.type == pa.string():
                v = "x"
            elif f.type == pa.bool_():
                v = False
            else:
                v = 1
            if f.type == pa.timestamp("us", tz="UTC") and v is not None:
                v = HOUR + v
            values.append(v)
        cols[f.name] = pa.array(values, pa.int64() if f.type == pa.timestamp("us", tz="UTC") else f.type).cast(f.type)
    return pa.Table.from_pydict(cols, schema=schema)


def rows(session: int, items: list[tuple[int, int]], stream: str = STREAMS[DEPTH], market: str = "spot") -> pa.Table:
    """depth_snapshot items: (recv offset in µs from the hour, last_update_id); seq 0, 1, 2, ..."""
    return table(DEPTH, [dict(recv_time=t, id=u, session_id=session, stream=stream, market=market,
                              symbol=stream.split("@")[0].upper()) for t, u in items])


def ts(offset_us: int):
    return pa.scalar(HOUR + offset_us, pa.timestamp("us", tz="UTC")).as_py()


def kept(out: pa.Table, dataset: str) -> list[tuple]:
    """(id, collector) of each merged row; an id that is a time (mark price, liquidation: the event
    time) as µs from the hour, as :func:`table` took it."""
    col = DATASETS[dataset].dedup[-1]
    ids = out[col].cast(pa.int64()).to_pylist()
    if pa.types.is_timestamp(out.schema.field(col).type):
        ids = [i - HOUR for i in ids]
    return list(zip(ids, out["collector"].to_pylist()))


def test_every_key_once_earliest_copy_kept_with_its_collector():
    a = merge.HostTable("a", rows(1, [(100, 10), (200, 11), (300, 12)]))
    b = merge.HostTable("b", rows(7, [(150, 10), (180, 11), (300, 12), (400, 13)]))
    out = merge.merge_rows(DEPTH, [a, b])
    got = [(r["last_update_id"], r["collector"], r["session_id"], r["seq"]) for r in out.to_pylist()]
    # 10: a first (100 < 150); 11: b first (180 < 200); 12: the same µs, the collector id breaks the tie; 13: b only
    assert got == [(10, "a", 1, 0), (11, "b", 7, 1), (12, "a", 1, 2), (13, "b", 7, 3)]
    assert out.schema.names == [*DEPTH_SCHEMA.names, "collector"]
    assert out.schema.metadata == DEPTH_SCHEMA.metadata  # the dataset's name and schema version


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_every_dataset_merges_by_its_own_dedup_key(dataset):
    a = merge.HostTable("a", table(dataset, [dict(recv_time=100, id=10), dict(recv_time=200, id=11)]))
    b = merge.HostTable("b", table(dataset, [dict(recv_time=150, id=10, session_id=3), dict(recv_time=180, id=11),
                                             dict(recv_time=300, id=12)]))
    out = merge.merge_rows(dataset, [b, a])
    assert kept(out, dataset) == [(10, "a"), (11, "b"), (12, "b")]
    assert out.schema == merge.merged_schema(dataset)
    assert out.schema.names == [*DATASETS[dataset].schema.names, "collector"]
    # the same rows in the other order of collectors: the same table
    assert merge.merge_rows(dataset, [a, b]).equals(out)


@pytest.mark.parametrize("dataset", [d for d in DATASETS if d != DEPTH_REST])
def test_the_same_stream_and_id_on_both_markets_are_two_messages(dataset):
    # spot and USD-M both have btcusdt@depth@100ms, btcusdt@trade, ...: the key includes market
    a = merge.HostTable("a", table(dataset, [dict(recv_time=100, id=10, market="spot")]))
    b = merge.HostTable("b", table(dataset, [dict(recv_time=50, id=10, market="usdm")]))
    out = merge.merge_rows(dataset, [a, b])
    assert [(r["market"], r["collector"]) for r in out.to_pylist()] == [("spot", "a"), ("usdm", "b")]


def test_a_rest_snapshot_is_one_message_per_market_symbol_and_update_id():
    # one collector fetched the same snapshot for two diff streams of the symbol, another one later:
    # the snapshot once, the earliest copy; another symbol's snapshot with the same id is another message
    a = merge.HostTable("a", table(DEPTH_REST, [dict(recv_time=100, id=10, stream="btcusdt@depth@100ms"),
                                                dict(recv_time=100, id=10, stream="btcusdt@depth"),
                                                dict(recv_time=100, id=10, symbol="ETHUSDT", stream="ethusdt@depth")]))
    b = merge.HostTable("b", table(DEPTH_REST, [dict(recv_time=90, id=10, reason="gap")]))
    out = merge.merge_rows(DEPTH_REST, [a, b])
    assert [(r["symbol"], r["collector"], r["reason"], r["session_id"]) for r in out.to_pylist()] == [
        ("BTCUSDT", "b", "gap", None), ("ETHUSDT", "a", "x", None)]
    # the tie inside one collector (same µs, no session) is broken by the other columns: "btcusdt@depth" first
    only_a = merge.merge_rows(DEPTH_REST, [a])
    assert [(r["symbol"], r["stream"]) for r in only_a.to_pylist()] == [("BTCUSDT", "btcusdt@depth"),
                                                                        ("ETHUSDT", "ethusdt@depth")]


def test_sharded_collectors_are_unioned_and_keys_are_per_stream():
    eth = "ethusdt@depth20@100ms"
    a = merge.HostTable("a", rows(1, [(100, 10)]))
    b = merge.HostTable("b", rows(2, [(100, 10)], stream=eth))  # same update id, another stream
    out = merge.merge_rows(DEPTH, [a, b])
    assert sorted((r["symbol"], r["collector"]) for r in out.to_pylist()) == [("BTCUSDT", "a"), ("ETHUSDT", "b")]


def test_a_part_of_depth_schema_version_1_merges_as_spot():
    old = rows(1, [(100, 10), (300, 12)]).select(DEPTH_SCHEMA_V1.names).cast(DEPTH_SCHEMA_V1)
    a = merge.HostTable("a", old)
    b = merge.HostTable("b", rows(2, [(200, 10), (200, 11)]))
    out = merge.merge_rows(DEPTH, [a, b])
    assert [(r["market"], r["last_update_id"], r["collector"], r["event_time"]) for r in out.to_pylist()] == [
        ("spot", 10, "a", None), ("spot", 11, "b", None), ("spot", 12, "a", None)]


def test_gap_only_where_every_collector_was_silent():
    every_100ms = lambda lo, hi: [(t, t) for t in range(lo, hi, 100_000)]  # noqa: E731
    # a is down from 10 s to 30 s, b from 20 s to 40 s: both are silent from 20 s to 30 s only
    a = merge.HostTable("a", rows(1, every_100ms(0, 10 * S) + every_100ms(30 * S, 60 * S)))
    b = merge.HostTable("b", rows(2, every_100ms(0, 20 * S) + every_100ms(40 * S, 60 * S)))
    gaps = merge.merged_gaps([a, b], HOUR, HOUR + 60 * S)
    assert [(g.stream, g.start_us - HOUR, g.end_us - HOUR) for g in gaps] == [(STREAMS[DEPTH], 20 * S - 100_000, 30 * S)]
    assert merge.merged_gaps([a], HOUR, HOUR + 60 * S)[0].start_us == HOUR + 10 * S - 100_000


def test_diff_depth_gaps_are_per_market():
    diff = lambda market, lo, hi: table(DEPTH_UPDATE, [dict(recv_time=t, id=t, market=market)  # noqa: E731
                                                       for t in range(lo, hi, 100_000)])
    # spot's copy on a covers 0-60 s; usdm's same-named stream only on b, silent from 30 s
    gaps = merge.merged_gaps([merge.HostTable("a", diff("spot", 0, 60 * S)),
                              merge.HostTable("b", diff("usdm", 0, 30 * S))], HOUR, HOUR + 60 * S)
    assert [(g.market, g.stream, g.start_us - HOUR) for g in gaps] == [("usdm", STREAMS[DEPTH_UPDATE], 30 * S - 100_000)]


def test_merged_diff_stream_breaks_only_where_no_collector_continues():
    def events(ids: list[int], market: str = "spot") -> pa.Table:  # event u covers U = u - 1 .. u; pu = u - 2
        return table(DEPTH_UPDATE, [dict(recv_time=u, id=u, first_update_id=u - 1, market=market,
                                         prev_update_id=u - 2 if market == "usdm" else None, event_time=u)
                                    for u in ids])
    # spot: a lost 6-8 and b lost 12; b has 6-8: the merged stream only breaks after 11 (12 missing on both)
    a = merge.HostTable("a", events([2, 4, 10, 12, 14, 16]))
    b = merge.HostTable("b", events([2, 4, 6, 8, 10, 16]))
    merged = {DEPTH_UPDATE: merge.merge_rows(DEPTH_UPDATE, [a, b])}
    assert kept(merged[DEPTH_UPDATE], DEPTH_UPDATE) == [(2, "a"), (4, "a"), (6, "b"), (8, "b"), (10, "a"), (12, "a"),
                                                        (14, "a"), (16, "a")]
    assert merge.merged_continuity(merged) == []
    c = merge.HostTable("c", events([2, 4, 10], market="usdm"))
    merged = {DEPTH_UPDATE: merge.merge_rows(DEPTH_UPDATE, [a, c])}
    got = [(r["record"], r["market"], r["first_id"], r["last_id"], r["dataset"]) for r in merge.merged_continuity(merged)]
    # spot 4 -> 10 (a alone lost 6-8), usdm 4 -> 10 (pu 8 is not 4)
    assert got == [("break", "spot", 4, 9, DEPTH_UPDATE), ("break", "usdm", 4, 9, DEPTH_UPDATE)]


@pytest.mark.parametrize("dataset", [TRADE, AGG_TRADE])
def test_merged_trade_ids_missing_only_where_every_copy_misses_them(dataset):
    a = merge.HostTable("a", table(dataset, [dict(recv_time=i, id=i) for i in (1, 2, 3, 7, 8, 9)]))
    b = merge.HostTable("b", table(dataset, [dict(recv_time=i + 5, id=i) for i in (1, 4, 5, 9)]))
    merged = {dataset: merge.merge_rows(dataset, [a, b])}
    assert sorted(r[DATASETS[dataset].ordered_id] for r in merged[dataset].to_pylist()) == [1, 2, 3, 4, 5, 7, 8, 9]
    got = [(r["record"], r["first_id"], r["last_id"], r["messages"], r["dataset"]) for r in merge.merged_continuity(merged)]
    assert got == [("trade_gap", 6, 6, 1, dataset)]  # a lost 4-6, b lost 2-3 and 6-8: only 6 is lost to both


def coverage(host_gap: tuple[int, int], session: int) -> pa.Table:
    stream = STREAMS[DEPTH_UPDATE]
    return table(COVERAGE, [
        dict(record="session", session_id=session, start_time=0, end_time=None, messages=5, part=1, as_of=0),
        dict(record="gap", market="spot", stream=stream, start_time=host_gap[0], end_time=host_gap[1], part=1, as_of=0),
        dict(record="break", market="spot", stream=stream, session_id=session, first_id=4, last_id=9, reason="gap",
             dataset=DEPTH_UPDATE, part=1, as_of=0),
    ])


def test_merged_coverage_keeps_each_collectors_records_and_replaces_gaps(tmp_path):
    ga = merge.merged_gaps([merge.HostTable("a", table(DEPTH_UPDATE, [dict(recv_time=t, id=t) for t in range(0, 60 * S, S // 10)
                                                                      if not 10 * S <= t < 30 * S]))], HOUR, HOUR + 60 * S)
    out = merge.merge_coverage(HOUR, [merge.HostTable("b", coverage((0, 1), 7)), merge.HostTable("a", coverage((2, 3), 1))],
                               ga, [dict(record="trade_gap", market="spot", stream="btcusdt@trade", first_id=6, last_id=6,
                                         messages=1, dataset=TRADE)], ["b", "a"], HOUR + 60 * S)
    got = [(r["record"], r["collector"], r["session_id"], r["start_time"]) for r in out.to_pylist()]
    assert got == [
        ("break", "a", 1, None), ("break", "b", 7, None),  # each collector's own, named
        ("collector", "a", None, None), ("collector", "b", None, None),
        # the merged gap (every collector silent), the hosts' own gaps are not in the merged coverage
        ("gap", None, None, ts(10 * S - 100_000)),
        ("session", "a", 1, ts(0)), ("session", "b", 7, ts(0)),
        ("trade_gap", None, None, None),
    ]
    assert out.schema == merge.merged_schema(COVERAGE) and out.schema.metadata == COVERAGE_SCHEMA.metadata
    assert len(ga) == 1 and set(out.column("hour_start").to_pylist()) == {ts(0)}


def test_merged_objects_are_deterministic_and_verified(tmp_path):
    store = LocalStore(tmp_path / "archive")
    refs = []
    parts = {
        "a": {DEPTH: rows(1, [(100, 10), (200, 11)]),
              TRADE: table(TRADE, [dict(recv_time=100, id=1), dict(recv_time=200, id=2)]),
              COVERAGE: coverage((0, 1), 1)},
        "b": {DEPTH: rows(5, [(150, 10), (250, 12)]),
              TRADE: table(TRADE, [dict(recv_time=90, id=1), dict(recv_time=300, id=4)]),
              DEPTH_REST: table(DEPTH_REST, [dict(recv_time=5, id=3)]),
              COVERAGE: coverage((0, 1), 5)},
    }
    for host, tables in parts.items():
        for dataset, t in tables.items():
            path, key = tmp_path / f"{host}-{dataset}.parquet", f"{merge.host_prefix(host)}/{dataset}/part.parquet"
            _, sha = export.write_table(t, path, {})
            store.put_if_absent(key, path, sha)
            refs.append(merge.PartRef(host, key, sha, dataset))
    first = merge.merge_hour(store, tmp_path / "staging", HOUR, refs)
    again = merge.merge_hour(store, tmp_path / "staging", HOUR, list(reversed(refs)))
    assert first.objects == again.objects
    assert set(first.datasets) == {*DATASETS, COVERAGE}  # every dataset's object, empty where no collector had parts
    d, t = first.datasets[DEPTH], first.datasets[TRADE]
    assert (d.rows, d.kept, d.input_rows) == (3, {"a": 2, "b": 1}, {"a": 2, "b": 2})
    assert (t.rows, t.kept, t.input_rows) == (3, {"a": 1, "b": 2}, {"a": 2, "b": 2})
    assert first.datasets[BOOK_TICKER].rows == 0 and first.datasets[DEPTH_REST].kept == {"b": 1}
    assert first.continuity == [dict(record="trade_gap", market="spot", stream=STREAMS[TRADE], start_time=HOUR,
                                     end_time=HOUR, first_recv_time=HOUR + 300, first_id=3, last_id=3, messages=1,
                                     dataset=TRADE)]
    assert first.datasets[COVERAGE].kept == {"a": 2, "b": 2}  # session and break of each (their gaps replaced)
    key = merge.object_key(DEPTH, HOUR)
    assert key == "depth_snapshot/date=2026-11-23/hour=10/fleet.parquet"
    for name, m in first.datasets.items():
        assert store.head(m.object_key)[1] == m.sha256
        assert pq.read_schema(tmp_path / "archive" / m.object_key).names == merge.merged_schema(name).names
    # analysts read every merged dataset with the collector column
    con = duckdb.connect()
    assert con.execute(f"SELECT collector, count(*) FROM read_parquet('{tmp_path}/archive/trade/**/fleet.parquet') "
                       "GROUP BY ALL ORDER BY ALL").fetchall() == [("a", 1), ("b", 2)]
    # a part whose bytes differ from what its collector verified is refused
    bad = merge.PartRef("a", refs[0].object_key, "0" * 64, refs[0].dataset)
    with pytest.raises(Exception, match="does not hash"):
        merge.merge_hour(store, tmp_path / "staging", HOUR, [bad, *refs[1:]])


@pytest.mark.parametrize("value", ["Tokyo", "a-b", "", "x" * 33, "a/b"])
def test_a_bad_host_id_is_one_sentence_naming_the_setting(value):
    with pytest.raises(ConfigError, match="ORDERBOOK_HOST_ID"):
        merge.check_host_id(value)
