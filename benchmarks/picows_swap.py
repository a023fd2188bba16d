"""Run the collector on picows's ``websockets``-compatible client, in this process only (issue 22).

The product imports ``websockets``; this swaps the names its connection code takes from it
(``connect``, ``ConnectionClosed``, ``InvalidStatus``, ``InvalidURI``) for
``picows.websockets``'s, so the same collector code can be measured and tested on picows
without changing the product. The simulated exchange (``tools/simulator``) stays a
``websockets`` server.

Two uses, both with a Python that has picows (never the product's venv):

* ``benchmarks/ingest_vs_client.py --collector-transport picows.websockets`` calls :func:`swap`;
* as a pytest plugin, to run the protocol tests on picows::

    PYTHONPATH=$PWD:$PWD/benchmarks /path/to/venv-with-picows/bin/python -m pytest -p picows_swap \\
        tests/collector/test_connection.py tests/collector/test_long_urls.py
"""

from __future__ import annotations

import picows.websockets.exceptions as pw_exc
from picows.websockets.asyncio.client import connect as pw_connect

from orderbook_collector.connection import backoff, sessions, subscriptions


def swap() -> None:
    """Point the collector's connection modules at picows's websockets-compatible names."""
    sessions.connect = pw_connect
    sessions.ConnectionClosed = pw_exc.ConnectionClosed
    sessions.InvalidStatus = pw_exc.InvalidStatus
    subscriptions.ConnectionClosed = pw_exc.ConnectionClosed
    backoff.InvalidStatus = pw_exc.InvalidStatus
    backoff.InvalidURI = pw_exc.InvalidURI


def pytest_configure(config) -> None:
    swap()
