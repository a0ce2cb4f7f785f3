"""The simulator's object padding: bigger files, the same objects (for the memory benchmark)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from harvester import commands
from harvester.clover.chunks import TimeRange
from harvester.harvest.planning import select
from harvester.simulator import Account, Faults, Simulator
from tests.conftest import DATA_START, Scenario, harvested, merchant_ids, new_token, sim_settings
from tests.fakeclock import FakeClock

SPAN = TimeRange(DATA_START, DATA_START + timedelta(days=10))
PADDING = 2000


async def test_padded_files_hold_the_same_objects_plus_a_filler(
    tmp_path: Path, clock: FakeClock
) -> None:
    """With object_padding_bytes, each served object carries a filler field and is otherwise
    the simulator's object, and the parts are larger by about that much per object."""
    merchant_id = merchant_ids(1)[0]
    token = new_token(merchant_id)
    settings = sim_settings({merchant_id: Account(token=token)}, object_padding_bytes=PADDING)
    async with Simulator(settings, clock, Faults()) as sim:
        scenario = Scenario(tmp_path, sim, {merchant_id: token})
        config = scenario.config()
        summary = await commands.backfill(
            config, select(config, [], []), SPAN, clock, asyncio.Event()
        )
        assert summary.exit_code == 0, summary.render()
        got = harvested(scenario.output_dir, merchant_id, "payments")
        expected = sim.objects(merchant_id, "PAYMENTS", SPAN.start_ms, SPAN.end_ms - 1)
        assert expected
        assert {obj.pop("padding") for obj in got} == {"x" * PADDING}
        assert sorted(got, key=lambda o: o["id"]) == sorted(expected, key=lambda o: o["id"])
        assert sum(t.bytes for t in summary.tallies.values()) > PADDING * len(expected)


def test_negative_padding_is_refused() -> None:
    """A negative object_padding_bytes is a ValueError naming the setting."""
    with pytest.raises(ValueError, match="object_padding_bytes"):
        sim_settings({}, object_padding_bytes=-1)
