"""hftbacktest and NautilusTrader, run in their own interpreter (``.venv-backtest``, built by
``make test`` from requirements-backtest.lock): they pin numpy<2.3 and pandas<3, below our locks,
so they cannot be imported next to the product. tests/analytics/test_backtest.py calls ``run``;
this file is then run as a script by that interpreter:

    python tests/support/backtesters.py <command> [<export folder>] [args...]

It executes the docs/backtesting.md snippets as written (the export folder swapped in, the one
line that changes) and prints one JSON object: exactly the values the test compares with our
archive and books, so every assertion stays in the test. The script imports only the standard
library and the backtesters (never the product, never pytest).

Commands:
  constants                              hftbacktest's event flags and its event dtype
  validate <file.npz>                    validate_event_order on the array at key ``data``
  hftbacktest-convert <export> <t0> <t>...  the converter snippet, then the run snippet, and
                                            the book at each time t (µs; t0: the day's first event)
  hftbacktest-npz <export> <t0> <t>...      the same from ``--format hftbacktest``'s array
  nautilus <export>                      the NautilusTrader snippet's loaded objects
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "backtesting.md"
#: The variable `make test` sets to the backtesters' interpreter.
PYTHON_VAR = "ORDERBOOK_BACKTEST_PYTHON"
#: A run imports hftbacktest (numba) or NautilusTrader and backtests a day of one-second steps:
#: seconds on an idle machine; generous because the machine running the suite is shared.
RUN_TIMEOUT_S = 240
FLAG_NAMES = ("EXCH_EVENT", "LOCAL_EVENT", "BUY_EVENT", "SELL_EVENT", "DEPTH_EVENT", "TRADE_EVENT",
              "DEPTH_CLEAR_EVENT", "DEPTH_SNAPSHOT_EVENT")


# --------------------------------------------------------------------------- the test's side


def run(command: str, *args: object) -> dict:
    """Run ``command`` in the backtesters' interpreter and return what it printed; skip (a
    developer machine) / fail (CI) when that interpreter is not there."""
    from support.requires import missing  # pytest's side only: the script never imports pytest

    python = os.environ.get(PYTHON_VAR, "")
    if not python or not os.access(python, os.X_OK):
        missing(f"{PYTHON_VAR} does not name the backtesters' interpreter ({python or 'unset'}): "
                "make test builds .venv-backtest from requirements-backtest.lock and sets it")
    res = subprocess.run([python, __file__, command, *map(str, args)], capture_output=True, text=True,
                         timeout=RUN_TIMEOUT_S, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert res.returncode == 0, f"backtesters.py {command} exited {res.returncode}:\n{res.stderr}"
    return json.loads(res.stdout.splitlines()[-1])


# --------------------------------------------------------------------------- the script's side


def snippet(name: str, export: str | None = None, ns: dict | None = None) -> dict:
    """Run the docs/backtesting.md code block after ``<!-- snippet: name -->`` in ``ns``, with the
    export folder swapped in."""
    m = re.search(rf"<!-- snippet: {name} -->\s*```python\n(.*?)```", DOC.read_text(), re.S)
    if not m:
        raise SystemExit(f"docs/backtesting.md has no python block after <!-- snippet: {name} -->")
    code = m.group(1)
    if "export = " in code:
        if not re.search(r'^export = "export"', code, re.M):
            raise SystemExit(f"docs/backtesting.md:{name} sets `export` other than as `export = \"export\"`")
        code = re.sub(r'^export = "export"', f"export = {export!r}", code, flags=re.M)
    ns = {} if ns is None else ns
    exec(compile(code, f"docs/backtesting.md:{name}", "exec"), ns)  # noqa: S102 (our own documentation)
    return ns


def validation_error(data) -> str | None:
    """None when hftbacktest's validate_event_order accepts ``data``, else its message."""
    from hftbacktest.data.validation import validate_event_order

    try:
        validate_event_order(data)
    except ValueError as e:
        return str(e)
    return None


def constants() -> dict:
    import hftbacktest.types as types

    dt = types.event_dtype
    return {"flags": {name: int(getattr(types, name)) for name in FLAG_NAMES},
            "event_dtype": {"names": list(dt.names), "formats": [dt.fields[n][0].str for n in dt.names],
                            "offsets": [dt.fields[n][1] for n in dt.names], "itemsize": dt.itemsize,
                            "aligned": bool(dt.isalignedstruct)}}


def event_kinds(data) -> dict[str, int]:
    """How many rows of each event kind (``ev & 0xFF``): the test picks its TRADE_EVENT."""
    import numpy as np

    kinds, counts = np.unique(data["ev"] & 0xFF, return_counts=True)
    return {str(int(k)): int(c) for k, c in zip(kinds, counts)}


def sample_books(backtest, data, times_us: list[int], t0_us: int) -> list[dict]:
    """The docs' ``backtest`` over ``data``, its book read at each time (µs, at or after the day's
    first event ``t0_us``, where hftbacktest's clock starts): the clock, best bid and ask, and
    every level as (side, price, qty)."""
    from hftbacktest import BUY_EVENT

    hbt = backtest(data)
    seen = []
    try:
        now = t0_us * 1000
        for t in times_us:
            hbt.elapse(t * 1000 - now)  # 1 once the data is used up: the book stays
            now = t * 1000
            depth = hbt.depth(0)
            snap = depth.snapshot()
            levels = [("bid" if int(e["ev"]) & BUY_EVENT else "ask", float(e["px"]), float(e["qty"])) for e in snap]
            depth.snapshot_free(snap)
            seen.append({"timestamp": int(hbt.current_timestamp), "best_bid": float(depth.best_bid),
                         "best_ask": float(depth.best_ask), "levels": levels})
    finally:
        hbt.close()
    return seen


def hftbacktest(source: str, export: str, t0_us: int, times_us: list[int]) -> dict:
    import numpy as np

    ns = snippet(source, export)
    data = ns["data"]
    out: dict = {}
    if source == "hftbacktest-npz":
        out["data"] = list(data)
        arr = np.load(data[0])["data"]
        from hftbacktest.types import event_dtype

        out["npz_dtype_is_event_dtype"] = bool(arr.dtype == event_dtype)
        out["validation_error"] = validation_error(arr)
    else:
        out["validation_error"] = validation_error(data)
        out["event_kinds"] = event_kinds(data)
    run_ns = snippet("hftbacktest-run", export, {"data": data})
    out["mids"] = len(run_ns["mids"])
    out["books"] = sample_books(run_ns["backtest"], data, times_us, t0_us)
    return out


def nautilus(export: str) -> dict:
    ns = snippet("nautilus", export)

    def delta(d):
        return d.order.side.name, d.order.price.as_double(), d.order.size.as_double(), d.ts_event, d.ts_init

    def trade(t):
        return str(t.trade_id), t.aggressor_side.name, t.price.as_double(), t.size.as_double(), t.ts_event, t.ts_init

    def quote(q):
        return (q.bid_price.as_double(), q.bid_size.as_double(), q.ask_price.as_double(), q.ask_size.as_double(),
                q.ts_event, q.ts_init)

    def levels(orders):
        return [(o.price.as_double(), o.size.as_double()) for o in orders]

    return {"delta_instruments": [str(d.instrument_id) for d in ns["deltas"]],
            "deltas": [delta(d) for d in ns["deltas"]], "trades": [trade(t) for t in ns["trades"]],
            "quotes": [quote(q) for q in ns["quotes"]],
            "depth": [{"bids": levels(d.bids), "asks": levels(d.asks)} for d in ns["depth"]]}


def main(argv: list[str]) -> dict:
    command, args = argv[0], argv[1:]
    if command == "constants":
        return constants()
    if command == "validate":
        import numpy as np

        return {"validation_error": validation_error(np.load(args[0])["data"])}
    if command in ("hftbacktest-convert", "hftbacktest-npz"):
        return hftbacktest(command, args[0], int(args[1]), [int(t) for t in args[2:]])
    if command == "nautilus":
        return nautilus(args[0])
    raise SystemExit(f"backtesters.py: unknown command {command!r} (see its docstring)")


if __name__ == "__main__":
    result = main(sys.argv[1:])
    # NaN (hftbacktest's best price of an empty book) as JSON's NaN, which json.loads reads back
    print(json.dumps(result, allow_nan=True))
