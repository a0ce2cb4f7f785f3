"""What can go wrong on purpose: fault probabilities plus scripted one-shots, as data."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import StrEnum


class FaultKind(StrEnum):
    # Any API call (exports, refresh).
    API_5XX = "api_5xx"  # 500, 502 or 504
    API_RESET = "api_reset"  # the connection is dropped without a response
    API_429 = "api_429"  # a 429 naming one of the four rate limits
    API_SLOW = "api_slow"  # the response waits `slow_s` longer
    # Creating an export, when it would otherwise be accepted.
    BUSY_503 = "busy_503"  # refused as busy although under the limit
    WINDOW_503 = "window_503"  # refused as outside the window although inside it
    CREATE_LOST = "create_lost"  # the export is made, then its answer is lost: reset, 502, 504
    # An export's fate, decided when it is created.
    EXPORT_FAILED = "export_failed"  # ends FAILED partway
    EXPORT_STUCK = "export_stuck"  # progress stops; FAILED after stuck_fail_after_s
    DONE_WITHOUT_URLS = "done_without_urls"  # DONE but no exportUrls
    EXPORT_FORGOTTEN = "export_forgotten"  # partway, the server forgets it: GETs answer 404
    # One request to the file host (a retry can succeed).
    FILE_5XX = "file_5xx"
    FILE_RESET = "file_reset"  # the connection is dropped before any response
    FILE_TRUNCATED = "file_truncated"  # full Content-Length, half the body, then closed
    FILE_SLOW = "file_slow"  # the body comes in pieces, `slow_s` apart
    FILE_BAD_JSON = "file_bad_json"  # garbage of the announced length
    FILE_OVERSIZE = "file_oversize"  # 1001 objects in one file
    FILE_EXPIRED_EARLY = "file_expired_early"  # the expired status before availableUntil


API_FAULTS = (FaultKind.API_RESET, FaultKind.API_5XX, FaultKind.API_429, FaultKind.API_SLOW)
EXPORT_FATES = (
    FaultKind.EXPORT_FAILED,
    FaultKind.EXPORT_STUCK,
    FaultKind.DONE_WITHOUT_URLS,
    FaultKind.EXPORT_FORGOTTEN,
)
FILE_FAULTS = (
    FaultKind.FILE_EXPIRED_EARLY,
    FaultKind.FILE_RESET,
    FaultKind.FILE_5XX,
    FaultKind.FILE_TRUNCATED,
    FaultKind.FILE_BAD_JSON,
    FaultKind.FILE_OVERSIZE,
    FaultKind.FILE_SLOW,
)


@dataclass(slots=True)
class Faults:
    """Per-kind probabilities (0..1, drawn per eligible request) and scripted one-shots.

    Mutable on purpose: a test may change them while the simulator runs.
    """

    api_5xx: float = 0.0
    api_reset: float = 0.0
    api_429: float = 0.0
    api_slow: float = 0.0
    busy_503: float = 0.0
    window_503: float = 0.0
    create_lost: float = 0.0
    export_failed: float = 0.0
    export_stuck: float = 0.0
    done_without_urls: float = 0.0
    export_forgotten: float = 0.0
    file_5xx: float = 0.0
    file_reset: float = 0.0
    file_truncated: float = 0.0
    file_slow: float = 0.0
    file_bad_json: float = 0.0
    file_oversize: float = 0.0
    file_expired_early: float = 0.0
    slow_s: float = 5.0
    # The X-RateLimit-* header an api_429 names; None: one of the four, drawn at random.
    rate_limit_header: str | None = None
    _scripted: dict[FaultKind, int] = field(default_factory=dict, init=False)

    def set_probability(self, kind: str, probability: float) -> None:
        """Set one kind's probability; ValueError on an unknown kind or a value outside 0..1."""
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"fault probability must be within 0..1, got {probability}")
        setattr(self, FaultKind(kind).value, probability)

    def script(self, kind: str, times: int = 1) -> None:
        """Force the next `times` requests eligible for `kind` to get it, whatever the odds."""
        if times < 1:
            raise ValueError(f"times must be at least 1, got {times}")
        fault = FaultKind(kind)
        self._scripted[fault] = self._scripted.get(fault, 0) + times

    def fires(self, kind: FaultKind, rng: random.Random) -> bool:
        """Decide for one eligible request: a scripted one-shot first, else a draw."""
        if self._scripted.get(kind, 0) > 0:
            self._scripted[kind] -= 1
            return True
        probability: float = getattr(self, kind.value)
        # No draw at zero, so that enabling no faults leaves the random sequence untouched.
        return probability > 0.0 and rng.random() < probability

    def first_firing(self, kinds: tuple[FaultKind, ...], rng: random.Random) -> FaultKind | None:
        """The first of `kinds`, in order, that fires for this request; later ones are not drawn."""
        for kind in kinds:
            if self.fires(kind, rng):
                return kind
        return None
