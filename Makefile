# sar2ndvi: the two quick-start commands (`make demo`, `make test`) and a few helpers.
# Each target creates .venv on first use, installing the CPU build of torch first:
# a bare `torch` requirement would otherwise pull gigabytes of CUDA packages.

PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.sar2ndvi-installed
PYTEST_ARGS ?=

.PHONY: demo test lint format clean install

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sar2ndvi demo --out out/demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check sar2ndvi

format: $(STAMP)
	$(BIN)/ruff format sar2ndvi tests
	$(BIN)/ruff check --fix .

clean:
	rm -rf out .pytest_cache .ruff_cache .hypothesis
