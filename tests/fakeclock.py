"""Virtual time for the tests: a discrete-event clock that satisfies `harvester.clock.Clock`."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from harvester.clock import wait_first


class FakeClock:
    """Virtual time for tests, a discrete-event clock.

    Sleepers wake in order of their wake time. Whenever some coroutine sleeps, a driver
    lets the event loop run for `tick_s` of real time (so loopback I/O and ready tasks
    make progress), then jumps virtual time to the earliest wake and wakes it. An hour
    of virtual waiting costs a few real milliseconds, and no test depends on the time
    of day. `advance()` moves time by hand.

    Time never jumps while work handed to a thread (`run_in_executor`, `to_thread`: the
    SQLite store, fsyncs, file writes) or to a child process (a `token_command`) is still
    running: an fsync that takes 50 ms on a loaded machine, or a program that takes 100 ms
    to start, would otherwise let virtual seconds pass in the middle of one step.
    """

    def __init__(self, start: datetime, tick_s: float = 0.002) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware start")
        self._start = start.astimezone(UTC)
        # Whole microseconds, as datetimes count: a float sum of long sleeps drifts, and a
        # wait until an instant would end a microsecond past it.
        self._elapsed_us = 0
        self._tick_s = tick_s
        self._sleepers: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._driver: asyncio.Task[None] | None = None
        self._in_threads = 0  # jobs handed to threads and not yet back
        self._watched: asyncio.AbstractEventLoop | None = None

    def now(self) -> datetime:
        return self._start + timedelta(microseconds=self._elapsed_us)

    def monotonic(self) -> float:
        return self._elapsed_us / 1_000_000

    def advance(self, seconds: float) -> None:
        """Move virtual time forward, waking every sleeper whose time has come."""
        self._elapsed_us += max(0, _us(seconds))
        self._wake_due()

    async def sleep(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        self._watch_threads(loop)
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = loop.create_future()
        # At least a microsecond: a sleep shorter than one still lets time move on.
        wake_us = self._elapsed_us + max(1, _us(seconds))
        heapq.heappush(self._sleepers, (wake_us, next(self._order), future))
        if self._driver is None or self._driver.done():
            self._driver = asyncio.create_task(self._drive(), name="fake-clock-driver")
        await future

    async def sleep_unless(self, event: asyncio.Event, seconds: float) -> None:
        await wait_first(self.sleep(seconds), event.wait())

    @property
    def jobs_in_threads(self) -> int:
        return self._in_threads

    def _watch_threads(self, loop: asyncio.AbstractEventLoop) -> None:
        """Count the jobs `loop` hands to threads, from now on, until each is back."""
        if self._watched is loop:
            return
        self._watched = loop
        handed = loop.run_in_executor

        def run_in_executor(executor: Any, func: Callable[..., Any], *args: Any) -> Any:
            future = handed(executor, func, *args)
            self._in_threads += 1
            future.add_done_callback(self._back_from_thread)
            return future

        setattr(loop, "run_in_executor", run_in_executor)  # noqa: B010 (an instance attribute)
        started = loop.subprocess_exec

        async def subprocess_exec(factory: Callable[[], Any], *args: Any, **kwargs: Any) -> Any:
            def counted() -> Any:
                protocol = factory()
                exited = protocol.process_exited

                def process_exited() -> None:
                    self._back_from_thread(None)
                    exited()

                protocol.process_exited = process_exited
                return protocol

            self._in_threads += 1
            try:
                return await started(counted, *args, **kwargs)
            except BaseException:
                self._back_from_thread(None)
                raise

        setattr(loop, "subprocess_exec", subprocess_exec)  # noqa: B010 (an instance attribute)

    def _back_from_thread(self, _: object) -> None:
        self._in_threads -= 1

    def _wake_due(self) -> None:
        while self._sleepers and self._sleepers[0][0] <= self._elapsed_us:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)

    async def _drive(self) -> None:
        while True:
            await asyncio.sleep(self._tick_s)
            while self._sleepers and self._sleepers[0][2].done():
                heapq.heappop(self._sleepers)
            if not self._sleepers:
                return
            if self._in_threads:
                continue
            self._elapsed_us = max(self._elapsed_us, self._sleepers[0][0])
            self._wake_due()


def _us(seconds: float) -> int:
    """`seconds` in whole microseconds, the nearest."""
    return round(seconds * 1_000_000)
