"""The buffer: the one contract between the collector and the archive.

Both processes import this package and nothing of each other.

- :mod:`.schema`: every table, its owner, numbered migrations.
- :mod:`.db`: opening a buffer (WAL, ``synchronous``), sessions and streams helpers.
- :mod:`.transactions`: ``BEGIN IMMEDIATE`` … ``COMMIT`` that rolls back loudly; one read snapshot.
- :mod:`.records`: the typed records that cross the writer queue and the spill.
- :mod:`.rows`: which table, columns and dedup key each record type goes to.
- :mod:`.levels`: the packed-levels codec.
- :mod:`.reads`: the rows of a part (keys, columns, seqs), the streams, and the unarchived tail.
- :mod:`.ledger`: the export ledger (``export_parts``): parts, rounds, states, progress.
- :mod:`.coverage`: sessions, dropped and quarantined frames, recorded continuity.
- :mod:`.retention`: freeing archived rows, the WAL's size and checkpoints.
- :mod:`.writes`: every statement the collector's writer runs.
- :mod:`.hours`: microsecond time and UTC hours.

Every query on the buffer's tables is a named function of this package; neither process
writes SQL on them (``tests/core/buffer/test_queries_live_here.py``).
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
from orderbook_core.buffer.transactions import read_snapshot, transaction  # noqa: F401
