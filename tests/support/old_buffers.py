"""Buffers as an older program left them: the steps of ``schema.MIGRATIONS`` up to a version,
applied by hand, so a test can fill them and watch ``buffer.connect`` bring them up to date."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from orderbook_core.buffer import schema


def buffer_at(path: str | Path, version: int, *statements: tuple[str, tuple] | str) -> None:
    """A WAL buffer at ``path`` with the steps up to ``version``, then ``statements`` (SQL, or
    (SQL, parameters)), and ``user_version`` set to ``version``."""
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode = WAL")
        for step, sql in schema.MIGRATIONS:
            if step <= version:
                for stmt in sql.split(";"):
                    if stmt.strip():
                        con.execute(stmt)
        for s in statements:
            sql, params = (s, ()) if isinstance(s, str) else s
            con.execute(sql, params)
        con.execute(f"PRAGMA user_version = {int(version)}")
    finally:
        con.close()
