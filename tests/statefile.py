"""The exports a state file holds, read straight from its SQLite tables (read-only).

The harvester itself never lists exports; the tests look at what it recorded this way.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from datetime import datetime
from pathlib import Path

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
    records = []
    for row in rows:
        created_at = EPOCH + row["created_at_ms"] * ONE_MS
        updated_at = EPOCH + row["updated_at_ms"] * ONE_MS
        records.append(
            ExportRecord(
                id=row["id"],
                chunk_id=row["chunk_id"],
                state=ExportState(row["state"]),
                status=row["status"],
                percent=row["percent"],
                created_at=created_at,
                updated_at=updated_at,
                available_until=_instant(row["available_until_ms"]),
                urls=tuple(json.loads(row["urls"])),
            )
        )
    return records
