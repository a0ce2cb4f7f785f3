# The two set-up commands are `make demo` and `make test`; each installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lock test lint typecheck unit demo bench bench-processes bench-app-limit \
	bench-handoff bench-scale soak clean

# The same versions every time: `make install` takes every package from requirements-dev.lock
# (the runtime, dev and load requirements, pip, and setuptools that builds the project), each
# checked against its hashes, then the project itself with --no-deps, built by the locked
# setuptools (--no-build-isolation), so that nothing unlocked comes in; pip is all it needs, and
# `pip check` then finds any dependency the lock left out.
# requirements.lock is the runtime part alone, at the same versions: what deploy/Containerfile
# installs. Both change only through `make lock`; pyproject.toml keeps its ranges for those who
# install the package as a library.
LOCKS := requirements.lock requirements-dev.lock

install: $(STAMP)

$(STAMP): pyproject.toml $(LOCKS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes --no-deps -r requirements-dev.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $(STAMP)

# `make lock` writes both lock files again from pyproject.toml's ranges, taking the newest
# releases they admit; `make lock UPGRADE=` keeps the locked versions that still fit and only
# resolves what pyproject.toml changed. uv, at the version below and in a venv of its own,
# resolves for Python 3.11 on every platform (--universal): one file serves Linux on x86_64
# and aarch64 alike, with the hashes of every file of each release. The runtime lock is
# constrained by the dev lock, so the container runs the versions the tests ran. Each lock also
# holds what builds the project (pyproject.toml's build-system.requires) and pip itself.
UV_VERSION := 0.13.9
LOCK_VENV := .venv-lock
UPGRADE := --upgrade
COMPILE := $(LOCK_VENV)/bin/uv --no-config pip compile --quiet pyproject.toml - --universal \
	--python-version 3.11 --generate-hashes $(UPGRADE) --custom-compile-command 'make lock'
BUILD_AND_PIP := $(PYTHON) -c 'import tomllib; \
	pyproject = tomllib.load(open("pyproject.toml", "rb")); \
	print(*pyproject["build-system"]["requires"], "pip", sep="\n")'

lock:
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet uv==$(UV_VERSION)
	$(BUILD_AND_PIP) | $(COMPILE) --extra dev --extra load -o requirements-dev.lock
	$(BUILD_AND_PIP) | $(COMPILE) --constraint requirements-dev.lock -o requirements.lock

test: install lint typecheck unit

lint: install
	$(BIN)/ruff check harvester tests benchmarks
	$(BIN)/ruff format --check harvester tests benchmarks

typecheck: install
	$(BIN)/mypy --strict harvester tests benchmarks

# Branch coverage of harvester/ (simulator and demo aside), combined over the workers; under
# 95% fails the run. Tests run in a new order each time (pytest-randomly prints its seed;
# `make unit PYTEST_ARGS=--randomly-seed=N` replays it) on twice as many workers as cores (at
# most 8), as many tests wait on subprocesses and servers; idle workers take queued tests from
# busy ones. Bytecode is cached even where the environment says PYTHONDONTWRITEBYTECODE: each
# worker would otherwise compile the package and rewrite the tests' asserts anew (about 3 of
# its 7 CPU seconds of collection), and so would every interpreter a test starts.
WORKERS ?= $(shell n=$$(( $$(nproc) * 2 )); echo $$(( n > 8 ? 8 : n )))
unit: install
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/pytest --numprocesses=$(WORKERS) --dist=worksteal \
		--cov=harvester --cov-report=term-missing:skip-covered --cov-fail-under=95 $(PYTEST_ARGS)

demo: install
	$(BIN)/python -m harvester.demo

# The soak test at five times the size: more merchants, months and seeds (see tests/test_soak.py).
soak: install
	SOAK_SCALE=5 $(BIN)/pytest tests/test_soak.py -s

# Figures, not pass/fail: download memory with ~1 MB files against ~20 MB files, how busy
# a server that takes 2 exports is kept when the config says 6 (on a fake clock, then the real
# CLI on real time over the whole run, its idle time split into head, gaps and tail), and
# throughput and memory of the folder against a bucket (a local SeaweedFS) on the same work,
# the folder's CPU per chunk against the same system calls in one thread job per chunk,
# and `harvester load` into DuckDB against a plain read_json of the same files; status polls
# per export and slots busy for exports of ~5 s, ~60 s and ~30 min, polls aimed by past
# durations and by progress alone.
bench: install
	$(BIN)/python benchmarks/bench_memory.py
	$(BIN)/python -m benchmarks.bench_busy
	$(BIN)/python -m benchmarks.bench_busy_live
	$(BIN)/python -m benchmarks.bench_polls
	$(BIN)/python -m benchmarks.bench_output
	$(BIN)/python -m benchmarks.bench_folder
	$(BIN)/python -m benchmarks.bench_load

# Figures, not pass/fail: one harvester process against three on the same work.
bench-processes: install
	$(BIN)/python -m benchmarks.bench_processes

# Figures, not pass/fail: Clover's app limit held by 1 and 3 processes on SQLite and PostgreSQL
# (app 429s, the most requests in any second), and how soon a slot given back in one process
# reaches a waiter in another.
bench-app-limit: install
	$(BIN)/python -m benchmarks.bench_app_limit

bench-handoff: install
	$(BIN)/python benchmarks/bench_handoff.py

# Figures, not pass/fail: 1,000 and 10,000 merchants against Clover's app limit (issue 18).
bench-scale: install
	$(BIN)/python -m benchmarks.bench_scale

clean:
	rm -rf $(VENV) $(LOCK_VENV) .mypy_cache .pytest_cache .ruff_cache demo-output
