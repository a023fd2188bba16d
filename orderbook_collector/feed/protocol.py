"""Sans-I/O core: stream names, frame classification, decoding and validation.

Nothing here touches a socket, a file or a clock. The I/O shell hands in a raw
WebSocket frame (``str`` for text, ``bytes`` for binary) plus the receive stamp and
gets back a plain record:

* :class:`DepthRecord` – a validated partial-depth snapshot, ready for the buffer;
* :class:`Quarantined` – a frame that failed parsing or validation, with its reason
  (a :class:`~orderbook_core.errors.QuarantineReason` value) and the detail;
* :class:`ControlReply` – a reply to a SUBSCRIBE/LIST_SUBSCRIPTIONS/... request;
* :class:`ServerShutdown` – Binance's maintenance notice (reconnect at once).

The reader on the event loop only calls :meth:`Decoder.peek_stream` (a string
prefix test, no JSON parsing) to route data frames to the writer thread, where
:meth:`Decoder.decode` does the parsing. Frames that do not look like data are
decoded on the loop, since they are rare and some (``serverShutdown``) need an
immediate reaction.

Levels are packed by the buffer's codec (:mod:`orderbook_core.buffer.levels`);
values longer than 15 significant digits are counted, not rejected.
"""

from __future__ import annotations

from typing import NamedTuple, Union

import orjson

from orderbook_core.buffer import levels as packed
from orderbook_core.buffer.records import DepthRecord, Quarantined, Row  # noqa: F401  (DepthRecord: re-exported)
from orderbook_core.errors import FrameError, QuarantineReason as Q
from orderbook_core.payloads import FastPath, count_wide, decode_payload
from orderbook_core.streams import (  # noqa: F401  (re-exported: the feed's public face)
    MAX_STREAMS_PER_CONNECTION,
    Kind,
    Market,
    StreamSpec,
    build_streams,
    parse_symbol,
    stream_kind,
)

#: Frames larger than this are quarantined instead of parsed.
DEFAULT_MAX_FRAME_BYTES = 1 << 20
#: Frames converted at once by the fast path: its C calls hold the GIL for the whole chunk,
#: and the event loop waits meanwhile (256 depth20 frames: about a millisecond).
FAST_CHUNK = 256

class ControlReply(NamedTuple):
    """A reply to a control request: ``error`` is None on success."""

    id: object
    result: object
    error: dict | None


class ServerShutdown(NamedTuple):
    """Binance announced that it will close the connection soon."""

    event_ms: int


Decoded = Union[Row, Quarantined, ControlReply, ServerShutdown]

_STREAM_PREFIX = '{"stream":"'
_SHUTDOWN_STREAM = "!serverShutdown"


def raw_bytes(raw: str | bytes) -> bytes:
    return raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")


class Decoder:
    """Turns raw frames of one connection's streams into records. Pure and reusable.

    Args:
        streams: the streams this connection subscribed to.
        max_frame_bytes: frames longer than this are quarantined unparsed.
    """

    def __init__(self, streams: list[StreamSpec], max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES):
        self.streams = {s.name: s for s in streams}
        self.max_frame_bytes = max_frame_bytes
        self._fast = FastPath(streams, max_frame_bytes)

    def peek_stream(self, raw: str | bytes) -> str | None:
        """Return the stream name of a subscribed data frame without parsing it, else None.

        Binance writes the ``stream`` key first; a frame that does not is not lost,
        it merely takes the slow path through :meth:`decode` on the event loop.
        """
        if type(raw) is not str or not raw.startswith(_STREAM_PREFIX) or len(raw) > self.max_frame_bytes:
            return None
        end = raw.find('"', len(_STREAM_PREFIX))
        name = raw[len(_STREAM_PREFIX) : end]
        return name if name in self.streams else None

    def add_streams(self, streams: list[StreamSpec]) -> None:
        """Accept the frames of ``streams`` too (subscribed on a live connection)."""
        self.streams.update((s.name, s) for s in streams)
        self._fast.add_streams(streams)

    def decode(self, raw: str | bytes, recv_us: int, session_id: int, seq: int) -> Decoded:
        """Decode one frame. Never raises for bad input: bad frames come back quarantined."""
        try:
            return self._decode(raw, recv_us, session_id, seq)
        except FrameError as exc:
            return Quarantined(recv_us, session_id, seq, exc.reason.value, raw_bytes(raw), exc.detail)

    def decode_many(self, frames: list[tuple[str | bytes, int, int, int]]) -> list[Decoded]:
        """Decode ``(raw, recv_us, session_id, seq)`` frames; same results as :meth:`decode`.

        The batch fast path (:class:`~.payloads.FastPath`) takes the plain frames of every
        kind; any frame it does not take goes through :meth:`decode` alone, so the reasons
        and the quarantine are exactly those of the strict path.
        """
        out: list = []
        for k in range(0, len(frames), FAST_CHUNK):
            chunk = frames[k : k + FAST_CHUNK]
            part: list = [None] * len(chunk)
            for i in self._fast.decode_into(chunk, part):
                part[i] = self.decode(*chunk[i])
            out += part
        return out

    def _decode(self, raw: str | bytes, recv_us: int, session_id: int, seq: int) -> Decoded:
        if isinstance(raw, bytes):
            raise FrameError(Q.BINARY, f"{len(raw)} bytes")
        if len(raw) > self.max_frame_bytes:
            raise FrameError(Q.OVERSIZE, f"{len(raw)} characters > {self.max_frame_bytes}")
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise FrameError(Q.NOT_JSON, str(exc)) from exc
        if not isinstance(msg, dict):
            raise FrameError(Q.NOT_OBJECT, f"a JSON {type(msg).__name__}")
        if "error" in msg:
            err = msg["error"]
            raise FrameError(Q.ERROR_REPLY, f"{orjson.dumps(err).decode()} (id {msg.get('id')!r})")
        if "result" in msg and "id" in msg:
            return ControlReply(msg["id"], msg["result"], None)
        stream = msg.get("stream")
        data = msg.get("data")
        if stream == _SHUTDOWN_STREAM or (isinstance(data, dict) and data.get("e") == "serverShutdown"):
            return ServerShutdown(int(data.get("E", 0)) if isinstance(data, dict) else 0)
        if not isinstance(stream, str) or not isinstance(data, dict):
            raise FrameError(Q.NOT_COMBINED, "needs 'stream' (text) and 'data' (an object)")
        if stream not in self.streams:
            raise FrameError(Q.UNKNOWN_STREAM, repr(stream))
        return self._depth(raw, stream, data, recv_us, session_id, seq)

    def _depth(self, raw: str, stream: str, data: dict, recv_us: int, session_id: int, seq: int) -> Row:
        wide = count_wide(raw)
        return decode_payload(self.streams[stream], data, recv_us, session_id, seq, wide)


unpack_levels = packed.unpack  # the codec lives in the buffer; kept here for the feed's tests
