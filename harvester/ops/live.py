"""The live view on a terminal: chunks, objects, MB, exports per region, windows and an ETA.

Imported only when stderr is a terminal (it brings in rich); off a terminal nothing of it
runs and the logs stay JSON lines. While the view is drawn, readable log lines below
`warning` are left out (JSON lines keep every level) and print above it; the summary is printed
below its last frame, once it is stopped.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Protocol, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from harvester.clock import Clock
from harvester.clover.chunks import ExportType
from harvester.harvest.observer import RunObserver
from harvester.pacing.gate import HostGate
from harvester.pacing.slots import ExportSlots

REFRESH_S = 0.5


def duration(seconds: float) -> str:
    """A short human duration: 45s, 12m05s, 3h20m, 2d04h."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def window_state(gate: HostGate, now: datetime) -> str:
    """The host's window in words, with the time to its next change."""
    wait_s = gate.wait_s(now)
    if not gate.is_open(now):
        return f"closed, opens in {duration(wait_s)}"
    if wait_s > 0:
        return f"open, next export in {duration(wait_s)}"
    close = gate.table.current_close(now)
    return "open" if close is None else f"open, closes in {duration((close - now).total_seconds())}"


class LiveView(RunObserver):
    """Keeps the figures the view shows, from the run's events."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._started = clock.monotonic()
        self.chunks_total = 0
        self.chunks_done = 0
        self.chunks_failed = 0
        self.objects = 0
        self.bytes = 0
        self.exports_created = 0
        self._hosts: dict[str, tuple[ExportSlots, HostGate]] = {}

    def chunks_planned(self, count: int) -> None:
        self.chunks_total += count

    def host_added(self, region: str, slots: ExportSlots, gate: HostGate) -> None:
        self._hosts[region] = (slots, gate)

    def export_created(self, region: str) -> None:
        self.exports_created += 1

    def chunk_completed(self, type: ExportType, objects: int, size: int) -> None:
        self.chunks_done += 1
        self.objects += objects
        self.bytes += size

    def chunk_failed(self, type: ExportType) -> None:
        self.chunks_failed += 1

    def eta(self) -> str:
        """Time left at the pace so far, or the wait for a window when nothing runs."""
        ended = self.chunks_done + self.chunks_failed
        left = self.chunks_total - ended
        if left <= 0:
            return "done"
        now = self._clock.now()
        running = sum(slots.in_use for slots, _ in self._hosts.values())
        waits = [gate.wait_s(now) for _, gate in self._hosts.values()]
        if running == 0 and any(wait > 0 for wait in waits):
            return f"waiting for a window, {duration(min(w for w in waits if w > 0))}"
        if ended == 0:
            return "-"
        elapsed_s = self._clock.monotonic() - self._started
        return duration(left * elapsed_s / ended)

    def render(self) -> Group:
        now = self._clock.now()
        elapsed_s = self._clock.monotonic() - self._started
        failed = f", {self.chunks_failed} failed" if self.chunks_failed else ""
        head = Text.assemble(
            ("chunks ", "bold"),
            f"{self.chunks_done}/{self.chunks_total} done{failed}   ",
            ("objects ", "bold"),
            f"{self.objects:,}   ",
            ("MB ", "bold"),
            f"{self.bytes / 1e6:,.1f}   ",
            ("exports ", "bold"),
            f"{self.exports_created}   ",
            ("elapsed ", "bold"),
            f"{duration(elapsed_s)}   ",
            ("ETA ", "bold"),
            self.eta(),
        )
        table = Table(box=None, pad_edge=False, show_edge=False)
        table.add_column("region")
        table.add_column("exports running/limit")
        table.add_column("window")
        for region, (slots, gate) in sorted(self._hosts.items()):
            limit = f"{slots.limit}" + (
                f" (max {slots.maximum})" if slots.limit < slots.maximum else ""
            )
            table.add_row(region, f"{slots.in_use}/{limit}", window_state(gate, now))
        return Group(head, table)


class Shown(Protocol):
    """What `live_progress` draws: the harvest's LiveView, or the load's view."""

    def render(self) -> RenderableType: ...


@asynccontextmanager
async def live_progress(
    view: Shown, stream: TextIO, relog: Callable[[TextIO, bool], None]
) -> AsyncIterator[None]:
    """Draw `view` on `stream` (a terminal) until the block ends, then leave its last frame.

    `relog(stream, drawing)` points the logs at a stream: the view's own while it is drawn
    (`drawing` True), so that log lines print above it instead of through it.
    """
    console = Console(file=stream)
    live = Live(
        view.render(),
        console=console,
        auto_refresh=False,
        redirect_stderr=True,
        redirect_stdout=sys.stdout.isatty(),  # a summary sent to a file must stay in the file
    )
    live.start()
    relog(sys.stderr, True)  # the live view's proxy now, when stderr is the terminal

    async def refresh() -> None:
        while True:
            await asyncio.sleep(REFRESH_S)  # the screen's pace is real time, whatever the clock
            live.update(view.render(), refresh=True)

    refresher = asyncio.create_task(refresh())
    try:
        yield
    finally:
        refresher.cancel()
        await asyncio.gather(refresher, return_exceptions=True)
        live.update(view.render(), refresh=True)
        live.stop()
        relog(stream, False)
