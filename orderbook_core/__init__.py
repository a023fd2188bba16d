"""The kernel below both processes: what the collector and the archive must agree on.

Binance's facts as data (:mod:`.streams`: markets, stream kinds, routes, limits, weights,
cadences), the decoding of every payload with one level validator (:mod:`.payloads`), the
diff-depth continuity rules as pure predicates (:mod:`.continuity`), the buffer contract
(:mod:`.buffer`: tables, migrations, records, packed levels, reads) and the one exception root
(:mod:`.errors`). It imports neither ``orderbook_collector`` nor ``orderbook_assets``;
``tests/test_layers.py`` keeps it so.
"""
