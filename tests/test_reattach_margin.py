"""A re-attached export's age does not feed the window margin (its p90 of export durations)."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta
from pathlib import Path

import aiohttp

from harvester import commands
from harvester.clock import Clock
from harvester.clover.chunks import ExportType, TimeRange
from harvester.config import Region, Timing
from harvester.harvest.hosts import HostFactories, make_gate
from harvester.harvest.planning import select
from harvester.pacing.gate import MIN_MARGIN_S, HostGate
from harvester.simulator import Account, Faults, Simulator
from harvester.state.sqlite import Store
from tests.conftest import DATA_START, Scenario, harvested, merchant_ids, new_token, sim_settings
from tests.fakeclock import FakeClock

SPAN = TimeRange(DATA_START, DATA_START + timedelta(days=10))
NIGHT_S = 10 * 3600.0


async def test_reattached_export_age_is_not_an_export_duration(
    tmp_path: Path, clock: FakeClock
) -> None:
    """An export created ten hours before the run and finished meanwhile is harvested, and
    the margin stays at its floor instead of growing to ten hours."""
    made: list[HostGate] = []

    def recording_gate(
        region: Region, timing: Timing, clock: Clock, rng: random.Random
    ) -> HostGate:
        made.append(make_gate(region, timing, clock, rng))
        return made[-1]

    merchant_id = merchant_ids(1)[0]
    token = new_token(merchant_id)
    async with Simulator(sim_settings({merchant_id: Account(token=token)}), clock, Faults()) as sim:
        scenario = Scenario(
            tmp_path,
            sim,
            {merchant_id: token},
            merchant_overrides={merchant_id: {"types": ["PAYMENTS"]}},
        )
        config = scenario.config()
        # A run that died right after creating the export left it in the store.
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{sim.api_url}/v3/merchants/{merchant_id}/exports",
                json={"type": "PAYMENTS", "startTime": SPAN.start_ms, "endTime": SPAN.end_ms - 1},
                headers={"Authorization": f"Bearer {token}"},
            ) as response,
        ):
            assert response.status == 200
            export_id = (await response.json())["id"]
        async with await Store.open(config.state_path, clock) as store:
            (chunk,) = await store.add_chunks(merchant_id, ExportType.PAYMENTS, [SPAN])
            await store.record_export(chunk.id, export_id, "PENDING", 0)
        clock.advance(NIGHT_S)

        summary = await commands.backfill(
            config,
            select(config, [], []),
            SPAN,
            clock,
            asyncio.Event(),
            factories=HostFactories(gate=recording_gate),
        )
        assert summary.exit_code == 0, summary.render()
        assert sim.stats.exports_created == 1, "the stored export should have been re-attached"
        expected = sim.objects(merchant_id, "PAYMENTS", SPAN.start_ms, SPAN.end_ms - 1)
        assert len(harvested(scenario.output_dir, merchant_id, "payments")) == len(expected)
        (gate,) = made
        assert gate.margin_s == MIN_MARGIN_S
