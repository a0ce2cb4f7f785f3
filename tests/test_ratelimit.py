from __future__ import annotations

import asyncio
import math
import random
from collections import defaultdict
from collections.abc import Mapping
from datetime import datetime

import pytest

from harvester.clover import ratelimit
from harvester.clover.ratelimit import RequestLimiter, Scope, scope_of_header
from tests.conftest import until
from tests.fakeclock import FakeClock


def clover_limiter(clock: FakeClock) -> RequestLimiter:
    """Clover's documented numbers: 16/s and 5 in flight per token, 50/s and 10 per app."""
    return RequestLimiter(
        clock, token_requests_per_s=16, token_concurrent=5, app_requests_per_s=50, app_concurrent=10
    )


def most_starts_in_one_second(starts: list[float]) -> int:
    """The most of these instants that any half-open 1 s window [t, t + 1) holds."""
    ordered = sorted(starts)
    return max(
        sum(1 for later in ordered[i:] if later < first + 1.0) for i, first in enumerate(ordered)
    )


class Traffic:
    """Runs requests through a limiter and records when each started and how many overlapped."""

    def __init__(self, clock: FakeClock, limiter: RequestLimiter) -> None:
        self.clock = clock
        self.limiter = limiter
        self.starts: dict[str, list[float]] = defaultdict(list)
        self.in_flight: dict[str, int] = defaultdict(int)
        self.peak: dict[str, int] = defaultdict(int)
        self.total = 0
        self.peak_total = 0

    async def request(self, key: str, hold_s: float) -> None:
        async with self.limiter.request(key):
            self.starts[key].append(self.clock.monotonic())
            self.in_flight[key] += 1
            self.total += 1
            self.peak[key] = max(self.peak[key], self.in_flight[key])
            self.peak_total = max(self.peak_total, self.total)
            try:
                await self.clock.sleep(hold_s)
            finally:
                self.in_flight[key] -= 1
                self.total -= 1

    @property
    def all_starts(self) -> list[float]:
        return [start for starts in self.starts.values() for start in starts]


@pytest.mark.parametrize(
    ("headers", "scope"),
    [
        ({"X-RateLimit-tokenLimit": "16"}, Scope.TOKEN),
        ({"X-RateLimit-TokenConcurrentLimit": "5", "Retry-After": "1"}, Scope.TOKEN),
        ({"X-RateLimit-crossTokenLimit": "50"}, Scope.APP),
        ({"x-ratelimit-crosstokenconcurrentlimit": "10", "Retry-After": "2"}, Scope.APP),
        ({"X-RATELIMIT-CROSSTOKENLIMIT": "50", "X-RateLimit-tokenLimit": "16"}, Scope.APP),
        ({"Content-Type": "application/json"}, Scope.TOKEN),
        ({}, Scope.TOKEN),
    ],
)
def test_scope_of_header(headers: Mapping[str, str], scope: Scope) -> None:
    """crossToken headers pause the whole app; token headers, unknown or none pause the token."""
    assert scope_of_header(headers) is scope


@pytest.mark.parametrize(
    "numbers", [(0, 5, 50, 10), (16, 0, 50, 10), (16, 5, 0.5, 10), (16, 5, 50, 0)]
)
def test_limiter_rejects_limits_below_one(
    clock: FakeClock, numbers: tuple[float, int, float, int]
) -> None:
    """A rate or concurrency below 1 cannot be honoured and is a ValueError."""
    with pytest.raises(ValueError, match="must be >= 1"):
        RequestLimiter(clock, *numbers)


async def test_one_key_keeps_to_rate_and_concurrency(clock: FakeClock) -> None:
    """100 requests of one token never exceed 16 starts in any 1 s nor 5 in flight, yet use both."""
    limiter = clover_limiter(clock)
    traffic = Traffic(clock, limiter)
    rng = random.Random(1)
    async with asyncio.TaskGroup() as group:
        for _ in range(100):
            group.create_task(traffic.request("m1", rng.uniform(0.01, 0.1)))
    starts = traffic.starts["m1"]
    assert len(starts) == 100
    assert most_starts_in_one_second(starts) == 16
    assert traffic.peak["m1"] == 5
    # Not throttled beyond the limits: 100 starts at 16 per second need just over 6 s.
    assert max(starts) < 7.0
    assert limiter.in_flight("m1") == 0
    assert limiter.waiting == 0


async def test_many_keys_keep_to_the_app_limits(clock: FakeClock) -> None:
    """Six tokens together never exceed 50 starts per second nor 10 in flight for the app."""
    limiter = clover_limiter(clock)
    traffic = Traffic(clock, limiter)
    rng = random.Random(2)
    keys = [f"m{n}" for n in range(6)]
    async with asyncio.TaskGroup() as group:
        for _ in range(40):
            for key in keys:
                group.create_task(traffic.request(key, rng.uniform(0.001, 0.05)))
    assert most_starts_in_one_second(traffic.all_starts) == 50
    assert traffic.peak_total == 10
    assert limiter.max_in_flight_seen == 10
    for key in keys:
        assert len(traffic.starts[key]) == 40
        assert most_starts_in_one_second(traffic.starts[key]) <= 16
        assert traffic.peak[key] <= 5
    assert limiter.in_flight_total == 0


async def test_one_token_waits_in_arrival_order(clock: FakeClock) -> None:
    """Waiters of one token start in the order they asked."""
    limiter = RequestLimiter(clock, 16, 1, 50, 10)
    order: list[int] = []

    async def request(n: int) -> None:
        async with limiter.request("m1"):
            order.append(n)
            await clock.sleep(0.1)

    async with asyncio.TaskGroup() as group:
        for n in range(8):
            group.create_task(request(n))
    assert order == list(range(8))


async def test_a_held_back_token_does_not_hold_back_others(clock: FakeClock) -> None:
    """A token at its concurrency limit leaves other tokens' requests free to start at once."""
    limiter = RequestLimiter(clock, 16, 1, 50, 10)
    traffic = Traffic(clock, limiter)
    async with asyncio.TaskGroup() as group:
        group.create_task(traffic.request("busy", 5.0))
        group.create_task(traffic.request("busy", 5.0))
        group.create_task(traffic.request("free", 1.0))
    assert traffic.starts["busy"] == [0.0, 5.0]
    assert traffic.starts["free"] == [0.0]


async def test_token_pause_delays_only_that_token(clock: FakeClock) -> None:
    """A TOKEN pause holds back that merchant's requests and no one else's."""
    limiter = clover_limiter(clock)
    traffic = Traffic(clock, limiter)
    limiter.pause(Scope.TOKEN, "m1", 5.0)
    async with asyncio.TaskGroup() as group:
        for key in ("m1", "m2", "m1", "m3"):
            group.create_task(traffic.request(key, 0.1))
    assert traffic.starts["m1"] == [5.0, 5.0]
    assert traffic.starts["m2"] == [0.0]
    assert traffic.starts["m3"] == [0.0]


async def test_app_pause_delays_everyone(clock: FakeClock) -> None:
    """An APP pause holds back every merchant's requests on the host."""
    limiter = clover_limiter(clock)
    traffic = Traffic(clock, limiter)
    limiter.pause(Scope.APP, "m1", 3.0)
    async with asyncio.TaskGroup() as group:
        for key in ("m1", "m2", "m3"):
            group.create_task(traffic.request(key, 0.1))
    assert sorted(traffic.all_starts) == [3.0, 3.0, 3.0]


@pytest.mark.parametrize("pauses", [(10.0, 2.0), (2.0, 10.0)])
async def test_a_pause_extends_and_never_shortens(
    clock: FakeClock, pauses: tuple[float, float]
) -> None:
    """Of two pauses, the one ending later wins, whichever came first."""
    limiter = clover_limiter(clock)
    traffic = Traffic(clock, limiter)
    for seconds in pauses:
        limiter.pause(Scope.TOKEN, "m1", seconds)
    await traffic.request("m1", 0.1)
    assert traffic.starts["m1"] == [10.0]


async def test_pause_does_not_touch_requests_in_flight(clock: FakeClock) -> None:
    """A pause only delays starts: a request already inside its block carries on."""
    limiter = clover_limiter(clock)
    inside = asyncio.Event()
    finished_at: list[float] = []

    async def request() -> None:
        async with limiter.request("m1"):
            inside.set()
            await clock.sleep(1.0)
            finished_at.append(clock.monotonic())

    async with asyncio.TaskGroup() as group:
        group.create_task(request())
        await inside.wait()
        limiter.pause(Scope.APP, "m1", 30.0)
    assert finished_at == [1.0]


async def test_pause_while_waiting_for_a_slot_is_honoured(clock: FakeClock) -> None:
    """A waiter whose concurrency slot frees during a pause starts when the pause ends."""
    limiter = RequestLimiter(clock, 16, 1, 50, 10)
    traffic = Traffic(clock, limiter)

    async def pause_later() -> None:
        await clock.sleep(0.5)
        limiter.pause(Scope.TOKEN, "m1", 3.0)

    async with asyncio.TaskGroup() as group:
        group.create_task(traffic.request("m1", 1.0))
        group.create_task(traffic.request("m1", 1.0))
        group.create_task(pause_later())
    assert traffic.starts["m1"] == [0.0, 3.5]


async def test_waiter_freed_by_release_then_held_by_rate_starts_on_time(clock: FakeClock) -> None:
    """A waiter let through by a release but then held by the rate starts when the rate allows:
    a second after the answer of the request whose place it takes."""
    limiter = RequestLimiter(clock, 16, 5, app_requests_per_s=2, app_concurrent=1)
    traffic = Traffic(clock, limiter)
    async with asyncio.TaskGroup() as group:
        for key in ("m1", "m2", "m3"):
            group.create_task(traffic.request(key, 0.1))
    assert sorted(traffic.all_starts) == pytest.approx([0.0, 0.1, 1.1])


async def test_a_waiter_held_by_time_starts_on_time_with_nothing_released(
    clock: FakeClock,
) -> None:
    """Time alone lets each waiter through when its turn comes, one after another, with no
    request ending meanwhile to look at the limiter again."""
    limiter = clover_limiter(clock)
    traffic = Traffic(clock, limiter)
    limiter.pause(Scope.APP, "m1", 1.0)
    limiter.pause(Scope.TOKEN, "m2", 2.0)
    limiter.pause(Scope.TOKEN, "m3", 3.0)
    async with asyncio.TaskGroup() as group:
        for key in ("m3", "m2", "m1"):
            group.create_task(traffic.request(key, 10.0))
    assert traffic.starts == {"m1": [1.0], "m2": [2.0], "m3": [3.0]}


class CountingClock:
    """A clock that counts the sleeps asked of it."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.sleeps = 0

    def now(self) -> datetime:
        return self.clock.now()

    def monotonic(self) -> float:
        return self.clock.monotonic()

    async def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        await self.clock.sleep(seconds)

    async def sleep_unless(self, event: asyncio.Event, seconds: float) -> None:
        self.sleeps += 1
        await self.clock.sleep_unless(event, seconds)


async def test_waiters_held_by_the_rate_do_not_all_wake_for_each_place(clock: FakeClock) -> None:
    """However many wait for the rate, the limiter sleeps once per instant a place comes free,
    not once per waiter: 25 waiters let through 5 a second wait on five alarms."""
    counting = CountingClock(clock)
    limiter = RequestLimiter(counting, 16, 5, app_requests_per_s=5, app_concurrent=10)
    traffic = Traffic(clock, limiter)
    async with asyncio.TaskGroup() as group:
        for n in range(30):
            group.create_task(traffic.request(f"m{n}", 0.0))
    assert sorted(traffic.all_starts) == [float(n // 5) for n in range(30)]
    assert counting.sleeps == 5


async def test_a_long_line_held_by_the_app_rate_costs_each_request_a_few_looks(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the app's rate holds everyone back, as all through a busy night, each start,
    end and alarm looks at a few budgets, not at every waiter's: 200 waiters in line cost
    what 20 would."""
    looks = 0
    ready_at = ratelimit._Budget.ready_at

    def counted(budget: ratelimit._Budget) -> float:
        nonlocal looks
        looks += 1
        return ready_at(budget)

    monkeypatch.setattr(ratelimit._Budget, "ready_at", counted)
    per_request = []
    for waiting in (20, 200):
        looks = 0
        limiter = RequestLimiter(clock, 16, 5, app_requests_per_s=10, app_concurrent=10)
        traffic = Traffic(clock, limiter)
        async with asyncio.TaskGroup() as group:
            for n in range(waiting):
                group.create_task(traffic.request(f"m{n}", 0.05))
        assert most_starts_in_one_second(traffic.all_starts) <= 10
        per_request.append(looks / waiting)
    assert per_request[1] <= per_request[0] + 1 < 12, per_request


def most_in_a_second(arrivals: list[float]) -> int:
    """The most instants in any sliding second (t - 1, t], as Clover and the simulator count."""
    ordered = sorted(arrivals)
    return max(sum(1 for other in ordered if at - 1.0 < other <= at) for at in ordered)


@pytest.mark.parametrize("seed", range(5))
async def test_no_second_at_the_server_holds_more_than_the_rate_however_late_requests_arrive(
    clock: FakeClock, seed: int
) -> None:
    """The server counts a request when it arrives: any instant between our start and our
    answer. Requests that arrive late (a first burst on new connections) must not let the next
    window's, arriving early, crowd the same second at the server."""
    rng = random.Random(seed)
    limiter = RequestLimiter(clock, 50, 50, app_requests_per_s=10, app_concurrent=10)
    arrivals: list[float] = []

    async def request(key: str) -> None:
        async with limiter.request(key):
            took_s = rng.choice((0.0, 0.01, 0.3, 0.9))
            arrivals.append(clock.monotonic() + rng.random() * took_s)
            await clock.sleep(took_s)

    async with asyncio.TaskGroup() as group:
        for number in range(60):
            group.create_task(request(f"m{number % 7}"))
    assert len(arrivals) == 60
    assert most_in_a_second(arrivals) <= 10


async def test_a_late_answer_holds_its_place_a_second_past_the_answer(clock: FakeClock) -> None:
    """Two requests allowed a second: the first two answered after 0.5 s and 0.2 s, the third
    starts at 1.2 (a second after the earlier answer), not at 1.0: both may have reached the
    server as late as their answers."""
    limiter = RequestLimiter(clock, 16, 5, app_requests_per_s=2, app_concurrent=5)
    traffic = Traffic(clock, limiter)
    async with asyncio.TaskGroup() as group:
        group.create_task(traffic.request("m1", 0.5))
        group.create_task(traffic.request("m2", 0.2))
        group.create_task(traffic.request("m3", 0.0))
    assert traffic.starts["m3"] == pytest.approx([1.2])


async def test_cancelled_waiters_leak_nothing(clock: FakeClock) -> None:
    """Requests cancelled while queued leave no count behind: full concurrency remains."""
    limiter = clover_limiter(clock)
    release = asyncio.Event()

    async def hold() -> None:
        async with limiter.request("m1"):
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(5)]
    queued = [asyncio.create_task(hold()) for _ in range(10)]
    await until(lambda: limiter.in_flight("m1") == 5 and limiter.waiting == 10)
    for task in queued:
        task.cancel()
    await asyncio.gather(*queued, return_exceptions=True)
    assert limiter.waiting == 0
    assert limiter.in_flight("m1") == 5
    release.set()
    await asyncio.gather(*holders)
    assert limiter.in_flight("m1") == 0
    assert limiter.in_flight_total == 0

    traffic = Traffic(clock, limiter)
    async with asyncio.TaskGroup() as group:
        for _ in range(5):
            group.create_task(traffic.request("m1", 0.1))
    assert traffic.peak["m1"] == 5


async def test_cancelled_inside_the_block_releases(clock: FakeClock) -> None:
    """Requests cancelled while in flight give back their places."""
    limiter = clover_limiter(clock)
    traffic = Traffic(clock, limiter)
    tasks = [asyncio.create_task(traffic.request("m1", 60.0)) for _ in range(5)]
    await until(lambda: limiter.in_flight("m1") == 5)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert limiter.in_flight("m1") == 0
    assert limiter.in_flight_total == 0


async def test_cancelled_while_sleeping_for_the_rate_uses_no_start(clock: FakeClock) -> None:
    """A request cancelled while waiting for the rate does not use up a start."""
    limiter = RequestLimiter(clock, 1, 5, 50, 10)
    traffic = Traffic(clock, limiter)
    await traffic.request("m1", 0.0)
    cancelled = asyncio.create_task(traffic.request("m1", 0.0))
    await until(lambda: limiter.waiting == 1)
    clock.advance(0.5)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    assert limiter.waiting == 0
    await traffic.request("m1", 0.0)
    assert traffic.starts["m1"] == [0.0, 1.0]


async def test_cancelled_as_it_is_granted_hands_the_place_on(clock: FakeClock) -> None:
    """A waiter cancelled in the instant it is granted gives the place to the next waiter."""
    limiter = RequestLimiter(clock, 16, 1, 50, 10)
    traffic = Traffic(clock, limiter)
    first = limiter.request("m1")
    await first.__aenter__()
    unlucky = asyncio.create_task(traffic.request("m1", 0.0))
    await until(lambda: limiter.waiting == 1)
    next_in_line = asyncio.create_task(traffic.request("m1", 0.0))
    await until(lambda: limiter.waiting == 2)

    await first.__aexit__(None, None, None)
    assert limiter.in_flight("m1") == 1  # granted to `unlucky`, which has not run yet
    unlucky.cancel()
    await asyncio.gather(unlucky, return_exceptions=True)
    assert unlucky.cancelled()
    assert limiter.waiting == 0  # handed on, not leaked
    await next_in_line

    assert len(traffic.starts["m1"]) == 1  # only next_in_line ran
    assert limiter.in_flight("m1") == 0


async def test_cancelled_before_its_turn_uses_no_start(clock: FakeClock) -> None:
    """A waiter cancelled but not yet unwound when its turn comes is passed over, using no start."""
    limiter = RequestLimiter(clock, 2, 1, 50, 10)
    traffic = Traffic(clock, limiter)
    first = limiter.request("m1")
    await first.__aenter__()
    cancelled = asyncio.create_task(traffic.request("m1", 0.0))
    await until(lambda: limiter.waiting == 1)
    next_in_line = asyncio.create_task(traffic.request("m1", 0.0))
    await until(lambda: limiter.waiting == 2)

    cancelled.cancel()
    await first.__aexit__(None, None, None)
    await asyncio.gather(cancelled, next_in_line, return_exceptions=True)

    assert cancelled.cancelled()
    # The rate allows two starts a second: `first` and `next_in_line`, both at once.
    assert traffic.starts["m1"] == [0.0]
    assert limiter.in_flight("m1") == 0
    assert limiter.waiting == 0


@pytest.mark.parametrize("scope", [Scope.TOKEN, Scope.APP])
async def test_a_429_read_holds_back_a_waiter_granted_in_the_same_instant(
    clock: FakeClock, scope: Scope
) -> None:
    """The early retry of issue 16, reproduced: a request gets a 429; leaving its block hands
    its place to the next waiter of the token, and only then is the 429 read and the pause
    set. The waiter, granted but not yet running, must wait out the pause like any other."""
    limiter = RequestLimiter(clock, 16, 1, 50, 10)
    traffic = Traffic(clock, limiter)
    refused = limiter.request("m1")
    await refused.__aenter__()
    waiter = asyncio.create_task(traffic.request("m1", 0.0))
    await until(lambda: limiter.waiting == 1)

    await refused.__aexit__(None, None, None)  # the 429 has come back: its place is handed on
    assert limiter.in_flight("m1") == 1  # granted to the waiter, which has not run yet
    limiter.pause(scope, "m1", 2.0)  # the 429 is read, in the same instant
    await waiter

    assert traffic.starts["m1"] == [2.0]
    assert limiter.in_flight("m1") == 0
    assert limiter.in_flight_total == 0


async def test_a_pause_gives_a_taken_back_grant_to_another_token(clock: FakeClock) -> None:
    """A grant taken back by a TOKEN pause frees the app's place for other tokens at once."""
    limiter = RequestLimiter(clock, 16, 1, 50, app_concurrent=1)
    traffic = Traffic(clock, limiter)
    refused = limiter.request("m1")
    await refused.__aenter__()
    paused = asyncio.create_task(traffic.request("m1", 0.0))
    await until(lambda: limiter.waiting == 1)
    other = asyncio.create_task(traffic.request("m2", 0.0))
    await until(lambda: limiter.waiting == 2)

    await refused.__aexit__(None, None, None)  # granted to m1's waiter, first in line
    limiter.pause(Scope.TOKEN, "m1", 2.0)
    await asyncio.gather(paused, other)

    assert traffic.starts == {"m1": [2.0], "m2": [0.0]}
    assert limiter.in_flight_total == 0


async def test_a_margin_aims_below_each_rate(clock: FakeClock) -> None:
    """margin 0.1: 16/s becomes 14 starts in any second for a token, 50/s becomes 45."""
    limiter = RequestLimiter(clock, 16, 100, 50, 100, margin=0.1)
    traffic = Traffic(clock, limiter)
    async with asyncio.TaskGroup() as group:
        for _ in range(40):
            group.create_task(traffic.request("m1", 0.0))
        for n in range(100):
            group.create_task(traffic.request(f"k{n}", 0.0))
    assert most_starts_in_one_second(traffic.starts["m1"]) == 14
    assert most_starts_in_one_second(traffic.all_starts) == 45
    assert limiter.app_rate == 45


@pytest.mark.parametrize("margin", [-0.1, 1.0])
def test_limiter_rejects_a_margin_outside_zero_to_one(clock: FakeClock, margin: float) -> None:
    with pytest.raises(ValueError, match="margin"):
        RequestLimiter(clock, 16, 5, 50, 10, margin=margin)


async def test_an_app_429_lowers_the_app_rate_once_per_burst_then_it_climbs_back(
    clock: FakeClock,
) -> None:
    """The first APP pause of a burst takes a fifth off the app's rate; more 429s of the same
    burst (answers to requests already on their way) take nothing more. Every window's worth
    of starts after it gives one back, up to the ceiling. A TOKEN pause leaves it alone."""
    limiter = RequestLimiter(clock, 1000, 1000, 50, 1000)
    limiter.pause(Scope.TOKEN, "m1", 1.0)
    assert limiter.app_rate == 50
    limiter.pause(Scope.APP, "m1", 1.0)
    limiter.pause(Scope.APP, "m2", 2.0)
    assert limiter.app_rate == 40

    traffic = Traffic(clock, limiter)
    async with asyncio.TaskGroup() as group:
        for n in range(40):
            group.create_task(traffic.request(f"k{n}", 0.0))
    assert traffic.all_starts == [2.0] * 40  # after the pause, at the lowered rate
    assert limiter.app_rate == 41
    limiter.pause(Scope.APP, "m1", 0.5)  # a new burst, after the last pause ended
    assert limiter.app_rate == 32

    climbed: list[int] = []
    for n in range(2000):
        await traffic.request(f"c{n}", 0.0)
        climbed.append(limiter.app_rate)
    assert climbed[-1] == 50
    assert climbed == sorted(climbed)
    assert most_starts_in_one_second(traffic.all_starts) <= 50


async def test_a_rate_lowered_under_a_revoked_grant_leaks_nothing(clock: FakeClock) -> None:
    """An APP pause both takes back a grant and lowers the rate: nothing is lost or counted
    twice, and the waiter starts when the pause ends."""
    limiter = RequestLimiter(clock, 16, 1, 2, 10)
    traffic = Traffic(clock, limiter)
    refused = limiter.request("m1")
    await refused.__aenter__()
    waiter = asyncio.create_task(traffic.request("m1", 0.0))
    await until(lambda: limiter.waiting == 1)
    await refused.__aexit__(None, None, None)
    limiter.pause(Scope.APP, "m1", 1.5)
    assert limiter.app_rate == 1
    await waiter
    assert limiter.app_rate == 2  # a window's worth of starts (one) went through
    assert traffic.starts["m1"] == [1.5]
    assert limiter.in_flight_total == 0


async def test_shares_of_the_budgets_keep_each_limiter_to_its_part(clock: FakeClock) -> None:
    """Three limiters with a third each start at most 50 requests in any second and have
    at most 10 in flight between them (three each: 10 // 3); each token, the same six in
    all three, at most 16 and 5."""
    limiters = [clover_limiter(clock) for _ in range(3)]
    for limiter in limiters:
        limiter.share(3)
    traffics = [Traffic(clock, limiter) for limiter in limiters]
    rng = random.Random(3)
    keys = [f"m{n}" for n in range(6)]
    async with asyncio.TaskGroup() as group:
        for _ in range(8):
            for traffic in traffics:
                for key in keys:
                    group.create_task(traffic.request(key, rng.uniform(0.001, 0.05)))
    every_start = [start for traffic in traffics for start in traffic.all_starts]
    assert len(every_start) == 144
    assert most_starts_in_one_second(every_start) == 48  # 16 each: 50 / 3, fractions dropped
    assert sum(limiter.max_in_flight_seen for limiter in limiters) == 9
    for key in keys:
        starts = [start for traffic in traffics for start in traffic.starts[key]]
        assert most_starts_in_one_second(starts) <= 15  # 5 each: 16 / 3
        assert all(traffic.peak[key] == 1 for traffic in traffics)  # 5 // 3 each


async def test_a_share_changed_at_run_time_takes_effect_at_once(clock: FakeClock) -> None:
    """Halving the share mid-stream lowers the starts of every later window to the half; the
    whole again lets the waiters through at the full rate. A lowered rate stays lowered."""
    limiter = RequestLimiter(clock, 1000, 1000, 40, 1000)
    traffic = Traffic(clock, limiter)
    async with asyncio.TaskGroup() as group:
        for n in range(40):
            group.create_task(traffic.request(f"a{n}", 0.0))
    assert traffic.all_starts == [0.0] * 40
    limiter.share(2)
    assert (limiter.shares, limiter.app_concurrent) == (2, 500)
    clock.advance(1.0)
    async with asyncio.TaskGroup() as group:
        for n in range(40):
            group.create_task(traffic.request(f"b{n}", 0.0))
    later = sorted(traffic.all_starts)[40:]
    assert later == [1.0] * 20 + [2.0] * 20  # 20 per second: the half
    limiter.share(1)
    clock.advance(1.0)
    async with asyncio.TaskGroup() as group:
        for n in range(40):
            group.create_task(traffic.request(f"c{n}", 0.0))
    assert sorted(traffic.all_starts)[80:] == [3.0] * 40
    limiter.hold_app(0.5)  # a pause from elsewhere lowers the rate once, as pause does
    assert limiter.app_rate == 32
    limiter.share(2)
    assert limiter.app_rate == 16  # as far below the new ceiling, 20
    clock.advance(1.0)
    limiter.hold_app(0.5)
    assert limiter.app_rate == 12
    limiter.share(1)
    assert limiter.app_rate == 24  # and climbs back from there as starts go through


async def test_a_share_raised_lets_waiters_held_by_concurrency_through(clock: FakeClock) -> None:
    """A waiter held back only by the share's concurrency starts as soon as the share grows."""
    limiter = RequestLimiter(clock, 1000, 1000, 1000, 2)
    limiter.share(2)
    holding = limiter.request("m1")
    await holding.__aenter__()
    traffic = Traffic(clock, limiter)
    waiter = asyncio.create_task(traffic.request("m2", 0.0))
    await until(lambda: limiter.waiting == 1)
    limiter.share(1)
    await waiter
    assert traffic.starts["m2"] == [0.0]
    await holding.__aexit__(None, None, None)
    assert limiter.in_flight_total == 0


async def test_a_hold_starts_nothing_until_it_ends_or_is_lifted_and_lowers_no_rate(
    clock: FakeClock,
) -> None:
    """`hold_until` keeps every request waiting until its instant (infinity: until told
    again); a later call replaces it, so a hold can be shortened or lifted. Unlike a pause it
    leaves the rate alone, and it reports itself in `held_for`, not `app_paused_for`."""
    limiter = RequestLimiter(clock, 1000, 1000, 40, 1000)
    traffic = Traffic(clock, limiter)
    limiter.hold_until(math.inf)
    waiting = [asyncio.create_task(traffic.request(f"a{n}", 0.0)) for n in range(3)]
    await until(lambda: limiter.waiting == 3)
    clock.advance(10.0)
    await asyncio.sleep(0)
    assert limiter.waiting == 3
    assert traffic.all_starts == []
    assert limiter.held_for == math.inf
    assert limiter.app_paused_for == 0.0
    limiter.hold_until(clock.monotonic() + 0.5)  # shortened: ends half a second from now
    assert limiter.held_for == 0.5
    await asyncio.gather(*waiting)
    assert traffic.all_starts == [10.5] * 3
    assert limiter.app_rate == 40
    limiter.hold_until(clock.monotonic() + 5.0)
    later = asyncio.create_task(traffic.request("b", 0.0))
    await until(lambda: limiter.waiting == 1)
    limiter.hold_until(-math.inf)  # lifted
    await later
    assert traffic.starts["b"] == [10.5]
    assert limiter.held_for == 0.0


async def test_only_an_app_pause_asked_for_here_is_handed_on(clock: FakeClock) -> None:
    """`pause` tells `on_app_pause` of APP pauses; a token's pause and `hold_app` do not."""
    limiter = clover_limiter(clock)
    told: list[float] = []
    limiter.on_app_pause = told.append
    limiter.pause(Scope.TOKEN, "m1", 1.0)
    limiter.hold_app(2.0)
    assert limiter.app_paused_for == 2.0
    limiter.pause(Scope.APP, "m1", 3.0)
    assert told == [3.0]
    with pytest.raises(ValueError, match="shares"):
        limiter.share(0)


async def test_a_limiter_says_when_it_turns_busy_and_how_long_it_has_been_idle(
    clock: FakeClock,
) -> None:
    """`on_busy` is told of the first request after a quiet spell only; `idle_for` counts
    from the end of the last request, and is 0 while any is in flight."""
    limiter = clover_limiter(clock)
    told: list[float] = []
    limiter.on_busy = lambda: told.append(clock.monotonic())
    clock.advance(3.0)
    assert (limiter.busy, limiter.idle_for) == (False, 3.0)
    first = limiter.request("m1")
    await first.__aenter__()
    async with limiter.request("m2"):
        assert (limiter.busy, limiter.idle_for) == (True, 0.0)
    await first.__aexit__(None, None, None)
    clock.advance(1.5)
    assert limiter.idle_for == 1.5
    async with limiter.request("m1"):
        pass
    assert told == [3.0, 4.5]
