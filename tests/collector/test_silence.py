"""The silence detector, sans I/O: literal stream specs and times (µs), milliseconds to run."""

from __future__ import annotations

from orderbook_collector.feed.silence import End, Reason, Resumed, Rules, Silence, Silent, depth_version
from orderbook_core.streams import Market, spec

S = 1_000_000
T0 = 1_700_000_000 * S
RULES = Rules(cadences=10, floor_us=5 * S, grace_us=5 * S, never_us=300 * S)

DEPTH20 = spec("btcusdt", "depth20@100ms")  # on the clock: late after max(10 × 100 ms, 5 s) = 5 s
DEPTH5_1S = spec("btcusdt", "depth5")  # 1000 ms: late after 10 s
DIFF = spec("btcusdt", "depth@100ms")
TRADE = spec("btcusdt", "trade")
AGG = spec("btcusdt", "aggTrade")
TICKER = spec("btcusdt", "bookTicker")
OTHER = spec("ethusdt", "depth20@100ms")  # keeps the market alive


def feed(det: Silence, streams, start_us: int, end_us: int, every_us: int) -> None:
    """Messages of ``streams`` every ``every_us`` from ``start_us`` up to ``end_us``, ticking each second."""
    t = start_us
    while t <= end_us:
        for s in streams:
            det.message(s.key, t)
        t += every_us


def ticks(det: Silence, start_us: int, end_us: int, step_us: int = S) -> list:
    out = []
    t = start_us
    while t <= end_us:
        out += det.due(t)
        t += step_us
    return out


def run(det: Silence, flowing, start_us: int, end_us: int, every_us: int = 100_000) -> list:
    """``flowing`` streams send every ``every_us``; the detector ticks every 100 ms."""
    out = []
    t = start_us
    while t <= end_us:
        for s in flowing:
            det.message(s.key, t)
        out += det.due(t)
        t += every_us
    return out


def test_a_clock_driven_stream_is_late_after_its_cadences_and_resumes_with_its_next_message():
    det = Silence(RULES)
    det.subscribed([DEPTH20, OTHER], T0)
    assert run(det, [DEPTH20, OTHER], T0, T0 + 3 * S) == []
    last = T0 + 3 * S
    # DEPTH20 stops; OTHER flows. Late exactly 5 s after its last message, not before.
    assert run(det, [OTHER], last + 100_000, last + 5 * S - 100_000) == []
    assert det.due(last + 5 * S) == [Silent(DEPTH20.key, last, Reason.LATE, last + 5 * S)]
    assert run(det, [OTHER], last + 5 * S, last + 20 * S) == []  # judged once
    assert set(det.silent) == {DEPTH20.key}
    det.message(DEPTH20.key, last + 21 * S)
    assert det.due(last + 21 * S) == [Resumed(DEPTH20.key, last + 21 * S, last, Reason.LATE, End.MESSAGES)]
    assert det.silent == {}


def test_a_slow_clock_stream_gets_ten_cadences():
    det = Silence(RULES)
    det.subscribed([DEPTH5_1S, OTHER], T0)
    det.message(DEPTH5_1S.key, T0)
    assert run(det, [OTHER], T0, T0 + 10 * S - 100_000) == []
    assert det.due(T0 + 10 * S) == [Silent(DEPTH5_1S.key, T0, Reason.LATE, T0 + 10 * S)]


def test_every_stream_of_the_market_stopping_together_is_a_stall_not_a_silence():
    det = Silence(RULES)
    det.subscribed([DEPTH20, OTHER], T0)
    run(det, [DEPTH20, OTHER], T0, T0 + S)
    assert ticks(det, T0 + S, T0 + 600 * S) == []


def test_trades_silent_while_agg_trades_flow_is_a_contradiction():
    det = Silence(RULES)
    det.subscribed([TRADE, AGG], T0)
    det.message(TRADE.key, T0 + 1 * S)
    det.message(AGG.key, T0 + 1 * S + 2_000)  # the aggTrade of that trade, 2 ms later: no evidence
    assert ticks(det, T0 + S, T0 + 60 * S) == []
    det.message(AGG.key, T0 + 70 * S)  # a new aggTrade: trades happened, the trade stream says nothing
    assert det.due(T0 + 75 * S - 1) == []
    assert det.due(T0 + 75 * S) == [Silent(TRADE.key, T0 + 1 * S, Reason.AGG_TRADES_FLOW, T0 + 75 * S)]
    det.message(TRADE.key, T0 + 80 * S)
    assert det.due(T0 + 80 * S) == [Resumed(TRADE.key, T0 + 80 * S, T0 + 1 * S, Reason.AGG_TRADES_FLOW)]


def test_a_trade_arriving_with_its_agg_trade_is_no_contradiction():
    det = Silence(RULES)
    det.subscribed([TRADE, AGG], T0)
    for i in range(1, 60):
        t = T0 + i * 7 * S
        det.message(AGG.key, t)  # either may come first, a few ms apart
        det.message(TRADE.key, t + 3_000)
        assert det.due(t + 3_000) == []
    assert ticks(det, T0 + 420 * S, T0 + 900 * S) == []


def test_agg_trades_silent_while_trades_flow_is_a_contradiction():
    det = Silence(RULES)
    det.subscribed([TRADE, AGG], T0)
    det.message(AGG.key, T0 + S)
    det.message(TRADE.key, T0 + S)
    feed(det, [TRADE], T0 + 10 * S, T0 + 20 * S, S)
    assert det.due(T0 + 14 * S) == []
    assert det.due(T0 + 15 * S) == [Silent(AGG.key, T0 + S, Reason.TRADES_FLOW, T0 + 15 * S)]


def test_diff_depth_silent_while_book_ticker_moves_is_a_contradiction():
    det = Silence(RULES)
    det.subscribed([DIFF, TICKER], T0)
    det.message(DIFF.key, T0 + 100_000)
    det.message(TICKER.key, T0 + 50_000)
    det.message(TICKER.key, T0 + 10 * S)
    assert det.due(T0 + 15 * S) == [Silent(DIFF.key, T0 + 100_000, Reason.BOOK_CHANGES, T0 + 15 * S)]


def test_diff_depth_is_judged_against_partial_depth_changes_only():
    det = Silence(RULES)
    det.subscribed([DIFF, DEPTH20], T0)
    det.message(DIFF.key, T0)
    frame = '{"stream":"btcusdt@depth20@100ms","data":{"lastUpdateId":%d,"bids":[],"asks":[]}}'
    # partial depth every 100 ms with the same update id: the book stands still, diff depth rightly quiet
    for i in range(1, 600):
        det.message(DEPTH20.key, T0 + i * 100_000, frame % 160)
    assert ticks(det, T0, T0 + 60 * S) == []
    det.message(DEPTH20.key, T0 + 60 * S, frame % 161)  # the book moved
    assert det.due(T0 + 65 * S) == [Silent(DIFF.key, T0, Reason.BOOK_CHANGES, T0 + 65 * S)]


def test_an_illiquid_symbol_quiet_for_ten_minutes_is_not_silent():
    det = Silence(RULES)
    det.subscribed([TRADE, AGG, DIFF, TICKER, DEPTH20], T0)
    det.message(TRADE.key, T0 + S)
    det.message(AGG.key, T0 + S + 1_000)
    det.message(DIFF.key, T0 + S)
    det.message(TICKER.key, T0 + S)
    frame = b'{"stream":"btcusdt@depth20@100ms","data":{"lastUpdateId":7,"bids":[],"asks":[]}}'
    out = []
    t = T0 + S
    while t <= T0 + 601 * S:  # ten minutes: the partial depth ticks on, unchanged; nothing else
        det.message(DEPTH20.key, t, frame)
        out += det.due(t)
        t += 100_000
    assert out == []


def test_a_stream_that_never_delivered_since_its_acknowledgement_is_silent_after_the_timeout():
    det = Silence(RULES)
    usdm_trade = spec("btcusdt", "trade", Market.USDM)
    usdm_depth = spec("btcusdt", "depth@100ms", Market.USDM)
    det.subscribed([usdm_trade, usdm_depth], T0)  # the trade stream on the wrong route: nothing ever
    out = run(det, [usdm_depth], T0, T0 + 300 * S - 100_000, every_us=S)
    assert out == []
    assert det.due(T0 + 300 * S) == [Silent(usdm_trade.key, T0, Reason.NEVER_DELIVERED, T0 + 300 * S)]


def test_a_stream_no_longer_carried_ends_its_silence_and_a_rotation_keeps_watching():
    det = Silence(RULES)
    det.subscribed([DEPTH20, OTHER], T0)
    det.message(DEPTH20.key, T0)
    run(det, [OTHER], T0, T0 + 5 * S)
    assert set(det.silent) == {DEPTH20.key}
    det.subscribed([DEPTH20, OTHER], T0 + 6 * S)  # a rotation's replacement: both carry it
    det.unsubscribed([DEPTH20.key, OTHER.key], T0 + 7 * S)  # the old connection closes
    assert det.due(T0 + 7 * S) == []  # still carried, still silent
    det.unsubscribed([DEPTH20.key, OTHER.key], T0 + 8 * S)
    assert det.due(T0 + 8 * S) == [Resumed(DEPTH20.key, T0 + 8 * S, T0, Reason.LATE, End.UNSUBSCRIBED)]
    assert det.silent == {}


def test_frames_of_streams_not_watched_are_ignored():
    det = Silence(RULES)
    det.message(TRADE.key, T0)
    assert det.due(T0 + 600 * S) == []


def test_depth_version_reads_spot_and_usdm_frames():
    assert depth_version('{"stream":"x","data":{"lastUpdateId":160,"bids":[]}}') == "160"
    assert depth_version(b'{"stream":"x","data":{"e":"depthUpdate","E":1,"U":157,"u":160,"pu":149}}') == b"160"
    assert depth_version(None) is None


def test_the_writer_stores_a_silence_and_its_end_and_coverage_shows_it_across_rounds(tmp_path):
    """Real buffer, the writer's store and the ledger's rounds: a silence that starts in one
    round and ends in the next is an open coverage row, then a closed one; the buffer's own
    'silent' row gets its end."""
    from orderbook_assets.archive import coverage
    from orderbook_core.buffer import ledger
    from orderbook_assets.archive.export import stream_table
    from orderbook_collector.writer.thread import store_records
    from orderbook_core import buffer
    from orderbook_core.buffer.records import SilenceRecord

    conn = buffer.connect(tmp_path / "b.sqlite3")
    usdm_trade = spec("btcusdt", "trade", Market.USDM)
    ids = buffer.stream_ids(conn, [(usdm_trade.key, "btcusdt", "trade", "usdm")])
    hour = T0 - T0 % buffer.HOUR_US
    since, judged, end = hour + 10 * S, hour + 310 * S, hour + 400 * S

    def cover(now_us: int) -> list[dict]:
        parts = ledger.plan_round(conn, hour, now_us)
        return coverage.continuity_rows(conn, parts, stream_table(conn))

    store_records(conn, ids, [], others=[SilenceRecord(usdm_trade.key, judged, "silent", since, None,
                                                       "never_delivered", None)])
    assert cover(judged + S) == [dict(record="silent", market="usdm", stream="btcusdt@trade", start_time=since,
                                      first_recv_time=judged, reason="never_delivered", dataset="trade")]
    store_records(conn, ids, [], others=[SilenceRecord(usdm_trade.key, end, "resumed", since, end,
                                                       "never_delivered", "unsubscribed")])
    assert conn.execute("SELECT event, end_us, ended_by FROM silence ORDER BY id").fetchall() == [
        ("silent", end, "unsubscribed"), ("resumed", end, "unsubscribed")]
    assert cover(end + S) == [dict(record="silent", market="usdm", stream="btcusdt@trade", start_time=since,
                                   first_recv_time=end, reason="never_delivered", dataset="trade", end_time=end,
                                   seconds=390.0, close_reason="unsubscribed")]


MARK_1S = spec("btcusdt", "markPrice@1s", Market.USDM)  # on the clock: late after max(10 × 1 s, 5 s) = 10 s
MARK_3S = spec("btcusdt", "markPrice", Market.USDM)  # 3 s: late after 30 s
FORCE = spec("btcusdt", "forceOrder", Market.USDM)  # a sample: may say nothing for hours
USDM_DEPTH = spec("ethusdt", "depth@100ms", Market.USDM)  # keeps the market alive


def test_a_mark_price_stream_that_misses_its_clock_is_late():
    det = Silence(RULES)
    det.subscribed([MARK_1S, MARK_3S, USDM_DEPTH], T0)
    det.message(MARK_1S.key, T0)
    det.message(MARK_3S.key, T0)
    assert run(det, [USDM_DEPTH], T0, T0 + 10 * S - 100_000) == []
    assert det.due(T0 + 10 * S) == [Silent(MARK_1S.key, T0, Reason.LATE, T0 + 10 * S)]
    assert run(det, [USDM_DEPTH], T0 + 10 * S, T0 + 30 * S - 100_000) == []
    assert det.due(T0 + 30 * S) == [Silent(MARK_3S.key, T0, Reason.LATE, T0 + 30 * S)]


def test_a_force_order_stream_quiet_for_hours_is_never_silent():
    det = Silence(RULES)
    det.subscribed([FORCE, USDM_DEPTH], T0)
    # nothing ever on forceOrder while the market flows: no liquidation is not a lost stream
    assert run(det, [USDM_DEPTH], T0, T0 + 3 * 3600 * S, every_us=10 * S) == []
    det.message(FORCE.key, T0 + 3 * 3600 * S)
    assert run(det, [USDM_DEPTH], T0 + 3 * 3600 * S, T0 + 6 * 3600 * S, every_us=10 * S) == []
