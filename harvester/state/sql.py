"""The state's SQL, said once for SQLite and PostgreSQL: queries as data, and a thin dialect.

An operation of the state (`state/queries.py`) is a generator: it yields `Query`s and is
sent each one's result, so the same statements and the same claim and slot logic run on
SQLite's worker thread (synchronously, in one hop) and on psycopg's async connection. The
statements are written in one neutral form; each backend's dialect turns it into its own:

- placeholders: `?` and `:name` (SQLite's own) become `%s` and `%(name)s` for psycopg;
- `{lock}` locks the rows read (`FOR UPDATE`); SQLite's `BEGIN IMMEDIATE` has already
  locked the whole file for the transaction, so there it says nothing;
- `{seq}` is the order rows were inserted in (SQLite's `rowid`, a `seq` column in PostgreSQL);
- `SERIALISE` takes a transaction-scoped lock on a key (PostgreSQL's advisory locks);
  SQLite's write transactions are serialised already, so it skips the statement.
- `NOTIFY` tells PostgreSQL's listeners (`HOSTS_CHANNEL`) of a change to a host, at
  commit; SQLite has no listeners (its processes poll), so it skips the statement.

Upserts (`ON CONFLICT ... DO UPDATE`), `RETURNING` and the time (milliseconds since the
epoch, computed by the caller from its clock) need no translation: both speak them alike.
"""

from __future__ import annotations

import json
import re
from collections.abc import Generator, Mapping, Sequence
from datetime import datetime
from enum import Enum
from functools import cache
from typing import Any, Protocol, TypeVar

from harvester.clover.chunks import EPOCH, ONE_MS, ExportType, TimeRange
from harvester.state.records import (
    ChunkRecord,
    ChunkStatus,
    ExportRecord,
    ExportState,
    PartRecord,
    ProcessRecord,
)

T = TypeVar("T")


class Fetch(Enum):
    ONE = "one"  # the first row, or None
    ALL = "all"  # every row
    COUNT = "count"  # how many rows the statement changed
    NOTHING = "nothing"


# A statement to run: its neutral SQL, its parameters, and what comes back. A plain tuple:
# one is made for every statement, so it must cost next to nothing.
Params = Sequence[Any] | Mapping[str, Any]
Query = tuple[str, Params, Fetch]


class At:
    """What every operation is given: the store's name for messages, and the time if it
    asked for it (a timed operation; reading the clock costs more than most statements)."""

    __slots__ = ("_now", "where")

    def __init__(self, where: str, now: int | None = None) -> None:
        self.where = where  # a path, or a URL without its password
        self._now = now  # the caller's clock, in milliseconds since the epoch

    @property
    def now(self) -> int:
        if self._now is None:
            raise RuntimeError("this operation reads the time: make its method a timed one")
        return self._now


class Row(Protocol):
    """A row by column name: sqlite3.Row, or the dict psycopg's dict_row makes."""

    def __getitem__(self, key: str, /) -> Any: ...


# An operation: yields queries, is sent each one's result, returns what the caller gets.
Work = Generator[Query, Any, T]

SERIALISE = "SERIALISE ?"  # one transaction at a time per key (the only parameter)
NOTIFY = "NOTIFY ?"  # wake the processes listening for the host (the only parameter)
HOSTS_CHANNEL = "harvester_hosts"  # PostgreSQL's channel for it; the payload is the host


def one(sql: str, params: Params = ()) -> Query:
    """`row = yield one(...)`: the first row, or None."""
    return (sql, params, Fetch.ONE)


def every(sql: str, params: Params = ()) -> Query:
    """`rows = yield every(...)`: every row."""
    return (sql, params, Fetch.ALL)


def count(sql: str, params: Params = ()) -> Query:
    """`changed = yield count(...)`: how many rows the statement changed."""
    return (sql, params, Fetch.COUNT)


def execute(sql: str, params: Params = ()) -> Query:
    """`yield execute(...)`: nothing back."""
    return (sql, params, Fetch.NOTHING)


# -- the dialects -------------------------------------------------------------------------

_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@cache
def sqlite_text(sql: str) -> str | None:
    """The neutral statement as SQLite runs it; None: nothing to run."""
    if sql in (SERIALISE, NOTIFY):
        return None
    return sql.replace("{lock}", "").replace("{seq}", "rowid")


@cache
def postgres_text(sql: str) -> bytes:
    """The neutral statement as psycopg runs it (bytes: psycopg takes them as they are)."""
    if sql == SERIALISE:
        sql = "SELECT pg_advisory_xact_lock(hashtext(?))"
    elif sql == NOTIFY:
        sql = f"SELECT pg_notify('{HOSTS_CHANNEL}', ?)"
    text = sql.replace("%", "%%").replace("{lock}", " FOR UPDATE").replace("{seq}", "seq")
    return _NAMED.sub(r"%(\1)s", text.replace("?", "%s")).encode()


# -- time and records ---------------------------------------------------------------------


def to_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("the store keeps UTC instants: got a naive datetime")
    return (moment - EPOCH) // ONE_MS


def from_ms(ms: int) -> datetime:
    return EPOCH + ms * ONE_MS


def maybe_from_ms(ms: int | None) -> datetime | None:
    return None if ms is None else from_ms(ms)


def chunk_record(row: Row) -> ChunkRecord:
    return ChunkRecord(
        id=row["id"],
        merchant_id=row["merchant_id"],
        type=ExportType(row["type"]),
        range=TimeRange.from_ms(row["start_ms"], row["end_ms"]),
        status=ChunkStatus(row["status"]),
        export_id=row["export_id"],
        exports_created=row["exports_created"],
        completed_at=maybe_from_ms(row["completed_at_ms"]),
        last_error=row["last_error"],
        last_error_at=maybe_from_ms(row["last_error_at_ms"]),
        updated_at=from_ms(row["updated_at_ms"]),
        lost_creates=row["lost_creates"],
    )


def export_record(row: Row) -> ExportRecord:
    return ExportRecord(
        id=row["id"],
        chunk_id=row["chunk_id"],
        state=ExportState(row["state"]),
        status=row["status"],
        percent=row["percent"],
        created_at=from_ms(row["created_at_ms"]),
        updated_at=from_ms(row["updated_at_ms"]),
        available_until=maybe_from_ms(row["available_until_ms"]),
        urls=tuple(json.loads(row["urls"])),
    )


def part_record(row: Row) -> PartRecord:
    return PartRecord(
        export_id=row["export_id"],
        index=row["part_index"],
        url_index=row["url_index"],
        size=row["size"],
        sha256=row["sha256"],
        objects=row["objects"],
    )


def process_record(row: Row) -> ProcessRecord:
    return ProcessRecord(
        id=row["id"],
        host=row["host"],
        pid=row["pid"],
        machine=row["machine"],
        command=row["command"],
        started_at=from_ms(row["started_at_ms"]),
        lease_until=from_ms(row["lease_until_ms"]),
    )
