"""``orderbook export``: the archive in Tardis's CSV layout and as hftbacktest's event arrays,
read back by the libraries quants use (hftbacktest, NautilusTrader). The archive is a tiny
literal one, written as Parquet in the datasets' own schemas.

The backtesters pin numpy and pandas below our locks, so they run in their own interpreter
(``.venv-backtest``, ``ORDERBOOK_BACKTEST_PYTHON``): ``support/backtesters.py`` executes the
docs/backtesting.md snippets there and returns the values; every comparison is made here."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from support import backtesters

from orderbook_assets.analytics import backtest as bt
from orderbook_assets.analytics import query
from orderbook_assets.analytics.books import book_at, iter_books
from orderbook_assets.archive import datasets
from orderbook_assets.books.builder import BookBuilder, DiffEvent, Outcome, Snapshot, Status
from orderbook_core.buffer.hours import hour_folder

DAY = "2026-12-01"
T0 = 1_796_083_200_000_000  # 2026-12-01T00:00:00Z in µs
MS = 1000
S = 1_000_000
H = 3600 * S
STREAM = "btcusdt@depth@100ms"


def lv(*pairs):
    return [{"price": p, "qty": q} for p, q in pairs]


def upd(recv, U, u, bids=(), asks=(), seq=0):
    return {"market": "spot", "symbol": "BTCUSDT", "stream": STREAM, "recv_time": recv, "session_id": 1,
            "seq": seq, "event_time": recv - MS, "transaction_time": None, "first_update_id": U,
            "last_update_id": u, "prev_update_id": None, "bids": lv(*bids), "asks": lv(*asks)}


def rest(recv, u, bids, asks):
    return {"market": "spot", "symbol": "BTCUSDT", "stream": STREAM, "recv_time": recv, "session_id": None,
            "seq": None, "last_update_id": u, "bids": lv(*bids), "asks": lv(*asks), "reason": "connect",
            "event_time": None, "transaction_time": None}


def trade(market, symbol, recv, tid, price, qty, buyer_maker, seq=0):
    return {"market": market, "symbol": symbol, "stream": f"{symbol.lower()}@trade", "recv_time": recv,
            "session_id": 1, "seq": seq, "event_time": recv - 2 * MS, "trade_time": recv - 3 * MS,
            "trade_id": tid, "price": price, "qty": qty, "is_buyer_maker": buyer_maker}


#: The previous day ends with a REST snapshot and one event; the day has two events, a break
#: (107-109 missed), a REST snapshot that bridges again, and one more event.
REST = [
    rest(T0 - 1 * S, 100, [(100.0, 1.0), (99.5, 2.0)], [(100.5, 1.5), (101.0, 3.0)]),
    rest(T0 + H + 1 * S, 112, [(100.2, 1.0), (100.1, 5.0)], [(100.8, 2.0)]),
]
UPDATES = [
    upd(T0 - 500 * MS, 101, 102, bids=[(100.0, 1.2)], seq=1),
    upd(T0 + 100 * MS, 103, 104, bids=[(99.5, 0.0)], asks=[(100.5, 2.0)], seq=2),
    upd(T0 + 1800 * S, 105, 106, asks=[(100.7, 0.25)], seq=3),
    upd(T0 + H, 110, 111, bids=[(100.1, 5.0)], seq=4),  # 107-109 never arrived: a break
    upd(T0 + H + 1100 * MS, 112, 113, bids=[(100.2, 1.5)], seq=5),
    upd(T0 + H + 2 * S, 114, 114, asks=[(100.8, 0.0), (100.9, 1.0)], seq=6),
]
TRADES = [
    trade("spot", "BTCUSDT", T0 + 200 * MS, 1, 100.5, 0.1, False, 1),
    trade("spot", "BTCUSDT", T0 + H + 1500 * MS, 2, 100.2, 0.25, True, 2),
    trade("usdm", "ETHUSDT", T0 + 600 * S, 7, 3000.5, 1e-05, True, 1),
    trade("spot", "BTCUSDT", T0 + 24 * H - S, 3, 100.9, 0.5, False, 3),  # keeps a backtest's clock going
]


def write(archive: Path, dataset: str, rows: list[dict], time_col: str = "recv_time", fleet: bool = False) -> None:
    """Rows into ``<archive>/<dataset>/date=/hour=/part-0.parquet`` in the dataset's schema; with
    ``fleet``, as a fleet's merge writes them: ``fleet.parquet`` with a ``collector`` column."""
    schema = datasets.DATASETS[dataset].schema if dataset in datasets.DATASETS else datasets.BOOK_SNAPSHOT_SCHEMA
    if fleet:
        schema = schema.append(pa.field("collector", pa.string()))
    by_hour: dict[str, list[dict]] = {}
    for r in rows:
        by_hour.setdefault(hour_folder(r[time_col] // H * H), []).append({**r, "collector": "tokyo_1"} if fleet else r)
    for folder, part in by_hour.items():
        path = archive / dataset / folder / ("fleet.parquet" if fleet else "part-0.parquet")
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(part, schema=schema), path)


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    root = tmp_path / "archive"
    write(root, "depth_update", UPDATES)
    write(root, "depth_rest_snapshot", REST)
    write(root, "trade", TRADES)
    return root


def run_export(archive: Path, out: Path, fmt: str = "tardis", *extra: str) -> int:
    return query.main(["export", "--format", fmt, "--date", DAY, "--archive", str(archive), "--out", str(out), *extra])


def gunzip(path: Path) -> str:
    with gzip.open(path, "rb") as f:
        return f.read().decode()


# --------------------------------------------------------------------------- golden files

GOLDEN_L2 = f"""exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount
binance,BTCUSDT,{T0},{T0},true,bid,100,1.2
binance,BTCUSDT,{T0},{T0},true,bid,99.5,2
binance,BTCUSDT,{T0},{T0},true,ask,100.5,1.5
binance,BTCUSDT,{T0},{T0},true,ask,101,3
binance,BTCUSDT,{T0 + 99 * MS},{T0 + 100 * MS},false,bid,99.5,0
binance,BTCUSDT,{T0 + 99 * MS},{T0 + 100 * MS},false,ask,100.5,2
binance,BTCUSDT,{T0 + 1800 * S - MS},{T0 + 1800 * S},false,ask,100.7,0.25
binance,BTCUSDT,{T0 + H - MS},{T0 + H},false,bid,100,0
binance,BTCUSDT,{T0 + H - MS},{T0 + H},false,ask,100.5,0
binance,BTCUSDT,{T0 + H - MS},{T0 + H},false,ask,100.7,0
binance,BTCUSDT,{T0 + H - MS},{T0 + H},false,ask,101,0
binance,BTCUSDT,{T0 + H + 1099 * MS},{T0 + H + 1100 * MS},true,bid,100.2,1.5
binance,BTCUSDT,{T0 + H + 1099 * MS},{T0 + H + 1100 * MS},true,bid,100.1,5
binance,BTCUSDT,{T0 + H + 1099 * MS},{T0 + H + 1100 * MS},true,ask,100.8,2
binance,BTCUSDT,{T0 + H + 2 * S - MS},{T0 + H + 2 * S},false,ask,100.8,0
binance,BTCUSDT,{T0 + H + 2 * S - MS},{T0 + H + 2 * S},false,ask,100.9,1
"""
GOLDEN_TRADES = f"""exchange,symbol,timestamp,local_timestamp,id,side,price,amount
binance,BTCUSDT,{T0 + 197 * MS},{T0 + 200 * MS},1,buy,100.5,0.1
binance,BTCUSDT,{T0 + H + 1497 * MS},{T0 + H + 1500 * MS},2,sell,100.2,0.25
binance,BTCUSDT,{T0 + 24 * H - S - 3 * MS},{T0 + 24 * H - S},3,buy,100.9,0.5
"""
GOLDEN_USDM_TRADES = f"""exchange,symbol,timestamp,local_timestamp,id,side,price,amount
binance-futures,ETHUSDT,{T0 + 600 * S - 3 * MS},{T0 + 600 * S},7,sell,3000.5,0.00001
"""


def test_golden_tardis_files_byte_for_byte(archive, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_export(archive, out) == 0
    l2 = out / "binance" / "incremental_book_L2" / f"{DAY}_BTCUSDT.csv.gz"
    trades = out / "binance" / "trades" / f"{DAY}_BTCUSDT.csv.gz"
    usdm = out / "binance-futures" / "trades" / f"{DAY}_ETHUSDT.csv.gz"
    assert gunzip(l2) == GOLDEN_L2
    assert gunzip(trades) == GOLDEN_TRADES
    assert gunzip(usdm) == GOLDEN_USDM_TRADES
    # no diff depth for ETHUSDT, no book_ticker anywhere: no empty files
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        f"binance-futures/trades/{DAY}_ETHUSDT.csv.gz",
        f"binance/incremental_book_L2/{DAY}_BTCUSDT.csv.gz",
        f"binance/trades/{DAY}_BTCUSDT.csv.gz",
    ]
    summary = capsys.readouterr().out
    assert "1 breaks" in summary and "2 snapshot blocks" in summary
    # deterministic gzip: mtime 0 in the header, and a second export gives the same bytes
    raw = l2.read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw[4:8] == b"\0\0\0\0"
    again = tmp_path / "again"
    assert run_export(archive, again) == 0
    for p in (l2, trades, usdm):
        assert (again / p.relative_to(out)).read_bytes() == p.read_bytes()


def test_usdm_book_chains_by_pu_and_stamps_the_event_time(tmp_path):
    """USD-M: the pu rule, ``timestamp`` = E (not T), and no start-of-day block when nothing before
    the day makes the book known: the file starts at the first snapshot block."""
    def fut(recv, U, u, pu, bids=(), asks=()):
        return {**upd(recv, U, u, bids, asks), "market": "usdm", "symbol": "ETHUSDT", "stream": "ethusdt@depth@100ms",
                "event_time": recv - 5 * MS, "transaction_time": recv - 9 * MS, "prev_update_id": pu}

    root = tmp_path / "archive"
    write(root, "depth_rest_snapshot", [{**rest(T0 + 5 * S, 50, [(3000.0, 1.0)], [(3001.0, 2.0)]), "market": "usdm",
                                         "symbol": "ETHUSDT", "stream": "ethusdt@depth@100ms"}])
    write(root, "depth_update", [
        fut(T0 + 4 * S, 45, 48, 40, bids=[(2999.0, 1.0)]),  # before the snapshot's id: stale
        fut(T0 + 5200 * MS, 49, 52, 48, bids=[(3000.0, 1.5)]),  # U <= 50 <= u: bridges
        fut(T0 + 6 * S, 53, 55, 52, asks=[(3001.0, 0.0), (3002.0, 1.0)]),  # pu = the previous u
        fut(T0 + 7 * S, 60, 61, 58, bids=[(3000.5, 1.0)]),  # pu 58 is not 55: a break
    ])
    out = tmp_path / "out"
    assert run_export(root, out) == 0
    e1, e2, e3 = T0 + 5200 * MS - 5 * MS, T0 + 6 * S - 5 * MS, T0 + 7 * S - 5 * MS
    assert gunzip(out / "binance-futures" / "incremental_book_L2" / f"{DAY}_ETHUSDT.csv.gz").splitlines()[1:] == [
        f"binance-futures,ETHUSDT,{e1},{T0 + 5200 * MS},true,bid,3000,1.5",
        f"binance-futures,ETHUSDT,{e1},{T0 + 5200 * MS},true,ask,3001,2",
        f"binance-futures,ETHUSDT,{e2},{T0 + 6 * S},false,ask,3001,0",
        f"binance-futures,ETHUSDT,{e2},{T0 + 6 * S},false,ask,3002,1",
        f"binance-futures,ETHUSDT,{e3},{T0 + 7 * S},false,bid,3000,0",
        f"binance-futures,ETHUSDT,{e3},{T0 + 7 * S},false,ask,3002,0",
    ]


def test_symbols_filter_and_user_errors(archive, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_export(archive, out, "tardis", "--symbols", "ethusdt") == 0
    assert [p.name for p in out.rglob("*.gz")] == [f"{DAY}_ETHUSDT.csv.gz"]
    assert query.main(["export", "--format", "tardis", "--date", "2026-13-01", "--archive", str(archive)]) == 2
    assert "--date" in capsys.readouterr().err
    assert query.main(["export", "--format", "tardis", "--date", "2026-11-01", "--archive", str(archive),
                       "--out", str(out)]) == 2
    assert "holds no data for 2026-11-01" in capsys.readouterr().err


def test_reads_a_fleets_merged_files(tmp_path):
    root = tmp_path / "fleet"
    for name, rows in (("depth_update", UPDATES), ("depth_rest_snapshot", REST), ("trade", TRADES)):
        write(root, name, rows, fleet=True)
    out = tmp_path / "out"
    assert run_export(root, out) == 0
    assert gunzip(out / "binance" / "incremental_book_L2" / f"{DAY}_BTCUSDT.csv.gz") == GOLDEN_L2
    assert gunzip(out / "binance" / "trades" / f"{DAY}_BTCUSDT.csv.gz") == GOLDEN_TRADES


def test_reads_an_s3_archive_named_by_the_environment(archive, tmp_path, monkeypatch):
    """The same golden files from the archive uploaded to a real S3 server (moto), named by
    ORDERBOOK_ARCHIVE_URL (no --archive)."""
    from support.s3 import MotoServer, s3_client

    with MotoServer() as moto:
        client = s3_client(moto.url)
        client.create_bucket(Bucket="books")
        for f in archive.rglob("*.parquet"):
            client.upload_file(str(f), "books", f"prod/{f.relative_to(archive).as_posix()}")
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
                     "AWS_ENDPOINT_URL_S3": moto.url, "ORDERBOOK_ARCHIVE_URL": "s3://books/prod"}.items():
            monkeypatch.setenv(k, v)
        out = tmp_path / "out"
        assert query.main(["export", "--format", "tardis", "--date", DAY, "--out", str(out)]) == 0
    assert gunzip(out / "binance" / "incremental_book_L2" / f"{DAY}_BTCUSDT.csv.gz") == GOLDEN_L2
    assert gunzip(out / "binance" / "trades" / f"{DAY}_BTCUSDT.csv.gz") == GOLDEN_TRADES


def test_numbers_are_plain_decimals():
    assert [bt.num(x) for x in (100.0, 99.5, 1e-05, 0.1, 1e16, 123456789.125)] == [
        "100", "99.5", "0.00001", "0.1", "10000000000000000", "123456789.125"]


# --------------------------------------------------------------------------- the book rules (sans-I/O)


def test_a_snapshot_that_replaces_a_known_book_starts_a_new_block():
    rows = bt.L2Rows("spot")
    assert len(rows.start(0, 10, [(1.0, 1.0)], [(2.0, 1.0)])) == 2
    # the known book is at 10; a snapshot at 20 is pending; an event 21-21 does not continue 10 but
    # bridges 20: the book is replaced while "known" throughout, so the reader's book is deleted
    # (update rows: back-to-back blocks would read as one) and a new block follows
    assert rows.snapshot(Snapshot(20, [(1.5, 3.0)], [(2.5, 1.0)]), 5, 5) == []
    out = rows.event(DiffEvent(21, 21, None, [(1.5, 4.0)], []), 6, 7)
    assert out[0] == bt.Clear(6, 7)
    assert [(r.is_snapshot, r.bid, r.price, r.amount) for r in out[1:]] == [
        (False, True, 1.0, 0.0), (False, False, 2.0, 0.0), (True, True, 1.5, 4.0), (True, False, 2.5, 1.0)]
    assert (rows.stats.snapshot_blocks, rows.stats.breaks) == (2, 0)


# --------------------------------------------------------------------------- hftbacktest


def expected_books(archive: Path) -> list[tuple[int, bool, list, list]]:
    """Our builder's whole book over the day, as the export writes it: (recv µs, known, bids, asks)
    after each diff event, the first entry the book at 00:00. Whole: every level the snapshots and
    events gave, past the snapshots' horizon too (the export writes them all; nothing invented).

    The literal rows are fed to the builder in the exchange's order (each snapshot before the
    first event whose ``u`` exceeds its id); the archive's own rebuild (``book_at``,
    ``iter_books``, which keep only the levels the horizon proves) must agree: the same known
    flags, and its proven levels the leading levels of this book."""
    b = BookBuilder("spot")
    feed = sorted([(r["last_update_id"], 1, r) for r in REST] + [(u["last_update_id"], 0, u) for u in UPDATES],
                  key=lambda x: x[:2])
    out: list[tuple[int, bool, list, list]] = []
    for _id, is_snapshot, r in feed:
        if not out and r["recv_time"] >= T0:
            out.append((T0, b.status is Status.KNOWN, *b.top(1000)))
        levels = ([(x["price"], x["qty"]) for x in r["bids"]], [(x["price"], x["qty"]) for x in r["asks"]])
        if is_snapshot:
            b.snapshot(Snapshot(r["last_update_id"], *levels))
            continue
        res = b.event(DiffEvent(r["first_update_id"], r["last_update_id"], None, *levels))
        if r["recv_time"] >= T0 and res.outcome is not Outcome.STALE:
            out.append((r["recv_time"], b.status is Status.KNOWN, *b.top(1000)))

    start = book_at(str(archive), "spot", "BTCUSDT", T0)
    archived = [(T0, start.last_update_id is not None, start.bids, start.asks)]
    archived += [(a.recv_time_us, a.known, a.bids, a.asks)
                 for a in iter_books(str(archive), "spot", "BTCUSDT", T0, T0 + 24 * H, depth=1000)]
    assert [(t, k) for t, k, *_ in archived] == [(t, k) for t, k, *_ in out]
    for (t, _k, bids, asks), (_t, _k2, proven_bids, proven_asks) in zip(out, archived):
        assert (bids[:len(proven_bids)], asks[:len(proven_asks)]) == (proven_bids, proven_asks), t
    return out


def backtest_books(source: str, export: Path, times_us: list[int]) -> tuple[dict, list[tuple[int | None, int | None, list]]]:
    """Run the docs' ``source`` snippet and backtest (in the backtesters' interpreter) and read the
    book at each time (µs): best bid and ask in ticks and the whole book as (side, tick, qty).
    Every sample time is at or after the day's first event (00:00), where hftbacktest's clock
    starts. Returns the runner's whole answer too (validation, counts)."""
    res = backtesters.run(source, export, T0, *times_us)
    assert [b["timestamp"] for b in res["books"]] == [t * 1000 for t in times_us]
    seen = [(tick(b["best_bid"]), tick(b["best_ask"]), sorted((side, tick(px), qty) for side, px, qty in b["levels"]))
            for b in res["books"]]
    return res, seen


TICK = 0.01  # the docs' default tick size


def tick(price: float) -> int | None:
    """A price in ticks (hftbacktest keeps ticks: 10080 * 0.01 need not be 100.8); None for NaN."""
    return None if np.isnan(price) else round(price / TICK)


def sample_times(books) -> list[int]:
    """Just after each change (events here are ms apart)."""
    return [t + 1 for t, *_ in books]


def check_books(books, seen) -> None:
    """hftbacktest's book equals ours after every change: the whole book while ours is known
    (nothing left over from before a break), an empty one while ours is unknown (not a stale one)."""
    assert [k for _t, k, *_ in books] == [True, True, True, False, True, True]
    assert len(seen) == len(books)
    for (t, known, bids, asks), (best_bid, best_ask, levels) in zip(books, seen):
        if known:
            assert (best_bid, best_ask) == (tick(bids[0][0]), tick(asks[0][0])), t
            assert levels == sorted([("bid", tick(p), q) for p, q in bids] + [("ask", tick(p), q) for p, q in asks]), t
        else:
            assert (levels, best_bid, best_ask) == ([], None, None), t


def library_dtype(d: dict) -> np.dtype:
    """hftbacktest's event dtype as the runner described it (names, formats, offsets, size)."""
    return np.dtype({k: d[k] for k in ("names", "formats", "offsets", "itemsize")}, align=d["aligned"])


def test_event_flags_equal_the_installed_library():
    lib = backtesters.run("constants")
    assert sorted(lib["flags"]) == sorted(backtesters.FLAG_NAMES)
    for name, value in lib["flags"].items():
        assert getattr(bt, name) == value, name
    assert bt.EVENT_DTYPE == library_dtype(lib["event_dtype"])
    assert bt.EVENT_DTYPE.isalignedstruct == lib["event_dtype"]["aligned"]


@pytest.mark.slow
def test_hftbacktest_converter_reads_our_csv_and_its_book_is_ours(archive, tmp_path):
    out = tmp_path / "csv"
    assert run_export(archive, out) == 0
    books = expected_books(archive)
    run, seen = backtest_books("hftbacktest-convert", out, sample_times(books))
    assert run["validation_error"] is None
    assert run["event_kinds"].get(str(bt.TRADE_EVENT)) == 3
    assert run["mids"] >= 24 * 60 - 1  # the docs' loop ran through the day
    check_books(books, seen)


def test_direct_npz_passes_the_validator_and_never_mixes_books_across_a_break(archive, tmp_path):
    out = tmp_path / "npz"
    assert run_export(archive, out, "hftbacktest") == 0
    books = expected_books(archive)
    run, seen = backtest_books("hftbacktest-npz", out, sample_times(books))
    arr = np.load(run["data"][0])["data"]
    assert run["npz_dtype_is_event_dtype"] is True  # as the backtester's numpy loads it
    assert run["validation_error"] is None
    assert len(arr) > 0 and ((arr["local_ts"] - arr["exch_ts"]) >= 0).all()
    assert int(((arr["ev"] & 0xFF) == bt.TRADE_EVENT).sum()) == 3
    check_books(books, seen)


def test_a_negative_feed_latency_is_raised_and_reported(tmp_path, capsys):
    root = tmp_path / "archive"
    skewed = trade("spot", "SOLUSDT", T0 + 5 * S, 1, 20.0, 1.0, False)
    skewed["trade_time"] = T0 + 5 * S + 7 * MS  # the exchange's clock 7 ms ahead of ours
    write(root, "trade", [skewed, trade("spot", "SOLUSDT", T0 + 6 * S, 2, 20.1, 1.0, True)])
    assert run_export(root, tmp_path / "npz", "hftbacktest") == 0
    assert "1 events had a negative feed latency (worst -7000 µs)" in capsys.readouterr().out
    data = np.load(tmp_path / "npz" / "binance" / "hftbacktest" / f"{DAY}_SOLUSDT.npz")["data"]
    assert data["local_ts"].tolist() == [(T0 + 5 * S + 7 * MS) * 1000, (T0 + 6 * S) * 1000]
    assert data["exch_ts"].tolist() == [(T0 + 5 * S + 7 * MS) * 1000, (T0 + 6 * S - 3 * MS) * 1000]
    assert run_export(root, tmp_path / "csv") == 0  # the CSV keeps the times as recorded, and says so
    assert "SOLUSDT trades: 1 rows with local_timestamp before timestamp (worst -7000 µs" in capsys.readouterr().out


def test_order_events_keeps_both_orders_on_interleaved_streams(tmp_path):
    rng = np.random.default_rng(7)
    n = 5000
    data = np.zeros(n, bt.EVENT_DTYPE)
    data["local_ts"] = np.sort(rng.integers(0, 10**9, n))
    data["exch_ts"] = data["local_ts"] - rng.integers(0, 5 * 10**6, n)  # latencies up to 5 ms: reordered
    data["ev"] = bt.DEPTH_EVENT
    data["px"] = np.arange(n)
    out = bt.order_events(data)
    np.savez(tmp_path / "ordered.npz", data=out)
    assert backtesters.run("validate", tmp_path / "ordered.npz")["validation_error"] is None
    # every row once as a local event and once as an exchange event
    local = out[(out["ev"] & bt.LOCAL_EVENT) != 0]
    exch = out[(out["ev"] & bt.EXCH_EVENT) != 0]
    assert sorted(local["px"]) == sorted(exch["px"]) == list(range(n))
    assert len(out) < 2 * n  # rows in order in both keep one row with both flags


# --------------------------------------------------------------------------- quotes and book snapshots


def ticker(market, symbol, recv, u, bid, bid_qty, ask, ask_qty, event_ms=None):
    return {"market": market, "symbol": symbol, "stream": f"{symbol.lower()}@bookTicker", "recv_time": recv,
            "session_id": 1, "seq": u, "update_id": u, "best_bid": bid, "best_bid_qty": bid_qty, "best_ask": ask,
            "best_ask_qty": ask_qty, "event_time": event_ms, "transaction_time": event_ms}


def partial(recv, u, bids, asks, stream="btcusdt@depth5@100ms"):
    return {"market": "spot", "symbol": "BTCUSDT", "stream": stream, "recv_time": recv, "session_id": 1, "seq": u,
            "last_update_id": u, "bids": lv(*bids), "asks": lv(*asks), "event_time": None, "transaction_time": None,
            "first_update_id": None, "prev_update_id": None}


def rebuilt(time, known, bids, asks, stream="ethusdt@depth@100ms"):
    return {"market": "usdm", "symbol": "ETHUSDT", "stream": stream, "time": time,
            "last_update_id": 9 if known else None, "known": known,
            # schema 2: the leading levels both sides prove (these rows hold only proven levels)
            "known_levels": min(len(bids), len(asks)) if known else 0, "bids": lv(*bids), "asks": lv(*asks)}


def write_tops(root: Path) -> Path:
    write(root, "book_ticker", [
        ticker("spot", "BTCUSDT", T0 + 10 * MS, 1, 100.0, 1.5, 100.5, 0.25),  # spot sends no time: recv_time
        ticker("usdm", "ETHUSDT", T0 + 20 * MS, 2, 3000.0, 2.0, 3000.5, 4.0, event_ms=T0 + 18 * MS),
    ])
    write(root, "depth_snapshot", [
        partial(T0 + 30 * MS, 5, [(100.0, 1.0), (99.9, 2.0)], [(100.5, 3.0)]),
        partial(T0 + 40 * MS, 6, [(100.0, 1.0)], [(100.5, 3.0)], stream="btcusdt@depth@100ms@1"),  # shallower
    ])
    write(root, "book_snapshot", [
        rebuilt(T0 + S, True, [(3000.0, 2.0)], [(3000.5, 4.0), (3001.0, 1.0)]),
        rebuilt(T0 + 2 * S, False, [], []),  # unknown: no row (nothing is invented)
        rebuilt(T0 + S, True, [(2999.0, 1.0)], [(3002.0, 1.0)], stream="ethusdt@depth"),  # the quieter stream: not mixed in
    ], time_col="time")
    return root


@pytest.fixture
def tops(tmp_path: Path) -> Path:
    return write_tops(tmp_path / "archive")


def test_quotes_and_book_snapshots_golden(tops, tmp_path):
    out = tmp_path / "out"
    assert run_export(tops, out) == 0
    quotes = "exchange,symbol,timestamp,local_timestamp,ask_amount,ask_price,bid_price,bid_amount\n"
    for kind in ("quotes", "book_ticker"):
        assert gunzip(out / "binance" / kind / f"{DAY}_BTCUSDT.csv.gz") == (
            quotes + f"binance,BTCUSDT,{T0 + 10 * MS},{T0 + 10 * MS},0.25,100.5,100,1.5\n")
        assert gunzip(out / "binance-futures" / kind / f"{DAY}_ETHUSDT.csv.gz") == (
            quotes + f"binance-futures,ETHUSDT,{T0 + 18 * MS},{T0 + 20 * MS},4,3000.5,3000,2\n")
    head5 = ",".join(f"{s}[{i}].{v}" for i in range(5) for s in ("asks", "bids") for v in ("price", "amount"))
    assert gunzip(out / "binance" / "book_snapshot_5" / f"{DAY}_BTCUSDT.csv.gz") == (
        f"exchange,symbol,timestamp,local_timestamp,{head5}\n"
        f"binance,BTCUSDT,{T0 + 30 * MS},{T0 + 30 * MS},100.5,3,100,1,,,99.9,2" + ",,,," * 3 + "\n")
    assert gunzip(out / "binance-futures" / "book_snapshot_5" / f"{DAY}_ETHUSDT.csv.gz") == (
        f"exchange,symbol,timestamp,local_timestamp,{head5}\n"
        f"binance-futures,ETHUSDT,{T0 + S},{T0 + S},3000.5,4,3000,2,3001,1,," + ",,,," * 3 + "\n")
    line25 = gunzip(out / "binance" / "book_snapshot_25" / f"{DAY}_BTCUSDT.csv.gz").splitlines()
    assert line25[0].count(",") == 3 + 100 and line25[1].count(",") == 3 + 100 and len(line25) == 2


# --------------------------------------------------------------------------- NautilusTrader


def test_nautilus_loads_our_files(archive, tmp_path):
    write_tops(archive)
    out = tmp_path / "csv"
    assert run_export(archive, out) == 0
    ns = backtesters.run("nautilus", out)  # the loaded objects, each as the tuple compared below
    deltas, trades, quotes = ([tuple(x) for x in ns[k]] for k in ("deltas", "trades", "quotes"))
    depth = ns["depth"]

    assert len(deltas) == len(GOLDEN_L2.splitlines()) - 1
    assert ns["delta_instruments"][0] == "BTCUSDT.BINANCE"
    assert deltas[0] == ("BUY", 100.0, 1.2, T0 * 1000, T0 * 1000)
    assert deltas[-1] == ("SELL", 100.9, 1.0, (T0 + H + 2 * S - MS) * 1000, (T0 + H + 2 * S) * 1000)

    assert len(trades) == 3
    assert trades[0] == ("1", "BUYER", 100.5, 0.1, (T0 + 197 * MS) * 1000, (T0 + 200 * MS) * 1000)
    assert trades[-1] == ("3", "BUYER", 100.9, 0.5, (T0 + 24 * H - S - 3 * MS) * 1000, (T0 + 24 * H - S) * 1000)
    assert trades[1][1] == "SELLER"  # is_buyer_maker: the taker sold

    # without the precisions the docs give, 3000.5 would read 3001 (inferred from "3000")
    assert quotes == [(3000.0, 2.0, 3000.5, 4.0, (T0 + 18 * MS) * 1000, (T0 + 20 * MS) * 1000)]
    assert len(depth) == 1
    assert [tuple(level) for level in depth[0]["bids"][:2]] == [(100.0, 1.0), (99.9, 2.0)]
    assert tuple(depth[0]["asks"][0]) == (100.5, 3.0)
