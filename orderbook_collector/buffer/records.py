"""The typed records that cross the writer queue and the spill into the buffer.

The event loop submits :class:`Frame`, :class:`Quarantined`, :class:`SessionOpen`,
:class:`SessionClose` and :class:`Event` items; the writer decodes frames into
:class:`DepthRecord` rows (a frame the loop had to decode itself arrives as a record). They are NamedTuples: typed and named, yet as cheap to make as
the tuples they replace, which matters at tens of thousands of frames a second.
:func:`to_spill` and :func:`from_spill` are their one on-disk form (marshal takes plain
tuples only).
"""

from __future__ import annotations

from typing import NamedTuple, Union


class Frame(NamedTuple):
    """A received data frame, not yet decoded (the writer decodes it, once)."""

    raw: str | bytes
    recv_us: int
    session_id: int
    seq: int


class Quarantined(NamedTuple):
    """A frame that could not be used, kept with its raw bytes and the reason."""

    recv_us: int
    session_id: int
    seq: int
    reason: str
    raw: bytes


class SessionOpen(NamedTuple):
    session_id: int
    url: str
    streams_json: str
    opened_us: int


class SessionClose(NamedTuple):
    session_id: int
    closed_us: int
    reason: str


class Event(NamedTuple):
    """A stall, rotation, shutdown notice, spill or write-failure episode: gaps are data."""

    time_us: int
    session_id: int | None
    stream: str | None
    kind: str
    detail: str | None


class Stop(NamedTuple):
    """Ends the writer after everything submitted before it is committed."""


class DepthRecord(NamedTuple):
    """A validated partial-depth snapshot, ready for the ``depth_snapshot`` table."""

    stream: str
    recv_us: int
    session_id: int
    seq: int
    update_id: int
    n_bids: int
    levels: bytes  # see buffer.levels
    wide_values: int  # values with more than 15 significant digits


Item = Union[Frame, DepthRecord, Quarantined, SessionOpen, SessionClose, Event, Stop]
#: The spill's type tags: append only, never reorder (spilled files name types by index).
_SPILLED: tuple[type, ...] = (Frame, Quarantined, SessionOpen, SessionClose, Event, Stop, DepthRecord)
_TAG = {t: i for i, t in enumerate(_SPILLED)}


def to_spill(item: Item) -> tuple:
    return (_TAG[type(item)], *item)


def from_spill(data: tuple) -> Item:
    return _SPILLED[data[0]](*data[1:])
