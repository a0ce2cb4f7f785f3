"""Time ranges: the 30-day split, interval arithmetic, and reading instants.

Every range is half-open, `[start, end)`, in UTC, so that adjacent chunks never share an
instant and the union of harvested chunks can be compared with what was asked for.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import overload

from harvester.errors import ConfigError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MS = timedelta(milliseconds=1)
MAX_CHUNK_DAYS = 30  # Clover refuses exports longer than 30 days

_NAME_INSTANT = r"(\d{8}T\d{6})(?:\.(\d{6}))?Z"
_NAME = re.compile(rf"{_NAME_INSTANT}_{_NAME_INSTANT}")
_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")


class ExportType(StrEnum):
    PAYMENTS = "PAYMENTS"
    ORDERS = "ORDERS"

    @property
    def folder(self) -> str:
        """The output folder for this type: "payments" or "orders"."""
        return self.value.lower()


@dataclass(frozen=True, slots=True, order=True)
class TimeRange:
    """Half-open [start, end) of timezone-aware UTC datetimes; ValueError unless start < end."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError(f"a time range needs timezone-aware instants, got {self!r}")
        # Normalised to UTC so that names, strings and ordering never depend on the offset given.
        object.__setattr__(self, "start", self.start.astimezone(UTC))
        object.__setattr__(self, "end", self.end.astimezone(UTC))
        if self.start >= self.end:
            raise ValueError(f"a time range must start before it ends, got {self}")

    @property
    def start_ms(self) -> int:
        """The start as epoch milliseconds."""
        return (self.start - EPOCH) // ONE_MS

    @property
    def end_ms(self) -> int:
        """The (exclusive) end as epoch milliseconds."""
        return (self.end - EPOCH) // ONE_MS

    @property
    def name(self) -> str:
        """A folder name, e.g. "20250101T000000Z_20250131T000000Z"; `from_name` reads it back."""
        return f"{_compact(self.start)}_{_compact(self.end)}"

    @classmethod
    def from_name(cls, name: str) -> TimeRange:
        """The range a `name` stands for; ValueError if `name` is not one."""
        match = _NAME.fullmatch(name)
        if match is None:
            raise ValueError(f"not a time range name: {name!r}")
        start_text, start_us, end_text, end_us = match.groups()
        return cls(_from_compact(start_text, start_us), _from_compact(end_text, end_us))

    @classmethod
    def from_ms(cls, start_ms: int, end_ms: int) -> TimeRange:
        """The range between two epoch-millisecond instants."""
        return cls(EPOCH + start_ms * ONE_MS, EPOCH + end_ms * ONE_MS)

    def overlaps(self, other: TimeRange) -> bool:
        """True if the two ranges share at least one instant (touching ends do not)."""
        return self.start < other.end and other.start < self.end

    def __str__(self) -> str:
        return f"{iso(self.start)}/{iso(self.end)}"


def _compact(instant: datetime) -> str:
    text = (
        f"{instant.year:04d}{instant.month:02d}{instant.day:02d}"
        f"T{instant.hour:02d}{instant.minute:02d}{instant.second:02d}"
    )
    # Sub-second parts are rare (only from an explicit instant), but dropping them would make
    # `from_name` disagree with the range that wrote the folder.
    return f"{text}.{instant.microsecond:06d}Z" if instant.microsecond else f"{text}Z"


def _from_compact(text: str, microseconds: str | None) -> datetime:
    instant = datetime.strptime(text, "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    return instant.replace(microsecond=int(microseconds)) if microseconds else instant


@overload
def iso(instant: datetime) -> str: ...
@overload
def iso(instant: datetime | None) -> str | None: ...
def iso(instant: datetime | None) -> str | None:
    """An instant in ISO 8601, UTC, with a Z: "2024-01-01T00:00:00Z" (None stays None)."""
    if instant is None:
        return None
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


def start_of_utc_day(instant: datetime) -> datetime:
    """Midnight UTC of the UTC day `instant` falls on."""
    if instant.tzinfo is None:
        raise ValueError(f"need a timezone-aware instant, got {instant!r}")
    return instant.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def split(requested: TimeRange, chunk_days: int) -> list[TimeRange]:
    """Consecutive chunks of at most `chunk_days` days covering `requested` exactly.

    Boundaries fall on whole UTC days counted from the first midnight, so the same request
    always yields the same chunk names. A start that is not midnight gets a shorter first chunk.
    """
    if not 1 <= chunk_days <= MAX_CHUNK_DAYS:
        raise ValueError(f"chunk_days must be 1..{MAX_CHUNK_DAYS}, got {chunk_days}")
    step = timedelta(days=chunk_days)
    # From midnight this is start + chunk_days; from mid-day it is the next midnight plus
    # chunk_days - 1, which keeps the first chunk short enough and later chunks on midnights.
    boundary = start_of_utc_day(requested.start) + step
    chunks: list[TimeRange] = []
    cursor = requested.start
    while cursor < requested.end:
        end = min(boundary, requested.end)
        chunks.append(TimeRange(cursor, end))
        cursor = end
        boundary += step
    return chunks


def merge(ranges: Iterable[TimeRange]) -> list[TimeRange]:
    """The union of `ranges`, sorted, with overlapping or touching ranges joined."""
    merged: list[TimeRange] = []
    for current in sorted(ranges):
        if merged and current.start <= merged[-1].end:
            if current.end > merged[-1].end:
                merged[-1] = TimeRange(merged[-1].start, current.end)
        else:
            merged.append(current)
    return merged


def gaps(requested: TimeRange, covered: Iterable[TimeRange]) -> list[TimeRange]:
    """The parts of `requested` that no range in `covered` covers, sorted."""
    missing: list[TimeRange] = []
    cursor = requested.start
    for done in merge(covered):
        if done.end <= cursor:
            continue
        if done.start >= requested.end:
            break
        if done.start > cursor:
            missing.append(TimeRange(cursor, done.start))
        cursor = done.end
    if cursor < requested.end:
        missing.append(TimeRange(cursor, requested.end))
    return missing


def plan(requested: TimeRange, covered: Iterable[TimeRange], chunk_days: int) -> list[TimeRange]:
    """The chunks still to harvest: every gap of `requested` in `covered`, split, sorted."""
    return [chunk for gap in gaps(requested, covered) for chunk in split(gap, chunk_days)]


def parse_instant(text: str, what: str) -> datetime:
    """Read "YYYY-MM-DD" (midnight UTC) or an ISO-8601 instant with an offset, as UTC.

    `what` names where the text came from ("--from", "merchants[2].start") for the error.
    """
    error = ConfigError(
        f"{what}: cannot read {text!r} as a date (YYYY-MM-DD) or an ISO-8601 instant with offset"
    )
    try:
        if _DATE_ONLY.fullmatch(text):
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), tzinfo=UTC)
        instant = datetime.fromisoformat(text)
        # A naive time would silently mean the machine's local zone: refuse to guess.
        if instant.tzinfo is None:
            raise error
        return instant.astimezone(UTC)
    except (ValueError, OverflowError):
        raise error from None
