# The two set-up commands are `make demo` and `make test`; each installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint typecheck unit demo bench bench-processes bench-scale soak clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,load]'
	touch $(STAMP)

test: install lint typecheck unit

lint: install
	$(BIN)/ruff check harvester tests benchmarks
	$(BIN)/ruff format --check harvester tests benchmarks

typecheck: install
	$(BIN)/mypy --strict harvester tests benchmarks

# Branch coverage of harvester/ (simulator and demo aside); under 95% fails the run.
unit: install
	$(BIN)/pytest --cov=harvester --cov-report=term-missing:skip-covered --cov-fail-under=95

demo: install
	$(BIN)/python -m harvester.demo

# The soak test at five times the size: more merchants, months and seeds (see tests/test_soak.py).
soak: install
	SOAK_SCALE=5 $(BIN)/pytest tests/test_soak.py -s

# Figures, not pass/fail: download memory with ~1 MB files against ~20 MB files, how busy
# a server that takes 2 exports is kept when the config says 6, and throughput and memory of
# the folder against a bucket (a local SeaweedFS) on the same work, and `harvester load` into
# DuckDB against a plain read_json of the same files.
bench: install
	$(BIN)/python benchmarks/bench_memory.py
	$(BIN)/python -m benchmarks.bench_busy
	$(BIN)/python -m benchmarks.bench_output
	$(BIN)/python -m benchmarks.bench_load

# Figures, not pass/fail: one harvester process against three on the same work.
bench-processes: install
	$(BIN)/python benchmarks/bench_processes.py

# Figures, not pass/fail: 1,000 and 10,000 merchants against Clover's app limit (issue 18).
bench-scale: install
	$(BIN)/python -m benchmarks.bench_scale

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache demo-output
