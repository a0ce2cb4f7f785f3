from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise

import pytest

from harvester.clover.chunks import (
    ExportType,
    TimeRange,
    gaps,
    merge,
    parse_instant,
    plan,
    split,
    start_of_utc_day,
)
from harvester.errors import ConfigError


def at(text: str) -> datetime:
    """An aware UTC instant from a compact ISO string, for readable tables."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def span(start: str, end: str) -> TimeRange:
    return TimeRange(at(start), at(end))


def test_export_type_folder() -> None:
    """Each export type writes to a lower-case folder named after it."""
    assert ExportType.PAYMENTS.folder == "payments"
    assert ExportType.ORDERS.folder == "orders"
    assert ExportType("ORDERS") is ExportType.ORDERS


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (at("2025-01-02"), at("2025-01-01")),
        (at("2025-01-01"), at("2025-01-01")),
        (datetime(2025, 1, 1), at("2025-01-02")),
        (at("2025-01-01"), datetime(2025, 1, 2)),
    ],
)
def test_time_range_refuses_empty_backwards_or_naive(start: datetime, end: datetime) -> None:
    """A range must be non-empty, forwards, and made of timezone-aware instants."""
    with pytest.raises(ValueError, match="time range"):
        TimeRange(start, end)


def test_time_range_normalises_to_utc() -> None:
    """Instants given with another offset are stored as UTC, equal to the same UTC range."""
    plus_two = timezone(timedelta(hours=2))
    converted = TimeRange(
        datetime(2025, 1, 1, 2, tzinfo=plus_two), datetime(2025, 1, 2, 2, tzinfo=plus_two)
    )
    assert converted.start.tzinfo is UTC
    assert converted == span("2025-01-01", "2025-01-02")
    assert converted.name == "20250101T000000Z_20250102T000000Z"


def test_time_range_epoch_milliseconds() -> None:
    """start_ms and end_ms are epoch milliseconds, and from_ms reads them back."""
    chunk = span("2025-01-01", "2025-01-31")
    assert chunk.start_ms == 1_735_689_600_000
    assert chunk.end_ms == 1_738_281_600_000
    assert TimeRange.from_ms(chunk.start_ms, chunk.end_ms) == chunk
    assert TimeRange.from_ms(0, 1).end == datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("chunk", "name", "text"),
    [
        (
            span("2025-01-01", "2025-01-31"),
            "20250101T000000Z_20250131T000000Z",
            "2025-01-01T00:00:00Z/2025-01-31T00:00:00Z",
        ),
        (
            span("2024-12-31T23:59:59", "2025-01-01T10:30:00"),
            "20241231T235959Z_20250101T103000Z",
            "2024-12-31T23:59:59Z/2025-01-01T10:30:00Z",
        ),
        (
            span("2025-03-01T12:00:00.250000", "2025-03-02"),
            "20250301T120000.250000Z_20250302T000000Z",
            "2025-03-01T12:00:00.250000Z/2025-03-02T00:00:00Z",
        ),
    ],
)
def test_time_range_name_and_text(chunk: TimeRange, name: str, text: str) -> None:
    """A range names its folder compactly, logs as ISO start/end, and from_name inverts name."""
    assert chunk.name == name
    assert str(chunk) == text
    assert TimeRange.from_name(name) == chunk


@pytest.mark.parametrize(
    "name",
    [
        "",
        "20250101T000000Z",
        "20250101T000000Z_",
        "20250101T000000_20250131T000000Z",
        "20250101T000000Z-20250131T000000Z",
        "20251301T000000Z_20251401T000000Z",
        "20250131T000000Z_20250101T000000Z",
        "20250101T000000Z_20250131T000000Z/",
        "2025-01-01T00:00:00Z_2025-01-31T00:00:00Z",
    ],
)
def test_time_range_from_name_refuses_malformed(name: str) -> None:
    """Anything that is not a range name (or names an impossible range) is a ValueError."""
    with pytest.raises(ValueError, match=r"."):
        TimeRange.from_name(name)


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        (span("2025-01-01", "2025-01-10"), span("2025-01-05", "2025-01-20"), True),
        (span("2025-01-01", "2025-01-10"), span("2025-01-10", "2025-01-20"), False),
        (span("2025-01-01", "2025-01-10"), span("2025-01-02", "2025-01-03"), True),
        (span("2025-01-01", "2025-01-10"), span("2024-12-01", "2025-01-01"), False),
        (span("2025-01-01", "2025-01-10"), span("2025-01-01", "2025-01-10"), True),
    ],
)
def test_overlaps(first: TimeRange, second: TimeRange, expected: bool) -> None:
    """Ranges overlap when they share an instant; ranges that only touch do not."""
    assert first.overlaps(second) is expected
    assert second.overlaps(first) is expected


def test_time_ranges_sort_by_start_then_end() -> None:
    """Ranges order by start, then by end."""
    ranges = [span("2025-02-01", "2025-03-01"), span("2025-01-01", "2025-03-01")]
    ranges.append(span("2025-01-01", "2025-02-01"))
    assert sorted(ranges) == [
        span("2025-01-01", "2025-02-01"),
        span("2025-01-01", "2025-03-01"),
        span("2025-02-01", "2025-03-01"),
    ]


@pytest.mark.parametrize(
    ("requested", "chunk_days", "expected"),
    [
        (
            span("2025-01-01", "2025-01-31"),
            30,
            [span("2025-01-01", "2025-01-31")],
        ),
        (
            span("2025-01-01", "2025-03-07"),
            30,
            [
                span("2025-01-01", "2025-01-31"),
                span("2025-01-31", "2025-03-02"),
                span("2025-03-02", "2025-03-07"),
            ],
        ),
        (
            span("2025-01-01T10:00:00", "2025-03-01"),
            30,
            [
                span("2025-01-01T10:00:00", "2025-01-31"),
                span("2025-01-31", "2025-03-01"),
            ],
        ),
        (
            span("2025-01-01T10:00:00", "2025-01-03T05:00:00"),
            1,
            [
                span("2025-01-01T10:00:00", "2025-01-02"),
                span("2025-01-02", "2025-01-03"),
                span("2025-01-03", "2025-01-03T05:00:00"),
            ],
        ),
        (
            span("2025-01-01T10:00:00", "2025-01-01T11:00:00"),
            30,
            [span("2025-01-01T10:00:00", "2025-01-01T11:00:00")],
        ),
        (
            span("2024-02-27", "2024-03-03"),
            2,
            [
                span("2024-02-27", "2024-02-29"),
                span("2024-02-29", "2024-03-02"),
                span("2024-03-02", "2024-03-03"),
            ],
        ),
    ],
)
def test_split(requested: TimeRange, chunk_days: int, expected: list[TimeRange]) -> None:
    """split cuts on whole UTC days counted from the first midnight, the last chunk at the end."""
    assert split(requested, chunk_days) == expected


@pytest.mark.parametrize("chunk_days", [1, 2, 7, 29, 30])
@pytest.mark.parametrize(
    "requested",
    [
        span("2023-01-01", "2025-06-15"),
        span("2023-01-01T23:59:59.999000", "2024-03-01T00:00:00.001000"),
        span("2024-02-28T12:00:00", "2024-03-02T12:00:00"),
    ],
)
def test_split_covers_exactly_within_the_limit(requested: TimeRange, chunk_days: int) -> None:
    """Chunks tile the request back to back, each within chunk_days, later ones from midnight."""
    chunks = split(requested, chunk_days)
    assert chunks[0].start == requested.start
    assert chunks[-1].end == requested.end
    for before, after in pairwise(chunks):
        assert before.end == after.start
        assert after.start == start_of_utc_day(after.start)
    assert all(chunk.end - chunk.start <= timedelta(days=chunk_days) for chunk in chunks)


@pytest.mark.parametrize("chunk_days", [0, -1, 31])
def test_split_refuses_chunk_days_out_of_range(chunk_days: int) -> None:
    """Clover takes at most 30 days per export, and a chunk needs at least one day."""
    with pytest.raises(ValueError, match="chunk_days"):
        split(span("2025-01-01", "2025-02-01"), chunk_days)


@pytest.mark.parametrize(
    ("ranges", "expected"),
    [
        ([], []),
        (
            [span("2025-02-01", "2025-03-01"), span("2025-01-01", "2025-02-01")],
            [span("2025-01-01", "2025-03-01")],
        ),
        (
            [span("2025-01-01", "2025-01-20"), span("2025-01-10", "2025-01-15")],
            [span("2025-01-01", "2025-01-20")],
        ),
        (
            [span("2025-01-01", "2025-01-10"), span("2025-01-05", "2025-01-20")],
            [span("2025-01-01", "2025-01-20")],
        ),
        (
            [span("2025-03-01", "2025-04-01"), span("2025-01-01", "2025-02-01")],
            [span("2025-01-01", "2025-02-01"), span("2025-03-01", "2025-04-01")],
        ),
    ],
)
def test_merge(ranges: list[TimeRange], expected: list[TimeRange]) -> None:
    """merge sorts and joins overlapping or touching ranges, keeping separate ones apart."""
    assert merge(ranges) == expected


@pytest.mark.parametrize(
    ("covered", "expected"),
    [
        ([], [span("2025-01-01", "2025-04-01")]),
        ([span("2024-01-01", "2026-01-01")], []),
        ([span("2025-01-01", "2025-04-01")], []),
        (
            [span("2025-02-01", "2025-03-01")],
            [span("2025-01-01", "2025-02-01"), span("2025-03-01", "2025-04-01")],
        ),
        (
            [span("2024-12-01", "2025-01-15"), span("2025-03-20", "2025-05-01")],
            [span("2025-01-15", "2025-03-20")],
        ),
        (
            [span("2024-01-01", "2024-02-01"), span("2026-01-01", "2026-02-01")],
            [span("2025-01-01", "2025-04-01")],
        ),
        (
            [span("2025-01-10", "2025-01-20"), span("2025-01-15", "2025-02-01")],
            [span("2025-01-01", "2025-01-10"), span("2025-02-01", "2025-04-01")],
        ),
    ],
)
def test_gaps(covered: list[TimeRange], expected: list[TimeRange]) -> None:
    """gaps returns the parts of the request that nothing covered covers, in order."""
    assert gaps(span("2025-01-01", "2025-04-01"), covered) == expected


def test_plan_splits_each_gap() -> None:
    """plan harvests only the gaps, each split into chunks, sorted by start."""
    requested = span("2025-01-01", "2025-04-01")
    covered = [span("2025-01-15T12:00:00", "2025-02-20")]
    assert plan(requested, covered, 30) == [
        span("2025-01-01", "2025-01-15T12:00:00"),
        span("2025-02-20", "2025-03-22"),
        span("2025-03-22", "2025-04-01"),
    ]
    assert plan(requested, [requested], 30) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-01-05", at("2025-01-05")),
        ("2024-02-29", at("2024-02-29")),
        ("2025-01-05T10:00:00+02:00", at("2025-01-05T08:00:00")),
        ("2025-01-05T10:00:00Z", at("2025-01-05T10:00:00")),
        ("2025-01-05T23:30:00-01:00", at("2025-01-06T00:30:00")),
        ("2025-01-05T10:00:00.123+00:00", at("2025-01-05T10:00:00.123000")),
    ],
)
def test_parse_instant_reads_dates_and_instants(text: str, expected: datetime) -> None:
    """A date means midnight UTC; an instant with an offset is converted to UTC."""
    parsed = parse_instant(text, "--from")
    assert parsed == expected
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "2025-01-05T10:00:00",
        "2025-02-30",
        "2025-13-01",
        "2025-1-5",
        "20250105",
        "2025-01-05T25:00:00Z",
        "0001-01-01T00:00:00+01:00",
    ],
)
def test_parse_instant_refuses_with_the_culprit(text: str) -> None:
    """Naive, impossible or unreadable instants are a ConfigError naming where they came from."""
    with pytest.raises(ConfigError) as caught:
        parse_instant(text, "merchants[2].start")
    assert str(caught.value) == (
        f"merchants[2].start: cannot read {text!r} as a date (YYYY-MM-DD) "
        "or an ISO-8601 instant with offset"
    )


def test_start_of_utc_day() -> None:
    """start_of_utc_day is midnight of the UTC day, whatever offset the instant carries."""
    late = datetime(2025, 1, 5, 23, 30, tzinfo=timezone(timedelta(hours=-2)))
    assert start_of_utc_day(late) == at("2025-01-06")
    assert start_of_utc_day(at("2025-01-06")) == at("2025-01-06")
    with pytest.raises(ValueError, match="timezone-aware"):
        start_of_utc_day(datetime(2025, 1, 5))
