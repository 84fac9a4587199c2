# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SCENARIO ?= simulations/scenarios/federated_digits.yaml


.PHONY: install run test test-deployment gate bench flwr-run docs clean

# uv installs the dependencies several times faster than pip; it keeps the torch that pip took from the
# local wheel, as that satisfies every range. Both steps compile bytecode at install time: where
# PYTHONDONTWRITEBYTECODE is set (as on this machine), nothing compiled later is kept, and every process
# would compile torch, Flower and Ray anew on import. pip is the fallback where uv cannot reach its index.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	@echo "[install 1/2] torch 2.13.0 (the local CPU build first: any other spec pulls several GB of CUDA packages), and uv"
	$(PY) -m pip install --progress-bar on torch==2.13.0 uv
	@echo "[install 2/2] fedadmp and its dependencies (flwr[simulation], ray, torch-pruning, onnxruntime, ...)"
	$(VENV)/bin/uv pip install --compile-bytecode --python $(PY) -e ".[dev,edge]" || $(PY) -m pip install --progress-bar on -e ".[dev,edge]"
	@echo "[install] done"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/fedadmp simulate $(SCENARIO)

# The gate first (lint, format, types), then the suite.
gate: $(STAMP)
	@echo "[gate] ruff check, ruff format --check, mypy (strict on admp*/, strategies/, server/, clients/, simulations/, benchmarks/)"
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The suite without the deployment end-to-end tests (marked `deployment`), which `test-deployment` runs.
test: gate
	$(PY) -m pytest -q -m "not deployment"

test-deployment: $(STAMP)
	$(PY) -m pytest -q -m deployment

bench: $(STAMP)
	$(PY) benchmarks/inference_latency.py
	$(PY) benchmarks/federated_overhead.py
	$(PY) benchmarks/fleet_memory.py

# The same app and the make-run scenario through Flower's own CLI, on a simulation SuperLink that
# deploy/flwr_run.py starts on a free loopback port and stops afterwards (with everything it started).
flwr-run: $(STAMP)
	$(PY) deploy/flwr_run.py $(SCENARIO) --out-dir $(CURDIR)/runs

# The documentation site (docs/ + mkdocs.yml) into site/; --strict fails on any warning.
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) runs
