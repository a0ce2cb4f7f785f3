"""Durable harvest state in SQLite: the file, its schema, and how an operation runs there.

The harvester runs unattended, can be killed at any instant, and resumes from this file:
it must lose nothing, duplicate nothing, and never forget an export it created (each one
holds a scarce server slot). So every write is committed in WAL mode with synchronous=FULL
before its coroutine returns.

One connection lives on one dedicated worker thread: SQLite never blocks the event loop and
never sees two threads. An operation (queries.py, shared with PostgreSQL) runs whole on that
thread, in one hop. Operations asked for while the thread is busy wait for it together and
then run as one group: one transaction, one COMMIT and so one sync for all of them (if one
fails, the group runs again with a savepoint per operation, so that it alone is rolled
back); none of their coroutines returns before that COMMIT. At a thousand merchants a sync
per operation was most of the harvester's time. `read_snapshot` is the separate, read-only
way in for `harvester status`, safe while a run is writing.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from harvester.clock import Clock, SystemClock
from harvester.errors import StoreError
from harvester.logs import get_logger
from harvester.state import queries
from harvester.state.records import Snapshot
from harvester.state.schema import SQLITE_MIGRATIONS
from harvester.state.signals import HostSignals, PolledSignals
from harvester.state.sql import At, Fetch, Work, sqlite_text
from harvester.state.sqlstore import SqlStore, Transaction

T = TypeVar("T")


MIGRATIONS = SQLITE_MIGRATIONS  # applied in order on open; see schema.py

SCHEMA_VERSION = len(MIGRATIONS)  # what PRAGMA user_version says once open

_BUSY_TIMEOUT_S = 30.0
# Opening races other processes opening the same new file: switching to WAL is not covered
# by the busy timeout, so a "locked" answer on open is tried again after a pause.
_OPEN_ATTEMPTS = 12
_OPEN_PAUSE_S = 0.05
# The most operations one group commit takes: a bound on how long any of them waits.
_MOST_IN_A_GROUP = 256


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


def run_work(connection: sqlite3.Connection, work: Work[T]) -> T:
    """Run an operation's queries on this connection, one after another (in one hop)."""
    result: Any = None
    try:
        while True:
            sql, params, fetch = work.send(result)
            text = sqlite_text(sql)  # None: SQLite has nothing to do for it
            result = None if text is None else _FETCH[fetch](connection.execute(text, params))
    except StopIteration as done:
        value: T = done.value
        return value
    finally:
        work.close()


_FETCH: dict[Fetch, Callable[[sqlite3.Cursor], Any]] = {
    Fetch.ONE: sqlite3.Cursor.fetchone,
    Fetch.ALL: sqlite3.Cursor.fetchall,
    Fetch.COUNT: lambda cursor: cursor.rowcount,
    Fetch.NOTHING: lambda cursor: None,
}


@dataclass(slots=True, eq=False)
class _Call:
    """One operation asked of the store, and once its group has run, how it went."""

    operation: str
    make: Callable[[], Work[Any]]  # the operation's statements, afresh each time it runs
    kind: Transaction
    done: asyncio.Future[Any]  # answered on the loop once the group's COMMIT is behind it
    result: Any = None
    error: BaseException | None = None


class _TransactionEnded(Exception):
    """An operation of a group ended the group's transaction (SQLite did, or the operation)."""


class Store(SqlStore):
    """The harvest state in SQLite. Open with `await Store.open(path, clock)`, use `async with`."""

    def __init__(
        self,
        path: Path,
        clock: Clock,
        executor: ThreadPoolExecutor,
        connection: sqlite3.Connection,
    ) -> None:
        super().__init__(str(path), clock)
        self._path = path
        self._executor = executor
        self._connection = connection
        self._waiting: list[_Call] = []  # asked for while a group ran: the next group
        self._group: asyncio.Future[None] | None = None  # the group on the thread now
        self._signals: PolledSignals | None = None  # made on first use

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
        if self._signals is not None:
            await self._signals.close()
        self._closed = True
        loop = asyncio.get_running_loop()
        while self._group is not None:  # the calls already made run first
            await asyncio.shield(self._group)
        try:
            await loop.run_in_executor(self._executor, self._connection.close)
        except sqlite3.Error as exc:
            raise StoreError(f"state store {self._path}: close failed: {exc}") from exc
        finally:
            await asyncio.to_thread(self._executor.shutdown, wait=True)

    def __repr__(self) -> str:
        return f"Store({str(self._path)!r})"

    def host_signals(self) -> HostSignals:
        """A poller per waited-on host, on real time (as the lease's heartbeat: a fake clock
        would leap by a poll whenever everything else waits)."""
        if self._signals is None:
            self._signals = PolledSignals(self, SystemClock())
        return self._signals

    async def _transact(self, operation: str, make: Callable[[], Work[T]], kind: Transaction) -> T:
        if self._closed:
            raise StoreError(f"state store {self._path}: {operation} after close")
        call = _Call(operation, make, kind, asyncio.get_running_loop().create_future())
        self._waiting.append(call)
        if self._group is None:
            self._start_group()
        # Once asked for, a write lands even if the caller is cancelled meanwhile: the group
        # runs every call it took; a cancelled caller's answer is dropped (no shield needed).
        result: T = await call.done
        return result

    def _start_group(self) -> None:
        """Hand the calls waiting to the thread as one group (on the loop's thread)."""
        group = self._waiting[:_MOST_IN_A_GROUP]
        del self._waiting[:_MOST_IN_A_GROUP]
        running = asyncio.get_running_loop().run_in_executor(self._executor, self._run_group, group)
        self._group = running
        running.add_done_callback(lambda _: self._group_done(group))

    def _group_done(self, group: list[_Call]) -> None:
        """The group's COMMIT is behind it: answer its calls, start the next group."""
        self._group = None
        for call in group:
            if call.done.cancelled():  # its caller was cancelled: the call ran regardless
                continue
            if call.error is not None:
                call.done.set_exception(call.error)
            else:
                call.done.set_result(call.result)
        if self._waiting:
            self._start_group()

    def _run_group(self, group: list[_Call]) -> None:
        """On the thread: run the group, each call's outcome kept in it. Never raises."""
        if len(group) == 1 or all(call.kind is not Transaction.WRITE for call in group):
            # Alone, or reads only: each as on its own (reads without the write lock that
            # other processes wait for).
            for call in group:
                try:
                    call.result = self._transaction(call.operation, call.make(), call.kind)
                except BaseException as exc:  # handed to the caller, whatever it is
                    call.error = exc
            return
        self._run_together(group)

    def _run_together(self, group: list[_Call]) -> None:
        """One transaction for the group, one COMMIT. The calls run straight through; if
        one fails (or ends the transaction), all is rolled back and the group runs again
        with a savepoint per call, so that the failing one is undone alone. Two statements
        a call saved, each a hand-over of the GIL with the event loop, where calls fail
        only now and then (a chunk gone, a claim lost, a full disk)."""
        connection = self._connection
        if not self._begin(group):
            return
        try:
            for call in group:
                call.result = run_work(connection, call.make())
                if not connection.in_transaction:
                    raise _TransactionEnded(call.operation)
        except BaseException:  # whatever it is, the careful run below meets it again
            for call in group:
                call.result = None
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            self._run_carefully(group)
            return
        self._commit(group)

    def _run_carefully(self, group: list[_Call]) -> None:
        """`_run_together` with a savepoint per call."""
        connection = self._connection
        if not self._begin(group):
            return
        for call in group:
            try:
                connection.execute("SAVEPOINT call")
                call.result = run_work(connection, call.make())
                connection.execute("RELEASE call")
            except BaseException as exc:
                call.error = (
                    self._failed(call.operation, exc) if isinstance(exc, sqlite3.Error) else exc
                )
                if not self._undo_call(connection):
                    # SQLite ended the whole transaction (a full disk, say): nothing of
                    # the group landed.
                    for other in group:
                        if other.error is None:
                            other.error = self._failed(other.operation, exc)
                    return
        self._commit(group)

    def _begin(self, group: list[_Call]) -> bool:
        """The group's transaction begun; False (every call failed) if it could not be."""
        try:
            self._connection.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            for call in group:
                call.error = self._failed(call.operation, exc)
            return False
        return True

    def _commit(self, group: list[_Call]) -> None:
        connection = self._connection
        try:
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            for call in group:
                call.error = self._failed(call.operation, exc)

    @staticmethod
    def _undo_call(connection: sqlite3.Connection) -> bool:
        """Roll back the failed call's savepoint; False if the transaction is gone."""
        if not connection.in_transaction:
            return False
        try:
            connection.execute("ROLLBACK TO call")
            connection.execute("RELEASE call")
        except sqlite3.Error:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            return False
        return True

    def _failed(self, operation: str, exc: BaseException) -> StoreError:
        # sqlite3's messages name tables and columns, never bound values (tokens).
        error = StoreError(f"state store {self._path}: {operation} failed: {exc}")
        error.__cause__ = exc
        return error

    def _transaction(self, operation: str, work: Work[T], kind: Transaction) -> T:
        connection = self._connection
        try:
            if kind is Transaction.READ:  # one statement is a transaction of its own
                return run_work(connection, work)
            # A write takes the file's write lock at once: no other process comes between
            # the operation's reads and writes (what FOR UPDATE does in PostgreSQL).
            connection.execute("BEGIN IMMEDIATE" if kind is Transaction.WRITE else "BEGIN")
            try:
                result = run_work(connection, work)
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            return result
        except sqlite3.Error as exc:
            raise self._failed(operation, exc) from exc

    async def _on_thread(self, operation: str, call: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreError(f"state store {self._path}: {operation} after close")
        future = asyncio.get_running_loop().run_in_executor(
            self._executor, self._guarded, operation, call
        )
        # Once asked for, a write lands even if the caller is cancelled meanwhile.
        return await asyncio.shield(future)

    def _guarded(self, operation: str, call: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return call(self._connection)
        except sqlite3.Error as exc:
            # sqlite3's messages name tables and columns, never bound values (tokens).
            raise StoreError(f"state store {self._path}: {operation} failed: {exc}") from exc

    async def dump(self) -> dict[str, list[dict[str, object]]]:
        """The rows `migrate-state` copies: chunks, exports (oldest first), parts, tokens."""
        tables = {
            "chunks": "SELECT * FROM chunks ORDER BY id",
            "exports": "SELECT * FROM exports ORDER BY created_at_ms, rowid",
            "parts": "SELECT * FROM parts ORDER BY export_id, part_index",
            "refresh_tokens": "SELECT * FROM refresh_tokens ORDER BY merchant_id",
        }

        def work(connection: sqlite3.Connection) -> dict[str, list[dict[str, object]]]:
            return {
                table: [dict(row) for row in connection.execute(query)]
                for table, query in tables.items()
            }

        return await self._on_thread("dump", work)


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
        snapshot = run_work(connection, queries.snapshot(At(str(path)), now))
        connection.execute("COMMIT")
    except sqlite3.Error as exc:
        raise StoreError(f"state store {path}: cannot read: {exc}") from exc
    finally:
        connection.close()
    return snapshot


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
        connection.row_factory = sqlite3.Row
        return run_work(connection, queries.export_durations(latest))
    except sqlite3.Error as exc:
        raise StoreError(f"state store {path}: cannot read: {exc}") from exc
    finally:
        connection.close()


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
