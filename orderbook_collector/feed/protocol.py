"""Sans-I/O core: stream names, frame classification, decoding and validation.

Nothing here touches a socket, a file or a clock. The I/O shell hands in a raw
WebSocket frame (``str`` for text, ``bytes`` for binary) plus the receive stamp and
gets back a plain record:

* :class:`DepthRecord` – a validated partial-depth snapshot, ready for the buffer;
* :class:`Quarantined` – a frame that failed parsing or validation, with its reason;
* :class:`ControlReply` – a reply to a SUBSCRIBE/LIST_SUBSCRIPTIONS/... request;
* :class:`ServerShutdown` – Binance's maintenance notice (reconnect at once).

The reader on the event loop only calls :meth:`Decoder.peek_stream` (a string
prefix test, no JSON parsing) to route data frames to the writer thread, where
:meth:`Decoder.decode` does the parsing. Frames that do not look like data are
decoded on the loop, since they are rare and some (``serverShutdown``) need an
immediate reaction.

Levels are packed by the buffer's codec (:mod:`orderbook_collector.buffer.levels`);
values longer than 15 significant digits are counted, not rejected.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from itertools import chain
from typing import NamedTuple, Union

import numpy as np
import orjson

from orderbook_collector.buffer import levels as packed
from orderbook_collector.buffer.records import DepthRecord, Quarantined, Row
from orderbook_collector.errors import FrameError
from orderbook_collector.feed.payloads import decode_payload
from orderbook_collector.feed.streams import (  # noqa: F401  (re-exported: the feed's public face)
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

class ControlReply(NamedTuple):
    """A reply to a control request: ``error`` is None on success."""

    id: object
    result: object
    error: dict | None


class ServerShutdown(NamedTuple):
    """Binance announced that it will close the connection soon."""

    event_time_ms: int


Decoded = Union[Row, Quarantined, ControlReply, ServerShutdown]

_STREAM_PREFIX = '{"stream":"'
_SHUTDOWN_STREAM = "!serverShutdown"


def raw_bytes(raw: str | bytes) -> bytes:
    return raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")


# 16 characters hold 15 significant digits and a point: only longer number texts need a look.
_WIDE_RE = re.compile(r'"[0-9.]{17,}"')


def _count_wide(raw: str) -> int:
    return sum(1 for m in _WIDE_RE.finditer(raw) if _significant_digits(m.group()[1:-1]) > 15)


def _significant_digits(text: str) -> int:
    try:
        digits = Decimal(text).normalize().as_tuple().digits
    except InvalidOperation:
        return 0
    return len(digits)


class Decoder:
    """Turns raw frames of one connection's streams into records. Pure and reusable.

    Args:
        streams: the streams this connection subscribed to.
        max_frame_bytes: frames longer than this are quarantined unparsed.
    """

    def __init__(self, streams: list[StreamSpec], max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES):
        self.streams = {s.name: s for s in streams}
        self.max_frame_bytes = max_frame_bytes

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

    def decode(self, raw: str | bytes, recv_us: int, session_id: int, seq: int) -> Decoded:
        """Decode one frame. Never raises for bad input: bad frames come back quarantined."""
        try:
            return self._decode(raw, recv_us, session_id, seq)
        except FrameError as exc:
            return Quarantined(recv_us, session_id, seq, exc.reason, raw_bytes(raw))

    def decode_many(self, frames: list[tuple[str | bytes, int, int, int]]) -> list[Decoded]:
        """Decode ``(raw, recv_us, session_id, seq)`` frames; same results as :meth:`decode`.

        The fast path converts the whole batch's price and quantity strings in one
        numpy call, which halves the per-message cost. Any frame that is not a plain
        valid depth message sends the batch through :meth:`decode` one by one, so
        the reasons and the quarantine are exactly those of the strict path.
        """
        try:
            return self._decode_fast(frames)
        except Exception:
            return [self.decode(*f) for f in frames]

    def _decode_fast(self, frames: list[tuple[str | bytes, int, int, int]]) -> list[Decoded]:
        flat: list = []
        extend = flat.extend
        meta = []
        streams = self.streams
        for raw, recv_us, session_id, seq in frames:
            if len(raw) > self.max_frame_bytes:
                raise FrameError("oversize")
            msg = orjson.loads(raw)
            stream = msg["stream"]
            data = msg["data"]
            uid = data["lastUpdateId"]
            bids = data["bids"]
            asks = data["asks"]
            spec = streams[stream]
            if spec.type is not Kind.PARTIAL_DEPTH or spec.market is not Market.SPOT:
                raise FrameError("not a spot snapshot: the strict path decodes it")
            limit = spec.levels
            if (
                type(uid) is not int or not 0 <= uid < 1 << 63 or type(bids) is not list or type(asks) is not list
                or len(bids) > limit or len(asks) > limit
                or (bids and set(map(len, bids)) != {2}) or (asks and set(map(len, asks)) != {2})
            ):
                raise FrameError("not plain")
            extend(chain.from_iterable(bids))
            extend(chain.from_iterable(asks))
            meta.append((raw, stream, recv_us, session_id, seq, uid, len(bids), len(bids) + len(asks)))
        values = np.array(flat, dtype=np.float64)
        if values.size and (not math.isfinite(values.sum()) or values.min() < 0 or values[0::2].min() <= 0):
            raise FrameError("bad values")
        # One C-speed pass over the batch's strings; per-frame regexes only if one is long.
        check_wide = bool(flat) and max(map(len, flat)) > 16
        packed = values.tobytes()
        out: list[Decoded] = []
        off = 0
        for raw, stream, recv_us, session_id, seq, uid, n_bids, n in meta:
            end = off + 16 * n
            wide = _count_wide(raw) if check_wide and _WIDE_RE.search(raw) else 0
            out.append(DepthRecord(streams[stream].key, recv_us, session_id, seq, uid, n_bids, packed[off:end], wide))
            off = end
        return out

    def _decode(self, raw: str | bytes, recv_us: int, session_id: int, seq: int) -> Decoded:
        if isinstance(raw, bytes):
            raise FrameError("binary frame")
        if len(raw) > self.max_frame_bytes:
            raise FrameError(f"oversize frame ({len(raw)} characters > {self.max_frame_bytes})")
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise FrameError(f"not JSON: {exc}") from exc
        if not isinstance(msg, dict):
            raise FrameError("not a JSON object")
        if "error" in msg:
            err = msg["error"]
            raise FrameError(f"error reply: {orjson.dumps(err).decode()} (id {msg.get('id')!r})")
        if "result" in msg and "id" in msg:
            return ControlReply(msg["id"], msg["result"], None)
        stream = msg.get("stream")
        data = msg.get("data")
        if stream == _SHUTDOWN_STREAM or (isinstance(data, dict) and data.get("e") == "serverShutdown"):
            return ServerShutdown(int(data.get("E", 0)) if isinstance(data, dict) else 0)
        if not isinstance(stream, str) or not isinstance(data, dict):
            raise FrameError("not a combined-stream message (needs 'stream' and 'data')")
        if stream not in self.streams:
            raise FrameError(f"unknown stream {stream!r}")
        return self._depth(raw, stream, data, recv_us, session_id, seq)

    def _depth(self, raw: str, stream: str, data: dict, recv_us: int, session_id: int, seq: int) -> Row:
        wide = _count_wide(raw) if _WIDE_RE.search(raw) else 0
        return decode_payload(self.streams[stream], data, recv_us, session_id, seq, wide)


unpack_levels = packed.unpack  # the codec lives in the buffer; kept here for the feed's tests
