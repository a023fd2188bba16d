"""The per-dataset spec (``orderbook_core.kinds``) is the one translation table: the schemas,
export sources, buffer row tables and replay encoder derive from it, and the product's own
decoders read back exactly what the spec's encoder writes, field by field, on both markets."""

from __future__ import annotations

import pytest

from orderbook_assets.archive import datasets as ds
from orderbook_assets.archive.export import SOURCES
from orderbook_core import kinds
from orderbook_core.buffer import levels
from orderbook_core.buffer.rows import OTHER_TABLES, ROW_TABLES
from orderbook_core.payloads import decode_payload
from orderbook_core.streams import Kind, Market, spec as stream_spec

STREAM_OF = {"depth_snapshot": "depth20@100ms", "depth_update": "depth@100ms", "trade": "trade",
             "agg_trade": "aggTrade", "book_ticker": "bookTicker"}
WIRE_SPECS = [s for s in kinds.SPECS.values() if s.name in STREAM_OF]


def _row(spec: kinds.DatasetSpec) -> dict:
    row: dict = {"symbol": "BTCUSDT"}
    for i, f in enumerate(spec.fields):
        if f.type is kinds.Type.LEVELS:
            row["bids"] = [{"price": 100.5, "qty": 1.25}, {"price": 100.25, "qty": 3.0}]
            row["asks"] = [{"price": 101.0, "qty": 0.5}]
        elif f.type in (kinds.Type.MS, kinds.Type.MS_NULL):
            row[f.column] = 1_765_000_000_000_000 + i * 1000  # µs
        elif f.type is kinds.Type.FLOAT:
            row[f.column] = 100.0 + i / 4
        elif f.type is kinds.Type.BOOL:
            row[f.column] = True
        elif f.type is kinds.Type.TEXT:
            row[f.column] = "gap"
        else:
            row[f.column] = 7_000_000 + i
    # ids that satisfy the decoders' own checks (U <= u, first trade id <= last)
    if "first_update_id" in row and "last_update_id" in row:
        row["first_update_id"], row["last_update_id"], row["prev_update_id"] = 7_000_010, 7_000_020, 7_000_009
    if "first_trade_id" in row:
        row["first_trade_id"], row["last_trade_id"] = 500, 502
    return row


@pytest.mark.parametrize("market", [Market.SPOT, Market.USDM])
@pytest.mark.parametrize("spec", WIRE_SPECS, ids=lambda s: s.name)
def test_the_decoder_reads_back_what_the_spec_encodes(spec, market):
    row = _row(spec)
    payload = kinds.encode(spec, market, row, lambda us: us // 1000)
    assert list(payload)[: len(spec.wire_order[market])] == list(spec.wire_order[market])
    record = decode_payload(stream_spec("btcusdt", STREAM_OF[spec.name], market), payload, 1, 2, 3, 0)
    assert type(record) is spec.record
    for f in spec.fields:
        got = [getattr(record, r) for r in f.buffer]
        if f.type is kinds.Type.LEVELS:
            bids, asks = levels.unpack(got[1], got[0])
            assert [list(b) for b in bids] == [[lv["price"], lv["qty"]] for lv in row["bids"]]
            assert [list(a) for a in asks] == [[lv["price"], lv["qty"]] for lv in row["asks"]]
        elif market not in f.wire:
            assert got == [None], f"{spec.name}.{f.column} is not sent on {market.value}, yet decoded as {got}"
        elif f.type in (kinds.Type.MS, kinds.Type.MS_NULL):
            assert got == [row[f.column] // 1000], f.column
        else:
            assert got == [row[f.column]], f.column


def test_every_kind_has_a_spec_and_every_spec_a_table_schema_and_sources():
    assert set(kinds.BY_KIND) == set(Kind)
    for name, spec in kinds.SPECS.items():
        assert ds.DATASETS[name].dedup == spec.dedup
        own = [f.name for f in ds.DATASETS[name].schema][6:]
        assert own == [a.name for a in spec.arrow_fields()]
        assert [s.column for s in SOURCES[name]] == [f.column for f in spec.fields]
    tables = {t.table: t for t in (*ROW_TABLES.values(), *OTHER_TABLES.values())}
    for spec in kinds.SPECS.values():
        assert set(spec.buffer_columns()) <= set(tables[spec.name].columns)


def test_a_value_has_one_name_in_the_buffer_and_in_its_record(tmp_path):
    """Each record type's fields carry their buffer columns' names (``event_ms``, never a
    second spelling); only the dataset column (a contract: ``event_time``) differs."""
    from orderbook_core import buffer

    conn = buffer.connect(tmp_path / "b.sqlite3")
    try:
        for rtype, t in {**ROW_TABLES, **OTHER_TABLES}.items():
            table = {r[1] for r in conn.execute(f"PRAGMA table_info({t.table})")}
            assert set(t.columns) <= set(rtype._fields) & table, t.table
    finally:
        conn.close()
    assert {b for s in kinds.SPECS.values() for f in s.fields for b in f.buffer} >= {
        "event_ms", "transaction_ms", "trade_ms"}
