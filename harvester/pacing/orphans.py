"""Orphans: exports a create may have made although its answer was lost.

A POST that timed out, lost its connection or got a 5xx after it was sent may have created
an export anyway; Clover documents no way to list or cancel one. Such an orphan runs, and
holds one of the server's few slots, for about as long as exports take. So its host keeps
the slot taken for that long (HostGate.expected_duration_s: the p90 of the durations seen,
and some, re-read as they are learned), and the next create does not walk into a busy 503
it could have foreseen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from harvester.clock import Clock
from harvester.logs import get_logger
from harvester.pacing.slots import ExportSlots, Slot

# The hold re-reads the expected duration at least this often, as durations are learned.
RECHECK_S = 30.0


class OrphanHolds:
    """The slots held for one run's orphans; `close` gives back whatever is still held."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self.count = 0  # orphans this run, every host

    def hold(
        self, host: str, slots: ExportSlots, slot: Slot, expected_s: Callable[[], float]
    ) -> None:
        """Keep `slot` (whose create lost its answer) taken until an export started now
        would be expected to end."""
        self.count += 1
        release = slots.hold_orphan(slot)
        started = self._clock.monotonic()
        get_logger().info("export.orphan_held", host=host, expected_s=round(expected_s(), 3))

        async def hold() -> None:
            try:
                while (left := started + expected_s() - self._clock.monotonic()) > 0:
                    await self._clock.sleep(min(left, RECHECK_S))
            finally:
                release()

        task = asyncio.create_task(hold(), name=f"orphan-{host}-{self.count}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """The run is over: no orphan holds anything of it any more."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
