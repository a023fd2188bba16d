"""The ``derivative_ticker`` view (Tardis's shape): each mark price with the open interest and the
last trade price as of its event time, on a literal archive written by the collector's writer
and the archive job's export, per market and symbol."""

from __future__ import annotations

import gzip
import hashlib
import json

import duckdb
import pytest

from orderbook_core import buffer
from orderbook_core.buffer.records import (AggTradeRecord, LiquidationRecord, MarkPriceRecord, OpenInterestRecord, SessionOpen,
                                           TradeRecord)
from orderbook_collector.writer.thread import store_records
from orderbook_assets.analytics import query, views
from orderbook_assets.archive import merge, pipeline
from orderbook_assets.archive.store import LocalStore

from support.buffer_rows import BASE_HOUR_US, open_buffer

HOUR = BASE_HOUR_US
H = HOUR // 1000  # the hour's start in ms: every time below is H + a literal offset
FUNDING = H + 8 * 3_600_000
SESSIONS = {"spot": HOUR + 1, "usdm": HOUR + 2, "coinm": HOUR + 3}
#: (market, stream): the streams recorded, keyed as the collector keys them
STREAMS = [("spot", "btcusdt@trade"), ("usdm", "btcusdt@markPrice"), ("usdm", "btcusdt@markPrice@1s"),
           ("usdm", "btcusdt@trade"), ("usdm", "btcusdt@forceOrder"), ("usdm", "ethusdt@markPrice@1s"), ("coinm", "btcusd_perp@markPrice"),
           ("coinm", "btcusd_perp@aggTrade")]
POLLED = [("usdm", "btcusdt"), ("usdm", "ethusdt"), ("coinm", "btcusd_perp")]


def key(market: str, stream: str) -> str:
    return stream if market == "spot" else f"{market}:{stream}"


def register(conn) -> dict[str, int]:
    ids = buffer.stream_ids(conn, [(key(m, s), s.split("@")[0], s.split("@", 1)[1], m) for m, s in STREAMS])
    return {**ids, **buffer.stream_ids(conn, [(key(m, f"{s}@openInterest"), s, "openInterest", m) for m, s in POLLED])}


def mark(market, stream, recv_ms, seq, event_ms, price, rate):
    return MarkPriceRecord(key(market, stream), recv_ms * 1000, SESSIONS[market], seq, event_ms, price, price - 1.0,
                           price - 2.0, rate, FUNDING, 0)


def trade(market, recv_ms, seq, trade_ms, trade_id, price):
    return TradeRecord(key(market, "btcusdt@trade"), recv_ms * 1000, SESSIONS[market], seq, trade_ms, trade_ms,
                       trade_id, price, 0.5, False, 0)


def liquidation(stream, recv_ms, seq, event_ms, side, status, avg_price, filled):
    return LiquidationRecord(key("usdm", stream), recv_ms * 1000, SESSIONS["usdm"], seq, event_ms, side, "LIMIT", "IOC",
                             2.0, avg_price - 5.0, avg_price, status, filled, filled, event_ms - 1, 0)


def poll(market, symbol, time_ms, oi):
    """An open-interest answer, received 100 ms after its Binance ``time``."""
    return OpenInterestRecord(key(market, f"{symbol}@openInterest"), market, symbol.upper(), (time_ms + 100) * 1000,
                              time_ms, oi)


def store(conn, ids, records, polled=(), ops=()):
    store_records(conn, ids, records, ops=list(ops), others=list(polled))


def opens():
    return [SessionOpen(SESSIONS[m], f"wss://{m}", json.dumps([s for mk, s in STREAMS if mk == m]), SESSIONS[m], m)
            for m in SESSIONS]


def first_batch():
    """The hour's messages and polls (records, polled)."""
    records = [
        # USD-M BTCUSDT on the 1 s stream, and once on the 3 s stream at the same event time,
        # received 5 ms earlier there: that one is kept
        mark("usdm", "btcusdt@markPrice@1s", H + 1_010, 0, H + 1_000, 50_000.0, 0.0001),
        mark("usdm", "btcusdt@markPrice@1s", H + 2_010, 1, H + 2_000, 50_002.0, 0.0001),
        mark("usdm", "btcusdt@markPrice", H + 3_005, 2, H + 3_000, 50_003.0, 0.0001),
        mark("usdm", "btcusdt@markPrice@1s", H + 3_010, 3, H + 3_000, 50_003.0, 0.0001),
        mark("usdm", "btcusdt@markPrice@1s", H + 4_010, 4, H + 4_000, 50_004.0, 0.0002),
        # USD-M trades: two in one millisecond (the higher id is the last), one later
        trade("usdm", H + 1_510, 5, H + 1_500, 7, 50_010.0),
        trade("usdm", H + 1_511, 6, H + 1_500, 8, 50_011.0),
        trade("usdm", H + 3_210, 7, H + 3_200, 9, 50_020.0),
        # USD-M BTCUSDT liquidations: two filled, one not (Tardis exports FILLED orders only)
        liquidation("btcusdt@forceOrder", H + 1_210, 9, H + 1_200, "SELL", "FILLED", 49_990.5, 0.75),
        liquidation("btcusdt@forceOrder", H + 2_210, 10, H + 2_200, "BUY", "EXPIRED", 50_015.0, 0.0),
        liquidation("btcusdt@forceOrder", H + 3_210, 11, H + 3_200, "BUY", "FILLED", 50_025.0, 0.001),
        # USD-M ETHUSDT: no trades recorded
        mark("usdm", "ethusdt@markPrice@1s", H + 2_010, 12, H + 2_000, 3_000.0, -0.0001),
        # spot BTCUSDT, the same symbol on another market: never a futures row's last price
        trade("spot", H + 2_510, 0, H + 2_500, 1, 49_000.0),
        # COIN-M BTCUSD_PERP
        mark("coinm", "btcusd_perp@markPrice", H + 1_010, 0, H + 1_000, 50_100.0, 0.0003),
        mark("coinm", "btcusd_perp@markPrice", H + 2_010, 1, H + 2_000, 50_101.0, 0.0003),
        # COIN-M records aggTrades only: its last price comes from them
        AggTradeRecord(key("coinm", "btcusd_perp@aggTrade"), (H + 1_510) * 1000, SESSIONS["coinm"], 2, H + 1_500,
                       H + 1_500, 30, 20, 21, 50_150.0, 3.0, True, 0),
    ]
    polled = [
        poll("usdm", "btcusdt", H + 1_500, 100.0),
        poll("usdm", "btcusdt", H + 4_000, 110.0),  # at the mark's event time exactly: as of it
        poll("usdm", "ethusdt", H + 1_000, 900.0),
        poll("coinm", "btcusd_perp", H + 1_800, 7_000.0),
    ]
    return records, polled


def archive_hour(conn, root, prefix: str = ""):
    st = LocalStore(root / "archive" / prefix)
    pipeline.export_and_upload(conn, st, root / f"staging{prefix}", HOUR)
    pipeline.upload_coverage(conn, st, root / f"staging{prefix}", HOUR)
    pipeline.mark_archived(conn, root / f"staging{prefix}", HOUR)


def record_and_archive(root, records, polled, buffer_name="buffer.sqlite3", prefix=""):
    conn = open_buffer(root / buffer_name)
    store(conn, register(conn), records, polled, opens())
    archive_hour(conn, root, prefix)
    conn.close()


@pytest.fixture
def recorded(tmp_path):
    record_and_archive(tmp_path, *first_batch())
    return tmp_path


def ticker(con):
    """The view's rows, times as ms after the hour's start (the funding time as an absolute check)."""
    return con.execute(
        "SELECT market, symbol, stream, epoch_ms(timestamp) - ?, epoch_ms(local_timestamp) - ?, mark_price, "
        "index_price, estimated_settle_price, funding_rate, epoch_ms(next_funding_time) - ?, open_interest, "
        "epoch_ms(open_interest_time) - ?, last_price FROM derivative_ticker ORDER BY market, symbol, timestamp",
        [H, H, FUNDING, H]).fetchall()


#: market, symbol, stream, timestamp, local_timestamp, mark, index, settle, funding rate,
#: next funding time (- FUNDING), open interest, its time, last price
EXPECTED = [
    ("coinm", "BTCUSD_PERP", "btcusd_perp@markPrice", 1_000, 1_010, 50_100.0, 50_099.0, 50_098.0, 0.0003, 0,
     None, None, None),
    ("coinm", "BTCUSD_PERP", "btcusd_perp@markPrice", 2_000, 2_010, 50_101.0, 50_100.0, 50_099.0, 0.0003, 0,
     7_000.0, 1_800, 50_150.0),
    ("usdm", "BTCUSDT", "btcusdt@markPrice@1s", 1_000, 1_010, 50_000.0, 49_999.0, 49_998.0, 0.0001, 0,
     None, None, None),
    ("usdm", "BTCUSDT", "btcusdt@markPrice@1s", 2_000, 2_010, 50_002.0, 50_001.0, 50_000.0, 0.0001, 0,
     100.0, 1_500, 50_011.0),
    ("usdm", "BTCUSDT", "btcusdt@markPrice", 3_000, 3_005, 50_003.0, 50_002.0, 50_001.0, 0.0001, 0,
     100.0, 1_500, 50_011.0),
    ("usdm", "BTCUSDT", "btcusdt@markPrice@1s", 4_000, 4_010, 50_004.0, 50_003.0, 50_002.0, 0.0002, 0,
     110.0, 4_000, 50_020.0),
    ("usdm", "ETHUSDT", "ethusdt@markPrice@1s", 2_000, 2_010, 3_000.0, 2_999.0, 2_998.0, -0.0001, 0,
     900.0, 1_000, None),
]


def test_each_mark_price_with_open_interest_and_last_price_as_of_its_time(recorded):
    con = duckdb.connect()
    info = views.register_views(con, str(recorded / "archive"))
    assert info.files["mark_price"] == 1 and info.files["open_interest"] == 1
    assert ticker(con) == EXPECTED
    assert [d[0] for d in con.execute("SELECT * FROM derivative_ticker LIMIT 0").description] == \
        views.DERIVATIVE_TICKER_COLUMNS
    assert not [n for n in info.notes if "derivative_ticker" in n]


def test_with_tail_the_unarchived_mark_prices_and_polls_join_in(recorded):
    conn = open_buffer(recorded / "buffer.sqlite3")
    ids = register(conn)
    store(conn, ids, [mark("usdm", "btcusdt@markPrice@1s", H + 6_010, 9, H + 6_000, 50_006.0, 0.0002)],
          [poll("usdm", "btcusdt", H + 5_500, 120.0)])
    conn.close()
    con = duckdb.connect()
    info = views.register_views(con, str(recorded / "archive"), recorded / "buffer.sqlite3")
    assert info.tails["mark_price"] == 1 and info.tails["open_interest"] == 1
    assert ticker(con) == EXPECTED[:6] + [
        ("usdm", "BTCUSDT", "btcusdt@markPrice@1s", 6_000, 6_010, 50_006.0, 50_005.0, 50_004.0, 0.0002, 0,
         120.0, 5_500, 50_020.0)] + EXPECTED[6:]


def test_over_a_fleets_merged_archive_each_message_once(tmp_path):
    """Collector a records everything; b the COIN-M streams too, each copy 1 ms earlier: the merge
    keeps b's copies (earliest received), and the view reads the merge, never the hosts' folders."""
    records, polled = first_batch()
    coinm = ([r._replace(recv_us=r.recv_us - 1_000) for r in records if r.stream.startswith("coinm:")],
             [p._replace(recv_us=p.recv_us - 1_000) for p in polled if p.market == "coinm"])
    refs = []
    for host, (recs, pols) in {"a": (records, polled), "b": coinm}.items():
        prefix = merge.host_prefix(host)
        record_and_archive(tmp_path, recs, pols, f"buffer-{host}.sqlite3", prefix)
        for f in sorted((tmp_path / "archive" / prefix).rglob("*.parquet")):
            rel = f.relative_to(tmp_path / "archive")
            refs.append(merge.PartRef(host, str(rel), hashlib.sha256(f.read_bytes()).hexdigest(), rel.parts[2]))
    assert {r.dataset for r in refs if r.collector == "b"} == {"mark_price", "agg_trade", "open_interest", "coverage"}
    merge.merge_hour(LocalStore(tmp_path / "archive"), tmp_path / "staging-merge", HOUR, refs)
    con = duckdb.connect()
    views.register_views(con, str(tmp_path / "archive"))
    assert ticker(con) == [(*r[:4], r[4] - 1, *r[5:]) for r in EXPECTED[:2]] + EXPECTED[2:]
    assert con.execute("SELECT market, collector, count(*) FROM read_parquet(?) GROUP BY ALL ORDER BY ALL",
                       [f"{tmp_path}/archive/mark_price/**/fleet.parquet"]).fetchall() == \
        [("coinm", "b", 2), ("usdm", "a", 6)]  # both BTCUSDT streams (the merge keys on the stream) and ETHUSDT


def test_no_mark_price_leaves_the_view_out_with_a_note(tmp_path):
    (tmp_path / "archive").mkdir()
    con = duckdb.connect()
    info = views.register_views(con, str(tmp_path / "archive"))
    assert f"No mark_price dataset under {tmp_path / 'archive'}/mark_price yet; the derivative_ticker view is left out." \
        in info.notes
    with pytest.raises(duckdb.CatalogException):
        con.execute("SELECT * FROM derivative_ticker")


def test_query_help_lists_the_view(capsys):
    with pytest.raises(SystemExit):
        query.main(["query", "--help"])
    assert "derivative_ticker" in capsys.readouterr().out


def gunzip(path) -> str:
    with gzip.open(path, "rb") as f:
        return f.read().decode()


def test_tardis_export_writes_derivative_ticker_and_liquidations(recorded, capsys):
    out = recorded / "export"
    day = "2026-11-23"
    assert query.main(["export", "--format", "tardis", "--date", day, "--archive", str(recorded / "archive"),
                       "--out", str(out)]) == 0
    T, F = H * 1000, FUNDING * 1000  # µs
    head = ("exchange,symbol,timestamp,local_timestamp,funding_timestamp,funding_rate,predicted_funding_rate,"
            "open_interest,last_price,index_price,mark_price\n")
    assert gunzip(out / "binance-futures" / "derivative_ticker" / f"{day}_BTCUSDT.csv.gz") == head + (
        f"binance-futures,BTCUSDT,{T + 1_000_000},{T + 1_010_000},{F},0.0001,,,,49999,50000\n"
        f"binance-futures,BTCUSDT,{T + 2_000_000},{T + 2_010_000},{F},0.0001,,100,50011,50001,50002\n"
        f"binance-futures,BTCUSDT,{T + 3_000_000},{T + 3_005_000},{F},0.0001,,100,50011,50002,50003\n"
        f"binance-futures,BTCUSDT,{T + 4_000_000},{T + 4_010_000},{F},0.0002,,110,50020,50003,50004\n")
    assert gunzip(out / "binance-futures" / "derivative_ticker" / f"{day}_ETHUSDT.csv.gz") == head + (
        f"binance-futures,ETHUSDT,{T + 2_000_000},{T + 2_010_000},{F},-0.0001,,900,,2999,3000\n")
    assert gunzip(out / "binance-delivery" / "derivative_ticker" / f"{day}_BTCUSD_PERP.csv.gz") == head + (
        f"binance-delivery,BTCUSD_PERP,{T + 1_000_000},{T + 1_010_000},{F},0.0003,,,,50099,50100\n"
        f"binance-delivery,BTCUSD_PERP,{T + 2_000_000},{T + 2_010_000},{F},0.0003,,7000,50150,50100,50101\n")
    # Tardis's Binance rule: o.T, the side in lower case, the average price, the filled quantity, no id
    assert gunzip(out / "binance-futures" / "liquidations" / f"{day}_BTCUSDT.csv.gz") == (
        "exchange,symbol,timestamp,local_timestamp,id,side,price,amount\n"
        f"binance-futures,BTCUSDT,{T + 1_199_000},{T + 1_210_000},,sell,49990.5,0.75\n"
        f"binance-futures,BTCUSDT,{T + 3_199_000},{T + 3_210_000},,buy,50025,0.001\n")
    # no derivatives files for spot, nor liquidations where none were recorded
    assert not (out / "binance" / "derivative_ticker").exists()
    assert sorted(p.name for p in (out / "binance-futures" / "liquidations").iterdir()) == [f"{day}_BTCUSDT.csv.gz"]


def test_the_note_shows_only_for_a_statement_naming_the_view(tmp_path, capsys):
    (tmp_path / "archive").mkdir()
    info = views.register_views(duckdb.connect(), str(tmp_path / "archive"))
    note = f"note: No mark_price dataset under {tmp_path / 'archive'}/mark_price yet; the derivative_ticker view is left out."
    query._print_notes(info, "SELECT * FROM trade")
    assert note not in capsys.readouterr().err
    query._print_notes(info, "SELECT * FROM derivative_ticker")
    assert note in capsys.readouterr().err.splitlines()
    query._print_notes(info, None)  # the shell: every note
    assert note in capsys.readouterr().err.splitlines()
