"""Is a collector recording, and is its buffer being archived? Read from its buffer, no Dagster.

Two questions, answered from the buffer alone (so a fleet's operator sees them per collector in
the UI, next to the collector's assets):

- the newest acknowledged message of any stream dataset (a collector may record only trades,
  or only bookTicker): each dataset's committed row with the highest id (ids only grow), and
  how old the newest of their receive times is;
- the hours that ended more than a deadline ago and still hold rows of any archived dataset
  that no archived part covers.

Both come from the ledger's one definition of "is the archive keeping up"
(``orderbook_core.buffer.ledger``), which the collector's metrics read too.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone

from orderbook_core.buffer import ledger

#: Datasets whose rows are messages received over a connection (REST snapshots are our own requests).
MESSAGE_DATASETS = ledger.MESSAGE_DATASETS

#: Defaults of ORDERBOOK_FRESHNESS_SECONDS and ORDERBOOK_ARCHIVE_DEADLINE_MINUTES.
MAX_AGE_S = 120.0
ARCHIVE_DEADLINE_MIN = 30.0


@dataclass(frozen=True)
class Freshness:
    newest_recv_us: int | None  # None: nothing committed (or everything cleaned up)
    age_s: float | None
    overdue_hours: list[int]  # hour starts (µs) past the deadline with unarchived rows
    max_age_s: float
    deadline_min: float

    @property
    def fresh(self) -> bool:
        return self.age_s is not None and self.age_s <= self.max_age_s

    @property
    def passed(self) -> bool:
        return self.fresh and not self.overdue_hours

    def problems(self) -> list[str]:
        out = []
        if self.age_s is None:
            out.append("no acknowledged message in the buffer")
        elif not self.fresh:
            out.append(f"the newest acknowledged message is {self.age_s:.0f} s old (limit {self.max_age_s:.0f} s)")
        if self.overdue_hours:
            out.append(f"{len(self.overdue_hours)} hour(s) not archived {self.deadline_min:.0f} min after their end")
        return out


def verdict(f: Freshness) -> str:
    """What the check concludes, without the numbers that change on every look (the newest
    message's age): the freshness sensor runs the check only when this changes."""
    state = "no message" if f.age_s is None else ("recording" if f.fresh else "stale")
    hours = ", ".join(datetime.fromtimestamp(h / 1e6, tz=timezone.utc).strftime("%Y-%m-%dT%H:00Z")
                      for h in f.overdue_hours)
    return f"{state}; overdue hours: {hours or 'none'}"


def newest_recv_us(conn: sqlite3.Connection) -> int | None:
    """The receive time of the newest acknowledged message of any stream dataset."""
    return ledger.newest_message_us(conn)


def overdue_hours(conn: sqlite3.Connection, now_us: int, deadline_min: float) -> list[int]:
    """Hours ended more than ``deadline_min`` before ``now_us`` in which some dataset's rows go
    beyond its archived parts."""
    return ledger.unarchived_hours(conn, now_us - int(deadline_min * 60 * 1_000_000))


def freshness(conn: sqlite3.Connection, now_us: int, max_age_s: float = MAX_AGE_S,
              deadline_min: float = ARCHIVE_DEADLINE_MIN) -> Freshness:
    newest = newest_recv_us(conn)
    age = None if newest is None else max(now_us - newest, 0) / 1e6
    return Freshness(newest, age, overdue_hours(conn, now_us, deadline_min), max_age_s, deadline_min)
