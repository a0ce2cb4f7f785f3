"""The hot queries find their rows through an index, on SQLite and on PostgreSQL (issue 18).

At ten thousand merchants the state holds hundreds of thousands of chunks: a statement that
reads a whole table once per chunk makes a run quadratic. Each operation below is one the
harvest runs per chunk, or planning runs per batch of merchants; every statement it sends is
explained on a real database (`EXPLAIN QUERY PLAN` on SQLite; `EXPLAIN` on PostgreSQL, with
sequential scans priced out so that the plan shows whether an index could serve), then run,
so that the next statement sees what the one before did.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg.rows import dict_row

from harvester.clover.chunks import ExportType, TimeRange
from harvester.state import queries
from harvester.state.postgres import PgStore
from harvester.state.records import ChunkStatus, ExportState, PartRecord, ProcessRecord
from harvester.state.sql import At, Fetch, Work, postgres_text, sqlite_text, to_ms
from harvester.state.sqlite import Store
from tests.fakeclock import FakeClock

T = TypeVar("T")

NOW = datetime(2025, 7, 1, 12, 0, tzinfo=UTC)
OWNER = "host-1-abcdef01"
HOST = "https://api.clover.com"
MERCHANTS = [f"M{n:05d}PLANSHOP" for n in range(60)]
MONTHS = [
    TimeRange(datetime(2025, 1, 1, tzinfo=UTC) + timedelta(days=30 * n),
              datetime(2025, 1, 1, tzinfo=UTC) + timedelta(days=30 * (n + 1)))
    for n in range(4)
]  # fmt: skip
# The tables that grow with merchants and history: never read whole by a hot statement.
# (slot_waiters holds the lanes waiting now, a few per process.)
GROWING = ("chunks", "exports", "parts", "claims", "served")
_SQLITE_SCAN = re.compile(rf"^SCAN ({'|'.join(GROWING)})\b")
_POSTGRES_SCAN = re.compile(rf"^(Seq Scan|Index Scan|Index Only Scan) on ({'|'.join(GROWING)})\b")


@dataclass
class Explained:
    """Drives operations statement by statement, each explained first; keeps the plans."""

    explain: Callable[[str, Any], list[str]]
    run: Callable[[str, Any, Fetch], Any]
    plans: list[tuple[str, list[str]]] = field(default_factory=list)

    def work(self, work: Work[T]) -> T:
        answer: Any = None
        try:
            while True:
                sql, params, fetch = work.send(answer)
                self.plans.append((sql, self.explain(sql, params)))
                answer = self.run(sql, params, fetch)
        except StopIteration as done:
            result: T = done.value
            return result

    def full_scans(self, pattern: re.Pattern[str]) -> list[tuple[str, list[str]]]:
        return [(sql, plan) for sql, plan in self.plans if any(pattern.search(p) for p in plan)]


def sqlite_driver(connection: sqlite3.Connection) -> Explained:
    def explain(sql: str, params: Any) -> list[str]:
        text = sqlite_text(sql)
        if text is None:
            return []
        return [row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {text}", params)]

    def run(sql: str, params: Any, fetch: Fetch) -> Any:
        text = sqlite_text(sql)
        if text is None:
            return None
        return fetched(connection.execute(text, params), fetch)

    return Explained(explain, run)


def fetched(cursor: Any, fetch: Fetch) -> Any:
    """What a query's cursor gives back, as the stores hand it to the operation."""
    if fetch is Fetch.ONE:
        return cursor.fetchone()
    if fetch is Fetch.ALL:
        return cursor.fetchall()
    return cursor.rowcount


def whole_reads(node: dict[str, Any]) -> Iterator[str]:
    """The plan's nodes that read a table whole, as `Seq Scan on chunks`: a sequential
    scan, or an index scan with no condition on the index (a full walk of it)."""
    kind = node["Node Type"]
    table = node.get("Relation Name")
    if table is not None:
        if kind == "Seq Scan" or (kind.startswith("Index") and "Index Cond" not in node):
            yield f"{kind} on {table}"
        else:
            yield f"{kind} ({node.get('Index Name', '')}) on {table}"
    for child in node.get("Plans", []):
        yield from whole_reads(child)


def postgres_driver(connection: psycopg.Connection[dict[str, Any]]) -> Explained:
    def explain(sql: str, params: Any) -> list[str]:
        (row,) = connection.execute(
            b"EXPLAIN (FORMAT JSON) " + postgres_text(sql), params
        ).fetchall()
        return list(whole_reads(row["QUERY PLAN"][0]["Plan"]))

    def run(sql: str, params: Any, fetch: Fetch) -> Any:
        return fetched(connection.execute(postgres_text(sql), params), fetch)

    return Explained(explain, run)


def hot_operations(drive: Explained, clock: FakeClock) -> None:
    """Plan a state of many merchants, then take one chunk through its whole life."""

    def at() -> At:
        clock.advance(1)
        return At("plans", to_ms(clock.now()))

    process = ProcessRecord(OWNER, "host", 1, "machine", "backfill", NOW, NOW + timedelta(hours=1))
    drive.work(queries.register_process(at(), process))
    wanted = [(m, t, MONTHS) for m in MERCHANTS for t in ExportType]
    drive.work(queries.add_chunks_of(at(), wanted))
    known = drive.work(queries.chunks_of(at(), MERCHANTS[:10]))
    drive.work(queries.add_chunks_of(at(), [(MERCHANTS[3], ExportType.ORDERS, MONTHS)]))
    drive.work(queries.start_run(at()))
    drive.work(queries.chunks(at(), statuses=[ChunkStatus.DOWNLOADING]))
    drive.work(queries.chunks(at(), MERCHANTS[3], ExportType.ORDERS))
    drive.work(queries.covered(at(), MERCHANTS[3], ExportType.ORDERS))
    mine = [chunk for chunk in known if chunk.merchant_id == MERCHANTS[3]]
    claims = drive.work(queries.claim_chunks(at(), [chunk.id for chunk in mine], OWNER))
    assert all(claim.granted for claim in claims)
    chunk = mine[0]
    drive.work(queries.holds_chunk(at(), chunk.id, OWNER))
    tried = drive.work(queries.take_slot(at(), HOST, OWNER, chunk.merchant_id, None, 3))
    assert tried.slot_id is not None
    drive.work(queries.record_export(at(), chunk.id, "EXPORT1", "PENDING", 0.0))
    drive.work(queries.slot_went_through(at(), HOST, 3))
    drive.work(queries.update_export(at(), "EXPORT1", "IN_PROGRESS", 50.0))
    drive.work(
        queries.export_done_held(
            at(), "EXPORT1", None, ["https://files.example/1"], tried.slot_id, chunk.id, OWNER
        )
    )
    drive.work(queries.get_export(at(), "EXPORT1"))
    drive.work(queries.get_chunk(at(), chunk.id))
    drive.work(queries.processes(at()))
    drive.work(queries.record_part(at(), PartRecord("EXPORT1", 1, 0, 10, "ab" * 32, 1)))
    drive.work(queries.parts(at(), "EXPORT1"))
    drive.work(queries.complete_chunk(at(), chunk.id))
    drive.work(queries.past_durations(at(), chunk.merchant_id, 20))
    drive.work(queries.recent_durations(at(), ExportType(chunk.type), 20))
    drive.work(queries.release_chunk(at(), chunk.id, OWNER))
    drive.work(queries.reset_for_reharvest_of(at(), [chunk.id]))
    other = mine[1]
    drive.work(queries.record_export(at(), other.id, "EXPORT2", "PENDING", 0.0))
    drive.work(queries.note_lost_create(at(), other.id))
    drive.work(queries.end_export(at(), "EXPORT2", ExportState.FAILED, "failed"))
    drive.work(queries.fail_chunk(at(), other.id, "gave up"))
    drive.work(queries.lock_token(at(), chunk.merchant_id, OWNER))
    drive.work(queries.unlock_token(at(), chunk.merchant_id, OWNER))
    drive.work(queries.renew_process(at(), OWNER, clock.now() + timedelta(hours=1)))
    drive.work(queries.end_process(at(), OWNER))


def described(scans: list[tuple[str, list[str]]]) -> Iterator[str]:
    for sql, plan in scans:
        yield f"{sql}\n    " + "\n    ".join(plan)


async def test_the_hot_queries_use_an_index_on_sqlite(tmp_path: Path) -> None:
    """No statement of planning or of a chunk's life reads a growing table whole in SQLite."""
    path = tmp_path / "state.sqlite3"
    clock = FakeClock(NOW)
    async with await Store.open(path, clock):
        pass  # created and migrated
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.row_factory = sqlite3.Row
        drive = sqlite_driver(connection)
        connection.execute("BEGIN IMMEDIATE")  # one sync for the lot
        hot_operations(drive, clock)
        connection.execute("COMMIT")
    finally:
        connection.close()
    assert len(drive.plans) > 40
    scans = drive.full_scans(_SQLITE_SCAN)
    assert not scans, "\n".join(described(scans))


async def test_the_hot_queries_use_an_index_on_postgresql(pg_url: str) -> None:
    """No statement of planning or of a chunk's life must read a growing table whole in
    PostgreSQL, sequential scans being priced out."""
    clock = FakeClock(NOW)
    async with await PgStore.open(pg_url, clock):
        pass  # created and migrated
    connection = psycopg.connect(pg_url, row_factory=dict_row, autocommit=True)
    with connection, connection.transaction():
        connection.execute("SET LOCAL enable_seqscan = off")
        drive = postgres_driver(connection)
        hot_operations(drive, clock)
    assert len(drive.plans) > 40
    scans = drive.full_scans(_POSTGRES_SCAN)
    assert not scans, "\n".join(described(scans))


@pytest.mark.parametrize(
    ("plan", "scans"),
    [
        (["SCAN chunks"], True),
        (["SEARCH chunks USING INDEX chunks_by_export (export_id=?)"], False),
        (["SCAN chunks USING INDEX sqlite_autoindex_chunks_1"], True),
        (["SCAN processes"], False),  # one row per process start: small
    ],
)
def test_the_sqlite_check_tells_a_scan_from_a_search(plan: list[str], scans: bool) -> None:
    """The check above is no blind one: it fails on a whole-table read of a growing table."""
    drive = Explained(lambda sql, params: plan, lambda sql, params, fetch: None)
    drive.plans.append(("SELECT", plan))
    assert bool(drive.full_scans(_SQLITE_SCAN)) is scans


async def test_a_slot_granted_at_the_first_ask_with_nobody_in_line_is_six_statements(
    tmp_path: Path,
) -> None:
    """The grant every export of a process alone asks for: no waiter row written and taken
    back, the lapsed looked for only before a refusal (it was twelve statements)."""
    path = tmp_path / "state.sqlite3"
    clock = FakeClock(NOW)
    async with await Store.open(path, clock) as store:
        await store.register_process(
            ProcessRecord(OWNER, "host-1", 1, "m", "backfill", NOW, NOW + timedelta(hours=1))
        )
        await store.take_slot(HOST, OWNER, MERCHANTS[1], None, 3)  # the host's row exists
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.row_factory = sqlite3.Row
        drive = sqlite_driver(connection)
        at = At(str(path), to_ms(clock.now()))
        tried = drive.work(queries.take_slot(at, HOST, OWNER, MERCHANTS[2], None, 3, None))
    finally:
        connection.close()
    assert tried.slot_id is not None
    assert tried.waiter_id is None
    assert len(drive.plans) == 6, [sql for sql, _ in drive.plans]


async def test_a_new_export_is_recorded_in_three_statements(tmp_path: Path) -> None:
    """The chunk's row, the export inserted (no look first: it is new all but always) and
    the chunk pointed at it; an export recorded again is looked up instead."""
    path = tmp_path / "state.sqlite3"
    async with await Store.open(path, FakeClock(NOW)) as store:
        (chunk,) = await store.add_chunks(MERCHANTS[1], ExportType.ORDERS, [MONTHS[0]])
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.row_factory = sqlite3.Row
        at = At(str(path), to_ms(NOW))
        drive = sqlite_driver(connection)
        first = drive.work(queries.record_export(at, chunk.id, "EXPORT1", "PENDING", 0.0))
        assert len(drive.plans) == 3, [sql for sql, _ in drive.plans]
        again = sqlite_driver(connection)
        assert again.work(queries.record_export(at, chunk.id, "EXPORT1", "PENDING", 0.0)) == first
        assert len(again.plans) == 3, [sql for sql, _ in again.plans]
    finally:
        connection.close()
