"""Many harvesters on one state and one output folder: separate `backfill` processes at once."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from pathlib import Path

import pytest

from harvester.simulator import Account, Faults
from harvester.state.records import ChunkStatus
from tests.conftest import BACKENDS, merchant_ids, new_token
from tests.many import (
    TIMING,
    Harvesters,
    assert_every_object_once,
    leftovers,
    simulator,
    state_settings,
)


def assert_manifests_match(output: Path) -> int:
    """Every published manifest's sizes and sha256 match its parts; returns how many."""
    count = 0
    for manifest_path in output.rglob("_manifest.json"):
        manifest = json.loads(manifest_path.read_text())
        files = sorted(p.name for p in manifest_path.parent.iterdir())
        listed = sorted([part["file"] for part in manifest["parts"]] + ["_manifest.json"])
        assert files == listed, f"{manifest_path.parent}: other files than the manifest lists"
        for part in manifest["parts"]:
            data = (manifest_path.parent / part["file"]).read_bytes()
            assert len(data) == part["size"]
            assert hashlib.sha256(data).hexdigest() == part["sha256"], manifest_path
        count += 1
    return count


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stagger_s", [0.0, 1.0])
async def test_three_backfills_of_one_range_share_the_work(
    tmp_path: Path, stagger_s: float, backend: str, request: pytest.FixtureRequest
) -> None:
    """Three backfills of the same merchants and range, at once or staggered, all exit 0 with
    every object once, true manifests, at most 3 exports running and few exports wasted."""
    merchants = merchant_ids(2)
    tokens = {m: new_token(m) for m in merchants}
    async with simulator(tokens, server_limit=3) as sim:
        runs = Harvesters(
            tmp_path,
            sim.api_url,
            tokens,
            max_concurrent_exports=3,
            state=state_settings(backend, request),
        )
        processes = []
        for _ in range(3):
            processes.append(await runs.backfill())
            await asyncio.sleep(stagger_s)
        for process in processes:
            assert await runs.finish(process) == 0, runs.errors(process)
        output = tmp_path / "data"
        assert_every_object_once(sim, output, merchants)
        chunks = len((await runs.snapshot()).chunks)
        assert chunks == len(merchants) * 2 * 2
        assert assert_manifests_match(output) == chunks
        assert leftovers(output) == []
        stats = sim.stats
        assert stats.max_running <= 3
        assert stats.exports_created <= chunks + 2, f"{stats.exports_created} for {chunks}"
        print(
            f"{backend}, stagger {stagger_s} s: {stats.exports_created} exports for "
            f"{chunks} chunks, {stats.busy_503s} busy 503s, max running {stats.max_running}"
        )


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("backend", "seed"), [("sqlite", 5), ("postgresql", 7)])
async def test_one_of_three_killed_at_a_random_moment_is_taken_over(
    tmp_path: Path, seed: int, backend: str, request: pytest.FixtureRequest
) -> None:
    """Of three staggered backfills, one SIGKILLed at a random moment: the others take its
    chunks over, and with a rerun the harvest is exact, tidy, and wastes at most one export
    per kill."""
    rng = random.Random(seed)
    merchants = merchant_ids(2)
    tokens = {m: new_token(m) for m in merchants}
    async with simulator(tokens, server_limit=3) as sim:
        runs = Harvesters(
            tmp_path,
            sim.api_url,
            tokens,
            max_concurrent_exports=3,
            state=state_settings(backend, request),
        )
        processes = []
        for _ in range(3):
            processes.append(await runs.backfill())
            await asyncio.sleep(0.3)
        victim = processes.pop(rng.randrange(3))
        await asyncio.sleep(rng.uniform(0.2, 1.5))
        assert victim.returncode is None, "the seed should kill the victim midway"
        victim.kill()
        await victim.wait()
        for survivor in processes:
            assert await runs.finish(survivor) == 0, runs.errors(survivor)
        rerun = await runs.backfill()
        assert await runs.finish(rerun) == 0, runs.errors(rerun)
        output = tmp_path / "data"
        assert_every_object_once(sim, output, merchants)
        snapshot = await runs.snapshot()
        chunks = len(snapshot.chunks)
        assert all(c.status is ChunkStatus.COMPLETE for c in snapshot.chunks)
        assert assert_manifests_match(output) == chunks
        assert leftovers(output) == []
        kills = 1
        assert sim.stats.exports_created <= chunks + kills + 2
        print(f"{backend}: {sim.stats.exports_created} exports for {chunks} chunks, 1 kill")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
async def test_two_processes_with_overlapping_merchant_selections(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """`--merchant A --merchant B` next to `--merchant B --merchant C`: all three harvested
    once, the shared merchant's chunks split between the two processes."""
    merchants = merchant_ids(3)
    tokens = {m: new_token(m) for m in merchants}
    async with simulator(tokens, server_limit=3) as sim:
        runs = Harvesters(
            tmp_path,
            sim.api_url,
            tokens,
            max_concurrent_exports=3,
            state=state_settings(backend, request),
        )
        first = await runs.backfill("--merchant", merchants[0], "--merchant", merchants[1])
        second = await runs.backfill("--merchant", merchants[1], "--merchant", merchants[2])
        assert await runs.finish(first) == 0, runs.errors(first)
        assert await runs.finish(second) == 0, runs.errors(second)
        output = tmp_path / "data"
        assert_every_object_once(sim, output, merchants)
        chunks = len((await runs.snapshot()).chunks)
        assert chunks == len(merchants) * 2 * 2
        assert assert_manifests_match(output) == chunks
        assert leftovers(output) == []
        assert sim.stats.exports_created <= chunks + 2


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
async def test_two_processes_share_a_refreshing_token_without_spending_it_twice(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """Two backfills of one merchant whose access tokens expire every few seconds: each
    refresh spends the refresh token the other saved, never a spent one, and both finish."""
    (merchant,) = merchant_ids(1)
    refresh_token = new_token(merchant)
    account = Account(refresh_token=refresh_token, client_id="shared-app")
    # Slow answers (refreshes among them) leave a wide gap between reading the stored
    # refresh token and saving its successor: without a lock, the other process steps in.
    slow = Faults(api_slow=0.5, slow_s=0.3)
    async with simulator(
        {merchant: refresh_token},
        accounts={merchant: account},
        faults=slow,
        access_token_ttl_s=1.2,
        export_base_s=1.0,
    ) as sim:
        runs = Harvesters(
            tmp_path,
            sim.api_url,
            {merchant: refresh_token},
            merchants=[
                {
                    "id": merchant,
                    "region": "local",
                    "refresh_token": f"${{T_{merchant}}}",
                    "client_id": "shared-app",
                }
            ],
            top={"timing": {**TIMING, "token_refresh_margin_s": 0.5}},
            state=state_settings(backend, request),
        )
        first = await runs.backfill()
        second = await runs.backfill()
        assert await runs.finish(first) == 0, runs.errors(first)
        assert await runs.finish(second) == 0, runs.errors(second)
        assert sim.stats.refresh_reuse == 0
        assert sim.stats.refreshes >= 4, "the test should make both processes refresh often"
        assert_every_object_once(sim, tmp_path / "data", [merchant])
