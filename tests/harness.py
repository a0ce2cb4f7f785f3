"""What the tests of Clover's server realities share: a harvest that records its requests.

`harvest()` does what `commands.backfill` does (with the same store opening, chunk planning
and wiring, `commands.open_store`, `commands.due_chunks` and `commands.build_harvest`), but
with a session that traces every request the production client sends (when, on the shared
FakeClock, and what came back), and it hands back the hosts so that a test can look at their
export slots and limiters afterwards.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import random
import re
import types
from collections.abc import AsyncIterator, Callable, Collection, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from io import StringIO
from pathlib import Path
from typing import Any

import aiohttp

from harvester import commands
from harvester.clock import Clock
from harvester.clover.chunks import TimeRange
from harvester.clover.ratelimit import RequestLimiter, Scope
from harvester.config import RateLimits
from harvester.harvest.hosts import Host, HostFactories, Hosts
from harvester.harvest.planning import select
from harvester.harvest.scheduler import Harvest, MerchantWork
from harvester.harvest.summary import Summary
from harvester.output.target import open_output
from harvester.pacing.slots import ExportSlots
from harvester.pacing.windows import WindowTable
from harvester.simulator import Account, Faults, Simulator
from harvester.state.records import ExportRecord
from tests.conftest import (
    DATA_END,
    DATA_START,
    Scenario,
    harvested,
    ids,
    merchant_ids,
    new_token,
    sim_settings,
)
from tests.fakeclock import FakeClock
from tests.statefile import exports_in

FULL = TimeRange(DATA_START, DATA_END)
_MERCHANT_PATH = re.compile(
    r"^/v3/merchants/(?P<merchant>[^/]+)(?P<exports>/exports(?P<poll>/[^/]+)?/?)?$"
)


API_KINDS = ("create", "poll", "merchant", "refresh")


@dataclass(slots=True)
class Sent:
    """One request the harvester sent."""

    order: int  # its place among the requests and pauses of its `Requests`
    at: float  # clock.monotonic() when it started
    method: str
    url: str
    kind: str  # create, poll, merchant (the read of the merchant), refresh, file
    merchant: str | None  # from the URL; None for refreshes and files
    authorization: str | None = field(repr=False)
    status: int | None = None  # None: no answer (connection error, timeout) or none yet


@dataclass(frozen=True, slots=True)
class Paused:
    """The harvester read a 429 and paused a token (TOKEN: `key`) or its host (APP)."""

    order: int  # its place among the requests and pauses of its `Requests`
    scope: Scope
    key: str
    at: float
    until: float  # clock.monotonic() when this pause ends


class Requests:
    """Every request of the sessions it is traced into, in the order they started, and every
    pause their limiters were told of, in one order: what came before what, exactly, even
    where the fake clock shows one instant."""

    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock
        self._order = itertools.count()
        self.sent: list[Sent] = []
        self.pauses: list[Paused] = []
        self.config = aiohttp.TraceConfig()
        self.config.on_request_start.append(self._started)
        self.config.on_request_end.append(self._ended)

    def of(
        self, kind: str | None = None, merchant: str | None = None, status: int | None = None
    ) -> list[Sent]:
        return [
            s
            for s in self.sent
            if (kind is None or s.kind == kind)
            and (merchant is None or s.merchant == merchant)
            and (status is None or s.status == status)
        ]

    def before(self, seconds: float) -> list[Sent]:
        """Requests that started before `seconds` on the clock's monotonic scale."""
        return [s for s in self.sent if s.at < seconds]

    def limiter(self, limits: RateLimits, clock: Clock) -> RequestLimiter:
        """A `LimiterFactory` whose limiters record their pauses here."""
        return _RecordingLimiter(self, limits, clock)

    def note_pause(self, scope: Scope, key: str, seconds: float) -> None:
        now = self._clock.monotonic()
        self.pauses.append(Paused(next(self._order), scope, key, now, now + seconds))

    def started_in_a_pause(self) -> list[tuple[Paused, Sent]]:
        """Pairs (a pause, an API request it covers that started after it and before its end).

        A request sent before the harvester read the 429 is on its way and is no such pair;
        one that starts after it, of the token paused (or of anyone, for APP), is.
        """
        return [
            (pause, sent)
            for pause in self.pauses
            for sent in self.sent
            if sent.kind in API_KINDS
            and sent.order > pause.order
            and sent.at < pause.until
            and (pause.scope is Scope.APP or sent.merchant == pause.key)
        ]

    async def _started(
        self,
        session: aiohttp.ClientSession,
        context: types.SimpleNamespace,
        params: aiohttp.TraceRequestStartParams,
    ) -> None:
        path = params.url.path
        match = _MERCHANT_PATH.match(path)
        if path == "/oauth/v2/refresh":
            kind = "refresh"
        elif match is None:
            kind = "file"
        elif not match["exports"]:
            kind = "merchant"
        else:
            kind = "poll" if match["poll"] else "create"
        sent = Sent(
            order=next(self._order),
            at=self._clock.monotonic(),
            method=params.method,
            url=str(params.url),
            kind=kind,
            merchant=match["merchant"] if match else None,
            authorization=params.headers.get("Authorization"),
        )
        context.sent = sent
        self.sent.append(sent)

    async def _ended(
        self,
        session: aiohttp.ClientSession,
        context: types.SimpleNamespace,
        params: aiohttp.TraceRequestEndParams,
    ) -> None:
        context.sent.status = params.response.status


class _RecordingLimiter(RequestLimiter):
    """The production limiter, noting each pause in its `Requests` as it is set."""

    def __init__(self, requests: Requests, limits: RateLimits, clock: Clock) -> None:
        super().__init__(
            clock,
            limits.token_requests_per_s,
            limits.token_concurrent,
            limits.app_requests_per_s,
            limits.app_concurrent,
            margin=limits.margin,
        )
        self._requests = requests

    def pause(self, scope: Scope, key: str, seconds: float) -> None:
        self._requests.note_pause(scope, key, seconds)
        super().pause(scope, key, seconds)


@dataclass(slots=True)
class Run:
    summary: Summary
    hosts: Hosts
    requests: Requests

    @property
    def host(self) -> Host:
        """The one host of a scenario (built with its first merchant)."""
        (host,) = self.hosts.built.values()
        return host

    @property
    def slots(self) -> ExportSlots:
        return self.host.slots


async def harvest(
    scenario: Scenario,
    clock: FakeClock,
    requested: TimeRange = FULL,
    *,
    requests: Requests | None = None,
    stop: asyncio.Event | None = None,
    seed: int = 7,
    beside: Callable[[Harvest], Coroutine[Any, Any, None]] | None = None,
    factories: HostFactories | None = None,
) -> Run:
    """One `backfill` of every merchant of the scenario over `requested`, traced.

    `beside`, if given, runs next to the harvest (to look at it as it goes) and is cancelled
    when the harvest ends.
    """
    config = scenario.config()
    requests = requests if requests is not None else Requests(clock)
    async with (
        open_output(config) as output,
        await commands.open_store(config, output, clock) as store,
    ):
        work = [
            MerchantWork(s.merchant, tuple(await commands.due_chunks(store, config, s, requested)))
            for s in select(config, [], [])
        ]
        async with aiohttp.ClientSession(trace_configs=[requests.config]) as session:
            runner, hosts = commands.build_harvest(
                config,
                store,
                output,
                session,
                clock,
                stop or asyncio.Event(),
                random.Random(seed),
                dataclasses.replace(factories or HostFactories(), limiter=requests.limiter),
            )
            watcher = asyncio.create_task(beside(runner)) if beside is not None else None
            try:
                summary = await runner.run(work)
            finally:
                if watcher is not None:
                    watcher.cancel()
                    await asyncio.gather(watcher, return_exceptions=True)
    return Run(summary, hosts, requests)


@asynccontextmanager
async def simulated(
    tmp_path: Path,
    clock: FakeClock,
    merchants: int = 3,
    *,
    faults: Faults | None = None,
    accounts: Callable[[str, str], Account] | None = None,
    region: Mapping[str, Any] | None = None,
    top: Mapping[str, Any] | None = None,
    **settings: Any,
) -> AsyncIterator[Scenario]:
    """A simulator with `merchants` static-token merchants and a scenario harvesting them."""
    tokens = {m: new_token(m) for m in merchant_ids(merchants)}
    make = accounts or (lambda merchant_id, token: Account(token=token))
    sim_accounts = {m: make(m, t) for m, t in tokens.items()}
    async with Simulator(sim_settings(sim_accounts, **settings), clock, faults or Faults()) as sim:
        yield Scenario(tmp_path, sim, tokens, region=dict(region or {}), top=dict(top or {}))


def recorded_exports(scenario: Scenario) -> list[ExportRecord]:
    """Every export the scenario's store recorded, oldest first."""
    return exports_in(scenario.config().state_path)


async def metronome(clock: FakeClock, seconds: float, step_s: float = 0.02) -> None:
    """Nap in short steps for `seconds` of virtual time.

    The FakeClock jumps to the next sleeper whenever the loop has been busy for a tick; while
    every lane waits on real I/O, that can leap over a whole backoff. Short naps cap the leap.
    """
    for _ in range(round(seconds / step_s)):
        await clock.sleep(step_s)


def window(spec: object) -> WindowTable:
    """A window table written as in the config, for the simulator and the config alike."""
    return WindowTable.parse(spec, "test")


def log_events(buffer: StringIO, event: str | None = None) -> list[dict[str, Any]]:
    """The JSON log lines written so far, optionally only those of one event."""
    lines = [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]
    return [line for line in lines if event is None or line.get("event") == event]


@dataclass(slots=True)
class Watch:
    """What a test saw at given instants while a harvest ran."""

    seen: dict[str, Any] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def at(self, clock: FakeClock, when: datetime, name: str, look: Callable[[], Any]) -> None:
        """Call `look` when the clock reaches `when` and keep its answer under `name`."""

        async def watch() -> None:
            await clock.sleep((when - clock.now()).total_seconds())
            self.seen[name] = look()

        self.tasks.append(asyncio.create_task(watch()))

    def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()


def assert_exactly_once(
    scenario: Scenario, requested: TimeRange = FULL, *, besides: Collection[str] = ()
) -> int:
    """Every object of every merchant (but those `besides`) and type the config asks for is
    on disk once, as the simulator has it now; returns how many there are."""
    found = 0
    for merchant in scenario.config().merchants:
        if merchant.id in besides:
            continue
        for export_type in merchant.types:
            expected = scenario.sim.objects(
                merchant.id, str(export_type), requested.start_ms, requested.end_ms - 1
            )
            got = harvested(scenario.output_dir, merchant.id, export_type.folder)
            assert len(ids(got)) == len(set(ids(got))), f"duplicates for {merchant.id}"
            assert sorted(got, key=lambda o: o["id"]) == sorted(expected, key=lambda o: o["id"])
            found += len(got)
    return found
