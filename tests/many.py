"""What the tests of several harvester processes share: configs, subprocesses, checks.

The processes are the real CLI (`python -m harvester backfill`), on the real clock, against
the simulator on loopback; timings are short so that a run takes seconds.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from harvester.clock import SystemClock
from harvester.clover.chunks import ExportType
from harvester.config import load_config
from harvester.simulator import Account, Faults, Simulator
from harvester.state.backends import read_state
from harvester.state.records import Snapshot
from tests.backfills import start_backfill
from tests.conftest import DATA_START, harvested, ids, sim_settings

FROM, TO = "2025-01-01", "2025-03-02"  # two 30-day chunks per merchant and type
DAYS = 60
TIMING: dict[str, float] = {
    "poll_min_s": 0.05,
    "poll_max_s": 0.3,
    "backoff_base_s": 0.05,
    "backoff_max_s": 0.5,
    "export_cooldown_s": 0.1,
    "shutdown_grace_s": 5,
    "lease_s": 3,
}


def simulator(
    tokens: dict[str, str],
    *,
    server_limit: int = 3,
    accounts: dict[str, Account] | None = None,
    faults: Faults | None = None,
    **overrides: Any,
) -> Simulator:
    settings = sim_settings(
        accounts or {m: Account(token=t) for m, t in tokens.items()},
        **{
            "objects_per_day": 30.0,
            "objects_per_file": 100,
            "pending_s": 0.1,
            "export_base_s": 0.4,
            "export_per_object_s": 0.0005,
            "max_concurrent_exports": server_limit,
            **overrides,
        },
    )
    return Simulator(settings, SystemClock(), faults or Faults())


class Harvesters:
    """One config, one state, one output folder; any number of processes started on them."""

    def __init__(
        self,
        tmp_path: Path,
        api_url: str,
        tokens: dict[str, str],
        *,
        max_concurrent_exports: int = 3,
        merchants: list[dict[str, Any]] | None = None,
        environ: dict[str, str] | None = None,
        top: dict[str, Any] | None = None,
        state: dict[str, str] | None = None,
    ) -> None:
        """`state`: {"state_url": ...} for PostgreSQL; by default a SQLite file."""
        document: dict[str, Any] = {
            "output_dir": "data",
            **(state or {"state_path": "state/harvester.sqlite3"}),
            "timing": dict(TIMING),
            "max_concurrent_downloads": 4,
            "regions": {
                "local": {
                    "base_url": api_url,
                    "windows": "always",
                    "max_concurrent_exports": max_concurrent_exports,
                }
            },
            "merchants": merchants
            or [{"id": m, "region": "local", "token": f"${{T_{m}}}"} for m in tokens],
            **(top or {}),
        }
        self.config = tmp_path / "config.yaml"
        self.config.write_text(yaml.safe_dump(document))
        self.environ = {**{f"T_{m}": t for m, t in tokens.items()}, **(environ or {})}
        self._stderr: dict[int, bytes] = {}
        self._readers: dict[int, asyncio.Task[bytes]] = {}

    async def backfill(self, *extra: str) -> asyncio.subprocess.Process:
        """Start `harvester backfill` over FROM..TO (plus `extra` words)."""
        process = await start_backfill(self.config, FROM, TO, self.environ, *extra)
        assert process.stderr is not None
        self._readers[process.pid] = asyncio.create_task(process.stderr.read())
        return process

    async def finish(self, process: asyncio.subprocess.Process, timeout_s: float = 90) -> int:
        """Wait for the process to exit; its exit code."""
        code = await asyncio.wait_for(process.wait(), timeout_s)
        self._stderr[process.pid] = await self._readers.pop(process.pid)
        return code

    async def snapshot(self) -> Snapshot:
        """The state as `status` reads it, on whichever backend the config names."""
        config = load_config(self.config, {**os.environ, **self.environ})
        snapshot = await asyncio.to_thread(read_state, config)
        assert snapshot is not None
        return snapshot

    def errors(self, process: asyncio.subprocess.Process) -> str:
        """The end of what the process logged, for an assertion message."""
        return self._stderr.get(process.pid, b"").decode(errors="replace")[-4000:]

    def log(self, process: asyncio.subprocess.Process) -> str:
        return self._stderr.get(process.pid, b"").decode(errors="replace")


def assert_every_object_once(
    sim: Simulator, output: Path, merchants: list[str], days: int = DAYS
) -> None:
    start_ms = int(DATA_START.timestamp() * 1000)
    end_ms = start_ms + days * 86_400_000
    for merchant_id in merchants:
        for export_type in ExportType:
            got = ids(harvested(output, merchant_id, export_type.folder))
            want = ids(sim.objects(merchant_id, str(export_type), start_ms, end_ms - 1))
            assert len(got) == len(set(got)), f"{merchant_id} {export_type}: duplicates"
            assert sorted(got) == sorted(want), f"{merchant_id} {export_type}: objects differ"


def leftovers(output: Path) -> list[Path]:
    return [p for p in output.rglob("*") if p.name.startswith(".")]


def state_settings(backend: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """The config keys that put the state on `backend` (a fresh database for PostgreSQL)."""
    if backend == "sqlite":
        return {"state_path": "state/harvester.sqlite3"}
    url: str = request.getfixturevalue("pg_url")
    return {"state_url": url}
