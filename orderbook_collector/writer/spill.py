"""Append-only overflow files: where frames go when the writer's queue is full.

The reader on the event loop must never wait for SQLite. When the bounded queue
is full, every further item goes here, in order, until the writer has replayed
all of it; only then does the reader return to the queue. Items are never
dropped because of a slow writer.

File format: ``spill-NNNNNNNN.bin`` segments of records
``<u32 length><u32 crc32><marshal payload>``. marshal is fast and handles the
``str``/``bytes``/``int`` tuples we queue; files are only read back by the same
program version (a version change with spill left over is refused loudly).

Durability: each record is handed to the kernel with one ``os.write`` (so a
kill -9 of the collector loses nothing already spilled) and a flusher thread
fsyncs the open segment every ``fsync_interval`` seconds (so a power loss loses
at most that much). A torn record at the end of a segment — a crash in the
middle of a write — is cut off at start-up and reported.

Disk full: if a write fails, records are held in memory (up to
``memory_limit`` bytes), in order, and written out once space returns. Beyond
that limit records are refused; the caller counts them as lost and records
the loss as data. They were never acknowledged.
"""

from __future__ import annotations

import logging
import marshal
import os
import struct
import sys
import threading
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from orderbook_core.buffer.records import Item, from_spill, to_spill
from orderbook_core.fsutil import fsync_dir

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")
#: v2: typed records (buffer.records.to_spill); v1 files held positional tagged tuples.
_MAGIC_NAME = f"spill-format-v2-py{sys.version_info.major}{sys.version_info.minor}-m{marshal.version}"


@dataclass(slots=True)
class Segment:
    """One spill file: its name and the bytes of whole records in it."""

    name: str
    size: int


class Spill:
    """Ordered overflow storage shared by one producer (the loop) and one consumer (the writer)."""

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        segment_bytes: int = 64 << 20,
        fsync_interval: float = 0.1,
        memory_limit: int = 512 << 20,
    ) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.fsync_interval = fsync_interval
        self.memory_limit = memory_limit
        self._lock = threading.Lock()
        self._check_format()
        # Segments in order; each entry is [name, bytes written (valid length)].
        self._segments: list[Segment] = []
        for path in sorted(self.dir.glob("spill-*.bin")):
            self._segments.append(Segment(path.name, _valid_length(path)))
        self._seq = int(self._segments[-1].name[6:14]) + 1 if self._segments else 0
        self._wfd: int | None = None
        self._dirty = False
        self._memory: deque[bytes] = deque()
        self._memory_bytes = 0
        self.disk_error: OSError | None = None
        # Read position: (segment index name, offset) of the next record to read.
        self._rname: str | None = self._segments[0].name if self._segments else None
        self._roffset = 0
        self.active = bool(self._segments)
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="spill-fsync", daemon=True)
        self._flusher.start()

    # Producer side (event loop thread) ------------------------------------------------

    def append(self, item: Item) -> bool:
        """Store one item after everything already spilled. False: refused (memory full)."""
        data = marshal.dumps(to_spill(item))
        record = _HEADER.pack(len(data), zlib.crc32(data)) + data
        with self._lock:
            self.active = True
            if self._memory or not self._write(record):
                if self._memory_bytes + len(record) > self.memory_limit:
                    return False
                self._memory.append(record)
                self._memory_bytes += len(record)
            return True

    def _write(self, record: bytes) -> bool:
        try:
            if self._wfd is None or self._segments[-1].size + len(record) > self.segment_bytes:
                self._open_segment()
            os.write(self._wfd, record)
        except OSError as exc:
            if self.disk_error is None:
                log.error("spill write failed (%s); holding spilled frames in memory", exc)
            self.disk_error = exc
            return False
        self._segments[-1].size += len(record)
        self._dirty = True
        self.disk_error = None
        return True

    def _open_segment(self) -> None:
        if self._wfd is not None:
            os.fsync(self._wfd)
            os.close(self._wfd)
            self._wfd = None
        name = f"spill-{self._seq:08d}.bin"
        fd = os.open(self.dir / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._seq += 1
        self._segments.append(Segment(name, 0))
        self._wfd = fd
        if self._rname is None:
            self._rname, self._roffset = name, 0
        fsync_dir(self.dir)

    # Consumer side (writer thread) ----------------------------------------------------

    def seek(self, committed: tuple[str, int] | None) -> None:
        """Resume after a restart: skip what the buffer says was already committed.

        ``committed`` is the last position stored with a batch: every record before
        it (earlier segments included, since names sort in write order) is in SQLite.
        """
        if committed is None:
            return
        name, offset = committed
        with self._lock:
            while self._rname is not None and self._rname < name:
                self._advance_segment()
            if self._rname == name:
                self._roffset = offset

    def read(self, max_items: int) -> tuple[list[Item], tuple[str, int] | None]:
        """Up to ``max_items`` items in order, and the position to commit with them."""
        with self._lock:
            self._drain_memory()
            items: list[tuple] = []
            while self._rname is not None and len(items) < max_items:
                seg = self._find(self._rname)
                if self._roffset >= seg.size:
                    if seg is self._segments[-1]:
                        break
                    self._advance_segment()
                    continue
                items.extend(self._read_records(seg, max_items - len(items)))
            if items:
                return items, (self._rname, self._roffset)
            if self._memory:
                # Disk still full: hand over in-memory records directly, in order.
                while self._memory and len(items) < max_items:
                    rec = self._memory.popleft()
                    self._memory_bytes -= len(rec)
                    items.append(from_spill(marshal.loads(rec[_HEADER.size :])))
            return items, None

    def finish_if_drained(self, committed: tuple[str, int] | None) -> bool:
        """After a commit: drop consumed segments; leave spill mode if nothing is left."""
        with self._lock:
            while len(self._segments) > 1 and self._segments[0].name != self._rname:
                self._remove(self._segments.pop(0).name)
            last = self._segments[-1] if self._segments else None
            drained = not self._memory and (last is None or (self._rname == last.name and self._roffset >= last.size))
            if drained:
                if last is not None:
                    self._close_writer()
                    self._remove(last.name)
                    self._segments.clear()
                    self._rname, self._roffset = None, 0
                self.active = False
            return drained

    @property
    def pending_bytes(self) -> int:
        """Bytes spilled and not yet replayed (files and memory)."""
        with self._lock:
            total = self._memory_bytes
            for seg in self._segments:
                total += seg.size - (self._roffset if seg.name == self._rname else 0)
                if seg.name == self._rname:
                    break
            else:
                return total
            idx = next(i for i, s in enumerate(self._segments) if s.name == self._rname)
            return total + sum(s.size for s in self._segments[idx + 1 :])

    def close(self) -> None:
        self._stop.set()
        self._flusher.join(timeout=2)
        with self._lock:
            self._close_writer()

    # Internals ---------------------------------------------------------------------------

    def _find(self, name: str) -> Segment:
        for seg in self._segments:
            if seg.name == name:
                return seg
        raise KeyError(name)

    def _advance_segment(self) -> None:
        names = [s.name for s in self._segments]
        i = names.index(self._rname)
        self._rname = names[i + 1] if i + 1 < len(names) else None
        self._roffset = 0

    def _read_records(self, seg: Segment, max_items: int) -> list[Item]:
        items = []
        with open(self.dir / seg.name, "rb") as f:
            f.seek(self._roffset)
            chunk = f.read(min(seg.size - self._roffset, 8 << 20))
        pos = 0
        while pos + _HEADER.size <= len(chunk) and len(items) < max_items:
            length, crc = _HEADER.unpack_from(chunk, pos)
            end = pos + _HEADER.size + length
            if end > len(chunk):
                break
            data = chunk[pos + _HEADER.size : end]
            if zlib.crc32(data) != crc:
                raise OSError(f"spill segment {seg.name} is corrupt at offset {self._roffset + pos}")
            items.append(from_spill(marshal.loads(data)))
            pos = end
        self._roffset += pos
        return items

    def _drain_memory(self) -> None:
        while self._memory:
            rec = self._memory[0]
            if not self._write(rec):
                return
            self._memory.popleft()
            self._memory_bytes -= len(rec)

    def _close_writer(self) -> None:
        if self._wfd is not None:
            try:
                os.fsync(self._wfd)
            finally:
                os.close(self._wfd)
                self._wfd = None

    def _remove(self, name: str) -> None:
        try:
            os.unlink(self.dir / name)
        except FileNotFoundError:
            pass

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.fsync_interval):
            with self._lock:
                fd, dirty = self._wfd, self._dirty
                self._dirty = False
                if self._memory:
                    self._drain_memory()
            if fd is not None and dirty:
                try:
                    os.fsync(fd)
                except OSError as exc:
                    log.error("spill fsync failed: %s", exc)

    def _check_format(self) -> None:
        marker = self.dir / "FORMAT"
        if marker.exists():
            found = marker.read_text().strip()
            if found != _MAGIC_NAME and any(self.dir.glob("spill-*.bin")):
                raise OSError(
                    f"spill files in {self.dir} were written as {found}, this program reads {_MAGIC_NAME}; "
                    "replay them with the version that wrote them"
                )
        marker.write_text(_MAGIC_NAME + "\n")


def _valid_length(path: Path) -> int:
    """Length of the intact prefix of a segment; a torn tail is truncated and reported."""
    data = path.read_bytes()
    pos = 0
    while pos + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, pos)
        end = pos + _HEADER.size + length
        if end > len(data) or zlib.crc32(data[pos + _HEADER.size : end]) != crc:
            break
        pos = end
    if pos != len(data):
        log.warning("spill %s: cutting a torn tail of %d bytes left by a crash", path.name, len(data) - pos)
        with open(path, "r+b") as f:
            f.truncate(pos)
            os.fsync(f.fileno())
    return pos
