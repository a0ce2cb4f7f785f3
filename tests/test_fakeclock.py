"""The tests' virtual clock: it leaps only while nothing is at work."""

from __future__ import annotations

import asyncio
import threading

from tests.conftest import NOW
from tests.fakeclock import FakeClock


async def test_it_leaps_to_the_next_sleeper_when_the_loop_is_idle() -> None:
    clock = FakeClock(NOW)
    await clock.sleep(3600)
    assert clock.monotonic() == 3600
    assert clock.now() == NOW.replace(hour=NOW.hour + 1)


async def test_time_stands_still_while_a_thread_works() -> None:
    """A job handed to a thread (an fsync, a SQLite commit) holds virtual time: a sleeper
    beside it wakes only once the job is back, however long it took in real time."""
    clock = FakeClock(NOW)
    await clock.sleep(0)  # the clock watches this loop from now on
    release = threading.Event()
    job = asyncio.get_running_loop().run_in_executor(None, release.wait, 30)
    assert clock.jobs_in_threads == 1
    sleeper = asyncio.create_task(clock.sleep(10))
    # Real time, on purpose: dozens of the driver's 2 ms ticks, each of which would leap.
    await asyncio.sleep(0.1)
    assert not sleeper.done()
    assert clock.monotonic() == 0
    release.set()
    assert await job is True
    await sleeper
    assert clock.monotonic() == 10
    assert clock.jobs_in_threads == 0
