"""Where the archived books came from: Binance, or the simulated exchange of ``make demo``.

``ORDERBOOK_DATA_SOURCE=simulated`` (set by ``make demo``) makes the archive say so where an
analyst looks: a ``SIMULATED.txt`` object at the archive's root, written with every archived
hour, and a ``data_source`` entry in the Dagster materialization metadata. Unset, or
``binance``, the archive is real data and carries no marker. ``orderbook query`` (and every
reader of :func:`orderbook_assets.analytics.views.register_views`) notes the marker on stderr.
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
#: Where readers look for the marker, relative to the archive read: its root, and each host's
#: folder of a fleet's archive (each host's run marks the folder it writes). A wildcard in the
#: name on purpose: DuckDB's S3 glob returns a pattern without one as-is, listed or not, so
#: matches are filtered by name (:func:`is_marker`).
MARKER_GLOBS = ("SIMULATED*.txt", "hosts/*/SIMULATED*.txt")
#: What ``orderbook query`` notes on stderr when it finds the marker.
READER_NOTE = ("The archive at {url} was recorded from the simulated exchange of `make demo` ({key}): "
               "the books are synthetic, not Binance's.")
MARKER_TEXT = (
    "Every dataset in this archive was recorded from the simulated exchange of `make demo`\n"
    "(tools/simulator), not from Binance: the books are synthetic.\n"
)


def describe(source: DataSource) -> str:
    """What the Dagster UI shows as ``data_source``."""
    return "simulated exchange (make demo): synthetic books, not Binance" if source == SIMULATED else "Binance"


def is_marker(path: str) -> bool:
    return path.rsplit("/", 1)[-1] == MARKER_KEY


def mark(store) -> None:
    """Write the SIMULATED.txt marker at the archive's root unless it is there (verified like derived data)."""
    derived.publish_bytes(store, MARKER_KEY, MARKER_TEXT.encode(), if_absent=True)
