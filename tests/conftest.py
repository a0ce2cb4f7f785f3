"""Shared fixtures: a fake clock, the simulator on loopback, and config files that point at it."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog
import yaml

from harvester.clock import Clock
from harvester.config import Config, load_config
from harvester.logs import configure_logging, get_logger
from harvester.simulator import Account, Faults, Simulator, SimulatorSettings
from harvester.simulator import data as simulator_data
from harvester.state.postgres import PgStore
from harvester.state.records import StateStore
from harvester.state.sqlite import Store
from tests.fakeclock import FakeClock
from tests.pgserver import PgServer, running_server, skip_or_fail, unavailable_reason
from tests.seaweed import SeaweedFS, seaweedfs
from tests.simdata import generate_once

BUCKET = "harvest"  # every bucket test works under a prefix of its own in this one bucket

# Virtual "now" for in-process tests: well after the data, in no particular window.
NOW = datetime(2025, 7, 1, 12, 0, tzinfo=UTC)
DATA_START = datetime(2025, 1, 1, tzinfo=UTC)
DATA_END = datetime(2025, 5, 1, tzinfo=UTC)

FAST_TIMING: dict[str, float] = {
    "poll_min_s": 1,
    "poll_max_s": 20,
    "backoff_base_s": 1,
    "backoff_max_s": 30,
    "export_timeout_s": 600,
    "request_timeout_s": 10,
    "export_cooldown_s": 5,
    "shutdown_grace_s": 5,
}


# The tests that take longest on the wall clock, longest first (`pytest --durations`): under
# pytest-xdist each worker starts on one of them, so that none is left to run last.
SLOWEST = (
    "tests/test_soak.py::",
    "tests/test_app_tokens.py::test_a_thousand_merchants",
    "tests/test_resume.py::test_sigkill_at_random_points",
    "tests/test_bucket.py::test_a_bucket_answering_500_or_503",
    "tests/test_many.py::",
    "tests/test_scale.py::test_planning_twenty_thousand_chunks",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, put the slowest tests at the head of each worker's first share.

    The scheduler (`--dist worksteal`) hands each of the W workers a contiguous share of the
    collection (in the order pytest-randomly chose), and idle workers later take queued
    tests from busy ones; a long test that starts last makes the run's tail. So the slowest
    are dealt out, longest first, to the heads of the shares. Every worker computes the
    same order from the same collection, as xdist requires.
    """
    workers: int = getattr(config, "workerinput", {}).get("workercount", 0)
    if workers < 2:
        return

    def rank(item: pytest.Item) -> int:
        return next(
            (n for n, prefix in enumerate(SLOWEST) if item.nodeid.startswith(prefix)),
            len(SLOWEST),
        )

    slow = sorted((item for item in items if rank(item) < len(SLOWEST)), key=rank)
    rest = [item for item in items if rank(item) == len(SLOWEST)]
    # The shares as xdist cuts them: node i takes len(left) // (workers - i) of what is left.
    shares: list[list[pytest.Item]] = [[] for _ in range(workers)]
    for n, item in enumerate(slow):
        shares[n % workers].append(item)
    left = len(items)
    ordered: list[pytest.Item] = []
    for node, share in enumerate(shares):
        size = left // (workers - node)
        left -= size
        take = max(0, size - len(share))
        ordered += share + rest[:take]
        del rest[:take]
    items[:] = ordered + rest


@pytest.fixture(autouse=True)
def log_buffer() -> Iterator[io.StringIO]:
    """Every test logs JSON lines into its own buffer, whatever a previous test configured."""
    buffer = io.StringIO()
    configure_logging("json", "debug", stream=buffer)
    # Routed now, not at the first log line: structlog's capture_logs() in a test must not
    # be undone by a routing still pending (it was, when that test came first in a worker).
    get_logger()
    yield buffer
    structlog.reset_defaults()


@pytest.fixture(autouse=True)
def simulator_data_once(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulators make their objects once per worker (tests/simdata.py), save in the tests
    marked `fresh_data`: those that check the simulator makes the same objects again."""
    if request.node.get_closest_marker("fresh_data") is None:
        monkeypatch.setattr(simulator_data, "generate", generate_once)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


def merchant_ids(count: int) -> list[str]:
    return [f"M{n:03d}TESTSHOP{n % 10}" for n in range(count)]


def new_token(merchant_id: str) -> str:
    return f"tok-{merchant_id}-{secrets.token_hex(12)}"


def sim_settings(accounts: Mapping[str, Account], **overrides: Any) -> SimulatorSettings:
    values: dict[str, Any] = {
        "data_start": DATA_START,
        "data_end": DATA_END,
        "objects_per_day": 20.0,
        "objects_per_file": 200,
        "pending_s": 1.0,
        "export_base_s": 20.0,
        "export_per_object_s": 0.01,
        **overrides,
    }
    return SimulatorSettings(accounts=dict(accounts), **values)


@dataclass
class Scenario:
    """A simulator with merchants, and the config and environment to harvest them."""

    tmp_path: Path
    sim: Simulator
    tokens: dict[str, str]
    region: dict[str, Any] = field(default_factory=dict)
    top: dict[str, Any] = field(default_factory=dict)
    merchant_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def environ(self) -> dict[str, str]:
        return {f"TOKEN_{m}": token for m, token in self.tokens.items()}

    @property
    def output_dir(self) -> Path:
        return self.tmp_path / "data"

    def config_path(self) -> Path:
        document = {
            "output_dir": "data",
            "state_path": "state/harvester.sqlite3",
            "timing": dict(FAST_TIMING),
            "regions": {
                "local": {
                    "base_url": self.sim.api_url,
                    "windows": "always",
                    "max_concurrent_exports": 2,
                    **self.region,
                }
            },
            "merchants": [
                {
                    "id": m,
                    "region": "local",
                    "token": f"${{TOKEN_{m}}}",
                    **self.merchant_overrides.get(m, {}),
                }
                for m in self.tokens
            ],
            **self.top,
        }
        if "output_url" in self.top:
            del document["output_dir"]
        path = self.tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path

    def config(self) -> Config:
        return load_config(self.config_path(), self.environ)


@pytest.fixture
async def scenario(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Scenario]:
    """Three merchants on a simulator that shares the test's fake clock."""
    tokens = {m: new_token(m) for m in merchant_ids(3)}
    accounts = {m: Account(token=t) for m, t in tokens.items()}
    async with Simulator(sim_settings(accounts), clock, Faults()) as sim:
        yield Scenario(tmp_path, sim, tokens)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One real S3 server (SeaweedFS) on loopback for the session, with the bucket BUCKET."""
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        server.client().create_bucket(Bucket=BUCKET)
        yield server


def harvested(output_dir: Path, merchant_id: str, folder: str) -> list[dict[str, Any]]:
    """Every object in the published parts of one merchant and type."""
    objects: list[dict[str, Any]] = []
    base = output_dir / merchant_id / folder
    if not base.exists():
        return objects
    for chunk in sorted(p for p in base.iterdir() if not p.name.startswith(".")):
        for part in sorted(chunk.glob("part-*.json")):
            objects.extend(json.loads(part.read_bytes())["elements"])
    return objects


async def until(condition: Callable[[], bool]) -> None:
    """Let other tasks run until `condition` holds (no time passes)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def open_in(folder: Path) -> list[str]:
    """What this process holds open inside `folder` (deleted files included)."""
    links = []
    for descriptor in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        except FileNotFoundError:  # closed meanwhile (the listing's own, for one)
            continue
    return [link for link in links if link.startswith(f"{folder}/")]


def ids(objects: Iterable[Mapping[str, Any]]) -> list[str]:
    return [str(o["id"]) for o in objects]


# -- the state store on each backend ----------------------------------------------------------

BACKENDS = ("sqlite", "postgresql")
_databases = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One throwaway PostgreSQL server for the whole session (see tests/pgserver.py), its
    files in memory: every test that asks for `pg_url` creates a database."""
    reason = unavailable_reason()
    if reason is not None:
        skip_or_fail(reason)
    with running_server(in_memory=True) as server:
        yield server


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh, empty database on the session's server."""
    name = f"harvester_{os.getpid()}_{next(_databases)}"
    with psycopg.connect(pg_server.url("postgres"), autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}".encode())
    return pg_server.url(name)


@asynccontextmanager
async def opened_store(
    backend: str, request: pytest.FixtureRequest, path: Path, clock: Clock
) -> AsyncIterator[StateStore]:
    """A store on `backend`: SQLite at `path`, or PostgreSQL in a fresh database."""
    if backend == "sqlite":
        async with await Store.open(path, clock) as sqlite_store:
            yield sqlite_store
    else:
        url: str = request.getfixturevalue("pg_url")
        async with await PgStore.open(url, clock) as pg_store:
            yield pg_store
