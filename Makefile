# Entry points. Each target installs what it needs (Debian packages via scripts/deps.sh,
# Python packages into .venv), so a fresh Debian 12 machine needs nothing else.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test unit lint bench e2e deps venv wheelhouse clean help

help:
	@echo "make demo   - dev portal + gateway + WireGuard client in network namespaces, end to end"
	@echo "make test   - unit, property and namespace integration tests (everything but containers)"
	@echo "make lint   - ruff, mypy and the Ansible checks"
	@echo "make bench  - side-by-side benchmarks (ours vs the reference) with ratios"

deps:
	@scripts/deps.sh

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip
	@$(BIN)/pip install -q -e '.[test,devportal,lint]'
	@touch $(STAMP)

venv: $(STAMP)

demo: deps venv
	@$(BIN)/python scripts/demo.py $(if $(KEEP),--keep,)

unit: venv
	@$(BIN)/pytest -q $(PYTEST_ARGS)

test: deps venv
	@$(BIN)/pytest -q -m "" $(PYTEST_ARGS)

lint: venv
	@$(BIN)/ruff check gateway_pkg tests bench scripts
	@$(BIN)/mypy gateway_pkg

bench: deps venv
	@for script in bench/bench_*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache
