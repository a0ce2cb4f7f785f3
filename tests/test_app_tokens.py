"""Harvests of merchants from a merchants_file with tokens from a token_command, against the
simulator on a fake clock; the commands are real subprocesses."""

from __future__ import annotations

import asyncio
import io
import secrets
from datetime import timedelta
from pathlib import Path

from harvester import commands
from harvester.chunks import TimeRange
from harvester.planning import select
from harvester.simulator import Account, Faults, Simulator
from harvester.summary import Summary
from tests.apptokens import AppScenario, token_of, tokens_script
from tests.conftest import DATA_START, merchant_ids, sim_settings
from tests.fakeclock import FakeClock
from tests.harness import assert_exactly_once, log_events


async def backfill(scenario: AppScenario, clock: FakeClock, requested: TimeRange) -> Summary:
    config = scenario.config()
    return await commands.backfill(
        config, select(config, [], []), requested, clock, asyncio.Event()
    )


async def test_a_thousand_merchants_from_a_csv_file_with_tokens_from_a_script(
    tmp_path: Path, clock: FakeClock, log_buffer: io.StringIO
) -> None:
    """1,000 merchants read from merchants.csv, each with the token its script prints: every
    object of the range is on disk exactly once, and the script ran once per merchant."""
    salt = secrets.token_hex(8)
    ids = merchant_ids(1000)
    tokens = {m: token_of(m, salt) for m in ids}
    requested = TimeRange(DATA_START, DATA_START + timedelta(days=2))
    settings = sim_settings(
        {m: Account(token=t) for m, t in tokens.items()},
        data_end=requested.end,  # small data: the simulator makes only what is asked
        objects_per_day=3.0,
        max_concurrent_exports=100,
        app_requests_per_s=1000,
        app_concurrent=100,
        pending_s=0.0,
        export_base_s=0.5,
    )
    async with Simulator(settings, clock, Faults()) as sim:
        scenario = AppScenario(
            tmp_path,
            sim,
            tokens,
            region={
                "max_concurrent_exports": 100,
                "rate_limits": {"app_requests_per_s": 1000, "app_concurrent": 100},
            },
            command=tokens_script(tmp_path, salt),
            types="PAYMENTS",
            extra_top={"token_command_ttl_s": 86400},  # the run lasts hours of virtual time
        )
        summary = await backfill(scenario, clock, requested)
        assert summary.exit_code == 0, summary.render()[-2000:]
        assert assert_exactly_once(scenario, requested) > 1000
        stats = sim.stats
    assert stats.bad_tokens == 0
    fetched = log_events(log_buffer, "token.fetched")
    assert sorted(event["merchant"] for event in fetched) == sorted(ids)
