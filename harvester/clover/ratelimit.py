"""Clover's REST limits, kept on our side so that 429s stay rare.

Clover limits each token (one per merchant) and the app as a whole (every token on one host),
both in requests per second and in requests in flight. A `RequestLimiter` enforces all four
for one host; a 429 that slips through pauses the token or the whole host, as its
`X-RateLimit-*` header says. Where several processes work on one host, each limiter runs with
its share of every budget (`share`), and an APP pause one of them learns of is handed to the
others (`on_app_pause`, `hold_app`): the state does that (state/shared.py).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
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
    """One party's limits (a token, or the app): concurrency, a rate, and a pause.

    The rate can drop below its ceiling after a 429 (`slow_down`) and climbs back by one for
    every window's worth of starts that follows, as the export slots do after a busy 503.
    """

    def __init__(self, requests_per_s: float, concurrent: int) -> None:
        self.concurrent = concurrent
        self.in_flight = 0
        self.ceiling = max(1, math.floor(requests_per_s))
        # The server counts a request when it arrives, which is after we start it and before
        # its answer reaches us. So a request holds its place in the window from its start
        # until a full window after its answer: in flight it counts, and then its end does.
        # Any sliding second at the server then holds at most N (the rate) arrivals, however
        # late the network delivers them. The ends of the last N answered are kept.
        self.recent_ends: deque[float] = deque(maxlen=self.ceiling)
        self.paused_until = -math.inf
        self.held_until = -math.inf  # set by `RequestLimiter.hold_until`, lowered too
        self._starts_at_rate = 0  # starts since the rate last changed

    def resize(self, requests_per_s: float, concurrent: int) -> None:
        """New limits from now on. A rate lowered after a 429 stays lowered by as large a
        part of the new ceiling, and climbs back to it; requests in flight beyond the new
        concurrency end as they would, and no other starts until they have.

        Lowered, the rate keeps the newest ends: a window that ends after the change holds at
        most the new rate of requests made after it, and what came before (under the old
        rate) is what it is.
        """
        ceiling = max(1, math.floor(requests_per_s))
        # Slowed down, it stays as far below the new ceiling as it was below the old one.
        rate = max(1, self.rate * ceiling // self.ceiling)
        self.ceiling = ceiling
        self.concurrent = concurrent
        if rate != self.rate:
            self._set_rate(rate)

    @property
    def rate(self) -> int:
        """Starts allowed in any sliding window now."""
        return self.ceiling if self.recent_ends.maxlen is None else self.recent_ends.maxlen

    def ready_at(self) -> float:
        """The earliest monotonic instant at which the rate and the pause allow a start, as far
        as the requests already answered say: the ones in flight free no place until they end
        (`can_start` waits for that)."""
        ends = self.recent_ends
        free = self.rate - self.in_flight  # places not held by requests in flight
        # Places come free as ends leave the window, oldest first: one is free once no more
        # than `free - 1` ends lie within the last window.
        rate_free_at = (
            ends[len(ends) - free] + _RATE_WINDOW_S if 0 < free <= len(ends) else -math.inf
        )
        return max(rate_free_at, self.paused_until, self.held_until)

    def can_start(self, now: float) -> bool:
        return self.in_flight < min(self.concurrent, self.rate) and self.ready_at() <= now

    def start(self, now: float) -> None:
        self.in_flight += 1
        self._starts_at_rate += 1
        if self.rate < self.ceiling and self._starts_at_rate >= self.rate:
            self._set_rate(self.rate + 1)

    def end(self, now: float) -> None:
        """A request's answer came (or it gave up): it holds its place a window longer."""
        self.in_flight -= 1
        self.recent_ends.append(now)

    def unstart(self) -> None:
        """Take back a start (a grant revoked before its request went out): its place is free
        at once, as nothing reached the server."""
        self.in_flight -= 1

    def slow_down(self) -> None:
        """The server refused for this party's sake: a fifth fewer starts per window (at least
        one fewer, never below one), climbing back as starts go through."""
        self._set_rate(max(1, min(self.rate - 1, math.floor(self.rate * 0.8))))

    def _set_rate(self, rate: int) -> None:
        # The newest ends stay: the window they are in is still being counted.
        self.recent_ends = deque(self.recent_ends, maxlen=rate)
        self._starts_at_rate = 0


@dataclass(slots=True, eq=False)
class _Waiter:
    key: str
    # Resolved when the waiter is granted (or its grant is taken back): its task then looks at
    # `granted` again.
    wakeup: asyncio.Future[None]
    granted: bool = False


class RequestLimiter:
    """One per Clover host; every API request runs inside `async with limiter.request(key):`.

    `key` is the merchant id (one token per merchant). Requests are spaced so that no sliding
    1-second window at the server holds more than the token's or the app's rate, however long
    the network takes to deliver them (a request holds its place from its start until a
    second after its answer: see `_Budget`), and at most
    `token_concurrent` requests per key and `app_concurrent` in all are in flight. Waiters are
    served first come, first served, except that a waiter whose own token is held back does
    not hold back other tokens' waiters behind it. Rates are whole requests per window:
    fractions are dropped.

    Waiters wait to be granted. Whoever changes the state (a release, a pause, a new share)
    hands out what it freed; what only time frees (a rate, a pause) is handed out by one alarm,
    set for the earliest instant a waiter may start: however many wait, a place that comes free
    wakes the one task it goes to, not every waiter to look. A granted waiter may not have run
    yet; it counts as in flight all the same.
    Until it runs, its request has not gone out: a pause that covers it takes the grant back.
    That matters because a request leaves its block (and hands its place on) before its 429
    is read and the pause set.
    """

    def __init__(
        self,
        clock: Clock,
        token_requests_per_s: float,
        token_concurrent: int,
        app_requests_per_s: float,
        app_concurrent: int,
        *,
        margin: float = 0.0,
    ) -> None:
        """`margin` (0 <= margin < 1): aim that share below each rate. Starts are spaced by our
        clock, but the server counts arrivals, and the network and a busy loop bunch them."""
        for name, value in (
            ("token_requests_per_s", token_requests_per_s),
            ("token_concurrent", token_concurrent),
            ("app_requests_per_s", app_requests_per_s),
            ("app_concurrent", app_concurrent),
        ):
            if not value >= 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not 0.0 <= margin < 1.0:
            raise ValueError(f"margin must be within 0..1 (1 excluded), got {margin}")
        self._clock = clock
        # The whole budgets (after the margin), and this limiter's share of them.
        self._full = (
            token_requests_per_s * (1.0 - margin),
            token_concurrent,
            app_requests_per_s * (1.0 - margin),
            app_concurrent,
        )
        self._shares = 1
        self._token_requests_per_s = self._full[0]
        self._token_concurrent = token_concurrent
        self._app = _Budget(self._full[2], app_concurrent)
        self._tokens: dict[str, _Budget] = {}
        self._waiters: deque[_Waiter] = deque()
        # Granted, but their tasks have not run since: their requests have not gone out yet.
        self._granted: list[_Waiter] = []
        # Sleeps until `_alarm_at`, then hands out what time has freed (None: nothing to wait
        # for but a release).
        self._alarm: asyncio.Task[None] | None = None
        self._alarm_at = math.inf
        self._max_in_flight_seen = 0
        # Told of every APP pause this limiter is asked for (not of those `hold_app` applies),
        # with its length in seconds: how the other processes on the host learn of it.
        self.on_app_pause: Callable[[float], None] | None = None
        # Told when a request is asked for while none was in flight or waiting: a process
        # that has requests to make again takes its share of the host's budgets back.
        self.on_busy: Callable[[], None] | None = None
        self._idle_since = clock.monotonic()  # when the last request ended (or the start)

    def request(self, key: str) -> AbstractAsyncContextManager[None]:
        """Wait for the limits to allow one request of `key`; hold its place until exit."""
        return self._request(key)

    def pause(self, scope: Scope, key: str, seconds: float) -> None:
        """Start no request of `key` (TOKEN) or of anyone (APP) before now + seconds.

        A pause only ever extends an earlier one. It covers the requests granted but not yet
        sent as well: they go back to the head of the line. The first APP pause of a burst
        (none was in force) also lowers the app's rate: a 429 for every token at once says
        that what we send reaches the server faster than we count it.
        """
        self._pause(scope, key, seconds)
        if scope is Scope.APP and self.on_app_pause is not None:
            self.on_app_pause(seconds)

    def hold_app(self, seconds: float) -> None:
        """An APP pause another process was answered with: as `pause(Scope.APP, ...)`, the
        rate lowered once per burst here too, but not handed on again."""
        self._pause(Scope.APP, "", seconds)

    def hold_until(self, instant: float) -> None:
        """Start no request before the monotonic `instant` (`math.inf`: until told again),
        whatever the budgets allow; an earlier hold is replaced, so `-math.inf` lifts it.
        Unlike a pause it lowers no rate: it is how a process waits for its share of a
        host (state/shared.py). Requests granted but not sent go back to the line."""
        self._app.held_until = instant
        if instant > self._clock.monotonic():
            self._revoke(lambda waiter: True)
        self._grant()

    @property
    def held_for(self) -> float:
        """Seconds left of the hold in force (`hold_until`); 0 if none."""
        return max(0.0, self._app.held_until - self._clock.monotonic())

    def share(self, shares: int) -> None:
        """Run with one `shares`-th of every budget from now on: the app's and each token's
        rate divided by `shares`, their concurrency too but never below one (so more shares
        than the app's concurrency overrun it: one request each). `share(1)` is the whole.

        Waiters the change lets through start at once; a rate lowered after a 429 stays
        lowered by as large a part of the new ceiling.
        """
        if shares < 1:
            raise ValueError(f"shares must be >= 1, got {shares}")
        if shares == self._shares:
            return
        self._shares = shares
        token_rate, token_concurrent, app_rate, app_concurrent = self._full
        self._token_requests_per_s = token_rate / shares
        self._token_concurrent = max(1, token_concurrent // shares)
        self._app.resize(app_rate / shares, max(1, app_concurrent // shares))
        for budget in self._tokens.values():
            budget.resize(self._token_requests_per_s, self._token_concurrent)
        self._grant()

    @property
    def shares(self) -> int:
        """How many limiters share the budgets (this one's share is one of them)."""
        return self._shares

    @property
    def app_concurrent(self) -> int:
        """Requests the app may have in flight through this limiter now."""
        return self._app.concurrent

    @property
    def app_paused_for(self) -> float:
        """Seconds left of the APP pause in force; 0 if none."""
        return max(0.0, self._app.paused_until - self._clock.monotonic())

    def _pause(self, scope: Scope, key: str, seconds: float) -> None:
        now = self._clock.monotonic()
        budget = self._app if scope is Scope.APP else self._token(key)
        if scope is Scope.APP and budget.paused_until <= now:
            budget.slow_down()
        budget.paused_until = max(budget.paused_until, now + seconds)
        self._revoke(lambda waiter: scope is Scope.APP or waiter.key == key)
        self._grant()

    def _revoke(self, which: Callable[[_Waiter], bool]) -> None:
        """Grants not sent yet, of the waiters `which` picks, taken back: to the line's head."""
        revoked = [waiter for waiter in self._granted if which(waiter)]
        for waiter in reversed(revoked):
            self._granted.remove(waiter)
            waiter.granted = False
            self._token(waiter.key).unstart()
            self._app.unstart()
            self._waiters.appendleft(waiter)

    def in_flight(self, key: str) -> int:
        """Requests of `key` now inside their block."""
        budget = self._tokens.get(key)
        return 0 if budget is None else budget.in_flight

    @property
    def app_rate(self) -> int:
        """Requests per second the app may start now: below its ceiling after an APP 429."""
        return self._app.rate

    @property
    def in_flight_total(self) -> int:
        """Requests of every key now inside their block."""
        return self._app.in_flight

    @property
    def max_in_flight_seen(self) -> int:
        """The most requests ever in flight at once on this host."""
        return self._max_in_flight_seen

    @property
    def busy(self) -> bool:
        """True while a request is in flight or waiting."""
        return bool(self._app.in_flight or self._waiters)

    @property
    def idle_for(self) -> float:
        """Seconds since the last request ended, with none in flight or waiting since; 0 if
        busy."""
        return 0.0 if self.busy else self._clock.monotonic() - self._idle_since

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
        if not self.busy and self.on_busy is not None:
            self.on_busy()
        loop = asyncio.get_running_loop()
        waiter = _Waiter(key, loop.create_future())
        self._waiters.append(waiter)
        try:
            self._grant()
            while not waiter.granted:
                await waiter.wakeup
                if not waiter.granted:  # its grant was taken back: wait to be granted again
                    waiter.wakeup = loop.create_future()
            self._granted.remove(waiter)
        except BaseException:
            # Cancelled, possibly right after being granted: give back what was handed over.
            if waiter.granted:
                self._granted.remove(waiter)
                self._token(key).unstart()  # its request never went out
                self._app.unstart()
                self._grant()
                self._note_idle()
            else:
                self._waiters.remove(waiter)
                self._grant()
                self._note_idle()
            raise

    def _release(self, key: str) -> None:
        now = self._clock.monotonic()
        self._token(key).end(now)
        self._app.end(now)
        self._grant()
        self._note_idle()

    def _note_idle(self) -> None:
        if not self.busy:
            self._idle_since = self._clock.monotonic()

    def _token(self, key: str) -> _Budget:
        budget = self._tokens.get(key)
        if budget is None:
            budget = _Budget(self._token_requests_per_s, self._token_concurrent)
            self._tokens[key] = budget
        return budget

    def _grant(self) -> None:
        """Start every waiter the limits allow now, in arrival order; re-arm the others."""
        now = self._clock.monotonic()
        held_back: set[str] = set()
        # The app is looked at first: while its rate or concurrency binds, as it does all
        # through a busy night, no waiter is looked at, nor the line copied.
        if self._app.can_start(now):
            for waiter in list(self._waiters):
                if not self._app.can_start(now):
                    break
                # A token that cannot start now cannot start its later waiters either (FIFO per
                # token), but other tokens may still go.
                if waiter.key in held_back:
                    continue
                if waiter.wakeup.cancelled():
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
                self._granted.append(waiter)
                if not waiter.wakeup.done():
                    waiter.wakeup.set_result(None)
        self._set_alarm(now)

    def _set_alarm(self, now: float) -> None:
        """Ring when time next lets a waiter start: the earliest instant after `now` at which
        the rate and the pauses allow one (a waiter they allow now waits for a release)."""
        ring_at = self._next_ready(now)
        alarm = self._alarm
        if alarm is not None and not alarm.done():
            if self._alarm_at <= ring_at < math.inf:
                return  # rings in time; what it hands out sets the next one
            alarm.cancel()
        self._alarm = None
        self._alarm_at = ring_at
        if ring_at < math.inf:
            self._alarm = asyncio.get_running_loop().create_task(self._ring(ring_at - now))

    def _next_ready(self, now: float) -> float:
        """The earliest instant after `now` at which the rate and the pauses let a waiter
        start; infinity if none waits for them. No waiter starts before the app's rate lets
        it: the first whose token is ready by then settles it, and the rest are not looked at.
        While every place the app has is held by a request in flight, only a release lets
        anyone start, and it hands out what it frees: time alone frees nothing.
        """
        app = self._app
        if app.in_flight >= min(app.concurrent, app.rate):
            return math.inf
        app_ready_at = app.ready_at()
        earliest = math.inf
        for waiter in self._waiters:
            at = max(app_ready_at, self._token(waiter.key).ready_at())
            if at > now:
                if at == app_ready_at:
                    return at
                earliest = min(earliest, at)
        return earliest

    async def _ring(self, wait_s: float) -> None:
        await self._clock.sleep(wait_s)
        self._alarm = None  # rung: what it hands out sets the next one
        self._grant()
