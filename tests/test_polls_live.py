"""Polls of a whole harvest on the simulator: aimed by what the store learned, few per export."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from harvester.clover.chunks import TimeRange
from tests.conftest import DATA_START
from tests.fakeclock import FakeClock
from tests.harness import Run, assert_exactly_once, harvest, simulated

FIRST = TimeRange(DATA_START, DATA_START + timedelta(days=60))
NEXT = TimeRange(FIRST.end, FIRST.end + timedelta(days=60))
# Exports of about ten minutes: about 30 polls each at poll_max_s 20 by progress alone.
MINUTES: dict[str, Any] = {"pending_s": 1.0, "export_base_s": 500.0, "export_per_object_s": 0.2}


def polls_per_export(run: Run) -> list[int]:
    return sorted(Counter(sent.url for sent in run.requests.of("poll")).values())


async def test_with_history_every_export_takes_at_most_three_polls(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A second backfill, on the durations the first one left in the store, polls each of its
    ten-minute exports at most 3 times; the first learns as it goes."""
    async with simulated(tmp_path, clock, merchants=2, **MINUTES) as scenario:
        first = await harvest(scenario, clock, FIRST)
        assert first.summary.exit_code == 0, first.summary.render()
        assert_exactly_once(scenario, FIRST)
        second = await harvest(scenario, clock, NEXT)
        assert second.summary.exit_code == 0, second.summary.render()
        assert_exactly_once(scenario, TimeRange(FIRST.start, NEXT.end))

        assert len(polls_per_export(second)) == 2 * 2 * 2
        assert max(polls_per_export(second)) <= 3
        # The first run's first two exports (two slots) knew nothing: the schedule by progress
        # alone, aimed at the end their progress rate predicts once two polls showed it (30
        # polls each at poll_max_s 20 before). Every later one started after an export had
        # ended, and learned from it.
        *learned, blind_a, blind_b = polls_per_export(first)
        assert min(blind_a, blind_b) > 3
        assert max(blind_a, blind_b) <= 12
        assert max(learned) <= 3


async def test_without_history_polls_follow_the_progress_alone(
    tmp_path: Path, clock: FakeClock
) -> None:
    """timing.poll_history 0: the same second backfill learns nothing from the first; each
    export is polled as a cold run's first ones are, by its own progress alone."""
    async with simulated(tmp_path, clock, merchants=1, **MINUTES) as scenario:
        scenario.top["timing"] = {"poll_min_s": 1, "poll_max_s": 20, "poll_history": 0}
        await harvest(scenario, clock, FIRST)
        second = await harvest(scenario, clock, NEXT)

        assert second.summary.exit_code == 0, second.summary.render()
        assert min(polls_per_export(second)) > 5


@pytest.mark.parametrize("count", ["none", "jumpy"])
async def test_a_count_that_does_not_measure_the_work_is_survived(
    tmp_path: Path, clock: FakeClock, count: str
) -> None:
    """A server whose percentComplete stays 0 until DONE, or falls back now and then: a first
    and a second backfill finish, nothing taken for a stall, each export polled a bounded
    number of times (the waits themselves: tests/test_polling.py)."""
    async with simulated(
        tmp_path,
        clock,
        merchants=2,
        progress_count=count,
        pending_s=1.0,
        export_base_s=100.0,
        export_per_object_s=0.05,
    ) as scenario:
        polls = []
        for requested in (FIRST, NEXT):
            run = await harvest(scenario, clock, requested)
            assert run.summary.exit_code == 0, run.summary.render()
            polls.append(polls_per_export(run))
        assert_exactly_once(scenario, TimeRange(FIRST.start, NEXT.end))
        assert scenario.sim.stats.exports_created == 2 * 2 * 2 * 2  # none failed
        # The first two knew nothing: by elapsed time (none), or by a rate until the count fell
        # back (jumpy). Every later one learned from an ended export: at most 3.
        (*learned, blind_a, blind_b), second = polls
        assert max(blind_a, blind_b) <= 25
        assert max(learned + second) <= 3
