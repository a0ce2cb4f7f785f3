"""How soon a slot given back in one process reaches a process waiting for it, SQLite and
PostgreSQL.

Two "processes" (each a store of its own on the same state, with its own lease, as two
harvesters have) share a host limited to one export slot. Again and again: A holds the
slot, B waits for it (`SharedSlots.hold`, as a lane does), A gives it back; the figure is
the time from A's release to B's grant. Its backstop nap is the harvester's default
(`timing.poll_min_s`, 2 s, taken as 1 s and jittered by half either way): before the
hand-offs were signalled, that nap was the whole wait. PostgreSQL is a throwaway server,
started as tests/pgserver.py does (skipped where there is none).

    make bench-handoff    # or: .venv/bin/python benchmarks/bench_handoff.py [--rounds 30]

Run as a script, it takes the harvester from PYTHONPATH when given one (another checkout,
for figures before a change).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the checkout's root for `tests`
    sys.path.append(str(Path(__file__).resolve().parent.parent))

import psycopg

from harvester.clock import SystemClock
from harvester.config import Timing
from harvester.logs import configure_logging
from harvester.pacing.slots import ExportSlots
from harvester.state.claims import Owner, ProcessLease
from harvester.state.postgres import PgStore
from harvester.state.records import StateStore
from harvester.state.shared import SharedSlots
from harvester.state.sqlite import Store
from tests.pgserver import running_server, unavailable_reason

HOST = "https://api.example"


@contextlib.asynccontextmanager
async def two_processes(backend: str, where: str) -> AsyncIterator[list[ProcessLease]]:
    clock = SystemClock()
    async with contextlib.AsyncExitStack() as stack:
        leases = []
        for _ in range(2):
            store: StateStore = (
                await PgStore.open(where, clock)
                if backend == "postgresql"
                else await Store.open(Path(where), clock)
            )
            stack.push_async_callback(store.close)
            lease = ProcessLease(store, Owner.this_process("backfill"), clock, 60.0)
            leases.append(await stack.enter_async_context(lease))
        yield leases


async def hand_offs(backend: str, where: str, rounds: int) -> list[float]:
    clock = SystemClock()
    poll_s = Timing().poll_min_s
    seconds = []
    async with two_processes(backend, where) as (holder, waiter):
        slots = SharedSlots(
            ExportSlots(1), waiter, HOST, clock, asyncio.Event(), poll_s, random.Random(1)
        )

        async def wait_for_it(
            merchant: str, granted: asyncio.Future[float], leave: asyncio.Event
        ) -> None:
            async with slots.hold(merchant):
                granted.set_result(time.monotonic())
                await leave.wait()

        for n in range(rounds):
            held = await holder.store.take_slot(HOST, holder.owner.id, f"A{n}", None, 1)
            assert held.slot_id is not None
            granted: asyncio.Future[float] = asyncio.get_running_loop().create_future()
            leave = asyncio.Event()
            task = asyncio.create_task(wait_for_it(f"B{n}", granted, leave))
            await asyncio.sleep(0.05 + random.uniform(0, 0.05))  # B is waiting by now
            released = time.monotonic()
            await holder.store.release_slot(held.slot_id)
            seconds.append(await granted - released)
            leave.set()
            await task
    return seconds


def show(backend: str, seconds: list[float]) -> None:
    ms = sorted(1000 * s for s in seconds)
    print(
        f"{backend:>10} {len(ms):>6} {statistics.median(ms):>9.1f} "
        f"{ms[int(0.9 * (len(ms) - 1))]:>7.1f} {ms[-1]:>7.1f}",
        flush=True,
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    configure_logging("json", "warning", stream=io.StringIO())
    print(f"{'state':>10} {'rounds':>6} {'median ms':>9} {'p90 ms':>7} {'max ms':>7}")
    with tempfile.TemporaryDirectory(prefix="bench-handoff-") as folder:
        show("sqlite", await hand_offs("sqlite", f"{folder}/state.sqlite3", args.rounds))
    reason = unavailable_reason()
    if reason is not None:
        print(f"PostgreSQL skipped: {reason}")
        return
    with running_server() as server:
        with psycopg.connect(server.url("postgres"), autocommit=True) as connection:
            connection.execute(b"CREATE DATABASE handoff")
        show("postgresql", await hand_offs("postgresql", server.url("handoff"), args.rounds))


if __name__ == "__main__":
    asyncio.run(main())
