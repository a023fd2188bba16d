"""One buffer, one collector: an OS lock on ``<buffer>.lock``.

Two collectors on one buffer would each take the other's open session for a crash
(``close_orphan_sessions``) and then both write. The lock is ``flock`` on a file next
to the buffer, so the kernel drops it when its holder dies, however it dies: a lock
left by a SIGKILLed collector never blocks the restart. The file's text (PID, host,
start time) only serves the refusal message; the lock itself is the ``flock``.

The file is never deleted: unlinking a locked file would let a third process lock a
new inode of the same name while the second still holds the old one.
"""

from __future__ import annotations

import fcntl
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

from orderbook_core.errors import ConfigError


class BufferInUse(ConfigError):
    """Another live process holds the buffer's lock; ``str(err)`` names it."""


def lock_path(buffer_path: str | Path) -> Path:
    buffer_path = Path(buffer_path)
    return buffer_path.with_name(buffer_path.name + ".lock")


class BufferLock:
    """Held from :meth:`acquire` until :meth:`release` or the death of the process."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, buffer_path: str | Path) -> "BufferLock":
        """Lock the buffer for this process.

        Raises:
            BufferInUse: another live process holds it (the message names its PID and host).
        """
        path = lock_path(buffer_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise BufferInUse(
                "ORDERBOOK_BUFFER",
                f"{buffer_path} is in use by another collector ({holder or 'holder unknown'}); "
                "stop that one first or give this one another buffer.",
            ) from None
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        text = f"PID {os.getpid()} on {socket.gethostname()}, started {started}\n".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, text, 0)
        return cls(path, fd)

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "BufferLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 4096, 0).decode(errors="replace").strip()
    except OSError:
        return ""
