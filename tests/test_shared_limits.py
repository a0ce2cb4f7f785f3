"""Clover's app limits across the processes on one state, and hand-offs without polling.

Each "process" here is a store of its own on the same SQLite file or PostgreSQL database,
with its own lease, signals (its own poller or listening connection) and request limiter,
as separate harvester processes have. Their changes reach each other through the state
alone, over real time: what is measured is how soon.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from harvester.clock import SystemClock
from harvester.clover.ratelimit import RequestLimiter, Scope
from harvester.pacing.slots import ExportSlots
from harvester.state.claims import Owner, ProcessLease
from harvester.state.postgres import PgStore
from harvester.state.records import StateStore
from harvester.state.shared import SharedLimits, SharedSlots
from harvester.state.signals import PolledSignals
from harvester.state.sqlite import Store
from tests.conftest import BACKENDS

HOST = "https://api.example"
# The most a change may take to reach another process. Unloaded it takes a few ms on
# PostgreSQL and under 25 ms on SQLite (make bench-handoff); the whole suite on two cores
# stretches that, and this bound still tells a signal from the backstops (naps of 0.5-1.5 s,
# a heartbeat of 10 s).
HAND_OFF_S = 0.2
IDLE_S = 0.1  # a process with nothing to send this long leaves the host's users
JOIN_HOLD_S = 0.3  # how long a process joining others waits before its first request
GROW_AFTER_S = 0.3  # how long after another process left a process takes its share


async def eventually(condition: Callable[[], bool], within_s: float = 2.0) -> float:
    """Wait (real time: other processes' changes come through real I/O) until `condition`
    holds; the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > within_s:
            raise AssertionError(f"condition did not hold within {within_s} s")
        await asyncio.sleep(0.001)
    return time.monotonic() - started


@dataclass
class Process:
    """One harvester process as far as a host's limits go: its store, lease and limiter."""

    store: StateStore
    lease: ProcessLease
    limiter: RequestLimiter
    done: asyncio.Event
    sharing: asyncio.Task[None] | None = None
    working: contextlib.AsyncExitStack | None = None

    def share(
        self, app_concurrent: int = 10, idle_s: float = IDLE_S, join_hold_s: float = JOIN_HOLD_S
    ) -> None:
        clock = SystemClock()
        limits = SharedLimits(
            self.limiter,
            self.lease,
            HOST,
            3,
            app_concurrent,
            clock,
            clock,
            idle_s,
            join_hold_s,
            GROW_AFTER_S,
        )
        self.sharing = asyncio.create_task(limits.run(self.done))

    async def work(self) -> None:
        """Have a request in flight (a process with requests to make) until `rest`."""
        self.working = contextlib.AsyncExitStack()
        await self.working.enter_async_context(self.limiter.request("busy"))

    async def rest(self) -> None:
        if self.working is not None:
            await self.working.aclose()
            self.working = None

    async def leave(self) -> None:
        await self.rest()
        self.done.set()
        if self.sharing is not None:
            await self.sharing


@contextlib.asynccontextmanager
async def processes(
    backend: str, request: pytest.FixtureRequest, folder: Path, count: int
) -> AsyncIterator[list[Process]]:
    """`count` processes on one fresh state of `backend`, leases entered, not sharing yet."""
    clock = SystemClock()
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    async with contextlib.AsyncExitStack() as stack:
        started = []
        for _ in range(count):
            store: StateStore = (
                await PgStore.open(url, clock)
                if url is not None
                else await Store.open(folder / "state.sqlite3", clock)
            )
            stack.push_async_callback(store.close)
            lease = ProcessLease(store, Owner.this_process("backfill"), clock, 30.0)
            await stack.enter_async_context(lease)
            # Clover's numbers, and the default margin: 45 requests/s and 10 in flight.
            limiter = RequestLimiter(clock, 16, 5, 50, 10, margin=0.1)
            started.append(Process(store, lease, limiter, asyncio.Event()))
        try:
            yield started
        finally:
            for process in started:
                await process.leave()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_shares_of_the_processes_on_a_host_sum_to_its_budget(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Three processes with requests to make on a host run with a third each of the app's
    rate and concurrency (and the tokens'). One ending gives its share back to the two
    others, and one with nothing more to send gives it back once idle a while: they take it
    once what it sent just before has left the server's window (the grow wait), not before."""
    async with processes(backend, request, tmp_path, 3) as three:
        for process in three:
            process.share()
        await asyncio.sleep(IDLE_S)
        assert all(p.limiter.shares == 1 for p in three)  # none has joined: none works
        for process in three:
            await process.work()
        await eventually(lambda: all(p.limiter.shares == 3 for p in three))
        assert sum(p.limiter.app_rate for p in three) == 45  # 50 less the margin, by thirds
        assert sum(p.limiter.app_concurrent for p in three) == 9  # 10 // 3 each
        await three[2].leave()
        took_s = await eventually(lambda: all(p.limiter.shares == 2 for p in three[:2]))
        assert GROW_AFTER_S - 0.01 <= took_s < GROW_AFTER_S + 0.5
        assert sum(p.limiter.app_rate for p in three[:2]) == 44  # 22.5 each, fractions dropped
        assert sum(p.limiter.app_concurrent for p in three[:2]) == 10
        await three[1].rest()
        took_s = await eventually(lambda: three[0].limiter.shares == 1)
        assert IDLE_S + GROW_AFTER_S - 0.01 <= took_s < IDLE_S + GROW_AFTER_S + 0.5
        assert three[0].limiter.app_rate == 45
        await three[1].work()  # back with requests to make: back to a half each
        await eventually(lambda: three[0].limiter.shares == three[1].limiter.shares == 2)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_process_starts_nothing_before_it_has_its_share(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Alone on a host, a process's first request waits only for it to join the host's
    users. Joining a host another process uses, it waits until the other has taken its
    smaller share and what it sent under the larger one has left the window (the hold):
    at no instant do the two run with more than the whole budget between them. So too
    when it comes back after leaving for idleness."""
    async with processes(backend, request, tmp_path, 2) as (first, second):
        for process in (first, second):
            process.share()
        await asyncio.sleep(0)  # each sharing task under way, as a run's is before its lanes
        started = time.monotonic()
        await first.work()
        assert time.monotonic() - started < HAND_OFF_S
        assert first.limiter.shares == 1
        assert first.limiter.held_for == 0.0
        started = time.monotonic()
        await second.work()
        waited_s = time.monotonic() - started
        assert JOIN_HOLD_S - 0.01 <= waited_s < JOIN_HOLD_S + HAND_OFF_S
        assert first.limiter.shares == second.limiter.shares == 2
        await second.rest()
        await eventually(lambda: first.limiter.shares == 1)  # the second left, idle
        started = time.monotonic()
        await second.work()  # back: held again until the first has halved
        assert time.monotonic() - started >= JOIN_HOLD_S - 0.01
        assert first.limiter.shares == second.limiter.shares == 2


async def test_more_processes_than_the_app_concurrency_are_warned_of(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Three processes on a host that takes two requests in flight: each keeps one (so the
    three may overrun it), and a warning says so."""
    with capture_logs() as logs:
        async with processes("sqlite", request, tmp_path, 3) as three:
            for process in three:
                process.limiter = RequestLimiter(SystemClock(), 16, 5, 50, 2, margin=0.1)
                process.share(app_concurrent=2)
                await process.work()
            await eventually(lambda: all(p.limiter.shares == 3 for p in three))
            assert [p.limiter.app_concurrent for p in three] == [1, 1, 1]
    warned = [log for log in logs if log["event"] == "host.shares_exceed_concurrency"]
    assert warned
    assert (warned[0]["users"], warned[0]["app_concurrent"]) == (3, 2)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_app_pause_one_process_got_holds_back_the_others(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """An app-scope 429 in one process pauses the other at once (signalled, not at its next
    heartbeat): its next request starts no sooner than the pause ends, and it lowers its own
    rate once."""
    async with processes(backend, request, tmp_path, 2) as (first, second):
        for process in (first, second):
            process.share(idle_s=30.0)  # no wake-up but the signal's
            await process.work()
        await eventually(lambda: first.limiter.shares == second.limiter.shares == 2)
        rate = second.limiter.app_rate
        first.limiter.pause(Scope.APP, "m1", 0.5)
        ends_at = time.monotonic() + 0.5
        learnt_s = await eventually(lambda: second.limiter.app_paused_for > 0)
        assert learnt_s < HAND_OFF_S
        assert second.limiter.app_rate < rate  # a fifth off, once for the burst
        async with second.limiter.request("m2"):
            started = time.monotonic()
        assert started >= ends_at - 0.01  # its clock's pause ends as the first's does
        assert first.limiter.app_rate == second.limiter.app_rate


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_slot_given_back_reaches_a_waiter_in_another_process_at_once(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """With one slot for the host, a waiter in one process gets it as soon as another process
    gives it back (signalled: the waiters' backstop nap is a second or so)."""
    async with processes(backend, request, tmp_path, 2) as (holder, waiter):
        clock = SystemClock()

        def slots(process: Process) -> SharedSlots:
            return SharedSlots(
                ExportSlots(1), process.lease, HOST, clock, asyncio.Event(), 1.0, random.Random(1)
            )

        held = await holder.store.take_slot(HOST, holder.lease.owner.id, "M1", None, 1)
        assert held.slot_id is not None
        granted_at: list[float] = []

        async def wait_for_the_slot() -> None:
            async with slots(waiter).hold("M2"):
                granted_at.append(time.monotonic())

        task = asyncio.create_task(wait_for_the_slot())
        signals = waiter.store.host_signals()
        await eventually(lambda: signals.waiting(HOST) == 1)
        released_at = time.monotonic()
        await holder.store.release_slot(held.slot_id)
        await task
        assert granted_at[0] - released_at < HAND_OFF_S


async def test_sqlite_polls_a_host_only_while_someone_waits_on_it(tmp_path: Path) -> None:
    """One poller for the host, whatever the number of waiters: a read every 20 ms or so
    while anyone waits, none before nor after."""
    async with await Store.open(tmp_path / "state.sqlite3", SystemClock()) as store:
        signals = store.host_signals()
        assert isinstance(signals, PolledSignals)
        marks = [await signals.mark(HOST) for _ in range(3)]
        await asyncio.sleep(0.1)
        assert signals.reads == 0  # no one waits: no one reads
        waits = [asyncio.create_task(signals.wait(HOST, mark)) for mark in marks]
        # The first read is a change (nothing was read before): the waiters wake at once.
        await asyncio.gather(*waits)
        assert signals.reads == 1
        marks = [await signals.mark(HOST) for _ in range(3)]
        waits = [asyncio.create_task(signals.wait(HOST, mark)) for mark in marks]
        await asyncio.sleep(0.2)
        polled = signals.reads - 1
        assert 1 <= polled <= 12  # ten at 20 ms: one poller for the three, not thirty
        assert not any(wait.done() for wait in waits)
        await store.pause_app(HOST, datetime.now(UTC), 3)  # moves the version on
        await asyncio.wait_for(asyncio.gather(*waits), HAND_OFF_S * 2)
        reads = signals.reads
        await asyncio.sleep(0.1)
        assert signals.reads == reads  # nobody waits: the poller has stopped
