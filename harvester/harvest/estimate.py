"""How long a backfill will take: exports, slot-hours, and days of each region's windows.

A plain function of the planned exports, the regions, and the export durations seen so far
(creation to DONE, from the state store). With none seen, a stated default stands in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from harvester.config import Region
from harvester.pacing.windows import WindowTable

DEFAULT_EXPORT_S = 900.0  # when no export has been seen: a guess, and said to be one
_A_MONDAY = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class RegionEstimate:
    region: str
    exports: int
    slots: int  # max_concurrent_exports
    windows: str  # the table as the config writes it
    window_hours_per_day: float  # open hours in a week, divided by 7
    slot_hours_p50: float
    slot_hours_p90: float
    days_p50: float | None  # None: the table never opens
    days_p90: float | None


@dataclass(frozen=True, slots=True)
class Estimate:
    exports: int
    durations_seen: int  # 0: the default stood in
    p50_s: float
    p90_s: float
    slot_hours_p50: float
    slot_hours_p90: float
    regions: tuple[RegionEstimate, ...]


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (`fraction` in 0..1] of a non-empty sequence."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def open_hours_per_week(table: WindowTable) -> float:
    """Hours the table is open in a week (overlapping rules counted once)."""
    if table.always_open:
        return 7 * 24.0
    spans: list[tuple[datetime, datetime]] = []
    for offset in range(7):
        day = _A_MONDAY + timedelta(days=offset)
        spans += [period for rule in table.rules if (period := rule.open_period(day))]
    spans.sort()
    total = timedelta()
    reach: datetime | None = None
    for start, end in spans:
        if reach is not None and start < reach:
            start = reach
        if end > start:
            total += end - start
            reach = end
    return total.total_seconds() / 3600


def estimate(
    exports_by_region: Mapping[str, int],
    regions: Mapping[str, Region],
    durations_s: Sequence[float],
    default_s: float = DEFAULT_EXPORT_S,
) -> Estimate:
    """The estimate for these exports per region, from these observed durations."""
    p50 = percentile(durations_s, 0.5) if durations_s else default_s
    p90 = percentile(durations_s, 0.9) if durations_s else default_s
    per_region = []
    for name, count in sorted(exports_by_region.items()):
        region = regions[name]
        hours_per_day = open_hours_per_week(region.windows) / 7
        slots = region.max_concurrent_exports
        low, high = count * p50 / 3600, count * p90 / 3600
        per_day = slots * hours_per_day
        per_region.append(
            RegionEstimate(
                region=name,
                exports=count,
                slots=slots,
                windows=region.windows.describe(),
                window_hours_per_day=hours_per_day,
                slot_hours_p50=low,
                slot_hours_p90=high,
                days_p50=low / per_day if per_day > 0 else None,
                days_p90=high / per_day if per_day > 0 else None,
            )
        )
    exports = sum(exports_by_region.values())
    return Estimate(
        exports=exports,
        durations_seen=len(durations_s),
        p50_s=p50,
        p90_s=p90,
        slot_hours_p50=exports * p50 / 3600,
        slot_hours_p90=exports * p90 / 3600,
        regions=tuple(per_region),
    )


def _days(days: float | None, hours_per_day: float) -> str:
    if days is None:
        return "never (the window never opens)"
    hours = days * hours_per_day
    if hours < 1 / 60:
        return "under a minute"
    if hours < 1:
        return f"about {round(hours * 60)} minutes"
    if days < 1:
        return f"about {hours:.1f} hours"
    if days < 10:
        return f"about {days:.1f} days"
    return f"about {round(days)} days"


def _seconds(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def render_estimate(found: Estimate) -> list[str]:
    """The estimate as lines for `plan`."""
    if found.durations_seen:
        basis = f"from {found.durations_seen} exports in the state store"
    else:
        basis = "a default: no export has finished yet in the state store"
    lines = [
        f"estimate: {found.exports} exports; one export takes {_seconds(found.p50_s)} (p50), "
        f"{_seconds(found.p90_s)} (p90), {basis}",
        f"  slot-hours: {found.slot_hours_p50:.1f} (p50), {found.slot_hours_p90:.1f} (p90)",
    ]
    for region in found.regions:
        lines.append(
            f"  {region.region}: {region.exports} exports, "
            f"{_days(region.days_p50, region.window_hours_per_day)} "
            f"({_days(region.days_p90, region.window_hours_per_day)} at p90) "
            f"of the {region.region} window "
            f"({region.windows} UTC, {region.window_hours_per_day:.1f} h a day) "
            f"at {region.slots} slots"
        )
    return lines


def estimate_as_json(found: Estimate) -> dict[str, Any]:
    return {
        "exports": found.exports,
        "durations_seen": found.durations_seen,
        "export_seconds_p50": found.p50_s,
        "export_seconds_p90": found.p90_s,
        "slot_hours_p50": found.slot_hours_p50,
        "slot_hours_p90": found.slot_hours_p90,
        "regions": [
            {
                "region": r.region,
                "exports": r.exports,
                "slots": r.slots,
                "windows": r.windows,
                "window_hours_per_day": r.window_hours_per_day,
                "slot_hours_p50": r.slot_hours_p50,
                "slot_hours_p90": r.slot_hours_p90,
                "days_p50": r.days_p50,
                "days_p90": r.days_p90,
            }
            for r in found.regions
        ],
    }
