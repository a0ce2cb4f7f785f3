"""The state store: durable, migrated, one transaction per write, off the event loop."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from harvester.clover.chunks import ExportType, TimeRange
from harvester.errors import StoreError
from harvester.state.records import (
    ChunkRecord,
    ChunkStatus,
    ExportRecord,
    ExportState,
    PartRecord,
    StateStore,
)
from harvester.state.sql import Work, execute
from harvester.state.sqlite import MIGRATIONS, SCHEMA_VERSION, Store, read_snapshot
from harvester.state.sqlstore import Transaction
from tests.conftest import BACKENDS, opened_store
from tests.fakeclock import FakeClock
from tests.statefile import exports_in, pg_exports_in

START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
JANUARY = TimeRange(datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 1, 31, tzinfo=UTC))
FEBRUARY = TimeRange(datetime(2025, 1, 31, tzinfo=UTC), datetime(2025, 3, 2, tzinfo=UTC))
MID_JANUARY = TimeRange(datetime(2025, 1, 15, tzinfo=UTC), datetime(2025, 2, 14, tzinfo=UTC))
MERCHANT = "MERCHANT00001"
URLS = ("https://files.example/1", "https://files.example/2")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "harvester.sqlite"


@pytest.fixture(params=BACKENDS)
async def store(
    request: pytest.FixtureRequest, db_path: Path, clock: FakeClock
) -> AsyncIterator[StateStore]:
    """The store on each backend: every test taking it runs on SQLite and on PostgreSQL."""
    async with opened_store(request.param, request, db_path, clock) as opened:
        yield opened


@pytest.fixture
def recorded_exports(
    request: pytest.FixtureRequest, store: StateStore, db_path: Path
) -> Callable[..., list[ExportRecord]]:
    """The exports `store` holds, read straight from its tables (of one chunk, if given)."""
    if isinstance(store, Store):
        return lambda chunk_id=None: exports_in(db_path, chunk_id)
    url: str = request.getfixturevalue("pg_url")
    return lambda chunk_id=None: pg_exports_in(url, chunk_id)


@pytest.fixture
async def sqlite_store(db_path: Path, clock: FakeClock) -> AsyncIterator[Store]:
    """The SQLite store, for what only it has: a file, a worker thread, read_snapshot."""
    async with await Store.open(db_path, clock) as opened:
        yield opened


def user_version(path: Path) -> int:
    connection = sqlite3.connect(path)
    try:
        version: int = connection.execute("PRAGMA user_version").fetchone()[0]
        return version
    finally:
        connection.close()


async def add_one(store: StateStore, time_range: TimeRange = JANUARY) -> ChunkRecord:
    [chunk] = await store.add_chunks(MERCHANT, ExportType.PAYMENTS, [time_range])
    return chunk


# -- opening and migrations ---------------------------------------------------------------


async def test_open_creates_the_folder_and_the_schema(db_path: Path, clock: FakeClock) -> None:
    """Opening a path in a missing folder creates it and a WAL database at the latest schema."""
    async with await Store.open(db_path, clock):
        pass
    assert user_version(db_path) == SCHEMA_VERSION == 6
    connection = sqlite3.connect(db_path)
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    finally:
        connection.close()
    assert {"chunks", "exports", "parts", "refresh_tokens", "host_users"} <= tables


async def test_reopening_keeps_data_and_migrates_nothing(db_path: Path, clock: FakeClock) -> None:
    """Re-opening an up-to-date store changes neither its version nor its rows."""
    async with await Store.open(db_path, clock) as first:
        added = await add_one(first)
    async with await Store.open(db_path, clock) as second:
        assert await second.chunks() == [added]
    assert user_version(db_path) == SCHEMA_VERSION


async def test_a_new_migration_is_applied_on_open(db_path: Path, clock: FakeClock) -> None:
    """A migration appended later runs once on the next open and raises user_version."""
    async with await Store.open(db_path, clock) as first:
        await add_one(first)
    extra = ("CREATE TABLE notes (id INTEGER PRIMARY KEY)",)
    async with await Store.open(db_path, clock, (*MIGRATIONS, extra)) as second:
        assert len(await second.chunks()) == 1
    assert user_version(db_path) == SCHEMA_VERSION + 1
    connection = sqlite3.connect(db_path)
    try:
        assert connection.execute("SELECT count(*) FROM notes").fetchone()[0] == 0
    finally:
        connection.close()


async def test_a_first_version_store_gains_the_lost_create_count(
    db_path: Path, clock: FakeClock
) -> None:
    """A store written before lost creates were counted opens with its chunks at 0 of them,
    and counts them from then on."""
    async with await Store.open(db_path, clock, MIGRATIONS[:1]):
        pass
    assert user_version(db_path) == 1
    # Written as the first schema knew chunks (this harvester's reads need the new column).
    connection = sqlite3.connect(db_path)
    with connection:
        connection.execute(
            "INSERT INTO chunks (merchant_id, type, start_ms, end_ms, status, updated_at_ms)"
            " VALUES (?, 'PAYMENTS', ?, ?, 'pending', 0)",
            (MERCHANT, JANUARY.start_ms, JANUARY.end_ms),
        )
    connection.close()
    async with await Store.open(db_path, clock) as store:
        [chunk] = await store.chunks()
        assert chunk.lost_creates == 0
        await store.note_lost_create(chunk.id)
        await store.note_lost_create(chunk.id)
        assert (await store.get_chunk(chunk.id)).lost_creates == 2
        with pytest.raises(StoreError, match="no chunk 999"):
            await store.note_lost_create(999)
    assert user_version(db_path) == SCHEMA_VERSION
    assert read_snapshot(db_path).chunks[0].lost_creates == 2


async def test_a_failing_migration_changes_nothing(db_path: Path, clock: FakeClock) -> None:
    """A migration that fails is rolled back whole and the open fails with a StoreError."""
    async with await Store.open(db_path, clock):
        pass
    broken = ("CREATE TABLE half (id INTEGER)", "THIS IS NOT SQL")
    with pytest.raises(StoreError, match=str(db_path)):
        await Store.open(db_path, clock, (*MIGRATIONS, broken))
    assert user_version(db_path) == SCHEMA_VERSION
    connection = sqlite3.connect(db_path)
    try:
        names = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    finally:
        connection.close()
    assert "half" not in names


async def test_a_newer_schema_is_refused(db_path: Path, clock: FakeClock) -> None:
    """A file written by a newer harvester (higher user_version) is not touched."""
    async with await Store.open(db_path, clock):
        pass
    connection = sqlite3.connect(db_path)
    connection.execute("PRAGMA user_version = 99")
    connection.close()
    with pytest.raises(StoreError, match="newer"):
        await Store.open(db_path, clock)
    assert user_version(db_path) == 99


async def test_a_file_that_is_not_a_database_is_a_store_error(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Garbage in place of the database gives a StoreError naming the path."""
    path = tmp_path / "state.sqlite"
    path.write_bytes(b"this is not a database, just text" * 100)
    with pytest.raises(StoreError, match=str(path)):
        await Store.open(path, clock)


async def test_calls_after_close_fail_and_close_is_idempotent(store: StateStore) -> None:
    """A closed store refuses further calls; closing twice is harmless."""
    await store.close()
    await store.close()
    with pytest.raises(StoreError, match="after close"):
        await store.chunks()


async def test_calls_run_on_the_store_thread_not_the_loop(db_path: Path, clock: FakeClock) -> None:
    """SQL runs on the store's own worker thread, never on the event loop's thread."""
    seen: list[str] = []

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "c_call" and getattr(arg, "__qualname__", "") == "Connection.execute":
            seen.append(threading.current_thread().name)

    # Threads started from now on (the store's own) and this one report their C calls.
    threading.setprofile(profile)
    sys.setprofile(profile)
    try:
        async with await Store.open(db_path, clock) as store:
            await add_one(store)
            await store.chunks()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    assert seen
    assert all(name.startswith("harvester-store") for name in seen)
    assert threading.current_thread().name not in seen


# -- chunks ---------------------------------------------------------------------------------


async def test_add_chunks_inserts_pending_and_is_idempotent(
    store: StateStore, clock: FakeClock
) -> None:
    """Known ranges come back unchanged, new ones are inserted PENDING, in the order given."""
    [january] = await store.add_chunks(MERCHANT, ExportType.PAYMENTS, [JANUARY])
    assert january.status is ChunkStatus.PENDING
    assert (january.range, january.export_id, january.exports_created) == (JANUARY, None, 0)
    assert january.completed_at is None
    assert january.updated_at == START
    clock.advance(60)
    again = await store.add_chunks(MERCHANT, ExportType.PAYMENTS, [FEBRUARY, JANUARY])
    assert again[1] == january
    assert again[0].range == FEBRUARY
    assert again[0].updated_at == START + timedelta(seconds=60)
    assert [chunk.range for chunk in await store.chunks()] == [JANUARY, FEBRUARY]


async def test_add_chunks_refuses_an_overlap_and_adds_nothing(store: StateStore) -> None:
    """A range overlapping a known chunk with other bounds fails the whole batch."""
    await add_one(store, JANUARY)
    with pytest.raises(StoreError, match="overlaps"):
        await store.add_chunks(MERCHANT, ExportType.PAYMENTS, [FEBRUARY, MID_JANUARY])
    assert [chunk.range for chunk in await store.chunks()] == [JANUARY]


async def test_add_chunks_refuses_overlaps_within_one_batch(store: StateStore) -> None:
    """Two new ranges that overlap each other are refused too."""
    with pytest.raises(StoreError, match="overlaps"):
        await store.add_chunks(MERCHANT, ExportType.PAYMENTS, [JANUARY, MID_JANUARY])
    assert await store.chunks() == []


async def test_overlap_only_counts_within_merchant_and_type(store: StateStore) -> None:
    """The same instants may be chunked for another type or another merchant."""
    await store.add_chunks(MERCHANT, ExportType.PAYMENTS, [JANUARY])
    await store.add_chunks(MERCHANT, ExportType.ORDERS, [MID_JANUARY])
    await store.add_chunks("MERCHANT00002", ExportType.PAYMENTS, [MID_JANUARY])
    chunks = await store.chunks()
    assert [(c.merchant_id, c.type) for c in chunks] == [
        (MERCHANT, ExportType.ORDERS),
        (MERCHANT, ExportType.PAYMENTS),
        ("MERCHANT00002", ExportType.PAYMENTS),
    ]


async def test_chunks_filters_by_merchant_type_and_status(store: StateStore) -> None:
    """Each filter given narrows the list; an empty status set matches nothing."""
    first, second = await store.add_chunks(MERCHANT, ExportType.PAYMENTS, [JANUARY, FEBRUARY])
    await store.add_chunks(MERCHANT, ExportType.ORDERS, [JANUARY])
    await store.complete_chunk(second.id)
    payments = await store.chunks(MERCHANT, ExportType.PAYMENTS)
    assert [chunk.id for chunk in payments] == [first.id, second.id]
    done = await store.chunks(statuses={ChunkStatus.COMPLETE})
    assert [chunk.id for chunk in done] == [second.id]
    assert await store.chunks(statuses=()) == []
    assert await store.chunks("NOBODY") == []


async def test_unknown_chunk_ids_are_store_errors(
    store: StateStore, recorded_exports: Callable[..., list[ExportRecord]]
) -> None:
    """Asking about or changing a chunk that does not exist raises StoreError."""
    with pytest.raises(StoreError, match="no chunk 999"):
        await store.get_chunk(999)
    with pytest.raises(StoreError, match="no chunk 999"):
        await store.complete_chunk(999)
    with pytest.raises(StoreError, match="no chunk 999"):
        await store.record_export(999, "E1", "PENDING", 0.0)
    assert recorded_exports() == []


async def test_full_lifecycle(
    store: StateStore, clock: FakeClock, recorded_exports: Callable[..., list[ExportRecord]]
) -> None:
    """A chunk goes pending -> exporting -> downloading -> complete and becomes covered."""
    chunk = await add_one(store)

    clock.advance(1)
    export = await store.record_export(chunk.id, "E1", "PENDING", 0.0)
    assert (export.id, export.chunk_id, export.state) == ("E1", chunk.id, ExportState.RUNNING)
    assert export.created_at == START + timedelta(seconds=1)
    exporting = await store.get_chunk(chunk.id)
    assert exporting.status is ChunkStatus.EXPORTING
    assert (exporting.export_id, exporting.exports_created) == ("E1", 1)

    clock.advance(30)
    await store.update_export("E1", "IN_PROGRESS", 42.5)
    polled = await store.get_export("E1")
    assert polled is not None
    assert (polled.status, polled.percent) == ("IN_PROGRESS", 42.5)
    assert polled.updated_at == START + timedelta(seconds=31)

    until = START + timedelta(hours=24)
    returned = await store.export_done("E1", until, URLS)
    done = await store.get_export("E1")
    assert done == returned  # what export_done returns is the export as stored
    assert (done.state, done.status, done.urls, done.available_until) == (
        ExportState.DONE,
        "DONE",
        URLS,
        until,
    )
    assert (await store.get_chunk(chunk.id)).status is ChunkStatus.DOWNLOADING

    clock.advance(5)
    await store.complete_chunk(chunk.id)
    complete = await store.get_chunk(chunk.id)
    assert complete.status is ChunkStatus.COMPLETE
    assert complete.completed_at == START + timedelta(seconds=36)
    assert complete.export_id == "E1"
    assert (complete.last_error, complete.last_error_at) == (None, None)
    assert await store.covered(MERCHANT, ExportType.PAYMENTS) == [JANUARY]
    assert await store.covered(MERCHANT, ExportType.ORDERS) == []
    assert len(recorded_exports()) == 1


async def test_end_export_puts_the_chunk_back_to_pending(
    store: StateStore, clock: FakeClock, recorded_exports: Callable[..., list[ExportRecord]]
) -> None:
    """An export that fails, expires or is lost is dropped and its chunk is due again."""
    chunk = await add_one(store)
    await store.record_export(chunk.id, "E1", "PENDING", 0.0)
    await store.export_done("E1", None, URLS)
    clock.advance(10)
    await store.end_export("E1", ExportState.EXPIRED, "files expired")
    ended = await store.get_export("E1")
    assert ended is not None
    assert ended.state is ExportState.EXPIRED
    pending = await store.get_chunk(chunk.id)
    assert (pending.status, pending.export_id) == (ChunkStatus.PENDING, None)
    assert (pending.last_error, pending.last_error_at) == ("files expired", clock.now())

    await store.record_export(chunk.id, "E2", "PENDING", 0.0)
    again = await store.get_chunk(chunk.id)
    assert (again.export_id, again.exports_created) == ("E2", 2)
    assert [export.id for export in recorded_exports(chunk.id)] == ["E1", "E2"]
    assert len(recorded_exports()) == 2


async def test_end_export_takes_only_ending_states(store: StateStore) -> None:
    """end_export refuses RUNNING or DONE: they are not endings."""
    chunk = await add_one(store)
    await store.record_export(chunk.id, "E1", "PENDING", 0.0)
    with pytest.raises(ValueError, match="ending state"):
        await store.end_export("E1", ExportState.DONE, "nope")


async def test_record_export_twice_counts_once(store: StateStore) -> None:
    """Recording the same export for the same chunk again changes nothing."""
    chunk = await add_one(store)
    first = await store.record_export(chunk.id, "E1", "PENDING", 0.0)
    assert await store.record_export(chunk.id, "E1", "PENDING", 0.0) == first
    assert (await store.get_chunk(chunk.id)).exports_created == 1
    other = await add_one(store, FEBRUARY)
    with pytest.raises(StoreError, match="already belongs"):
        await store.record_export(other.id, "E1", "PENDING", 0.0)


async def test_reset_for_reharvest_keeps_coverage(store: StateStore, clock: FakeClock) -> None:
    """A complete chunk reset for lookback is pending again but still counts as covered."""
    chunk = await add_one(store)
    await store.record_export(chunk.id, "E1", "PENDING", 0.0)
    await store.export_done("E1", None, URLS)
    await store.complete_chunk(chunk.id)
    completed_at = (await store.get_chunk(chunk.id)).completed_at
    clock.advance(3600)
    reset = await store.reset_for_reharvest(chunk.id)
    assert (reset.status, reset.export_id) == (ChunkStatus.PENDING, None)
    assert reset.completed_at == completed_at
    assert await store.covered(MERCHANT, ExportType.PAYMENTS) == [JANUARY]
    assert await store.get_chunk(chunk.id) == reset


async def test_reset_for_reharvest_leaves_other_statuses_alone(store: StateStore) -> None:
    """Only a COMPLETE chunk is reset; one already due is returned as it is."""
    chunk = await add_one(store)
    await store.record_export(chunk.id, "E1", "PENDING", 0.0)
    exporting = await store.get_chunk(chunk.id)
    assert await store.reset_for_reharvest(chunk.id) == exporting


async def test_fail_chunk_keeps_a_live_export_only(store: StateStore) -> None:
    """A failed chunk keeps a RUNNING export (to re-attach later) but not an ended one."""
    running, ended = await store.add_chunks(MERCHANT, ExportType.PAYMENTS, [JANUARY, FEBRUARY])
    await store.record_export(running.id, "E1", "IN_PROGRESS", 10.0)
    await store.record_export(ended.id, "E2", "PENDING", 0.0)
    await store.end_export("E2", ExportState.FAILED, "status FAILED")
    await store.fail_chunk(running.id, "too many retries")
    await store.fail_chunk(ended.id, "too many exports")
    first, second = await store.get_chunk(running.id), await store.get_chunk(ended.id)
    assert (first.status, first.export_id, first.last_error) == (
        ChunkStatus.FAILED,
        "E1",
        "too many retries",
    )
    assert (second.status, second.export_id) == (ChunkStatus.FAILED, None)


async def test_start_run_retries_failed_chunks(store: StateStore) -> None:
    """A new run sends FAILED chunks back to work, re-attaching to live exports."""
    plain, running, done, complete = await store.add_chunks(
        MERCHANT,
        ExportType.PAYMENTS,
        [
            TimeRange.from_ms(0, 1000),
            TimeRange.from_ms(1000, 2000),
            TimeRange.from_ms(2000, 3000),
            TimeRange.from_ms(3000, 4000),
        ],
    )
    await store.record_export(running.id, "RUN", "IN_PROGRESS", 50.0)
    await store.record_export(done.id, "DONE", "PENDING", 0.0)
    await store.export_done("DONE", None, URLS)
    await store.complete_chunk(complete.id)
    for chunk in (plain, running, done):
        await store.fail_chunk(chunk.id, "window closed")
    await store.start_run()
    statuses = {chunk.id: (chunk.status, chunk.export_id) for chunk in await store.chunks()}
    assert statuses == {
        plain.id: (ChunkStatus.PENDING, None),
        running.id: (ChunkStatus.EXPORTING, "RUN"),
        done.id: (ChunkStatus.DOWNLOADING, "DONE"),
        complete.id: (ChunkStatus.COMPLETE, None),
    }


async def test_end_export_of_a_failed_chunk_keeps_it_failed(store: StateStore) -> None:
    """Ending the kept export of a chunk given up for this run does not revive it now."""
    chunk = await add_one(store)
    await store.record_export(chunk.id, "E1", "PENDING", 0.0)
    await store.fail_chunk(chunk.id, "gave up")
    await store.end_export("E1", ExportState.LOST, "404")
    ended = await store.get_chunk(chunk.id)
    assert (ended.status, ended.export_id, ended.last_error) == (ChunkStatus.FAILED, None, "404")


async def test_a_cancelled_write_still_lands(sqlite_store: StateStore, db_path: Path) -> None:
    """Cancelling a caller whose write is still queued does not drop the write."""
    chunk = await add_one(sqlite_store)
    # Another connection holds the write lock, so the sqlite_store thread waits in the first write.
    blocker = sqlite3.connect(db_path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        busy = asyncio.create_task(sqlite_store.save_refresh_token(MERCHANT, "r-1", None))
        await asyncio.sleep(0)
        write = asyncio.create_task(sqlite_store.record_export(chunk.id, "E1", "PENDING", 0.0))
        await asyncio.sleep(0)  # the write is queued behind the busy call
        write.cancel()
        with pytest.raises(asyncio.CancelledError):
            await write
        blocker.execute("COMMIT")
    finally:
        blocker.close()
    await busy
    assert (await sqlite_store.get_chunk(chunk.id)).export_id == "E1"


async def test_writes_asked_for_while_the_thread_is_busy_commit_together(
    db_path: Path, clock: FakeClock
) -> None:
    """Writes queued behind a busy store thread run as one group: one COMMIT for all of
    them, straight through with no savepoint (none failed), and each caller's write has
    landed when its call returns."""
    async with await Store.open(db_path, clock) as store:
        statements: list[str] = []
        await store._on_thread("trace", lambda c: c.set_trace_callback(statements.append))
        async with thread_held(store, db_path):
            queued = [
                asyncio.create_task(
                    store.add_chunks(f"MERCHANT0000{n}", ExportType.ORDERS, [JANUARY])
                )
                for n in range(5)
            ]
        added = [chunk for task in queued for chunk in await task]
        assert statements.count("COMMIT") == 2  # the busy write's, and the group's
        assert not [s for s in statements if s.startswith("SAVEPOINT")]
        assert [chunk.merchant_id for chunk in added] == [f"MERCHANT0000{n}" for n in range(5)]
    assert len(read_snapshot(db_path).chunks) == 5


async def test_a_failing_operation_of_a_group_is_rolled_back_alone(
    db_path: Path, clock: FakeClock
) -> None:
    """In a group, an operation that fails after writing leaves nothing behind, and the
    operations around it land: the group runs again, a savepoint per operation, and
    commits once."""
    async with await Store.open(db_path, clock) as store:
        done = await add_one(store)
        await store.complete_chunk(done.id)
        statements: list[str] = []
        await store._on_thread("trace", lambda c: c.set_trace_callback(statements.append))
        async with thread_held(store, db_path):
            before = asyncio.create_task(
                store.add_chunks("MERCHANT00002", ExportType.ORDERS, [JANUARY])
            )
            # Resets the complete chunk, then finds no chunk 999999: its reset must go.
            failing = asyncio.create_task(store.reset_for_reharvest_of([done.id, 999999]))
            after = asyncio.create_task(
                store.add_chunks("MERCHANT00003", ExportType.ORDERS, [JANUARY])
            )
        with pytest.raises(StoreError, match="no chunk 999999"):
            await failing
        assert [c.merchant_id for c in await before] == ["MERCHANT00002"]
        assert [c.merchant_id for c in await after] == ["MERCHANT00003"]
        assert (await store.get_chunk(done.id)).status is ChunkStatus.COMPLETE
        assert statements.count("SAVEPOINT call") == 3
        assert statements.count("COMMIT") == 2  # the busy write's, and the group's


@asynccontextmanager
async def thread_held(store: Store, db_path: Path) -> AsyncIterator[None]:
    """Calls made in the block queue up behind a write the store thread waits in: they
    run as one group once the block ends."""
    blocker = sqlite3.connect(db_path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        busy = asyncio.create_task(store.save_refresh_token(MERCHANT, "r-1", None))
        await asyncio.sleep(0)
        yield
        await asyncio.sleep(0)
        blocker.execute("COMMIT")
    finally:
        blocker.close()
    await busy


def hand_made(*statements: str) -> Work[None]:
    """An operation of raw statements, to provoke what no real operation does."""
    for statement in statements:
        yield execute(statement)


async def test_reads_asked_for_together_run_without_the_write_lock(
    db_path: Path, clock: FakeClock
) -> None:
    """A group of reads only takes no write lock: each reads as on its own."""
    async with await Store.open(db_path, clock) as store:
        chunk = await add_one(store)
        async with thread_held(store, db_path):
            reads = [asyncio.create_task(store.get_chunk(chunk.id)) for _ in range(3)]
            missing = asyncio.create_task(store.get_chunk(999999))
        assert [(await read).id for read in reads] == [chunk.id] * 3
        with pytest.raises(StoreError, match="no chunk 999999"):
            await missing


async def test_when_sqlite_ends_a_group_s_transaction_nothing_of_the_group_lands(
    db_path: Path, clock: FakeClock
) -> None:
    """An operation during which SQLite ends the whole transaction (a full disk, say) fails
    every operation of its group, the ones before it included: none landed."""
    async with await Store.open(db_path, clock) as store:
        async with thread_held(store, db_path):
            before = asyncio.create_task(store.add_chunks(MERCHANT, ExportType.ORDERS, [JANUARY]))
            ending = asyncio.create_task(
                store._transact("ending", partial(hand_made, "ROLLBACK"), Transaction.WRITE)
            )
            after = asyncio.create_task(store.add_chunks(MERCHANT, ExportType.ORDERS, [FEBRUARY]))
        for task in (before, ending, after):
            with pytest.raises(StoreError, match="failed"):
                await task
        assert await store.chunks() == []


async def test_a_group_whose_commit_fails_fails_every_operation_in_it(
    db_path: Path, clock: FakeClock
) -> None:
    """A COMMIT refused (here a deferred foreign key) fails the group's every operation,
    and none of their writes is left behind."""
    async with await Store.open(db_path, clock) as store:
        async with thread_held(store, db_path):
            added = asyncio.create_task(store.add_chunks(MERCHANT, ExportType.ORDERS, [JANUARY]))
            orphan = asyncio.create_task(
                store._transact(
                    "orphan",
                    partial(
                        hand_made,
                        "PRAGMA defer_foreign_keys = ON",
                        "INSERT INTO claims (chunk_id, owner, claimed_at_ms)"
                        " VALUES (999999, 'nobody', 0)",
                    ),
                    Transaction.WRITE,
                )
            )
        for task in (added, orphan):
            with pytest.raises(StoreError, match="FOREIGN KEY"):
                await task
        assert await store.chunks() == []


# -- parts and tokens -----------------------------------------------------------------------


async def test_record_part_is_idempotent(store: StateStore) -> None:
    """A part recorded again has one entry, the latest; parts come back by number."""
    chunk = await add_one(store)
    await store.record_export(chunk.id, "E1", "PENDING", 0.0)
    second = PartRecord("E1", 2, 1, 200, "b" * 64, 20)
    first = PartRecord("E1", 1, 0, 100, "a" * 64, 10)
    await store.record_part(second)
    await store.record_part(first)
    await store.record_part(first)
    assert await store.parts("E1") == [first, second]
    redone = PartRecord("E1", 1, 0, 101, "c" * 64, 11)
    await store.record_part(redone)
    assert await store.parts("E1") == [redone, second]
    assert await store.parts("OTHER") == []


async def test_refresh_token_survives_reopen(db_path: Path, clock: FakeClock) -> None:
    """A saved refresh token and its expiry read back after close and re-open."""
    expires = START + timedelta(days=30)
    async with await Store.open(db_path, clock) as first:
        assert await first.refresh_token(MERCHANT) is None
        await first.save_refresh_token(MERCHANT, "refresh-1", None)
        await first.save_refresh_token(MERCHANT, "refresh-2", expires)
    async with await Store.open(db_path, clock) as second:
        assert await second.refresh_token(MERCHANT) == ("refresh-2", expires)
        assert await second.refresh_token("MERCHANT00002") is None


async def test_store_errors_never_carry_a_token(sqlite_store: StateStore, db_path: Path) -> None:
    """A failing token write names the path but not the token."""
    connection = sqlite3.connect(db_path)
    connection.execute("DROP TABLE refresh_tokens")
    connection.close()
    with pytest.raises(StoreError) as caught:
        await sqlite_store.save_refresh_token(MERCHANT, "secret-refresh-token", None)
    assert str(db_path) in str(caught.value)
    assert "secret-refresh-token" not in str(caught.value)
    assert "secret-refresh-token" not in repr(caught.value.__cause__)
    assert "secret-refresh-token" not in repr(sqlite_store)


# -- read_snapshot --------------------------------------------------------------------------


async def test_read_snapshot_while_a_write_transaction_is_open(
    sqlite_store: StateStore, db_path: Path
) -> None:
    """status reads the committed state while another connection holds the write lock."""
    chunk, complete = await sqlite_store.add_chunks(
        MERCHANT, ExportType.PAYMENTS, [JANUARY, FEBRUARY]
    )
    await sqlite_store.record_export(chunk.id, "E1", "PENDING", 0.0)
    await sqlite_store.record_export(complete.id, "E0", "PENDING", 0.0)
    await sqlite_store.export_done("E0", None, URLS)
    await sqlite_store.complete_chunk(complete.id)
    await sqlite_store.save_refresh_token(MERCHANT, "secret-refresh-token", None)

    writer = sqlite3.connect(db_path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE chunks SET status = 'failed'")
        snapshot = await asyncio.to_thread(read_snapshot, db_path)
        writer.execute("ROLLBACK")
    finally:
        writer.close()

    assert [c.status for c in snapshot.chunks] == [ChunkStatus.EXPORTING, ChunkStatus.COMPLETE]
    assert [export.id for export in snapshot.running] == ["E1"]
    assert "secret-refresh-token" not in repr(snapshot)


def test_read_snapshot_of_a_missing_file_fails_cleanly(tmp_path: Path) -> None:
    """A missing store is a StoreError, and reading it creates nothing."""
    path = tmp_path / "nowhere" / "state.sqlite"
    with pytest.raises(StoreError, match="no such file"):
        read_snapshot(path)
    assert not path.parent.exists()


def test_read_snapshot_never_migrates(tmp_path: Path) -> None:
    """A database the harvester never set up is refused, not migrated."""
    path = tmp_path / "empty.sqlite"
    sqlite3.connect(path).close()
    path.write_bytes(b"")
    with pytest.raises(StoreError, match="schema version 0"):
        read_snapshot(path)
    assert user_version(path) == 0
    assert path.read_bytes() == b""


async def test_read_snapshot_after_the_store_closed(db_path: Path, clock: FakeClock) -> None:
    """With no run going (no WAL files left), the read-only snapshot still works."""
    async with await Store.open(db_path, clock) as opened:
        await add_one(opened)
    snapshot = read_snapshot(db_path)
    assert [chunk.range for chunk in snapshot.chunks] == [JANUARY]
    assert snapshot.running == []
