from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from harvester.pacing.polling import (
    AIMED_MIN_S,
    ProgressRate,
    expected_durations,
    measured_elapsed_s,
    next_poll_delay,
)

POLL_MIN_S = 2.0
POLL_MAX_S = 60.0
PREDICTED_MAX_S = 3600.0


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
    ("first_progress", "now_s", "percent", "expected"),
    [
        (None, 30.0, 10.0, None),  # one sighting of progress: nothing better to go on
        ((20.0, 10.0), 30.0, 10.0, None),  # no progress since: no rate
        ((20.0, 10.0), 30.0, 30.0, 15.0),  # 20 points in 10 s: 30 points took 15 s
        ((20.0, 10.0), 20.0, 30.0, None),  # no time passed: no rate to compute
        ((20.0, 30.0), 30.0, 10.0, None),  # a percentage that fell back: no rate
    ],
)
def test_the_measured_elapsed_time_is_the_rate_seen_between_polls(
    first_progress: tuple[float, float] | None,
    now_s: float,
    percent: float,
    expected: float | None,
) -> None:
    """The elapsed time a rate predicts with leaves out the export's wait in the queue; with
    no rate seen between two polls there is none."""
    assert measured_elapsed_s(first_progress, now_s, percent) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("elapsed_s", "percent", "expected_s"),
    [
        (1000.0, 50.0, 1000.0),  # from 50% on: straight at the end, past poll_max_s
        (100.0, 20.0, 200.0),  # below: half of the remaining time
        (100.0, 99.0, 100.0 / 99),  # a near miss: just past the end, under poll_min_s
        (10000.0, 10.0, 3600.0),  # never past predicted_max_s
        (0.2, 10.0, 2.0),  # below 50% never under poll_min_s
        (500.0, 0.0, 60.0),  # nothing known (a percentage gone back to 0): by elapsed time
    ],
)
def test_a_measured_rate_is_aimed_at_without_history(
    elapsed_s: float, percent: float, expected_s: float
) -> None:
    """With no history, a rate measured between two polls is aimed at as a history would be:
    the end it predicts, half of the way below 50%, up to predicted_max_s."""
    delay = next_poll_delay(
        elapsed_s,
        percent,
        POLL_MIN_S,
        POLL_MAX_S,
        predicted_max_s=PREDICTED_MAX_S,
        measured=True,
    )
    assert delay == pytest.approx(expected_s)


def poll_by_progress(
    duration_s: float,
    stalls_at: float | None = None,
    queued_s: float = 1.0,
    shown: Callable[[int, int], float] = lambda percent, _: percent,
) -> tuple[float, int, list[float]]:
    """Poll an export with no history as the scheduler does: queued_s at 0%, then duration_s
    with percentComplete rising linearly as a whole number (and stopping at `stalls_at`
    percent, if given), DONE at the end; `shown(percent, poll)` is what the server reports of
    it. Returns (seconds from DONE to the poll that saw it, polls, the waits); a stalled
    export is given up after 200 polls."""
    done_at = queued_s + duration_s
    elapsed = 0.0
    percent = 0.0
    progress = ProgressRate()
    waits: list[float] = []
    while True:
        progress.seen(elapsed, percent)
        measured_s = progress.elapsed_s(elapsed)
        waits.append(
            next_poll_delay(
                elapsed if measured_s is None else measured_s,
                percent,
                POLL_MIN_S,
                POLL_MAX_S,
                predicted_max_s=PREDICTED_MAX_S,
                measured=measured_s is not None and progress.trusted,
            )
        )
        elapsed += waits[-1]
        if elapsed >= done_at and stalls_at is None:
            return elapsed - done_at, len(waits), waits
        if len(waits) > 200:
            return 0.0, len(waits), waits
        done = min(99, max(0, math.floor(100 * (elapsed - queued_s) / duration_s)))
        if stalls_at is not None:
            done = min(done, math.floor(stalls_at))
        percent = shown(done, len(waits))


@pytest.mark.parametrize(
    ("duration_s", "most_polls"),
    [(5.0, 4), (60.0, 4), (300.0, 6), (1800.0, 12), (3600.0, 14), (21600.0, 30)],
)
def test_an_export_with_no_history_is_aimed_at_by_its_measured_rate(
    duration_s: float, most_polls: int
) -> None:
    """With nothing learned, an export of 30 minutes takes about a dozen polls (some forty at
    poll_max_s 60 before), one of 6 hours some thirty (hundreds before), and its DONE is still
    seen within 2% of its length (or poll_min_s)."""
    latency_s, polls, _ = poll_by_progress(duration_s)
    assert polls <= most_polls
    assert latency_s <= max(POLL_MIN_S, 0.02 * duration_s)


def test_a_server_that_does_not_count_is_polled_within_poll_max() -> None:
    """percentComplete 0 until DONE: no rate, the waits grow by a quarter, within poll_max_s."""
    latency_s, _, waits = poll_by_progress(1800.0, shown=lambda _, __: 0.0)
    assert max(waits) <= POLL_MAX_S
    assert latency_s <= POLL_MAX_S


def test_a_percentage_that_fell_back_is_never_trusted_again() -> None:
    """A count that jumps about (here 7 points down on every third poll): once it fell back,
    no wait of the export goes past poll_max_s, however it rises after."""
    _, _, waits = poll_by_progress(
        1800.0, shown=lambda percent, poll: max(0, percent - 7) if poll % 3 == 0 else percent
    )
    fell_at = 3  # the third poll shows the first fall (its percentage is 0 before that anyway)
    assert max(waits[fell_at:]) <= POLL_MAX_S


def test_progress_rate_trusts_a_rise_only_with_none_fallen_before() -> None:
    """Trusted once a second reading rises over a first one; not after a reading that stayed,
    nor ever after one that fell."""
    progress = ProgressRate()
    progress.seen(0.0, 0.0)
    progress.seen(10.0, 10.0)
    assert progress.elapsed_s(10.0) is None  # one sighting: no rate yet
    progress.seen(20.0, 20.0)
    assert progress.trusted
    assert progress.elapsed_s(20.0) == pytest.approx(20.0)
    progress.seen(30.0, 20.0)
    assert not progress.trusted
    progress.seen(40.0, 15.0)
    progress.seen(50.0, 40.0)
    assert not progress.trusted


@pytest.mark.parametrize("stalls_at", [5.0, 30.0, 60.0, 95.0])
def test_a_stalled_export_is_polled_within_poll_max_once_its_progress_stops(
    stalls_at: float,
) -> None:
    """Progress stops: once a poll shows it no higher, the waits fall back within poll_max_s,
    so that export_timeout_s finds the stall in time; the one wait aimed at the end before it
    was seen stays within predicted_max_s."""
    _, _, waits = poll_by_progress(1800.0, stalls_at=stalls_at)
    assert max(waits) <= PREDICTED_MAX_S
    stalled = waits[-150:]  # long after the stall: every wait by the plain schedule
    assert max(stalled) <= POLL_MAX_S


# -- aimed by past durations ------------------------------------------------------------------

HISTORY = (100.0, 105.0, 110.0, 115.0, 120.0)  # p50 110, p90 120


def delay_with_history(elapsed_s: float, percent: float, polls: int) -> float:
    """The delay with HISTORY as the past durations, at the test bounds."""
    return next_poll_delay(
        elapsed_s,
        percent,
        POLL_MIN_S,
        POLL_MAX_S,
        expected_s=HISTORY,
        polls=polls,
        predicted_max_s=PREDICTED_MAX_S,
    )


@pytest.mark.parametrize(
    ("elapsed_s", "percent", "polls", "expected_s"),
    [
        # First poll: at the shortest tenth of past durations, past poll_max_s if need be.
        (0.0, 0.0, 0, 100.0),
        (10.0, 0.0, 0, 90.0),
        (99.5, 5.0, 0, 2.0),  # never under poll_min_s
        # Not done, progress known: aimed at the predicted end from 50% on, half of it below.
        (110.0, 90.0, 1, 110.0 * 10 / 90),
        (110.0, 50.0, 1, 110.0),
        (110.0, 20.0, 1, 220.0),
        (100.0, 75.0, 3, 100.0 / 3),
        # A near miss: the predicted end is closer than poll_min_s; aim at it, not past it.
        (111.0, 99.0, 1, 111.0 / 99),
        (10.0, 98.0, 1, 10.0 * 2 / 98),
        (10.0, 99.9, 2, AIMED_MIN_S),  # but never under AIMED_MIN_S
        (110.0, 49.0, 1, 110.0 * 51 / 49 / 2),  # below 50% the floor stays poll_min_s
        (1.0, 49.0, 1, 2.0),
        # Not done, no progress known: at the 90th percentile, then growing as without history.
        (110.0, 0.0, 1, 10.0),
        (121.0, 0.0, 1, 30.25),
        (130.0, 0.0, 2, 32.5),
        (1000.0, 0.0, 2, 60.0),
        # Past the median already when first asked (a re-attached export): by what is known.
        (200.0, 0.0, 0, 50.0),
        (200.0, 80.0, 0, 50.0),
        # Reported complete but not yet DONE: look again soon.
        (50.0, 100.0, 0, 2.0),
    ],
)
def test_poll_delay_with_history_table(
    elapsed_s: float, percent: float, polls: int, expected_s: float
) -> None:
    """With past durations, the first poll goes at their shortest tenth, then at the end the
    progress predicts, then as without history."""
    delay = delay_with_history(elapsed_s, percent, polls)
    assert delay == pytest.approx(expected_s)


def test_a_predicted_wait_is_capped_by_predicted_max() -> None:
    """A wait aimed at a predicted end goes past poll_max_s but never past predicted_max_s; with
    no predicted_max_s, poll_max_s caps it."""
    day = (86400.0,)
    assert next_poll_delay(0.0, 0.0, 2.0, 60.0, expected_s=day, predicted_max_s=3600.0) == 3600.0
    assert next_poll_delay(0.0, 0.0, 2.0, 60.0, expected_s=day) == 60.0


@pytest.mark.parametrize("polls", [0, 1, 2, 5])
@pytest.mark.parametrize("percent", [0.0, 1.0, 50.0, 99.0, 100.0, math.nan])
@pytest.mark.parametrize("elapsed_s", [0.0, 7.0, 110.0, 3600.0, 86400.0])
def test_poll_delay_with_history_stays_within_bounds(
    elapsed_s: float, percent: float, polls: int
) -> None:
    """With history too, no delay is over the predicted maximum, and none is under poll_min_s
    but one aimed at the end progress of 50% or more predicts (never under AIMED_MIN_S)."""
    delay = delay_with_history(elapsed_s, percent, polls)
    assert delay <= PREDICTED_MAX_S
    aimed = 50.0 <= percent < 100.0
    assert delay >= (AIMED_MIN_S if aimed else POLL_MIN_S)


def simulate_aimed_export(duration_s: float, history: tuple[float, ...]) -> tuple[float, int]:
    """Poll, aimed by `history`, an export that runs duration_s with percentComplete rising
    linearly as a whole number. Returns (seconds from DONE to the poll that saw it, polls)."""
    elapsed = 0.0
    percent = 0
    polls = 0
    while True:
        elapsed += next_poll_delay(
            elapsed, percent, POLL_MIN_S, POLL_MAX_S, expected_s=history, polls=polls
        )
        polls += 1
        if elapsed >= duration_s:
            return elapsed - duration_s, polls
        percent = min(99, math.floor(100 * elapsed / duration_s))


@pytest.mark.parametrize("late_s", [0.1, 0.5, 1.0, 1.9])
def test_an_export_a_little_longer_than_the_first_poll_is_seen_done_soon_after_it(
    late_s: float,
) -> None:
    """An export that ends just after the duration its first poll aims at is seen DONE by the
    second poll, well within poll_min_s of its end (2% of it at most), not poll_min_s later."""
    history = (12.0, 13.0, 14.0)
    latency_s, polls = simulate_aimed_export(12.0 + late_s, history)
    assert polls == 2
    assert latency_s <= 0.02 * (12.0 + late_s) + 1e-9


@pytest.mark.parametrize(("duration_s", "most_polls"), [(4.0, 1), (10.0, 3), (16.0, 3), (17.0, 3)])
def test_exports_of_a_merchant_whose_months_differ_are_each_seen_done_soon(
    duration_s: float, most_polls: int
) -> None:
    """With an empty month (4 s), a half one (10 s) and full ones (16 s) behind it, an export
    of any of these sizes is seen DONE within 2% of its length, in at most 3 polls: the empty
    one at the first poll, not at the full months' median 12 s after its end."""
    history = (4.0, 10.0, 16.0, 16.0, 16.0, 16.0)
    latency_s, polls = simulate_aimed_export(duration_s, history)
    assert polls <= most_polls
    assert latency_s <= 0.02 * duration_s + 1e-9


@pytest.mark.parametrize("percent", [0.0, 30.0, 75.0])
@pytest.mark.parametrize("elapsed_s", [0.0, 20.0, 1000.0])
def test_without_history_the_schedule_is_the_progress_one(elapsed_s: float, percent: float) -> None:
    """No past durations: the delay is the progress schedule's, whatever polls and the cap say."""
    plain = next_poll_delay(elapsed_s, percent, POLL_MIN_S, POLL_MAX_S)
    assert plain == next_poll_delay(
        elapsed_s, percent, POLL_MIN_S, POLL_MAX_S, polls=3, predicted_max_s=PREDICTED_MAX_S
    )


def poll_with_history(
    duration_s: float, expected_s: tuple[float, ...], poll_min_s: float, poll_max_s: float
) -> tuple[float, int]:
    """As simulate_export, aimed by `expected_s`: (seconds from DONE to seeing it, polls)."""
    elapsed = 0.0
    percent = 0
    polls = 0
    while True:
        elapsed += next_poll_delay(
            elapsed,
            percent,
            poll_min_s,
            poll_max_s,
            expected_s=expected_s,
            polls=polls,
            predicted_max_s=PREDICTED_MAX_S,
        )
        polls += 1
        if elapsed >= duration_s:
            return elapsed - duration_s, polls
        percent = min(99, math.floor(100 * elapsed / duration_s))


@pytest.mark.parametrize("spread", [0.9, 1.0, 1.1])
@pytest.mark.parametrize("typical_s", [5.0, 60.0, 300.0, 1800.0])
def test_a_well_predicted_export_takes_at_most_three_polls(typical_s: float, spread: float) -> None:
    """Past durations within 10% of this one's: at most 3 polls, DONE seen within the history's
    miss of it (or poll_min_s), plus 2%."""
    expected_s = tuple(sorted(typical_s * f for f in (0.9, 0.95, 1.0, 1.05, 1.1)))
    duration_s = typical_s * spread
    latency_s, polls = poll_with_history(duration_s, expected_s, POLL_MIN_S, POLL_MAX_S)
    assert polls <= 3
    miss_s = max(0.0, typical_s - duration_s)
    assert latency_s <= max(POLL_MIN_S, miss_s + 0.02 * duration_s)


def test_an_export_far_longer_than_its_history_takes_a_few_polls() -> None:
    """History 30 times too short: a handful of polls (against 30 by progress alone), DONE
    seen within 2% of the export."""
    latency_s, polls = poll_with_history(1800.0, (60.0,), POLL_MIN_S, POLL_MAX_S)
    assert polls <= 4
    assert latency_s <= 0.02 * 1800.0


def test_an_export_far_shorter_than_its_history_is_seen_at_the_median() -> None:
    """History 30 times too long: the first poll still goes at its median, and sees DONE there.
    The price of trusting the history, bounded by it (a range shorter than the past ones is
    scaled down before, see expected_durations)."""
    latency_s, polls = poll_with_history(60.0, (1800.0,), POLL_MIN_S, POLL_MAX_S)
    assert (latency_s, polls) == (1740.0, 1)


def test_expected_durations_scale_longer_ranges_down_and_never_up() -> None:
    """A past export of a range three times as long counts a third; one of a shorter range
    counts as it is; unusable durations are left out; the result is sorted."""
    day, month = 86400.0, 30 * 86400.0
    history = [(900.0, month), (30.0, day), (0.0, day), (60.0, 0.0)]
    assert expected_durations(history, 10 * day) == (30.0, 60.0, 300.0)


def test_expected_durations_of_other_merchants_keep_the_shorter_half() -> None:
    """Durations borrowed from other merchants: the shorter half only, an unknown merchant being
    taken for a small one (a poll early rather than late)."""
    history = [(float(seconds), 86400.0) for seconds in (50, 10, 40, 20, 30)]
    assert expected_durations(history, 86400.0, lower_half=True) == (10.0, 20.0, 30.0)
    assert expected_durations([], 86400.0, lower_half=True) == ()
