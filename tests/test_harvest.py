"""End to end over real loopback HTTP: the harvester against the simulator, on a fake clock."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from datetime import timedelta
from pathlib import Path

import aiohttp

from harvester import commands
from harvester.clover.chunks import ExportType, TimeRange
from harvester.harvest.planning import select
from harvester.harvest.scheduler import MerchantWork
from harvester.harvest.summary import Summary
from harvester.output.folder import FolderOutput
from harvester.simulator import Account, Faults, Simulator
from harvester.state.sqlite import Store
from tests.conftest import (
    DATA_START,
    Scenario,
    merchant_ids,
    new_token,
    sim_settings,
)
from tests.fakeclock import FakeClock
from tests.harness import FULL, assert_exactly_once
from tests.statefile import exports_in


async def backfill(scenario: Scenario, clock: FakeClock, requested: TimeRange = FULL) -> Summary:
    config = scenario.config()
    return await commands.backfill(
        config, select(config, [], []), requested, clock, asyncio.Event()
    )


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


async def test_many_merchants_every_object_exactly_once(tmp_path: Path, clock: FakeClock) -> None:
    """A backfill of eight merchants puts every object of the range on disk exactly once."""
    tokens = {m: new_token(m) for m in merchant_ids(8)}
    settings = sim_settings(
        {m: Account(token=t) for m, t in tokens.items()}, max_concurrent_exports=10
    )
    async with Simulator(settings, clock, Faults()) as sim:
        scenario = Scenario(tmp_path, sim, tokens, region={"max_concurrent_exports": 3})
        summary = await backfill(scenario, clock)
        assert summary.exit_code == 0, summary.render()
        total = assert_exactly_once(scenario)
        assert total > 8 * 2 * 1000
        assert sim.stats.max_running <= 3
        assert sim.stats.max_running == 3, "the configured limit should be used, not just obeyed"
        assert sim.stats.file_auth_headers == 0
        assert sim.stats.file_downloads > 0
        # 120 days in 30-day chunks: 4 chunks per merchant and type, one export each.
        assert sim.stats.exports_created == 8 * 2 * 4


async def test_chunk_folders_and_manifests(scenario: Scenario, clock: FakeClock) -> None:
    """Each chunk folder is named for its UTC range and its manifest matches its parts."""
    summary = await backfill(
        scenario, clock, TimeRange(DATA_START, DATA_START + timedelta(days=45))
    )
    assert summary.exit_code == 0
    merchant_id = next(iter(scenario.tokens))
    folder = scenario.output_dir / merchant_id / "payments"
    assert sorted(p.name for p in folder.iterdir()) == [
        "20250101T000000Z_20250131T000000Z",
        "20250131T000000Z_20250215T000000Z",
    ]
    chunk = folder / "20250101T000000Z_20250131T000000Z"
    manifest = json.loads((chunk / "_manifest.json").read_text())
    parts = sorted(chunk.glob("part-*.json"))
    assert [p["file"] for p in manifest["parts"]] == [p.name for p in parts]
    for entry, part in zip(manifest["parts"], parts, strict=True):
        assert entry["sha256"] == hashlib.sha256(part.read_bytes()).hexdigest()
        assert entry["size"] == part.stat().st_size
        assert entry["objects"] == len(json.loads(part.read_bytes())["elements"])
    assert manifest["range"]["start"].startswith("2025-01-01T00:00:00")


async def test_rerun_over_done_range_is_a_no_op(scenario: Scenario, clock: FakeClock) -> None:
    """Backfilling a done range again creates no export and leaves the output byte-identical."""
    assert (await backfill(scenario, clock)).exit_code == 0
    created = scenario.sim.stats.exports_created
    before = tree_digest(scenario.output_dir)
    again = await backfill(scenario, clock)
    assert again.exit_code == 0
    assert scenario.sim.stats.exports_created == created
    assert tree_digest(scenario.output_dir) == before


async def test_partly_covered_range_cuts_only_the_gaps(
    scenario: Scenario, clock: FakeClock
) -> None:
    """A request over a range partly harvested exports only what is missing."""
    first = TimeRange(DATA_START + timedelta(days=10), DATA_START + timedelta(days=20))
    assert (await backfill(scenario, clock, first)).exit_code == 0
    created = scenario.sim.stats.exports_created
    wider = TimeRange(DATA_START, DATA_START + timedelta(days=30))
    assert (await backfill(scenario, clock, wider)).exit_code == 0
    # Per merchant and type: [Jan 1, Jan 11) and [Jan 21, Jan 31), two new exports.
    assert scenario.sim.stats.exports_created - created == 3 * 2 * 2
    assert_exactly_once(scenario, wider)


async def test_slots_go_round_robin_across_merchants(scenario: Scenario, clock: FakeClock) -> None:
    """With one slot, merchants with one chunk go before a merchant's long backfill is done."""
    scenario.region["max_concurrent_exports"] = 1
    config = scenario.config()
    hog, first, second = scenario.tokens
    store = await Store.open(config.state_path, clock)
    try:
        week = timedelta(days=7)
        hog_chunks = await store.add_chunks(
            hog,
            ExportType.PAYMENTS,
            [TimeRange(DATA_START + i * week, DATA_START + (i + 1) * week) for i in range(6)],
        )
        singles = [
            await store.add_chunks(
                m, ExportType.PAYMENTS, [TimeRange(DATA_START, DATA_START + week)]
            )
            for m in (first, second)
        ]
        merchants = {m.id: m for m in config.merchants}
        work = [MerchantWork(merchants[hog], tuple(hog_chunks))] + [
            MerchantWork(merchants[m], tuple(chunks))
            for m, chunks in zip((first, second), singles, strict=True)
        ]
        async with aiohttp.ClientSession() as session:
            output = FolderOutput(scenario.output_dir)
            harvest, _ = commands.build_harvest(
                config, store, output, session, clock, asyncio.Event(), random.Random()
            )
            summary = await harvest.run(work)
        assert summary.exit_code == 0
        exports = sorted(exports_in(config.state_path), key=lambda e: e.created_at)
        chunk_owner = {c.id: c.merchant_id for c in await store.chunks()}
        order = [chunk_owner[e.chunk_id] for e in exports]
        assert set(order[:3]) == {hog, first, second}, order
        assert scenario.sim.stats.max_running == 1
    finally:
        await store.close()
