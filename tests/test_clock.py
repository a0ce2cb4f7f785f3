from __future__ import annotations

import asyncio

import pytest

from harvester.clock import Clock, SystemClock, nap
from tests.conftest import NOW
from tests.fakeclock import FakeClock


@pytest.fixture(params=["system", "fake"])
def any_clock(request: pytest.FixtureRequest) -> Clock:
    """Each clock a nap runs on: the real one (with waits of no length, or ended by the
    event) and the tests' virtual one."""
    return SystemClock() if request.param == "system" else FakeClock(NOW)


async def test_a_nap_nobody_stops_runs_its_course(any_clock: Clock) -> None:
    seconds = 0.0 if isinstance(any_clock, SystemClock) else 30.0
    started = any_clock.monotonic()
    assert await nap(any_clock, seconds, asyncio.Event())
    assert any_clock.monotonic() - started >= seconds


async def test_a_nap_ends_when_stop_is_set(any_clock: Clock) -> None:
    stop = asyncio.Event()
    started = any_clock.monotonic()
    napping = asyncio.create_task(nap(any_clock, 3600.0, stop))
    await asyncio.sleep(0)
    stop.set()
    assert await asyncio.wait_for(napping, 5.0) is False
    assert any_clock.monotonic() - started < 3600.0


async def test_a_nap_after_stop_does_not_wait(any_clock: Clock) -> None:
    stop = asyncio.Event()
    stop.set()
    assert await asyncio.wait_for(nap(any_clock, 3600.0, stop), 5.0) is False


async def test_a_nap_cancelled_from_outside_is_cancelled(any_clock: Clock) -> None:
    """Cancelling the napping task cancels it: the nap's own timeout does not swallow it."""
    napping = asyncio.create_task(nap(any_clock, 3600.0, asyncio.Event()))
    await asyncio.sleep(0)
    napping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(napping, 5.0)
    assert napping.cancelled()
