from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from harvester.pacing.backoff import backoff_delay, retry_after_delay

SAMPLES = 2000


def draws(draw: Callable[[], float]) -> list[float]:
    return [draw() for _ in range(SAMPLES)]


@pytest.mark.parametrize(
    ("attempt", "base_s", "max_s", "ceiling_s"),
    [
        (0, 1.0, 300.0, 1.0),
        (1, 1.0, 300.0, 2.0),
        (3, 1.0, 300.0, 8.0),
        (8, 1.0, 300.0, 256.0),
        (9, 1.0, 300.0, 300.0),
        (2, 0.5, 300.0, 2.0),
        (0, 5.0, 5.0, 5.0),
        (5_000, 1.0, 300.0, 300.0),
    ],
)
def test_backoff_delay_spreads_over_zero_to_capped_exponential(
    attempt: int, base_s: float, max_s: float, ceiling_s: float
) -> None:
    """A backoff draw covers [0, min(max_s, base_s * 2**attempt)] and never leaves it."""
    rng = random.Random(7)
    delays = draws(lambda: backoff_delay(attempt, base_s, max_s, rng))
    assert all(0.0 <= delay <= ceiling_s for delay in delays)
    assert min(delays) < 0.05 * ceiling_s
    assert max(delays) > 0.95 * ceiling_s


def test_backoff_delay_is_reproducible_from_the_seed() -> None:
    """The same seed gives the same sequence of delays, so a run can be replayed."""

    def sequence() -> list[float]:
        rng = random.Random(3)
        return [backoff_delay(attempt, 1.0, 60.0, rng) for attempt in range(10)]

    assert sequence() == sequence()


@pytest.mark.parametrize(
    ("attempt", "base_s", "max_s"),
    [(-1, 1.0, 10.0), (0, 0.0, 10.0), (0, -1.0, 10.0), (0, 10.0, 5.0), (0, 1.0, math.nan)],
)
def test_backoff_delay_rejects_nonsense(attempt: int, base_s: float, max_s: float) -> None:
    """A negative attempt, a non-positive base or a cap below the base is a ValueError."""
    with pytest.raises(ValueError, match="must be"):
        backoff_delay(attempt, base_s, max_s, random.Random(0))


@pytest.mark.parametrize("retry_after_s", [0.5, 1.0, 3.0, 120.0])
@pytest.mark.parametrize("attempt", [0, 4])
def test_retry_after_is_honoured_with_at_most_ten_percent_extra(
    attempt: int, retry_after_s: float
) -> None:
    """With Retry-After the wait is the header plus 0-10%, never less, whatever the attempt."""
    rng = random.Random(11)
    delays = draws(lambda: retry_after_delay(attempt, retry_after_s, 1.0, 60.0, rng))
    assert all(retry_after_s <= delay <= 1.1 * retry_after_s for delay in delays)
    assert max(delays) > 1.09 * retry_after_s
    assert min(delays) < 1.01 * retry_after_s


def test_retry_after_above_the_backoff_cap_is_still_honoured() -> None:
    """Clover's Retry-After wins over backoff_max_s: retrying early lengthens the penalty."""
    delay = retry_after_delay(0, 900.0, 1.0, 60.0, random.Random(1))
    assert 900.0 <= delay <= 990.0


def test_retry_after_zero_means_go_now() -> None:
    """A Retry-After of 0 is honoured as no wait at all."""
    assert retry_after_delay(3, 0.0, 1.0, 60.0, random.Random(1)) == 0.0


@pytest.mark.parametrize("retry_after_s", [None, -5.0, math.nan, math.inf])
def test_first_429_without_usable_header_waits_one_second(retry_after_s: float | None) -> None:
    """Without a usable Retry-After the first retry waits exactly 1 s."""
    assert retry_after_delay(0, retry_after_s, 2.0, 60.0, random.Random(1)) == 1.0


@pytest.mark.parametrize(
    ("attempt", "base_s", "max_s", "ceiling_s"),
    [
        (1, 1.0, 60.0, 2.0),
        (3, 1.0, 60.0, 8.0),
        (10, 1.0, 60.0, 60.0),
        (2, 4.0, 300.0, 16.0),
        (40, 2.0, 300.0, 300.0),
    ],
)
def test_later_429s_back_off_with_jitter_but_never_under_one_second(
    attempt: int, base_s: float, max_s: float, ceiling_s: float
) -> None:
    """Later retries without Retry-After spread over [1 s, capped exponential]."""
    rng = random.Random(5)
    delays = draws(lambda: retry_after_delay(attempt, None, base_s, max_s, rng))
    assert all(1.0 <= delay <= ceiling_s for delay in delays)
    assert min(delays) < 1.0 + 0.05 * ceiling_s
    assert max(delays) > 0.95 * ceiling_s


@pytest.mark.parametrize("attempt", [1, 2, 30])
def test_one_second_floor_beats_a_smaller_cap(attempt: int) -> None:
    """A backoff cap under 1 s does not make a rate-limited retry come back sooner than 1 s."""
    assert retry_after_delay(attempt, None, 0.1, 0.5, random.Random(2)) == 1.0
