"""Durable harvest state in PostgreSQL, for processes on several machines (`state_url`).

The same contract as the SQLite `store.Store` (see `state.StateStore`): every write is one
transaction, committed before its coroutine returns, and lands even if its caller is
cancelled meanwhile. The driver is psycopg 3 (async, typed). One connection per process,
one operation on it at a time.

Where processes race, PostgreSQL's own tools decide: a claim, a refresh lock and a host's
slots are rows whose changes are serialised by a row lock (`SELECT ... FOR UPDATE` on the
chunk, or the host) or a transaction-scoped advisory lock (a merchant's refresh lock); the
rows name the process, whose lease row says whether it still lives. Migrations are
versioned as SQLite's are, applied under an advisory lock so that two first runs cannot
both migrate.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.rows import dict_row

from harvester.clock import Clock
from harvester.clover.chunks import EPOCH, ONE_MS, ExportType, TimeRange
from harvester.errors import ChunkOverlap, StoreError
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
Row = dict[str, Any]
Connection = psycopg.AsyncConnection[Row]

_LIVE_EXPORT_STATES = (ExportState.RUNNING.value, ExportState.DONE.value)
_ENDED_EXPORT_STATES = frozenset({ExportState.FAILED, ExportState.EXPIRED, ExportState.LOST})
_MIGRATION_LOCK = 7_311_902_001  # advisory lock key: one migrating process at a time
_CONNECT_TIMEOUT_S = 30

# Applied in order, each with the version it brings. Append; never edit one that shipped.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE chunks (
            id BIGSERIAL PRIMARY KEY,
            merchant_id TEXT NOT NULL,
            type TEXT NOT NULL CHECK (type IN ('PAYMENTS', 'ORDERS')),
            start_ms BIGINT NOT NULL,
            end_ms BIGINT NOT NULL,
            status TEXT NOT NULL
                CHECK (status IN ('pending', 'exporting', 'downloading', 'complete', 'failed')),
            export_id TEXT,
            exports_created INTEGER NOT NULL DEFAULT 0,
            completed_at_ms BIGINT,
            last_error TEXT,
            last_error_at_ms BIGINT,
            updated_at_ms BIGINT NOT NULL,
            lost_creates INTEGER NOT NULL DEFAULT 0,
            UNIQUE (merchant_id, type, start_ms, end_ms),
            CHECK (start_ms < end_ms)
        )
        """,
        """
        CREATE TABLE exports (
            id TEXT PRIMARY KEY,
            chunk_id BIGINT NOT NULL REFERENCES chunks (id),
            state TEXT NOT NULL
                CHECK (state IN ('running', 'done', 'failed', 'expired', 'lost')),
            status TEXT NOT NULL,
            percent DOUBLE PRECISION NOT NULL,
            created_at_ms BIGINT NOT NULL,
            updated_at_ms BIGINT NOT NULL,
            available_until_ms BIGINT,
            urls TEXT NOT NULL DEFAULT '[]',
            seq BIGSERIAL
        )
        """,
        "ALTER TABLE chunks ADD FOREIGN KEY (export_id) REFERENCES exports (id)",
        "CREATE INDEX exports_by_chunk ON exports (chunk_id)",
        """
        CREATE TABLE parts (
            export_id TEXT NOT NULL REFERENCES exports (id),
            part_index INTEGER NOT NULL CHECK (part_index >= 1),
            url_index INTEGER NOT NULL CHECK (url_index >= 0),
            size BIGINT NOT NULL CHECK (size >= 0),
            sha256 TEXT NOT NULL,
            objects INTEGER NOT NULL CHECK (objects >= 0),
            PRIMARY KEY (export_id, part_index)
        )
        """,
        """
        CREATE TABLE refresh_tokens (
            merchant_id TEXT PRIMARY KEY,
            token TEXT NOT NULL,
            expires_at_ms BIGINT,
            updated_at_ms BIGINT NOT NULL
        )
        """,
        """
        CREATE TABLE processes (
            id TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            machine TEXT NOT NULL,
            command TEXT NOT NULL,
            started_at_ms BIGINT NOT NULL,
            lease_until_ms BIGINT NOT NULL
        )
        """,
        """
        CREATE TABLE claims (
            chunk_id BIGINT PRIMARY KEY REFERENCES chunks (id),
            owner TEXT NOT NULL REFERENCES processes (id),
            claimed_at_ms BIGINT NOT NULL
        )
        """,
        "CREATE INDEX claims_by_owner ON claims (owner)",
        """
        CREATE TABLE hosts (
            host TEXT PRIMARY KEY,
            slot_limit INTEGER NOT NULL CHECK (slot_limit >= 1),
            run INTEGER NOT NULL DEFAULT 0,
            grants BIGINT NOT NULL DEFAULT 0,
            busy_until_ms BIGINT
        )
        """,
        """
        CREATE TABLE slots (
            id BIGSERIAL PRIMARY KEY,
            host TEXT NOT NULL,
            owner TEXT NOT NULL REFERENCES processes (id),
            merchant_id TEXT NOT NULL,
            granted_at_ms BIGINT NOT NULL
        )
        """,
        "CREATE INDEX slots_by_host ON slots (host)",
        """
        CREATE TABLE slot_waiters (
            id BIGSERIAL PRIMARY KEY,
            host TEXT NOT NULL,
            owner TEXT NOT NULL REFERENCES processes (id),
            merchant_id TEXT NOT NULL,
            since_ms BIGINT NOT NULL
        )
        """,
        """
        CREATE TABLE served (
            host TEXT NOT NULL,
            merchant_id TEXT NOT NULL,
            last_grant BIGINT NOT NULL,
            PRIMARY KEY (host, merchant_id)
        )
        """,
        """
        CREATE TABLE token_locks (
            merchant_id TEXT PRIMARY KEY,
            owner TEXT NOT NULL REFERENCES processes (id),
            since_ms BIGINT NOT NULL
        )
        """,
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _to_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("the store keeps UTC instants: got a naive datetime")
    return (moment - EPOCH) // ONE_MS


def _from_ms(ms: int) -> datetime:
    return EPOCH + ms * ONE_MS


def _maybe_from_ms(ms: int | None) -> datetime | None:
    return None if ms is None else _from_ms(ms)


def _chunk(row: Row) -> ChunkRecord:
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


def _export(row: Row) -> ExportRecord:
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


def _part(row: Row) -> PartRecord:
    return PartRecord(
        export_id=row["export_id"],
        index=row["part_index"],
        url_index=row["url_index"],
        size=row["size"],
        sha256=row["sha256"],
        objects=row["objects"],
    )


def _process(row: Row) -> ProcessRecord:
    return ProcessRecord(
        id=row["id"],
        host=row["host"],
        pid=row["pid"],
        machine=row["machine"],
        command=row["command"],
        started_at=_from_ms(row["started_at_ms"]),
        lease_until=_from_ms(row["lease_until_ms"]),
    )


def _describe(exc: psycopg.Error) -> str:
    # The primary message only: a DETAIL line may quote the values of a row (a token).
    return exc.diag.message_primary or type(exc).__name__


async def _connect(url: str) -> Connection:
    try:
        return await psycopg.AsyncConnection.connect(
            url, row_factory=dict_row, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_S
        )
    except psycopg.Error as exc:
        raise StoreError(f"state store {safe_url(url)}: cannot connect: {_describe(exc)}") from exc


async def _migrate(
    connection: Connection, where: str, migrations: Sequence[tuple[str, ...]]
) -> None:
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
        )
        row = await (await connection.execute("SELECT version FROM schema_version")).fetchone()
        version = 0 if row is None else int(row["version"])
        if version > len(migrations):
            raise StoreError(
                f"state store {where}: schema version {version} is newer than this harvester "
                f"knows ({len(migrations)}); use a newer harvester"
            )
        for statements in migrations[version:]:
            for statement in statements:
                await connection.execute(statement.encode())
        if row is None:
            await connection.execute(
                "INSERT INTO schema_version (version) VALUES (%s)", (len(migrations),)
            )
        else:
            await connection.execute("UPDATE schema_version SET version = %s", (len(migrations),))


def _next_in_line(
    served: dict[str, int], waiters: Sequence[tuple[int, str, int]], free: int
) -> set[int]:
    """The waiters (id, merchant, since) the next `free` grants go to: round-robin across
    merchants, least recently served first, then the longest waiting."""
    queues: dict[str, list[tuple[int, int]]] = {}
    for waiter_id, merchant_id, since_ms in waiters:
        queues.setdefault(merchant_id, []).append((since_ms, waiter_id))
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


class PgStore:
    """The harvest state in PostgreSQL. Open with `await PgStore.open(url, clock)`."""

    def __init__(self, url: str, clock: Clock, connection: Connection) -> None:
        self._where = safe_url(url)
        self._clock = clock
        self._connection = connection
        self._lock = asyncio.Lock()
        self._closed = False

    @classmethod
    async def open(
        cls, url: str, clock: Clock, migrations: Sequence[tuple[str, ...]] = MIGRATIONS
    ) -> PgStore:
        """Connect, creating and migrating the schema if needed."""
        connection = await _connect(url)
        try:
            await _migrate(connection, safe_url(url), migrations)
        except psycopg.Error as exc:
            await connection.close()
            raise StoreError(
                f"state store {safe_url(url)}: cannot migrate: {_describe(exc)}"
            ) from exc
        except BaseException:
            await connection.close()
            raise
        return cls(url, clock, connection)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        async with self._lock:
            await self._connection.close()

    async def __aenter__(self) -> PgStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"PgStore({self._where!r})"

    # -- plumbing -----------------------------------------------------------------------

    async def _run(self, operation: str, work: Callable[[Connection], Awaitable[T]]) -> T:
        """`work` in one transaction; it lands even if the caller is cancelled meanwhile."""
        if self._closed:
            raise StoreError(f"state store {self._where}: {operation} after close")

        async def transaction() -> T:
            async with self._lock:
                try:
                    async with self._connection.transaction():
                        return await work(self._connection)
                except psycopg.Error as exc:
                    raise StoreError(
                        f"state store {self._where}: {operation} failed: {_describe(exc)}"
                    ) from exc

        return await asyncio.shield(asyncio.ensure_future(transaction()))

    def _now_ms(self) -> int:
        return _to_ms(self._clock.now())

    def _missing(self, what: str) -> StoreError:
        return StoreError(f"state store {self._where}: no {what}")

    @staticmethod
    async def _one(connection: Connection, query: str, params: Sequence[Any] = ()) -> Row | None:
        return await (await connection.execute(query.encode(), params)).fetchone()

    @staticmethod
    async def _all(connection: Connection, query: str, params: Sequence[Any] = ()) -> list[Row]:
        return await (await connection.execute(query.encode(), params)).fetchall()

    async def _chunk_row(self, connection: Connection, chunk_id: int, lock: bool = False) -> Row:
        query = (
            "SELECT * FROM chunks WHERE id = %s FOR UPDATE"
            if lock
            else "SELECT * FROM chunks WHERE id = %s"
        )
        row = await self._one(connection, query, (chunk_id,))
        if row is None:
            raise self._missing(f"chunk {chunk_id}")
        return row

    # -- chunks -------------------------------------------------------------------------

    async def add_chunks(
        self, merchant_id: str, type: ExportType, ranges: Sequence[TimeRange]
    ) -> list[ChunkRecord]:
        wanted = list(ranges)
        now_ms = self._now_ms()

        async def work(connection: Connection) -> list[ChunkRecord]:
            # One merchant and type at a time: the overlap check must see every insert.
            await connection.execute(
                b"SELECT pg_advisory_xact_lock(hashtext(%s))", (f"chunks:{merchant_id}:{type}",)
            )
            records = []
            for wanted_range in wanted:
                key = (merchant_id, type.value, wanted_range.start_ms, wanted_range.end_ms)
                row = await self._one(
                    connection,
                    "SELECT * FROM chunks"
                    " WHERE merchant_id = %s AND type = %s AND start_ms = %s AND end_ms = %s",
                    key,
                )
                if row is None:
                    clash = await self._one(
                        connection,
                        "SELECT start_ms, end_ms FROM chunks"
                        " WHERE merchant_id = %s AND type = %s AND start_ms < %s AND end_ms > %s"
                        " LIMIT 1",
                        (merchant_id, type.value, wanted_range.end_ms, wanted_range.start_ms),
                    )
                    if clash is not None:
                        existing = TimeRange.from_ms(clash["start_ms"], clash["end_ms"])
                        raise ChunkOverlap(
                            f"state store {self._where}: chunk {wanted_range} of merchant "
                            f"{merchant_id} {type.value} overlaps the known chunk {existing}"
                        )
                    row = await self._one(
                        connection,
                        "INSERT INTO chunks"
                        " (merchant_id, type, start_ms, end_ms, status, updated_at_ms)"
                        " VALUES (%s, %s, %s, %s, %s, %s) RETURNING *",
                        (*key, ChunkStatus.PENDING.value, now_ms),
                    )
                    assert row is not None
                records.append(_chunk(row))
            return records

        return await self._run("add_chunks", work)

    async def covered(self, merchant_id: str, type: ExportType) -> list[TimeRange]:
        async def work(connection: Connection) -> list[TimeRange]:
            rows = await self._all(
                connection,
                "SELECT start_ms, end_ms FROM chunks"
                " WHERE merchant_id = %s AND type = %s AND completed_at_ms IS NOT NULL"
                " ORDER BY start_ms",
                (merchant_id, type.value),
            )
            return [TimeRange.from_ms(row["start_ms"], row["end_ms"]) for row in rows]

        return await self._run("covered", work)

    async def chunks(
        self,
        merchant_id: str | None = None,
        type: ExportType | None = None,
        statuses: Collection[ChunkStatus] | None = None,
    ) -> list[ChunkRecord]:
        wanted = None if statuses is None else [s.value for s in statuses]

        async def work(connection: Connection) -> list[ChunkRecord]:
            rows = await self._all(
                connection,
                "SELECT * FROM chunks"
                " WHERE (%s::text IS NULL OR merchant_id = %s)"
                " AND (%s::text IS NULL OR type = %s)"
                " AND (%s::text[] IS NULL OR status = ANY(%s::text[]))"
                " ORDER BY merchant_id, type, start_ms",
                (
                    merchant_id,
                    merchant_id,
                    None if type is None else type.value,
                    None if type is None else type.value,
                    wanted,
                    wanted,
                ),
            )
            return [_chunk(row) for row in rows]

        return await self._run("chunks", work)

    async def get_chunk(self, chunk_id: int) -> ChunkRecord:
        async def work(connection: Connection) -> ChunkRecord:
            return _chunk(await self._chunk_row(connection, chunk_id))

        return await self._run("get_chunk", work)

    async def reset_for_reharvest(self, chunk_id: int) -> ChunkRecord:
        now_ms = self._now_ms()

        async def work(connection: Connection) -> ChunkRecord:
            await connection.execute(
                b"UPDATE chunks SET status = %s, export_id = NULL, updated_at_ms = %s"
                b" WHERE id = %s AND status = %s",
                (ChunkStatus.PENDING.value, now_ms, chunk_id, ChunkStatus.COMPLETE.value),
            )
            return _chunk(await self._chunk_row(connection, chunk_id))

        return await self._run("reset_for_reharvest", work)

    async def complete_chunk(self, chunk_id: int) -> None:
        now_ms = self._now_ms()

        async def work(connection: Connection) -> None:
            cursor = await connection.execute(
                b"UPDATE chunks SET status = %s, completed_at_ms = %s, last_error = NULL,"
                b" last_error_at_ms = NULL, updated_at_ms = %s WHERE id = %s",
                (ChunkStatus.COMPLETE.value, now_ms, now_ms, chunk_id),
            )
            if cursor.rowcount == 0:
                raise self._missing(f"chunk {chunk_id}")

        await self._run("complete_chunk", work)

    async def fail_chunk(self, chunk_id: int, error: str) -> None:
        now_ms = self._now_ms()

        async def work(connection: Connection) -> None:
            cursor = await connection.execute(
                b"UPDATE chunks SET status = %(failed)s, last_error = %(error)s,"
                b" last_error_at_ms = %(now)s, updated_at_ms = %(now)s,"
                b" export_id = CASE WHEN (SELECT state FROM exports WHERE id = chunks.export_id)"
                b" IN (%(running)s, %(done)s) THEN export_id ELSE NULL END"
                b" WHERE id = %(chunk_id)s",
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

        await self._run("fail_chunk", work)

    async def note_lost_create(self, chunk_id: int) -> None:
        async def work(connection: Connection) -> None:
            cursor = await connection.execute(
                b"UPDATE chunks SET lost_creates = lost_creates + 1 WHERE id = %s", (chunk_id,)
            )
            if cursor.rowcount == 0:
                raise self._missing(f"chunk {chunk_id}")

        await self._run("note_lost_create", work)

    async def start_run(self) -> None:
        now_ms = self._now_ms()

        async def work(connection: Connection) -> None:
            await connection.execute(
                b"UPDATE chunks SET"
                b" status = CASE (SELECT state FROM exports WHERE id = chunks.export_id)"
                b"   WHEN %(running)s THEN %(exporting)s WHEN %(done)s THEN %(downloading)s"
                b"   ELSE %(pending)s END,"
                b" export_id = CASE WHEN (SELECT state FROM exports WHERE id = chunks.export_id)"
                b"   IN (%(running)s, %(done)s) THEN export_id ELSE NULL END,"
                b" updated_at_ms = %(now)s"
                b" WHERE status = %(failed)s",
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

        await self._run("start_run", work)

    # -- exports ------------------------------------------------------------------------

    async def record_export(
        self, chunk_id: int, export_id: str, status: str, percent: float
    ) -> ExportRecord:
        now_ms = self._now_ms()

        async def work(connection: Connection) -> ExportRecord:
            await self._chunk_row(connection, chunk_id, lock=True)
            existing = await self._one(
                connection, "SELECT * FROM exports WHERE id = %s", (export_id,)
            )
            if existing is not None:
                if existing["chunk_id"] != chunk_id:
                    raise StoreError(
                        f"state store {self._where}: export {export_id} already belongs to "
                        f"chunk {existing['chunk_id']}, not {chunk_id}"
                    )
                return _export(existing)
            row = await self._one(
                connection,
                "INSERT INTO exports"
                " (id, chunk_id, state, status, percent, created_at_ms, updated_at_ms)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING *",
                (export_id, chunk_id, ExportState.RUNNING.value, status, percent, now_ms, now_ms),
            )
            assert row is not None
            await connection.execute(
                b"UPDATE chunks SET export_id = %s, status = %s,"
                b" exports_created = exports_created + 1, updated_at_ms = %s WHERE id = %s",
                (export_id, ChunkStatus.EXPORTING.value, now_ms, chunk_id),
            )
            return _export(row)

        return await self._run("record_export", work)

    async def update_export(self, export_id: str, status: str, percent: float) -> None:
        now_ms = self._now_ms()

        async def work(connection: Connection) -> None:
            cursor = await connection.execute(
                b"UPDATE exports SET status = %s, percent = %s, updated_at_ms = %s WHERE id = %s",
                (status, percent, now_ms, export_id),
            )
            if cursor.rowcount == 0:
                raise self._missing(f"export {export_id}")

        await self._run("update_export", work)

    async def export_done(
        self, export_id: str, available_until: datetime | None, urls: Sequence[str]
    ) -> None:
        now_ms = self._now_ms()
        until_ms = None if available_until is None else _to_ms(available_until)
        urls_json = json.dumps(list(urls))

        async def work(connection: Connection) -> None:
            cursor = await connection.execute(
                b"UPDATE exports SET state = %s, status = 'DONE', percent = 100.0,"
                b" available_until_ms = %s, urls = %s, updated_at_ms = %s WHERE id = %s",
                (ExportState.DONE.value, until_ms, urls_json, now_ms, export_id),
            )
            if cursor.rowcount == 0:
                raise self._missing(f"export {export_id}")
            await connection.execute(
                b"UPDATE chunks SET status = %s, updated_at_ms = %s"
                b" WHERE export_id = %s AND status = %s",
                (ChunkStatus.DOWNLOADING.value, now_ms, export_id, ChunkStatus.EXPORTING.value),
            )

        await self._run("export_done", work)

    async def end_export(self, export_id: str, state: ExportState, error: str) -> None:
        if state not in _ENDED_EXPORT_STATES:
            raise ValueError(f"end_export needs an ending state, not {state}")
        now_ms = self._now_ms()

        async def work(connection: Connection) -> None:
            cursor = await connection.execute(
                b"UPDATE exports SET state = %s, updated_at_ms = %s WHERE id = %s",
                (state.value, now_ms, export_id),
            )
            if cursor.rowcount == 0:
                raise self._missing(f"export {export_id}")
            await connection.execute(
                b"UPDATE chunks SET export_id = NULL,"
                b" status = CASE status WHEN %(failed)s THEN %(failed)s ELSE %(pending)s END,"
                b" last_error = %(error)s, last_error_at_ms = %(now)s, updated_at_ms = %(now)s"
                b" WHERE export_id = %(export_id)s AND status != %(complete)s",
                {
                    "failed": ChunkStatus.FAILED.value,
                    "pending": ChunkStatus.PENDING.value,
                    "complete": ChunkStatus.COMPLETE.value,
                    "error": error,
                    "now": now_ms,
                    "export_id": export_id,
                },
            )

        await self._run("end_export", work)

    async def get_export(self, export_id: str) -> ExportRecord | None:
        async def work(connection: Connection) -> ExportRecord | None:
            row = await self._one(connection, "SELECT * FROM exports WHERE id = %s", (export_id,))
            return None if row is None else _export(row)

        return await self._run("get_export", work)

    # -- parts --------------------------------------------------------------------------

    async def record_part(self, part: PartRecord) -> None:
        async def work(connection: Connection) -> None:
            await connection.execute(
                b"INSERT INTO parts (export_id, part_index, url_index, size, sha256, objects)"
                b" VALUES (%s, %s, %s, %s, %s, %s)"
                b" ON CONFLICT (export_id, part_index) DO UPDATE SET"
                b" url_index = excluded.url_index, size = excluded.size,"
                b" sha256 = excluded.sha256, objects = excluded.objects",
                (part.export_id, part.index, part.url_index, part.size, part.sha256, part.objects),
            )

        await self._run("record_part", work)

    async def parts(self, export_id: str) -> list[PartRecord]:
        async def work(connection: Connection) -> list[PartRecord]:
            rows = await self._all(
                connection,
                "SELECT * FROM parts WHERE export_id = %s ORDER BY part_index",
                (export_id,),
            )
            return [_part(row) for row in rows]

        return await self._run("parts", work)

    # -- tokens -------------------------------------------------------------------------

    async def refresh_token(self, merchant_id: str) -> tuple[str, datetime | None] | None:
        async def work(connection: Connection) -> tuple[str, datetime | None] | None:
            row = await self._one(
                connection,
                "SELECT token, expires_at_ms FROM refresh_tokens WHERE merchant_id = %s",
                (merchant_id,),
            )
            return None if row is None else (row["token"], _maybe_from_ms(row["expires_at_ms"]))

        return await self._run("refresh_token", work)

    async def save_refresh_token(
        self, merchant_id: str, token: str, expires_at: datetime | None
    ) -> None:
        now_ms = self._now_ms()
        expires_ms = None if expires_at is None else _to_ms(expires_at)

        async def work(connection: Connection) -> None:
            await connection.execute(
                b"INSERT INTO refresh_tokens (merchant_id, token, expires_at_ms, updated_at_ms)"
                b" VALUES (%s, %s, %s, %s)"
                b" ON CONFLICT (merchant_id) DO UPDATE SET token = excluded.token,"
                b" expires_at_ms = excluded.expires_at_ms, updated_at_ms = excluded.updated_at_ms",
                (merchant_id, token, expires_ms, now_ms),
            )

        await self._run("save_refresh_token", work)

    # -- processes and claims -----------------------------------------------------------

    async def register_process(self, process: ProcessRecord) -> None:
        async def work(connection: Connection) -> None:
            await connection.execute(
                b"INSERT INTO processes"
                b" (id, host, pid, machine, command, started_at_ms, lease_until_ms)"
                b" VALUES (%s, %s, %s, %s, %s, %s, %s)"
                b" ON CONFLICT (id) DO UPDATE SET lease_until_ms = excluded.lease_until_ms",
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

        await self._run("register_process", work)

    async def renew_process(self, process_id: str, lease_until: datetime) -> bool:
        now_ms = self._now_ms()
        until_ms = _to_ms(lease_until)

        async def work(connection: Connection) -> bool:
            row = await self._one(
                connection,
                "SELECT lease_until_ms FROM processes WHERE id = %s FOR UPDATE",
                (process_id,),
            )
            if row is None:
                raise self._missing(f"process {process_id}")
            await connection.execute(
                b"UPDATE processes SET lease_until_ms = %s WHERE id = %s", (until_ms, process_id)
            )
            return bool(row["lease_until_ms"] > now_ms)

        return await self._run("renew_process", work)

    async def end_process(self, process_id: str) -> None:
        now_ms = self._now_ms()

        async def work(connection: Connection) -> None:
            for table in ("claims", "slots", "slot_waiters", "token_locks"):
                await connection.execute(
                    f"DELETE FROM {table} WHERE owner = %s".encode(),  # noqa: S608 -- our tables
                    (process_id,),
                )
            await connection.execute(
                b"UPDATE processes SET lease_until_ms = least(lease_until_ms, %s) WHERE id = %s",
                (now_ms, process_id),
            )

        await self._run("end_process", work)

    async def processes(self) -> list[ProcessRecord]:
        async def work(connection: Connection) -> list[ProcessRecord]:
            rows = await self._all(connection, "SELECT * FROM processes ORDER BY started_at_ms, id")
            return [_process(row) for row in rows]

        return await self._run("processes", work)

    async def claim_chunk(self, chunk_id: int, owner: str) -> ClaimResult:
        now_ms = self._now_ms()

        async def work(connection: Connection) -> ClaimResult:
            # The chunk's row lock: claimers of one chunk take turns.
            chunk = _chunk(await self._chunk_row(connection, chunk_id, lock=True))
            holder = await self._one(
                connection,
                "SELECT processes.* FROM claims JOIN processes ON processes.id = claims.owner"
                " WHERE claims.chunk_id = %s AND claims.owner != %s AND lease_until_ms > %s",
                (chunk_id, owner, now_ms),
            )
            if holder is not None:
                return ClaimResult(chunk, _process(holder))
            await connection.execute(
                b"INSERT INTO claims (chunk_id, owner, claimed_at_ms) VALUES (%s, %s, %s)"
                b" ON CONFLICT (chunk_id) DO UPDATE SET owner = excluded.owner,"
                b" claimed_at_ms = excluded.claimed_at_ms WHERE claims.owner != excluded.owner",
                (chunk_id, owner, now_ms),
            )
            return ClaimResult(chunk, None)

        return await self._run("claim_chunk", work)

    async def holds_chunk(self, chunk_id: int, owner: str) -> bool:
        async def work(connection: Connection) -> bool:
            row = await self._one(
                connection,
                "SELECT 1 FROM claims WHERE chunk_id = %s AND owner = %s",
                (chunk_id, owner),
            )
            return row is not None

        return await self._run("holds_chunk", work)

    async def release_chunk(self, chunk_id: int, owner: str) -> None:
        async def work(connection: Connection) -> None:
            await connection.execute(
                b"DELETE FROM claims WHERE chunk_id = %s AND owner = %s", (chunk_id, owner)
            )

        await self._run("release_chunk", work)

    # -- shared export slots and refresh locks ---------------------------------------------

    async def _host_row(self, connection: Connection, host: str, maximum: int) -> Row:
        """The host's row, created if needed and locked: its slots' changes take turns."""
        await connection.execute(
            b"INSERT INTO hosts (host, slot_limit) VALUES (%s, %s) ON CONFLICT (host) DO NOTHING",
            (host, maximum),
        )
        row = await self._one(connection, "SELECT * FROM hosts WHERE host = %s FOR UPDATE", (host,))
        assert row is not None
        return row

    async def take_slot(
        self, host: str, owner: str, merchant_id: str, waiter_id: int | None, maximum: int
    ) -> SlotTry:
        now_ms = self._now_ms()

        async def work(connection: Connection) -> SlotTry:
            state = await self._host_row(connection, host, maximum)
            limit = min(int(state["slot_limit"]), maximum)
            if limit != state["slot_limit"]:
                await connection.execute(
                    b"UPDATE hosts SET slot_limit = %s WHERE host = %s", (limit, host)
                )
            for table in ("slots", "slot_waiters"):
                await connection.execute(
                    f"DELETE FROM {table} WHERE host = %s AND owner NOT IN"  # noqa: S608 -- ours
                    " (SELECT id FROM processes WHERE lease_until_ms > %s)".encode(),
                    (host, now_ms),
                )
            waiter = waiter_id
            if waiter is None or (
                await self._one(connection, "SELECT 1 FROM slot_waiters WHERE id = %s", (waiter,))
                is None
            ):
                row = await self._one(
                    connection,
                    "INSERT INTO slot_waiters (host, owner, merchant_id, since_ms)"
                    " VALUES (%s, %s, %s, %s) RETURNING id",
                    (host, owner, merchant_id, now_ms),
                )
                assert row is not None
                waiter = int(row["id"])
            busy_until_ms: int | None = state["busy_until_ms"]
            in_use_row = await self._one(
                connection, "SELECT count(*) AS n FROM slots WHERE host = %s", (host,)
            )
            assert in_use_row is not None
            in_use = int(in_use_row["n"])
            busy_until = _maybe_from_ms(busy_until_ms)
            if (busy_until_ms is not None and busy_until_ms > now_ms) or in_use >= limit:
                return SlotTry(None, waiter, limit, in_use, busy_until)
            served = {
                row["merchant_id"]: int(row["last_grant"])
                for row in await self._all(
                    connection,
                    "SELECT merchant_id, last_grant FROM served WHERE host = %s",
                    (host,),
                )
            }
            waiters = [
                (int(row["id"]), row["merchant_id"], int(row["since_ms"]))
                for row in await self._all(
                    connection,
                    "SELECT id, merchant_id, since_ms FROM slot_waiters WHERE host = %s"
                    " ORDER BY since_ms, id",
                    (host,),
                )
            ]
            if waiter not in _next_in_line(served, waiters, limit - in_use):
                return SlotTry(None, waiter, limit, in_use, busy_until)
            grants = int(state["grants"]) + 1
            await connection.execute(b"DELETE FROM slot_waiters WHERE id = %s", (waiter,))
            await connection.execute(
                b"UPDATE hosts SET grants = %s WHERE host = %s", (grants, host)
            )
            await connection.execute(
                b"INSERT INTO served (host, merchant_id, last_grant) VALUES (%s, %s, %s)"
                b" ON CONFLICT (host, merchant_id) DO UPDATE SET last_grant = excluded.last_grant",
                (host, merchant_id, grants),
            )
            row = await self._one(
                connection,
                "INSERT INTO slots (host, owner, merchant_id, granted_at_ms)"
                " VALUES (%s, %s, %s, %s) RETURNING id",
                (host, owner, merchant_id, now_ms),
            )
            assert row is not None
            return SlotTry(int(row["id"]), waiter, limit, in_use + 1, busy_until)

        return await self._run("take_slot", work)

    async def reset_hosts(self) -> None:
        async def work(connection: Connection) -> None:
            await connection.execute(b"DELETE FROM hosts")

        await self._run("reset_hosts", work)

    async def leave_slot_queue(self, waiter_id: int) -> None:
        async def work(connection: Connection) -> None:
            await connection.execute(b"DELETE FROM slot_waiters WHERE id = %s", (waiter_id,))

        await self._run("leave_slot_queue", work)

    async def release_slot(self, slot_id: int) -> None:
        async def work(connection: Connection) -> None:
            await connection.execute(b"DELETE FROM slots WHERE id = %s", (slot_id,))

        await self._run("release_slot", work)

    async def slot_busy(self, host: str, until: datetime, maximum: int, limit: int) -> int:
        now_ms = self._now_ms()
        until_ms = max(_to_ms(until), now_ms)

        async def work(connection: Connection) -> int:
            state = await self._host_row(connection, host, maximum)
            lowered = max(1, min(int(state["slot_limit"]), limit))
            busy = state["busy_until_ms"]
            await connection.execute(
                b"UPDATE hosts SET slot_limit = %s, run = 0, busy_until_ms = %s WHERE host = %s",
                (lowered, max(until_ms, busy) if busy is not None else until_ms, host),
            )
            return lowered

        return await self._run("slot_busy", work)

    async def slot_went_through(self, host: str, maximum: int) -> int:
        async def work(connection: Connection) -> int:
            state = await self._host_row(connection, host, maximum)
            limit, run = int(state["slot_limit"]), int(state["run"]) + 1
            if run >= limit:
                limit, run = min(maximum, limit + 1), 0
            await connection.execute(
                b"UPDATE hosts SET slot_limit = %s, run = %s, busy_until_ms = NULL WHERE host = %s",
                (limit, run, host),
            )
            return limit

        return await self._run("slot_went_through", work)

    async def lock_token(self, merchant_id: str, owner: str) -> ProcessRecord | None:
        now_ms = self._now_ms()

        async def work(connection: Connection) -> ProcessRecord | None:
            await connection.execute(
                b"SELECT pg_advisory_xact_lock(hashtext(%s))", (f"token:{merchant_id}",)
            )
            holder = await self._one(
                connection,
                "SELECT processes.* FROM token_locks"
                " JOIN processes ON processes.id = token_locks.owner"
                " WHERE merchant_id = %s AND owner != %s AND lease_until_ms > %s",
                (merchant_id, owner, now_ms),
            )
            if holder is not None:
                return _process(holder)
            await connection.execute(
                b"INSERT INTO token_locks (merchant_id, owner, since_ms) VALUES (%s, %s, %s)"
                b" ON CONFLICT (merchant_id) DO UPDATE SET owner = excluded.owner,"
                b" since_ms = excluded.since_ms",
                (merchant_id, owner, now_ms),
            )
            return None

        return await self._run("lock_token", work)

    async def unlock_token(self, merchant_id: str, owner: str) -> None:
        async def work(connection: Connection) -> None:
            await connection.execute(
                b"DELETE FROM token_locks WHERE merchant_id = %s AND owner = %s",
                (merchant_id, owner),
            )

        await self._run("unlock_token", work)

    # -- whole state --------------------------------------------------------------------

    async def snapshot(self, now: datetime | None = None) -> Snapshot:
        """What `status` shows, in one transaction (with `now`: the live claims too)."""

        async def work(connection: Connection) -> Snapshot:
            chunk_rows = await self._all(
                connection, "SELECT * FROM chunks ORDER BY merchant_id, type, start_ms"
            )
            export_rows = await self._all(
                connection,
                "SELECT exports.* FROM exports JOIN chunks ON chunks.export_id = exports.id"
                " WHERE exports.state IN (%s, %s) AND chunks.status != %s"
                " ORDER BY exports.created_at_ms, exports.seq",
                (*_LIVE_EXPORT_STATES, ChunkStatus.COMPLETE.value),
            )
            held_rows = (
                []
                if now is None
                else await self._all(
                    connection,
                    "SELECT claims.chunk_id, processes.* FROM claims"
                    " JOIN processes ON processes.id = claims.owner"
                    " WHERE processes.lease_until_ms > %s ORDER BY claims.chunk_id",
                    (_to_ms(now),),
                )
            )
            return Snapshot(
                chunks=[_chunk(row) for row in chunk_rows],
                running=[_export(row) for row in export_rows],
                held=[HeldChunk(row["chunk_id"], _process(row)) for row in held_rows],
            )

        return await self._run("snapshot", work)

    async def load(self, tables: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
        """Fill an empty state with rows copied from another store (`migrate-state`):
        chunks, exports, parts and refresh tokens, ids kept. Returns rows per table."""

        async def work(connection: Connection) -> dict[str, int]:
            known = await self._one(connection, "SELECT count(*) AS n FROM chunks")
            assert known is not None
            if known["n"]:
                raise StoreError(
                    f"state store {self._where}: already holds {known['n']} chunks; "
                    "migrate-state only fills an empty state"
                )
            counts: dict[str, int] = {}
            current: list[tuple[int, str]] = []
            for table in ("chunks", "exports", "parts", "refresh_tokens"):
                rows = tables.get(table, [])
                counts[table] = len(rows)
                for row in rows:
                    values = dict(row)
                    if table == "chunks" and values.get("export_id") is not None:
                        # Chunks and exports point at each other: the link comes last.
                        current.append((values["id"], values["export_id"]))
                        values["export_id"] = None
                    columns = list(values)
                    if not all(column.isidentifier() for column in columns):
                        raise StoreError(f"state store {self._where}: odd columns in {table}")
                    await connection.execute(
                        f"INSERT INTO {table} ({', '.join(columns)})"  # noqa: S608 -- checked
                        f" VALUES ({', '.join(['%s'] * len(columns))})".encode(),
                        [values[c] for c in columns],
                    )
            for chunk_id, export_id in current:
                await connection.execute(
                    b"UPDATE chunks SET export_id = %s WHERE id = %s", (export_id, chunk_id)
                )
            await connection.execute(
                b"SELECT setval(pg_get_serial_sequence('chunks', 'id'),"
                b" greatest(1, (SELECT coalesce(max(id), 0) FROM chunks)))"
            )
            return counts

        return await self._run("load", work)


async def read_snapshot(url: str, clock: Clock, now: datetime | None) -> Snapshot | None:
    """The state for `status` and `plan`; None if the database holds no state yet."""
    connection = await _connect(url)
    try:
        async with connection.transaction():
            row = await (
                await connection.execute("SELECT to_regclass('schema_version') AS name")
            ).fetchone()
            if row is None or row["name"] is None:
                return None
            version = await (
                await connection.execute("SELECT version FROM schema_version")
            ).fetchone()
            if version is None or version["version"] != SCHEMA_VERSION:
                raise StoreError(
                    f"state store {safe_url(url)}: schema version "
                    f"{None if version is None else version['version']}, this harvester reads "
                    f"{SCHEMA_VERSION}; run the harvester once to bring it up to date"
                )
    except psycopg.Error as exc:
        raise StoreError(f"state store {safe_url(url)}: cannot read: {_describe(exc)}") from exc
    finally:
        await connection.close()
    async with await PgStore.open(url, clock) as store:
        return await store.snapshot(now)


async def read_export_durations(url: str, latest: int = 1000) -> list[float]:
    """As `store.read_export_durations`: the latest DONE exports' seconds to DONE; none
    before the first run."""
    connection = await _connect(url)
    try:
        async with connection.transaction():
            row = await (
                await connection.execute("SELECT to_regclass('exports') AS name")
            ).fetchone()
            if row is None or row["name"] is None:
                return []
            rows = await (
                await connection.execute(
                    "SELECT updated_at_ms - created_at_ms AS ms FROM exports WHERE state = %s"
                    " ORDER BY created_at_ms DESC LIMIT %s",
                    (ExportState.DONE.value, latest),
                )
            ).fetchall()
    except psycopg.Error as exc:
        raise StoreError(f"state store {safe_url(url)}: cannot read: {_describe(exc)}") from exc
    finally:
        await connection.close()
    return [int(row["ms"]) / 1000 for row in rows]
