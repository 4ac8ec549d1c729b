# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
JS := tests/js
BROWSER := tests/browser
WEB := web

.PHONY: run test test-quick install install-test system-packages web lint typecheck check fuzz \
    bench clean

# Debian packages the tests run for real: a Redis server, HAProxy (scale-out tests), nginx
# (the shipped proxy configs) and Chromium (the upload page; playwright-core drives it and
# downloads no browser of its own).
SYSTEM_PACKAGES := redis-server haproxy nginx chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

system-packages:
	@if ! command -v redis-server >/dev/null || ! { command -v haproxy || test -x /usr/sbin/haproxy; } >/dev/null \
			|| ! { command -v nginx || test -x /usr/sbin/nginx; } >/dev/null \
			|| ! command -v chromium >/dev/null; then \
		echo "installing $(SYSTEM_PACKAGES) (Debian packages used by the tests)"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; \
	fi

install-test: $(BIN)/python system-packages
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet -e ./fake-notion
	cd $(JS) && npm ci --no-audit --no-fund --loglevel=error
	cd $(BROWSER) && npm ci --no-audit --no-fund --loglevel=error
	cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error

## Run the gateway with its embedded defaults (state and data under ./data).
run: install
	$(BIN)/tus-gateway serve

## Install everything the tests need, then run them. Most tests wait on real processes,
## sockets and disks rather than compute, so three workers share the two cores well; work
## stealing keeps one long crash test from holding the end of the run.
test: install-test
	$(BIN)/pytest -q -n 3 --dist worksteal

## The inner loop: the same suite without the tests marked slow (crash, kill, browser, fuzz,
## Notion fault runs; see tests/conftest.py). make test still runs them all.
test-quick: install-test
	$(BIN)/pytest -q -n 3 --dist worksteal -m "not slow"

## Rebuild the upload page (gateway/static/, committed) from web/ with the pinned packages.
web:
	cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error && node build.mjs

lint: install-test
	$(BIN)/ruff check .

typecheck: install-test
	$(BIN)/mypy

check: lint typecheck test

## Send 100,000 hostile requests to a real gateway on each state backend (the same generator
## as the suite's 2,000; a fresh seed each run, printed first: FUZZ_SEED=<n> repeats a run).
FUZZ_REQUESTS ?= 100000
FUZZ_SEED ?= random
fuzz: install-test
	FUZZ_REQUESTS=$(FUZZ_REQUESTS) FUZZ_SEED=$(FUZZ_SEED) \
		$(BIN)/pytest -q -s tests/gateway/test_fuzz.py -k hostile_requests

bench: install
	bash bench/setup.sh
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) $(JS)/node_modules $(BROWSER)/node_modules $(WEB)/node_modules test-artifacts \
		.mypy_cache .ruff_cache .pytest_cache
