"""What a run did, per merchant and type: the final report and the exit code."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from harvester.clover.chunks import ExportType


@dataclass(slots=True)
class Tally:
    """One merchant and type."""

    chunks_planned: int = 0
    chunks_done: int = 0
    chunks_failed: int = 0
    chunks_empty: int = 0  # done, and the range held no object (counted in chunks_done)
    objects: int = 0
    parts: int = 0
    bytes: int = 0
    exports_created: int = 0
    lost_creates: int = 0  # creates whose answer was lost: orphans that may hold a slot
    chunks_elsewhere: int = 0  # of chunks_done: harvested by another process meanwhile
    errors: list[str] = field(default_factory=list)

    @property
    def chunks_left(self) -> int:
        return self.chunks_planned - self.chunks_done - self.chunks_failed


@dataclass(slots=True)
class Summary:
    tallies: dict[tuple[str, ExportType], Tally] = field(default_factory=dict)
    refusals: dict[str, str] = field(default_factory=dict)  # merchant id -> why it was flagged
    events: Counter[str] = field(default_factory=Counter)  # busy_503, window_503, ...
    problems: list[str] = field(default_factory=list)  # what stopped the run short, if anything
    stopped: bool = False

    @property
    def orphans(self) -> int:
        """Creates whose answer was lost this run, every merchant and type."""
        return sum(t.lost_creates for t in self.tallies.values())

    def tally(self, merchant_id: str, export_type: ExportType) -> Tally:
        return self.tallies.setdefault((merchant_id, export_type), Tally())

    @property
    def all_done(self) -> bool:
        return (
            not self.refusals
            and not self.problems
            and all(t.chunks_done == t.chunks_planned for t in self.tallies.values())
        )

    @property
    def exit_code(self) -> int:
        return 0 if self.all_done else 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "all_done": self.all_done,
            "stopped": self.stopped,
            "refusals": dict(self.refusals),
            "problems": list(self.problems),
            "events": dict(self.events),
            "orphans": self.orphans,
            "merchants": [
                {
                    "merchant": merchant_id,
                    "type": str(export_type),
                    "chunks_planned": t.chunks_planned,
                    "chunks_done": t.chunks_done,
                    "chunks_failed": t.chunks_failed,
                    "chunks_left": t.chunks_left,
                    "chunks_empty": t.chunks_empty,
                    "chunks_done_elsewhere": t.chunks_elsewhere,
                    "objects": t.objects,
                    "parts": t.parts,
                    "bytes": t.bytes,
                    "exports_created": t.exports_created,
                    "lost_creates": t.lost_creates,
                    "errors": list(t.errors),
                }
                for (merchant_id, export_type), t in sorted(self.tallies.items())
            ],
        }

    def totals(self) -> dict[str, Any]:
        """The run in a few numbers, summed over merchants and types."""
        tallies = self.tallies.values()
        return {
            "all_done": self.all_done,
            "stopped": self.stopped,
            "merchants": len({merchant_id for merchant_id, _ in self.tallies}),
            "chunks_planned": sum(t.chunks_planned for t in tallies),
            "chunks_done": sum(t.chunks_done for t in tallies),
            "chunks_failed": sum(t.chunks_failed for t in tallies),
            "chunks_left": sum(t.chunks_left for t in tallies),
            "objects": sum(t.objects for t in tallies),
            "parts": sum(t.parts for t in tallies),
            "bytes": sum(t.bytes for t in tallies),
            "exports_created": sum(t.exports_created for t in tallies),
            "chunks_empty": sum(t.chunks_empty for t in tallies),
            "lost_creates": self.orphans,
            "merchants_refused": len(self.refusals),
            "problems": list(self.problems),
            "events": dict(self.events),
        }

    def render(self) -> str:
        header = ("merchant", "type", "done", "failed", "left", "objects", "MB", "exports")
        rows = [header]
        for (merchant_id, export_type), t in sorted(self.tallies.items()):
            rows.append(
                (
                    merchant_id,
                    str(export_type),
                    f"{t.chunks_done}/{t.chunks_planned}",
                    str(t.chunks_failed),
                    str(t.chunks_left),
                    str(t.objects),
                    f"{t.bytes / 1e6:.1f}",
                    str(t.exports_created),
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows
        ]
        for merchant_id, why in sorted(self.refusals.items()):
            lines.append(f"{merchant_id}: {why}")
        for (merchant_id, export_type), t in sorted(self.tallies.items()):
            if t.chunks_elsewhere:
                lines.append(
                    f"{merchant_id} {export_type}: {t.chunks_elsewhere} of the chunks done were "
                    "harvested by another process"
                )
            for error in t.errors:
                lines.append(f"{merchant_id} {export_type}: {error}")
        if self.orphans:
            lines.append(
                f"orphans: {self.orphans} create(s) lost their answer; the exports may exist "
                "(a slot was held for each)"
            )
        for problem in self.problems:
            lines.append(f"problem: {problem}")
        if self.events:
            lines.append("events: " + ", ".join(f"{k}={v}" for k, v in sorted(self.events.items())))
        verdict = "all requested work done" if self.all_done else "some work is not done"
        if self.stopped:
            verdict = "stopped before the end: the next run picks up where this one stopped"
        lines.append(verdict)
        return "\n".join(lines)
