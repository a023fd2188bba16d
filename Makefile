# Two commands matter: `make run` starts the product, `make test` runs the suite.
# `make run` (and demo, fleet, simulator) builds .venv from requirements.lock, the runtime only;
# `make test` (and test-fast, chaos, bench) from requirements-dev.lock, the runtime with the same
# pins plus the test tools (pytest, moto, Polars, PySpark). Python 3.11 and PyPI are all they need.
# `make test` and test-fast also build .venv-backtest from requirements-backtest.lock: the
# backtesters the tests read our exports with (hftbacktest, NautilusTrader) pin numpy<2.3 and
# pandas<3, below our locks, so they get an interpreter of their own that the tests run as a
# subprocess (ORDERBOOK_BACKTEST_PYTHON, tests/support/backtesters.py).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# One stamp per lock. The dev lock is resolved within the runtime lock's pins (`make lock`), so a
# dev install satisfies the runtime too and stamps both; a runtime install after a dev one finds
# everything installed and leaves the test tools in place.
STAMP := $(VENV)/.installed-runtime
DEV_STAMP := $(VENV)/.installed-dev
LOCK_TOOLS := .lock-tools
BACKTEST_VENV := .venv-backtest
BACKTEST_STAMP := $(BACKTEST_VENV)/.installed-backtest
# The tests find the backtesters' interpreter here; unset, those tests skip (fail under CI).
BACKTEST_PYTHON := ORDERBOOK_BACKTEST_PYTHON=$(CURDIR)/$(BACKTEST_VENV)/bin/python

export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: venv venv-dev venv-backtest system-deps run demo fleet test test-fast chaos bench lock simulator clean

venv: $(STAMP)

venv-dev: $(DEV_STAMP)

venv-backtest: $(BACKTEST_STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

$(DEV_STAMP): requirements-dev.lock requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP) $(DEV_STAMP)

# The backtesters only, never the product (nothing installed with -e): the tests give it files.
$(BACKTEST_STAMP): requirements-backtest.lock
	@test -x $(BACKTEST_VENV)/bin/python || $(PYTHON) -m venv $(BACKTEST_VENV)
	$(BACKTEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BACKTEST_VENV)/bin/python -m pip install --quiet -r requirements-backtest.lock
	@touch $(BACKTEST_STAMP)

# Ports: DAGSTER_PORT (UI, 3000), ORDERBOOK_METRICS_PORT (9108), e.g. `make run DAGSTER_PORT=3001`.
run: venv
	@mkdir -p $(DAGSTER_HOME) data
	$(BIN)/python -m tools.run

# The same, recording from the local simulated exchange instead of Binance, into data/demo/
# (its own buffer, archive and Dagster instance, fixed by tools/run.py; data/demo/demo.env
# holds them for the archive and query commands). ORDERBOOK_SIMULATOR_PORT (9443) too.
demo: venv
	$(BIN)/python -m tools.run --simulator

# A fleet on one machine (docs/fleet.md): PostgreSQL, the simulator, two collectors with their own
# buffers, a code server per collector and one for the merge, daemon and webserver; Ctrl-C stops all.
fleet: venv
	$(BIN)/python -m tools.fleet

# The Debian packages the tests need (Ceph RGW, Chromium, Java for Spark; more as real servers join):
# one named, idempotent step. In CI a test whose part is missing fails instead of skipping.
system-deps:
	sh tools/system-deps.sh

test: venv-dev venv-backtest system-deps
	$(BACKTEST_PYTHON) $(BIN)/python -m pytest -q

# Without the long system tests (slow: every run of a whole system, PostgreSQL, Spark or kill -9),
# the browser check, the Ceph RGW tests (rgw: their Debian packages come with `make system-deps`,
# which only `make test` runs) and the tests of the test doubles (doubles: tests/doubles/, the
# simulated exchange and the S3 fault proxy, not the product): under 3 minutes.
test-fast: venv-dev venv-backtest
	$(BACKTEST_PYTHON) $(BIN)/python -m pytest -q -m "not slow and not browser and not rgw and not doubles"

simulator: venv
	$(BIN)/python -m tools.simulator --port $${ORDERBOOK_SIMULATOR_PORT:-9443}

# The whole system under faults, checked by a never-killed oracle (RELIABILITY.md).
# A 45 s version runs in `make test`; this is the long one: make chaos DURATION=600
DURATION ?= 600
chaos: venv-dev
	$(BIN)/python tests/support/chaos.py --duration $(DURATION) --report chaos-report.json

# Every benchmark script; each prints figure, target, measured, baseline, ratio.
bench: venv-dev
	@for b in benchmarks/ingest_vs_client.py benchmarks/ingest.py benchmarks/archive.py benchmarks/archive_hour.py benchmarks/encodings.py benchmarks/books.py; do \
		[ -f $$b ] && { echo "== $$b"; $(BIN)/python $$b || exit 1; }; \
	done

# Regenerate the locks after changing dependencies in pyproject.toml: the runtime first, then
# runtime + dev within its pins; the backtesters' lock on its own (requirements-backtest.in). uv lives in a venv of its own, so neither lock's venv holds it.
lock:
	@test -x $(LOCK_TOOLS)/bin/uv || { $(PYTHON) -m venv $(LOCK_TOOLS) && $(LOCK_TOOLS)/bin/pip install --quiet uv; }
	$(LOCK_TOOLS)/bin/uv pip compile pyproject.toml --python-version 3.11 -o requirements.lock
	$(LOCK_TOOLS)/bin/uv pip compile pyproject.toml --extra dev -c requirements.lock --python-version 3.11 -o requirements-dev.lock
	$(LOCK_TOOLS)/bin/uv pip compile requirements-backtest.in --python-version 3.11 -o requirements-backtest.lock

clean:
	rm -rf $(VENV) $(BACKTEST_VENV) $(LOCK_TOOLS) .pytest_cache
