"""The producers of derived datasets: each reads archived hours, computes a derived object and
publishes it through the archive's one recipe (``orderbook_assets.archive.derived``).

``bars``: the ``top_of_book_1s`` bars; ``book_hours``: ``book_snapshot`` and its end states.
The Dagster assets in ``defs`` call them. ``analytics`` below only reads the archive: it never
imports the publishing recipe nor writes to the store (``tests/test_layers.py``).
"""
