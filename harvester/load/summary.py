"""What a load did, per merchant and type: the report, the exit code, and the figures the live
view and the metrics show. Updated from dlt's worker thread, read from the event loop."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from harvester.clover.chunks import ExportType


@dataclass(slots=True)
class LoadTally:
    """One merchant and type."""

    chunks_loaded: int = 0  # new or changed since the last load, and loaded now
    chunks_unchanged: int = 0  # loaded before, in the same publish: skipped
    chunks_failed: int = 0  # a part or the manifest did not hold up: not loaded
    rows: int = 0  # objects of the loaded chunks
    errors: list[str] = field(default_factory=list)


@dataclass(slots=True)
class LoadSummary:
    destination: str  # where the tables went, for the report (never a password)
    dataset: str
    tallies: dict[tuple[str, ExportType], LoadTally] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # what failed the load as a whole
    stopped: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def tally(self, merchant_id: str, export_type: ExportType) -> LoadTally:
        with self._lock:
            return self.tallies.setdefault((merchant_id, export_type), LoadTally())

    def loaded(self, merchant_id: str, export_type: ExportType, rows: int) -> None:
        tally = self.tally(merchant_id, export_type)
        with self._lock:
            tally.chunks_loaded += 1
            tally.rows += rows

    def unchanged(self, merchant_id: str, export_type: ExportType) -> None:
        tally = self.tally(merchant_id, export_type)
        with self._lock:
            tally.chunks_unchanged += 1

    def failed(self, merchant_id: str, export_type: ExportType, error: str) -> None:
        tally = self.tally(merchant_id, export_type)
        with self._lock:
            tally.chunks_failed += 1
            tally.errors.append(error)

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tallies.values())

    @property
    def chunks_loaded(self) -> int:
        return sum(t.chunks_loaded for t in self.tallies.values())

    @property
    def chunks_failed(self) -> int:
        return sum(t.chunks_failed for t in self.tallies.values())

    @property
    def chunks_unchanged(self) -> int:
        return sum(t.chunks_unchanged for t in self.tallies.values())

    @property
    def all_done(self) -> bool:
        return not self.problems and not self.stopped and self.chunks_failed == 0

    @property
    def exit_code(self) -> int:
        return 0 if self.all_done else 1

    def rows_of(self, export_type: ExportType) -> int:
        return sum(t.rows for (_, kind), t in self.tallies.items() if kind is export_type)

    def totals(self) -> dict[str, Any]:
        """The load in a few numbers, for `load.finished`."""
        return {
            "all_done": self.all_done,
            "stopped": self.stopped,
            "destination": self.destination,
            "dataset": self.dataset,
            "merchants": len({merchant_id for merchant_id, _ in self.tallies}),
            "chunks_loaded": self.chunks_loaded,
            "chunks_unchanged": self.chunks_unchanged,
            "chunks_failed": self.chunks_failed,
            "rows": self.rows,
            "problems": list(self.problems),
        }

    def render(self) -> str:
        header = ("merchant", "type", "loaded", "unchanged", "failed", "rows")
        rows = [header]
        for (merchant_id, export_type), t in sorted(self.tallies.items()):
            rows.append(
                (
                    merchant_id,
                    str(export_type),
                    str(t.chunks_loaded),
                    str(t.chunks_unchanged),
                    str(t.chunks_failed),
                    str(t.rows),
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows
        ]
        for (merchant_id, export_type), t in sorted(self.tallies.items()):
            for error in t.errors:
                lines.append(f"{merchant_id} {export_type}: {error}")
        for problem in self.problems:
            lines.append(f"problem: {problem}")
        if self.stopped:
            lines.append("stopped: the chunks not loaded load next time")
        lines.append(
            f"{self.rows} rows from {self.chunks_loaded} chunks into {self.destination} "
            f"(dataset {self.dataset})"
        )
        return "\n".join(lines)
