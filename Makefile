# The two commands of the README: `make test` and `make demo`. Each sets up what it needs.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup setup-tests lock test lint typecheck unit demo demo-down bench clean

setup:
	@./scripts/setup.sh

# Regenerate requirements.lock from pyproject.toml (UPGRADE=1: newest versions that fit).
lock:
	@./scripts/lock.sh

lint: setup
	@$(BIN)/ruff check reconciler states api lab tests bench

typecheck: setup
	@$(BIN)/mypy

# What only the tests need on top of `setup` (the browser the web pages' test drives).
setup-tests:
	@./scripts/setup.sh --tests

# pytest processes side by side: the VM directors' tests, the ARP invariants, the rest
# (scripts/run-tests.sh).
test: setup-tests lint typecheck
	@./scripts/run-tests.sh

# The pure tests only (no lab, no root): the quick loop while editing. The store tests run on
# SQLite and on a PostgreSQL server they start (skipped where its binaries are missing, never
# under CI=true); the app's and controller's tests on PostgreSQL are left to `make test`.
unit: setup
	@$(BIN)/pytest -q -m "not postgresql_app" tests/unit

demo: setup
	@./scripts/demo.sh

demo-down: setup
	@./scripts/demo.sh down

bench: setup
	@$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
