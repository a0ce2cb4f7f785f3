"""The harvest's wiring: each Clover host's client, limiter, slots and gate, and each
merchant's tokens and client.

`Harvest` is handed a `Hosts` and asks it for what a merchant needs; tests pass their own
gate, slots or limiter factories to watch what the harvest does with them. What several processes
on one state share (export slots, Clover's app limits, refresh locks) goes through this
process's lease; the app limits while `sharing` runs (the harvest's run).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import MappingProxyType

import aiohttp

from harvester.clock import Clock, SystemClock
from harvester.clover.api import CloverApi, TokenGrant
from harvester.clover.ratelimit import RequestLimiter
from harvester.config import Config, Merchant, RateLimits, Region, Timing
from harvester.harvest.merchant import MerchantClient
from harvester.harvest.observer import RunObserver
from harvester.harvest.token_command import CommandToken, TokenCommandRunner
from harvester.harvest.tokens import RefreshingToken, StaticToken, TokenSource
from harvester.pacing.gate import HostGate
from harvester.pacing.slots import ExportSlots
from harvester.state.claims import Owner, ProcessLease
from harvester.state.records import StateStore
from harvester.state.shared import RefreshLocks, SharedLimits, SharedSlots


@dataclass(slots=True)
class Host:
    """One Clover API host and everything that is shared by its merchants."""

    region: Region
    api: CloverApi
    limiter: RequestLimiter
    slots: ExportSlots  # this process's
    gate: HostGate
    shared: SharedSlots  # the host's, across the processes on the state


def make_gate(region: Region, timing: Timing, clock: Clock, rng: random.Random) -> HostGate:
    return HostGate(
        region.base_url,
        region.windows,
        clock,
        backoff_base_s=timing.backoff_base_s,
        backoff_max_s=timing.backoff_max_s,
        margin_s=timing.window_margin_s,
        rng=rng,
    )


def make_slots(region: Region) -> ExportSlots:
    return ExportSlots(region.max_concurrent_exports)


def make_limiter(limits: RateLimits, clock: Clock) -> RequestLimiter:
    return RequestLimiter(
        clock,
        limits.token_requests_per_s,
        limits.token_concurrent,
        limits.app_requests_per_s,
        limits.app_concurrent,
        margin=limits.margin,
    )


GateFactory = Callable[[Region, Timing, Clock, random.Random], HostGate]
SlotsFactory = Callable[[Region], ExportSlots]
LimiterFactory = Callable[[RateLimits, Clock], RequestLimiter]


@dataclass(frozen=True, slots=True)
class HostFactories:
    """How a host's gate, export slots and request limiter are made (tests pass spies)."""

    gate: GateFactory = make_gate
    slots: SlotsFactory = make_slots
    limiter: LimiterFactory = make_limiter


class Hosts:
    """Builds each region's `Host` once, on first use, and each merchant's client."""

    def __init__(
        self,
        config: Config,
        session: aiohttp.ClientSession,
        store: StateStore,
        clock: Clock,
        rng: random.Random,
        factories: HostFactories | None = None,
        observer: RunObserver | None = None,
        *,
        lease: ProcessLease | None = None,
        stop: asyncio.Event | None = None,
        timer: Clock | None = None,
    ) -> None:
        """Without `lease`, one of its own for this process (entered by `Harvest.run`).
        `timer` paces the shared limits' heartbeat: real time, whatever `clock` is."""
        self._config = config
        self._observer = observer or RunObserver()
        self._session = session
        self._store = store
        self._clock = clock
        self._rng = rng
        self._factories = factories or HostFactories()
        self._hosts: dict[str, Host] = {}
        self._stop = stop or asyncio.Event()
        self._timer = timer or SystemClock()
        # While `sharing` runs: where each host's shared limits run, and what ends them.
        self._sharing: asyncio.TaskGroup | None = None
        self._done = asyncio.Event()
        # The heartbeat keeps real time whatever `clock` is: see ProcessLease.
        self.lease = lease or ProcessLease(
            store, Owner.this_process("harvest"), clock, config.timing.lease_s, SystemClock()
        )
        self._refresh_locks = RefreshLocks(self.lease, clock, config.timing.poll_min_s)
        self._token_command: TokenCommandRunner | None = None  # built on first use

    @property
    def built(self) -> Mapping[str, Host]:
        """The hosts built so far, by region name."""
        return MappingProxyType(self._hosts)

    @asynccontextmanager
    async def sharing(self) -> AsyncIterator[None]:
        """While the block runs, each host built (before or during it) shares Clover's app
        limits with the other processes on the state (`SharedLimits`); on exit each gives
        its share back. The lease must be active throughout."""
        self._done.clear()
        async with asyncio.TaskGroup() as group:
            self._sharing = group
            for host in self._hosts.values():
                self._share(host)
            try:
                yield
            finally:
                self._sharing = None
                self._done.set()

    def _share(self, host: Host) -> None:
        if self._sharing is None:
            return
        limits = SharedLimits(
            host.limiter,
            self.lease,
            host.region.base_url,
            host.region.max_concurrent_exports,
            host.region.rate_limits.app_concurrent,
            self._clock,
            self._timer,
        )
        self._sharing.create_task(limits.run(self._done), name=f"limits-{host.region.name}")

    def host(self, region: Region) -> Host:
        host = self._hosts.get(region.name)
        if host is None:
            limiter = self._factories.limiter(region.rate_limits, self._clock)
            api = CloverApi(
                self._session, region.base_url, limiter, self._config.timing.request_timeout_s
            )
            gate = self._factories.gate(region, self._config.timing, self._clock, self._rng)
            slots = self._factories.slots(region)
            shared = SharedSlots(
                slots,
                self.lease,
                region.base_url,
                self._clock,
                self._stop,
                self._config.timing.poll_min_s,
                self._rng,
            )
            host = Host(region, api, limiter, slots, gate, shared)
            self._hosts[region.name] = host
            self._share(host)
        return host

    def client(self, merchant: Merchant) -> MerchantClient:
        """The merchant's line to Clover, on its region's host."""
        host = self.host(merchant.region)
        return MerchantClient(
            merchant.id,
            host.api,
            self._tokens(merchant, host),
            host.limiter,
            self._config.timing,
            self._clock,
            self._rng,
            on_rate_limited=lambda scope: self._observer.rate_limited(merchant.region.name, scope),
            stop=self._stop,
        )

    def _command_token(self, merchant: Merchant) -> TokenSource:
        # The config guarantees token_command where a merchant has neither token.
        command = self._config.token_command
        assert command is not None
        if self._token_command is None:
            self._token_command = TokenCommandRunner(command)
        return CommandToken(
            merchant.id,
            merchant.region.name,
            self._token_command,
            self._clock,
            self._config.timing.token_refresh_margin_s,
            command.ttl_s,
        )

    def _tokens(self, merchant: Merchant, host: Host) -> TokenSource:
        if merchant.token is not None:
            return StaticToken(merchant.token.reveal())
        if merchant.refresh_token is None:
            return self._command_token(merchant)
        # The config guarantees a refresh token and a client id where there is no token.
        assert merchant.refresh_token is not None
        assert merchant.client_id is not None
        client_id = merchant.client_id

        async def refresher(refresh_token: str) -> TokenGrant:
            return await host.api.refresh(merchant.id, client_id, refresh_token)

        return RefreshingToken(
            merchant.id,
            merchant.refresh_token.reveal(),
            refresher,
            self._store,
            self._clock,
            self._config.timing.token_refresh_margin_s,
            lambda: self._refresh_locks.hold(merchant.id),
        )
