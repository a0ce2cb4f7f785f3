# The two set-up commands are `make demo` and `make test`; each installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint typecheck unit demo bench soak clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: install lint typecheck unit

lint: install
	$(BIN)/ruff check harvester tests
	$(BIN)/ruff format --check harvester tests

typecheck: install
	$(BIN)/mypy --strict harvester

unit: install
	$(BIN)/pytest

demo: install
	$(BIN)/python -m harvester.demo

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache demo-output
