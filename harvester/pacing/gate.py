"""When may an export start on a host: its window table, what its 503s said, the margin.

The decisions are plain functions of `now`; `HostGate` holds one host's state around them.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

from harvester.clock import Clock, wait_first
from harvester.clover.chunks import iso
from harvester.errors import CloverError, ServerBusy, Unavailable503, WindowClosed
from harvester.logs import get_logger
from harvester.pacing.backoff import backoff_delay
from harvester.pacing.windows import WindowTable, hours_from_message, is_window_message

MIN_MARGIN_S = 300.0  # never start an export with less than five minutes of window left
LONGEST_NAP_S = 900.0  # a long wait is a loop of naps, so that news (a stop, a probe) is seen
# How long an export is assumed to run before any on the host has been seen to end.
UNKNOWN_DURATION_S = 300.0
DURATION_SAFETY = 1.2


def classify_503(body: str, table: WindowTable, now: datetime) -> CloverError:
    """A 503 on creating an export: the window is closed, or the server is full.

    A body that speaks of hours or availability means closed (its hours, if it gives any,
    say when it opens again; else the table does). Any other 503, an empty one included,
    means busy while the table says the window is open: a host that closed outside its
    table then costs busy backoffs (few POSTs: see HostGate), never a misread busy server.
    """
    quoted = body.strip()[:200] or "(empty body)"
    hours = hours_from_message(body)
    if hours is not None or is_window_message(body):
        source = hours if hours is not None else table
        reopens = None if source.is_open(now) else source.next_open(now)
        return WindowClosed(f"export window closed: {quoted}", reopens_at=reopens)
    if not table.is_open(now):
        return WindowClosed(f"export window closed: {quoted}", reopens_at=table.next_open(now))
    return ServerBusy(f"server busy: {quoted}")


def window_wait_s(
    now: datetime, table: WindowTable, closed_until: datetime | None, margin_s: float
) -> float:
    """Seconds to wait before an export may start; 0 when it may start now."""
    if closed_until is not None and now < closed_until:
        return (closed_until - now).total_seconds()
    if not table.is_open(now):
        return (table.next_open(now) - now).total_seconds()
    close = table.current_close(now)
    if close is None:
        return 0.0
    opening = table.next_open(close)
    next_close = table.current_close(opening)
    if next_close is not None:
        # A margin as long as the windows themselves would never let an export start:
        # past half a window, starting in the first half is the best there is.
        margin_s = min(margin_s, (next_close - opening).total_seconds() / 2)
    if (close - now).total_seconds() < margin_s:
        return (opening - now).total_seconds()
    return 0.0


def p90(durations: list[float]) -> float | None:
    if not durations:
        return None
    ordered = sorted(durations)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


class HostGate:
    """One host's admission to export creation.

    After the host itself said "closed", only one caller at a time (the probe) goes
    through; the others wait for its outcome, so a closed host sees at most one POST per
    `probe_interval_s`. After it said "busy", nobody creates an export on it until a
    backoff (exponential in the busy answers in a row, with full jitter) has passed: the
    slot a busy answer frees goes to no one else's immediate retry. The answers to POSTs
    already on their way when it said so are of the same burst: they add nothing.
    """

    def __init__(
        self,
        host: str,
        table: WindowTable,
        clock: Clock,
        backoff_base_s: float,
        backoff_max_s: float,
        margin_s: float | None,
        rng: random.Random,
    ) -> None:
        self.host = host
        self.table = table
        self._clock = clock
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s  # also the interval between probes of a closed host
        self._margin_override_s = margin_s
        self._rng = rng
        self._durations: list[float] = []
        self._closed_until: datetime | None = None
        self._busy_until: datetime | None = None
        self._busy_in_a_row = 0
        self._probe: asyncio.Event | None = None  # set while a probe is out
        self._announced: datetime | None = None

    @property
    def margin_s(self) -> float:
        if self._margin_override_s is not None:
            return self._margin_override_s
        return max(MIN_MARGIN_S, p90(self._durations) or 0.0)

    def is_open(self, now: datetime) -> bool:
        """True if the table says open and the host has not said "closed" since."""
        said_closed = self._closed_until is not None and now < self._closed_until
        return self.table.is_open(now) and not said_closed

    def wait_s(self, now: datetime) -> float:
        """Seconds before an export may start at `now`, counting what the host itself said.

        A caller that waited for a slot after its admission checks this again: the host may
        have said "closed" or "busy" meanwhile (its probe alone is let through at once).
        """
        return max(self._window_wait_s(now), _seconds_until(self._busy_until, now))

    def _window_wait_s(self, now: datetime) -> float:
        return window_wait_s(now, self.table, self._closed_until, self.margin_s)

    def classify_503(self, error: Unavailable503) -> CloverError:
        """What a 503 on creating an export means on this host now: WindowClosed or ServerBusy."""
        return classify_503(error.body, self.table, self._clock.now())

    def expected_duration_s(self) -> float:
        """How long an export started now may run: the p90 of those seen, and a fifth more
        (durations grow with the objects a range holds); a default before any was seen."""
        seen = p90(self._durations)
        return UNKNOWN_DURATION_S if seen is None else seen * DURATION_SAFETY

    def observe_duration(self, seconds: float) -> None:
        """An export took this long from creation to DONE; it feeds the default margin."""
        self._durations.append(seconds)
        del self._durations[:-200]  # recent history is what predicts the next ones

    @asynccontextmanager
    async def admission(self, stop: asyncio.Event) -> AsyncIterator[bool]:
        """Wait until an export may start; yields False if `stop` was set meanwhile.

        The caller reports what its POST got with `created()`, `busy()` or `closed()`.
        """
        is_probe = False
        try:
            while True:
                if stop.is_set():
                    yield False
                    return
                if self._probe is not None:
                    await wait_first(self._probe.wait(), stop.wait())
                    continue
                now = self._clock.now()
                window_s = self._window_wait_s(now)
                wait_s = max(window_s, _seconds_until(self._busy_until, now))
                if wait_s <= 0:
                    if self._closed_until is not None:
                        is_probe = True
                        self._probe = asyncio.Event()
                    break
                if window_s > 0 and self._closed_until is None:
                    self._announce(now + timedelta(seconds=window_s))
                await self._clock.sleep_unless(stop, min(wait_s, LONGEST_NAP_S))
            yield True
        finally:
            if is_probe and self._probe is not None:
                self._probe.set()
                self._probe = None

    def created(self) -> None:
        """The host accepted a POST: its window is open and it has room."""
        self._busy_in_a_row = 0
        self._busy_until = None
        self._open()

    def busy(self) -> float:
        """The host said it is full (so its window is open). Returns the backoff, in seconds.

        An answer that comes while the backoff of an earlier one still runs is for a POST sent
        before that backoff began (nobody is admitted during one): the same burst, as when
        the first POSTs of a run all go at once. It neither grows nor lengthens the backoff;
        counted as a retry in a row, the start's four refused POSTs held every lane back for
        up to 8 s, past the end of the first exports.
        """
        self._open()
        now = self._clock.now()
        if self._busy_until is not None and now < self._busy_until:
            return (self._busy_until - now).total_seconds()
        self._busy_in_a_row += 1
        pause_s = backoff_delay(
            min(self._busy_in_a_row - 1, 30), self._backoff_base_s, self._backoff_max_s, self._rng
        )
        self._busy_until = now + timedelta(seconds=pause_s)
        return pause_s

    def closed(self, error: WindowClosed) -> None:
        """The host said its window is closed."""
        now = self._clock.now()
        reopens = error.reopens_at
        if reopens is None or reopens <= now:
            reopens = now + timedelta(seconds=self._backoff_max_s)
        if self._closed_until is None:
            get_logger().info(
                "window.closed",
                host=self.host,
                opens_at=iso(reopens),
                said_by="host",
                windows=self.table.describe(),
            )
        self._closed_until = reopens

    def _open(self) -> None:
        if self._closed_until is not None:
            get_logger().info("window.reopened", host=self.host)
        self._closed_until = None

    def _announce(self, opens_at: datetime) -> None:
        if self._announced == opens_at:
            return
        self._announced = opens_at
        get_logger().info(
            "window.closed",
            host=self.host,
            opens_at=iso(opens_at),
            said_by="table",
            windows=self.table.describe(),
        )


def _seconds_until(moment: datetime | None, now: datetime) -> float:
    return max(0.0, (moment - now).total_seconds()) if moment is not None else 0.0
