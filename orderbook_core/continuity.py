"""Binance's diff-depth continuity rules as pure predicates: the one definition.

Three places judge a diff event against what came before it, and all three call these
predicates (or, for SQL, use the expression below that is tested against them on literal
cases): the collector's sync tracker (which records ``break`` and ``synced`` rows), the book
builder (which rebuilds books from the archive) and the archive's ``depth_continuity`` check.

The rules (Binance's "How to manage a local order book correctly", spot and USD-M futures):

* **spot** (``U``/``u``): an event whose ``u`` is at or below the book's id is stale; one with
  ``U > id + 1`` means events were missed; anything else continues (an event that overlaps the
  book's id, ``U <= id < u``, continues: Binance's procedure applies it). A snapshot with id
  ``L`` makes stale every event with ``u <= L``; the first event applied on top of it must have
  ``U <= L + 1 <= u``.
* **USD-M and COIN-M** (``pu``): each event's ``pu`` must equal the previous event's ``u``
  (ids are not contiguous, so ``U`` says nothing). A snapshot with id ``L`` makes stale every
  event with ``u < L``; the first event applied must have ``U <= L <= u``, or ``pu == L`` (it
  continues exactly from the snapshot's id, which the ids make equally certain).
"""

from __future__ import annotations

from typing import Callable

from orderbook_core.streams import Market


def uses_pu(market: Market | str) -> bool:
    """Whether ``market`` chains diff events by ``pu`` (futures) rather than ``U``/``u`` (spot)."""
    return Market(market) is not Market.SPOT


def _continues_spot(prev_u: int, first: int, last: int, pu: int | None) -> bool:
    return first <= prev_u + 1 <= last


def _continues_pu(prev_u: int, first: int, last: int, pu: int | None) -> bool:
    return pu == prev_u and last > prev_u


def continues_rule(market: Market | str) -> Callable[[int, int, int, int | None], bool]:
    """:func:`continues` for one market, bound once: ``rule(prev_u, first, last, pu)`` (the
    writer asks it for every stored diff event, so no per-call market lookup)."""
    return _continues_pu if uses_pu(market) else _continues_spot


def continues(market: Market | str, prev_u: int, first: int, last: int, pu: int | None) -> bool:
    """Whether an event (``U`` = ``first``, ``u`` = ``last``, ``pu``) continues a stream whose
    previous event (or book) ended at ``prev_u``. A stale or rewound event (``last <= prev_u``)
    never continues."""
    return continues_rule(market)(prev_u, first, last, pu)


def stale(market: Market | str, snapshot_id: int, last: int) -> bool:
    """Whether an event ending at ``last`` is already contained in a snapshot with id ``snapshot_id``."""
    return last < snapshot_id if uses_pu(market) else last <= snapshot_id


def bridges(market: Market | str, snapshot_id: int, first: int, last: int, pu: int | None) -> bool:
    """Whether an event is the first one to apply on top of a snapshot with id ``snapshot_id``."""
    if uses_pu(market):
        return first <= snapshot_id <= last or pu == snapshot_id
    return first <= snapshot_id + 1 <= last


def break_sql(market: str = "market", first: str = "first_update_id", prev_u: str = "previous_u",
              pu: str = "prev_update_id") -> str:
    """A SQL (DuckDB) boolean expression that is true where an event does **not** continue, over
    columns named by the arguments: :func:`continues` negated, row by row (tested against it on
    literal cases in ``tests/core/test_continuity.py``)."""
    return (f"CASE WHEN {market} = 'spot' THEN {first} > {prev_u} + 1 "
            f"ELSE {pu} IS DISTINCT FROM {prev_u} END")
