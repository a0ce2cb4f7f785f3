"""The tests' virtual clock: it leaps only while nothing is at work."""

from __future__ import annotations

import asyncio
import sys
import threading
from datetime import timedelta

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


async def test_a_wait_until_an_instant_ends_on_it_after_odd_sleeps() -> None:
    """Time is kept in whole microseconds, as datetimes count it: `now()` is exact, and a
    wait computed from it to an instant, after sleeps of any length, ends on that instant."""
    clock = FakeClock(NOW)
    clock.advance(0.0000007)
    target = NOW + timedelta(seconds=10)
    await clock.sleep((target - clock.now()).total_seconds())
    assert clock.now() == target


async def test_time_stands_still_while_a_child_process_runs() -> None:
    """A program run as a child (a token_command) holds virtual time as a thread does."""
    clock = FakeClock(NOW)
    await clock.sleep(0)  # the clock watches this loop from now on
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(0.1)"
    )
    sleeper = asyncio.create_task(clock.sleep(10))
    await asyncio.sleep(0.05)  # real time: the driver's ticks would leap
    assert not sleeper.done()
    assert clock.monotonic() == 0
    await child.wait()
    await sleeper
    assert clock.monotonic() == 10
