# The two commands: `make demo` (compile the demo models) and `make test`.
# Each creates .venv and installs the pinned set (constraints.txt) when missing.
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test reliability lint typecheck bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=26"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/trtflow prepare
	$(BIN)/trtflow run params/digits.yaml
	$(BIN)/trtflow run params/minilm.yaml

test: $(STAMP)
	$(BIN)/ruff check -q trtflow flows tasks tests bench
	$(BIN)/mypy trtflow flows tasks
	$(BIN)/python -m pytest -q

# Every bad input, all 20 crash trials, concurrency and storage faults (make test runs a subset).
reliability: $(STAMP)
	$(BIN)/python -m pytest -q tests/reliability -m "slow or not slow"

lint: $(STAMP)
	$(BIN)/ruff check trtflow flows tasks tests bench

typecheck: $(STAMP)
	$(BIN)/mypy trtflow flows tasks

bench: $(STAMP)
	$(BIN)/python bench/compile_cpu.py

clean:
	rm -rf .trtflow build
