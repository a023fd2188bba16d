"""The simulated Binance exchange: a tool for trying orderbook offline and for tests.

It is not part of the product packages (nor of their wheel).
"""

from .exchange import Exchange  # noqa: F401
