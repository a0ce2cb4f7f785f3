"""Every operation of the state, written once: its statements, and the claim and slot logic.

Each function is an operation (`sql.Work`): it yields its queries and returns the result,
so both backends run the very same steps, one transaction each (`sqlstore.SqlStore`).
`where` names the store in messages; `now` is the caller's clock, in milliseconds.

Where processes race, the row that decides is locked first (`{lock}`: the chunk for a
claim or an export, the host for its slots, the process for its lease), or a key is
serialised (`SERIALISE`: the overlap check of a merchant's chunks, a merchant's refresh
lock). In SQLite a write transaction holds the whole file, so both come for free there.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from datetime import datetime

from harvester.clover.chunks import ExportType, TimeRange
from harvester.errors import ChunkOverlap, StoreError
from harvester.state.records import (
    ChunkRecord,
    ChunkStatus,
    ClaimResult,
    ExportRecord,
    ExportState,
    HeldChunk,
    PartRecord,
    ProcessRecord,
    SlotTry,
    Snapshot,
)
from harvester.state.sql import (
    SERIALISE,
    Row,
    Work,
    chunk_record,
    count,
    every,
    execute,
    export_record,
    maybe_from_ms,
    one,
    part_record,
    process_record,
    to_ms,
)

# An export in one of these states can still deliver files: a chunk keeps pointing at it.
LIVE_EXPORT_STATES = (ExportState.RUNNING.value, ExportState.DONE.value)
ENDED_EXPORT_STATES = frozenset({ExportState.FAILED, ExportState.EXPIRED, ExportState.LOST})

# What a process's end gives back: everything it holds.
_HELD_BY_PROCESSES = ("claims", "slots", "slot_waiters", "token_locks")


def _missing(where: str, what: str) -> StoreError:
    return StoreError(f"state store {where}: no {what}")


def _chunk_row(where: str, chunk_id: int, lock: bool = False) -> Work[Row]:
    query = (
        "SELECT * FROM chunks WHERE id = ?{lock}" if lock else "SELECT * FROM chunks WHERE id = ?"
    )
    row: Row | None = yield from one(query, (chunk_id,))
    if row is None:
        raise _missing(where, f"chunk {chunk_id}")
    return row


# -- chunks -------------------------------------------------------------------------------


def add_chunks(
    where: str, now: int, merchant_id: str, type: ExportType, ranges: Sequence[TimeRange]
) -> Work[list[ChunkRecord]]:
    # One merchant and type at a time: the overlap check must see every insert.
    yield from execute(SERIALISE, (f"chunks:{merchant_id}:{type}",))
    records = []
    for wanted in ranges:
        key = (merchant_id, type.value, wanted.start_ms, wanted.end_ms)
        row = yield from one(
            "SELECT * FROM chunks"
            " WHERE merchant_id = ? AND type = ? AND start_ms = ? AND end_ms = ?",
            key,
        )
        if row is None:
            clash = yield from one(
                "SELECT start_ms, end_ms FROM chunks"
                " WHERE merchant_id = ? AND type = ? AND start_ms < ? AND end_ms > ? LIMIT 1",
                (merchant_id, type.value, wanted.end_ms, wanted.start_ms),
            )
            if clash is not None:
                existing = TimeRange.from_ms(clash["start_ms"], clash["end_ms"])
                raise ChunkOverlap(
                    f"state store {where}: chunk {wanted} of merchant "
                    f"{merchant_id} {type.value} overlaps the known chunk {existing}"
                )
            row = yield from one(
                "INSERT INTO chunks (merchant_id, type, start_ms, end_ms, status, updated_at_ms)"
                " VALUES (?, ?, ?, ?, ?, ?) RETURNING *",
                (*key, ChunkStatus.PENDING.value, now),
            )
        records.append(chunk_record(row))
    return records


def covered(merchant_id: str, type: ExportType) -> Work[list[TimeRange]]:
    rows = yield from every(
        "SELECT start_ms, end_ms FROM chunks"
        " WHERE merchant_id = ? AND type = ? AND completed_at_ms IS NOT NULL ORDER BY start_ms",
        (merchant_id, type.value),
    )
    return [TimeRange.from_ms(row["start_ms"], row["end_ms"]) for row in rows]


def chunks(
    merchant_id: str | None, type: ExportType | None, statuses: Collection[ChunkStatus] | None
) -> Work[list[ChunkRecord]]:
    conditions, params = ["1 = 1"], []
    if merchant_id is not None:
        conditions.append("merchant_id = ?")
        params.append(merchant_id)
    if type is not None:
        conditions.append("type = ?")
        params.append(type.value)
    if statuses is not None:
        wanted = sorted({status.value for status in statuses})
        conditions.append(f"status IN ({', '.join(['?'] * len(wanted))})" if wanted else "1 = 0")
        params.extend(wanted)
    rows = yield from every(
        f"SELECT * FROM chunks WHERE {' AND '.join(conditions)}"  # noqa: S608 -- ours, bound
        " ORDER BY merchant_id, type, start_ms",
        params,
    )
    return [chunk_record(row) for row in rows]


def get_chunk(where: str, chunk_id: int) -> Work[ChunkRecord]:
    return chunk_record((yield from _chunk_row(where, chunk_id)))


def reset_for_reharvest(where: str, now: int, chunk_id: int) -> Work[ChunkRecord]:
    yield from execute(
        "UPDATE chunks SET status = ?, export_id = NULL, updated_at_ms = ?"
        " WHERE id = ? AND status = ?",
        (ChunkStatus.PENDING.value, now, chunk_id, ChunkStatus.COMPLETE.value),
    )
    return chunk_record((yield from _chunk_row(where, chunk_id)))


def complete_chunk(where: str, now: int, chunk_id: int) -> Work[None]:
    changed = yield from count(
        "UPDATE chunks SET status = ?, completed_at_ms = ?, last_error = NULL,"
        " last_error_at_ms = NULL, updated_at_ms = ? WHERE id = ?",
        (ChunkStatus.COMPLETE.value, now, now, chunk_id),
    )
    if changed == 0:
        raise _missing(where, f"chunk {chunk_id}")


def fail_chunk(where: str, now: int, chunk_id: int, error: str) -> Work[None]:
    changed = yield from count(
        "UPDATE chunks SET status = :failed, last_error = :error,"
        " last_error_at_ms = :now, updated_at_ms = :now,"
        " export_id = CASE WHEN (SELECT state FROM exports WHERE id = chunks.export_id)"
        " IN (:running, :done) THEN export_id ELSE NULL END"
        " WHERE id = :chunk_id",
        {
            "failed": ChunkStatus.FAILED.value,
            "error": error,
            "now": now,
            "running": ExportState.RUNNING.value,
            "done": ExportState.DONE.value,
            "chunk_id": chunk_id,
        },
    )
    if changed == 0:
        raise _missing(where, f"chunk {chunk_id}")


def note_lost_create(where: str, chunk_id: int) -> Work[None]:
    changed = yield from count(
        "UPDATE chunks SET lost_creates = lost_creates + 1 WHERE id = ?", (chunk_id,)
    )
    if changed == 0:
        raise _missing(where, f"chunk {chunk_id}")


def start_run(now: int) -> Work[None]:
    # SET expressions all see the row as it was, so export_id below is the old one.
    yield from execute(
        "UPDATE chunks SET"
        " status = CASE (SELECT state FROM exports WHERE id = chunks.export_id)"
        "   WHEN :running THEN :exporting WHEN :done THEN :downloading ELSE :pending END,"
        " export_id = CASE WHEN (SELECT state FROM exports WHERE id = chunks.export_id)"
        "   IN (:running, :done) THEN export_id ELSE NULL END,"
        " updated_at_ms = :now"
        " WHERE status = :failed",
        {
            "running": ExportState.RUNNING.value,
            "done": ExportState.DONE.value,
            "exporting": ChunkStatus.EXPORTING.value,
            "downloading": ChunkStatus.DOWNLOADING.value,
            "pending": ChunkStatus.PENDING.value,
            "failed": ChunkStatus.FAILED.value,
            "now": now,
        },
    )


# -- exports ------------------------------------------------------------------------------


def record_export(
    where: str, now: int, chunk_id: int, export_id: str, status: str, percent: float
) -> Work[ExportRecord]:
    yield from _chunk_row(where, chunk_id, lock=True)
    existing = yield from one("SELECT * FROM exports WHERE id = ?", (export_id,))
    if existing is not None:
        if existing["chunk_id"] != chunk_id:
            raise StoreError(
                f"state store {where}: export {export_id} already belongs to "
                f"chunk {existing['chunk_id']}, not {chunk_id}"
            )
        return export_record(existing)
    row = yield from one(
        "INSERT INTO exports (id, chunk_id, state, status, percent, created_at_ms, updated_at_ms)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING *",
        (export_id, chunk_id, ExportState.RUNNING.value, status, percent, now, now),
    )
    yield from execute(
        "UPDATE chunks SET export_id = ?, status = ?,"
        " exports_created = exports_created + 1, updated_at_ms = ? WHERE id = ?",
        (export_id, ChunkStatus.EXPORTING.value, now, chunk_id),
    )
    return export_record(row)


def update_export(where: str, now: int, export_id: str, status: str, percent: float) -> Work[None]:
    changed = yield from count(
        "UPDATE exports SET status = ?, percent = ?, updated_at_ms = ? WHERE id = ?",
        (status, percent, now, export_id),
    )
    if changed == 0:
        raise _missing(where, f"export {export_id}")


def export_done(
    where: str, now: int, export_id: str, available_until: datetime | None, urls: Sequence[str]
) -> Work[None]:
    until = None if available_until is None else to_ms(available_until)
    changed = yield from count(
        "UPDATE exports SET state = ?, status = 'DONE', percent = 100.0,"
        " available_until_ms = ?, urls = ?, updated_at_ms = ? WHERE id = ?",
        (ExportState.DONE.value, until, json.dumps(list(urls)), now, export_id),
    )
    if changed == 0:
        raise _missing(where, f"export {export_id}")
    yield from execute(
        "UPDATE chunks SET status = ?, updated_at_ms = ? WHERE export_id = ? AND status = ?",
        (ChunkStatus.DOWNLOADING.value, now, export_id, ChunkStatus.EXPORTING.value),
    )


def end_export(where: str, now: int, export_id: str, state: ExportState, error: str) -> Work[None]:
    changed = yield from count(
        "UPDATE exports SET state = ?, updated_at_ms = ? WHERE id = ?",
        (state.value, now, export_id),
    )
    if changed == 0:
        raise _missing(where, f"export {export_id}")
    yield from execute(
        "UPDATE chunks SET export_id = NULL,"
        " status = CASE status WHEN :failed THEN :failed ELSE :pending END,"
        " last_error = :error, last_error_at_ms = :now, updated_at_ms = :now"
        " WHERE export_id = :export_id AND status != :complete",
        {
            "failed": ChunkStatus.FAILED.value,
            "pending": ChunkStatus.PENDING.value,
            "complete": ChunkStatus.COMPLETE.value,
            "error": error,
            "now": now,
            "export_id": export_id,
        },
    )


def get_export(export_id: str) -> Work[ExportRecord | None]:
    row = yield from one("SELECT * FROM exports WHERE id = ?", (export_id,))
    return None if row is None else export_record(row)


def export_durations(latest: int) -> Work[list[float]]:
    rows = yield from every(
        "SELECT updated_at_ms - created_at_ms AS ms FROM exports WHERE state = ?"
        " ORDER BY created_at_ms DESC LIMIT ?",
        (ExportState.DONE.value, latest),
    )
    return [int(row["ms"]) / 1000 for row in rows]


# -- parts and refresh tokens -------------------------------------------------------------


def record_part(part: PartRecord) -> Work[None]:
    yield from execute(
        "INSERT INTO parts (export_id, part_index, url_index, size, sha256, objects)"
        " VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (export_id, part_index) DO UPDATE SET"
        " url_index = excluded.url_index, size = excluded.size,"
        " sha256 = excluded.sha256, objects = excluded.objects",
        (part.export_id, part.index, part.url_index, part.size, part.sha256, part.objects),
    )


def parts(export_id: str) -> Work[list[PartRecord]]:
    rows = yield from every(
        "SELECT * FROM parts WHERE export_id = ? ORDER BY part_index", (export_id,)
    )
    return [part_record(row) for row in rows]


def refresh_token(merchant_id: str) -> Work[tuple[str, datetime | None] | None]:
    row = yield from one(
        "SELECT token, expires_at_ms FROM refresh_tokens WHERE merchant_id = ?", (merchant_id,)
    )
    return None if row is None else (row["token"], maybe_from_ms(row["expires_at_ms"]))


def save_refresh_token(
    now: int, merchant_id: str, token: str, expires_at: datetime | None
) -> Work[None]:
    yield from execute(
        "INSERT INTO refresh_tokens (merchant_id, token, expires_at_ms, updated_at_ms)"
        " VALUES (?, ?, ?, ?)"
        " ON CONFLICT (merchant_id) DO UPDATE SET token = excluded.token,"
        " expires_at_ms = excluded.expires_at_ms, updated_at_ms = excluded.updated_at_ms",
        (merchant_id, token, None if expires_at is None else to_ms(expires_at), now),
    )


# -- processes and claims -----------------------------------------------------------------


def register_process(process: ProcessRecord) -> Work[None]:
    yield from execute(
        "INSERT INTO processes (id, host, pid, machine, command, started_at_ms, lease_until_ms)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET lease_until_ms = excluded.lease_until_ms",
        (
            process.id,
            process.host,
            process.pid,
            process.machine,
            process.command,
            to_ms(process.started_at),
            to_ms(process.lease_until),
        ),
    )


def renew_process(where: str, now: int, process_id: str, lease_until: datetime) -> Work[bool]:
    row = yield from one("SELECT lease_until_ms FROM processes WHERE id = ?{lock}", (process_id,))
    if row is None:
        raise _missing(where, f"process {process_id}")
    yield from execute(
        "UPDATE processes SET lease_until_ms = ? WHERE id = ?", (to_ms(lease_until), process_id)
    )
    return bool(row["lease_until_ms"] > now)


def end_process(now: int, process_id: str) -> Work[None]:
    for table in _HELD_BY_PROCESSES:
        yield from execute(f"DELETE FROM {table} WHERE owner = ?", (process_id,))  # noqa: S608
    yield from execute(
        "UPDATE processes SET lease_until_ms = CASE WHEN lease_until_ms < :now"
        " THEN lease_until_ms ELSE :now END WHERE id = :id",
        {"now": now, "id": process_id},
    )


def processes() -> Work[list[ProcessRecord]]:
    rows = yield from every("SELECT * FROM processes ORDER BY started_at_ms, id")
    return [process_record(row) for row in rows]


def claim_chunk(where: str, now: int, chunk_id: int, owner: str) -> Work[ClaimResult]:
    # The chunk's row lock: claimers of one chunk take turns.
    chunk = chunk_record((yield from _chunk_row(where, chunk_id, lock=True)))
    holder = yield from one(
        "SELECT processes.* FROM claims JOIN processes ON processes.id = claims.owner"
        " WHERE claims.chunk_id = ? AND claims.owner != ? AND lease_until_ms > ?",
        (chunk_id, owner, now),
    )
    if holder is not None:
        return ClaimResult(chunk, process_record(holder))
    yield from execute(
        "INSERT INTO claims (chunk_id, owner, claimed_at_ms) VALUES (?, ?, ?)"
        " ON CONFLICT (chunk_id) DO UPDATE SET owner = excluded.owner,"
        " claimed_at_ms = excluded.claimed_at_ms WHERE claims.owner != excluded.owner",
        (chunk_id, owner, now),
    )
    return ClaimResult(chunk, None)


def holds_chunk(chunk_id: int, owner: str) -> Work[bool]:
    row = yield from one("SELECT 1 FROM claims WHERE chunk_id = ? AND owner = ?", (chunk_id, owner))
    return row is not None


def release_chunk(chunk_id: int, owner: str) -> Work[None]:
    yield from execute("DELETE FROM claims WHERE chunk_id = ? AND owner = ?", (chunk_id, owner))


# -- shared export slots and refresh locks ------------------------------------------------


def _host_row(host: str, maximum: int) -> Work[Row]:
    """The host's row, created if needed and locked: its slots' changes take turns."""
    yield from execute(
        "INSERT INTO hosts (host, slot_limit) VALUES (?, ?) ON CONFLICT (host) DO NOTHING",
        (host, maximum),
    )
    row: Row = yield from one("SELECT * FROM hosts WHERE host = ?{lock}", (host,))
    return row


def next_in_line(
    served: dict[str, int], waiters: Sequence[tuple[int, str, int]], free: int
) -> set[int]:
    """The waiters (id, merchant, since) the next `free` grants go to: round-robin across
    merchants, least recently served first, then the longest waiting."""
    queues: dict[str, list[tuple[int, int]]] = {}
    for waiter_id, merchant_id, since_ms in waiters:
        queues.setdefault(merchant_id, []).append((since_ms, waiter_id))
    chosen: set[int] = set()
    order = max(served.values(), default=0)
    while queues and len(chosen) < free:
        merchant = min(queues, key=lambda m: (served.get(m, 0), queues[m][0]))
        chosen.add(queues[merchant].pop(0)[1])
        if not queues[merchant]:
            del queues[merchant]
        order += 1
        served[merchant] = order
    return chosen


def take_slot(
    now: int, host: str, owner: str, merchant_id: str, waiter_id: int | None, maximum: int
) -> Work[SlotTry]:
    state = yield from _host_row(host, maximum)
    limit = min(int(state["slot_limit"]), maximum)
    if limit != state["slot_limit"]:
        yield from execute("UPDATE hosts SET slot_limit = ? WHERE host = ?", (limit, host))
    for table in ("slots", "slot_waiters"):
        yield from execute(
            f"DELETE FROM {table} WHERE host = ? AND owner NOT IN"  # noqa: S608 -- ours
            " (SELECT id FROM processes WHERE lease_until_ms > ?)",
            (host, now),
        )
    waiter = waiter_id
    if (
        waiter is None
        or (yield from one("SELECT 1 FROM slot_waiters WHERE id = ?", (waiter,))) is None
    ):
        row = yield from one(
            "INSERT INTO slot_waiters (host, owner, merchant_id, since_ms)"
            " VALUES (?, ?, ?, ?) RETURNING id",
            (host, owner, merchant_id, now),
        )
        waiter = int(row["id"])
    busy_until_ms: int | None = state["busy_until_ms"]
    busy_until = maybe_from_ms(busy_until_ms)
    in_use = int((yield from one("SELECT count(*) AS n FROM slots WHERE host = ?", (host,)))["n"])
    if (busy_until_ms is not None and busy_until_ms > now) or in_use >= limit:
        return SlotTry(None, waiter, limit, in_use, busy_until)
    served_rows = yield from every(
        "SELECT merchant_id, last_grant FROM served WHERE host = ?", (host,)
    )
    waiter_rows = yield from every(
        "SELECT id, merchant_id, since_ms FROM slot_waiters WHERE host = ? ORDER BY since_ms, id",
        (host,),
    )
    served = {row["merchant_id"]: int(row["last_grant"]) for row in served_rows}
    waiters = [(int(row["id"]), row["merchant_id"], int(row["since_ms"])) for row in waiter_rows]
    if waiter not in next_in_line(served, waiters, limit - in_use):
        return SlotTry(None, waiter, limit, in_use, busy_until)
    grants = int(state["grants"]) + 1
    yield from execute("DELETE FROM slot_waiters WHERE id = ?", (waiter,))
    yield from execute("UPDATE hosts SET grants = ? WHERE host = ?", (grants, host))
    yield from execute(
        "INSERT INTO served (host, merchant_id, last_grant) VALUES (?, ?, ?)"
        " ON CONFLICT (host, merchant_id) DO UPDATE SET last_grant = excluded.last_grant",
        (host, merchant_id, grants),
    )
    slot = yield from one(
        "INSERT INTO slots (host, owner, merchant_id, granted_at_ms) VALUES (?, ?, ?, ?)"
        " RETURNING id",
        (host, owner, merchant_id, now),
    )
    return SlotTry(int(slot["id"]), waiter, limit, in_use + 1, busy_until)


def reset_hosts() -> Work[None]:
    yield from execute("DELETE FROM hosts")


def leave_slot_queue(waiter_id: int) -> Work[None]:
    yield from execute("DELETE FROM slot_waiters WHERE id = ?", (waiter_id,))


def release_slot(slot_id: int) -> Work[None]:
    yield from execute("DELETE FROM slots WHERE id = ?", (slot_id,))


def slot_busy(now: int, host: str, until: datetime, maximum: int, limit: int) -> Work[int]:
    state = yield from _host_row(host, maximum)
    lowered = max(1, min(int(state["slot_limit"]), limit))
    busy_until = max(to_ms(until), now, state["busy_until_ms"] or now)
    yield from execute(
        "UPDATE hosts SET slot_limit = ?, run = 0, busy_until_ms = ? WHERE host = ?",
        (lowered, busy_until, host),
    )
    return lowered


def slot_went_through(host: str, maximum: int) -> Work[int]:
    state = yield from _host_row(host, maximum)
    limit, run = int(state["slot_limit"]), int(state["run"]) + 1
    if run >= limit:
        limit, run = min(maximum, limit + 1), 0
    yield from execute(
        "UPDATE hosts SET slot_limit = ?, run = ?, busy_until_ms = NULL WHERE host = ?",
        (limit, run, host),
    )
    return limit


def lock_token(now: int, merchant_id: str, owner: str) -> Work[ProcessRecord | None]:
    yield from execute(SERIALISE, (f"token:{merchant_id}",))
    holder = yield from one(
        "SELECT processes.* FROM token_locks JOIN processes ON processes.id = token_locks.owner"
        " WHERE merchant_id = ? AND owner != ? AND lease_until_ms > ?",
        (merchant_id, owner, now),
    )
    if holder is not None:
        return process_record(holder)
    yield from execute(
        "INSERT INTO token_locks (merchant_id, owner, since_ms) VALUES (?, ?, ?)"
        " ON CONFLICT (merchant_id) DO UPDATE SET owner = excluded.owner,"
        " since_ms = excluded.since_ms",
        (merchant_id, owner, now),
    )
    return None


def unlock_token(merchant_id: str, owner: str) -> Work[None]:
    yield from execute(
        "DELETE FROM token_locks WHERE merchant_id = ? AND owner = ?", (merchant_id, owner)
    )


# -- what `status` shows ------------------------------------------------------------------


def snapshot(now: datetime | None) -> Work[Snapshot]:
    chunk_rows = yield from every("SELECT * FROM chunks ORDER BY merchant_id, type, start_ms")
    export_rows = yield from every(
        "SELECT exports.* FROM exports JOIN chunks ON chunks.export_id = exports.id"
        " WHERE exports.state IN (?, ?) AND chunks.status != ?"
        " ORDER BY exports.created_at_ms, exports.{seq}",
        (*LIVE_EXPORT_STATES, ChunkStatus.COMPLETE.value),
    )
    held_rows = []
    if now is not None:
        held_rows = yield from every(
            "SELECT claims.chunk_id, processes.* FROM claims"
            " JOIN processes ON processes.id = claims.owner"
            " WHERE processes.lease_until_ms > ? ORDER BY claims.chunk_id",
            (to_ms(now),),
        )
    return Snapshot(
        chunks=[chunk_record(row) for row in chunk_rows],
        running=[export_record(row) for row in export_rows],
        held=[HeldChunk(row["chunk_id"], process_record(row)) for row in held_rows],
    )
