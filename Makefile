# SAGE Studio. Quick start: `make run`, `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup run test lint fmt bench load clean

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

test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup
	$(BIN)/python -m sage bench --jobs 2 --out bench/ml.md
	$(BIN)/python bench/api_bench.py --out bench/api.md
	$(BIN)/python bench/worker_bench.py --out bench/worker.md
	$(BIN)/python bench/ui_bench.py --out bench/ui.md

# Locust against a real server, headless (LOAD_USERS, LOAD_SECONDS); writes bench/load.md.
LOAD_USERS ?= 25
LOAD_SECONDS ?= 60
load: setup
	$(BIN)/python bench/load_bench.py --users $(LOAD_USERS) --seconds $(LOAD_SECONDS) --out bench/load.md

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache
