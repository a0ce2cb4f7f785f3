"""Clover's REST limits, kept on our side so that 429s stay rare.

Clover limits each token (one per merchant) and the app as a whole (every token on one host),
both in requests per second and in requests in flight. A `RequestLimiter` enforces all four
for one host; a 429 that slips through pauses the token or the whole host, as its
`X-RateLimit-*` header says.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum

from harvester.clock import Clock

_RATE_WINDOW_S = 1.0


class Scope(StrEnum):
    """Whom a Clover rate limit applies to."""

    # One merchant's access token. (The value is the scope's name, not a secret.)
    TOKEN = "token"  # noqa: S105
    APP = "app"  # every token of the app on one host


def scope_of_header(headers: Mapping[str, str]) -> Scope:
    """The scope of the limit a 429 names: X-RateLimit-crossToken* is APP, anything else TOKEN.

    Without a recognisable header, pausing the one token is the smaller mistake: a wrong APP
    pause would stall every merchant on the host.
    """
    names = [name.lower() for name in headers]
    if any(name.startswith("x-ratelimit-crosstoken") for name in names):
        return Scope.APP
    return Scope.TOKEN


class _Budget:
    """One party's limits (a token, or the app): concurrency, a rate, and a pause."""

    def __init__(self, requests_per_s: float, concurrent: int) -> None:
        self.concurrent = concurrent
        self.in_flight = 0
        # The starts of the last N requests (N the rate): the next may start once the oldest of
        # them is a full window old, so no sliding window ever holds more than N.
        self.recent_starts: deque[float] = deque(maxlen=math.floor(requests_per_s))
        self.paused_until = -math.inf

    def ready_at(self) -> float:
        """The earliest monotonic instant at which the rate and the pause allow a start."""
        starts = self.recent_starts
        rate_free_at = starts[0] + _RATE_WINDOW_S if len(starts) == starts.maxlen else -math.inf
        return max(rate_free_at, self.paused_until)

    def can_start(self, now: float) -> bool:
        return self.in_flight < self.concurrent and self.ready_at() <= now

    def start(self, now: float) -> None:
        self.in_flight += 1
        self.recent_starts.append(now)


@dataclass(slots=True, eq=False)
class _Waiter:
    key: str
    granted: bool = False
    # Set while the waiter waits for an event rather than for a time; resolving it makes the
    # waiter look at the limiter again.
    wakeup: asyncio.Future[None] | None = None


class RequestLimiter:
    """One per Clover host; every API request runs inside `async with limiter.request(key):`.

    `key` is the merchant id (one token per merchant). Request starts are spaced so that no
    sliding 1-second window holds more than the token's or the app's rate, and at most
    `token_concurrent` requests per key and `app_concurrent` in all are in flight. Waiters are
    served first come, first served, except that a waiter whose own token is held back does
    not hold back other tokens' waiters behind it. Rates are whole requests per window:
    fractions are dropped.

    A waiter blocked only by time (a rate or a pause) sleeps until then; one blocked by
    concurrency waits for a release. Whoever changes the state hands out what it freed, so a
    granted waiter may still be asleep for an instant; it counts as in flight all the same.
    """

    def __init__(
        self,
        clock: Clock,
        token_requests_per_s: float,
        token_concurrent: int,
        app_requests_per_s: float,
        app_concurrent: int,
    ) -> None:
        for name, value in (
            ("token_requests_per_s", token_requests_per_s),
            ("token_concurrent", token_concurrent),
            ("app_requests_per_s", app_requests_per_s),
            ("app_concurrent", app_concurrent),
        ):
            if not value >= 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self._clock = clock
        self._token_requests_per_s = token_requests_per_s
        self._token_concurrent = token_concurrent
        self._app = _Budget(app_requests_per_s, app_concurrent)
        self._tokens: dict[str, _Budget] = {}
        self._waiters: deque[_Waiter] = deque()
        self._max_in_flight_seen = 0

    def request(self, key: str) -> AbstractAsyncContextManager[None]:
        """Wait for the limits to allow one request of `key`; hold its place until exit."""
        return self._request(key)

    def pause(self, scope: Scope, key: str, seconds: float) -> None:
        """Start no request of `key` (TOKEN) or of anyone (APP) before now + seconds.

        A pause only ever extends an earlier one.
        """
        budget = self._app if scope is Scope.APP else self._token(key)
        budget.paused_until = max(budget.paused_until, self._clock.monotonic() + seconds)
        self._grant()

    def in_flight(self, key: str) -> int:
        """Requests of `key` now inside their block."""
        budget = self._tokens.get(key)
        return 0 if budget is None else budget.in_flight

    @property
    def in_flight_total(self) -> int:
        """Requests of every key now inside their block."""
        return self._app.in_flight

    @property
    def max_in_flight_seen(self) -> int:
        """The most requests ever in flight at once on this host."""
        return self._max_in_flight_seen

    @property
    def waiting(self) -> int:
        """Requests waiting for their turn."""
        return len(self._waiters)

    @asynccontextmanager
    async def _request(self, key: str) -> AsyncIterator[None]:
        await self._acquire(key)
        try:
            yield
        finally:
            self._release(key)

    async def _acquire(self, key: str) -> None:
        waiter = _Waiter(key)
        self._waiters.append(waiter)
        try:
            self._grant()
            while not waiter.granted:
                wait_s = self._ready_at(key) - self._clock.monotonic()
                if wait_s > 0:
                    await self._clock.sleep(wait_s)
                else:
                    waiter.wakeup = asyncio.get_running_loop().create_future()
                    try:
                        await waiter.wakeup
                    finally:
                        waiter.wakeup = None
                self._grant()
        except BaseException:
            # Cancelled, possibly right after being granted: give back what was handed over.
            if waiter.granted:
                self._release(key)
            else:
                self._waiters.remove(waiter)
                self._grant()
            raise

    def _release(self, key: str) -> None:
        self._token(key).in_flight -= 1
        self._app.in_flight -= 1
        self._grant()

    def _token(self, key: str) -> _Budget:
        budget = self._tokens.get(key)
        if budget is None:
            budget = _Budget(self._token_requests_per_s, self._token_concurrent)
            self._tokens[key] = budget
        return budget

    def _ready_at(self, key: str) -> float:
        return max(self._app.ready_at(), self._token(key).ready_at())

    def _grant(self) -> None:
        """Start every waiter the limits allow now, in arrival order; re-arm the others."""
        now = self._clock.monotonic()
        held_back: set[str] = set()
        for waiter in list(self._waiters):
            if not self._app.can_start(now):
                break
            # A token that cannot start now cannot start its later waiters either (FIFO per
            # token), but other tokens may still go.
            if waiter.key in held_back:
                continue
            if waiter.wakeup is not None and waiter.wakeup.cancelled():
                # Its task was cancelled and will withdraw it; granting it would waste a start.
                continue
            token = self._token(waiter.key)
            if not token.can_start(now):
                held_back.add(waiter.key)
                continue
            self._waiters.remove(waiter)
            token.start(now)
            self._app.start(now)
            self._max_in_flight_seen = max(self._max_in_flight_seen, self._app.in_flight)
            waiter.granted = True
            if waiter.wakeup is not None and not waiter.wakeup.done():
                waiter.wakeup.set_result(None)
        # A waiter that waits for an event but is now held back by time would never be woken
        # by the clock: send it back to sleep until then.
        for waiter in self._waiters:
            wakeup = waiter.wakeup
            if wakeup is not None and not wakeup.done() and self._ready_at(waiter.key) > now:
                wakeup.set_result(None)
