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


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


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
    await wait_first(clock.sleep(seconds), stop.wait())
    return not stop.is_set()
