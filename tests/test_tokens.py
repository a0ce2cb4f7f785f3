"""Expiring tokens: refreshed in time, once per merchant, rotated durably, never logged."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from harvester.clover.api import TokenGrant
from harvester.clover.chunks import TimeRange
from harvester.errors import StoreError
from harvester.harvest.scheduler import Harvest
from harvester.harvest.tokens import RefreshingToken
from harvester.simulator import Account
from harvester.state.sqlite import Store
from tests.conftest import DATA_START, FAST_TIMING, Scenario
from tests.fakeclock import FakeClock
from tests.harness import Requests, assert_exactly_once, harvest, log_events, simulated

CLIENT_ID = "harvester-app-id"
MONTH = TimeRange(DATA_START, DATA_START + timedelta(days=30))
NEXT_MONTH = TimeRange(MONTH.end, MONTH.end + timedelta(days=30))


@asynccontextmanager
async def refreshing(
    tmp_path: Path,
    clock: FakeClock,
    merchants: int = 1,
    *,
    client_id_on: str = "merchant",
    **settings: Any,
) -> AsyncIterator[Scenario]:
    """Merchants with only a refresh token (`scenario.tokens` holds it) and the app's id."""

    def account(merchant_id: str, token: str) -> Account:
        return Account(refresh_token=token, client_id=CLIENT_ID)

    async with simulated(tmp_path, clock, merchants, accounts=account, **settings) as scenario:
        for merchant_id in scenario.tokens:
            override: dict[str, Any] = {
                "token": None,
                "refresh_token": f"${{TOKEN_{merchant_id}}}",
                "types": ["PAYMENTS"],
            }
            if client_id_on == "merchant":
                override["client_id"] = CLIENT_ID
            scenario.merchant_overrides[merchant_id] = override
        if client_id_on == "region":
            scenario.region["client_id"] = CLIENT_ID
        yield scenario


def bearer_tokens(requests: Requests) -> set[str]:
    return {s.authorization.removeprefix("Bearer ") for s in requests.sent if s.authorization}


async def stored_refresh_token(scenario: Scenario, clock: FakeClock, merchant_id: str) -> str:
    async with await Store.open(scenario.config().state_path, clock) as store:
        stored = await store.refresh_token(merchant_id)
    assert stored is not None
    return stored[0]


async def test_the_access_token_is_refreshed_before_it_expires(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Access tokens live 10 min, the margin is 2 min: through a 40-minute export the harvester
    refreshes 8 min after the last refresh or later, with the first request past that (polls
    aimed at the export's end may be minutes apart), and Clover never sees an expired token."""
    async with refreshing(tmp_path, clock, access_token_ttl_s=600, export_base_s=2400) as scenario:
        scenario.top["timing"] = {**FAST_TIMING, "token_refresh_margin_s": 120}
        run = await harvest(scenario, clock, MONTH)

        assert run.summary.exit_code == 0, run.summary.render()
        assert_exactly_once(scenario, MONTH)
        stats = scenario.sim.stats
        assert (stats.bad_tokens, stats.refresh_reuse) == (0, 0)
        refreshed_at = [s.at for s in run.requests.of("refresh")]
        assert stats.refreshes == len(refreshed_at) >= 3
        asked_at = [s.at for s in run.requests.sent if s.kind != "refresh"]
        for earlier, later in pairwise(refreshed_at):
            # Expirations come in whole seconds: a refresh is at most 1 s early, and comes with
            # the first request after the deadline, however long the wait for it.
            deadline = earlier + 600 - 120 - 1
            assert deadline <= later <= min(at for at in asked_at if at >= deadline)
        assert len(bearer_tokens(run.requests)) == stats.refreshes


@pytest.mark.parametrize("client_id_on", ["merchant", "region"])
async def test_racing_lanes_of_one_merchant_share_one_refresh(
    tmp_path: Path, clock: FakeClock, client_id_on: str
) -> None:
    """Four lanes of one merchant ask for a token at the same instant: one refresh goes out,
    and no refresh token is ever presented twice (client_id from merchant or region)."""
    async with refreshing(
        tmp_path, clock, client_id_on=client_id_on, max_concurrent_exports=4
    ) as scenario:
        scenario.region["max_concurrent_exports"] = 4
        run = await harvest(scenario, clock)

        assert run.summary.exit_code == 0, run.summary.render()
        first_posts = [s for s in run.requests.of("create") if s.at == 0]
        assert len(first_posts) == 4, "the lanes did race"
        stats = scenario.sim.stats
        assert (stats.refreshes, stats.refresh_reuse, stats.bad_tokens) == (1, 0, 0)
        assert len(run.requests.of("refresh")) == 1


async def test_a_401_is_answered_by_one_refresh(tmp_path: Path, clock: FakeClock) -> None:
    """Clover revokes the access token while several lanes' requests are under way: each gets
    a 401, one refresh follows (not one per lane), and the harvest carries on."""
    async with refreshing(tmp_path, clock, max_concurrent_exports=4, api_latency_s=0.5) as scenario:
        scenario.region["max_concurrent_exports"] = 4
        merchant_id = next(iter(scenario.tokens))
        requests = Requests(clock)

        async def revoke_while_two_polls_are_under_way(runner: Harvest) -> None:
            while len([s for s in requests.of("poll") if s.status is None]) < 2:
                await clock.sleep(0.05)
            scenario.sim.revoke_access_tokens(merchant_id)

        run = await harvest(
            scenario, clock, requests=requests, beside=revoke_while_two_polls_are_under_way
        )

        assert run.summary.exit_code == 0, run.summary.render()
        assert_exactly_once(scenario)
        stats = scenario.sim.stats
        assert stats.bad_tokens >= 1
        assert (stats.refreshes, stats.refresh_reuse) == (2, 0)
        refused = run.requests.of(status=401)
        assert len(refused) >= 2, "several lanes held the revoked token at once"
        second_refresh = run.requests.of("refresh")[1]
        assert all(s.at <= second_refresh.at for s in refused)
        assert run.summary.refusals == {}


async def test_a_rejected_refresh_token_flags_the_merchant(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A refresh token Clover does not know: the merchant is flagged "token rejected", once."""
    async with refreshing(tmp_path, clock, merchants=2) as scenario:
        bad, _good = scenario.tokens
        scenario.tokens[bad] = "a-refresh-token-clover-never-issued"
        run = await harvest(scenario, clock, MONTH)

        assert run.summary.exit_code == 1
        assert run.summary.refusals == {bad: "token rejected"}
        assert run.requests.of(merchant=bad) == []
        assert scenario.sim.stats.refreshes == 1  # the good merchant's
        assert len(run.requests.of("refresh", status=401)) == 1


async def test_the_rotated_refresh_token_survives_a_restart(
    tmp_path: Path, clock: FakeClock, log_buffer: io.StringIO
) -> None:
    """The refresh token Clover rotated in is stored and wins over the config's (already
    spent) one: a second run with the same config refreshes with it and works; a run without
    the store, holding only the config's token, is refused."""
    async with refreshing(tmp_path, clock) as scenario:
        merchant_id = next(iter(scenario.tokens))
        configured = scenario.tokens[merchant_id]
        first = await harvest(scenario, clock, MONTH)
        assert first.summary.exit_code == 0, first.summary.render()
        rotated = await stored_refresh_token(scenario, clock, merchant_id)
        assert rotated != configured

        second = await harvest(scenario, clock, NEXT_MONTH)
        assert second.summary.exit_code == 0, second.summary.render()
        stats = scenario.sim.stats
        assert (stats.refreshes, stats.refresh_reuse, stats.bad_tokens) == (2, 0, 0)
        assert await stored_refresh_token(scenario, clock, merchant_id) not in (
            configured,
            rotated,
        )

        scenario.top["state_path"] = "elsewhere/harvester.sqlite3"
        forgetful = await harvest(scenario, clock, NEXT_MONTH)
        assert forgetful.summary.refusals == {merchant_id: "token rejected"}
        assert scenario.sim.stats.refresh_reuse == 1

        logged = log_buffer.getvalue()
        assert log_events(log_buffer, "token.refreshed")
        for token in {configured, rotated} | bearer_tokens(first.requests):
            assert token not in logged


async def test_tokens_reach_no_log_line(tmp_path: Path, clock: FakeClock) -> None:
    """Refreshes, a revoked token, a 401 and a rejected merchant: no event handed to the logger
    (before any scrubbing) and no summary line holds a token."""
    async with refreshing(tmp_path, clock, merchants=3) as scenario:
        first, second, rejected = scenario.tokens
        configured = dict(scenario.tokens)
        scenario.tokens[rejected] = "an-unknown-refresh-token"
        requests = Requests(clock)

        async def revoke_soon(runner: Harvest) -> None:
            # Right after the first poll, so that the export's later polls meet the revocation
            # however fast this machine turns answers into requests.
            while not requests.of("poll", merchant=first):
                await clock.sleep(0.05)
            scenario.sim.revoke_access_tokens(first)

        with capture_logs() as events:
            run = await harvest(scenario, clock, MONTH, requests=requests, beside=revoke_soon)
        assert run.summary.refusals == {rejected: "token rejected"}
        assert scenario.sim.stats.bad_tokens >= 2
        secrets = (
            set(configured.values())
            | {scenario.tokens[rejected]}
            | bearer_tokens(run.requests)
            | {await stored_refresh_token(scenario, clock, m) for m in (first, second)}
        )
        assert len(secrets) >= 7
        assert events
        text = repr(events) + run.summary.render() + repr(run.summary.as_dict())
        for secret in secrets:
            assert secret not in text


class _SpyStore:
    """Stands in for the store: remembers what was saved, or fails to save."""

    def __init__(self, fail: bool = False) -> None:
        self.saved: list[str] = []
        self.fail = fail

    async def refresh_token(self, merchant_id: str) -> tuple[str, datetime | None] | None:
        return (self.saved[-1], None) if self.saved else None

    async def save_refresh_token(
        self, merchant_id: str, token: str, expires_at: datetime | None
    ) -> None:
        await asyncio.sleep(0)
        if self.fail:
            raise StoreError("disk full")
        self.saved.append(token)


async def test_a_new_access_token_is_not_used_unless_its_refresh_token_was_stored(
    clock: FakeClock,
) -> None:
    """If storing the rotated refresh token fails, the new access token is never handed out:
    using it would leave only a spent refresh token behind."""
    grants = iter(["access-1", "access-2"])

    async def refresher(refresh_token: str) -> TokenGrant:
        access = next(grants)
        return TokenGrant(access, None, f"refresh-after-{access}", None)

    store = _SpyStore(fail=True)
    tokens = RefreshingToken("M1", "refresh-0", refresher, store, clock, 300)  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        await tokens.get()
    store.fail = False
    assert await tokens.get() == "access-2"
    assert store.saved == ["refresh-after-access-2"]


async def test_a_refresh_cancelled_midway_still_stores_the_rotated_token(
    clock: FakeClock,
) -> None:
    """A run cancelled while Clover is answering a refresh still stores the refresh token it
    rotated in: the old one is spent either way."""
    answering = asyncio.Event()
    answer = asyncio.Event()

    async def refresher(refresh_token: str) -> TokenGrant:
        answering.set()
        await answer.wait()
        return TokenGrant("access-1", None, "refresh-1", None)

    store = _SpyStore()
    tokens = RefreshingToken("M1", "refresh-0", refresher, store, clock, 300)  # type: ignore[arg-type]
    getting = asyncio.create_task(tokens.get())
    await answering.wait()
    getting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await getting
    answer.set()
    for _ in range(20):
        if store.saved:
            break
        await asyncio.sleep(0)
    assert store.saved == ["refresh-1"]
