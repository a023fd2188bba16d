"""Time in the buffer: integer microseconds since the epoch (UTC), and UTC hours.

The one definition of an hour's length and of the Hive folder an hour lives in.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

HOUR_US = 3_600_000_000


def now_us() -> int:
    return time.time_ns() // 1000


def hour_of(us: int) -> int:
    """The start of the UTC hour holding ``us``."""
    return us - us % HOUR_US


def hour_start(hour_us: int) -> datetime:
    return datetime.fromtimestamp(hour_us / 1e6, tz=timezone.utc)


def hour_folder(hour_us: int) -> str:
    """``date=YYYY-MM-DD/hour=HH``: the Hive folders of one hour, below a dataset's folder."""
    start = hour_start(hour_us)
    return f"date={start:%Y-%m-%d}/hour={start:%H}"
