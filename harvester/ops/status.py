"""`harvester status`: what the store says, per merchant and type. Reads only."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from harvester.clover.chunks import ExportType, TimeRange, gaps, iso, merge
from harvester.config import Config
from harvester.state.records import ChunkStatus, Snapshot


@dataclass(frozen=True, slots=True)
class InFlight:
    export_id: str
    status: str
    percent: float
    range: TimeRange


@dataclass(frozen=True, slots=True)
class Held:
    """A chunk being worked on by a process whose lease runs."""

    range: TimeRange
    host: str
    pid: int
    command: str
    lease_until: datetime


@dataclass(frozen=True, slots=True)
class TypeStatus:
    merchant_id: str
    type: ExportType
    covered_from: datetime | None
    covered_through: datetime | None  # end of the contiguous covered range from covered_from
    gaps: tuple[TimeRange, ...]  # holes between covered_from and the last covered instant
    chunks: dict[ChunkStatus, int]
    in_flight: tuple[InFlight, ...]
    last_error: str | None
    last_error_at: datetime | None
    orphans: int = 0  # creates whose answer was lost: exports that may exist, ids unknown
    held: tuple[Held, ...] = ()


def build_status(config: Config, snapshot: Snapshot) -> list[TypeStatus]:
    pairs = {(m.id, t) for m in config.merchants for t in m.types}
    pairs |= {(c.merchant_id, c.type) for c in snapshot.chunks}
    chunk_by_id = {c.id: c for c in snapshot.chunks}
    rows = []
    for merchant_id, export_type in sorted(pairs):
        mine = [c for c in snapshot.chunks if (c.merchant_id, c.type) == (merchant_id, export_type)]
        covered = merge(c.range for c in mine if c.completed_at is not None)
        holes = (
            tuple(gaps(TimeRange(covered[0].start, covered[-1].end), covered)) if covered else ()
        )
        errors = [c for c in mine if c.last_error is not None and c.last_error_at is not None]
        latest = max(errors, key=lambda c: c.last_error_at or datetime.min, default=None)
        rows.append(
            TypeStatus(
                merchant_id=merchant_id,
                type=export_type,
                covered_from=covered[0].start if covered else None,
                covered_through=covered[0].end if covered else None,
                gaps=holes,
                chunks=dict(Counter(c.status for c in mine)),
                in_flight=tuple(
                    InFlight(e.id, e.status, e.percent, chunk_by_id[e.chunk_id].range)
                    for e in snapshot.running
                    if e.chunk_id in chunk_by_id
                    and (chunk_by_id[e.chunk_id].merchant_id, chunk_by_id[e.chunk_id].type)
                    == (merchant_id, export_type)
                ),
                last_error=latest.last_error if latest else None,
                last_error_at=latest.last_error_at if latest else None,
                orphans=sum(c.lost_creates for c in mine),
                held=tuple(
                    Held(
                        chunk_by_id[h.chunk_id].range,
                        h.holder.host,
                        h.holder.pid,
                        h.holder.command,
                        h.holder.lease_until,
                    )
                    for h in snapshot.held
                    if h.chunk_id in chunk_by_id
                    and (chunk_by_id[h.chunk_id].merchant_id, chunk_by_id[h.chunk_id].type)
                    == (merchant_id, export_type)
                ),
            )
        )
    return rows


def status_as_json(rows: list[TypeStatus]) -> list[dict[str, Any]]:
    return [
        {
            "merchant": row.merchant_id,
            "type": str(row.type),
            "covered_from": iso(row.covered_from),
            "covered_through": iso(row.covered_through),
            "gaps": [{"start": iso(g.start), "end": iso(g.end)} for g in row.gaps],
            "chunks": {str(status): row.chunks.get(status, 0) for status in ChunkStatus},
            "in_flight": [
                {
                    "export_id": f.export_id,
                    "status": f.status,
                    "percent": f.percent,
                    "range": f.range.name,
                }
                for f in row.in_flight
            ],
            "last_error": row.last_error,
            "last_error_at": iso(row.last_error_at),
            "orphans": row.orphans,
            "held": [
                {
                    "range": h.range.name,
                    "host": h.host,
                    "pid": h.pid,
                    "command": h.command,
                    "lease_until": iso(h.lease_until),
                }
                for h in row.held
            ],
        }
        for row in rows
    ]


def render_status(rows: list[TypeStatus]) -> str:
    lines = []
    for row in rows:
        counts = ", ".join(
            f"{row.chunks[status]} {status}" for status in ChunkStatus if row.chunks.get(status)
        )
        covered = (
            f"covered {iso(row.covered_from)} through {iso(row.covered_through)}"
            if row.covered_from
            else "nothing covered yet"
        )
        lines.append(f"{row.merchant_id} {row.type}: {covered}; chunks: {counts or 'none'}")
        for gap in row.gaps:
            lines.append(f"  gap {gap}")
        for flight in row.in_flight:
            lines.append(
                f"  in flight: export {flight.export_id} {flight.status} "
                f"{flight.percent:g}% for {flight.range}"
            )
        if row.orphans:
            lines.append(
                f"  orphans: {row.orphans} create(s) lost their answer (the exports may exist)"
            )
        for held in row.held:
            lines.append(
                f"  held: {held.range} by {held.host} pid {held.pid} ({held.command}), "
                f"lease until {iso(held.lease_until)}"
            )
        if row.last_error:
            lines.append(f"  last error at {iso(row.last_error_at)}: {row.last_error}")
    return "\n".join(lines)
