"""A busy server: 503s on POST while the window is open, and the export limit adapting to them."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

from harvester.clover.chunks import TimeRange
from harvester.harvest.scheduler import Harvest
from harvester.simulator import Faults
from harvester.simulator.faults import FaultKind
from tests.conftest import DATA_START, FAST_TIMING
from tests.fakeclock import FakeClock
from tests.harness import assert_exactly_once, harvest, log_events, metronome, simulated

MONTH = TimeRange(DATA_START, DATA_START + timedelta(days=30))


async def test_a_server_smaller_than_configured_is_found_out_and_used_fully(
    tmp_path: Path, clock: FakeClock, log_buffer: io.StringIO
) -> None:
    """Simulator limit 2, config limit 6: busy 503s bring the limit down to what runs (and it
    probes upwards again),
    everything arrives exactly once, and the harvester never holds more than 6 slots."""
    async with simulated(tmp_path, clock, merchants=4, max_concurrent_exports=2) as scenario:
        scenario.region["max_concurrent_exports"] = 6
        run = await harvest(scenario, clock)

        assert run.summary.exit_code == 0, run.summary.render()
        assert_exactly_once(scenario)
        stats = scenario.sim.stats
        assert stats.max_running == 2
        assert stats.exports_created == 4 * 2 * 4  # busy POSTs created nothing
        assert run.slots.max_in_use <= 6
        assert stats.busy_503s > 0
        busy = log_events(log_buffer, "export.busy")
        assert len(busy) == stats.busy_503s == run.summary.events["busy_503"]
        assert all(line["merchant"] and line["wait_s"] >= 0 for line in busy)
        limits = [line["limit"] for line in busy]
        assert limits[0] == 2, "the first busy 503 sets the limit to the 2 exports running"
        assert min(limits) >= 1
        # Probing upwards goes on: the limit is not stuck where a busy answer put it.
        assert 2 <= run.slots.limit <= 6
        waits = [line["wait_s"] for line in busy]
        assert len(set(waits)) > len(waits) // 2, "busy retries are jittered, not in lockstep"


async def test_a_busy_503_holds_the_whole_host_back(
    tmp_path: Path, clock: FakeClock, log_buffer: io.StringIO
) -> None:
    """With one slot, a merchant told "busy" gives the slot back, and no lane of the host
    POSTs during the backoff (the server is full for everyone); then the two exports go one
    after the other through the one slot."""
    faults = Faults()
    faults.script(FaultKind.BUSY_503)
    async with simulated(tmp_path, clock, merchants=2, faults=faults) as scenario:
        for merchant_id in scenario.tokens:
            scenario.merchant_overrides[merchant_id] = {"types": ["PAYMENTS"]}
        scenario.region["max_concurrent_exports"] = 1
        scenario.top["timing"] = {**FAST_TIMING, "backoff_base_s": 10, "backoff_max_s": 40}

        async def keep_time_from_leaping(runner: Harvest) -> None:
            await metronome(clock, 5, step_s=0.05)

        run = await harvest(scenario, clock, MONTH, beside=keep_time_from_leaping)

        assert run.summary.exit_code == 0, run.summary.render()
        assert_exactly_once(scenario, MONTH)
        posts = run.requests.of("create")
        assert [s.status for s in posts] == [503, 200, 200]
        assert {s.merchant for s in posts[1:]} == set(scenario.tokens)
        (backoff,) = log_events(log_buffer, "export.busy")
        assert posts[1].at >= posts[0].at + backoff["wait_s"] - 0.001, "nobody POSTs meanwhile"
        first_done = max(s.at for s in run.requests.of("poll", merchant=posts[1].merchant))
        assert posts[2].at >= first_done, "the second waited for the one slot"
        assert run.slots.max_in_use == 1


async def test_busy_retries_back_off_with_full_jitter_and_are_not_failures(
    tmp_path: Path, clock: FakeClock, log_buffer: io.StringIO
) -> None:
    """Three busy answers in a row: each wait is a full-jitter draw under a doubling ceiling,
    the retry comes no sooner, and with max_attempts 2 the chunk still goes through."""
    faults = Faults()
    faults.script(FaultKind.BUSY_503, times=3)
    async with simulated(tmp_path, clock, merchants=1, faults=faults) as scenario:
        scenario.merchant_overrides[next(iter(scenario.tokens))] = {"types": ["PAYMENTS"]}
        scenario.top["timing"] = {
            **FAST_TIMING,
            "backoff_base_s": 10,
            "backoff_max_s": 40,
            "max_attempts": 2,
        }
        run = await harvest(scenario, clock, MONTH)

        assert run.summary.exit_code == 0, run.summary.render()
        posts = run.requests.of("create")
        assert [s.status for s in posts] == [503, 503, 503, 200]
        busy = log_events(log_buffer, "export.busy")
        for attempt, (line, ceiling) in enumerate(zip(busy, (10, 20, 40), strict=True)):
            assert 0 <= line["wait_s"] <= ceiling
            assert posts[attempt + 1].at - posts[attempt].at >= line["wait_s"] - 0.001
        assert len({line["wait_s"] for line in busy}) == 3
        assert [line["limit"] for line in busy] == [1, 1, 1]
        assert run.slots.limit == 2  # the POST that went through at limit 1 raised it again
