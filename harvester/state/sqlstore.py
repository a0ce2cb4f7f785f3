"""`SqlStore`: the `StateStore` both backends share, each method one operation of queries.py.

A backend (`sqlite.Store`, `postgres.PgStore`) opens its connection and says how an
operation runs there (`_transact`): SQLite on its worker thread inside `BEGIN IMMEDIATE`
(with the others asked for meanwhile, each in a savepoint: a group commit), PostgreSQL on
its async connection inside a transaction. Either way every write is atomic, committed
before its coroutine returns, and lands even if the caller is cancelled meanwhile: it often
records something that already happened on the server.
Each method's contract is the docstring of its operation in queries.py.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from enum import Enum
from functools import partial
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

from harvester.clock import Clock
from harvester.state import queries
from harvester.state.sql import At, Work, to_ms

P = ParamSpec("P")
T = TypeVar("T")

Method = Callable[Concatenate["SqlStore", P], Coroutine[Any, Any, T]]


class Transaction(Enum):
    """What an operation needs around it."""

    READ = "read"  # one statement: in SQLite it needs no transaction of its own
    SNAPSHOT = "snapshot"  # several reads that must see one committed state
    WRITE = "write"  # reads and writes that no other writer may come between


def _runs(
    kind: Transaction, timed: bool
) -> Callable[[Callable[Concatenate[At, P], Work[T]]], Method[P, T]]:
    """Turns an operation into a method that runs it in a transaction of `kind`, given the
    time of the call if `timed`."""

    def method_of(operation: Callable[Concatenate[At, P], Work[T]]) -> Method[P, T]:
        name = operation.__name__

        async def method(self: SqlStore, /, *args: P.args, **kwargs: P.kwargs) -> T:
            at = At(self._where, to_ms(self._clock.now())) if timed else self._untimed
            return await self._transact(name, partial(operation, at, *args, **kwargs), kind)

        method.__name__, method.__doc__ = name, operation.__doc__
        return method

    return method_of


_read = _runs(Transaction.READ, timed=False)
_timed_read = _runs(Transaction.READ, timed=True)
_snapshot = _runs(Transaction.SNAPSHOT, timed=False)
_write = _runs(Transaction.WRITE, timed=False)
_timed_write = _runs(Transaction.WRITE, timed=True)


class SqlStore:
    """The harvest state over SQL; a backend supplies the connection and `_transact`."""

    def __init__(self, where: str, clock: Clock) -> None:
        self._where = where  # the store's name in messages: a path, or a URL without password
        self._clock = clock
        self._closed = False
        self._untimed = At(where)

    async def _transact(self, operation: str, make: Callable[[], Work[T]], kind: Transaction) -> T:
        """Run the statements `make()` gives in a transaction of `kind` (a backend may make
        them more than once: a group commit that met a failure runs again); it lands even
        if the caller is cancelled."""
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

    # chunks
    add_chunks = _timed_write(queries.add_chunks)
    add_chunks_of = _timed_write(queries.add_chunks_of)
    covered = _read(queries.covered)
    chunks = _read(queries.chunks)
    chunks_of = _snapshot(queries.chunks_of)
    get_chunk = _read(queries.get_chunk)
    reset_for_reharvest = _timed_write(queries.reset_for_reharvest)
    reset_for_reharvest_of = _timed_write(queries.reset_for_reharvest_of)
    complete_chunk = _timed_write(queries.complete_chunk)
    fail_chunk = _timed_write(queries.fail_chunk)
    note_lost_create = _write(queries.note_lost_create)
    start_run = _timed_write(queries.start_run)
    # exports
    record_export = _timed_write(queries.record_export)
    update_export = _timed_write(queries.update_export)
    export_done = _timed_write(queries.export_done)
    end_export = _timed_write(queries.end_export)
    get_export = _read(queries.get_export)
    past_durations = _read(queries.past_durations)
    recent_durations = _read(queries.recent_durations)
    # parts and refresh tokens
    record_part = _write(queries.record_part)
    parts = _read(queries.parts)
    refresh_token = _read(queries.refresh_token)
    save_refresh_token = _timed_write(queries.save_refresh_token)
    # processes and claims
    register_process = _write(queries.register_process)
    renew_process = _timed_write(queries.renew_process)
    end_process = _timed_write(queries.end_process)
    processes = _read(queries.processes)
    live_processes = _timed_read(queries.live_processes)
    claim_chunk = _timed_write(queries.claim_chunk)
    claim_chunks = _timed_write(queries.claim_chunks)
    holds_chunk = _read(queries.holds_chunk)
    held_parts = _read(queries.held_parts)
    export_done_held = _timed_write(queries.export_done_held)
    release_chunk = _write(queries.release_chunk)
    # shared export slots and refresh locks
    take_slot = _timed_write(queries.take_slot)
    reset_hosts = _write(queries.reset_hosts)
    leave_slot_queue = _write(queries.leave_slot_queue)
    release_slot = _write(queries.release_slot)
    slot_busy = _timed_write(queries.slot_busy)
    slot_went_through = _write(queries.slot_went_through)
    lock_token = _timed_write(queries.lock_token)
    unlock_token = _write(queries.unlock_token)
    # Clover's app limits shared by the processes on a host
    join_host = _timed_write(queries.join_host)
    leave_host = _write(queries.leave_host)
    host_view = _timed_read(queries.host_view)
    host_version = _read(queries.host_version)
    pause_app = _write(queries.pause_app)
    # what `status` shows, in one transaction (with `now`: the live claims too)
    snapshot = _snapshot(queries.snapshot)
