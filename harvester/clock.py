"""Time, injected: production code asks a clock, tests hand it a fake one (tests/fakeclock.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any, Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; only differences mean anything."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait this long (no wait at all for zero or less)."""
        ...

    async def sleep_unless(self, event: asyncio.Event, seconds: float) -> None:
        """Wait this long, or until `event` is set if that comes first."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def sleep_unless(self, event: asyncio.Event, seconds: float) -> None:
        # In the waiting task itself, a timer and the event's future: a poll's nap between
        # two requests costs no tasks of its own (`wait_first` starts two and a gather).
        try:
            async with asyncio.timeout(max(0.0, seconds)):
                await event.wait()
        except TimeoutError:
            pass


async def wait_first(*waits: Coroutine[Any, Any, object]) -> None:
    """Wait until the first of these coroutines finishes; cancel the others."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def nap(clock: Clock, seconds: float, stop: asyncio.Event) -> bool:
    """Sleep on `clock` unless `stop` is set first. True if the nap ran its course."""
    if stop.is_set():
        return False
    await clock.sleep_unless(stop, seconds)
    return not stop.is_set()
