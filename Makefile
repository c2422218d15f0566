# ehrsurv_dist — set-up, demo and tests. `make demo` and `make test` are the quick start.
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel of torch that lies on this machine's disk. A GPU user overrides it, e.g.
#   make setup TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ehrsurv-installed
DEMO_OUT ?= demo_out
PYTEST_ARGS ?=

.PHONY: setup demo test check lint typecheck unit integration clean

setup: $(STAMP)

# Idempotent: re-runs only when pyproject.toml changes (or the venv is missing).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh $(DEMO_OUT)

check: setup lint typecheck

lint: setup
	$(VENV)/bin/ruff check ehrsurv_dist tests
	$(VENV)/bin/ruff format --check ehrsurv_dist tests

typecheck: setup
	$(VENV)/bin/mypy ehrsurv_dist

unit: setup
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

integration: setup
	$(PY) -m pytest tests/integration -q $(PYTEST_ARGS)

# The full suite: lint, types, then every test tier (GPU tests skip themselves without a GPU).
test: check
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest tests -q $(PYTEST_ARGS)

clean:
	rm -rf $(DEMO_OUT) .pytest_cache .mypy_cache .ruff_cache
