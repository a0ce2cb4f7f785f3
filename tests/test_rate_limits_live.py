"""Clover's REST limits end to end: our limiter keeps under them, and a 429 pauses what it names."""

from __future__ import annotations

import io
from collections import deque
from datetime import timedelta
from pathlib import Path

import pytest

from harvester.clover.chunks import TimeRange
from harvester.harvest.scheduler import Harvest
from harvester.simulator import Faults
from harvester.simulator.app import (
    APP_CONCURRENT_HEADER,
    APP_RATE_HEADER,
    CONCURRENT_HEADER,
    RATE_HEADER,
)
from harvester.simulator.faults import FaultKind
from tests.conftest import DATA_START, FAST_TIMING
from tests.fakeclock import FakeClock
from tests.harness import (
    Requests,
    assert_exactly_once,
    harvest,
    log_events,
    metronome,
    simulated,
)

MONTH = TimeRange(DATA_START, DATA_START + timedelta(days=30))
# Polls as often as the limits let them: the harvest presses against the limits all along.
EAGER_TIMING = {**FAST_TIMING, "poll_min_s": 0.1, "poll_max_s": 0.2}


def most_in_any_second(starts: list[float]) -> int:
    """The most request starts in any window [t - 1 s, t]."""
    window: deque[float] = deque()
    most = 0
    for start in sorted(starts):
        window.append(start)
        while window[0] <= start - 1.0:
            window.popleft()
        most = max(most, len(window))
    return most


async def test_the_harvesters_own_limits_keep_it_under_clovers(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Four merchants with eight lanes each, polling eagerly through a slow API: the simulator
    never has to send a 429, because the harvester caps its own requests at Clover's numbers
    (here the 10 in flight per app and 5 per token are what binds)."""
    async with simulated(
        tmp_path, clock, merchants=4, max_concurrent_exports=32, api_latency_s=0.3
    ) as scenario:
        scenario.region["max_concurrent_exports"] = 32
        scenario.top["timing"] = EAGER_TIMING
        run = await harvest(scenario, clock)

        assert run.summary.exit_code == 0, run.summary.render()
        assert_exactly_once(scenario)
        stats = scenario.sim.stats
        assert sum(stats.rate_limited.values()) == 0, stats.rate_limited
        assert stats.faults_injected == {}
        # The limits were pressed against, not merely never approached.
        assert stats.max_running > 10
        assert run.host.limiter.max_in_flight_seen == 10
        # More than one token's 5 in flight at 0.3 s each (~17/s) allow. Not the app's ~33/s
        # ceiling itself: how close the FakeClock lets a harvest get to it depends on how
        # fast this machine turns answers into new requests.
        assert most_in_any_second([s.at for s in run.requests.sent if s.kind != "file"]) > 20


async def test_configured_limits_are_the_ones_kept(tmp_path: Path, clock: FakeClock) -> None:
    """`regions.X.rate_limits` replaces Clover's numbers: a host that allows 2 requests in
    flight per token and 3 per app sees no 429 from a harvester configured the same."""
    async with simulated(
        tmp_path,
        clock,
        merchants=3,
        api_latency_s=0.5,
        token_concurrent=2,
        app_concurrent=3,
        max_concurrent_exports=6,
    ) as scenario:
        scenario.region["max_concurrent_exports"] = 6
        scenario.region["rate_limits"] = {"token_concurrent": 2, "app_concurrent": 3}
        scenario.top["timing"] = EAGER_TIMING
        run = await harvest(scenario, clock, MONTH)

        assert run.summary.exit_code == 0, run.summary.render()
        assert sum(scenario.sim.stats.rate_limited.values()) == 0
        assert run.host.limiter.max_in_flight_seen == 3


@pytest.mark.parametrize(
    ("header", "scope", "retry_after_s"),
    [
        pytest.param(RATE_HEADER, "token", None, id="tokenLimit"),
        pytest.param(CONCURRENT_HEADER, "token", 3.0, id="tokenConcurrentLimit"),
        pytest.param(APP_RATE_HEADER, "app", None, id="crossTokenLimit"),
        pytest.param(APP_CONCURRENT_HEADER, "app", 3.0, id="crossTokenConcurrentLimit"),
    ],
)
@pytest.mark.parametrize("header_case", ["canonical", "lower"])
async def test_a_429_pauses_the_token_or_the_host_as_its_header_says(
    tmp_path: Path,
    clock: FakeClock,
    log_buffer: io.StringIO,
    header: str,
    scope: str,
    retry_after_s: float | None,
    header_case: str,
) -> None:
    """A token limit holds back only the merchant whose request was refused; a cross-token
    (app) limit holds back every merchant on the host. The pause lasts Retry-After (plus at
    most 10% jitter), or 1 s when the 429 has none. Header names are read in any case (as
    Clover's docs print them, and HTTP/2 sends them: all lower case)."""
    faults = Faults(rate_limit_header=header)
    async with simulated(
        tmp_path,
        clock,
        merchants=3,
        faults=faults,
        retry_after_s=3,
        export_base_s=8,
        header_case=header_case,
    ) as scenario:
        scenario.region["max_concurrent_exports"] = 3
        for merchant_id in scenario.tokens:
            scenario.merchant_overrides[merchant_id] = {"types": ["PAYMENTS"]}
        scenario.top["timing"] = EAGER_TIMING
        requests = Requests(clock)

        async def refuse_one_request_once_all_poll(runner: Harvest) -> None:
            while len({s.merchant for s in requests.of("poll")}) < 3:
                await clock.sleep(0.1)
            faults.script(FaultKind.API_429)
            await metronome(clock, 4, step_s=0.05)  # keep the others from being leapt over

        run = await harvest(
            scenario, clock, MONTH, requests=requests, beside=refuse_one_request_once_all_poll
        )

        assert run.summary.exit_code == 0, run.summary.render()
        assert scenario.sim.stats.rate_limited == {header: 1}
        (refused,) = run.requests.of(status=429)
        (line,) = log_events(log_buffer, "request.rate_limited")
        assert line["scope"] == scope
        assert line["merchant"] == refused.merchant
        wait_s = line["wait_s"]
        if retry_after_s is None:
            assert wait_s == 1.0
        else:
            assert retry_after_s <= wait_s <= retry_after_s * 1.1
        # Exactly: nothing of the token (or, for app, of anyone) starts after the 429 was
        # read and before the pause ends; requests already on their way are no such thing.
        (pause,) = run.requests.pauses
        assert (pause.scope, pause.key) == (scope, refused.merchant)
        assert pause.until == pytest.approx(pause.at + wait_s, abs=0.001)
        assert run.requests.started_in_a_pause() == []
        mine = run.requests.of(merchant=refused.merchant)
        resumed = next(s for s in mine if s.order > pause.order)
        assert resumed.at >= pause.until
        others = [s for s in run.requests.sent if s.merchant not in (None, refused.merchant)]
        if scope == "token":
            went_on = [s for s in others if pause.order < s.order and s.at < pause.until]
            assert went_on, "the other tokens were held back too"


async def test_without_retry_after_429s_back_off_exponentially_from_one_second(
    tmp_path: Path, clock: FakeClock, log_buffer: io.StringIO
) -> None:
    """Four 429s in a row without Retry-After: 1 s, then full-jitter draws of at least 1 s
    under a doubling ceiling; the fifth try goes through and nothing fails."""
    faults = Faults(rate_limit_header=RATE_HEADER)
    faults.script(FaultKind.API_429, times=4)
    async with simulated(tmp_path, clock, merchants=1, faults=faults) as scenario:
        scenario.merchant_overrides[next(iter(scenario.tokens))] = {"types": ["PAYMENTS"]}
        scenario.top["timing"] = {**FAST_TIMING, "max_attempts": 2}
        run = await harvest(scenario, clock, MONTH)

        assert run.summary.exit_code == 0, run.summary.render()
        posts = run.requests.of("create")
        assert [s.status for s in posts] == [429, 429, 429, 429, 200]
        waits = [line["wait_s"] for line in log_events(log_buffer, "request.rate_limited")]
        assert waits[0] == 1.0
        for wait_s, ceiling in zip(waits[1:], (2, 4, 8), strict=True):
            assert 1.0 <= wait_s <= ceiling
        for earlier, later, wait_s in zip(posts, posts[1:], waits, strict=False):
            assert wait_s - 0.001 <= later.at - earlier.at <= wait_s + 0.1


@pytest.mark.parametrize(
    ("header", "scope"), [(CONCURRENT_HEADER, "token"), (APP_CONCURRENT_HEADER, "app")]
)
async def test_a_request_handed_the_place_of_a_refused_one_waits_out_its_pause(
    tmp_path: Path, clock: FakeClock, header: str, scope: str
) -> None:
    """Issue 16's early retry, reproduced end to end. One request in flight per token: the
    second create waits for the first. The first is answered 429; leaving its block hands the
    place on before the 429 is read. The second must still wait out the retry-after."""
    faults = Faults(rate_limit_header=header)
    faults.script(FaultKind.API_429)
    async with simulated(
        tmp_path, clock, merchants=1, faults=faults, retry_after_s=3, api_latency_s=0.5
    ) as scenario:
        scenario.region["rate_limits"] = {"token_concurrent": 1}

        async def slow_time(runner: Harvest) -> None:
            # Time creeps while the 429 is answered: the second create is queued by then.
            await metronome(clock, 1.0, step_s=0.01)

        run = await harvest(scenario, clock, MONTH, beside=slow_time)

        assert run.summary.exit_code == 0, run.summary.render()
        creates = run.requests.of("create")
        assert [s.status for s in creates][:2] == [429, 200]
        (pause,) = run.requests.pauses
        assert pause.scope == scope
        assert run.requests.started_in_a_pause() == []
        assert creates[1].at >= pause.until >= creates[0].at + 3
        assert_exactly_once(scenario, MONTH)
