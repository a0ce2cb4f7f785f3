"""Crash-proof resume: the CLI killed at random points, and stopped gracefully."""

from __future__ import annotations

import asyncio
import json
import random
import signal
from pathlib import Path

import pytest
import yaml

from harvester.clock import SystemClock
from harvester.clover.chunks import ExportType
from harvester.simulator import Account, Faults, Simulator
from harvester.state.records import ChunkStatus
from harvester.state.sqlite import read_snapshot
from tests.backfills import start_backfill
from tests.conftest import DATA_START, harvested, ids, merchant_ids, new_token, sim_settings

FROM, TO = "2025-01-01", "2025-03-02"  # two 30-day chunks per merchant and type


def write_config(tmp_path: Path, api_url: str, merchants: list[str]) -> Path:
    document = {
        "output_dir": "data",
        "state_path": "state/harvester.sqlite3",
        "timing": {
            "poll_min_s": 0.05,
            "poll_max_s": 0.3,
            "backoff_base_s": 0.05,
            "backoff_max_s": 0.5,
            "export_cooldown_s": 0.1,
            "shutdown_grace_s": 5,
        },
        "max_concurrent_downloads": 4,
        "regions": {
            "local": {"base_url": api_url, "windows": "always", "max_concurrent_exports": 2}
        },
        "merchants": [{"id": m, "region": "local", "token": f"${{T_{m}}}"} for m in merchants],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


async def start_cli(config: Path, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await start_backfill(config, FROM, TO, env)


def simulator(merchants: dict[str, str]) -> Simulator:
    settings = sim_settings(
        {m: Account(token=t) for m, t in merchants.items()},
        objects_per_day=30.0,
        objects_per_file=100,
        pending_s=0.1,
        export_base_s=0.6,
        export_per_object_s=0.0005,
        max_concurrent_exports=2,
    )
    return Simulator(settings, SystemClock(), Faults())


def assert_every_object_once(sim: Simulator, output: Path, merchants: list[str]) -> None:
    start_ms = int(DATA_START.timestamp() * 1000)
    end_ms = start_ms + 60 * 86_400_000
    for merchant_id in merchants:
        for export_type in ExportType:
            got = ids(harvested(output, merchant_id, export_type.folder))
            want = ids(sim.objects(merchant_id, str(export_type), start_ms, end_ms - 1))
            assert len(got) == len(set(got)), f"{merchant_id} {export_type}: duplicates"
            assert sorted(got) == sorted(want), f"{merchant_id} {export_type}: objects differ"


def leftovers(output: Path) -> list[Path]:
    return [p for p in output.rglob("*") if p.name.startswith(".")]


# Log events that mark the harvest moving on; the kills fall right after one of them.
PROGRESS = {"export.created", "export.done", "file.saved", "chunk.completed"}
KILLS = 3  # planned; each run killed at its 1st to 3rd progress event


async def run_until_killed(process: asyncio.subprocess.Process, progress_events: int) -> bool:
    """Kill the run once it logged `progress_events` progress events; False if it ended first."""
    assert process.stderr is not None
    seen = 0
    while seen < progress_events:
        line = await process.stderr.readline()
        if not line:
            return False  # the run ended before reaching the point
        try:
            event = json.loads(line).get("event")
        except ValueError:
            continue
        if event in PROGRESS:
            seen += 1
    process.kill()
    await process.wait()
    return True


@pytest.mark.timeout(240)
@pytest.mark.parametrize("seed", [11, 22, 33])
async def test_sigkill_at_random_points_loses_and_duplicates_nothing(
    tmp_path: Path, seed: int
) -> None:
    """Killed with SIGKILL at points of observed progress and restarted, the harvest ends
    exact and tidy.

    The kill points count progress events, not seconds: a run killed after at most three of
    them cannot have finished 12 chunks, so the first two runs are always killed, on any
    machine (the third too, unless the second one's last moments finished the harvest).
    """
    rng = random.Random(seed)
    merchants = merchant_ids(3)
    tokens = {m: new_token(m) for m in merchants}
    async with simulator(tokens) as sim:
        config = write_config(tmp_path, sim.api_url, merchants)
        env = {f"T_{m}": t for m, t in tokens.items()}
        kills = 0
        for _ in range(KILLS):
            process = await start_cli(config, env)
            if not await run_until_killed(process, rng.randint(1, 3)):
                assert await process.wait() == 0
                break
            kills += 1
        process = await start_cli(config, env)
        _, err = await process.communicate()
        assert process.returncode == 0, err.decode()[-3000:]
        assert kills >= 2, "the first two runs stop after at most three progress events"
        assert_every_object_once(sim, tmp_path / "data", merchants)
        snapshot = read_snapshot(tmp_path / "state" / "harvester.sqlite3")
        chunks = len(snapshot.chunks)
        assert chunks == len(merchants) * 2 * 2
        failed = sum(c.exports_created for c in snapshot.chunks) - chunks
        assert all(c.status is ChunkStatus.COMPLETE for c in snapshot.chunks)
        assert sim.stats.exports_created <= chunks + kills + failed, (
            f"{sim.stats.exports_created} exports for {chunks} chunks, {kills} kills"
        )
        assert leftovers(tmp_path / "data") == []
        print(
            f"seed {seed}: {kills} kills, {sim.stats.exports_created} exports created "
            f"for {chunks} chunks (bound {chunks + kills + failed})"
        )


@pytest.mark.timeout(120)
async def test_sigterm_stops_gracefully_and_the_next_run_finishes(tmp_path: Path) -> None:
    """SIGTERM exits 143 with consistent state; the next run completes the harvest exactly."""
    merchants = merchant_ids(2)
    tokens = {m: new_token(m) for m in merchants}
    async with simulator(tokens) as sim:
        config = write_config(tmp_path, sim.api_url, merchants)
        env = {f"T_{m}": t for m, t in tokens.items()}
        process = await start_cli(config, env)
        assert process.stderr is not None
        # Wait for the first export to be created, then ask the run to stop.
        while b"export.created" not in await process.stderr.readline():
            pass
        process.send_signal(signal.SIGTERM)
        rest = await process.stderr.read()
        assert await process.wait() == 143
        assert b"run.stopping" in rest
        assert leftovers(tmp_path / "data") == [] or all(
            p.name.startswith(".staging-") for p in leftovers(tmp_path / "data")
        )
        created = sim.stats.exports_created
        process = await start_cli(config, env)
        assert await process.wait() == 0
        assert_every_object_once(sim, tmp_path / "data", merchants)
        assert leftovers(tmp_path / "data") == []
        # The export in flight at the stop was re-attached, not created again.
        assert sim.stats.exports_created == len(merchants) * 2 * 2
        assert created >= 1
