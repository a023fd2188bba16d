"""Publishing derived objects: the one recipe for everything the archive writes that is not a part.

A part (``pipeline``) is created once and never replaced. Derived objects (1 s bars, the fleet's
merged datasets, rebuilt books and their end states, the ``SIMULATED.txt`` marker) are computed
from parts and may be computed again when late parts arrive, so they *replace* the current
object, and are verified like parts (``ArchiveStore.put_derived``: write, then HEAD and compare
the SHA-256). Every one goes through :func:`publish_table` or :func:`publish_bytes`:

* the bytes follow from the content alone (a table through ``export.write_table`` with fixed
  writer options), so publishing the same content again changes nothing;
* ``versions`` keeps every build as an immutable, content-addressed object
  (``<versions>/<current folder>/<sha256>.<ext>``) before it becomes current, and keeps the
  build it replaces the same way: nothing a reader once saw is lost (``book_snapshot``);
* ``if_absent`` writes only when nothing is at the key (the marker).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa

from orderbook_core.fsutil import sha256_file

from orderbook_assets.archive import export
from orderbook_assets.archive.store import ArchiveStore


class Published(NamedTuple):
    """One current object after publishing."""

    key: str
    sha256: str
    version_key: str | None  # its immutable version (with ``versions``), else None
    replaced_sha256: str | None  # the build it replaced (kept under its version key); None: new or unchanged
    changed: bool  # False: the current object already had these bytes (or, ``if_absent``, was there)


def version_key(versions: str, current_key: str, sha256: str) -> str:
    """The immutable version of a current object: ``<versions>/<current folder>/<sha256>.<ext>``."""
    folder, _, name = current_key.rpartition("/")
    return f"{versions}/{folder}/{sha256}.{name.rpartition('.')[2]}"


def publish_table(store: ArchiveStore, key: str, table: pa.Table, options: dict | None = None, *,
                  versions: str | None = None) -> Published:
    """Write ``table`` as deterministic Parquet (``options``: the writer's, default
    ``export.WRITER_OPTIONS``) and make it the object at ``key``."""
    with tempfile.TemporaryDirectory(prefix="derived-") as tmp:
        path = Path(tmp) / key.rpartition("/")[2]
        export.write_table(table, path, export.WRITER_OPTIONS if options is None else options)
        return publish_file(store, key, path, versions=versions)


def publish_bytes(store: ArchiveStore, key: str, data: bytes, *, versions: str | None = None,
                  if_absent: bool = False) -> Published:
    """Make ``data`` the object at ``key`` (with ``if_absent``, only when nothing is there)."""
    if if_absent and store.head(key) is not None:
        return Published(key, "", None, None, False)
    with tempfile.TemporaryDirectory(prefix="derived-") as tmp:
        path = Path(tmp) / key.rpartition("/")[2]
        path.write_bytes(data)
        return publish_file(store, key, path, versions=versions)


def publish_file(store: ArchiveStore, key: str, path: Path, *, versions: str | None = None) -> Published:
    """Make the file at ``path`` the object at ``key``, verified; with ``versions``, every build kept."""
    sha = sha256_file(path)[1]
    if versions is None:
        store.put_derived(key, path, sha)
        return Published(key, sha, None, None, True)
    vkey = version_key(versions, key, sha)
    store.put_if_absent(vkey, path, sha)
    before = store.head(key)
    if before is not None and before[1] == sha:
        return Published(key, sha, vkey, None, False)
    if before is not None:  # an earlier build (from before late parts): keep it before replacing it
        old = before[1]
        if not store.head(version_key(versions, key, old)):
            with tempfile.TemporaryDirectory(prefix="derived-old-") as tmp:
                p = Path(tmp) / key.rpartition("/")[2]
                p.write_bytes(store.get(key))
                store.put_if_absent(version_key(versions, key, old), p, sha256_file(p)[1])
    store.put_derived(key, path, sha)
    return Published(key, sha, vkey, None if before is None else before[1], True)
