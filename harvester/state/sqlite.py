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
import os
import sqlite3
import stat
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from harvester.clock import Clock
from harvester.clover.chunks import EPOCH, ONE_MS, ExportType, TimeRange
from harvester.errors import ChunkOverlap, StoreError
from harvester.logs import get_logger
from harvester.state.records import (
    ChunkRecord,
    ChunkStatus,
    ClaimResult,
    ExportRecord,
    ExportState,
    HeldChunk,
    PartRecord,
    ProcessRecord,
    SlotTry,
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
    (
        # Processes sharing the state, each with a lease it renews while it lives.
        """
        CREATE TABLE processes (
            id TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            machine TEXT NOT NULL,
            command TEXT NOT NULL,
            started_at_ms INTEGER NOT NULL,
            lease_until_ms INTEGER NOT NULL
        )
        """,
        # A chunk is worked on by the process holding its claim, while that one's lease runs.
        """
        CREATE TABLE claims (
            chunk_id INTEGER PRIMARY KEY REFERENCES chunks (id),
            owner TEXT NOT NULL REFERENCES processes (id),
            claimed_at_ms INTEGER NOT NULL
        )
        """,
        "CREATE INDEX claims_by_owner ON claims (owner)",
    ),
    (
        # One Clover host's export slots, shared by every process: the adaptive limit, the
        # busy backoff, and the order of grants (fairness between merchants).
        """
        CREATE TABLE hosts (
            host TEXT PRIMARY KEY,
            slot_limit INTEGER NOT NULL CHECK (slot_limit >= 1),
            run INTEGER NOT NULL DEFAULT 0,
            grants INTEGER NOT NULL DEFAULT 0,
            busy_until_ms INTEGER
        )
        """,
        """
        CREATE TABLE slots (
            id INTEGER PRIMARY KEY,
            host TEXT NOT NULL,
            owner TEXT NOT NULL REFERENCES processes (id),
            merchant_id TEXT NOT NULL,
            granted_at_ms INTEGER NOT NULL
        )
        """,
        "CREATE INDEX slots_by_host ON slots (host)",
        """
        CREATE TABLE slot_waiters (
            id INTEGER PRIMARY KEY,
            host TEXT NOT NULL,
            owner TEXT NOT NULL REFERENCES processes (id),
            merchant_id TEXT NOT NULL,
            since_ms INTEGER NOT NULL
        )
        """,
        """
        CREATE TABLE served (
            host TEXT NOT NULL,
            merchant_id TEXT NOT NULL,
            last_grant INTEGER NOT NULL,
            PRIMARY KEY (host, merchant_id)
        )
        """,
        # One refresh per merchant at a time, whichever process does it.
        """
        CREATE TABLE token_locks (
            merchant_id TEXT PRIMARY KEY,
            owner TEXT NOT NULL REFERENCES processes (id),
            since_ms INTEGER NOT NULL
        )
        """,
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)  # what PRAGMA user_version says once open

_BUSY_TIMEOUT_S = 30.0
# Opening races other processes opening the same new file: switching to WAL is not covered
# by the busy timeout, so a "locked" answer on open is tried again after a pause.
_OPEN_ATTEMPTS = 12
_OPEN_PAUSE_S = 0.05


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


def _process_from_row(row: sqlite3.Row) -> ProcessRecord:
    return ProcessRecord(
        id=row["id"],
        host=row["host"],
        pid=row["pid"],
        machine=row["machine"],
        command=row["command"],
        started_at=_from_ms(row["started_at_ms"]),
        lease_until=_from_ms(row["lease_until_ms"]),
    )


def _next_in_line(connection: sqlite3.Connection, host: str, free: int) -> set[int]:
    """The waiters the next `free` grants would go to: round-robin across merchants."""
    served = {
        row["merchant_id"]: row["last_grant"]
        for row in connection.execute(
            "SELECT merchant_id, last_grant FROM served WHERE host = ?", (host,)
        )
    }
    queues: dict[str, list[tuple[int, int]]] = {}
    for row in connection.execute(
        "SELECT id, merchant_id, since_ms FROM slot_waiters WHERE host = ? ORDER BY since_ms, id",
        (host,),
    ):
        queues.setdefault(row["merchant_id"], []).append((row["since_ms"], row["id"]))
    chosen: set[int] = set()
    order = max(served.values(), default=0)
    while queues and len(chosen) < free:
        merchant = min(queues, key=lambda m: (served.get(m, 0), queues[m][0]))
        chosen.add(queues[merchant].pop(0)[1])
        if not queues[merchant]:
            del queues[merchant]
        order += 1
        served[merchant] = order
    return chosen


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


class _Locked(Exception):
    """Another process held the file while this one opened it: try again."""


def _is_locked(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


def _create_private(path: Path) -> None:
    """Create the state file (and its folder) readable by its owner only: it holds tokens.

    SQLite gives its -wal and -shm files the mode of the database file.
    """
    try:
        if not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"state store {path}: cannot create its folder: {exc.strerror}") from exc
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        _warn_if_readable(path)
    except OSError as exc:
        raise StoreError(f"state store {path}: cannot create: {exc.strerror}") from exc


def _warn_if_readable(path: Path) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return  # sqlite3 says what is wrong with it in a moment
    if mode & 0o077:
        get_logger().warning(
            "state.readable_by_others",
            path=str(path),
            mode=oct(mode),
            advice=f"it holds refresh tokens: chmod 600 {path}",
        )


def _check_integrity(connection: sqlite3.Connection, path: Path) -> None:
    """Refuse a damaged file before anything is written to it."""
    try:
        problems = [row[0] for row in connection.execute("PRAGMA quick_check(5)").fetchall()]
    except sqlite3.OperationalError:
        raise  # locked by another process, say: not damage
    except sqlite3.DatabaseError as exc:
        problems = [str(exc)]
    if problems != ["ok"]:
        raise StoreError(
            f"state store {path}: the file is damaged ({'; '.join(problems)}); "
            "nothing was written to it: restore it from a backup or move it aside"
        )


def _connect(path: Path, migrations: Sequence[tuple[str, ...]]) -> sqlite3.Connection:
    _create_private(path)
    try:
        # isolation_level=None: transactions are begun and committed explicitly, one per call.
        # timeout: SQLite's busy_timeout, how long a statement waits for another process's
        # write transaction before failing with "database is locked".
        connection = sqlite3.connect(path, isolation_level=None, timeout=_BUSY_TIMEOUT_S)
    except sqlite3.Error as exc:
        raise StoreError(f"state store {path}: cannot open: {exc}") from exc
    try:
        connection.row_factory = sqlite3.Row
        _check_integrity(connection, path)
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(f"state store {path}: cannot switch to WAL mode (got {mode!r})")
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute("PRAGMA foreign_keys = ON")
        _migrate(connection, path, migrations)
    except sqlite3.OperationalError as exc:
        connection.close()
        if _is_locked(exc):
            raise _Locked(str(exc)) from exc
        raise StoreError(f"state store {path}: cannot open: {exc}") from exc
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
            attempt = 0
            while True:
                try:
                    connection = await asyncio.get_running_loop().run_in_executor(
                        executor, _connect, path, migrations
                    )
                    break
                except _Locked:
                    attempt += 1
                    if attempt >= _OPEN_ATTEMPTS:
                        raise StoreError(
                            f"state store {path}: cannot open: still locked by another "
                            f"process after {attempt} attempts"
                        ) from None
                    await clock.sleep(_OPEN_PAUSE_S * min(attempt, 10))
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
                        raise ChunkOverlap(
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

    # -- processes and claims -----------------------------------------------------------

    async def register_process(self, process: ProcessRecord) -> None:
        """Enter (or re-enter) a process sharing the state, with its lease."""

        def work(connection: sqlite3.Connection) -> None:
            connection.execute(
                "INSERT INTO processes"
                " (id, host, pid, machine, command, started_at_ms, lease_until_ms)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET lease_until_ms = excluded.lease_until_ms",
                (
                    process.id,
                    process.host,
                    process.pid,
                    process.machine,
                    process.command,
                    _to_ms(process.started_at),
                    _to_ms(process.lease_until),
                ),
            )

        await self._write("register_process", work)

    async def renew_process(self, process_id: str, lease_until: datetime) -> bool:
        """Extend a process's lease. False if it had already ended or lapsed (then it is
        renewed all the same: claims nobody took meanwhile are its own again)."""
        now_ms = self._now_ms()
        until_ms = _to_ms(lease_until)

        def work(connection: sqlite3.Connection) -> bool:
            row = connection.execute(
                "SELECT lease_until_ms FROM processes WHERE id = ?", (process_id,)
            ).fetchone()
            if row is None:
                raise self._missing(f"process {process_id}")
            connection.execute(
                "UPDATE processes SET lease_until_ms = ? WHERE id = ?", (until_ms, process_id)
            )
            return bool(row["lease_until_ms"] > now_ms)

        return await self._write("renew_process", work)

    async def end_process(self, process_id: str) -> None:
        """The process is done (or known dead): its lease ends now, its claims, slots and
        locks go."""
        now_ms = self._now_ms()

        def work(connection: sqlite3.Connection) -> None:
            for table in ("claims", "slots", "slot_waiters", "token_locks"):
                connection.execute(
                    f"DELETE FROM {table} WHERE owner = ?",  # noqa: S608
                    (process_id,),
                )
            connection.execute(
                "UPDATE processes SET lease_until_ms = min(lease_until_ms, ?) WHERE id = ?",
                (now_ms, process_id),
            )

        await self._write("end_process", work)

    async def processes(self) -> list[ProcessRecord]:
        """Every process that ever shared the state, oldest first."""

        def work(connection: sqlite3.Connection) -> list[ProcessRecord]:
            rows = connection.execute(
                "SELECT * FROM processes ORDER BY started_at_ms, id"
            ).fetchall()
            return [_process_from_row(row) for row in rows]

        return await self._run("processes", work)

    async def claim_chunk(self, chunk_id: int, owner: str) -> ClaimResult:
        """Take the chunk for `owner` unless a process whose lease runs holds it.

        A claim of a process whose lease has ended passes to `owner`: the chunk is taken
        over as it stands (its export, its saved parts).
        """
        now_ms = self._now_ms()

        def work(connection: sqlite3.Connection) -> ClaimResult:
            chunk = _chunk_from_row(self._chunk_row(connection, chunk_id))
            holder = connection.execute(
                "SELECT processes.* FROM claims JOIN processes ON processes.id = claims.owner"
                " WHERE claims.chunk_id = ? AND claims.owner != ? AND lease_until_ms > ?",
                (chunk_id, owner, now_ms),
            ).fetchone()
            if holder is not None:
                return ClaimResult(chunk, _process_from_row(holder))
            connection.execute(
                "INSERT INTO claims (chunk_id, owner, claimed_at_ms) VALUES (?, ?, ?)"
                " ON CONFLICT (chunk_id) DO UPDATE SET owner = excluded.owner,"
                " claimed_at_ms = excluded.claimed_at_ms WHERE claims.owner != excluded.owner",
                (chunk_id, owner, now_ms),
            )
            return ClaimResult(chunk, None)

        return await self._write("claim_chunk", work)

    async def holds_chunk(self, chunk_id: int, owner: str) -> bool:
        """True while `owner` holds the chunk's claim (nobody took it over)."""

        def work(connection: sqlite3.Connection) -> bool:
            row = connection.execute(
                "SELECT 1 FROM claims WHERE chunk_id = ? AND owner = ?", (chunk_id, owner)
            ).fetchone()
            return row is not None

        return await self._run("holds_chunk", work)

    async def release_chunk(self, chunk_id: int, owner: str) -> None:
        """`owner` is done with the chunk (if it still held it)."""

        def work(connection: sqlite3.Connection) -> None:
            connection.execute(
                "DELETE FROM claims WHERE chunk_id = ? AND owner = ?", (chunk_id, owner)
            )

        await self._write("release_chunk", work)

    # -- shared export slots and refresh locks ---------------------------------------------

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
        now_ms = self._now_ms()

        def work(connection: sqlite3.Connection) -> SlotTry:
            connection.execute(
                "INSERT INTO hosts (host, slot_limit) VALUES (?, ?)"
                " ON CONFLICT (host) DO UPDATE SET slot_limit = min(slot_limit, ?)",
                (host, maximum, maximum),
            )
            for table in ("slots", "slot_waiters"):
                connection.execute(
                    f"DELETE FROM {table} WHERE host = ? AND owner NOT IN"  # noqa: S608
                    " (SELECT id FROM processes WHERE lease_until_ms > ?)",
                    (host, now_ms),
                )
            waiter = waiter_id
            if (
                waiter is None
                or not connection.execute(
                    "SELECT 1 FROM slot_waiters WHERE id = ?", (waiter,)
                ).fetchone()
            ):
                cursor = connection.execute(
                    "INSERT INTO slot_waiters (host, owner, merchant_id, since_ms)"
                    " VALUES (?, ?, ?, ?)",
                    (host, owner, merchant_id, now_ms),
                )
                waiter = cursor.lastrowid or 0
            state = connection.execute("SELECT * FROM hosts WHERE host = ?", (host,)).fetchone()
            limit: int = state["slot_limit"]
            busy_until_ms: int | None = state["busy_until_ms"]
            in_use: int = connection.execute(
                "SELECT count(*) FROM slots WHERE host = ?", (host,)
            ).fetchone()[0]
            busy_until = _maybe_from_ms(busy_until_ms)
            if (busy_until_ms is not None and busy_until_ms > now_ms) or in_use >= limit:
                return SlotTry(None, waiter, limit, in_use, busy_until)
            if waiter not in _next_in_line(connection, host, limit - in_use):
                return SlotTry(None, waiter, limit, in_use, busy_until)
            grants: int = state["grants"] + 1
            connection.execute("DELETE FROM slot_waiters WHERE id = ?", (waiter,))
            connection.execute("UPDATE hosts SET grants = ? WHERE host = ?", (grants, host))
            connection.execute(
                "INSERT INTO served (host, merchant_id, last_grant) VALUES (?, ?, ?)"
                " ON CONFLICT (host, merchant_id) DO UPDATE SET last_grant = excluded.last_grant",
                (host, merchant_id, grants),
            )
            cursor = connection.execute(
                "INSERT INTO slots (host, owner, merchant_id, granted_at_ms) VALUES (?, ?, ?, ?)",
                (host, owner, merchant_id, now_ms),
            )
            return SlotTry(cursor.lastrowid, waiter, limit, in_use + 1, busy_until)

        return await self._write("take_slot", work)

    async def reset_hosts(self) -> None:
        """Forget the shared limits and backoffs: for a process alone on the state, which
        starts from the configured limits as it would by itself."""

        def work(connection: sqlite3.Connection) -> None:
            connection.execute("DELETE FROM hosts")

        await self._write("reset_hosts", work)

    async def leave_slot_queue(self, waiter_id: int) -> None:
        """Stop waiting for a slot (the waiter was cancelled)."""

        def work(connection: sqlite3.Connection) -> None:
            connection.execute("DELETE FROM slot_waiters WHERE id = ?", (waiter_id,))

        await self._write("leave_slot_queue", work)

    async def release_slot(self, slot_id: int) -> None:
        """Give a slot back."""

        def work(connection: sqlite3.Connection) -> None:
            connection.execute("DELETE FROM slots WHERE id = ?", (slot_id,))

        await self._write("release_slot", work)

    async def slot_busy(self, host: str, until: datetime, maximum: int, limit: int) -> int:
        """A busy 503 on the host: the shared limit drops to `limit` (what the process that
        saw it now allows itself) if lower, and nothing is granted before `until` (a later
        end already set stays). Returns the new limit."""
        now_ms = self._now_ms()
        until_ms = _to_ms(until)

        def work(connection: sqlite3.Connection) -> int:
            connection.execute(
                "INSERT INTO hosts (host, slot_limit) VALUES (?, ?) ON CONFLICT (host) DO NOTHING",
                (host, maximum),
            )
            row = connection.execute(
                "UPDATE hosts SET slot_limit = max(1, min(slot_limit, ?)), run = 0,"
                " busy_until_ms = CASE WHEN busy_until_ms > max(?, ?) THEN busy_until_ms"
                " ELSE ? END WHERE host = ? RETURNING slot_limit",
                (limit, until_ms, now_ms, until_ms, host),
            ).fetchone()
            lowered: int = row["slot_limit"]
            return lowered

        return await self._write("slot_busy", work)

    async def slot_went_through(self, host: str, maximum: int) -> int:
        """An export was created on the host: the backoff ends; after as many in a row as
        the limit, the limit grows by one up to `maximum`. Returns the limit."""

        def work(connection: sqlite3.Connection) -> int:
            connection.execute(
                "INSERT INTO hosts (host, slot_limit) VALUES (?, ?) ON CONFLICT (host) DO NOTHING",
                (host, maximum),
            )
            row = connection.execute(
                "UPDATE hosts SET busy_until_ms = NULL,"
                " slot_limit = CASE WHEN run + 1 >= slot_limit THEN min(?, slot_limit + 1)"
                " ELSE slot_limit END,"
                " run = CASE WHEN run + 1 >= slot_limit THEN 0 ELSE run + 1 END"
                " WHERE host = ? RETURNING slot_limit",
                (maximum, host),
            ).fetchone()
            limit: int = row["slot_limit"]
            return limit

        return await self._write("slot_went_through", work)

    async def lock_token(self, merchant_id: str, owner: str) -> ProcessRecord | None:
        """Take the merchant's refresh lock: None once `owner` holds it, else the live
        process holding it. The lock of a process whose lease ended passes on."""
        now_ms = self._now_ms()

        def work(connection: sqlite3.Connection) -> ProcessRecord | None:
            holder = connection.execute(
                "SELECT processes.* FROM token_locks"
                " JOIN processes ON processes.id = token_locks.owner"
                " WHERE merchant_id = ? AND owner != ? AND lease_until_ms > ?",
                (merchant_id, owner, now_ms),
            ).fetchone()
            if holder is not None:
                return _process_from_row(holder)
            connection.execute(
                "INSERT INTO token_locks (merchant_id, owner, since_ms) VALUES (?, ?, ?)"
                " ON CONFLICT (merchant_id) DO UPDATE SET owner = excluded.owner,"
                " since_ms = excluded.since_ms",
                (merchant_id, owner, now_ms),
            )
            return None

        return await self._write("lock_token", work)

    async def unlock_token(self, merchant_id: str, owner: str) -> None:
        """Give the merchant's refresh lock back (if `owner` still holds it)."""

        def work(connection: sqlite3.Connection) -> None:
            connection.execute(
                "DELETE FROM token_locks WHERE merchant_id = ? AND owner = ?", (merchant_id, owner)
            )

        await self._write("unlock_token", work)

    async def snapshot(self, now: datetime | None = None) -> Snapshot:
        """What `status` shows, in one transaction (with `now`: the live claims too)."""

        def work(connection: sqlite3.Connection) -> Snapshot:
            connection.execute("BEGIN")
            try:
                return _snapshot(connection, now)
            finally:
                connection.execute("COMMIT")

        return await self._run("snapshot", work)

    async def dump(self) -> dict[str, list[dict[str, object]]]:
        """The rows `migrate-state` copies: chunks, exports (oldest first), parts, tokens."""

        def work(connection: sqlite3.Connection) -> dict[str, list[dict[str, object]]]:
            queries = {
                "chunks": "SELECT * FROM chunks ORDER BY id",
                "exports": "SELECT * FROM exports ORDER BY created_at_ms, rowid",
                "parts": "SELECT * FROM parts ORDER BY export_id, part_index",
                "refresh_tokens": "SELECT * FROM refresh_tokens ORDER BY merchant_id",
            }
            return {
                table: [dict(row) for row in connection.execute(query)]
                for table, query in queries.items()
            }

        return await self._run("dump", work)

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


def read_snapshot(path: Path, now: datetime | None = None) -> Snapshot:
    """Read the state for `harvester status`, read-only, while a run may be writing.

    Never creates nor migrates the file. Synchronous: the CLI calls it outside any loop.
    With `now`, it also reads the claims of processes whose lease runs past `now`.
    """
    if not path.is_file():
        raise StoreError(f"state store {path}: no such file")
    try:
        connection = _open_read_only(path)
    except sqlite3.Error as exc:
        raise StoreError(f"state store {path}: cannot open read-only: {exc}") from exc
    try:
        connection.row_factory = sqlite3.Row
        # One read transaction: chunks and exports come from the same committed state.
        connection.execute("BEGIN")
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StoreError(
                f"state store {path}: schema version {version} is newer than this harvester "
                f"reads ({len(MIGRATIONS)}); use a newer harvester"
            )
        if version != len(MIGRATIONS):
            raise StoreError(
                f"state store {path}: schema version {version}, this harvester reads "
                f"{len(MIGRATIONS)}; run the harvester once to bring it up to date"
            )
        snapshot = _snapshot(connection, now)
        connection.execute("COMMIT")
    except sqlite3.Error as exc:
        raise StoreError(f"state store {path}: cannot read: {exc}") from exc
    finally:
        connection.close()
    return snapshot


def _snapshot(connection: sqlite3.Connection, now: datetime | None) -> Snapshot:
    chunk_rows = connection.execute(
        "SELECT * FROM chunks ORDER BY merchant_id, type, start_ms"
    ).fetchall()
    export_rows = connection.execute(
        "SELECT exports.* FROM exports JOIN chunks ON chunks.export_id = exports.id"
        " WHERE exports.state IN (?, ?) AND chunks.status != ?"
        " ORDER BY exports.created_at_ms, exports.rowid",
        (*(state.value for state in _LIVE_EXPORT_STATES), ChunkStatus.COMPLETE.value),
    ).fetchall()
    held_rows = (
        []
        if now is None
        else connection.execute(
            "SELECT claims.chunk_id, processes.* FROM claims"
            " JOIN processes ON processes.id = claims.owner"
            " WHERE processes.lease_until_ms > ? ORDER BY claims.chunk_id",
            (_to_ms(now),),
        ).fetchall()
    )
    return Snapshot(
        chunks=[_chunk_from_row(row) for row in chunk_rows],
        running=[_export_from_row(row) for row in export_rows],
        held=[HeldChunk(row["chunk_id"], _process_from_row(row)) for row in held_rows],
    )


def read_export_durations(path: Path, latest: int = 1000) -> list[float]:
    """Seconds from creation to DONE of the latest `latest` DONE exports; read-only, for `plan`.

    An export picked up again after a crash counts the time nobody watched it: rare, and
    the p50 barely moves. No file yet: none seen.
    """
    if not path.is_file():
        return []
    try:
        connection = _open_read_only(path)
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


def _open_read_only(path: Path) -> sqlite3.Connection:
    """A connection that cannot write, while a run may be writing or on read-only media.

    `mode=ro` reads through the WAL a running harvester keeps. On read-only media SQLite
    cannot create the WAL's shared-memory file, so the file is opened `immutable` instead:
    nothing can be writing to it there.
    """
    uri = path.resolve().as_uri()
    connection = sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None)
    try:
        connection.execute("PRAGMA user_version").fetchone()
    except sqlite3.OperationalError:
        connection.close()
        if os.access(path.parent, os.W_OK) and not _read_only_media(path):
            raise
        connection = sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)
    return connection


def _read_only_media(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
