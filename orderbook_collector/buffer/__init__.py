"""The buffer: the one contract between the collector and the archive.

Both processes import this package and nothing else of each other. It owns the SQLite
schema (numbered migrations), the connection rules and the transaction helper.
"""

from .db import *  # noqa: F401,F403
from .db import HOUR_US, PAGE_SIZE, SCHEMA, SCHEMA_VERSION, connect, hour_of, now_us, transaction  # noqa: F401
