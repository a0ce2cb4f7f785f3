"""`SqlStore`: the `StateStore` both backends share, each method one operation of queries.py.

A backend (`sqlite.Store`, `postgres.PgStore`) opens its connection and says how an
operation runs there (`_transact`): SQLite on its worker thread inside `BEGIN IMMEDIATE`,
PostgreSQL on its async connection inside a transaction. Either way every write is one
transaction, committed before its coroutine returns, and lands even if the caller is
cancelled meanwhile: it often records something that already happened on the server.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from types import TracebackType
from typing import Self, TypeVar

from harvester.clock import Clock
from harvester.clover.chunks import ExportType, TimeRange
from harvester.state import queries
from harvester.state.records import (
    ChunkRecord,
    ChunkStatus,
    ClaimResult,
    ExportRecord,
    ExportState,
    PartRecord,
    ProcessRecord,
    SlotTry,
    Snapshot,
)
from harvester.state.sql import Work, to_ms

T = TypeVar("T")


class SqlStore:
    """The harvest state over SQL; a backend supplies the connection and `_transact`."""

    def __init__(self, where: str, clock: Clock) -> None:
        self._where = where  # the store's name in messages: a path, or a URL without password
        self._clock = clock
        self._closed = False

    async def _transact(self, operation: str, work: Work[T], write: bool) -> T:
        """Run `work` in one transaction (a read-only one unless `write`)."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def _now(self) -> int:
        return to_ms(self._clock.now())

    async def _write(self, operation: str, work: Work[T]) -> T:
        return await self._transact(operation, work, write=True)

    async def _read(self, operation: str, work: Work[T]) -> T:
        return await self._transact(operation, work, write=False)

    # -- chunks -------------------------------------------------------------------------

    async def add_chunks(
        self, merchant_id: str, type: ExportType, ranges: Sequence[TimeRange]
    ) -> list[ChunkRecord]:
        """One row per range, in the order given: existing ones unchanged, new ones PENDING.

        Refuses the whole batch if a new range overlaps a known chunk of the same merchant
        and type with other bounds: covered intervals never overlap.
        """
        work = queries.add_chunks(self._where, self._now(), merchant_id, type, list(ranges))
        return await self._write("add_chunks", work)

    async def covered(self, merchant_id: str, type: ExportType) -> list[TimeRange]:
        """Ranges of this merchant and type whose folder has been put in place, sorted."""
        return await self._read("covered", queries.covered(merchant_id, type))

    async def chunks(
        self,
        merchant_id: str | None = None,
        type: ExportType | None = None,
        statuses: Collection[ChunkStatus] | None = None,
    ) -> list[ChunkRecord]:
        """Chunks matching every filter given, sorted by merchant, type, start."""
        return await self._read("chunks", queries.chunks(merchant_id, type, statuses))

    async def get_chunk(self, chunk_id: int) -> ChunkRecord:
        """The chunk with this id (StoreError if there is none)."""
        return await self._read("get_chunk", queries.get_chunk(self._where, chunk_id))

    async def reset_for_reharvest(self, chunk_id: int) -> ChunkRecord:
        """Lookback: a COMPLETE chunk is due again, yet stays covered (completed_at kept).

        Its old folder stays in place until the new harvest replaces it. A chunk in any
        other status is already due and is returned unchanged.
        """
        work = queries.reset_for_reharvest(self._where, self._now(), chunk_id)
        return await self._write("reset_for_reharvest", work)

    async def complete_chunk(self, chunk_id: int) -> None:
        """The chunk's folder is in place: COMPLETE, covered from now, errors cleared."""
        work = queries.complete_chunk(self._where, self._now(), chunk_id)
        await self._write("complete_chunk", work)

    async def fail_chunk(self, chunk_id: int, error: str) -> None:
        """Give up on the chunk for this run.

        It keeps an export that is still RUNNING or DONE, so the next run re-attaches to it
        instead of spending a new server slot.
        """
        work = queries.fail_chunk(self._where, self._now(), chunk_id, error)
        await self._write("fail_chunk", work)

    async def note_lost_create(self, chunk_id: int) -> None:
        """A create for the chunk lost its answer: an export may exist that we know no id of."""
        await self._write("note_lost_create", queries.note_lost_create(self._where, chunk_id))

    async def start_run(self) -> None:
        """A new run retries what the last one gave up on.

        FAILED chunks go back to PENDING, or straight to EXPORTING / DOWNLOADING when their
        export is still RUNNING / DONE.
        """
        await self._write("start_run", queries.start_run(self._now()))

    # -- exports ------------------------------------------------------------------------

    async def record_export(
        self, chunk_id: int, export_id: str, status: str, percent: float
    ) -> ExportRecord:
        """Remember an export the moment Clover created it, before the first poll.

        The export is RUNNING and becomes the chunk's current one; the chunk is EXPORTING.
        Recording the same export for the same chunk again changes nothing.
        """
        now = self._now()
        work = queries.record_export(self._where, now, chunk_id, export_id, status, percent)
        return await self._write("record_export", work)

    async def update_export(self, export_id: str, status: str, percent: float) -> None:
        """Store what the latest poll said."""
        work = queries.update_export(self._where, self._now(), export_id, status, percent)
        await self._write("update_export", work)

    async def export_done(
        self, export_id: str, available_until: datetime | None, urls: Sequence[str]
    ) -> None:
        """Clover says DONE: keep its file URLs; its chunk moves on to DOWNLOADING."""
        now = self._now()
        work = queries.export_done(self._where, now, export_id, available_until, list(urls))
        await self._write("export_done", work)

    async def end_export(self, export_id: str, state: ExportState, error: str) -> None:
        """The export will deliver nothing (more): its chunk drops it and is due again.

        `state` is FAILED, EXPIRED or LOST. A chunk FAILED for this run stays FAILED; a
        COMPLETE chunk is not touched (its folder is in place already).
        """
        if state not in queries.ENDED_EXPORT_STATES:
            raise ValueError(f"end_export needs an ending state, not {state}")
        work = queries.end_export(self._where, self._now(), export_id, state, error)
        await self._write("end_export", work)

    async def get_export(self, export_id: str) -> ExportRecord | None:
        """The export with this id, if known."""
        return await self._read("get_export", queries.get_export(export_id))

    # -- parts and refresh tokens -------------------------------------------------------

    async def record_part(self, part: PartRecord) -> None:
        """A part is saved. Recording the same part number again overwrites its entry."""
        await self._write("record_part", queries.record_part(part))

    async def parts(self, export_id: str) -> list[PartRecord]:
        """The saved parts of an export, by part number."""
        return await self._read("parts", queries.parts(export_id))

    async def refresh_token(self, merchant_id: str) -> tuple[str, datetime | None] | None:
        """The merchant's latest refresh token and its expiry, if one was saved."""
        return await self._read("refresh_token", queries.refresh_token(merchant_id))

    async def save_refresh_token(
        self, merchant_id: str, token: str, expires_at: datetime | None
    ) -> None:
        """Durably replace the merchant's refresh token (they are single-use)."""
        work = queries.save_refresh_token(self._now(), merchant_id, token, expires_at)
        await self._write("save_refresh_token", work)

    # -- processes and claims -----------------------------------------------------------

    async def register_process(self, process: ProcessRecord) -> None:
        """Enter (or re-enter) a process sharing the state, with its lease."""
        await self._write("register_process", queries.register_process(process))

    async def renew_process(self, process_id: str, lease_until: datetime) -> bool:
        """Extend a process's lease. False if it had already ended or lapsed (then it is
        renewed all the same: claims nobody took meanwhile are its own again)."""
        work = queries.renew_process(self._where, self._now(), process_id, lease_until)
        return await self._write("renew_process", work)

    async def end_process(self, process_id: str) -> None:
        """The process is done (or known dead): its lease ends now, its claims, slots and
        locks go."""
        await self._write("end_process", queries.end_process(self._now(), process_id))

    async def processes(self) -> list[ProcessRecord]:
        """Every process that ever shared the state, oldest first."""
        return await self._read("processes", queries.processes())

    async def claim_chunk(self, chunk_id: int, owner: str) -> ClaimResult:
        """Take the chunk for `owner` unless a process whose lease runs holds it.

        A claim of a process whose lease has ended passes to `owner`: the chunk is taken
        over as it stands (its export, its saved parts).
        """
        work = queries.claim_chunk(self._where, self._now(), chunk_id, owner)
        return await self._write("claim_chunk", work)

    async def holds_chunk(self, chunk_id: int, owner: str) -> bool:
        """True while `owner` holds the chunk's claim (nobody took it over)."""
        return await self._read("holds_chunk", queries.holds_chunk(chunk_id, owner))

    async def release_chunk(self, chunk_id: int, owner: str) -> None:
        """`owner` is done with the chunk (if it still held it)."""
        await self._write("release_chunk", queries.release_chunk(chunk_id, owner))

    # -- shared export slots and refresh locks ------------------------------------------

    async def take_slot(
        self, host: str, owner: str, merchant_id: str, waiter_id: int | None, maximum: int
    ) -> SlotTry:
        """Ask for one of the host's export slots for `merchant_id`.

        Granted when the live processes together hold fewer than the shared limit, no busy
        backoff is running, and the merchant's waiter is among the next in line: merchants
        served least recently first, then the longest waiting, as ExportSlots does in one
        process. Otherwise the waiter keeps its place: ask again with `waiter_id`. Slots and
        waiters of processes whose lease ended are dropped.
        """
        now = self._now()
        work = queries.take_slot(now, host, owner, merchant_id, waiter_id, maximum)
        return await self._write("take_slot", work)

    async def reset_hosts(self) -> None:
        """Forget the shared limits and backoffs: for a process alone on the state, which
        starts from the configured limits as it would by itself."""
        await self._write("reset_hosts", queries.reset_hosts())

    async def leave_slot_queue(self, waiter_id: int) -> None:
        """Stop waiting for a slot (the waiter was cancelled)."""
        await self._write("leave_slot_queue", queries.leave_slot_queue(waiter_id))

    async def release_slot(self, slot_id: int) -> None:
        """Give a slot back."""
        await self._write("release_slot", queries.release_slot(slot_id))

    async def slot_busy(self, host: str, until: datetime, maximum: int, limit: int) -> int:
        """A busy 503 on the host: the shared limit drops to `limit` (what the process that
        saw it now allows itself) if lower, and nothing is granted before `until` (a later
        end already set stays). Returns the new limit."""
        work = queries.slot_busy(self._now(), host, until, maximum, limit)
        return await self._write("slot_busy", work)

    async def slot_went_through(self, host: str, maximum: int) -> int:
        """An export was created on the host: the backoff ends; after as many in a row as
        the limit, the limit grows by one up to `maximum`. Returns the limit."""
        return await self._write("slot_went_through", queries.slot_went_through(host, maximum))

    async def lock_token(self, merchant_id: str, owner: str) -> ProcessRecord | None:
        """Take the merchant's refresh lock: None once `owner` holds it, else the live
        process holding it. The lock of a process whose lease ended passes on."""
        return await self._write("lock_token", queries.lock_token(self._now(), merchant_id, owner))

    async def unlock_token(self, merchant_id: str, owner: str) -> None:
        """Give the merchant's refresh lock back (if `owner` still holds it)."""
        await self._write("unlock_token", queries.unlock_token(merchant_id, owner))

    # -- what `status` shows ------------------------------------------------------------

    async def snapshot(self, now: datetime | None = None) -> Snapshot:
        """What `status` shows, in one transaction (with `now`: the live claims too)."""
        return await self._read("snapshot", queries.snapshot(now))
