"""The buffer: the one contract between the collector and the archive.

Both processes import this package and nothing of each other.

- :mod:`.schema`: every table, its owner, numbered migrations.
- :mod:`.db`: opening a buffer (WAL, ``synchronous``), sessions and streams helpers.
- :mod:`.transactions`: ``BEGIN IMMEDIATE`` … ``COMMIT`` that rolls back loudly.
- :mod:`.records`: the typed records that cross the writer queue and the spill.
- :mod:`.levels`: the packed-levels codec.
- :mod:`.reads`: the rows of a part, and the unarchived tail.
- :mod:`.hours`: microsecond time and UTC hours.
"""

from orderbook_core.buffer.db import (  # noqa: F401
    DEFAULT_BUSY_TIMEOUT_MS,
    DEFAULT_PATH,
    PAGE_SIZE,
    SYNCHRONOUS_LEVELS,
    close_orphan_sessions,
    connect,
    connect_readonly,
    next_session_id,
    stream_ids,
    stream_names,
)
from orderbook_core.buffer.hours import HOUR_US, hour_folder, hour_of, hour_start, now_us  # noqa: F401
from orderbook_core.buffer.schema import SCHEMA, SCHEMA_VERSION  # noqa: F401
from orderbook_core.buffer.transactions import transaction  # noqa: F401
