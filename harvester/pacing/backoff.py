"""How long to wait before retrying: capped exponential backoff with full jitter.

Full jitter (a uniform draw between zero and the exponential ceiling) spreads the retries of
many workers that failed together, so they do not hit Clover again in lockstep.
"""

from __future__ import annotations

import math
import random

# Clover lengthens a 429 penalty when a client retries too early, so a rate-limited request
# never comes back sooner than this.
MIN_RATE_LIMIT_WAIT_S = 1.0

# Retry-After is honoured exactly; the jitter only ever adds, up to this share of it.
RETRY_AFTER_JITTER = 0.1


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """A wait drawn uniformly from [0, min(max_s, base_s * 2**attempt)]; attempt counts from 0."""
    return rng.uniform(0.0, _ceiling(attempt, base_s, max_s))


def retry_after_delay(
    attempt: int,
    retry_after_s: float | None,
    base_s: float,
    max_s: float,
    rng: random.Random,
) -> float:
    """The wait before retrying a request Clover answered with 429.

    With a Retry-After header: exactly that, plus up to 10% jitter, never less. Without it
    (or with a negative or non-finite one, which cannot be honoured): 1 s on the first attempt,
    then full-jitter backoff capped at max_s but never below 1 s, even if max_s is smaller.
    """
    _check(attempt, base_s, max_s)
    if retry_after_s is not None and math.isfinite(retry_after_s) and retry_after_s >= 0:
        return retry_after_s + rng.uniform(0.0, RETRY_AFTER_JITTER * retry_after_s)
    if attempt == 0:
        return MIN_RATE_LIMIT_WAIT_S
    ceiling = max(MIN_RATE_LIMIT_WAIT_S, _ceiling(attempt, base_s, max_s))
    return rng.uniform(MIN_RATE_LIMIT_WAIT_S, ceiling)


def _ceiling(attempt: int, base_s: float, max_s: float) -> float:
    _check(attempt, base_s, max_s)
    # Compare exponents first: base_s * 2**attempt overflows a float for large attempts.
    if attempt >= math.log2(max_s / base_s):
        return max_s
    return min(max_s, base_s * 2.0**attempt)


def _check(attempt: int, base_s: float, max_s: float) -> None:
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    if not base_s > 0:
        raise ValueError(f"base_s must be > 0, got {base_s}")
    if not max_s >= base_s:
        raise ValueError(f"max_s must be >= base_s, got max_s={max_s} base_s={base_s}")


def capped_backoff_delay(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Full-jitter backoff from `base_s` under a ceiling `cap_s`, which may be below the base;
    no wait at all when the cap is zero or less."""
    if cap_s <= 0:
        return 0.0
    return backoff_delay(attempt, min(base_s, cap_s), cap_s, rng)
