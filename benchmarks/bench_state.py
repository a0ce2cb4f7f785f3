"""The state's hot operations, the shipped stores against these, on SQLite and PostgreSQL.

Issue 17: the statements are written once for both backends, and "a store operation must
not get slower". Each round opens a fresh store of each side on each backend and times,
call by call: adding chunks (a merchant's two years, 24 ranges a call), claiming them,
recording a chunk's events (export created, two polls, DONE, two parts, complete) and
reading (a merchant's chunks, what is covered, the status snapshot). Both sides run side by
side, call for call, each first every other call, so a machine that gets busier slows both
alike. Figures: the median and the fastest microseconds of a call, and new/old.

The baseline is the flat store of a git revision (default: the last one before the
subpackages), extracted to a temporary folder as the package `baseline_harvester`; it
never enters the repository. PostgreSQL is a throwaway server (tests/pgserver.py), one
fresh database per side and round.

    .venv/bin/python -m benchmarks.bench_state [--baseline REV] [--merchants 20] [--rounds 4]
        [--folder /dev/shm]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import itertools
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg

from harvester.clock import SystemClock
from harvester.clover import chunks
from harvester.state import records
from harvester.state.postgres import PgStore
from harvester.state.sqlite import Store
from tests.pgserver import PgServer, running_server, unavailable_reason

BASELINE = "5828628"  # the last commit with the flat harvester/store.py and pgstore.py
BASELINE_MODULES = ("store", "pgstore", "state", "chunks", "clock", "errors", "logs", "scrub")
START = datetime(2023, 1, 1, tzinfo=UTC)
MONTHS = 24
Opener = Callable[[str], Awaitable[Any]]


@dataclass(frozen=True)
class Side:
    name: str
    chunks: ModuleType  # TimeRange, ExportType
    records: ModuleType  # PartRecord, ProcessRecord
    open_sqlite: Opener
    open_postgres: Opener


def baseline_side(revision: str, folder: Path) -> Side:
    """The shipped store of `revision`, imported from a copy in `folder`."""
    package = folder / "baseline_harvester"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in BASELINE_MODULES:
        source = subprocess.run(  # noqa: S603 -- our own git, a revision we were given
            ["git", "show", f"{revision}:harvester/{name}.py"],  # noqa: S607 -- git on PATH
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        (package / f"{name}.py").write_text(source.replace("harvester.", "baseline_harvester."))
    sys.path.insert(0, str(folder))
    old = {name: importlib.import_module(f"baseline_harvester.{name}") for name in BASELINE_MODULES}
    clock = SystemClock()
    return Side(
        "old",
        old["chunks"],
        old["state"],
        lambda where: old["store"].Store.open(Path(where), clock),
        lambda where: old["pgstore"].PgStore.open(where, clock),
    )


def current_side() -> Side:
    clock = SystemClock()
    return Side(
        "new",
        chunks,
        records,
        lambda where: Store.open(Path(where), clock),
        lambda where: PgStore.open(where, clock),
    )


Timings = dict[str, list[float]]
Steps = AsyncGenerator[tuple[str, Awaitable[Any]], Any]


async def workload(side: Side, store: Any, merchants: int) -> Steps:
    """The hot operations of a harvest on an empty store: yields each call, is sent its result."""
    ranges = [
        side.chunks.TimeRange(START + timedelta(days=30 * n), START + timedelta(days=30 * n + 30))
        for n in range(MONTHS)
    ]
    payments = side.chunks.ExportType.PAYMENTS
    now = datetime.now(UTC)
    owner = "bench-process"
    await store.register_process(
        side.records.ProcessRecord(
            owner, "bench", 1, "bench", "backfill", now, now + timedelta(hours=1)
        )
    )
    all_chunks = []
    for m in range(merchants):
        all_chunks.extend((yield "add_chunks", store.add_chunks(f"M{m:04d}", payments, ranges)))
    for chunk in all_chunks:
        yield "claim_chunk", store.claim_chunk(chunk.id, owner)
    for chunk in all_chunks[: merchants * 4]:
        export_id = f"E{chunk.id}"
        yield "record_export", store.record_export(chunk.id, export_id, "PENDING", 0)
        for percent in (40.0, 80.0):
            yield "update_export", store.update_export(export_id, "IN_PROGRESS", percent)
        urls = [f"https://files.example/{export_id}/{n}" for n in range(2)]
        yield "export_done", store.export_done(export_id, None, urls)
        for index in (1, 2):
            part = side.records.PartRecord(export_id, index, index - 1, 1000, "0" * 64, 100)
            yield "record_part", store.record_part(part)
        yield "complete_chunk", store.complete_chunk(chunk.id)
    for m in range(merchants):
        yield "chunks (one merchant)", store.chunks(f"M{m:04d}", payments)
        yield "covered", store.covered(f"M{m:04d}", payments)
    for _ in range(5):
        yield "snapshot", store.snapshot(now)


async def lockstep(workloads: list[Steps], timings: list[Timings]) -> None:
    """Run the sides' calls alternately, each side first every other call: a machine that
    gets busier slows both alike."""
    results: list[Any] = [None] * len(workloads)
    for turn in itertools.count():
        order = range(len(workloads)) if turn % 2 == 0 else reversed(range(len(workloads)))
        for index in order:
            try:
                operation, call = await workloads[index].asend(results[index])
            except StopAsyncIteration:
                return
            started = time.perf_counter()
            results[index] = await call
            timings[index][operation].append(time.perf_counter() - started)


def new_database(server: PgServer, name: str) -> str:
    with psycopg.connect(server.url("postgres"), autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}".encode())
    return server.url(name)


async def measure(
    sides: list[Side], server: PgServer | None, merchants: int, rounds: int, folder: Path
) -> dict[tuple[str, str], Timings]:
    results: dict[tuple[str, str], Timings] = defaultdict(lambda: defaultdict(list))
    for round_number in range(rounds):
        for backend in ("sqlite", "postgresql"):
            if backend == "postgresql" and server is None:
                continue
            async with contextlib.AsyncExitStack() as stack:
                stores = []
                for side in sides:
                    name = f"bench_{side.name}_{round_number}"
                    if backend == "sqlite":
                        opened = side.open_sqlite(str(folder / f"{name}.sqlite3"))
                    else:
                        assert server is not None
                        opened = side.open_postgres(new_database(server, name))
                    stores.append(await stack.enter_async_context(await opened))
                await lockstep(
                    [
                        workload(side, store, merchants)
                        for side, store in zip(sides, stores, strict=True)
                    ],
                    [results[backend, side.name] for side in sides],
                )
    return results


def report(results: dict[tuple[str, str], Timings]) -> None:
    print(
        f"{'backend':<11} {'operation':<22} {'calls':>6} {'old µs':>9} {'new µs':>9} new/old"
        f" {'old min':>9} {'new min':>9} new/old"
    )
    for backend in ("sqlite", "postgresql"):
        if (backend, "new") not in results:
            continue
        old, new = results[backend, "old"], results[backend, "new"]
        for operation, times in new.items():
            old_us = statistics.median(old[operation]) * 1e6
            new_us = statistics.median(times) * 1e6
            old_best, new_best = min(old[operation]) * 1e6, min(times) * 1e6
            print(
                f"{backend:<11} {operation:<22} {len(times):>6} {old_us:>9.0f} {new_us:>9.0f}"
                f" {new_us / old_us:>7.2f} {old_best:>9.0f} {new_best:>9.0f}"
                f" {new_best / old_best:>7.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=BASELINE, help="git revision of the old store")
    parser.add_argument("--merchants", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4, help="even: each side goes first as often")
    parser.add_argument("--folder", help="where the SQLite files go (e.g. /dev/shm: no disk)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-state-", dir=args.folder) as temporary:
        folder = Path(temporary)
        sides = [baseline_side(args.baseline, folder), current_side()]
        reason = unavailable_reason()
        if reason is not None:
            print(f"PostgreSQL left out: {reason}")
            results = asyncio.run(measure(sides, None, args.merchants, args.rounds, folder))
        else:
            with running_server() as server:
                results = asyncio.run(measure(sides, server, args.merchants, args.rounds, folder))
    print(f"{args.merchants} merchants x {MONTHS} chunks, {args.rounds} rounds")
    report(results)


if __name__ == "__main__":
    main()
