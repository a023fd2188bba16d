# Two commands matter: `make run` starts the product, `make test` runs the suite.
# Both build .venv from requirements.lock first (Python 3.11 and PyPI are all they need).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: venv run demo test test-fast chaos bench lock simulator clean

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

run: venv
	@mkdir -p $(DAGSTER_HOME) data
	$(BIN)/python -m tools.run

# The same, recording from the local simulated exchange instead of Binance.
demo: venv
	@mkdir -p $(DAGSTER_HOME) data
	$(BIN)/python -m tools.run --simulator

# Chromium (Debian package) is what the real-browser test drives; without it that one test skips.
# Java 17 (tools/system-deps.sh java) runs the Spark test; without it that test skips, except on CI.
test: venv
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
		|| echo "chromium could not be installed: the browser test will be skipped"
	@bash tools/system-deps.sh java || echo "Java 17 could not be installed: the Spark test skips (fails where CI is set)"
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow and not browser"

simulator: venv
	$(BIN)/python -m tools.simulator --port 9443

# The whole system under faults, checked by a never-killed oracle (RELIABILITY.md).
# A 45 s version runs in `make test`; this is the long one: make chaos DURATION=600
DURATION ?= 600
chaos: venv
	$(BIN)/python tests/support/chaos.py --duration $(DURATION) --report chaos-report.json

# Every benchmark script; each prints figure, target, measured, baseline, ratio.
bench: venv
	@for b in benchmarks/ingest.py benchmarks/archive.py benchmarks/encodings.py; do \
		[ -f $$b ] && { echo "== $$b"; $(BIN)/python $$b || exit 1; }; \
	done

# Regenerate the lock after changing dependencies in pyproject.toml.
lock:
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache
