# Entry points. Each target installs what it needs (Debian packages via scripts/deps.sh,
# Python packages into .venv), so a fresh Debian 12 machine needs nothing else.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo demo-netns test unit lint lint-python lint-ansible bench e2e deps venv collection wheelhouse docs-ansible docs-config clean help fuzz fuzz-ci

help:
	@echo "make demo   - site.yml rolls out two gateway containers; tunnel and DNS TTL proven; summary table"
	@echo "make demo-netns - the gateway, dev portal and a WireGuard client in network namespaces (fast)"
	@echo "make e2e    - the Molecule scenarios (default, uninstall, bake, fleet)"
	@echo "make test   - unit, property and namespace integration tests (everything but containers)"
	@echo "make test-fallback - the data-plane tests again with the kernel offloads and the native checksums off"
	@echo "make lint   - ruff, mypy and the Ansible checks"
	@echo "make bench  - side-by-side benchmarks (ours vs the reference) with ratios"
	@echo "make fuzz   - coverage-guided fuzzing (atheris) of every parser of untrusted bytes, >= 100,000 inputs per target"

deps:
	@scripts/deps.sh

$(STAMP): pyproject.toml setup.py gateway_pkg/_native.c
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip
	@$(BIN)/pip install -q -e '.[test,devportal,lint,fuzz]'
	@touch $(STAMP)

venv: $(STAMP)

# The main job: site.yml rolls the gateway out to two containers next to a lab (dev portal,
# DNS, resources) and a WireGuard client; prints the summary table. Needs root and podman
# (installed by scripts/e2e.sh --prepare, with the images and the wheelhouse).
demo: deps venv
	@scripts/e2e.sh --prepare
	@$(BIN)/python scripts/container_demo.py $(if $(KEEP),--keep,)

# The same story without containers, in network namespaces, in about half a minute.
demo-netns: deps venv
	@$(BIN)/python scripts/demo.py $(if $(KEEP),--keep,)

# The Molecule scenarios (all, or SCENARIOS="default fleet").
e2e: deps venv
	@scripts/e2e.sh $(SCENARIOS)

unit: venv
	@$(BIN)/pytest -q $(PYTEST_ARGS)

test: deps venv
	@$(BIN)/pytest -q -m "" $(PYTEST_ARGS)

# The data-plane tests again, every gateway on the fallback path: no kernel offloads and the
# pure-Python checksums (FIREZONE_NATIVE=off; the offload and checksum unit tests in process).
FALLBACK_TESTS = tests/integration/test_dataplane.py tests/integration/test_outer_mtu.py \
	tests/integration/test_wireguard_interop.py tests/integration/test_nat_traversal.py \
	tests/integration/test_dns_tunnel.py tests/unit/tunnel/test_offload.py tests/unit/tunnel/test_checksum.py
test-fallback: deps venv
	@FIREZONE_OFFLOADS=off FIREZONE_NATIVE=off $(BIN)/pytest -q -m "" $(FALLBACK_TESTS) $(PYTEST_ARGS)

lint: lint-python lint-ansible

lint-python: venv
	@$(BIN)/ruff check gateway_pkg tests bench scripts tools molecule fuzz
	@$(BIN)/mypy gateway_pkg
	@$(BIN)/python tools/gen_config_docs.py --check
	@$(BIN)/python tools/check_doc_refs.py

# ansible-lint (production profile), yamllint, defaults vs argument_specs, the generated
# variable table, a syntax check of every playbook, shellcheck of the shell tools.
lint-ansible: venv
	@$(BIN)/yamllint -s roles playbooks molecule .yamllint .ansible-lint
	@PATH=$(abspath $(BIN)):$$PATH $(BIN)/ansible-lint -q --profile production roles playbooks
	@$(BIN)/python tools/check_argument_specs.py
	@$(BIN)/python tools/check_facts.py
	@$(BIN)/python tools/gen_role_docs.py --check
	@for p in playbooks/*.yml; do $(BIN)/ansible-playbook -i inventory.example --syntax-check $$p >/dev/null || exit 1; done
	@if command -v shellcheck >/dev/null; then shellcheck tools/*.sh scripts/*.sh molecule/shared/*.sh molecule/shared/files/*.sh; \
	else echo "shellcheck not installed (make deps)"; fi

# The Ansible collection fzpy.firezone (galaxy.yml): the role and the playbooks, into dist/.
collection: venv
	@$(BIN)/ansible-galaxy collection build --force --output-path dist .

# Wheels of the package and its dependencies, with SHA256SUMS, for the role's offline install.
wheelhouse: venv
	@tools/build_wheelhouse.sh dist/wheelhouse

docs-ansible: venv
	@$(BIN)/python tools/gen_role_docs.py

# docs/configuration.md, from the settings table in gateway_pkg/settings.py.
docs-config: venv
	@$(BIN)/python tools/gen_config_docs.py

bench: deps venv
	@status=0; for script in bench/bench_*.py; do echo "== $$script"; $(BIN)/python $$script || status=1; done; exit $$status

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache

# docs/testing.md#fuzzing: at least 100,000 new inputs per target, two targets at a time.
fuzz: venv
	@$(BIN)/python -m fuzz.run --jobs 2 $(FUZZ_ARGS)

# CI's share: each target replays its corpus, then about 2 minutes of new inputs in all.
fuzz-ci: venv
	@$(BIN)/python -m fuzz.run --budget-seconds 120 $(FUZZ_ARGS)
