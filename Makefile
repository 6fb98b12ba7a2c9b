# The README's commands. Each target sets up what it needs: a virtualenv in .venv with the CPU build of torch
# (installed first, pinned: an unpinned torch pulls a multi-GB CUDA build) and the suite with its dev extras.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kfops-installed
TORCH_VERSION ?= 2.13.0

.PHONY: setup run test lint format compile check-compiled bench bench-e2e bench-training bench-validate bench-serving clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

## Train on the bundled default data, locally (kfp.local, MLflow on sqlite, everything under ./.kfops).
run: setup
	$(BIN)/kfops run $(ARGS)

## Lint, then the whole test suite.
test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

compile: setup
	$(BIN)/kfops compile

check-compiled: setup
	$(BIN)/kfops compile --check

bench: bench-e2e bench-training bench-validate bench-serving

bench-e2e: setup
	$(BIN)/python benchmarks/bench_e2e.py

bench-training: setup
	$(BIN)/python benchmarks/bench_training.py

clean:
	rm -rf .kfops .pytest_cache .ruff_cache

bench-validate: setup
	$(BIN)/python benchmarks/bench_validate.py

bench-serving: setup
	$(BIN)/python benchmarks/bench_serving.py
