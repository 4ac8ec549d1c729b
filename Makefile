# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
JS := tests/js

.PHONY: run test install install-test lint typecheck check bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

install-test: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	cd $(JS) && npm ci --no-audit --no-fund --loglevel=error

## Run the gateway with its embedded defaults (state and data under ./data).
run: install
	$(BIN)/tus-gateway serve

## Install everything the tests need, then run them.
test: install-test
	$(BIN)/pytest -q

lint: install-test
	$(BIN)/ruff check .

typecheck: install-test
	$(BIN)/mypy

check: lint typecheck test

bench: install
	bash bench/setup.sh
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) $(JS)/node_modules .mypy_cache .ruff_cache .pytest_cache
