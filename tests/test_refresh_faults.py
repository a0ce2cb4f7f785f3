"""A token refresh is an API call like any other: its 429s and transient failures are retried."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest

from harvester import commands
from harvester.clover.api import CloverApi, ExportStatus
from harvester.clover.chunks import ExportType, TimeRange
from harvester.clover.ratelimit import RequestLimiter
from harvester.config import Timing
from harvester.errors import CloverUnavailable, HarvesterError, RateLimited, TokenRejected
from harvester.harvest.merchant import MerchantClient
from harvester.harvest.planning import select
from harvester.simulator import Account, Faults, Simulator
from harvester.simulator.faults import FaultKind
from tests.conftest import DATA_START, Scenario, harvested, merchant_ids, new_token, sim_settings
from tests.fakeclock import FakeClock

CLIENT_ID = "refresh-app"
SPAN = TimeRange(DATA_START, DATA_START + timedelta(days=20))


@pytest.mark.parametrize(
    "faults",
    [
        pytest.param((FaultKind.API_429,), id="429"),
        pytest.param((FaultKind.API_5XX, FaultKind.API_RESET), id="5xx-then-reset"),
    ],
)
async def test_refresh_failures_are_retried_not_fatal(
    tmp_path: Path, clock: FakeClock, faults: tuple[FaultKind, ...]
) -> None:
    """Faults on the first refresh requests delay the harvest but fail no chunk."""
    merchant_id = merchant_ids(1)[0]
    refresh_token = new_token(merchant_id)
    account = Account(refresh_token=refresh_token, client_id=CLIENT_ID)
    injected = Faults()
    # The first API requests of the run are the refresh: nothing has an access token yet.
    for kind in faults:
        injected.script(kind)
    async with Simulator(sim_settings({merchant_id: account}), clock, injected) as sim:
        scenario = Scenario(
            tmp_path,
            sim,
            {merchant_id: refresh_token},
            merchant_overrides={
                merchant_id: {
                    "token": None,
                    "refresh_token": f"${{TOKEN_{merchant_id}}}",
                    "client_id": CLIENT_ID,
                }
            },
        )
        config = scenario.config()
        summary = await commands.backfill(
            config, select(config, [], []), SPAN, clock, asyncio.Event()
        )
        assert summary.exit_code == 0, summary.render()
        assert sim.stats.faults_injected == {str(kind): 1 for kind in faults}
        assert sim.stats.requests["refresh"] == 1 + len(faults)
        assert sim.stats.refreshes == 1
        assert sim.stats.refresh_reuse == 0
        expected = sim.objects(merchant_id, "PAYMENTS", SPAN.start_ms, SPAN.end_ms - 1)
        assert len(harvested(scenario.output_dir, merchant_id, "payments")) == len(expected)


class FlakyTokens:
    """A token source whose first get() calls fail as a refresh would, then hands out `token`."""

    def __init__(self, token: str, failures: list[HarvesterError]) -> None:
        self.token = token
        self.failures = failures
        self.gets = 0
        self.rejections = 0

    async def get(self) -> str:
        self.gets += 1
        if self.failures:
            raise self.failures.pop(0)
        return self.token

    async def rejected(self, token: str) -> bool:
        self.rejections += 1
        return True


def api_for(session: aiohttp.ClientSession, sim: Simulator, limiter: RequestLimiter) -> CloverApi:
    """The production client on the simulator."""
    return CloverApi(session, sim.api_url, limiter, 10.0)


async def test_poll_retries_a_refresh_that_failed_transiently(clock: FakeClock) -> None:
    """A poll whose token refresh hit a 5xx and a 429 retries; a rejected refresh is final."""
    merchant_id = merchant_ids(1)[0]
    token = new_token(merchant_id)
    settings = sim_settings({merchant_id: Account(token=token)})
    async with Simulator(settings, clock, Faults()) as sim, aiohttp.ClientSession() as session:
        limiter = RequestLimiter(clock, 16, 5, 50, 10)
        api = api_for(session, sim, limiter)
        timing = Timing(backoff_base_s=1.0, backoff_max_s=30.0)

        def client(tokens: FlakyTokens) -> MerchantClient:
            return MerchantClient(
                merchant_id, api, tokens, limiter, timing, clock, random.Random(7)
            )

        created = await client(FlakyTokens(token, [])).create_export(ExportType.PAYMENTS, SPAN)
        flaky = FlakyTokens(
            token,
            [
                CloverUnavailable("refresh the access token: Clover answered 502"),
                RateLimited("refresh the access token: rate limited (429)", "token", None),
            ],
        )
        info = await client(flaky).get_export(created.id)
        assert info.id == created.id
        assert info.status in (ExportStatus.PENDING, ExportStatus.IN_PROGRESS)
        assert flaky.gets == 3
        assert sim.stats.requests["poll"] == 1

        refused = FlakyTokens(token, [TokenRejected("refresh token rejected (401)")])
        with pytest.raises(TokenRejected):
            await client(refused).get_export(created.id)
        assert (refused.gets, refused.rejections) == (1, 0)
        assert sim.stats.requests["poll"] == 1


class ExpiredThenFresh:
    """Hands out a token Clover no longer takes; the refresh after the 401 fails as given
    (in order), then hands out `fresh`."""

    def __init__(self, fresh: str, refresh_failures: list[HarvesterError]) -> None:
        self.current = "expired-access-token"
        self.fresh = fresh
        self.refresh_failures = refresh_failures
        self.rejections = 0

    async def get(self) -> str:
        return self.current

    async def rejected(self, token: str) -> bool:
        self.rejections += 1
        if self.refresh_failures:
            raise self.refresh_failures.pop(0)
        self.current = self.fresh
        return True


async def test_refresh_after_a_401_gets_the_retry_policy_too(clock: FakeClock) -> None:
    """A 401 whose refresh first hits a 429 and a 5xx still ends in a successful poll."""
    merchant_id = merchant_ids(1)[0]
    token = new_token(merchant_id)
    settings = sim_settings({merchant_id: Account(token=token)})
    async with Simulator(settings, clock, Faults()) as sim, aiohttp.ClientSession() as session:
        limiter = RequestLimiter(clock, 16, 5, 50, 10)
        api = api_for(session, sim, limiter)
        timing = Timing(backoff_base_s=1.0, backoff_max_s=30.0)
        good = MerchantClient(
            merchant_id, api, FlakyTokens(token, []), limiter, timing, clock, random.Random(7)
        )
        created = await good.create_export(ExportType.PAYMENTS, SPAN)
        tokens = ExpiredThenFresh(
            token,
            [
                RateLimited("refresh the access token: rate limited (429)", "token", None),
                CloverUnavailable("refresh the access token: Clover answered 502"),
            ],
        )
        client = MerchantClient(merchant_id, api, tokens, limiter, timing, clock, random.Random(7))
        info = await client.get_export(created.id)
        assert info.id == created.id
        assert tokens.rejections == 3
        assert sim.stats.bad_tokens == 1
        assert sim.stats.requests["poll"] == 2


async def test_a_run_stopping_ends_the_wait_after_a_429_at_once(clock: FakeClock) -> None:
    """A call paused by a 429 (here a minute, as Retry-After says) gives up as soon as the
    run is stopping, with a transient failure, instead of sitting out the pause."""
    merchant_id = merchant_ids(1)[0]
    token = new_token(merchant_id)
    settings = sim_settings({merchant_id: Account(token=token)})
    async with Simulator(settings, clock, Faults()) as sim, aiohttp.ClientSession() as session:
        limiter = RequestLimiter(clock, 16, 5, 50, 10)
        stop = asyncio.Event()
        stop.set()
        refused = FlakyTokens(token, [RateLimited("rate limited (429)", "app", 60.0)])
        client = MerchantClient(
            merchant_id,
            api_for(session, sim, limiter),
            refused,
            limiter,
            Timing(backoff_base_s=1.0, backoff_max_s=120.0),
            clock,
            random.Random(7),
            stop=stop,
        )
        with pytest.raises(CloverUnavailable, match="stopping"):
            await client.get_export("no-such-export")
        assert clock.monotonic() == 0.0
        assert limiter.app_paused_for >= 60.0  # what the others wait for all the same
        assert sim.stats.requests["poll"] == 0
