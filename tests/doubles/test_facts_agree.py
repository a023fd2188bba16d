"""The product's Binance facts (``orderbook_core.streams``) and the simulator's own
(``tools.simulator.facts``), written apart from Binance's documentation, agree fact by fact.

Each side is checked against the other rather than against itself: the simulator never
imports the product (``test_simulator_imports.py``), so a wrong route, limit or weight in
either table shows up here as a named disagreement. All are collected, then reported at once.
"""

from __future__ import annotations

import orderbook_core.streams as product
import tools.simulator.facts as sim

SYMBOLS = ("btcusdt", "1000pepeusdt")
#: Names neither market serves, or only one does (each market is asked about each).
ODD_NAMES = (
    "BTCUSDT@trade", "btcusdt@Trade", "btcusdt@bookticker", "btcusdt", "@trade", "btcusdt@", "",
    "btc-usdt@trade", "btcusdt@trade@100ms", "btcusdt@aggTrade@100ms",
    "btcusdt@depth@1000ms", "btcusdt@depth20@1000ms", "btcusdt@depth@250ms", "btcusdt@depth10@250ms",
    "btcusdt@depth@500ms", "btcusdt@depth5@500ms", "btcusdt@depth@100ms", "btcusdt@depth20@100ms",
    "btcusdt@depth7", "btcusdt@depth15@100ms", "btcusdt@depth20@", "btcusdt@depth@10ms",
    "btcusdt@kline_1m", "btcusdt@markPrice", "btcusdt@markPrice@1s", "btcusdt@forceOrder",
    "btcusdt@ticker", "btcusdt@blockTrade", "btcusdt@rpiDepth", "!bookTicker", "btcusdt@depth@100ms@100ms",
    "btcusdt@markPrice@3s", "btcusdt@markPrice@1000ms", "btcusdt@forceOrder@1s", "!markPrice@arr", "!forceOrder@arr",
)
#: Depth limits to weigh on both markets: every one up to past spot's 5000, and some beyond.
LIMITS = (*range(-1, 5003), 6000, 10_000)


def kind_pairs() -> list[tuple[product.Kind, sim.Kind]]:
    """Each product kind with the simulator kind archived as the same dataset."""
    return [(pk, sk) for pk in product.Kind for sk in sim.SERVED_KINDS if sk.dataset == pk.dataset]


def parsed(spec) -> tuple | None:
    if spec is None:
        return None
    return spec.symbol, spec.kind, spec.type.dataset, spec.levels, spec.cadence_us


def disagreements() -> list[str]:
    bad: list[str] = []

    def same(what: str, ours, theirs) -> None:
        if ours != theirs:
            bad.append(f"{what}: product {ours!r}, simulator {theirs!r}")

    same("markets", sorted(m.value for m in product.Market), sorted(m.value for m in sim.Market))
    pairs = kind_pairs()
    same("kinds (as datasets)", sorted(pk.dataset for pk in product.Kind), sorted(sk.dataset for sk in sim.SERVED_KINDS))
    for pk, sk in pairs:
        same(f"USD-M route of {pk.dataset}", product.USDM_ROUTE[pk], sim.USDM_ROUTE[sk].value)
        spec = product.spec("btcusdt", {"depth_snapshot": "depth20", "depth_update": "depth"}.get(pk.dataset, sk.value),
                            product.Market.USDM)
        same(f"USD-M route of a {pk.dataset} stream", spec.route if spec else None, sim.USDM_ROUTE[sk].value)
    for pm in product.Market:
        sm = sim.Market(pm.value)
        m = pm.value
        same(f"{m} streams per connection", product.MAX_STREAMS[pm], sim.MAX_STREAMS[sm])
        same(f"{m} incoming messages per second", product.MAX_INCOMING_PER_SEC[pm], sim.MAX_INCOMING_PER_SEC[sm])
        same(f"{m} REST weight per minute", product.REST_WEIGHT_PER_MINUTE[pm], sim.REST_WEIGHT_PER_MINUTE[sm])
        same(f"{m} default depth limit", product.DEPTH_DEFAULT_LIMIT[pm], sim.DEPTH_DEFAULT_LIMIT[sm])
        same(f"{m} depth path", product.DEPTH_PATH[pm], sim.DEPTH_PATH[sm])
        same(f"{m} exchangeInfo (path, weight)", product.EXCHANGE_INFO[pm], sim.EXCHANGE_INFO[sm])
        same(f"{m} exchangeInfo weight served", product.EXCHANGE_INFO[pm][1], sim.REST_WEIGHT[sim.EXCHANGE_INFO[sm][0]])
        for limit in LIMITS:
            same(f"{m} depth weight at limit {limit}", product.depth_weight(pm, limit), sim.depth_weight(sm, limit))
        names = {f"{s}@{k}" for s in SYMBOLS for mk in sim.STREAM_NAMES.values() for k in mk} | set(ODD_NAMES)
        for name in sorted(names):
            same(f"{m} stream name {name!r}", parsed(product.parse_stream_name(name, pm)),
                 parsed(sim.parse_stream_name(name, sm)))
    same("USD-M depth limits", product.USDM_DEPTH_LIMITS, sim.USDM_DEPTH_LIMITS)
    same("open interest markets", sorted(m.value for m in product.OPEN_INTEREST),
         sorted(m.value for m in sim.OPEN_INTEREST_PATH))
    for pm, (path, weight) in product.OPEN_INTEREST.items():
        sm = sim.Market(pm.value)
        same(f"{pm.value} open interest (path, weight)", (path, weight),
             (sim.OPEN_INTEREST_PATH[sm], sim.REST_WEIGHT.get(sim.OPEN_INTEREST_PATH[sm])))
    return bad


def test_the_product_and_the_simulator_agree_on_binances_facts():
    bad = disagreements()
    assert not bad, f"{len(bad)} disagreements between orderbook_core.streams and tools/simulator/facts.py:\n" + "\n".join(bad)


def test_every_kind_and_name_is_compared():
    """The comparison above covers what it claims: every product kind has its simulator kind,
    and valid names of every kind on both markets are among the names parsed."""
    assert {pk for pk, _ in kind_pairs()} == set(product.Kind)
    for m in sim.Market:
        types = {f.type for f in sim.STREAM_NAMES[m].values()}
        futures_only = {sim.Kind.MARK_PRICE, sim.Kind.FORCE_ORDER}  # spot has no such stream
        assert types == set(sim.SERVED_KINDS) - (futures_only if m is sim.Market.SPOT else set()), m


def test_a_planted_wrong_route_is_named(monkeypatch):
    """The old mistake, USD-M trade on /market, is caught and named."""
    monkeypatch.setitem(product.USDM_ROUTE, product.Kind.TRADE, "market")
    bad = disagreements()
    assert "USD-M route of trade: product 'market', simulator 'public'" in bad
    assert "USD-M route of a trade stream: product 'market', simulator 'public'" in bad


def test_the_derivatives_payload_keys_agree_with_the_replays_encoder():
    """markPriceUpdate's keys and forceOrder's order keys, in each futures market's order, as the
    simulator sends them and as the product's spec encodes them for ``orderbook replay``
    (``orderbook_core.kinds``): COIN-M's ``P`` before ``i`` and its pair ``ps`` included."""
    from orderbook_core import kinds

    for m in sim.FUTURES:
        pm = product.Market(m.value)
        assert kinds.MARK_PRICE.wire_order[pm] == sim.MARK_PRICE_KEYS[m], m
        (event, time, (o, order)) = kinds.LIQUIDATION.wire_order[pm]
        assert (event, time, o, order) == ("e", "E", "o", sim.FORCE_ORDER_KEYS[m]), m


def test_the_daily_files_layout_agrees_with_the_reconciliation():
    """The exchange's daily files as the simulator writes them and as ``orderbook reconcile``
    reads them (``orderbook_assets.analytics.reconcile``): folders and columns."""
    from orderbook_assets.analytics import reconcile as rc
    from orderbook_assets.archive import datasets as ds

    kinds = {sim.Kind.TRADE: ds.TRADE, sim.Kind.AGG_TRADE: ds.AGG_TRADE}
    assert {m.value: p for m, p in sim.DAILY_PATH.items()} == rc.MARKET_PATHS
    for kind, dataset in kinds.items():
        assert sim.DAILY_KIND[kind] == rc.KINDS[dataset].folder
        for m in sim.DAILY_PATH:  # the markets whose daily files are simulated (not COIN-M)
            assert sim.DAILY_COLUMNS[(m, kind)] == rc.KINDS[dataset].columns[m.value], (m, kind)
