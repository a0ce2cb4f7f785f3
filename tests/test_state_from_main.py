"""A state made by the harvester as it shipped (the flat store.py and pgstore.py) opens and works.

tests/data holds such a state on each backend, made by commit 5828628's stores and dumped
as SQL: a SQLite file at schema version 4 (`iterdump`, and its user_version) and a
PostgreSQL database at version 1 (`pg_dump --inserts`). Each is loaded as it is, opened by
today's store, read back whole, and worked on: nothing is lost, and the only migration is
the one that came after it (issue 18's indexes of the hot queries).
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from harvester.clover.chunks import ExportType, TimeRange
from harvester.state.postgres import PgStore
from harvester.state.records import ChunkStatus, ProcessRecord, StateStore
from harvester.state.sqlite import Store
from tests.fakeclock import FakeClock

DATA = Path(__file__).parent / "data"
MADE_AT = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
APRIL = TimeRange(datetime(2025, 4, 1, tzinfo=UTC), datetime(2025, 5, 1, tzinfo=UTC))


def month(n: int) -> TimeRange:
    start = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(days=30 * n)
    return TimeRange(start, start + timedelta(days=30))


async def read_and_work(store: StateStore, clock: FakeClock) -> None:
    """What the shipped store wrote reads back the same, and the state takes new work."""
    snapshot = await store.snapshot(clock.now())
    assert [(c.id, c.merchant_id, c.type, c.range, c.status) for c in snapshot.chunks] == [
        (1, "MERCHANTAAA01", ExportType.PAYMENTS, month(0), ChunkStatus.COMPLETE),
        (2, "MERCHANTAAA01", ExportType.PAYMENTS, month(1), ChunkStatus.EXPORTING),
        (3, "MERCHANTAAA01", ExportType.PAYMENTS, month(2), ChunkStatus.FAILED),
        (4, "MERCHANTBBB02", ExportType.ORDERS, month(0), ChunkStatus.PENDING),
    ]
    assert snapshot.chunks[2].last_error == "gave up"
    assert snapshot.chunks[3].lost_creates == 1
    assert [(e.id, e.percent) for e in snapshot.running] == [("EXPORTRUN002", 40.0)]
    assert [(h.chunk_id, h.holder.id) for h in snapshot.held] == [(2, "proc-1")]
    done = await store.get_export("EXPORTDONE01")
    assert done is not None
    assert done.urls == ("https://files.example/1", "https://files.example/2")
    assert done.available_until == MADE_AT + timedelta(days=1)
    assert [(p.index, p.size, p.objects) for p in await store.parts("EXPORTDONE01")] == [
        (1, 1234, 10),
        (2, 2468, 20),
    ]
    assert await store.refresh_token("MERCHANTAAA01") == (
        "refresh-token-for-the-fixture",
        MADE_AT + timedelta(days=30),
    )
    assert await store.covered("MERCHANTAAA01", ExportType.PAYMENTS) == [month(0)]
    assert (await store.claim_chunk(2, "proc-2")).held_by is not None  # proc-1 still lives

    now = clock.now()
    await store.register_process(
        ProcessRecord("proc-2", "host", 7, "machine", "run", now, now + timedelta(hours=1))
    )
    [april] = await store.add_chunks("MERCHANTAAA01", ExportType.PAYMENTS, [APRIL])
    assert april.id == 5  # the ids go on from the shipped state's
    assert (await store.claim_chunk(april.id, "proc-2")).granted
    slot = await store.take_slot("api.clover.com", "proc-2", "MERCHANTAAA01", None, 3)
    assert slot.slot_id is not None  # the busy backoff ended; 1 of the 2 slots was in use
    assert (slot.limit, slot.in_use) == (2, 2)
    # The host's row, from before its users and versions, takes them.
    view = await store.join_host("api.clover.com", "proc-2", 3)
    assert (view.users, view.app_paused_until) == (1, None)
    assert view.version >= 1
    await store.record_export(april.id, "EXPORTNEW005", "PENDING", 0)
    await store.export_done("EXPORTNEW005", None, ["https://files.example/5"])
    await store.complete_chunk(april.id)
    assert await store.covered("MERCHANTAAA01", ExportType.PAYMENTS) == [month(0), APRIL]


async def test_a_sqlite_state_made_by_the_shipped_store_opens_and_works(
    tmp_path: Path, clock: FakeClock
) -> None:
    """The SQLite file goes from version 4 to 6 (indexes; the hosts' users, versions and
    pauses), its rows read back, and it takes new work."""
    path = tmp_path / "state.sqlite3"
    connection = sqlite3.connect(path)
    connection.executescript((DATA / "main-state.sqlite.sql").read_text())
    connection.close()
    async with await Store.open(path, clock) as store:
        await read_and_work(store, clock)
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA user_version").fetchone()[0] == 6
    indexes = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    connection.close()
    assert {"chunks_by_export", "chunks_by_status", "slot_waiters_by_host"} <= indexes
    assert "host_users_by_owner" in indexes
    assert {"host_users", "host_users_by_owner"} <= indexes


async def test_a_postgresql_state_made_by_the_shipped_store_opens_and_works(
    pg_url: str, clock: FakeClock
) -> None:
    """The database goes from version 1 to 3 (indexes; the hosts' users, versions and pauses),
    its rows read back, and it takes new work."""
    with psycopg.connect(pg_url, autocommit=True) as connection:
        connection.execute((DATA / "main-state.postgres.sql").read_bytes())
    async with await PgStore.open(pg_url, clock) as store:
        await read_and_work(store, clock)
    with psycopg.connect(pg_url) as connection:
        row = connection.execute(b"SELECT version FROM schema_version").fetchone()
        assert row == (3,)
        indexes = {
            name for (name,) in connection.execute(b"SELECT indexname FROM pg_indexes").fetchall()
        }
    assert {"chunks_by_export", "chunks_by_status", "slot_waiters_by_host"} <= indexes
    assert "host_users_by_owner" in indexes
