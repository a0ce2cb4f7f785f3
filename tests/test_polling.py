from __future__ import annotations

import math

import pytest

from harvester.pacing.polling import next_poll_delay, progress_elapsed_s

POLL_MIN_S = 2.0
POLL_MAX_S = 60.0


@pytest.mark.parametrize(
    ("elapsed_s", "percent", "expected_s"),
    [
        # Nothing known yet: start at the minimum, stretch by a quarter of the wait so far.
        (0.0, 0.0, 2.0),
        (4.0, 0.0, 2.0),
        (20.0, 0.0, 5.0),
        (100.0, 0.0, 25.0),
        (1000.0, 0.0, 60.0),
        (30.0, -1.0, 7.5),
        (20.0, math.nan, 5.0),
        # Progress known: half the predicted remaining time, within the bounds.
        (30.0, 50.0, 15.0),
        (90.0, 90.0, 5.0),
        (99.0, 99.0, 2.0),
        (10.0, 1.0, 60.0),
        (0.0, 50.0, 2.0),
        (300.0, 75.0, 50.0),
        # Reported complete but not yet DONE: look again soon.
        (500.0, 100.0, 2.0),
        (500.0, 150.0, 2.0),
        # A clock that stepped back counts as no time elapsed.
        (-5.0, 0.0, 2.0),
    ],
)
def test_poll_delay_table(elapsed_s: float, percent: float, expected_s: float) -> None:
    """The delay halves toward the predicted finish, stretches while unknown, and stays bounded."""
    assert next_poll_delay(elapsed_s, percent, POLL_MIN_S, POLL_MAX_S) == pytest.approx(expected_s)


@pytest.mark.parametrize("percent", [0.0, 0.5, 1.0, 10.0, 33.3, 50.0, 99.0, 99.9, 100.0])
@pytest.mark.parametrize("elapsed_s", [0.0, 0.1, 7.0, 60.0, 3600.0, 86400.0])
def test_poll_delay_stays_within_bounds(elapsed_s: float, percent: float) -> None:
    """Whatever the progress, the delay is never under poll_min_s nor over poll_max_s."""
    assert POLL_MIN_S <= next_poll_delay(elapsed_s, percent, POLL_MIN_S, POLL_MAX_S) <= POLL_MAX_S


@pytest.mark.parametrize(("poll_min_s", "poll_max_s"), [(0.0, 10.0), (-1.0, 10.0), (10.0, 5.0)])
def test_poll_delay_rejects_bad_bounds(poll_min_s: float, poll_max_s: float) -> None:
    """A non-positive minimum or a minimum above the maximum is a ValueError."""
    with pytest.raises(ValueError, match="poll_min_s"):
        next_poll_delay(1.0, 10.0, poll_min_s, poll_max_s)


def simulate_export(
    duration_s: float, poll_min_s: float, poll_max_s: float, queued_s: float = 0.0
) -> tuple[float, int]:
    """Poll an export that waits queued_s at 0%, then runs duration_s with percentComplete rising
    linearly as a whole number, and is DONE at the end. Returns (seconds from DONE to the poll
    that saw it, number of polls)."""
    done_at = queued_s + duration_s
    elapsed = 0.0
    percent = 0
    polls = 0
    while True:
        elapsed += next_poll_delay(elapsed, percent, poll_min_s, poll_max_s)
        polls += 1
        if elapsed >= done_at:
            return elapsed - done_at, polls
        percent = min(99, max(0, math.floor(100 * (elapsed - queued_s) / duration_s)))


@pytest.mark.parametrize("duration_s", [1.0, 5.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0])
@pytest.mark.parametrize(("poll_min_s", "poll_max_s"), [(2.0, 60.0), (5.0, 300.0), (1.0, 600.0)])
def test_done_is_noticed_soon_after_it_happens(
    duration_s: float, poll_min_s: float, poll_max_s: float
) -> None:
    """An export with steady progress is seen DONE within max(poll_min_s, 2% of its duration)."""
    latency_s, _ = simulate_export(duration_s, poll_min_s, poll_max_s)
    assert latency_s <= max(poll_min_s, 0.02 * duration_s)


@pytest.mark.parametrize(("queued_s", "duration_s"), [(600.0, 3600.0), (3600.0, 60.0), (30.0, 5.0)])
def test_queue_time_delays_noticing_done_by_at_most_poll_max(
    queued_s: float, duration_s: float
) -> None:
    """Time spent queued makes the prediction pessimistic, but DONE is seen within poll_max_s."""
    latency_s, _ = simulate_export(duration_s, POLL_MIN_S, POLL_MAX_S, queued_s)
    assert latency_s <= POLL_MAX_S


@pytest.mark.parametrize(("poll_min_s", "poll_max_s"), [(2.0, 60.0), (5.0, 300.0)])
def test_an_hour_long_export_costs_far_fewer_polls_than_fixed_rate(
    poll_min_s: float, poll_max_s: float
) -> None:
    """A 1-hour export takes under a tenth of the polls that polling every poll_min_s takes."""
    _, polls = simulate_export(3600.0, poll_min_s, poll_max_s)
    fixed_rate_polls = math.ceil(3600.0 / poll_min_s)
    assert polls * 10 < fixed_rate_polls


@pytest.mark.parametrize(
    ("elapsed_s", "first_progress", "now_s", "percent", "expected"),
    [
        (30.0, None, 30.0, 10.0, 30.0),  # one sighting of progress: nothing better to go on
        (30.0, (20.0, 10.0), 30.0, 10.0, 30.0),  # no progress since: keep time since creation
        (30.0, (20.0, 10.0), 30.0, 30.0, 15.0),  # 20 points in 10 s: 30 points took 15 s
        (30.0, (20.0, 10.0), 20.0, 30.0, 30.0),  # no time passed: no rate to compute
    ],
)
def test_progress_elapsed_uses_the_rate_seen_between_polls(
    elapsed_s: float,
    first_progress: tuple[float, float] | None,
    now_s: float,
    percent: float,
    expected: float,
) -> None:
    """The elapsed time used for prediction leaves out the export's wait in the queue."""
    assert progress_elapsed_s(elapsed_s, first_progress, now_s, percent) == pytest.approx(expected)
