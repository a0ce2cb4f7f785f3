"""When `harvester serve` runs, and whether its nights went well: plain functions of time.

A night is owed from its slot, `daily_at` (UTC) each day, until a run that started at or
after the slot ended on its own. A run that is stopped (SIGTERM, a crash) is not recorded,
so the night is still owed and runs again at the next start-up.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from pathlib import Path

from harvester.clover.chunks import start_of_utc_day
from harvester.errors import StoreError
from harvester.ops.health import Health

MISSED_AFTER_S = 3600.0  # a night with no run started this long after its slot was missed


@dataclass(frozen=True, slots=True)
class LastRun:
    """The last run of `serve` that ended on its own."""

    started_at: datetime
    ended_at: datetime
    exit_code: int


def latest_slot(now: datetime, daily_at: time) -> datetime:
    """The most recent instant at `daily_at` UTC that is not after `now`."""
    today = start_of_utc_day(now) + timedelta(hours=daily_at.hour, minutes=daily_at.minute)
    return today if today <= now else today - timedelta(days=1)


def next_run_at(now: datetime, daily_at: time, last_started: datetime | None) -> datetime:
    """When the next run should start: `now` if a night is owed, else the next slot."""
    slot = latest_slot(now, daily_at)
    if last_started is None or last_started < slot:
        return now
    return slot + timedelta(days=1)


def night_health(
    now: datetime,
    daily_at: time,
    last: LastRun | None,
    running_since: datetime | None,
    missed_after_s: float = MISSED_AFTER_S,
) -> Health:
    """Unhealthy when the last night failed, or when the latest night has had no run."""
    if last is not None and last.exit_code != 0:
        return Health(
            False,
            f"the last run (started {_iso(last.started_at)}) ended with exit code {last.exit_code}",
        )
    slot = latest_slot(now, daily_at)
    started = running_since or (last.started_at if last is not None else None)
    if (started is None or started < slot) and (now - slot).total_seconds() > missed_after_s:
        return Health(False, f"the night of {_iso(slot)} was missed: no run started since")
    if running_since is not None:
        return Health(True, f"running since {_iso(running_since)}")
    if last is None:
        return Health(True, "no run yet")
    return Health(True, f"the last run (started {_iso(last.started_at)}) did all its work")


def read_last_run(path: Path) -> LastRun | None:
    """The record `serve` keeps beside the state store; None if there is none yet."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        return LastRun(
            datetime.fromisoformat(document["started_at"]),
            datetime.fromisoformat(document["ended_at"]),
            int(document["exit_code"]),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{path}: cannot read the last run: {exc}") from exc


def write_last_run(path: Path, last: LastRun) -> None:
    """Replace the record atomically (a temporary file, fsynced, renamed into place)."""
    document = {
        "started_at": last.started_at.isoformat(),
        "ended_at": last.ended_at.isoformat(),
        "exit_code": last.exit_code,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", encoding="utf-8") as file:
        file.write(json.dumps(document) + "\n")
        file.flush()
        os.fsync(file.fileno())
    temporary.replace(path)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
