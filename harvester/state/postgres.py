"""Durable harvest state in PostgreSQL, for processes on several machines (`state_url`).

The same operations as SQLite's (queries.py, through `sqlstore.SqlStore`): every write is
one transaction, committed before its coroutine returns, and lands even if its caller is
cancelled meanwhile. The driver is psycopg 3 (async, typed). Operations run on a pool of
connections (`state_pool_size`), each transaction on one of them, so that a lane's slot wait
does not queue behind another lane's claim; one more connection, of its own, listens for
the hosts' changes (`HostSignals`: NOTIFY on `sql.HOSTS_CHANNEL`, the host as payload).

Where processes race, PostgreSQL's own tools decide: a claim, a refresh lock and a host's
slots are rows whose changes are serialised by a row lock (`SELECT ... FOR UPDATE` on the
chunk, or the host) or a transaction-scoped advisory lock (a merchant's refresh lock); the
rows name the process, whose lease row says whether it still lives. Migrations are
versioned as SQLite's are, applied under an advisory lock so that two first runs cannot
both migrate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from harvester.clock import Clock
from harvester.config import DEFAULT_STATE_POOL_SIZE
from harvester.errors import StoreError
from harvester.logs import get_logger
from harvester.state import queries
from harvester.state.records import Snapshot
from harvester.state.schema import POSTGRES_MIGRATIONS
from harvester.state.signals import HostSignals
from harvester.state.sql import HOSTS_CHANNEL, Fetch, Work, execute, one, postgres_text
from harvester.state.sqlstore import SqlStore, Transaction

T = TypeVar("T")
Row = dict[str, Any]
Connection = psycopg.AsyncConnection[Row]

_MIGRATION_LOCK = 7_311_902_001  # advisory lock key: one migrating process at a time
_CONNECT_TIMEOUT_S = 30

MIGRATIONS = POSTGRES_MIGRATIONS  # applied in order on open; see schema.py

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


async def run_work(connection: Connection, work: Work[T]) -> T:
    """Await an operation's queries on this connection, one after another."""
    answer: Any = None
    try:
        while True:
            sql, params, fetch = work.send(answer)
            cursor = await connection.execute(postgres_text(sql), params)
            if fetch is Fetch.ONE:
                answer = await cursor.fetchone()
            elif fetch is Fetch.ALL:
                answer = await cursor.fetchall()
            else:
                answer = cursor.rowcount if fetch is Fetch.COUNT else None
    except StopIteration as finished:
        returned: T = finished.value
        return returned
    finally:
        work.close()


class _Listener(HostSignals):
    """PostgreSQL's signals: a connection of its own LISTENs on the hosts' channel from the
    first mark on; every notification wakes the waiters on the host it names.

    If the connection fails, the waiters' own timeouts (a nap, a heartbeat) take over: a
    warning says so, and nothing else stops.
    """

    def __init__(self, url: str) -> None:
        super().__init__()
        self._url = url
        self._connection: Connection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()
        self._closed = False

    async def _ready(self) -> None:
        if self._reader is not None or self._closed:
            return
        async with self._starting:
            if self._reader is not None or self._closed:
                return
            try:
                connection = await _connect(self._url)
                await connection.execute(f"LISTEN {HOSTS_CHANNEL}".encode())
            except (StoreError, psycopg.Error) as exc:
                get_logger().warning("signals.listen_failed", error=str(exc))
                self._closed = True  # no second try: the waiters' timeouts cover for it
                return
            self._connection = connection
            self._reader = asyncio.create_task(self._read(connection), name="host-signals")

    async def _read(self, connection: Connection) -> None:
        try:
            async for notification in connection.notifies():
                self.changed(notification.payload)
        except psycopg.Error as exc:
            get_logger().warning("signals.listen_failed", error=_describe(exc))

    async def close(self) -> None:
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._connection is not None:
            await self._connection.close()


class PgStore(SqlStore):
    """The harvest state in PostgreSQL. Open with `await PgStore.open(url, clock)`."""

    def __init__(self, url: str, clock: Clock, pool: AsyncConnectionPool[Connection]) -> None:
        super().__init__(safe_url(url), clock)
        self._url = url
        self._pool = pool
        self._signals: _Listener | None = None  # made on first use

    @classmethod
    async def open(
        cls,
        url: str,
        clock: Clock,
        migrations: Sequence[tuple[str, ...]] = MIGRATIONS,
        pool_size: int = DEFAULT_STATE_POOL_SIZE,
    ) -> PgStore:
        """Connect, creating and migrating the schema if needed; then open the pool of
        `pool_size` connections the operations run on."""
        connection = await _connect(url)
        try:
            await _migrate(connection, safe_url(url), migrations)
        except psycopg.Error as exc:
            raise StoreError(
                f"state store {safe_url(url)}: cannot migrate: {_describe(exc)}"
            ) from exc
        finally:
            await connection.close()
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            url,
            connection_class=psycopg.AsyncConnection[Row],
            kwargs={
                "row_factory": dict_row,
                "autocommit": True,
                "connect_timeout": _CONNECT_TIMEOUT_S,
            },
            min_size=1,
            max_size=pool_size,
            open=False,
            name="harvester-state",
        )
        try:
            await pool.open(wait=True, timeout=_CONNECT_TIMEOUT_S)
        except PoolTimeout as exc:
            await pool.close()
            raise StoreError(f"state store {safe_url(url)}: cannot connect") from exc
        except BaseException:
            await pool.close()
            raise
        return cls(url, clock, pool)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._signals is not None:
            await self._signals.close()
        await self._pool.close()

    def host_signals(self) -> HostSignals:
        if self._signals is None:
            self._signals = _Listener(self._url)
        return self._signals

    def __repr__(self) -> str:
        return f"PgStore({self._where!r})"

    async def _transact(self, operation: str, make: Callable[[], Work[T]], kind: Transaction) -> T:
        """`make()`'s statements in one transaction; it lands even if the caller is
        cancelled meanwhile."""
        if self._closed:
            raise StoreError(f"state store {self._where}: {operation} after close")

        async def transaction() -> T:
            try:
                async with self._pool.connection() as connection, connection.transaction():
                    return await run_work(connection, make())
            except psycopg.Error as exc:  # PoolTimeout too: no connection came in time
                raise StoreError(
                    f"state store {self._where}: {operation} failed: {_describe(exc)}"
                ) from exc

        return await asyncio.shield(asyncio.ensure_future(transaction()))

    async def load(self, tables: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
        """Fill an empty state with rows copied from another store (`migrate-state`):
        chunks, exports, parts and refresh tokens, ids kept. Returns rows per table."""

        def work() -> Work[dict[str, int]]:
            known = yield one("SELECT count(*) AS n FROM chunks")
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
                    yield execute(
                        f"INSERT INTO {table} ({', '.join(columns)})"  # noqa: S608 -- checked
                        f" VALUES ({', '.join(['?'] * len(columns))})",
                        [values[c] for c in columns],
                    )
            for chunk_id, export_id in current:
                yield execute("UPDATE chunks SET export_id = ? WHERE id = ?", (export_id, chunk_id))
            yield execute(
                "SELECT setval(pg_get_serial_sequence('chunks', 'id'),"
                " greatest(1, (SELECT coalesce(max(id), 0) FROM chunks)))"
            )
            return counts

        return await self._transact("load", work, Transaction.WRITE)


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
    """As `sqlite.read_export_durations`: the latest DONE exports' seconds to DONE; none
    before the first run."""
    connection = await _connect(url)
    try:
        async with connection.transaction():
            row = await (
                await connection.execute("SELECT to_regclass('exports') AS name")
            ).fetchone()
            if row is None or row["name"] is None:
                return []
            return await run_work(connection, queries.export_durations(latest))
    except psycopg.Error as exc:
        raise StoreError(f"state store {safe_url(url)}: cannot read: {_describe(exc)}") from exc
    finally:
        await connection.close()
