"""The buffer owns every query on its tables: no SQL on a buffer table outside ``orderbook_core/buffer/``.

Both processes ask the buffer package by name (``reads``, ``ledger``, ``coverage``,
``retention``, ``writes``); a statement on a buffer table written in ``orderbook_assets`` or
``orderbook_collector`` would be a second definition of what the buffer holds. Two rules:

- no string of SQL there names a buffer table (the tables come from ``schema.SCHEMA``, so a
  new one is covered the day it is added), except the few DuckDB statements listed in
  :data:`DUCKDB` whose view or temp table has a buffer table's name;
- no statement runs on a buffer connection there (a parameter annotated ``sqlite3.Connection``
  or a name bound to a buffer connection): that also catches a table named by a variable;
- nothing there opens SQLite itself (``sqlite3.connect``): a buffer is opened by
  ``orderbook_core.buffer.db`` (``connect``, or ``connect_readonly``, the one read-only recipe).

Sources are parsed at collection: ``ast.parse`` late in a long run (after other tests raised
the recursion limit) hits CPython 3.11's "AST constructor recursion depth mismatch".
"""

from __future__ import annotations

import ast
import re
import sqlite3
from pathlib import Path

import pytest

from orderbook_core.buffer import schema

ROOT = Path(__file__).resolve().parents[3]
SCANNED = ("orderbook_assets", "orderbook_collector")


def buffer_tables() -> frozenset[str]:
    """Every table a new buffer has, from the migrations themselves (an in-memory database)."""
    con = sqlite3.connect(":memory:")
    try:
        con.executescript(schema.SCHEMA)
        names = con.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        return frozenset(name for (name,) in names)
    finally:
        con.close()


TABLES = buffer_tables()
#: A table named where SQL puts one: after FROM, JOIN, INTO, UPDATE, TABLE, or ON of an index.
_NAMED = re.compile(
    r"\b(?:FROM|JOIN|INTO|UPDATE|TABLE(?:\s+IF\s+NOT\s+EXISTS)?)\s+(?:\w+\.)?(\w+)\b|\bON\s+(\w+)\s*\(",
    re.IGNORECASE,
)
_SQL = re.compile(r"\b(?:SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|REPLACE|DROP)\b", re.IGNORECASE)
_RUNS_SQL = {"execute", "executemany", "executescript"}
#: Calls that return a buffer connection (``closing(...)`` around them too).
_OPENS_BUFFER = re.compile(r"^(?:closing\()?(?:\w+\.)*(?:connect_readonly|read_snapshot)\(|"
                           r"^(?:closing\()?(?:sqlite3|buf|buffer|db)\.connect\(")

#: DuckDB statements (path, enclosing definition, name) whose view or temp table shares a buffer
#: table's name: the analysts' ``depth_snapshot`` view, reconcile's ``sessions`` temp table.
DUCKDB = {
    ("orderbook_assets/analytics/views.py", "TOP_OF_BOOK_SQL", "depth_snapshot"),
    ("orderbook_assets/analytics/views.py", "BOOK_AT_SQL", "depth_snapshot"),
    ("orderbook_assets/analytics/reconcile.py", "Archive.known", "sessions"),
    ("orderbook_assets/analytics/reconcile.py", "compare", "sessions"),
}


def _text(node: ast.expr) -> str | None:
    """A string literal's text; an f-string's with ``{}`` where values go."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    return None


def _docstrings(tree: ast.Module) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


class _Scan(ast.NodeVisitor):
    """Finds, in one module, SQL naming buffer tables and statements run on buffer connections."""

    def __init__(self, path: str, tree: ast.Module):
        self.path, self.docs = path, _docstrings(tree)
        self.scope: list[str] = []
        self.conns: list[set[str]] = [set()]
        self.found: list[str] = []
        self.allowed: set[tuple[str, str, str]] = set()
        # what ``sqlite3.connect`` is spelt in this module: ``import sqlite3 as lite`` makes it
        # ``lite.connect``, ``from sqlite3 import connect as c`` makes it ``c``
        self.opens = {"sqlite3.connect"} | {
            f"{a.asname or a.name}.connect" for n in ast.walk(tree) if isinstance(n, ast.Import)
            for a in n.names if a.name == "sqlite3"} | {
            a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "sqlite3"
            for a in n.names if a.name == "connect"}

    def _where(self, node: ast.AST) -> str:
        return f"{self.path}:{node.lineno} ({'.'.join(self.scope) or '<module>'})"

    def _scoped(self, name: str, node: ast.AST, conns: set[str] | None = None) -> None:
        self.scope.append(name)
        self.conns.append(conns if conns is not None else set(self.conns[-1]))
        self.generic_visit(node)
        self.conns.pop()
        self.scope.pop()

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._scoped(node.name, node)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        args = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
        typed = {a.arg for a in args if a.annotation is not None and "sqlite3.Connection" in ast.unparse(a.annotation)}
        self._scoped(node.name, node, self.conns[-1] | typed)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Assign(self, node: ast.Assign) -> None:
        if not self.scope and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            self._scoped(node.targets[0].id, node)  # a module constant: its name is the scope
            return
        if _OPENS_BUFFER.match(ast.unparse(node.value)):
            self.conns[-1] |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        self.generic_visit(node)

    def visit_withitem(self, node: ast.withitem) -> None:
        if isinstance(node.optional_vars, ast.Name) and _OPENS_BUFFER.match(ast.unparse(node.context_expr)):
            self.conns[-1].add(node.optional_vars.id)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        f = node.func
        if (isinstance(f, ast.Attribute) and f.attr in _RUNS_SQL and isinstance(f.value, ast.Name)
                and f.value.id in self.conns[-1]):
            self.found.append(f"{self._where(node)}: {f.value.id}.{f.attr}() on a buffer connection")
        if ast.unparse(f) in self.opens:
            self.found.append(f"{self._where(node)}: sqlite3.connect() (open it with orderbook_core.buffer.db)")
        self.generic_visit(node)

    def _string(self, node: ast.expr) -> None:
        text = _text(node)
        if text is None or id(node) in self.docs or not _SQL.search(text):
            return
        where = ".".join(self.scope)
        for m in _NAMED.finditer(text):
            table = m.group(1) or m.group(2)
            if (self.path, where, table) in DUCKDB:
                self.allowed.add((self.path, where, table))
            elif table in TABLES:
                self.found.append(f"{self._where(node)}: SQL on the buffer table {table}: {text.strip()[:80]!r}")

    def visit_Constant(self, node: ast.Constant) -> None:
        self._string(node)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        self._string(node)  # its parts are not strings of their own


def scan(path: str, source: str) -> _Scan:
    done = _Scan(path, tree := ast.parse(source))
    done.visit(tree)
    return done


def offences(path: str, source: str) -> list[str]:
    return scan(path, source).found


#: Every scanned module's offences, found at collection (see the module docstring).
SOURCES = {str(p.relative_to(ROOT)): p.read_text() for pkg in SCANNED for p in sorted((ROOT / pkg).rglob("*.py"))}
SCANS = {path: scan(path, source) for path, source in SOURCES.items()}
FOUND = {path: s.found for path, s in SCANS.items()}
#: The DuckDB allowances a statement really used.
ALLOWED_SEEN = set().union(*(s.allowed for s in SCANS.values()))

#: (where, planted source, what it plants): each must be caught.
PLANTED = [
    ("orderbook_assets/archive/pipeline.py", "def f(conn):\n    return conn.execute('SELECT count(*) FROM quarantine')\n",
     "a literal table"),
    ("orderbook_assets/archive/pipeline.py", "def f(c):\n    return c.execute('SELECT 1 FROM silence')\n", "any receiver"),
    ("orderbook_collector/metrics.py", "SQL = '''\nselect max(id) from trade_gap\n'''\n", "a module constant, lower case"),
    ("orderbook_assets/archive/cleanup.py", "def f(t):\n    return f'DELETE FROM export_parts WHERE dataset = {t}'\n",
     "an f-string"),
    ("orderbook_assets/analytics/views.py",
     "import sqlite3\ndef f(conn: sqlite3.Connection, t: str):\n    return conn.execute(f'SELECT * FROM {t}')\n",
     "a table in a variable, on an annotated connection"),
    ("orderbook_assets/analytics/views.py",
     "from orderbook_core import buffer as buf\ndef f(p):\n    con = buf.connect_readonly(p)\n    con.execute('BEGIN')\n",
     "a statement on a read-only connection"),
    ("orderbook_assets/defs/jobs.py",
     "def f(buffer):\n    with closing(buffer.connect()) as conn:\n        conn.execute('PRAGMA wal_checkpoint')\n",
     "a statement on the resource's connection"),
    ("orderbook_assets/analytics/views.py", "TOP_OF_BOOK_SQL = 'SELECT * FROM streams'\n",
     "a buffer table beside an allowed DuckDB view"),
    ("orderbook_collector/metrics.py", "import sqlite3\ndef f(p):\n    return sqlite3.connect(f'file:{p}?mode=ro', uri=True)\n",
     "a read-only connection of its own"),
    ("orderbook_collector/metrics.py", "import sqlite3 as lite\ndef f(p):\n    return lite.connect(p)\n",
     "a connection through an aliased sqlite3"),
    ("orderbook_assets/archive/pipeline.py", "from sqlite3 import connect as opener\ndef f(p):\n    return opener(p)\n",
     "a connection through sqlite3's connect imported by name"),
]
PLANTED_FOUND = [(path, what, offences(path, source)) for path, source, what in PLANTED]


def test_the_tables_come_from_the_schema():
    assert {"depth_snapshot", "sessions", "export_parts", "silence", "trade_gap", "quarantine"} <= TABLES
    assert TABLES == set(schema.OWNER)


@pytest.mark.parametrize("path", sorted(FOUND))
def test_no_buffer_sql_outside_the_buffer_package(path):
    assert not FOUND[path], "move these into orderbook_core/buffer/:\n" + "\n".join(FOUND[path])


def test_every_allowed_duckdb_statement_still_exists():
    """An allowance whose statement is gone would silently allow the next one of that name."""
    assert len(SOURCES) > 50
    assert ALLOWED_SEEN == DUCKDB


@pytest.mark.parametrize("path, what, found", PLANTED_FOUND, ids=[p[2] for p in PLANTED])
def test_a_planted_query_is_caught(path, what, found):
    assert len(found) >= 1, what
