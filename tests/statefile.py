"""The exports a state holds, read straight from its tables (a SQLite file, or PostgreSQL).

The harvester itself never lists exports; the tests look at what it recorded this way.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from harvester.clover.chunks import EPOCH, ONE_MS
from harvester.state.records import ExportRecord, ExportState


def _instant(ms: int | None) -> datetime | None:
    return None if ms is None else EPOCH + ms * ONE_MS


def exports_in(path: Path, chunk_id: int | None = None) -> list[ExportRecord]:
    """Every export recorded in the state file (of one chunk, if given), oldest first."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as connection:
        connection.row_factory = sqlite3.Row
        rows = connection.execute(
            "SELECT * FROM exports WHERE (:chunk_id IS NULL OR chunk_id = :chunk_id)"
            " ORDER BY created_at_ms, rowid",
            {"chunk_id": chunk_id},
        ).fetchall()
    return [_export(row) for row in rows]


def pg_exports_in(url: str, chunk_id: int | None = None) -> list[ExportRecord]:
    """As `exports_in`, from a PostgreSQL state."""
    with psycopg.connect(url, row_factory=dict_row) as connection:
        rows = connection.execute(
            b"SELECT * FROM exports WHERE (%(chunk_id)s::bigint IS NULL OR chunk_id = %(chunk_id)s)"
            b" ORDER BY created_at_ms, seq",
            {"chunk_id": chunk_id},
        ).fetchall()
    return [_export(row) for row in rows]


def _export(row: Mapping[str, Any] | sqlite3.Row) -> ExportRecord:
    return ExportRecord(
        id=row["id"],
        chunk_id=row["chunk_id"],
        state=ExportState(row["state"]),
        status=row["status"],
        percent=row["percent"],
        created_at=EPOCH + row["created_at_ms"] * ONE_MS,
        updated_at=EPOCH + row["updated_at_ms"] * ONE_MS,
        available_until=_instant(row["available_until_ms"]),
        urls=tuple(json.loads(row["urls"])),
    )
