# Entry points for a fresh clone: `make dev` runs the local stack, `make test` runs the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup dev test lint bench

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# `npm install`, not `npm ci`: @foundry-rs/anvil lists its other platforms' binaries with empty version
# ranges, which `npm ci` rejects as a lock mismatch. The lock file still pins what gets installed.
node_modules/.installed: package.json package-lock.json
	npm install --no-audit --no-fund
	touch $@

setup: $(VENV)/.installed node_modules/.installed

dev: setup
	$(BIN)/x402-dev

test: setup
	$(BIN)/pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
