"""When to ask about a running export again.

Polling every poll_min_s notices a finished export at once but spends hundreds of requests on an
hour-long one; polling every poll_max_s is cheap but sits up to poll_max_s on a finished export
whose files expire in 24 hours and whose server slot another merchant is waiting for. So the
delay follows Clover's percentComplete:

- Progress known (0 < p < 100): assuming the rate so far holds, the export ends in
  elapsed * (100 - p) / p. Waiting half of that approaches the predicted finish geometrically,
  so the polls thicken near the end and the finish is noticed within about poll_min_s; an
  optimistic prediction costs one extra poll, a pessimistic one is bounded by poll_max_s.
- Nothing known yet (p <= 0, a queued export): stretch with elapsed / 4, so a short wait is
  watched closely and a long queue is polled ever more rarely, growing 25% per poll.
- Done (p >= 100) but not yet reported DONE: the files are being written; look again soon.

Every answer lies in [poll_min_s, poll_max_s].
"""

from __future__ import annotations


def next_poll_delay(
    elapsed_s: float, percent: float, poll_min_s: float, poll_max_s: float
) -> float:
    """Seconds to wait before the next poll of an export created elapsed_s ago at percent done."""
    if not 0 < poll_min_s <= poll_max_s:
        raise ValueError(
            f"need 0 < poll_min_s <= poll_max_s, got poll_min_s={poll_min_s} "
            f"poll_max_s={poll_max_s}"
        )
    elapsed_s = max(0.0, elapsed_s)
    # Written so that NaN, like a missing percentage, counts as "nothing known".
    if not percent > 0:
        wanted = elapsed_s / 4
    elif percent >= 100:
        wanted = poll_min_s
    else:
        predicted_remaining_s = elapsed_s * (100 - percent) / percent
        wanted = predicted_remaining_s / 2
    return min(poll_max_s, max(poll_min_s, wanted))


def progress_elapsed_s(
    elapsed_s: float, first_progress: tuple[float, float] | None, now_s: float, percent: float
) -> float:
    """The elapsed time to predict with: how long `percent` took at the rate seen lately.

    Time since creation includes the export's wait in Clover's queue, which makes the finish
    look further away than it is. Once two polls have shown progress, the rate between them
    says how long the work done so far took: `first_progress` is (time, percent) of the
    first poll that showed progress, on the same clock as `now_s`.
    """
    if first_progress is None:
        return elapsed_s
    first_s, first_percent = first_progress
    if percent <= first_percent or now_s <= first_s:
        return elapsed_s
    return percent * (now_s - first_s) / (percent - first_percent)
