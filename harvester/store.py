"""Durable harvest state in SQLite: chunks, their exports, saved parts, refresh tokens.

The harvester runs unattended, can be killed at any instant, and resumes from this file:
it must lose nothing, duplicate nothing, and never forget an export it created (each one
holds a scarce server slot). So every write is a single transaction, committed in WAL
mode with synchronous=FULL before its coroutine returns.

One connection lives on one dedicated worker thread: SQLite never blocks the event loop
and never sees two threads. `read_snapshot` is the separate, read-only way in for
`harvester status`, safe while a run is writing.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from harvester.chunks import EPOCH, ONE_MS, ExportType, TimeRange
from harvester.clock import Clock
from harvester.errors import StoreError
from harvester.state import (
    ChunkRecord,
    ChunkStatus,
    ExportRecord,
    ExportState,
    PartRecord,
    Snapshot,
)

T = TypeVar("T")


# An export in one of these states can still deliver files: a chunk keeps pointing at it.
_LIVE_EXPORT_STATES = (ExportState.RUNNING, ExportState.DONE)
_ENDED_EXPORT_STATES = frozenset({ExportState.FAILED, ExportState.EXPIRED, ExportState.LOST})


# Applied in order on open, each in the transaction that raises PRAGMA user_version to its
# 1-based position. Append new migrations; never edit one that has shipped.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE chunks (
            id INTEGER PRIMARY KEY,
            merchant_id TEXT NOT NULL,
            type TEXT NOT NULL CHECK (type IN ('PAYMENTS', 'ORDERS')),
            start_ms INTEGER NOT NULL,
            end_ms INTEGER NOT NULL,
            status TEXT NOT NULL
                CHECK (status IN ('pending', 'exporting', 'downloading', 'complete', 'failed')),
            export_id TEXT REFERENCES exports (id),
            exports_created INTEGER NOT NULL DEFAULT 0,
            completed_at_ms INTEGER,
            last_error TEXT,
            last_error_at_ms INTEGER,
            updated_at_ms INTEGER NOT NULL,
            UNIQUE (merchant_id, type, start_ms, end_ms),
            CHECK (start_ms < end_ms)
        )
        """,
        """
        CREATE TABLE exports (
            id TEXT PRIMARY KEY,
            chunk_id INTEGER NOT NULL REFERENCES chunks (id),
            state TEXT NOT NULL
                CHECK (state IN ('running', 'done', 'failed', 'expired', 'lost')),
            status TEXT NOT NULL,
            percent REAL NOT NULL,
            created_at_ms INTEGER NOT NULL,
            updated_at_ms INTEGER NOT NULL,
            available_until_ms INTEGER,
            urls TEXT NOT NULL DEFAULT '[]'
        )
        """,
        "CREATE INDEX exports_by_chunk ON exports (chunk_id)",
        """
        CREATE TABLE parts (
            export_id TEXT NOT NULL REFERENCES exports (id),
            part_index INTEGER NOT NULL CHECK (part_index >= 1),
            url_index INTEGER NOT NULL CHECK (url_index >= 0),
            size INTEGER NOT NULL CHECK (size >= 0),
            sha256 TEXT NOT NULL,
            objects INTEGER NOT NULL CHECK (objects >= 0),
            PRIMARY KEY (export_id, part_index)
        )
        """,
        """
        CREATE TABLE refresh_tokens (
            merchant_id TEXT PRIMARY KEY,
            token TEXT NOT NULL,
            expires_at_ms INTEGER,
            updated_at_ms INTEGER NOT NULL
        )
        """,
    ),
    # Issue 7: creates whose answer was lost (orphans), counted per chunk.
    ("ALTER TABLE chunks ADD COLUMN lost_creates INTEGER NOT NULL DEFAULT 0",),
)

SCHEMA_VERSION = len(MIGRATIONS)  # what PRAGMA user_version says once open


def _to_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("the store keeps UTC instants: got a naive datetime")
    return (moment - EPOCH) // ONE_MS


def _from_ms(ms: int) -> datetime:
    return EPOCH + ms * ONE_MS


def _maybe_from_ms(ms: int | None) -> datetime | None:
    return None if ms is None else _from_ms(ms)


def _chunk_from_row(row: sqlite3.Row) -> ChunkRecord:
    return ChunkRecord(
        id=row["id"],
        merchant_id=row["merchant_id"],
        type=ExportType(row["type"]),
        range=TimeRange.from_ms(row["start_ms"], row["end_ms"]),
        status=ChunkStatus(row["status"]),
        export_id=row["export_id"],
        exports_created=row["exports_created"],
        completed_at=_maybe_from_ms(row["completed_at_ms"]),
        last_error=row["last_error"],
        last_error_at=_maybe_from_ms(row["last_error_at_ms"]),
        updated_at=_from_ms(row["updated_at_ms"]),
        lost_creates=row["lost_creates"],
    )


def _export_from_row(row: sqlite3.Row) -> ExportRecord:
    return ExportRecord(
        id=row["id"],
        chunk_id=row["chunk_id"],
        state=ExportState(row["state"]),
        status=row["status"],
        percent=row["percent"],
        created_at=_from_ms(row["created_at_ms"]),
        updated_at=_from_ms(row["updated_at_ms"]),
        available_until=_maybe_from_ms(row["available_until_ms"]),
        urls=tuple(json.loads(row["urls"])),
    )


def _part_from_row(row: sqlite3.Row) -> PartRecord:
    return PartRecord(
        export_id=row["export_id"],
        index=row["part_index"],
        url_index=row["url_index"],
        size=row["size"],
        sha256=row["sha256"],
        objects=row["objects"],
    )


def _migrate(
    connection: sqlite3.Connection, path: Path, migrations: Sequence[tuple[str, ...]]
) -> None:
    connection.execute("BEGIN IMMEDIATE")
    try:
        # Read under the write lock, so two processes opening a new file cannot both migrate.
        version: int = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > len(migrations):
            raise StoreError(
                f"state store {path}: schema version {version} is newer than this harvester "
                f"knows ({len(migrations)}); use a newer harvester"
            )
        for statements in migrations[version:]:
            for statement in statements:
                connection.execute(statement)
        # PRAGMA takes no bound parameters; the value is our own integer.
        connection.execute(f"PRAGMA user_version = {len(migrations)}")
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def _connect(path: Path, migrations: Sequence[tuple[str, ...]]) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"state store {path}: cannot create its folder: {exc.strerror}") from exc
    try:
        # isolation_level=None: transactions are begun and committed explicitly, one per call.
        connection = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"state store {path}: cannot open: {exc}") from exc
    try:
        connection.row_factory = sqlite3.Row
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(f"state store {path}: cannot switch to WAL mode (got {mode!r})")
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute("PRAGMA foreign_keys = ON")
        _migrate(connection, path, migrations)
    except sqlite3.Error as exc:
        connection.close()
        raise StoreError(f"state store {path}: cannot open: {exc}") from exc
    except BaseException:
        connection.close()
        raise
    return connection


class Store:
    """The harvest state. Open with `await Store.open(path, clock)`; use as `async with`."""

    def __init__(
        self,
        path: Path,
        clock: Clock,
        executor: ThreadPoolExecutor,
        connection: sqlite3.Connection,
    ) -> None:
        self._path = path
        self._clock = clock
        self._executor = executor
        self._connection = connection
        self._closed = False

    @classmethod
    async def open(
        cls, path: Path, clock: Clock, migrations: Sequence[tuple[str, ...]] = MIGRATIONS
    ) -> Store:
        """Open (creating and migrating if needed) the store at `path`.

        `migrations` are the schema's, in order (tests add one to see it applied).
        """
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="harvester-store")
        try:
            connection = await asyncio.get_running_loop().run_in_executor(
                executor, _connect, path, migrations
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(path, clock, executor, connection)

    async def close(self) -> None:
        """Finish every call already made, then close the connection and its thread."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._connection.close)
        except sqlite3.Error as exc:
            raise StoreError(f"state store {self._path}: close failed: {exc}") from exc
        finally:
            await asyncio.to_thread(self._executor.shutdown, wait=True)

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"Store({str(self._path)!r})"

    # -- plumbing -----------------------------------------------------------------------

    async def _run(self, operation: str, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreError(f"state store {self._path}: {operation} after close")
        future = asyncio.get_running_loop().run_in_executor(
            self._executor, self._guarded, operation, work
        )
        # Once asked for, a write lands even if the caller is cancelled meanwhile: it often
        # records something that already happened on the server (an export was created).
        return await asyncio.shield(future)

    def _guarded(self, operation: str, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return work(self._connection)
        except sqlite3.Error as exc:
            # sqlite3's messages name tables and columns, never bound values (tokens).
            raise StoreError(f"state store {self._path}: {operation} failed: {exc}") from exc

    async def _write(self, operation: str, work: Callable[[sqlite3.Connection], T]) -> T:
        def transaction(connection: sqlite3.Connection) -> T:
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = work(connection)
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            return result

        return await self._run(operation, transaction)

    def _now_ms(self) -> int:
        return _to_ms(self._clock.now())

    def _missing(self, what: str) -> StoreError:
        return StoreError(f"state store {self._path}: no {what}")

    def _chunk_row(self, connection: sqlite3.Connection, chunk_id: int) -> sqlite3.Row:
        row: sqlite3.Row | None = connection.execute(
            "SELECT * FROM chunks WHERE id = ?", (chunk_id,)
        ).fetchone()
        if row is None:
            raise self._missing(f"chunk {chunk_id}")
        return row

    def _export_row(self, connection: sqlite3.Connection, export_id: str) -> sqlite3.Row:
        row: sqlite3.Row | None = connection.execute(
            "SELECT * FROM exports WHERE id = ?", (export_id,)
        ).fetchone()
        if row is None:
            raise self._missing(f"export {export_id}")
        return row

    # -- chunks -------------------------------------------------------------------------

    async def add_chunks(
        self, merchant_id: str, type: ExportType, ranges: Sequence[TimeRange]
    ) -> list[ChunkRecord]:
        """One row per range, in the order given: existing ones unchanged, new ones PENDING.

        Refuses the whole batch if a new range overlaps a known chunk of the same merchant
        and type with other bounds: covered intervals never overlap.
        """
        wanted = list(ranges)
        now_ms = self._now_ms()

        def work(connection: sqlite3.Connection) -> list[ChunkRecord]:
            records = []
            for wanted_range in wanted:
                key = (merchant_id, type.value, wanted_range.start_ms, wanted_range.end_ms)
                row = connection.execute(
                    "SELECT * FROM chunks"
                    " WHERE merchant_id = ? AND type = ? AND start_ms = ? AND end_ms = ?",
                    key,
                ).fetchone()
                if row is None:
                    clash = connection.execute(
                        "SELECT start_ms, end_ms FROM chunks"
                        " WHERE merchant_id = ? AND type = ? AND start_ms < ? AND end_ms > ?"
                        " LIMIT 1",
                        (merchant_id, type.value, wanted_range.end_ms, wanted_range.start_ms),
                    ).fetchone()
                    if clash is not None:
                        existing = TimeRange.from_ms(clash["start_ms"], clash["end_ms"])
                        raise StoreError(
                            f"state store {self._path}: chunk {wanted_range} of merchant "
                            f"{merchant_id} {type.value} overlaps the known chunk {existing}"
                        )
                    cursor = connection.execute(
                        "INSERT INTO chunks"
                        " (merchant_id, type, start_ms, end_ms, status, updated_at_ms)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (*key, ChunkStatus.PENDING.value, now_ms),
                    )
                    row = self._chunk_row(connection, cursor.lastrowid or 0)
                records.append(_chunk_from_row(row))
            return records

        return await self._write("add_chunks", work)

    async def covered(self, merchant_id: str, type: ExportType) -> list[TimeRange]:
        """Ranges of this merchant and type whose folder has been put in place, sorted."""

        def work(connection: sqlite3.Connection) -> list[TimeRange]:
            rows = connection.execute(
                "SELECT start_ms, end_ms FROM chunks"
                " WHERE merchant_id = ? AND type = ? AND completed_at_ms IS NOT NULL"
                " ORDER BY start_ms",
                (merchant_id, type.value),
            ).fetchall()
            return [TimeRange.from_ms(row["start_ms"], row["end_ms"]) for row in rows]

        return await self._run("covered", work)

    async def chunks(
        self,
        merchant_id: str | None = None,
        type: ExportType | None = None,
        statuses: Collection[ChunkStatus] | None = None,
    ) -> list[ChunkRecord]:
        """Chunks matching every filter given, sorted by merchant, type, start."""
        parameters = {
            "merchant": merchant_id,
            "type": None if type is None else type.value,
            "statuses": None if statuses is None else json.dumps([s.value for s in statuses]),
        }

        def work(connection: sqlite3.Connection) -> list[ChunkRecord]:
            rows = connection.execute(
                "SELECT * FROM chunks"
                " WHERE (:merchant IS NULL OR merchant_id = :merchant)"
                " AND (:type IS NULL OR type = :type)"
                " AND (:statuses IS NULL OR status IN (SELECT value FROM json_each(:statuses)))"
                " ORDER BY merchant_id, type, start_ms",
                parameters,
            ).fetchall()
            return [_chunk_from_row(row) for row in rows]

        return await self._run("chunks", work)

    async def get_chunk(self, chunk_id: int) -> ChunkRecord:
        """The chunk with this id (StoreError if there is none)."""
        return await self._run(
            "get_chunk", lambda connection: _chunk_from_row(self._chunk_row(connection, chunk_id))
        )

    async def reset_for_reharvest(self, chunk_id: int) -> ChunkRecord:
        """Lookback: a COMPLETE chunk is due again, yet stays covered (completed_at kept).

        Its old folder stays in place until the new harvest replaces it. A chunk in any
        other status is already due and is returned unchanged.
        """
        now_ms = self._now_ms()

        def work(connection: sqlite3.Connection) -> ChunkRecord:
            connection.execute(
                "UPDATE chunks SET status = ?, export_id = NULL, updated_at_ms = ?"
                " WHERE id = ? AND status = ?",
                (ChunkStatus.PENDING.value, now_ms, chunk_id, ChunkStatus.COMPLETE.value),
            )
            return _chunk_from_row(self._chunk_row(connection, chunk_id))

        return await self._write("reset_for_reharvest", work)

    async def complete_chunk(self, chunk_id: int) -> None:
        """The chunk's folder is in place: COMPLETE, covered from now, errors cleared."""
        now_ms = self._now_ms()

        def work(connection: sqlite3.Connection) -> None:
            cursor = connection.execute(
                "UPDATE chunks SET status = ?, completed_at_ms = ?, last_error = NULL,"
                " last_error_at_ms = NULL, updated_at_ms = ? WHERE id = ?",
                (ChunkStatus.COMPLETE.value, now_ms, now_ms, chunk_id),
            )
            if cursor.rowcount == 0:
                raise self._missing(f"chunk {chunk_id}")

        await self._write("complete_chunk", work)

    async def fail_chunk(self, chunk_id: int, error: str) -> None:
        """Give up on the chunk for this run.

        It keeps an export that is still RUNNING or DONE, so the next run re-attaches to it
        instead of spending a new server slot.
        """
        now_ms = self._now_ms()

        def work(connection: sqlite3.Connection) -> None:
            cursor = connection.execute(
                "UPDATE chunks SET status = :failed, last_error = :error,"
                " last_error_at_ms = :now, updated_at_ms = :now,"
                " export_id = CASE WHEN (SELECT state FROM exports WHERE id = chunks.export_id)"
                " IN (:running, :done) THEN export_id ELSE NULL END"
                " WHERE id = :chunk_id",
                {
                    "failed": ChunkStatus.FAILED.value,
                    "error": error,
                    "now": now_ms,
                    "running": ExportState.RUNNING.value,
                    "done": ExportState.DONE.value,
                    "chunk_id": chunk_id,
                },
            )
            if cursor.rowcount == 0:
                raise self._missing(f"chunk {chunk_id}")

        await self._write("fail_chunk", work)

    async def note_lost_create(self, chunk_id: int) -> None:
        """A create for the chunk lost its answer: an export may exist that we know no id of."""

        def work(connection: sqlite3.Connection) -> None:
            cursor = connection.execute(
                "UPDATE chunks SET lost_creates = lost_creates + 1 WHERE id = ?", (chunk_id,)
            )
            if cursor.rowcount == 0:
                raise self._missing(f"chunk {chunk_id}")

        await self._write("note_lost_create", work)

    async def start_run(self) -> None:
        """A new run retries what the last one gave up on.

        FAILED chunks go back to PENDING, or straight to EXPORTING / DOWNLOADING when their
        export is still RUNNING / DONE.
        """
        now_ms = self._now_ms()

        def work(connection: sqlite3.Connection) -> None:
            # SET expressions all see the row as it was, so export_id below is the old one.
            connection.execute(
                "UPDATE chunks SET"
                " status = CASE (SELECT state FROM exports WHERE id = chunks.export_id)"
                "   WHEN :running THEN :exporting WHEN :done THEN :downloading"
                "   ELSE :pending END,"
                " export_id = CASE WHEN (SELECT state FROM exports WHERE id = chunks.export_id)"
                "   IN (:running, :done) THEN export_id ELSE NULL END,"
                " updated_at_ms = :now"
                " WHERE status = :failed",
                {
                    "running": ExportState.RUNNING.value,
                    "done": ExportState.DONE.value,
                    "exporting": ChunkStatus.EXPORTING.value,
                    "downloading": ChunkStatus.DOWNLOADING.value,
                    "pending": ChunkStatus.PENDING.value,
                    "failed": ChunkStatus.FAILED.value,
                    "now": now_ms,
                },
            )

        await self._write("start_run", work)

    # -- exports ------------------------------------------------------------------------

    async def record_export(
        self, chunk_id: int, export_id: str, status: str, percent: float
    ) -> ExportRecord:
        """Remember an export the moment Clover created it, before the first poll.

        The export is RUNNING and becomes the chunk's current one; the chunk is EXPORTING.
        Recording the same export for the same chunk again changes nothing.
        """
        now_ms = self._now_ms()

        def work(connection: sqlite3.Connection) -> ExportRecord:
            existing = connection.execute(
                "SELECT * FROM exports WHERE id = ?", (export_id,)
            ).fetchone()
            if existing is not None:
                if existing["chunk_id"] != chunk_id:
                    raise StoreError(
                        f"state store {self._path}: export {export_id} already belongs to "
                        f"chunk {existing['chunk_id']}, not {chunk_id}"
                    )
                return _export_from_row(existing)
            self._chunk_row(connection, chunk_id)
            connection.execute(
                "INSERT INTO exports"
                " (id, chunk_id, state, status, percent, created_at_ms, updated_at_ms)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (export_id, chunk_id, ExportState.RUNNING.value, status, percent, now_ms, now_ms),
            )
            connection.execute(
                "UPDATE chunks SET export_id = ?, status = ?,"
                " exports_created = exports_created + 1, updated_at_ms = ? WHERE id = ?",
                (export_id, ChunkStatus.EXPORTING.value, now_ms, chunk_id),
            )
            return _export_from_row(self._export_row(connection, export_id))

        return await self._write("record_export", work)

    async def update_export(self, export_id: str, status: str, percent: float) -> None:
        """Store what the latest poll said."""
        now_ms = self._now_ms()

        def work(connection: sqlite3.Connection) -> None:
            cursor = connection.execute(
                "UPDATE exports SET status = ?, percent = ?, updated_at_ms = ? WHERE id = ?",
                (status, percent, now_ms, export_id),
            )
            if cursor.rowcount == 0:
                raise self._missing(f"export {export_id}")

        await self._write("update_export", work)

    async def export_done(
        self, export_id: str, available_until: datetime | None, urls: Sequence[str]
    ) -> None:
        """Clover says DONE: keep its file URLs; its chunk moves on to DOWNLOADING."""
        now_ms = self._now_ms()
        until_ms = None if available_until is None else _to_ms(available_until)
        urls_json = json.dumps(list(urls))

        def work(connection: sqlite3.Connection) -> None:
            cursor = connection.execute(
                "UPDATE exports SET state = ?, status = 'DONE', percent = 100.0,"
                " available_until_ms = ?, urls = ?, updated_at_ms = ? WHERE id = ?",
                (ExportState.DONE.value, until_ms, urls_json, now_ms, export_id),
            )
            if cursor.rowcount == 0:
                raise self._missing(f"export {export_id}")
            connection.execute(
                "UPDATE chunks SET status = ?, updated_at_ms = ?"
                " WHERE export_id = ? AND status = ?",
                (ChunkStatus.DOWNLOADING.value, now_ms, export_id, ChunkStatus.EXPORTING.value),
            )

        await self._write("export_done", work)

    async def end_export(self, export_id: str, state: ExportState, error: str) -> None:
        """The export will deliver nothing (more): its chunk drops it and is due again.

        `state` is FAILED, EXPIRED or LOST. A chunk FAILED for this run stays FAILED; a
        COMPLETE chunk is not touched (its folder is in place already).
        """
        if state not in _ENDED_EXPORT_STATES:
            raise ValueError(f"end_export needs an ending state, not {state}")
        now_ms = self._now_ms()

        def work(connection: sqlite3.Connection) -> None:
            cursor = connection.execute(
                "UPDATE exports SET state = ?, updated_at_ms = ? WHERE id = ?",
                (state.value, now_ms, export_id),
            )
            if cursor.rowcount == 0:
                raise self._missing(f"export {export_id}")
            connection.execute(
                "UPDATE chunks SET export_id = NULL,"
                " status = CASE status WHEN :failed THEN :failed ELSE :pending END,"
                " last_error = :error, last_error_at_ms = :now, updated_at_ms = :now"
                " WHERE export_id = :export_id AND status != :complete",
                {
                    "failed": ChunkStatus.FAILED.value,
                    "pending": ChunkStatus.PENDING.value,
                    "complete": ChunkStatus.COMPLETE.value,
                    "error": error,
                    "now": now_ms,
                    "export_id": export_id,
                },
            )

        await self._write("end_export", work)

    async def get_export(self, export_id: str) -> ExportRecord | None:
        """The export with this id, if known."""

        def work(connection: sqlite3.Connection) -> ExportRecord | None:
            row = connection.execute("SELECT * FROM exports WHERE id = ?", (export_id,)).fetchone()
            return None if row is None else _export_from_row(row)

        return await self._run("get_export", work)

    # -- parts --------------------------------------------------------------------------

    async def record_part(self, part: PartRecord) -> None:
        """A part is saved. Recording the same part number again overwrites its entry."""

        def work(connection: sqlite3.Connection) -> None:
            connection.execute(
                "INSERT INTO parts (export_id, part_index, url_index, size, sha256, objects)"
                " VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (export_id, part_index) DO UPDATE SET"
                " url_index = excluded.url_index, size = excluded.size,"
                " sha256 = excluded.sha256, objects = excluded.objects",
                (part.export_id, part.index, part.url_index, part.size, part.sha256, part.objects),
            )

        await self._write("record_part", work)

    async def parts(self, export_id: str) -> list[PartRecord]:
        """The saved parts of an export, by part number."""

        def work(connection: sqlite3.Connection) -> list[PartRecord]:
            rows = connection.execute(
                "SELECT * FROM parts WHERE export_id = ? ORDER BY part_index", (export_id,)
            ).fetchall()
            return [_part_from_row(row) for row in rows]

        return await self._run("parts", work)

    # -- tokens -------------------------------------------------------------------------

    async def refresh_token(self, merchant_id: str) -> tuple[str, datetime | None] | None:
        """The merchant's latest refresh token and its expiry, if one was saved."""

        def work(connection: sqlite3.Connection) -> tuple[str, datetime | None] | None:
            row = connection.execute(
                "SELECT token, expires_at_ms FROM refresh_tokens WHERE merchant_id = ?",
                (merchant_id,),
            ).fetchone()
            return None if row is None else (row["token"], _maybe_from_ms(row["expires_at_ms"]))

        return await self._run("refresh_token", work)

    async def save_refresh_token(
        self, merchant_id: str, token: str, expires_at: datetime | None
    ) -> None:
        """Durably replace the merchant's refresh token (they are single-use)."""
        now_ms = self._now_ms()
        expires_ms = None if expires_at is None else _to_ms(expires_at)

        def work(connection: sqlite3.Connection) -> None:
            connection.execute(
                "INSERT INTO refresh_tokens (merchant_id, token, expires_at_ms, updated_at_ms)"
                " VALUES (?, ?, ?, ?)"
                " ON CONFLICT (merchant_id) DO UPDATE SET token = excluded.token,"
                " expires_at_ms = excluded.expires_at_ms, updated_at_ms = excluded.updated_at_ms",
                (merchant_id, token, expires_ms, now_ms),
            )

        await self._write("save_refresh_token", work)


def read_snapshot(path: Path) -> Snapshot:
    """Read the state for `harvester status`, read-only, while a run may be writing.

    Never creates nor migrates the file. Synchronous: the CLI calls it outside any loop.
    """
    if not path.is_file():
        raise StoreError(f"state store {path}: no such file")
    try:
        connection = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None
        )
    except sqlite3.Error as exc:
        raise StoreError(f"state store {path}: cannot open read-only: {exc}") from exc
    try:
        connection.row_factory = sqlite3.Row
        # One read transaction: chunks and exports come from the same committed state.
        connection.execute("BEGIN")
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version != len(MIGRATIONS):
            raise StoreError(
                f"state store {path}: schema version {version}, this harvester reads "
                f"{len(MIGRATIONS)}; run the harvester once to bring it up to date"
            )
        chunk_rows = connection.execute(
            "SELECT * FROM chunks ORDER BY merchant_id, type, start_ms"
        ).fetchall()
        export_rows = connection.execute(
            "SELECT exports.* FROM exports JOIN chunks ON chunks.export_id = exports.id"
            " WHERE exports.state IN (?, ?) AND chunks.status != ?"
            " ORDER BY exports.created_at_ms, exports.rowid",
            (*(state.value for state in _LIVE_EXPORT_STATES), ChunkStatus.COMPLETE.value),
        ).fetchall()
        connection.execute("COMMIT")
    except sqlite3.Error as exc:
        raise StoreError(f"state store {path}: cannot read: {exc}") from exc
    finally:
        connection.close()
    return Snapshot(
        chunks=[_chunk_from_row(row) for row in chunk_rows],
        running=[_export_from_row(row) for row in export_rows],
    )


def read_export_durations(path: Path, latest: int = 1000) -> list[float]:
    """Seconds from creation to DONE of the latest `latest` DONE exports; read-only, for `plan`.

    An export picked up again after a crash counts the time nobody watched it: rare, and
    the p50 barely moves. No file yet: none seen.
    """
    if not path.is_file():
        return []
    try:
        connection = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None
        )
    except sqlite3.Error as exc:
        raise StoreError(f"state store {path}: cannot open read-only: {exc}") from exc
    try:
        rows = connection.execute(
            "SELECT updated_at_ms - created_at_ms FROM exports WHERE state = ?"
            " ORDER BY created_at_ms DESC LIMIT ?",
            (ExportState.DONE.value, latest),
        ).fetchall()
    except sqlite3.Error as exc:
        raise StoreError(f"state store {path}: cannot read: {exc}") from exc
    finally:
        connection.close()
    return [row[0] / 1000 for row in rows]
