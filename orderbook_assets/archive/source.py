"""Where the archived books came from: Binance, or the simulated exchange of ``make demo``.

``ORDERBOOK_DATA_SOURCE=simulated`` (set by ``make demo``) makes the archive say so where an
analyst looks: a ``SIMULATED.txt`` object at the archive's root, written with every archived
hour, and a ``data_source`` entry in the Dagster materialization metadata. Unset, or
``binance``, the archive is real data and carries no marker.
"""

from __future__ import annotations

from enum import StrEnum

from orderbook_assets.archive import derived


class DataSource(StrEnum):
    """Where the books came from (``ORDERBOOK_DATA_SOURCE``, parsed in ``orderbook_assets.settings``)."""

    BINANCE = "binance"
    SIMULATED = "simulated"


BINANCE, SIMULATED = DataSource.BINANCE, DataSource.SIMULATED
MARKER_KEY = "SIMULATED.txt"
MARKER_TEXT = (
    "Every dataset in this archive was recorded from the simulated exchange of `make demo`\n"
    "(tools/simulator), not from Binance: the books are synthetic.\n"
)


def describe(source: DataSource) -> str:
    """What the Dagster UI shows as ``data_source``."""
    return "simulated exchange (make demo): synthetic books, not Binance" if source == SIMULATED else "Binance"


def mark(store) -> None:
    """Write the SIMULATED.txt marker at the archive's root unless it is there (verified like derived data)."""
    derived.publish_bytes(store, MARKER_KEY, MARKER_TEXT.encode(), if_absent=True)
