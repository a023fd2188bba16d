"""The simulator never imports the product: it is the oracle of the product's tests, and a
fact it borrowed from the product would be proven against itself."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

SIMULATOR = Path(__file__).resolve().parents[2] / "tools" / "simulator"
PRODUCT = ("orderbook_core", "orderbook_collector", "orderbook_assets")


def imported(source: str) -> set[str]:
    """Every absolute module ``source`` imports: import statements, and ``importlib.import_module``
    or ``__import__`` called with a literal name (relative imports stay inside the simulator)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found.add(node.module or "")
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            if name in ("__import__", "import_module") and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


@functools.cache
def product_imports(source: str) -> list[str]:
    return sorted(m for m in imported(source) if m.split(".")[0] in PRODUCT)


FILES = sorted(SIMULATOR.glob("*.py"))
PLANTED = [
    "from orderbook_core.streams import USDM_ROUTE\n",
    "import orderbook_collector.config\n",
    "from orderbook_assets import archive\n",
    "import importlib\nimportlib.import_module('orderbook_core.streams')\n",
    "from importlib import import_module\nimport_module('orderbook_collector')\n",
    "m = __import__('orderbook_assets.archive')\n",
]
OWN = "from .facts import Market\nimport orjson\nfrom websockets.asyncio.server import serve\n"
# Parsed at collection: ast.parse late in a long run (after other tests raised the recursion
# limit) hits CPython 3.11's "AST constructor recursion depth mismatch" SystemError.
for _source in (*(p.read_text() for p in FILES), *PLANTED, OWN):
    product_imports(_source)


def test_the_simulator_has_files_to_check():
    assert {p.name for p in FILES} >= {"exchange.py", "facts.py", "__init__.py"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_no_simulator_module_imports_the_product(path):
    bad = product_imports(path.read_text())
    assert not bad, f"tools/simulator/{path.name} imports the product: {bad}; keep Binance's facts in tools/simulator/facts.py"


@pytest.mark.parametrize("source", PLANTED)
def test_a_planted_product_import_is_caught(source):
    assert product_imports(source)


def test_the_simulators_own_and_outside_imports_pass():
    assert product_imports(OWN) == []
