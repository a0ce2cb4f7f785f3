"""Which chunks a command harvests: range arithmetic over what the store already knows.

Covered ranges (chunks whose folder is in place) are never cut again; chunks already known
but not finished are taken as they are, so that a run resumes them instead of cutting
overlapping new ones; only the gaps left get new chunks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from harvester.clover.chunks import ExportType, TimeRange, plan
from harvester.config import Config, Merchant
from harvester.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Selection:
    """A merchant and the types a command harvests for it."""

    merchant: Merchant
    types: tuple[ExportType, ...]


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    """For one merchant and type: the unfinished chunks to resume and the new ones to cut."""

    resume: tuple[TimeRange, ...]
    new: tuple[TimeRange, ...]


def select(
    config: Config, merchant_ids: Sequence[str], types: Sequence[ExportType]
) -> list[Selection]:
    """The merchants named on the command line (all if none), each with its types filtered."""
    known = {merchant.id: merchant for merchant in config.merchants}
    for merchant_id in merchant_ids:
        if merchant_id not in known:
            raise ConfigError(
                f"--merchant: unknown merchant id {merchant_id!r} (not in {config.path})"
            )
    chosen = (
        [known[i] for i in dict.fromkeys(merchant_ids)] if merchant_ids else list(known.values())
    )
    selections = []
    for merchant in chosen:
        wanted = tuple(t for t in merchant.types if not types or t in types)
        if wanted:
            selections.append(Selection(merchant, wanted))
    return selections


def plan_chunks(
    requested: TimeRange,
    covered: Sequence[TimeRange],
    unfinished: Sequence[TimeRange],
    chunk_days: int,
) -> ChunkPlan:
    resume = tuple(sorted(r for r in unfinished if r.overlaps(requested)))
    new = tuple(plan(requested, [*covered, *unfinished], chunk_days))
    return ChunkPlan(resume, new)


def nightly_start(
    merchant: Merchant, default_start: datetime | None, covered: Sequence[TimeRange]
) -> datetime:
    """Where `harvester run` starts for a merchant: its start:, default_start:, or its coverage."""
    start = merchant.start or default_start
    if start is not None:
        return start
    if covered:
        return min(r.start for r in covered)
    raise ConfigError(
        f"{merchant.path('start')}: merchant {merchant.id} has nothing harvested yet and "
        "no start date: set merchants[].start or default_start"
    )


def nightly_range(start: datetime, today: datetime) -> TimeRange | None:
    """Whole days from `start` to the start of the current UTC day."""
    return TimeRange(start, today) if start < today else None


def lookback_range(today: datetime, lookback_days: int) -> TimeRange | None:
    if lookback_days <= 0:
        return None
    return TimeRange(today - timedelta(days=lookback_days), today)
