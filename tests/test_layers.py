"""The folders are the architecture: imports only point down, and no module imports itself back.

Layers, top to bottom (a module may import its own layer and those below it):

    orderbook_assets.definitions → orderbook_assets.defs → orderbook_assets.derived → orderbook_assets.settings
        → orderbook_assets.analytics → orderbook_assets.books → orderbook_assets.archive
        → orderbook_core.buffer    (the ``orderbook`` command, ``analytics.query``, sits above the settings)
    orderbook_collector (cli, config) → connection → writer → feed → buffer

``orderbook_core.errors`` and ``orderbook_core.fsutil`` are the floor. Only
``defs`` and ``definitions`` import Dagster. The product never imports the simulator or the tests.
``analytics`` only reads the archive: it imports neither the publishing recipe
(``archive.derived``) nor the writable store, and calls no store write; the producers of derived
datasets live in ``derived``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOOR = {"orderbook_core"}
PACKAGES = ("orderbook_core", "orderbook_collector", "orderbook_assets")
#: layer → the layers it may import (besides itself and the floor)
ALLOWED = {
    "orderbook_collector": set(),  # the package docstrings
    "orderbook_assets": set(),
    "orderbook_collector.feed": set(),
    "orderbook_collector.metrics": set(),
    "orderbook_collector.writer": {"orderbook_collector.feed", "orderbook_collector.metrics"},
    "orderbook_collector.config": {"orderbook_collector.feed"},
    "orderbook_collector.connection": {"orderbook_collector.feed", "orderbook_collector.metrics",
                                       "orderbook_collector.writer", "orderbook_collector.config"},
    "orderbook_collector.cli": {"orderbook_collector.connection", "orderbook_collector.config"},
    "orderbook_collector.__main__": {"orderbook_collector.cli"},
    "orderbook_assets.archive": set(),
    "orderbook_assets.books": {"orderbook_assets.archive"},
    "orderbook_assets.analytics": {"orderbook_assets.archive", "orderbook_assets.books"},
    # the archive side's settings: above what they parse, below what reads them
    "orderbook_assets.settings": {"orderbook_assets.archive", "orderbook_assets.books", "orderbook_assets.analytics"},
    # the ``orderbook`` console script reads the settings and hands the other commands their archive
    "orderbook_assets.analytics.query": {"orderbook_assets.archive", "orderbook_assets.books", "orderbook_assets.analytics",
                                         "orderbook_assets.settings"},
    "orderbook_assets.derived": {"orderbook_assets.archive", "orderbook_assets.books", "orderbook_assets.analytics",
                                 "orderbook_assets.settings"},
    "orderbook_assets.defs": {"orderbook_assets.archive", "orderbook_assets.books", "orderbook_assets.analytics",
                              "orderbook_assets.derived", "orderbook_assets.settings"},
    "orderbook_assets.definitions": {"orderbook_assets.defs", "orderbook_assets.settings"},
}
DAGSTER_OK = {"orderbook_assets.defs", "orderbook_assets.definitions"}
#: layer → modules of an allowed layer it still may not import: the read-only side never
#: reaches what publishes or writes archive objects.
_WRITERS = ("orderbook_assets.archive.derived", "orderbook_assets.archive.store", "orderbook_assets.archive.pipeline",
            "orderbook_assets.archive.merge", "orderbook_assets.archive.cleanup")
#: (``analytics.query``, the console script, is a layer of its own above the settings: it is
#: read-only like the rest of analytics.)
FORBIDDEN = {"orderbook_assets.analytics": _WRITERS, "orderbook_assets.analytics.query": _WRITERS}
#: The calls that write archive objects (``ArchiveStore`` and ``archive.derived``), by attribute name.
STORE_WRITES = {"put_if_absent", "put_derived", "publish_table", "publish_bytes", "publish_file"}


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def layer_of(module: str) -> str | None:
    best = None
    for layer in (*ALLOWED, *FLOOR):
        if (module == layer or module.startswith(layer + ".")) and (best is None or len(layer) > len(best)):
            best = layer
    return best


def imports_of(module: str, path: Path | None = None, source: str | None = None) -> set[str]:
    """Every module ``module`` imports: import statements, and ``importlib.import_module`` or
    ``__import__`` called with a literal name."""
    is_package = path.name == "__init__.py" if path is not None else False
    tree = ast.parse(source if source is not None else path.read_text())
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # ``from pkg import module`` imports the module; ``from module import name``, the module
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
        elif isinstance(node, ast.Call) and _dynamic_import(node.func) and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.add(arg.value)
    return found


def _dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in ("__import__", "import_module")
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


MODULES = modules()
#: Each module's imports, parsed at collection: ``ast.parse`` late in a long run (after other
#: tests raised the recursion limit) hits CPython 3.11's "AST constructor recursion depth
#: mismatch" SystemError, so nothing here parses while tests run.
IMPORTS: dict[str, set[str]] = {m: imports_of(m, p) for m, p in MODULES.items()}


def imports(module: str) -> set[str]:
    return IMPORTS[module]


def violations(module: str, imported: set[str]) -> list[str]:
    """The imports of ``module`` that point up or across the layers."""
    own = layer_of(module)
    assert own is not None, f"{module} belongs to no layer: add it to ALLOWED in {__file__}"
    allowed = ALLOWED.get(own, set()) | {own} | FLOOR
    bad = []
    for name in imported:
        top = name.split(".")[0]
        if top in ("tools", "tests", "support"):
            bad.append(name)
        if top == "dagster" or top.startswith("dagster_"):
            if own not in DAGSTER_OK:
                bad.append(name)
        if top in PACKAGES:
            target = name if name in MODULES or name.rpartition(".")[0] not in MODULES else name.rpartition(".")[0]
            target_layer = layer_of(target)
            if target_layer is None or target_layer not in allowed:
                bad.append(f"{name} ({target_layer})")
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN.get(own, ())):
            bad.append(f"{name} (forbidden in {own})")
    return sorted(set(bad))


def store_writes(path: Path | None = None, source: str | None = None) -> set[str]:
    """The archive-writing calls (:data:`STORE_WRITES`) a module makes, however it got the object."""
    tree = ast.parse(source if source is not None else path.read_text())
    return {n.func.attr for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in STORE_WRITES}


#: The read-only layer's modules and the archive writes each makes, parsed at collection (see IMPORTS).
READ_ONLY = {m: store_writes(p) for m, p in MODULES.items() if layer_of(m) == "orderbook_assets.analytics"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    bad = violations(module, imports(module))
    assert not bad, f"{module} imports upward or across: {bad}"


#: (module, planted source): each must be caught; parsed at collection (see IMPORTS).
PLANTED = [
    ("orderbook_assets.archive.export", "from orderbook_collector.feed import sync\n"),
    ("orderbook_assets.archive.export", "import orderbook_collector.writer.thread\n"),
    ("orderbook_collector.writer.thread", "from orderbook_assets.archive import export\n"),
    ("orderbook_collector.writer.thread", "import importlib\nm = importlib.import_module('orderbook_assets.archive.export')\n"),
    ("orderbook_assets.books.builder", "from importlib import import_module\nimport_module('orderbook_collector.config')\n"),
    ("orderbook_assets.books.builder", "m = __import__('orderbook_collector')\n"),
    ("orderbook_core.streams", "from orderbook_collector.feed import protocol\n"),
    ("orderbook_core.payloads", "import importlib\nimportlib.import_module('orderbook_assets')\n"),
    ("orderbook_core.buffer.reads", "from orderbook_assets.archive.export import SOURCES\n"),
    ("orderbook_assets.analytics.views", "from orderbook_assets.archive import derived\n"),
    ("orderbook_assets.analytics.books", "from orderbook_assets.archive.derived import publish_table\n"),
    ("orderbook_assets.analytics.query", "import importlib\nimportlib.import_module('orderbook_assets.archive.derived')\n"),
    ("orderbook_assets.analytics.backtest", "from orderbook_assets.archive.store import open_store\n"),
    ("orderbook_assets.analytics.replay", "from orderbook_assets.derived import bars\n"),
]
PLANTED_IMPORTS = [(module, source, imports_of(module, source=source)) for module, source in PLANTED]


@pytest.mark.parametrize("module, source, imported", PLANTED_IMPORTS)
def test_a_planted_import_across_the_processes_is_caught(module, source, imported):
    """Either process importing the other, or the kernel importing either, fails the layer test,
    written as an import statement or through importlib."""
    assert imported and violations(module, imported), source


def test_analytics_only_reads_the_archive():
    """No analytics module calls a store write or publishes (imports are held by the layer test)."""
    assert {"orderbook_assets.analytics.views", "orderbook_assets.analytics.backtest"} <= set(READ_ONLY)
    writers = {m: w for m, w in READ_ONLY.items() if w}
    assert not writers, f"analytics writes to the archive: {writers}"


PLANTED_WRITE = store_writes(source="def keep(store, key, path, sha):\n    store.put_derived(key, path, sha)\n")


def test_a_planted_store_write_is_caught():
    assert PLANTED_WRITE == {"put_derived"}


def test_the_kernel_is_imported_by_both_processes():
    users = {layer_of(m).split(".")[0] for m in MODULES if not m.startswith("orderbook_core")
             and any(n.startswith("orderbook_core") for n in imports(m))}
    assert users == {"orderbook_collector", "orderbook_assets"}


def test_no_import_cycles():
    """No module reaches itself through imports, package faces (``__init__``) included."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for m, path in MODULES.items():
        for name in imports(m):
            target = name if name in MODULES else name.rpartition(".")[0]
            if target in MODULES and target != m:
                graph[m].add(target)
    cycles = []
    for start in sorted(graph):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(path + [start])
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
    assert not cycles, f"import cycles: {cycles[:5]}"
