# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SCENARIO ?= simulations/scenarios/federated_digits.yaml

FLWR_HOME ?= $(CURDIR)/.flwr
FLWR_RUN_CONFIG ?= out-dir="$(CURDIR)/runs"

.PHONY: install run test gate bench flwr-run clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	@echo "[install 1/2] torch 2.13.0 (the local CPU build first: any other spec pulls several GB of CUDA packages)"
	$(PY) -m pip install --progress-bar on torch==2.13.0
	@echo "[install 2/2] fedadmp and its dependencies (flwr[simulation], ray, torch-pruning, onnxruntime, ...)"
	$(PY) -m pip install --progress-bar on -e ".[dev]"
	@echo "[install] done"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/fedadmp simulate $(SCENARIO)

# The gate first (lint, format, types), then the suite.
gate: $(STAMP)
	@echo "[gate] ruff check, ruff format --check, mypy (strict on admp/, strategies/, server/, clients/, simulations/)"
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: gate
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/inference_latency.py
	$(PY) benchmarks/federated_overhead.py
	$(PY) benchmarks/fleet_memory.py

# The same app through Flower's own CLI: a local SuperLink simulating one SuperNode per device.
flwr-run: $(STAMP)
	mkdir -p $(FLWR_HOME)
	printf '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n\n[superlink.local.options]\nnum-supernodes = 10\n' > $(FLWR_HOME)/config.toml
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH FLWR_HOME=$(FLWR_HOME) FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
		RAY_TMPDIR=$$(mktemp -d) $(VENV)/bin/flwr run . local --run-config '$(FLWR_RUN_CONFIG)' --stream

clean:
	rm -rf $(VENV) runs
