"""The one exception hierarchy of orderbook.

    OrderbookError
    ├── ConfigError        a setting is invalid; the message names it and the fix
    ├── FrameError         a frame failed decoding or validation (it gets quarantined
    │                      with its QuarantineReason and detail)
    ├── StorageError       the SQLite buffer refused a write or is not in the expected mode
    │   └── TransactionError   a transaction could not commit and was rolled back
    └── ArchiveError       the archive (S3 or local folder) misbehaved
        └── IntegrityError     an object exists but differs from what we wrote

Every handler that turns one of these into a log line keeps the cause chained
(``raise ... from exc``) so the original error stays visible.
"""

from __future__ import annotations

from enum import StrEnum


class OrderbookError(Exception):
    """Root of every error raised on purpose by orderbook."""


class ConfigError(OrderbookError):
    """A setting is invalid. ``str(err)`` is one sentence naming the setting and the fix."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting


class QuarantineReason(StrEnum):
    """Why a frame (or a REST answer) was quarantined: a closed set.

    The value is what ``quarantine.reason`` stores and what ``orderbook_quarantined_total``
    counts under its ``reason`` label, so values never change once released (add members,
    never rename them). What exactly was wrong (which key, which value) is the error's
    ``detail``, stored next to it in ``quarantine.detail``. docs/collector.md lists them.
    """

    # The frame as a whole (the feed's decoder).
    BINARY = "binary"  # a binary WebSocket frame: Binance sends text
    OVERSIZE = "oversize"  # longer than the collector's frame limit, kept unparsed
    NOT_JSON = "not_json"  # the text does not parse as JSON
    NOT_OBJECT = "not_object"  # JSON, but not an object
    ERROR_REPLY = "error_reply"  # Binance's answer to one of our requests is an error
    NOT_COMBINED = "not_combined"  # an object without the combined stream's ``stream`` and ``data``
    UNKNOWN_STREAM = "unknown_stream"  # a stream this connection did not subscribe to
    UNEXPECTED = "unexpected"  # decoded to something the writer does not store (a bug, kept as data)
    # The payload (``orderbook_core.payloads``): WebSocket data and REST depth answers alike.
    WRONG_EVENT = "wrong_event"  # ``e`` is not the stream kind's event type
    WRONG_SYMBOL = "wrong_symbol"  # ``s`` is not the stream's symbol
    BAD_INTEGER = "bad_integer"  # an id or time missing, or not a non-negative 64-bit integer
    BAD_DECIMAL = "bad_decimal"  # a price or quantity missing, or not a decimal string
    BAD_BOOLEAN = "bad_boolean"  # a flag missing, or not true/false
    OUT_OF_RANGE = "out_of_range"  # a price or quantity negative, a price zero, or a value not finite
    IDS_REVERSED = "ids_reversed"  # a first id after the last (``U`` > ``u``, ``f`` > ``l``)
    BAD_LEVELS = "bad_levels"  # bids or asks not lists of [price, qty] decimal pairs
    TOO_MANY_LEVELS = "too_many_levels"  # more levels on a side than the stream or request allows
    BAD_WORD = "bad_word"  # a side, order type, time in force or status missing, or not one Binance sends
    BAD_ORDER = "bad_order"  # a liquidation's order object (``o``) missing or not an object


class FrameError(OrderbookError):
    """A frame could not be decoded or validated: ``reason`` (stored in quarantine and counted)
    says which check failed, ``detail`` (stored next to it) what exactly was wrong."""

    def __init__(self, reason: QuarantineReason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail


class StorageError(OrderbookError):
    """The SQLite buffer cannot be used as required (mode, schema, write failure)."""


class TransactionError(StorageError):
    """A transaction failed and was rolled back; nothing of it was committed."""


class ArchiveError(OrderbookError):
    """The archive refused an operation or answered something unexpected."""


class IntegrityError(ArchiveError):
    """An archive object exists at our key but its size or checksum differs from ours."""
