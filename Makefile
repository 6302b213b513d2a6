# neuralode — `make help` lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

VENV ?= .venv
PY := $(VENV)/bin/python
NEURALODE := $(VENV)/bin/neuralode
PROFILE ?= smoke
REPORT_DIR ?= outputs/report-$(PROFILE)
DATA ?= digits
DATA_ROOT ?=
# make reproduce: runs trained at once, each on its share of the cores
JOBS ?= 2
# make reproduce SEEDS=3: every run once per seed (0, 1, 2); the report gives mean ± sd over them
SEEDS ?=
SEEDS_ARG = $(if $(SEEDS),--seeds $(shell seq 0 $$(($(SEEDS) - 1))))
# The demo per data set: on the embedded digits, profile=demo trains in full an ODE-Net of half the paper's
# width (32 channels), which takes about 80 s on a 2-core CPU; MNIST-size data sets take profile=smoke.
DEMO_ARGS_digits = profile=demo model.channels=32
# make demo TASK=dynamics: the course's cubic-oscillator neural ODE instead (task_profile/dynamics_demo.yaml).
TASK ?= mnist

.PHONY: help install demo test test-all lint smoke bench bench-quick reproduce report clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

install: $(PY) ## Create .venv and install neuralode with the dev extra (pytest, torchdiffeq, scipy)
	$(PY) -m pip install -e ".[dev]"

demo: ## Train the ODE-Net on the embedded digits, offline, in about 80 s (DATA=mnist|fashion_mnist DATA_ROOT=..., TASK=dynamics)
ifeq ($(TASK),dynamics)
	$(NEURALODE) train task=dynamics data=cubic model=node model.cubic_feature=true profile=demo
else
	$(NEURALODE) train task=mnist model=odenet solver=dopri5 data=$(DATA) $(or $(DEMO_ARGS_$(DATA)),profile=smoke) $(if $(DATA_ROOT),data.root=$(DATA_ROOT))
endif

# Tests run in one worker per core (pytest-xdist); TEST_WORKERS=0 runs them in this process (pdb, -x).
TEST_WORKERS ?= auto
test: ## Fast tests plus CLI smoke runs (what CI runs)
	$(PY) -m pytest -q -n $(TEST_WORKERS)

lint: ## ruff, with the project's rules (pyproject.toml)
	$(VENV)/bin/ruff check neuralode scripts tests

test-all: ## Every test, slow ones included
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m ""

bench-quick: ## Side-by-side benchmark vs torchdiffeq, small sizes (CPU)
	$(PY) scripts/bench.py --quick

bench: ## Full benchmark vs torchdiffeq, and small dynamics vs torchode and diffrax (pip install -e ".[bench]"; ARGS="--device cuda" on a GPU)
	$(PY) scripts/bench.py $(ARGS)

reproduce: ## Run every experiment and write REPORT.md (PROFILE=smoke|quick|full REPORT_DIR=... SEEDS=3)
	$(PY) -m neuralode.report.reproduce --profile $(PROFILE) --report-dir $(REPORT_DIR) --jobs $(JOBS) $(SEEDS_ARG) $(ARGS)

report: ## Rebuild REPORT.md from existing run outputs without training (REPORT_DIR=...)
	$(PY) -m neuralode.report.reproduce --profile $(PROFILE) --report-dir $(REPORT_DIR) --no-train $(SEEDS_ARG) $(ARGS)

clean: ## Remove run outputs and caches (keeps .venv)
	rm -rf outputs multirun .pytest_cache
