"""File-system durability helpers shared by the spill, the export and the local archive."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory, so a file created or renamed in it survives a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: str | os.PathLike) -> tuple[int, str]:
    """(size, hex SHA-256) of a file, read back from disk."""
    h = hashlib.sha256()
    size = 0
    with open(Path(path), "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()
