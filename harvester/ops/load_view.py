"""The live view of a load on a terminal: chunks loaded, unchanged and refused, rows.

Imported only when stderr is a terminal (it brings in rich), like live.py beside it, whose
`live_progress` draws it.
"""

from __future__ import annotations

from rich.text import Text

from harvester.clock import Clock
from harvester.load.summary import LoadSummary
from harvester.ops.live import duration


class LoadView:
    def __init__(self, summary: LoadSummary, clock: Clock) -> None:
        self._summary = summary
        self._clock = clock
        self._started = clock.monotonic()

    def render(self) -> Text:
        summary = self._summary
        failed = f", {summary.chunks_failed} failed" if summary.chunks_failed else ""
        return Text.assemble(
            ("chunks ", "bold"),
            f"{summary.chunks_loaded} loaded, {summary.chunks_unchanged} unchanged{failed}   ",
            ("rows ", "bold"),
            f"{summary.rows:,}   ",
            ("into ", "bold"),
            f"{summary.destination}   ",
            ("elapsed ", "bold"),
            duration(self._clock.monotonic() - self._started),
        )
