"""Every operation of the state, written once: its statements, and the claim and slot logic.

Each function is an operation (`sql.Work`): it yields its queries and returns the result,
so both backends run the very same steps, one transaction each (`sqlstore.SqlStore`).
Each takes an `At` first: the store's name for messages, and the time of the call.

Where processes race, the row that decides is locked first (`{lock}`: the chunk for a
claim or an export, the host for its slots, the process for its lease), or a key is
serialised (`SERIALISE`: the overlap check of a merchant's chunks, a merchant's refresh
lock). In SQLite a write transaction holds the whole file, so both come for free there.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Collection, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

from harvester.clover.chunks import ExportType, TimeRange
from harvester.errors import ChunkOverlap, StoreError
from harvester.state.records import (
    ChunkRecord,
    ChunkStatus,
    ClaimResult,
    ExportRecord,
    ExportState,
    HeldChunk,
    HostView,
    PartRecord,
    ProcessRecord,
    SlotTry,
    Snapshot,
)
from harvester.state.sql import (
    NOTIFY,
    SERIALISE,
    At,
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

T = TypeVar("T")

# An export in one of these states can still deliver files: a chunk keeps pointing at it.
LIVE_EXPORT_STATES = (ExportState.RUNNING.value, ExportState.DONE.value)
ENDED_EXPORT_STATES = frozenset({ExportState.FAILED, ExportState.EXPIRED, ExportState.LOST})

# What a process's end gives back: everything it holds.
_HELD_BY_PROCESSES = ("claims", "slots", "slot_waiters", "token_locks", "host_users")


def _missing(at: At, what: str) -> StoreError:
    return StoreError(f"state store {at.where}: no {what}")


def _chunk_row(at: At, chunk_id: int, lock: bool = False) -> Work[Row]:
    query = (
        "SELECT * FROM chunks WHERE id = ?{lock}" if lock else "SELECT * FROM chunks WHERE id = ?"
    )
    row: Row | None = yield one(query, (chunk_id,))
    if row is None:
        raise _missing(at, f"chunk {chunk_id}")
    return row


# -- chunks -------------------------------------------------------------------------------


# Rows or keys per statement where a batch is sent as one (`IN (...)`, multi-row VALUES):
# far below either backend's limit on parameters.
_BATCH = 400


def _batches(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for first in range(0, len(items), _BATCH):
        yield items[first : first + _BATCH]


def _marks(count: int, each: str = "?") -> str:
    return ", ".join([each] * count)


def add_chunks(
    at: At, merchant_id: str, type: ExportType, ranges: Sequence[TimeRange]
) -> Work[list[ChunkRecord]]:
    """One row per range, in the order given: existing ones unchanged, new ones PENDING.

    Refuses the whole batch if a new range overlaps a known chunk of the same merchant
    and type with other bounds: covered intervals never overlap.
    """
    added = yield from add_chunks_of(at, [(merchant_id, type, ranges)])
    return added[0]


def add_chunks_of(
    at: At, wanted: Sequence[tuple[str, ExportType, Sequence[TimeRange]]]
) -> Work[list[list[ChunkRecord]]]:
    """`add_chunks` for many merchants and types at once, in one transaction: for each
    (merchant, type, ranges), its rows in the order given. An overlap refuses them all."""
    # One planner at a time: the overlap check must see every insert. One key for every
    # merchant: a lock per merchant would take thousands of PostgreSQL's lock slots.
    yield execute(SERIALISE, ("chunks",))
    known: dict[tuple[str, str], list[Row]] = {}
    merchant_ids = [merchant_id for merchant_id, _, ranges in wanted if ranges]
    for row in (yield from _chunk_rows_of(merchant_ids)):
        known.setdefault((row["merchant_id"], row["type"]), []).append(row)
    found: dict[tuple[str, str, int, int], Row] = {}
    new: dict[tuple[str, str, int, int], None] = {}  # in the order met
    for merchant_id, type, ranges in wanted:
        rows = known.get((merchant_id, type.value), [])
        by_bounds = {(row["start_ms"], row["end_ms"]): row for row in rows}
        taken = sorted(by_bounds)  # intervals that never overlap: sorted by start and end
        for wanted_range in ranges:
            bounds = (wanted_range.start_ms, wanted_range.end_ms)
            key = (merchant_id, type.value, *bounds)
            if bounds in by_bounds:
                found[key] = by_bounds[bounds]
                continue
            if key in found or key in new:
                continue
            # The last known interval starting before this one ends is the only candidate.
            before = bisect.bisect_left(taken, (bounds[1],)) - 1
            if before >= 0 and taken[before][1] > bounds[0]:
                existing = TimeRange.from_ms(*taken[before])
                raise ChunkOverlap(
                    f"state store {at.where}: chunk {wanted_range} of merchant "
                    f"{merchant_id} {type.value} overlaps the known chunk {existing}"
                )
            bisect.insort(taken, bounds)
            new[key] = None
    for inserts in _batches(list(new)):
        rows = yield every(
            "INSERT INTO chunks (merchant_id, type, start_ms, end_ms, status, updated_at_ms)"  # noqa: S608
            f" VALUES {_marks(len(inserts), '(?, ?, ?, ?, ?, ?)')} RETURNING *",
            [value for key in inserts for value in (*key, ChunkStatus.PENDING.value, at.now)],
        )
        for row in rows:
            found[(row["merchant_id"], row["type"], row["start_ms"], row["end_ms"])] = row
    return [
        [chunk_record(found[(merchant_id, type.value, r.start_ms, r.end_ms)]) for r in ranges]
        for merchant_id, type, ranges in wanted
    ]


def chunks_of(at: At, merchant_ids: Sequence[str]) -> Work[list[ChunkRecord]]:
    """Every chunk of these merchants, sorted by merchant, type, start: what planning reads,
    a batch of merchants per statement."""
    return [chunk_record(row) for row in (yield from _chunk_rows_of(merchant_ids))]


def _chunk_rows_of(merchant_ids: Sequence[str]) -> Work[list[Row]]:
    rows: list[Row] = []
    for batch in _batches(sorted(set(merchant_ids))):
        rows += yield every(
            f"SELECT * FROM chunks WHERE merchant_id IN ({_marks(len(batch))})"  # noqa: S608
            " ORDER BY merchant_id, type, start_ms",
            batch,
        )
    return rows


def covered(at: At, merchant_id: str, type: ExportType) -> Work[list[TimeRange]]:
    """Ranges of this merchant and type whose folder has been put in place, sorted."""
    rows = yield every(
        "SELECT start_ms, end_ms FROM chunks"
        " WHERE merchant_id = ? AND type = ? AND completed_at_ms IS NOT NULL ORDER BY start_ms",
        (merchant_id, type.value),
    )
    return [TimeRange.from_ms(row["start_ms"], row["end_ms"]) for row in rows]


def chunks(
    at: At,
    merchant_id: str | None = None,
    type: ExportType | None = None,
    statuses: Collection[ChunkStatus] | None = None,
) -> Work[list[ChunkRecord]]:
    """Chunks matching every filter given, sorted by merchant, type, start."""
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
    rows = yield every(
        f"SELECT * FROM chunks WHERE {' AND '.join(conditions)}"  # noqa: S608 -- ours, bound
        " ORDER BY merchant_id, type, start_ms",
        params,
    )
    return [chunk_record(row) for row in rows]


def get_chunk(at: At, chunk_id: int) -> Work[ChunkRecord]:
    """The chunk with this id (StoreError if there is none)."""
    return chunk_record((yield from _chunk_row(at, chunk_id)))


def reset_for_reharvest(at: At, chunk_id: int) -> Work[ChunkRecord]:
    """Lookback: a COMPLETE chunk is due again, yet stays covered (completed_at kept).

    Its old folder stays in place until the new harvest replaces it. A chunk in any
    other status is already due and is returned unchanged.
    """
    (chunk,) = yield from reset_for_reharvest_of(at, [chunk_id])
    return chunk


def reset_for_reharvest_of(at: At, chunk_ids: Sequence[int]) -> Work[list[ChunkRecord]]:
    """`reset_for_reharvest` for many chunks in one transaction, in the order given."""
    found: dict[int, ChunkRecord] = {}
    for batch in _batches(list(chunk_ids)):
        yield execute(
            "UPDATE chunks SET status = ?, export_id = NULL, updated_at_ms = ?"  # noqa: S608
            f" WHERE id IN ({_marks(len(batch))}) AND status = ?",
            (ChunkStatus.PENDING.value, at.now, *batch, ChunkStatus.COMPLETE.value),
        )
        rows = yield every(
            f"SELECT * FROM chunks WHERE id IN ({_marks(len(batch))})",  # noqa: S608
            batch,
        )
        found.update((row["id"], chunk_record(row)) for row in rows)
    missing = [chunk_id for chunk_id in chunk_ids if chunk_id not in found]
    if missing:
        raise _missing(at, f"chunk {missing[0]}")
    return [found[chunk_id] for chunk_id in chunk_ids]


def complete_chunk(at: At, chunk_id: int, owner: str | None = None) -> Work[None]:
    """The chunk's folder is in place: COMPLETE, covered from now, errors cleared; with
    `owner`, that process's claim on it ends in the same operation (`release_chunk`)."""
    changed = yield count(
        "UPDATE chunks SET status = ?, completed_at_ms = ?, last_error = NULL,"
        " last_error_at_ms = NULL, updated_at_ms = ? WHERE id = ?",
        (ChunkStatus.COMPLETE.value, at.now, at.now, chunk_id),
    )
    if changed == 0:
        raise _missing(at, f"chunk {chunk_id}")
    if owner is not None:
        yield from release_chunk(at, chunk_id, owner)


def fail_chunk(at: At, chunk_id: int, error: str) -> Work[None]:
    """Give up on the chunk for this run.

    It keeps an export that is still RUNNING or DONE, so the next run re-attaches to it
    instead of spending a new server slot.
    """
    changed = yield count(
        "UPDATE chunks SET status = :failed, last_error = :error,"
        " last_error_at_ms = :now, updated_at_ms = :now,"
        " export_id = CASE WHEN (SELECT state FROM exports WHERE id = chunks.export_id)"
        " IN (:running, :done) THEN export_id ELSE NULL END"
        " WHERE id = :chunk_id",
        {
            "failed": ChunkStatus.FAILED.value,
            "error": error,
            "now": at.now,
            "running": ExportState.RUNNING.value,
            "done": ExportState.DONE.value,
            "chunk_id": chunk_id,
        },
    )
    if changed == 0:
        raise _missing(at, f"chunk {chunk_id}")


def note_lost_create(at: At, chunk_id: int) -> Work[None]:
    """A create for the chunk lost its answer: an export may exist that we know no id of."""
    changed = yield count(
        "UPDATE chunks SET lost_creates = lost_creates + 1 WHERE id = ?", (chunk_id,)
    )
    if changed == 0:
        raise _missing(at, f"chunk {chunk_id}")


def start_run(at: At) -> Work[None]:
    """A new run retries what the last one gave up on.

    FAILED chunks go back to PENDING, or straight to EXPORTING / DOWNLOADING when their
    export is still RUNNING / DONE.
    """
    # SET expressions all see the row as it was, so export_id below is the old one.
    yield execute(
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
            "now": at.now,
        },
    )


# -- exports ------------------------------------------------------------------------------


def record_export(
    at: At, chunk_id: int, export_id: str, status: str, percent: float
) -> Work[ExportRecord]:
    """Remember an export the moment Clover created it, before the first poll.

    The export is RUNNING and becomes the chunk's current one; the chunk is EXPORTING.
    Recording the same export for the same chunk again changes nothing.
    """
    yield from _chunk_row(at, chunk_id, lock=True)
    # Inserted first: an export is new all but always, and then no look is needed.
    row = yield one(
        "INSERT INTO exports (id, chunk_id, state, status, percent, created_at_ms, updated_at_ms)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING RETURNING *",
        (export_id, chunk_id, ExportState.RUNNING.value, status, percent, at.now, at.now),
    )
    if row is None:
        existing = yield one("SELECT * FROM exports WHERE id = ?", (export_id,))
        assert existing is not None  # the conflict was with it
        if existing["chunk_id"] != chunk_id:
            raise StoreError(
                f"state store {at.where}: export {export_id} already belongs to "
                f"chunk {existing['chunk_id']}, not {chunk_id}"
            )
        return export_record(existing)
    yield execute(
        "UPDATE chunks SET export_id = ?, status = ?,"
        " exports_created = exports_created + 1, updated_at_ms = ? WHERE id = ?",
        (export_id, ChunkStatus.EXPORTING.value, at.now, chunk_id),
    )
    return export_record(row)


def update_export(at: At, export_id: str, status: str, percent: float) -> Work[None]:
    """Store what the latest poll said."""
    changed = yield count(
        "UPDATE exports SET status = ?, percent = ?, updated_at_ms = ? WHERE id = ?",
        (status, percent, at.now, export_id),
    )
    if changed == 0:
        raise _missing(at, f"export {export_id}")


def export_done(
    at: At, export_id: str, available_until: datetime | None, urls: Sequence[str]
) -> Work[ExportRecord]:
    """Clover says DONE: keep its file URLs; its chunk moves on to DOWNLOADING. Returns
    the export as it is now."""
    until = None if available_until is None else to_ms(available_until)
    row = yield one(
        "UPDATE exports SET state = ?, status = 'DONE', percent = 100.0,"
        " available_until_ms = ?, urls = ?, updated_at_ms = ? WHERE id = ? RETURNING *",
        (ExportState.DONE.value, until, json.dumps(list(urls)), at.now, export_id),
    )
    if row is None:
        raise _missing(at, f"export {export_id}")
    done = export_record(row)
    yield execute(
        "UPDATE chunks SET status = ?, updated_at_ms = ? WHERE export_id = ? AND status = ?",
        (ChunkStatus.DOWNLOADING.value, at.now, export_id, ChunkStatus.EXPORTING.value),
    )
    return done


def end_export(at: At, export_id: str, state: ExportState, error: str) -> Work[None]:
    """The export will deliver nothing (more): its chunk drops it and is due again.

    `state` is FAILED, EXPIRED or LOST. A chunk FAILED for this run stays FAILED; a
    COMPLETE chunk is not touched (its folder is in place already).
    """
    if state not in ENDED_EXPORT_STATES:
        raise ValueError(f"end_export needs an ending state, not {state}")
    changed = yield count(
        "UPDATE exports SET state = ?, updated_at_ms = ? WHERE id = ?",
        (state.value, at.now, export_id),
    )
    if changed == 0:
        raise _missing(at, f"export {export_id}")
    yield execute(
        "UPDATE chunks SET export_id = NULL,"
        " status = CASE status WHEN :failed THEN :failed ELSE :pending END,"
        " last_error = :error, last_error_at_ms = :now, updated_at_ms = :now"
        " WHERE export_id = :export_id AND status != :complete",
        {
            "failed": ChunkStatus.FAILED.value,
            "pending": ChunkStatus.PENDING.value,
            "complete": ChunkStatus.COMPLETE.value,
            "error": error,
            "now": at.now,
            "export_id": export_id,
        },
    )


def get_export(at: At, export_id: str) -> Work[ExportRecord | None]:
    """The export with this id, if known."""
    row = yield one("SELECT * FROM exports WHERE id = ?", (export_id,))
    return None if row is None else export_record(row)


# (seconds from creation to DONE, seconds of range) of covered chunks' exports.
_DURATION_COLUMNS = "e.updated_at_ms - e.created_at_ms AS took_ms, c.end_ms - c.start_ms AS span_ms"
_DURATIONS_FROM = " FROM chunks c JOIN exports e ON e.id = c.export_id"


def _durations(rows: Sequence[Row]) -> list[tuple[float, float]]:
    """The rows of a read of `_DURATION_COLUMNS`, newest first, as (seconds, seconds of
    range), oldest first; an export that took no time (clocks out of step) says nothing and
    is left out."""
    return [
        (int(row["took_ms"]) / 1000, int(row["span_ms"]) / 1000)
        for row in reversed(rows)
        if int(row["took_ms"]) > 0
    ]


def past_durations(
    at: At, merchant_id: str, latest: int
) -> Work[dict[ExportType, list[tuple[float, float]]]]:
    """Per type, (seconds from creation to DONE, seconds of range) of the exports of the
    merchant's `latest` covered chunks of that type, oldest first: one read for both types,
    for what polling predicts with (a type with none maps to an empty list)."""
    rows = yield every(
        "SELECT type, took_ms, span_ms FROM"  # noqa: S608 -- our own text
        f" (SELECT c.type AS type, {_DURATION_COLUMNS},"
        " row_number() OVER (PARTITION BY c.type ORDER BY c.completed_at_ms DESC, c.id DESC)"
        f" AS newness{_DURATIONS_FROM}"
        " WHERE c.merchant_id = ? AND c.status = ? AND e.state = ?"
        ") AS latest WHERE newness <= ? ORDER BY type, newness",
        (merchant_id, ChunkStatus.COMPLETE.value, ExportState.DONE.value, latest),
    )
    return {
        type: _durations([row for row in rows if row["type"] == type.value]) for type in ExportType
    }


def recent_durations(at: At, type: ExportType, latest: int) -> Work[list[tuple[float, float]]]:
    """As `past_durations` for one type, of the `latest` covered chunks of any merchant (the
    chunks added last): what a merchant with no history of its own borrows at the start of
    a run. One read, through the index of chunks by status (in SQLite it holds them in id
    order: the newest covered chunks come first, no sort)."""
    rows = yield every(
        f"SELECT {_DURATION_COLUMNS}{_DURATIONS_FROM}"
        " WHERE c.status = ? AND c.type = ? AND e.state = ?"
        " ORDER BY c.id DESC LIMIT ?",
        (ChunkStatus.COMPLETE.value, type.value, ExportState.DONE.value, latest),
    )
    return _durations(rows)


def export_durations(latest: int) -> Work[list[float]]:
    rows = yield every(
        "SELECT updated_at_ms - created_at_ms AS ms FROM exports WHERE state = ?"
        " ORDER BY created_at_ms DESC LIMIT ?",
        (ExportState.DONE.value, latest),
    )
    return [int(row["ms"]) / 1000 for row in rows]


# -- parts and refresh tokens -------------------------------------------------------------


def record_part(at: At, part: PartRecord) -> Work[None]:
    """A part is saved. Recording the same part number again overwrites its entry."""
    yield execute(
        "INSERT INTO parts (export_id, part_index, url_index, size, sha256, objects)"
        " VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (export_id, part_index) DO UPDATE SET"
        " url_index = excluded.url_index, size = excluded.size,"
        " sha256 = excluded.sha256, objects = excluded.objects",
        (part.export_id, part.index, part.url_index, part.size, part.sha256, part.objects),
    )


def parts(at: At, export_id: str) -> Work[list[PartRecord]]:
    """The saved parts of an export, by part number."""
    rows = yield every("SELECT * FROM parts WHERE export_id = ? ORDER BY part_index", (export_id,))
    return [part_record(row) for row in rows]


def refresh_token(at: At, merchant_id: str) -> Work[tuple[str, datetime | None] | None]:
    """The merchant's latest refresh token and its expiry, if one was saved."""
    row = yield one(
        "SELECT token, expires_at_ms FROM refresh_tokens WHERE merchant_id = ?", (merchant_id,)
    )
    return None if row is None else (row["token"], maybe_from_ms(row["expires_at_ms"]))


def save_refresh_token(
    at: At, merchant_id: str, token: str, expires_at: datetime | None
) -> Work[None]:
    """Durably replace the merchant's refresh token (they are single-use)."""
    yield execute(
        "INSERT INTO refresh_tokens (merchant_id, token, expires_at_ms, updated_at_ms)"
        " VALUES (?, ?, ?, ?)"
        " ON CONFLICT (merchant_id) DO UPDATE SET token = excluded.token,"
        " expires_at_ms = excluded.expires_at_ms, updated_at_ms = excluded.updated_at_ms",
        (merchant_id, token, None if expires_at is None else to_ms(expires_at), at.now),
    )


# -- processes and claims -----------------------------------------------------------------


def register_process(at: At, process: ProcessRecord) -> Work[None]:
    """Enter (or re-enter) a process sharing the state, with its lease."""
    yield execute(
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


def renew_process(at: At, process_id: str, lease_until: datetime) -> Work[bool]:
    """Extend a process's lease. False if it had already ended or lapsed (then it is
    renewed all the same: claims nobody took meanwhile are its own again)."""
    row = yield one("SELECT lease_until_ms FROM processes WHERE id = ?{lock}", (process_id,))
    if row is None:
        raise _missing(at, f"process {process_id}")
    yield execute(
        "UPDATE processes SET lease_until_ms = ? WHERE id = ?", (to_ms(lease_until), process_id)
    )
    return bool(row["lease_until_ms"] > at.now)


def end_process(at: At, process_id: str) -> Work[None]:
    """The process is done (or known dead): its lease ends now, its claims, slots and
    locks go."""
    # Those waiting on its hosts learn of it: hosts first, in one order, as everywhere.
    touched = yield every(
        "SELECT host FROM host_users WHERE owner = ? UNION SELECT host FROM slots WHERE owner = ?"
        " ORDER BY host",
        (process_id, process_id),
    )
    for row in touched:
        yield from _host_changed(row["host"])
    for table in _HELD_BY_PROCESSES:
        yield execute(f"DELETE FROM {table} WHERE owner = ?", (process_id,))  # noqa: S608
    yield execute(
        "UPDATE processes SET lease_until_ms = CASE WHEN lease_until_ms < :now"
        " THEN lease_until_ms ELSE :now END WHERE id = :id",
        {"now": at.now, "id": process_id},
    )


def processes(at: At) -> Work[list[ProcessRecord]]:
    """Every process that ever shared the state, oldest first."""
    rows = yield every("SELECT * FROM processes ORDER BY started_at_ms, id")
    return [process_record(row) for row in rows]


def live_processes(at: At, machine: str | None = None) -> Work[list[ProcessRecord]]:
    """The processes whose lease runs now (those on `machine`, if given), oldest first:
    what `processes` says of them, without reading every process that ever ran."""
    conditions = ["lease_until_ms > ?"]
    params: list[Any] = [at.now]
    if machine is not None:
        conditions.append("machine = ?")
        params.append(machine)
    rows = yield every(
        f"SELECT * FROM processes WHERE {' AND '.join(conditions)}"  # noqa: S608 -- ours, bound
        " ORDER BY started_at_ms, id",
        params,
    )
    return [process_record(row) for row in rows]


def claim_chunk(at: At, chunk_id: int, owner: str) -> Work[ClaimResult]:
    """Take the chunk for `owner` unless a process whose lease runs holds it.

    A claim of a process whose lease has ended passes to `owner`: the chunk is taken
    over as it stands (its export, its saved parts).
    """
    # The chunk's row lock: claimers of one chunk take turns.
    chunk = chunk_record((yield from _chunk_row(at, chunk_id, lock=True)))
    holder = yield one(
        "SELECT processes.* FROM claims JOIN processes ON processes.id = claims.owner"
        " WHERE claims.chunk_id = ? AND claims.owner != ? AND lease_until_ms > ?",
        (chunk_id, owner, at.now),
    )
    if holder is not None:
        return ClaimResult(chunk, process_record(holder))
    yield execute(
        "INSERT INTO claims (chunk_id, owner, claimed_at_ms) VALUES (?, ?, ?)"
        " ON CONFLICT (chunk_id) DO UPDATE SET owner = excluded.owner,"
        " claimed_at_ms = excluded.claimed_at_ms WHERE claims.owner != excluded.owner",
        (chunk_id, owner, at.now),
    )
    return ClaimResult(chunk, None)


def claim_chunks(at: At, chunk_ids: Sequence[int], owner: str) -> Work[list[ClaimResult]]:
    """`claim_chunk` for each chunk, in one transaction; in the order given."""
    claims: dict[int, ClaimResult] = {}
    # Row locks taken in one order by every process: two batches never wait for each other.
    for chunk_id in sorted(set(chunk_ids)):
        claims[chunk_id] = yield from claim_chunk(at, chunk_id, owner)
    return [claims[chunk_id] for chunk_id in chunk_ids]


def holds_chunk(at: At, chunk_id: int, owner: str) -> Work[bool]:
    """True while `owner` holds the chunk's claim (nobody took it over)."""
    row = yield one("SELECT 1 FROM claims WHERE chunk_id = ? AND owner = ?", (chunk_id, owner))
    return row is not None


def held_parts(at: At, chunk_id: int, owner: str, export_id: str) -> Work[list[PartRecord] | None]:
    """The export's saved parts while `owner` holds the chunk's claim; None once it does
    not: `holds_chunk` and `parts` in one operation, as a download begins."""
    if not (yield from holds_chunk(at, chunk_id, owner)):
        return None
    return (yield from parts(at, export_id))


def export_done_held(
    at: At,
    export_id: str,
    available_until: datetime | None,
    urls: Sequence[str],
    slot_id: int | None,
    chunk_id: int,
    owner: str,
) -> Work[tuple[ExportRecord, list[PartRecord] | None]]:
    """`export_done`, `release_slot` of `slot_id` (if any: DONE freed it at the server) and
    `held_parts`, in one operation: the DONE of an export as the process that followed it
    under the chunk's claim records it, with the parts saved of it while `owner` still
    holds the claim (None once it does not: the DONE is recorded all the same)."""
    done = yield from export_done(at, export_id, available_until, urls)
    if slot_id is not None:
        yield from release_slot(at, slot_id)
    held = yield from held_parts(at, chunk_id, owner, export_id)
    return done, held


def release_chunk(at: At, chunk_id: int, owner: str) -> Work[None]:
    """`owner` is done with the chunk (if it still held it)."""
    yield execute("DELETE FROM claims WHERE chunk_id = ? AND owner = ?", (chunk_id, owner))


# -- shared export slots and refresh locks ------------------------------------------------


def _host_changed(host: str) -> Work[None]:
    """Wake whoever waits on the host in any process: its version moves on (SQLite's
    processes poll it) and PostgreSQL's listeners are notified at commit. The host's row is
    written, so in PostgreSQL it is locked from here on: take it before any slot's row."""
    yield execute("UPDATE hosts SET version = version + 1 WHERE host = ?", (host,))
    yield execute(NOTIFY, (host,))


def _host_row(host: str, maximum: int) -> Work[Row]:
    """The host's row, created if needed and locked: its slots' changes take turns."""
    row: Row | None = yield one("SELECT * FROM hosts WHERE host = ?{lock}", (host,))
    if row is None:  # the first time the host is seen: one statement more
        yield execute(
            "INSERT INTO hosts (host, slot_limit) VALUES (?, ?) ON CONFLICT (host) DO NOTHING",
            (host, maximum),
        )
        row = yield one("SELECT * FROM hosts WHERE host = ?{lock}", (host,))
    assert row is not None
    return row


def next_in_line(
    served: dict[str, int], waiters: Sequence[tuple[int, str, int]], free: int
) -> set[int]:
    """The waiters (id, merchant, since) the next `free` grants go to: round-robin across
    merchants, least recently served first, then the longest waiting. `served` holds at
    least the waiting merchants' last grants."""
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
    at: At,
    host: str,
    owner: str,
    merchant_id: str,
    waiter_id: int | None,
    maximum: int,
    chunk_id: int | None = None,
) -> Work[SlotTry]:
    """Ask for one of the host's export slots for `merchant_id`; with `chunk_id`, a slot
    granted says whether `owner` still holds that chunk's claim (`holds_chunk`, in the
    same operation: the check before an export is created).

    Granted when the live processes together hold fewer than the shared limit, no busy
    backoff is running, and the merchant's waiter is among the next in line: merchants
    served least recently first, then the longest waiting, as ExportSlots does in one
    process. Otherwise the waiter keeps its place: ask again with `waiter_id`. Slots and
    waiters of processes whose lease ended are dropped before anyone is refused.

    A grant to a first ask with nobody waiting, the common case, is six statements (and
    the claim's read): no waiter row is written and taken back for it, and the lapsed are
    looked for only before a refusal.
    """
    state = yield from _host_row(host, maximum)
    limit = min(int(state["slot_limit"]), maximum)
    if limit != state["slot_limit"]:
        yield execute("UPDATE hosts SET slot_limit = ? WHERE host = ?", (limit, host))
    busy_until_ms: int | None = state["busy_until_ms"]
    busy_until = maybe_from_ms(busy_until_ms)
    busy = busy_until_ms is not None and busy_until_ms > at.now
    waiter = waiter_id
    if (
        waiter is not None
        and (yield one("SELECT 1 FROM slot_waiters WHERE id = ?", (waiter,))) is None
    ):
        waiter = None  # dropped meanwhile: in line again from now
    in_use, first = yield from _slot_free_for(at, host, merchant_id, waiter, limit, busy)
    if not first and (yield from _drop_lapsed(at, host)):
        in_use, first = yield from _slot_free_for(at, host, merchant_id, waiter, limit, busy)
    if not first:
        if waiter is None:
            row = yield one(
                "INSERT INTO slot_waiters (host, owner, merchant_id, since_ms)"
                " VALUES (?, ?, ?, ?) RETURNING id",
                (host, owner, merchant_id, at.now),
            )
            waiter = int(row["id"])
        return SlotTry(None, waiter, limit, in_use, busy_until)
    grants = int(state["grants"]) + 1
    if waiter is not None:
        yield execute("DELETE FROM slot_waiters WHERE id = ?", (waiter,))
    yield execute("UPDATE hosts SET grants = ? WHERE host = ?", (grants, host))
    yield execute(
        "INSERT INTO served (host, merchant_id, last_grant) VALUES (?, ?, ?)"
        " ON CONFLICT (host, merchant_id) DO UPDATE SET last_grant = excluded.last_grant",
        (host, merchant_id, grants),
    )
    slot = yield one(
        "INSERT INTO slots (host, owner, merchant_id, granted_at_ms) VALUES (?, ?, ?, ?)"
        " RETURNING id",
        (host, owner, merchant_id, at.now),
    )
    held = True if chunk_id is None else (yield from holds_chunk(at, chunk_id, owner))
    return SlotTry(int(slot["id"]), waiter, limit, in_use + 1, busy_until, held)


# A first ask's place in line before it has a waiter row: the newest of all.
_NEW_WAITER = 2**62


def _slot_free_for(
    at: At, host: str, merchant_id: str, waiter: int | None, limit: int, busy: bool
) -> Work[tuple[int, bool]]:
    """The host's slots in use, and whether the next grant may go to `waiter` (None: a
    first ask, placed after everyone waiting)."""
    in_use = int((yield one("SELECT count(*) AS n FROM slots WHERE host = ?", (host,)))["n"])
    if busy or in_use >= limit:
        return in_use, False
    waiter_rows = yield every(
        "SELECT id, merchant_id, since_ms FROM slot_waiters WHERE host = ? ORDER BY since_ms, id",
        (host,),
    )
    waiters = [(int(row["id"]), row["merchant_id"], int(row["since_ms"])) for row in waiter_rows]
    if waiter is None:
        if not waiters:
            return in_use, True  # nobody in line
        waiters.append((_NEW_WAITER, merchant_id, at.now))
    # The grants of the merchants in line only (the asker's among them): the host's every
    # merchant is tens of thousands of rows at ten thousand merchants, read at each grant.
    served_rows = yield every(
        "SELECT merchant_id, last_grant FROM served WHERE host = ? AND (merchant_id = ?"
        " OR merchant_id IN (SELECT merchant_id FROM slot_waiters WHERE host = ?))",
        (host, merchant_id, host),
    )
    served = {row["merchant_id"]: int(row["last_grant"]) for row in served_rows}
    chosen = next_in_line(served, waiters, limit - in_use)
    return in_use, (_NEW_WAITER if waiter is None else waiter) in chosen


def _drop_lapsed(at: At, host: str) -> Work[bool]:
    """Drop the host's slots and waiters of processes whose lease ended; True if any."""
    dropped = 0
    for table in ("slots", "slot_waiters"):
        dropped += yield count(
            f"DELETE FROM {table} WHERE host = ? AND owner NOT IN"  # noqa: S608 -- ours
            " (SELECT id FROM processes WHERE lease_until_ms > ?)",
            (host, at.now),
        )
    if dropped:  # a lapsed process's slots are free: the other waiters may take them
        yield from _host_changed(host)
    return dropped > 0


def reset_hosts(at: At) -> Work[None]:
    """Forget the shared limits and backoffs: for a process alone on the state, which
    starts from the configured limits as it would by itself."""
    yield execute("DELETE FROM hosts")


def leave_slot_queue(at: At, waiter_id: int) -> Work[None]:
    """Stop waiting for a slot (the waiter was cancelled): the next in line may be another."""
    yield from _delete_waking("slot_waiters", waiter_id)


def release_slot(at: At, slot_id: int) -> Work[None]:
    """Give a slot back; those waiting for one, in any process, are woken."""
    yield from _delete_waking("slots", slot_id)


def _delete_waking(table: str, row_id: int) -> Work[None]:
    """Delete a row of a host's `slots` or `slot_waiters`, waking the host's waiters first
    (its row locked before the slot's, as everywhere)."""
    row = yield one(f"SELECT host FROM {table} WHERE id = ?", (row_id,))  # noqa: S608 -- ours
    if row is not None:
        yield from _host_changed(row["host"])
    yield execute(f"DELETE FROM {table} WHERE id = ?", (row_id,))  # noqa: S608 -- ours


def slot_busy(at: At, host: str, until: datetime, maximum: int, limit: int) -> Work[int]:
    """A busy 503 on the host: the shared limit drops to `limit` (what the process that
    saw it now allows itself) if lower, and nothing is granted before `until` (a later
    end already set stays). Returns the new limit."""
    state = yield from _host_row(host, maximum)
    lowered = max(1, min(int(state["slot_limit"]), limit))
    busy_until = max(to_ms(until), at.now, state["busy_until_ms"] or at.now)
    yield execute(
        "UPDATE hosts SET slot_limit = ?, run = 0, busy_until_ms = ? WHERE host = ?",
        (lowered, busy_until, host),
    )
    yield from _host_changed(host)
    return lowered


def slot_went_through(at: At, host: str, maximum: int) -> Work[int]:
    """An export was created on the host: the backoff ends; after as many in a row as
    the limit, the limit grows by one up to `maximum`. Returns the limit."""
    state = yield from _host_row(host, maximum)
    limit, run = int(state["slot_limit"]), int(state["run"]) + 1
    if run >= limit:
        limit, run = min(maximum, limit + 1), 0
    yield execute(
        "UPDATE hosts SET slot_limit = ?, run = ?, busy_until_ms = NULL WHERE host = ?",
        (limit, run, host),
    )
    if state["busy_until_ms"] is not None or limit != state["slot_limit"]:
        yield from _host_changed(host)  # a backoff ended, or the limit grew: slots to give
    return limit


def join_host(at: At, host: str, owner: str, maximum: int) -> Work[HostView]:
    """`owner` works on the host: one more share of its limits. Returns the host's view."""
    yield from _host_row(host, maximum)
    yield execute(
        "INSERT INTO host_users (host, owner) VALUES (?, ?) ON CONFLICT (host, owner) DO NOTHING",
        (host, owner),
    )
    yield from _host_changed(host)
    return (yield from host_view(at, host))


def leave_host(at: At, host: str, owner: str) -> Work[None]:
    """`owner` is done with the host: its share goes back to the others."""
    yield from _host_changed(host)
    yield execute("DELETE FROM host_users WHERE host = ? AND owner = ?", (host, owner))


def host_view(at: At, host: str) -> Work[HostView]:
    """The host's version, its users whose lease runs, and the app pause, if any."""
    row = yield one(
        "SELECT version, app_paused_until_ms, (SELECT count(*) FROM host_users"
        " JOIN processes ON processes.id = host_users.owner"
        " WHERE host_users.host = hosts.host AND processes.lease_until_ms > ?) AS users"
        " FROM hosts WHERE host = ?",
        (at.now, host),
    )
    if row is None:
        return HostView(0, 0, None)
    return HostView(
        int(row["version"]), int(row["users"]), maybe_from_ms(row["app_paused_until_ms"])
    )


def host_version(at: At, host: str) -> Work[int]:
    """The host's version alone: what a process polls while it waits (0: no row yet)."""
    row = yield one("SELECT version FROM hosts WHERE host = ?", (host,))
    return 0 if row is None else int(row["version"])


def pause_app(at: At, host: str, until: datetime, maximum: int) -> Work[datetime]:
    """An app-scope 429: no process starts a request on the host before `until` (a later end
    already set stays). Returns the pause's end."""
    state = yield from _host_row(host, maximum)
    until_ms = max(to_ms(until), state["app_paused_until_ms"] or 0)
    if until_ms != state["app_paused_until_ms"]:
        yield execute("UPDATE hosts SET app_paused_until_ms = ? WHERE host = ?", (until_ms, host))
        yield from _host_changed(host)
    return maybe_from_ms(until_ms) or until


def lock_token(at: At, merchant_id: str, owner: str) -> Work[ProcessRecord | None]:
    """Take the merchant's refresh lock: None once `owner` holds it, else the live
    process holding it. The lock of a process whose lease ended passes on."""
    yield execute(SERIALISE, (f"token:{merchant_id}",))
    holder = yield one(
        "SELECT processes.* FROM token_locks JOIN processes ON processes.id = token_locks.owner"
        " WHERE merchant_id = ? AND owner != ? AND lease_until_ms > ?",
        (merchant_id, owner, at.now),
    )
    if holder is not None:
        return process_record(holder)
    yield execute(
        "INSERT INTO token_locks (merchant_id, owner, since_ms) VALUES (?, ?, ?)"
        " ON CONFLICT (merchant_id) DO UPDATE SET owner = excluded.owner,"
        " since_ms = excluded.since_ms",
        (merchant_id, owner, at.now),
    )
    return None


def unlock_token(at: At, merchant_id: str, owner: str) -> Work[None]:
    """Give the merchant's refresh lock back (if `owner` still holds it)."""
    yield execute(
        "DELETE FROM token_locks WHERE merchant_id = ? AND owner = ?", (merchant_id, owner)
    )


# -- what `status` shows ------------------------------------------------------------------


def snapshot(at: At, now: datetime | None = None) -> Work[Snapshot]:
    """What `status` shows, in one transaction (with `now`: the live claims too)."""
    chunk_rows = yield every("SELECT * FROM chunks ORDER BY merchant_id, type, start_ms")
    export_rows = yield every(
        "SELECT exports.* FROM exports JOIN chunks ON chunks.export_id = exports.id"
        " WHERE exports.state IN (?, ?) AND chunks.status != ?"
        " ORDER BY exports.created_at_ms, exports.{seq}",
        (*LIVE_EXPORT_STATES, ChunkStatus.COMPLETE.value),
    )
    held_rows = []
    if now is not None:
        held_rows = yield every(
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
