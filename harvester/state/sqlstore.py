"""`SqlStore`: the `StateStore` both backends share, each method one operation of queries.py.

A backend (`sqlite.Store`, `postgres.PgStore`) opens its connection and says how an
operation runs there (`_transact`): SQLite on its worker thread inside `BEGIN IMMEDIATE`,
PostgreSQL on its async connection inside a transaction. Either way every write is one
transaction, committed before its coroutine returns, and lands even if the caller is
cancelled meanwhile: it often records something that already happened on the server.
Each method's contract is the docstring of its operation in queries.py.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

from harvester.clock import Clock
from harvester.state import queries
from harvester.state.sql import At, Work, to_ms

P = ParamSpec("P")
T = TypeVar("T")

Method = Callable[Concatenate["SqlStore", P], Coroutine[Any, Any, T]]


def _write(operation: Callable[Concatenate[At, P], Work[T]]) -> Method[P, T]:
    """A method that runs `operation` in one write transaction."""

    async def method(self: SqlStore, /, *args: P.args, **kwargs: P.kwargs) -> T:
        work = operation(self._at(), *args, **kwargs)
        return await self._transact(operation.__name__, work, write=True)

    method.__name__, method.__doc__ = operation.__name__, operation.__doc__
    return method


def _read(operation: Callable[Concatenate[At, P], Work[T]]) -> Method[P, T]:
    """A method that runs `operation` in one read transaction."""

    async def method(self: SqlStore, /, *args: P.args, **kwargs: P.kwargs) -> T:
        work = operation(self._at(), *args, **kwargs)
        return await self._transact(operation.__name__, work, write=False)

    method.__name__, method.__doc__ = operation.__name__, operation.__doc__
    return method


class SqlStore:
    """The harvest state over SQL; a backend supplies the connection and `_transact`."""

    def __init__(self, where: str, clock: Clock) -> None:
        self._where = where  # the store's name in messages: a path, or a URL without password
        self._clock = clock
        self._closed = False

    async def _transact(self, operation: str, work: Work[T], write: bool) -> T:
        """Run `work` in one transaction (one that takes no write lock unless `write`)."""
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

    def _at(self) -> At:
        return At(self._where, to_ms(self._clock.now()))

    # chunks
    add_chunks = _write(queries.add_chunks)
    covered = _read(queries.covered)
    chunks = _read(queries.chunks)
    get_chunk = _read(queries.get_chunk)
    reset_for_reharvest = _write(queries.reset_for_reharvest)
    complete_chunk = _write(queries.complete_chunk)
    fail_chunk = _write(queries.fail_chunk)
    note_lost_create = _write(queries.note_lost_create)
    start_run = _write(queries.start_run)
    # exports
    record_export = _write(queries.record_export)
    update_export = _write(queries.update_export)
    export_done = _write(queries.export_done)
    end_export = _write(queries.end_export)
    get_export = _read(queries.get_export)
    # parts and refresh tokens
    record_part = _write(queries.record_part)
    parts = _read(queries.parts)
    refresh_token = _read(queries.refresh_token)
    save_refresh_token = _write(queries.save_refresh_token)
    # processes and claims
    register_process = _write(queries.register_process)
    renew_process = _write(queries.renew_process)
    end_process = _write(queries.end_process)
    processes = _read(queries.processes)
    claim_chunk = _write(queries.claim_chunk)
    holds_chunk = _read(queries.holds_chunk)
    release_chunk = _write(queries.release_chunk)
    # shared export slots and refresh locks
    take_slot = _write(queries.take_slot)
    reset_hosts = _write(queries.reset_hosts)
    leave_slot_queue = _write(queries.leave_slot_queue)
    release_slot = _write(queries.release_slot)
    slot_busy = _write(queries.slot_busy)
    slot_went_through = _write(queries.slot_went_through)
    lock_token = _write(queries.lock_token)
    unlock_token = _write(queries.unlock_token)
    # what `status` shows, in one transaction (with `now`: the live claims too)
    snapshot = _read(queries.snapshot)
