# SAGE Studio. Quick start: `make run`, `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 8000
# The browser tests (tests/e2e) drive Debian's chromium; SAGE_CHROMIUM points them elsewhere.
CHROMIUM ?= $(or $(SAGE_CHROMIUM),/usr/bin/chromium)
FAST_MARKERS := not postgres and not redis and not browser and not slow

.PHONY: setup run test test-fast lint browser-deps fmt bench load clean

setup: $(STAMP)

# Re-runs only when pyproject.toml changes (the stamp is newer otherwise).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: setup
	$(BIN)/sage-studio migrate
	$(BIN)/sage-studio demo --if-missing
	$(BIN)/sage-studio serve --host $(HOST) --port $(PORT)

# The whole suite, after the checks CI enforces (lint, format, layering contracts).
test: setup browser-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/pytest $(PYTEST_ARGS)

# Unit and API tests on SQLite only, on every core: no PostgreSQL, Redis, browser or slow test, and
# not the OpenAPI fuzzer (property-based, over a minute alone; it runs in make test). About a minute
# on two cores.
test-fast: setup
	$(BIN)/pytest -q -n auto -m "$(FAST_MARKERS)" --ignore=tests/api/test_fuzz_all.py tests/unit tests/api $(PYTEST_ARGS)

# .pre-commit-config.yaml runs the same four commands.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

# Debian's chromium for tests/e2e: installed when missing and we are root, else the exact commands.
browser-deps:
	@if [ -d tests/e2e ] && [ ! -x "$(CHROMIUM)" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "make: installing Debian's chromium for the browser tests (tests/e2e)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else \
	    echo "make: the browser tests (tests/e2e) need Debian's chromium at $(CHROMIUM), which is missing." >&2; \
	    echo "  install it:  sudo apt-get update && sudo apt-get install -y chromium" >&2; \
	    echo "  or point to another build:  make test SAGE_CHROMIUM=/path/to/chromium" >&2; \
	    echo "  or run everything else:  make test-fast  (unit and API tests on SQLite)" >&2; \
	    exit 1; \
	  fi; \
	  test -x "$(CHROMIUM)" || { echo "make: chromium is still missing at $(CHROMIUM)" >&2; exit 1; }; \
	fi

fmt: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup
	$(BIN)/python -m sage bench --jobs 2 --out bench/ml.md
	$(BIN)/python bench/api_bench.py --out bench/api.md
	$(BIN)/python bench/worker_bench.py --out bench/worker.md
	$(BIN)/python bench/ui_bench.py --out bench/ui.md

# Locust against the full stack (`python -m worker serve`), headless, on SQLite and on PostgreSQL +
# Redis (LOAD_USERS, LOAD_SECONDS, LOAD_MODES); writes bench/load.md.
LOAD_USERS ?= 27
LOAD_SECONDS ?= 60
LOAD_MODES ?= embedded,production
load: setup
	$(BIN)/python bench/load_bench.py --users $(LOAD_USERS) --seconds $(LOAD_SECONDS) --modes $(LOAD_MODES) --out bench/load.md

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache .mypy_cache .import_linter_cache
