"""The harvest state's shape: its records, and `StateStore`, what every backend offers.

The harvest (scheduler, downloader, tokens) and the CLI words (`backfill`, `run`) use a
store only through `StateStore`; `sqlite.Store` and `postgres.PgStore` are the backends.
`status` and `plan` read a `Snapshot` (`sqlite.read_snapshot`, read-only, while a run may
be writing).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self

from harvester.clover.chunks import ExportType, TimeRange

if TYPE_CHECKING:
    from harvester.state.signals import HostSignals


class ChunkStatus(StrEnum):
    PENDING = "pending"  # known, no usable export yet (new, or its export failed)
    EXPORTING = "exporting"  # an export is running for it (export_id set)
    DOWNLOADING = "downloading"  # its export is DONE; parts are being saved
    COMPLETE = "complete"  # its folder is in place
    FAILED = "failed"  # gave up for this run; the next run retries it


class ExportState(StrEnum):
    RUNNING = "running"  # created, not yet DONE
    DONE = "done"  # DONE, file URLs stored
    FAILED = "failed"  # failed status, DONE without URLs, or stalled
    EXPIRED = "expired"  # its files expired before all were saved
    LOST = "lost"  # the server answered 404 for its id


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    id: int
    merchant_id: str
    type: ExportType
    range: TimeRange
    status: ChunkStatus
    export_id: str | None  # the current export (RUNNING or DONE), if any
    exports_created: int  # how many exports were ever created for it
    completed_at: datetime | None  # last time its folder was put in place; not None = covered
    last_error: str | None
    last_error_at: datetime | None
    updated_at: datetime
    lost_creates: int = 0  # creates whose answer was lost: exports that may exist, unknown


@dataclass(frozen=True, slots=True)
class ExportRecord:
    id: str
    chunk_id: int
    state: ExportState
    status: str  # Clover's last status string
    percent: float
    created_at: datetime
    updated_at: datetime
    available_until: datetime | None
    urls: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PartRecord:
    export_id: str
    index: int  # 1-based part number
    url_index: int  # 0-based position in the export's exportUrls
    size: int
    sha256: str
    objects: int


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    """A harvester process that shares the state: who it is and how long its lease runs.

    Its claims (and slots, and locks) are worth what its lease is worth: once
    `lease_until` has passed without a renewal, the process counts as gone and anyone may
    take its chunks over.
    """

    id: str  # unique per process start: also the suffix of its staging folders
    host: str
    pid: int
    machine: str  # host, boot and PID namespace: where `pid` can be checked directly
    command: str
    started_at: datetime
    lease_until: datetime


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """The chunk as it is now, and who holds it if not the asking process."""

    chunk: ChunkRecord
    held_by: ProcessRecord | None  # None: the asking process holds the claim now

    @property
    def granted(self) -> bool:
        return self.held_by is None


@dataclass(frozen=True, slots=True)
class SlotTry:
    """What asking for a shared export slot gave."""

    slot_id: int | None  # the slot, if granted
    # The place in the queue (pass it again until granted); None for a slot granted at the
    # first ask, which never stood in line.
    waiter_id: int | None
    limit: int  # the host's shared limit now
    in_use: int  # slots held by live processes now (this one's new slot included)
    busy_until: datetime | None  # no slot is granted before this (a busy 503 was seen)
    claim_held: bool = True  # asked with a chunk and granted: the asker still holds its claim


@dataclass(frozen=True, slots=True)
class HostView:
    """What the processes on a host share of Clover's app limits, as the state says now."""

    version: int  # moves on with every change a waiter may wait for (0: no row yet)
    users: int  # live processes working on the host: each runs with one share of the limits
    app_paused_until: datetime | None  # an app-scope 429 holds every process back until then


@dataclass(frozen=True, slots=True)
class HeldChunk:
    """For `status`: a chunk claimed by a process whose lease has not ended."""

    chunk_id: int
    holder: ProcessRecord


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What `harvester status` shows. Never holds a token."""

    chunks: list[ChunkRecord]
    running: list[ExportRecord]  # RUNNING/DONE current exports of chunks not yet complete
    held: list[HeldChunk] = field(default_factory=list)  # claims of live processes


class StateStore(Protocol):
    """Durable harvest state: every write has landed when its coroutine returns, and a
    write lands once its call is made even if the caller is cancelled while it waits: an
    awaited call needs no shield (one would cost a task per call).

    Each method's contract is the docstring of its operation in queries.py.
    """

    async def close(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    # -- chunks
    async def add_chunks(
        self, merchant_id: str, type: ExportType, ranges: Sequence[TimeRange]
    ) -> list[ChunkRecord]: ...

    async def add_chunks_of(
        self, wanted: Sequence[tuple[str, ExportType, Sequence[TimeRange]]]
    ) -> list[list[ChunkRecord]]: ...

    async def chunks_of(self, merchant_ids: Sequence[str]) -> list[ChunkRecord]: ...

    async def covered(self, merchant_id: str, type: ExportType) -> list[TimeRange]: ...

    async def chunks(
        self,
        merchant_id: str | None = None,
        type: ExportType | None = None,
        statuses: Collection[ChunkStatus] | None = None,
    ) -> list[ChunkRecord]: ...

    async def get_chunk(self, chunk_id: int) -> ChunkRecord: ...

    async def reset_for_reharvest(self, chunk_id: int) -> ChunkRecord: ...

    async def reset_for_reharvest_of(self, chunk_ids: Sequence[int]) -> list[ChunkRecord]: ...

    async def complete_chunk(self, chunk_id: int, owner: str | None = None) -> None: ...

    async def fail_chunk(self, chunk_id: int, error: str) -> None: ...

    async def note_lost_create(self, chunk_id: int) -> None: ...

    async def start_run(self) -> None: ...

    # -- exports
    async def record_export(
        self, chunk_id: int, export_id: str, status: str, percent: float
    ) -> ExportRecord: ...

    async def update_export(self, export_id: str, status: str, percent: float) -> None: ...

    async def export_done(
        self, export_id: str, available_until: datetime | None, urls: Sequence[str]
    ) -> ExportRecord: ...

    async def end_export(self, export_id: str, state: ExportState, error: str) -> None: ...

    async def get_export(self, export_id: str) -> ExportRecord | None: ...

    async def past_durations(
        self, merchant_id: str, latest: int
    ) -> dict[ExportType, list[tuple[float, float]]]: ...

    async def recent_durations(
        self, type: ExportType, latest: int
    ) -> list[tuple[float, float]]: ...

    # -- parts
    async def record_part(self, part: PartRecord) -> None: ...

    async def parts(self, export_id: str) -> list[PartRecord]: ...

    # -- refresh tokens
    async def refresh_token(self, merchant_id: str) -> tuple[str, datetime | None] | None: ...

    async def save_refresh_token(
        self, merchant_id: str, token: str, expires_at: datetime | None
    ) -> None: ...

    # -- processes and claims (several processes on one state)
    async def register_process(self, process: ProcessRecord) -> None: ...

    async def renew_process(self, process_id: str, lease_until: datetime) -> bool: ...

    async def end_process(self, process_id: str) -> None: ...

    async def processes(self) -> list[ProcessRecord]: ...

    async def live_processes(self, machine: str | None = None) -> list[ProcessRecord]: ...

    async def claim_chunk(self, chunk_id: int, owner: str) -> ClaimResult: ...

    async def claim_chunks(self, chunk_ids: Sequence[int], owner: str) -> list[ClaimResult]: ...

    async def holds_chunk(self, chunk_id: int, owner: str) -> bool: ...

    async def held_parts(
        self, chunk_id: int, owner: str, export_id: str
    ) -> list[PartRecord] | None: ...

    async def export_done_held(
        self,
        export_id: str,
        available_until: datetime | None,
        urls: Sequence[str],
        slot_id: int | None,
        chunk_id: int,
        owner: str,
    ) -> tuple[ExportRecord, list[PartRecord] | None]: ...

    async def release_chunk(self, chunk_id: int, owner: str) -> None: ...

    # -- export slots and refresh locks shared by the processes
    async def take_slot(
        self,
        host: str,
        owner: str,
        merchant_id: str,
        waiter_id: int | None,
        maximum: int,
        chunk_id: int | None = None,
    ) -> SlotTry: ...

    async def reset_hosts(self) -> None: ...

    async def leave_slot_queue(self, waiter_id: int) -> None: ...

    async def release_slot(self, slot_id: int) -> None: ...

    async def slot_busy(self, host: str, until: datetime, maximum: int, limit: int) -> int: ...

    async def slot_went_through(self, host: str, maximum: int) -> int: ...

    async def lock_token(self, merchant_id: str, owner: str) -> ProcessRecord | None: ...

    # -- Clover's app limits shared by the processes on a host, and what wakes them
    async def join_host(self, host: str, owner: str, maximum: int) -> HostView: ...

    async def leave_host(self, host: str, owner: str) -> None: ...

    async def host_view(self, host: str) -> HostView: ...

    async def host_version(self, host: str) -> int: ...

    async def pause_app(self, host: str, until: datetime, maximum: int) -> datetime: ...

    def host_signals(self) -> HostSignals:
        """How this process learns promptly of changes other processes make to a host."""
        ...

    async def unlock_token(self, merchant_id: str, owner: str) -> None: ...

    # -- what `status` shows
    async def snapshot(self, now: datetime | None = None) -> Snapshot: ...
