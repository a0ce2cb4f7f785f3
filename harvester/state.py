"""The harvest state's shape: its records, and `StateStore`, what every backend offers.

The harvest (scheduler, downloader, tokens) and the CLI words (`backfill`, `run`) use a
store only through `StateStore`; `store.Store` is the SQLite backend. `status` and `plan`
read a `Snapshot` (`store.read_snapshot`, read-only, while a run may be writing).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from types import TracebackType
from typing import Protocol, Self

from harvester.chunks import ExportType, TimeRange


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
class Snapshot:
    """What `harvester status` shows. Never holds a token."""

    chunks: list[ChunkRecord]
    running: list[ExportRecord]  # RUNNING/DONE current exports of chunks not yet complete


class StateStore(Protocol):
    """Durable harvest state: every write has landed when its coroutine returns.

    Each method's contract is the one `store.Store` documents.
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

    async def covered(self, merchant_id: str, type: ExportType) -> list[TimeRange]: ...

    async def chunks(
        self,
        merchant_id: str | None = None,
        type: ExportType | None = None,
        statuses: Collection[ChunkStatus] | None = None,
    ) -> list[ChunkRecord]: ...

    async def get_chunk(self, chunk_id: int) -> ChunkRecord: ...

    async def reset_for_reharvest(self, chunk_id: int) -> ChunkRecord: ...

    async def complete_chunk(self, chunk_id: int) -> None: ...

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
    ) -> None: ...

    async def end_export(self, export_id: str, state: ExportState, error: str) -> None: ...

    async def get_export(self, export_id: str) -> ExportRecord | None: ...

    # -- parts
    async def record_part(self, part: PartRecord) -> None: ...

    async def parts(self, export_id: str) -> list[PartRecord]: ...

    # -- refresh tokens
    async def refresh_token(self, merchant_id: str) -> tuple[str, datetime | None] | None: ...

    async def save_refresh_token(
        self, merchant_id: str, token: str, expires_at: datetime | None
    ) -> None: ...
