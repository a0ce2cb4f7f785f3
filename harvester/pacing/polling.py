"""When to ask about a running export again.

Polling every poll_min_s notices a finished export at once but spends hundreds of requests on an
hour-long one; polling every poll_max_s is cheap but sits up to poll_max_s on a finished export
whose files expire in 24 hours and whose server slot another merchant is waiting for. Every
poll spends a request of the app's 50 a second, shared by every merchant; every second a DONE
export goes unnoticed keeps our slot for it from the next export.

With nothing learned yet, the delay follows Clover's percentComplete:

- Progress known (0 < p < 100): assuming the rate so far holds, the export ends in
  elapsed * (100 - p) / p. Waiting half of that approaches the predicted finish geometrically,
  so the polls thicken near the end and the finish is noticed within about poll_min_s; an
  optimistic prediction costs one extra poll, a pessimistic one is bounded by poll_max_s.
- Nothing known yet (p <= 0, a queued export): stretch with elapsed / 4, so a short wait is
  watched closely and a long queue is polled ever more rarely, growing 25% per poll.
- Done (p >= 100) but not yet reported DONE: the files are being written; look again soon.

Once two polls have shown progress and the latest one showed it rising (`measured`: the rate
seen between them, see `ProgressRate`), the end the rate predicts is aimed at as with history
(below), past poll_max_s if need be: a 30-minute export nobody has seen the like of takes a
dozen polls, not forty. A single reading is not trusted that far (its elapsed time includes
the export's wait in Clover's queue, and a percentage rounded down says little at 1%), nor a
rate whose progress has stopped since (a stall: the polls stay within poll_max_s, so that
export_timeout_s finds it in time), nor any rate of an export whose percentage ever fell back
(a server whose count is not a measure of the work).

With past exports' durations (`expected_s`: how long exports like this one took, see
`expected_durations`), the first poll goes where the export most likely ends, and the ones
after it aim at the end rather than creep up on it:

- First poll: at the shortest tenth of the expected durations (FIRST_POLL_QUANTILE). A
  well-predicted export is DONE there, or nearly: one poll, or two. Of an export that runs
  shorter than the durations aimed at (a range with fewer objects: a month a shop was closed),
  the slot stands idle from its DONE to this poll; of one that runs longer, the poll comes
  early and costs a request, no more. At the median, an empty month among full ones of 16 s
  was seen 12 s after its 4 s export ended.
- Not done, progress known: at the end the progress rate predicts, all of the remaining time
  from 50% on (a percentage rounded down puts that end late by at most 1/percent of the
  export), half of it below (an early reading says little: this export is not the ones before).
  From 50% on, that wait may be shorter than poll_min_s, down to AIMED_MIN_S: it lands at the
  predicted end or just past it, so it is one poll either way, and a floor of poll_min_s
  would only keep a DONE export's slot from the next one. Most exports end after the
  first poll; each such near miss cost up to poll_min_s (2 s by default, 15% of a 13 s
  export) of idle slot before.
- Not done, no progress known (queued, or a server that does not count): at the 90th
  percentile of the expected durations, then the growing schedule as without history.

A wait aimed at a predicted end may be longer than poll_max_s (a 30-minute export is best
polled once at 30 minutes, not 30 times), up to `predicted_max_s`. Every other answer lies in
[poll_min_s, poll_max_s]; only a wait aimed at the end progress of 50% or more predicts goes
under poll_min_s, and none under min(poll_min_s, AIMED_MIN_S).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# From this percentage on, the end it predicts is aimed at straight: a percentage rounded down
# by up to 1 puts that end late by at most 1/percent of the export (2%).
AIM_FROM_PERCENT = 50.0
# Where the first poll goes among the expected durations: early rather than late, since a late
# poll keeps a finished export's scarce slot, an early one spends a request of the app's 50/s.
FIRST_POLL_QUANTILE = 0.1
# The shortest wait aimed at the end such progress predicts: a steady export is DONE there, and
# one whose progress stalls gets polls ever further apart (the remaining time grows with the
# time elapsed), never a tight loop.
AIMED_MIN_S = 0.2


def next_poll_delay(
    elapsed_s: float,
    percent: float,
    poll_min_s: float,
    poll_max_s: float,
    *,
    expected_s: Sequence[float] = (),
    polls: int = 0,
    predicted_max_s: float | None = None,
    measured: bool = False,
) -> float:
    """Seconds to wait before the next poll of an export created elapsed_s ago at percent done.

    `expected_s`: durations (creation to DONE) that exports like this one took, sorted; empty
    when none is known. `polls`: how many times this export was polled already.
    `predicted_max_s`: the longest wait aimed at a predicted end (poll_max_s when None).
    `measured`: elapsed_s is how long `percent` took at the rate seen between two polls, and
    the latest poll showed progress rising: the end it predicts is aimed at, history or not.
    """
    if not 0 < poll_min_s <= poll_max_s:
        raise ValueError(
            f"need 0 < poll_min_s <= poll_max_s, got poll_min_s={poll_min_s} "
            f"poll_max_s={poll_max_s}"
        )
    elapsed_s = max(0.0, elapsed_s)
    # Written so that NaN, like a missing percentage, counts as "nothing known".
    if percent >= 100:
        return poll_min_s
    if expected_s or measured:
        aimed_max_s = max(poll_max_s, predicted_max_s or poll_max_s)
        floor_s = poll_min_s
        wanted = -1.0
        if expected_s and polls == 0:
            wanted = quantile(expected_s, FIRST_POLL_QUANTILE) - elapsed_s
        if wanted <= 0 < percent:
            wanted = elapsed_s * (100 - percent) / percent
            if percent < AIM_FROM_PERCENT:
                wanted /= 2
            else:
                floor_s = min(poll_min_s, AIMED_MIN_S)
        elif wanted <= 0 and expected_s and polls <= 1:
            wanted = quantile(expected_s, 0.9) - elapsed_s
        if wanted > 0:
            return min(aimed_max_s, max(floor_s, wanted))
        # Overdue and nothing says when it ends: as without history.
    if not percent > 0:
        wanted = elapsed_s / 4
    else:
        predicted_remaining_s = elapsed_s * (100 - percent) / percent
        wanted = predicted_remaining_s / 2
    return min(poll_max_s, max(poll_min_s, wanted))


def quantile(ordered: Sequence[float], fraction: float) -> float:
    """The nearest-rank quantile (`fraction` in 0..1] of a sorted, non-empty sequence."""
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def expected_durations(
    history: Iterable[tuple[float, float]], span_s: float, *, lower_half: bool = False
) -> tuple[float, ...]:
    """How long an export of a range span_s long may take, sorted, from (duration_s, span_s)
    of past exports.

    A past export of a longer range is scaled down in proportion (a nightly day after a
    backfill's 30-day chunks); one of a shorter range is taken as it is, never scaled up. Both
    err toward a poll too early, which costs a request, not toward one too late, which costs
    the slot: an export's fixed cost makes the proportional guess short of the truth in the
    first case, and more objects make it longer in the second.

    `lower_half`: keep the shorter half only, for durations of other merchants (whose sizes
    differ): a merchant not seen yet is taken for a small one.
    """
    scaled = sorted(
        duration_s * min(1.0, span_s / past_span_s) if past_span_s > 0 else duration_s
        for duration_s, past_span_s in history
        if duration_s > 0
    )
    if lower_half:
        scaled = scaled[: (len(scaled) + 1) // 2]
    return tuple(scaled)


def measured_elapsed_s(
    first_progress: tuple[float, float] | None, now_s: float, percent: float
) -> float | None:
    """How long `percent` took at the rate seen between two polls; None if no rate was seen.

    Time since creation includes the export's wait in Clover's queue, which makes the finish
    look further away than it is. Once two polls have shown progress, the rate between them
    says how long the work done so far took: `first_progress` is (time, percent) of the
    first poll that showed progress, on the same clock as `now_s`. A percentage that fell
    back (a server that does not count steadily) gives no rate.
    """
    if first_progress is None:
        return None
    first_s, first_percent = first_progress
    if not percent > first_percent or now_s <= first_s:
        return None
    return percent * (now_s - first_s) / (percent - first_percent)


@dataclass(slots=True)
class ProgressRate:
    """What the polls of one export showed of its progress, and whether its rate is trusted.

    `seen` each percentage as it comes (the one the export started polling with first), on
    one clock. The rate is measured from the first reading that showed progress to the
    latest (`measured_elapsed_s`); it is trusted only while the latest reading rose over the
    one before, and never once a percentage fell back.
    """

    first: tuple[float, float] | None = None  # (time, percent) of the first progress seen
    percent: float = 0.0  # the latest percentage seen
    rising: bool = False  # the latest reading rose over the one before
    fell: bool = False  # some reading fell below the one before

    def seen(self, now_s: float, percent: float) -> None:
        """A poll (or the create) showed `percent` at now_s."""
        if self.first is None and percent > 0:
            self.first = (now_s, percent)
        self.rising = percent > self.percent
        self.fell = self.fell or percent < self.percent
        self.percent = percent

    def elapsed_s(self, now_s: float) -> float | None:
        """How long the latest percentage took at the rate seen; None if no rate was seen."""
        return measured_elapsed_s(self.first, now_s, self.percent)

    @property
    def trusted(self) -> bool:
        """Whether the end the rate predicts may be aimed at past poll_max_s."""
        return self.rising and not self.fell
