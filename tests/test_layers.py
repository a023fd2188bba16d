"""The folders are the architecture: imports only point down, and no module imports itself back.

Layers, top to bottom (a module may import its own layer and those below it):

    orderbook_assets.definitions → orderbook_assets.defs → orderbook_assets.analytics
        → orderbook_assets.books → orderbook_assets.archive → orderbook_collector.buffer
    orderbook_collector (cli, config) → connection → writer → feed → buffer

``orderbook_collector.errors`` and ``orderbook_collector.fsutil`` are the floor. Only
``defs`` and ``definitions`` import Dagster. The product never imports the simulator or the tests.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOOR = {"orderbook_collector.errors", "orderbook_collector.fsutil"}
#: layer → the layers it may import (besides itself and the floor)
ALLOWED = {
    "orderbook_collector": set(),  # the package docstrings
    "orderbook_assets": set(),
    "orderbook_collector.buffer": set(),
    "orderbook_collector.feed": {"orderbook_collector.buffer"},
    "orderbook_collector.metrics": set(),
    "orderbook_collector.writer": {"orderbook_collector.buffer", "orderbook_collector.feed", "orderbook_collector.metrics"},
    "orderbook_collector.config": {"orderbook_collector.feed"},
    "orderbook_collector.connection": {"orderbook_collector.buffer", "orderbook_collector.feed", "orderbook_collector.metrics",
                                       "orderbook_collector.writer", "orderbook_collector.config"},
    "orderbook_collector.cli": {"orderbook_collector.connection", "orderbook_collector.config"},
    "orderbook_collector.__main__": {"orderbook_collector.cli"},
    "orderbook_assets.archive": {"orderbook_collector.buffer"},
    "orderbook_assets.books": {"orderbook_collector.buffer", "orderbook_assets.archive"},
    "orderbook_assets.analytics": {"orderbook_collector.buffer", "orderbook_assets.archive", "orderbook_assets.books"},
    "orderbook_assets.defs": {"orderbook_collector.buffer", "orderbook_assets.archive", "orderbook_assets.books",
                              "orderbook_assets.analytics"},
    "orderbook_assets.definitions": {"orderbook_assets.defs"},
}
DAGSTER_OK = {"orderbook_assets.defs", "orderbook_assets.definitions"}


def modules() -> dict[str, Path]:
    out = {}
    for pkg in ("orderbook_collector", "orderbook_assets"):
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


def imports_of(module: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
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
    return found


MODULES = modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    own = layer_of(module)
    assert own is not None, f"{module} belongs to no layer: add it to ALLOWED in {__file__}"
    allowed = ALLOWED.get(own, set()) | {own} | FLOOR
    bad = []
    for name in imports_of(module, MODULES[module]):
        top = name.split(".")[0]
        if top in ("tools", "tests", "support"):
            bad.append(name)
        if top == "dagster" or top.startswith("dagster_"):
            if layer_of(module) not in DAGSTER_OK:
                bad.append(name)
        if top in ("orderbook_collector", "orderbook_assets") and name in MODULES or name.rpartition(".")[0] in MODULES:
            target = name if name in MODULES else name.rpartition(".")[0]
            target_layer = layer_of(target)
            if target_layer is not None and target_layer not in allowed:
                bad.append(f"{name} ({target_layer})")
    assert not bad, f"{module} imports upward or across: {sorted(set(bad))}"


def test_no_import_cycles():
    """No module reaches itself through imports, package faces (``__init__``) included."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for m, path in MODULES.items():
        for name in imports_of(m, path):
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
