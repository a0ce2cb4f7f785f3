"""Availability windows end to end: the harvester against a simulator on the shared FakeClock.

NOW is Tuesday 2025-07-01 12:00 UTC. Each test gives the simulator a window (a callable) and
the config a table, the same one unless the test is about a table that is wrong.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest

from harvester.clover.chunks import ExportType, TimeRange
from tests.conftest import DATA_START, FAST_TIMING, NOW, Scenario
from tests.fakeclock import FakeClock
from tests.harness import (
    Run,
    Sent,
    Watch,
    assert_exactly_once,
    harvest,
    log_events,
    recorded_exports,
    simulated,
    window,
)

MONTH = TimeRange(DATA_START, DATA_START + timedelta(days=30))
TOMORROW = NOW + timedelta(days=1)


def at(hour: int, minute: int = 0, second: int = 0, day: datetime = NOW) -> datetime:
    return day.replace(hour=hour, minute=minute, second=second, microsecond=0)


def since_start(instant: datetime) -> float:
    """`instant` on the FakeClock's monotonic scale (which starts at NOW)."""
    return (instant - NOW).total_seconds()


async def test_no_export_is_posted_before_the_window_opens(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Started while shut, the harvest sends no request until the opening, then exports at once."""
    hours = ["every day 13:00-15:00"]
    async with simulated(
        tmp_path, clock, merchants=4, window=window(hours).is_open, max_concurrent_exports=4
    ) as scenario:
        scenario.region.update(windows=hours, max_concurrent_exports=4)
        watch = Watch()
        watch.at(clock, at(12, 59, 59), "sent", lambda: sum(scenario.sim.stats.requests.values()))
        run = await harvest(scenario, clock, MONTH)
        watch.cancel()

        assert run.summary.exit_code == 0, run.summary.render()
        assert watch.seen["sent"] == 0, "requests reached the simulator while it was closed"
        assert run.requests.before(since_start(at(13))) == []
        assert scenario.sim.stats.window_503s == 0
        assert scenario.sim.stats.first_create_at == at(13)
        recorded = recorded_exports(scenario)
        assert recorded[0].created_at == at(13)
        assert len(recorded) == 4 * 2
        assert_exactly_once(scenario, MONTH)


async def test_the_closed_window_is_logged_once_however_many_merchants_wait(
    tmp_path: Path, clock: FakeClock, log_buffer: io.StringIO
) -> None:
    """Five merchants waiting an hour and a half for the window make one `window.closed` line."""
    hours = ["every day 13:30-15:00"]
    async with simulated(tmp_path, clock, merchants=5, window=window(hours).is_open) as scenario:
        scenario.region.update(windows=hours)
        run = await harvest(scenario, clock, MONTH)

        assert run.summary.exit_code == 0, run.summary.render()
        closed = log_events(log_buffer, "window.closed")
        assert len(closed) == 1, closed
        assert closed[0]["opens_at"] == "2025-07-01T13:30:00Z"
        assert closed[0]["windows"] == "every day 13:30-15:00"
        # The wait is one long sleep (in naps), not a loop of attempts.
        assert run.requests.before(since_start(at(13, 30))) == []


@pytest.mark.parametrize(
    ("margin_s", "first_create"),
    [
        pytest.param(3600, at(10, day=TOMORROW), id="30min-left-under-1h-margin"),
        pytest.param(600, NOW, id="30min-left-over-10min-margin"),
    ],
)
async def test_a_configured_margin_keeps_exports_from_starting_near_the_close(
    tmp_path: Path, clock: FakeClock, margin_s: float, first_create: datetime
) -> None:
    """With less than `window_margin_s` left before the close, the first export waits a day."""
    hours = ["every day 10:00-12:30"]
    async with simulated(tmp_path, clock, merchants=2, window=window(hours).is_open) as scenario:
        scenario.region.update(windows=hours)
        scenario.top["timing"] = {**FAST_TIMING, "window_margin_s": margin_s}
        run = await harvest(scenario, clock, MONTH)

        assert run.summary.exit_code == 0, run.summary.render()
        assert scenario.sim.stats.first_create_at == first_create
        assert scenario.sim.stats.window_503s == 0
        assert run.requests.of("create")[0].at == since_start(first_create)


@pytest.mark.parametrize(
    ("close", "first_create"),
    [
        pytest.param(at(12, 4), at(10, day=TOMORROW), id="4min-left"),
        pytest.param(at(12, 6), NOW, id="6min-left"),
    ],
)
async def test_the_default_margin_is_five_minutes_before_anything_was_observed(
    tmp_path: Path, clock: FakeClock, close: datetime, first_create: datetime
) -> None:
    """Without `window_margin_s` and with no export seen yet, the margin is 300 s."""
    hours = [f"every day 10:00-{close:%H:%M}"]
    async with simulated(tmp_path, clock, merchants=1, window=window(hours).is_open) as scenario:
        scenario.region.update(windows=hours)
        run = await harvest(scenario, clock, MONTH)

        assert run.summary.exit_code == 0, run.summary.render()
        assert scenario.sim.stats.first_create_at == first_create
        assert scenario.sim.stats.window_503s == 0


async def test_the_default_margin_grows_to_the_observed_export_duration(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Once exports took ~17 min, none starts with 9 min left, though 9 min beat the 5 min floor."""
    hours = ["every day 12:00-13:00"]
    async with simulated(
        tmp_path,
        clock,
        merchants=1,
        window=window(hours).is_open,
        export_base_s=1000,
        max_concurrent_exports=1,
    ) as scenario:
        scenario.region.update(windows=hours, max_concurrent_exports=1)
        scenario.merchant_overrides[next(iter(scenario.tokens))] = {"types": ["PAYMENTS"]}
        run = await harvest(scenario, clock)  # four 30-day chunks, one at a time

        assert run.summary.exit_code == 0, run.summary.render()
        created = [export.created_at for export in recorded_exports(scenario)]
        assert len(created) == 4
        # Three fit in the first hour, back to back; the third ends with ~9 min to spare.
        assert created[0] == NOW
        assert all(at(12) <= c < at(12, 45) for c in created[:3]), created
        last_done = created[2] + timedelta(seconds=1007)
        assert at(12, 45) < last_done < at(12, 55)
        # 9 minutes were left, more than MIN_MARGIN_S but less than one export takes.
        assert created[3] == at(12, day=TOMORROW)
        assert scenario.sim.stats.window_503s == 0


async def test_exports_running_at_the_close_are_followed_and_downloaded(
    tmp_path: Path, clock: FakeClock
) -> None:
    """An export still running when the window shuts is polled to DONE and its files are saved
    the same afternoon: nothing after the POST waits for the window."""
    hours = ["every day 12:00-12:10"]
    async with simulated(
        tmp_path, clock, merchants=1, window=window(hours).is_open, export_base_s=1800
    ) as scenario:
        scenario.region.update(windows=hours)
        scenario.merchant_overrides[next(iter(scenario.tokens))] = {"types": ["PAYMENTS"]}
        scenario.top["timing"] = {**FAST_TIMING, "window_margin_s": 60}
        run = await harvest(scenario, clock, MONTH)

        assert run.summary.exit_code == 0, run.summary.render()
        (export,) = recorded_exports(scenario)
        assert export.created_at == NOW
        close = since_start(at(12, 10))
        assert [s for s in run.requests.of("poll") if s.at > close]
        files = run.requests.of("file")
        assert len(files) == 3
        assert all(close < s.at < since_start(at(12, 40)) and s.status == 200 for s in files)
        assert clock.now() < at(12, 40)
        assert scenario.sim.stats.window_503s == 0
        assert scenario.sim.stats.exports_by_final_state == {"DONE": 1}
        objects = scenario.sim.objects(
            next(iter(scenario.tokens)), "PAYMENTS", MONTH.start_ms, MONTH.end_ms - 1
        )
        assert run.summary.tally(next(iter(scenario.tokens)), ExportType.PAYMENTS).objects == len(
            objects
        )


@asynccontextmanager
async def closed_until_one_pm(
    tmp_path: Path, clock: FakeClock, body: str, hours_text: str
) -> AsyncIterator[tuple[Scenario, Run, list[Sent]]]:
    """Ten lanes harvest a host whose table says open but which refuses, with this 503 body,
    until 13:00; yields the run and the POSTs sent while it was closed (all refused)."""
    async with simulated(
        tmp_path,
        clock,
        merchants=5,
        window=lambda now: now >= at(13),
        window_body=body,
        window_hours_text=hours_text,
    ) as scenario:
        scenario.top["timing"] = {**FAST_TIMING, "backoff_max_s": 300}
        run = await harvest(scenario, clock, MONTH)
        assert run.summary.exit_code == 0, run.summary.render()
        assert_exactly_once(scenario, MONTH)
        one_pm = since_start(at(13))
        # Nothing but POSTs before 13:00. One that starts just before may reach the host
        # after 13:00 and go through: how far the FakeClock moves while a request is on the
        # wire depends on the machine, so the refused ones are told by their answer.
        assert all(s.kind == "create" for s in run.requests.before(one_pm))
        closed_posts = run.requests.of("create", status=503)
        assert all(s.at < one_pm for s in closed_posts)
        yield scenario, run, closed_posts


async def test_a_closed_host_is_probed_once_per_backoff_max(
    tmp_path: Path, clock: FakeClock
) -> None:
    """The table says open, the host says closed and its body tells no reopening: ten lanes
    send one probe per `backoff_max_s` between them, not one retry loop each."""
    async with closed_until_one_pm(tmp_path, clock, "hours", "10:00 and 15:00") as (
        scenario,
        run,
        closed_posts,
    ):
        # The first answers come back to POSTs already under way (one per slot) ...
        first = [s for s in closed_posts if s.at == 0]
        assert 1 <= len(first) <= 2
        # ... then one probe at a time, backoff_max_s apart: 12 an hour, not hundreds.
        probes = [s.at for s in closed_posts if s.at > 0]
        assert len(probes) == 11
        assert all(later - earlier >= 300 for earlier, later in pairwise([0.0, *probes]))
        assert run.summary.events["window_503"] == scenario.sim.stats.window_503s
        assert run.summary.events["busy_503"] == 0
        assert scenario.sim.stats.first_create_at == at(13)


async def test_hours_in_the_503_body_say_when_to_come_back(
    tmp_path: Path, clock: FakeClock, log_buffer: io.StringIO
) -> None:
    """A wrong table (always open) is corrected by the body's hours: one answer, then a wait
    until the opening it names, logged once."""
    async with simulated(
        tmp_path,
        clock,
        merchants=4,
        window=window(["every day 13:00-15:00"]).is_open,
        window_hours_text="13:00 and 15:00",
    ) as scenario:
        run = await harvest(scenario, clock, MONTH)

        assert run.summary.exit_code == 0, run.summary.render()
        closed_posts = run.requests.before(since_start(at(13)))
        assert 1 <= len(closed_posts) <= 2  # POSTs under way when the first answer came back
        assert all(s.at == 0 and s.status == 503 for s in closed_posts)
        assert scenario.sim.stats.first_create_at == at(13)
        closed = log_events(log_buffer, "window.closed")
        assert [line["opens_at"] for line in closed] == ["2025-07-01T13:00:00Z"]


async def test_a_builtin_region_keeps_its_documented_window(
    tmp_path: Path, clock: FakeClock, log_buffer: io.StringIO
) -> None:
    """Region `us` pointed at the simulator but given no `windows:` keeps Clover's 10:00-15:00:
    started at 15:30, the harvest waits for 10:00 the next day."""
    us_hours = ["every day 10:00-15:00"]
    clock.advance(3.5 * 3600)
    async with simulated(tmp_path, clock, merchants=1, window=window(us_hours).is_open) as scenario:
        scenario.top["regions"] = {"us": {"base_url": scenario.sim.api_url}}
        scenario.merchant_overrides[next(iter(scenario.tokens))] = {"region": "us"}
        run = await harvest(scenario, clock, MONTH)

        assert run.summary.exit_code == 0, run.summary.render()
        assert scenario.sim.stats.first_create_at == at(10, day=TOMORROW)
        assert scenario.sim.stats.window_503s == 0
        (line,) = log_events(log_buffer, "window.closed")
        assert line["opens_at"] == "2025-07-02T10:00:00Z"
        assert line["windows"] == "every day 10:00-15:00"


async def test_a_bare_503_in_the_tables_window_is_taken_for_busy_and_posts_stay_few(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A host closed outside its table that answers 503 with no body reads as busy (the
    issue's rule for a 503 while the window is open): the whole host backs off, so ten lanes
    send a few dozen POSTs in the closed hour, not hundreds, and all is harvested at 13:00."""
    async with closed_until_one_pm(tmp_path, clock, "bare", "") as (scenario, run, closed_posts):
        assert len(closed_posts) <= 40
        assert run.summary.events["window_503"] == 0
        assert run.summary.events["busy_503"] == len(closed_posts)
        assert scenario.sim.stats.first_create_at is not None
        assert scenario.sim.stats.first_create_at >= at(13)
