"""How a process learns, promptly, that some process changed a host's shared state.

Waiting for another process (a slot it will give back, a pause it will write) used to be a
loop of naps. Now every change a waiter may wait for moves the host's version on
(`queries._host_changed`), and `HostSignals` wakes this process's waiters on the host:

    mark = await signals.mark(host)   # before reading the state
    ...read the state; nothing for us yet...
    await signals.wait(host, mark)    # returns once the host changed after the mark

A change between the mark and the wait is not lost: the wait returns at once. A wake may be
spurious (a change that frees nothing for this waiter): the waiter reads the state again.

Two ways to learn of a change, one per backend, behind this one interface:
- PostgreSQL notifies (`LISTEN`/`NOTIFY` on a connection of its own, postgres.py);
- SQLite cannot, so `PolledSignals` reads the host's version every `poll_s` (a single
  indexed row), and only while someone in this process waits on that host: one poller per
  host, whoever and however many wait.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from harvester.clock import Clock
from harvester.errors import HarvesterError
from harvester.logs import get_logger

POLL_S = 0.02  # SQLite: how often a waited-on host's version is read


class Versions(Protocol):
    """What a poller reads: the store's `host_version`."""

    async def host_version(self, host: str) -> int: ...


class HostSignals:
    """Waiters on hosts, and their wake-ups; a backend says when a host has changed."""

    # True where learning of a change costs a read while anyone waits (SQLite): a waiter
    # with nothing urgent to wait for should not keep the poller running.
    polled = False

    def __init__(self) -> None:
        self._generation: dict[str, int] = {}  # changes seen in this process, per host
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}

    async def mark(self, host: str) -> int:
        """Where the host's changes stand now: pass it to `wait` after reading the state."""
        await self._ready()
        return self._generation.get(host, 0)

    async def wait(self, host: str, mark: int) -> None:
        """Return once the host changed after `mark` (at once if it already has)."""
        if self._generation.get(host, 0) != mark:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(host, set())
        waiters.add(future)
        try:
            self._watch(host)
            await future
        finally:
            waiters.discard(future)
            if not waiters:
                del self._waiters[host]

    def waiting(self, host: str) -> int:
        """How many wait on the host in this process now."""
        return len(self._waiters.get(host, ()))

    def changed(self, host: str) -> None:
        """The host changed: wake its waiters (the backend calls this)."""
        self._generation[host] = self._generation.get(host, 0) + 1
        for future in self._waiters.get(host, ()):
            if not future.done():
                future.set_result(None)

    async def close(self) -> None:
        """Stop listening or polling."""

    async def _ready(self) -> None:
        """Be sure every change from now on will be learnt of (PostgreSQL: listening)."""

    def _watch(self, host: str) -> None:
        """Someone waits on `host` (SQLite: poll it)."""


class PolledSignals(HostSignals):
    """SQLite's: a poller per host reads its version every `poll_s` while anyone waits on it.

    The version last read is kept when the poller stops: whatever changed since is a change
    the next wait is told of at the first read (perhaps spuriously, never missed).
    """

    polled = True

    def __init__(self, store: Versions, timer: Clock, poll_s: float = POLL_S) -> None:
        super().__init__()
        self._store = store
        self._timer = timer
        self._poll_s = poll_s
        self._seen: dict[str, int] = {}
        self._pollers: dict[str, asyncio.Task[None]] = {}
        self.reads = 0  # versions read so far (tests see that no one polls in vain)

    def _watch(self, host: str) -> None:
        if host not in self._pollers:
            self._pollers[host] = asyncio.create_task(self._poll(host), name=f"poll-{host}")

    async def _poll(self, host: str) -> None:
        try:
            while self.waiting(host):
                try:
                    version = await self._store.host_version(host)
                except HarvesterError as exc:  # the waiters' own timeouts cover for it
                    get_logger().warning("signals.poll_failed", host=host, error=str(exc))
                else:
                    self.reads += 1
                    if self._seen.get(host) != version:
                        self._seen[host] = version
                        self.changed(host)
                await self._timer.sleep(self._poll_s)
        finally:
            del self._pollers[host]

    async def close(self) -> None:
        pollers = list(self._pollers.values())
        for poller in pollers:
            poller.cancel()
        await asyncio.gather(*pollers, return_exceptions=True)
