"""When serve runs and what /healthz says: pure functions of now, the schedule, the last run."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest

from harvester.errors import StoreError
from harvester.ops.schedule import (
    LastRun,
    latest_slot,
    next_run_at,
    night_health,
    read_last_run,
    write_last_run,
)

AT = time(0, 30)


def utc(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2025, 7, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "last_started", "expected"),
    [
        (utc(1, 12), None, utc(1, 12)),  # never ran: at once
        (utc(1, 12), utc(1, 0, 30), utc(2, 0, 30)),  # tonight's ran: tomorrow
        (utc(1, 12), utc(1, 0, 45), utc(2, 0, 30)),  # ran late, still tonight's
        (utc(1, 12), utc(1, 0, 29), utc(1, 12)),  # a minute before the slot: owed
        (utc(1, 0, 10), datetime(2025, 6, 30, 1, tzinfo=UTC), utc(1, 0, 30)),  # before slot
        (utc(3, 9), utc(1, 0, 30), utc(3, 9)),  # down for a night: runs at start-up
        (utc(1, 0, 30), datetime(2025, 6, 30, 0, 30, tzinfo=UTC), utc(1, 0, 30)),  # on the dot
    ],
)
def test_next_run_at(now: datetime, last_started: datetime | None, expected: datetime) -> None:
    """A night owed runs now; otherwise the next slot."""
    assert next_run_at(now, AT, last_started) == expected


def test_latest_slot_is_today_once_passed_else_yesterday() -> None:
    """The slot of 00:30 is today's from 00:30 on, yesterday's before."""
    assert latest_slot(utc(2, 0, 29), AT) == utc(1, 0, 30)
    assert latest_slot(utc(2, 0, 30), AT) == utc(2, 0, 30)


def test_a_week_on_a_fake_clock_runs_once_a_night_and_catches_up_a_missed_one() -> None:
    """Stepping a clock through 7 days, with the process down on day 3, gives one run a night,
    the missed one at start-up."""
    now = utc(1, 12)
    last: datetime | None = None
    starts: list[datetime] = []
    while now < utc(8, 12):
        down = utc(3, 0) <= now < utc(3, 9)
        if not down and next_run_at(now, AT, last) <= now:
            starts.append(now)
            last = now
        now += timedelta(minutes=5)
    assert starts == [
        utc(1, 12),
        utc(2, 0, 30),
        utc(3, 9),  # missed at 00:30: ran at start-up
        utc(4, 0, 30),
        utc(5, 0, 30),
        utc(6, 0, 30),
        utc(7, 0, 30),
        utc(8, 0, 30),
    ]


def ran(started: datetime, code: int = 0) -> LastRun:
    return LastRun(started, started + timedelta(minutes=40), code)


@pytest.mark.parametrize(
    ("now", "last", "running_since", "healthy", "words"),
    [
        (utc(1, 12), None, None, False, "was missed"),
        (utc(1, 1), None, None, True, "no run yet"),
        (utc(1, 12), None, utc(1, 12), True, "running since"),
        (utc(1, 12), ran(utc(1, 0, 30)), None, True, "did all its work"),
        (utc(1, 12), ran(utc(1, 0, 30), 1), None, False, "exit code 1"),
        (utc(2, 0, 45), ran(utc(1, 0, 30), 1), utc(2, 0, 30), False, "exit code 1"),
        (utc(2, 0, 45), ran(utc(1, 0, 30)), None, True, "did all its work"),  # within the hour
        (utc(2, 2), ran(utc(1, 0, 30)), None, False, "the night of 2025-07-02T00:30:00Z"),
        (utc(2, 2), ran(utc(1, 0, 30)), utc(2, 1, 45), True, "running since"),
    ],
)
def test_night_health(
    now: datetime,
    last: LastRun | None,
    running_since: datetime | None,
    healthy: bool,
    words: str,
) -> None:
    """Unhealthy after a failed night or when the latest night had no run an hour in."""
    health = night_health(now, AT, last, running_since)
    assert health.healthy is healthy
    assert words in health.detail


def test_last_run_round_trips_and_a_damaged_one_is_an_error(tmp_path: Path) -> None:
    """The record reads back as written; none is None; garbage is a StoreError naming the file."""
    path = tmp_path / "state" / "h.sqlite3.last-run.json"
    assert read_last_run(path) is None
    write_last_run(path, ran(utc(1, 0, 30), 1))
    assert read_last_run(path) == ran(utc(1, 0, 30), 1)
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    path.write_text("{not json")
    with pytest.raises(StoreError, match=str(path)):
        read_last_run(path)
