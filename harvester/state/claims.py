"""Many harvesters, one state: each process's lease, and the chunks it claims under it.

Every process that works on the state enters itself in it with a lease, and renews the
lease while it lives (a heartbeat at a third of its length). A chunk is worked on only by
the process holding its claim; a claim is worth what its holder's lease is worth, so the
chunks of a process that died pass to whoever asks next, once its lease has run out. On one
machine that wait is skipped: a process whose pid is gone is ended at once by the next one
that looks (the "machine" of a process names its host, boot and PID namespace, so a pid is
only ever checked where it means that process).

Leases are instants on the wall clock: processes on several machines need clocks kept in
step (NTP) to well within a lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType

from harvester.clock import Clock
from harvester.errors import HarvesterError, StoreError
from harvester.logs import get_logger
from harvester.state.records import (
    ClaimResult,
    ExportRecord,
    PartRecord,
    ProcessRecord,
    StateStore,
)

_UNSAFE = re.compile(r"[^A-Za-z0-9-]+")


class ClaimLost(HarvesterError):
    """Another process took the chunk over (this one's lease ran out): leave it to that one."""


@dataclass(frozen=True, slots=True)
class Owner:
    """This process, as the state knows it."""

    id: str  # host-pid-random: unique per process start, safe as part of a file name
    host: str
    pid: int
    machine: str
    command: str

    @classmethod
    def this_process(cls, command: str) -> Owner:
        host = socket.gethostname() or "localhost"
        pid = os.getpid()
        safe_host = _UNSAFE.sub("-", host).strip("-")[:40] or "host"
        return cls(
            id=f"{safe_host}-{pid}-{secrets.token_hex(4)}",
            host=host,
            pid=pid,
            machine=machine_id(),
            command=command,
        )


@functools.cache
def machine_id() -> str:
    """Where a pid means one process: the host, its boot, and the PID namespace.

    Without /proc (not Linux) the id is unique to this process, so no other process ever
    checks its pid, and only the lease tells whether it lives.
    """
    host = socket.gethostname() or "localhost"
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return f"{host}/unknown/{secrets.token_hex(8)}"
    return f"{host}/{boot}/{namespace}"


def pid_alive(pid: int) -> bool:
    """True unless no process has this pid (a zombie or a stranger's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def reap(store: StateStore, machine: str | None = None) -> list[str]:
    """End the leases of processes on this machine whose pid is gone; returns their ids."""
    here = machine or machine_id()
    gone = [
        process.id
        for process in await store.live_processes(here)
        if process.pid != os.getpid() and not pid_alive(process.pid)
    ]
    for process_id in gone:
        await store.end_process(process_id)
        get_logger().info("lease.reaped", owner=process_id)
    return gone


class ProcessLease:
    """This process's lease on the state: entered on `async with`, renewed, ended on exit.

    `timer` paces the heartbeat. It is the real clock in production even where tests hand
    the harvest a fake one: a fake clock's time leaps whenever every task waits on I/O, and
    a heartbeat sleeping on it would make it leap by a third of a lease each time.
    """

    def __init__(
        self,
        store: StateStore,
        owner: Owner,
        clock: Clock,
        lease_s: float,
        timer: Clock | None = None,
    ) -> None:
        if lease_s <= 0:
            raise ValueError(f"lease_s must be positive, got {lease_s}")
        self.store = store
        self.owner = owner
        self._clock = clock
        self._timer = timer or clock
        self._lease = timedelta(seconds=lease_s)
        self._heartbeat: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        """True between entering and leaving the `async with` block."""
        return self._heartbeat is not None

    @property
    def lease_s(self) -> float:
        return self._lease.total_seconds()

    def record(self) -> ProcessRecord:
        now = self._clock.now()
        return ProcessRecord(
            id=self.owner.id,
            host=self.owner.host,
            pid=self.owner.pid,
            machine=self.owner.machine,
            command=self.owner.command,
            started_at=now,
            lease_until=now + self._lease,
        )

    async def __aenter__(self) -> ProcessLease:
        await self.store.register_process(self.record())
        await self.reap()
        self._heartbeat = asyncio.create_task(self._beat(), name="lease-heartbeat")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        # Shielded: the others should not have to wait out the lease of a process that left.
        try:
            await asyncio.shield(self.store.end_process(self.owner.id))
        except StoreError as error:
            # The state cannot be written (its disk is full, say): the run's own report
            # matters more. The lease lapses by itself, at once for a dead pid on this machine.
            get_logger().warning("lease.not_ended", error=str(error))

    async def renew(self) -> None:
        """Extend the lease now; warn if it had lapsed (claims may have been taken over)."""
        if not await self.store.renew_process(self.owner.id, self._clock.now() + self._lease):
            get_logger().warning("lease.lapsed", owner=self.owner.id, lease_s=self.lease_s)

    async def reap(self) -> list[str]:
        """End the leases of processes on this machine whose pid is gone; their ids."""
        return await reap(self.store, self.owner.machine)

    async def live_owners(self) -> set[str]:
        """Ids of the processes whose lease runs now, this one included."""
        return {p.id for p in await self.store.live_processes()}

    async def gone_owners(self) -> set[str]:
        """Ids of the processes whose lease has ended (known to have stopped or died)."""
        now = self._clock.now()
        return {p.id for p in await self.store.processes() if p.lease_until <= now}

    async def claim(self, chunk_id: int) -> ClaimResult:
        return await self.store.claim_chunk(chunk_id, self.owner.id)

    async def claim_many(self, chunk_ids: Sequence[int]) -> list[ClaimResult]:
        """`claim` for each chunk, in one transaction; in the order given."""
        return await self.store.claim_chunks(chunk_ids, self.owner.id) if chunk_ids else []

    async def confirm(self, chunk_id: int) -> None:
        """ClaimLost unless this process still holds the chunk: call before acting on it."""
        if not await self.store.holds_chunk(chunk_id, self.owner.id):
            raise ClaimLost(f"chunk {chunk_id} was taken over by another process")

    async def held_parts(self, chunk_id: int, export_id: str) -> list[PartRecord]:
        """`confirm`, and the export's saved parts, in one operation of the store."""
        parts = await self.store.held_parts(chunk_id, self.owner.id, export_id)
        if parts is None:
            raise ClaimLost(f"chunk {chunk_id} was taken over by another process")
        return parts

    async def export_done(
        self,
        chunk_id: int,
        export_id: str,
        available_until: datetime | None,
        urls: Sequence[str],
        slot_id: int | None,
    ) -> tuple[ExportRecord, list[PartRecord]]:
        """The export's DONE recorded (`slot_id`, if any, given back with it), and
        `held_parts`, in one operation of the store (which lands whatever becomes of the
        caller); ClaimLost, the DONE recorded, if the chunk was taken over."""
        done, parts = await self.store.export_done_held(
            export_id, available_until, urls, slot_id, chunk_id, self.owner.id
        )
        if parts is None:
            raise ClaimLost(f"chunk {chunk_id} was taken over by another process")
        return done, parts

    async def complete(self, chunk_id: int) -> None:
        """The chunk is COMPLETE and its claim released, in one operation (which lands
        whatever becomes of the caller)."""
        await self.store.complete_chunk(chunk_id, self.owner.id)

    async def release(self, chunk_id: int) -> None:
        await asyncio.shield(self.store.release_chunk(chunk_id, self.owner.id))

    async def _beat(self) -> None:
        log = get_logger()
        while True:
            await self._timer.sleep(self.lease_s / 3)
            try:
                await self.renew()
                await self.reap()
            except HarvesterError as exc:  # a busy store now and then must not end the run
                log.warning("lease.renew_failed", error=str(exc))
