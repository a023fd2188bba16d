"""The one exception hierarchy of orderbook.

    OrderbookError
    ├── ConfigError        a setting is invalid; the message names it and the fix
    ├── FrameError         a frame failed decoding or validation (it gets quarantined)
    ├── StorageError       the SQLite buffer refused a write or is not in the expected mode
    │   └── TransactionError   a transaction could not commit and was rolled back
    └── ArchiveError       the archive (S3 or local folder) misbehaved
        └── IntegrityError     an object exists but differs from what we wrote

Every handler that turns one of these into a log line keeps the cause chained
(``raise ... from exc``) so the original error stays visible.
"""

from __future__ import annotations


class OrderbookError(Exception):
    """Root of every error raised on purpose by orderbook."""


class ConfigError(OrderbookError):
    """A setting is invalid. ``str(err)`` is one sentence naming the setting and the fix."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting


class FrameError(OrderbookError):
    """A frame could not be decoded or validated; ``reason`` is stored with it in quarantine."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StorageError(OrderbookError):
    """The SQLite buffer cannot be used as required (mode, schema, write failure)."""


class TransactionError(StorageError):
    """A transaction failed and was rolled back; nothing of it was committed."""


class ArchiveError(OrderbookError):
    """The archive refused an operation or answered something unexpected."""


class IntegrityError(ArchiveError):
    """An archive object exists at our key but its size or checksum differs from ours."""
