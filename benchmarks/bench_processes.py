"""One harvester process against three on the same work: wall time, exports, busy answers.

The issue: "A benchmark prints how one process and three processes compare on the same
work. Three must not be slower than one." Each case harvests the same merchants and range
from the simulator on loopback (server limit 3, the harvester's max_concurrent_exports 3,
max_concurrent_downloads 4 per process), into a fresh state and output folder, with real
`harvester backfill` processes started together; the time is from the first start to the
last exit. The export slots are shared, so exports cannot go faster with more processes;
what three processes add is download capacity (and CPU), and what they cost is starting
three interpreters and handing slots across processes. "1st export s" shows the start-up,
"exports span s" the part the server's three slots bound. The state is SQLite, or
PostgreSQL with `--state-url` (an empty database for each case is made by appending the
case name to the database name; the role must be allowed to create databases).

    make bench-processes    # or, from the repository's root:
    .venv/bin/python -m benchmarks.bench_processes
        [--merchants 6] [--days 60] [--state-url U | --postgres] [--file-delay-s 0.3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from benchmarks.sim_config import token_environ, write_config
from harvester.clock import SystemClock
from harvester.simulator import Account, Faults, Simulator, SimulatorSettings
from tests.backfills import backfill_argv
from tests.pgserver import running_server

DATA_START = datetime(2025, 1, 1, tzinfo=UTC)
SERVER_LIMIT = 3


@dataclass(frozen=True, slots=True)
class Outcome:
    processes: int
    seconds: float
    exit_codes: tuple[int, ...]
    chunks_exports: int
    busy_503s: int
    max_running: int
    first_export_s: float  # from the start to the first export created
    exports_span_s: float  # from the first export created to the last one done


def settings(merchants: dict[str, str], days: int) -> SimulatorSettings:
    # Each chunk: ~6000 objects in 6 files, exported in ~2.8 s; the file host is remote
    # (FILE_SLOW below: each file takes ~0.9 s), as Clover's pre-signed URLs are.
    return SimulatorSettings(
        accounts={m: Account(token=t) for m, t in merchants.items()},
        data_start=DATA_START,
        data_end=DATA_START + timedelta(days=days),
        objects_per_day=200.0,
        objects_per_file=1000,
        max_concurrent_exports=SERVER_LIMIT,
        pending_s=0.2,
        export_base_s=2.0,
        export_per_object_s=0.0001,
    )


def fresh_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    database = f"{parts.path.strip('/')}_{name}"
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {database}".encode())
        connection.execute(f"CREATE DATABASE {database}".encode())
    return urlunsplit(parts._replace(path=f"/{database}"))


async def harvest(
    folder: Path,
    api_url: str,
    merchants: dict[str, str],
    days: int,
    processes: int,
    state_url: str | None,
) -> float:
    on_postgres: dict[str, Any] = {} if state_url is None else {"state_url": state_url}
    config = write_config(
        folder,
        api_url,
        merchants,
        SERVER_LIMIT,
        timing={
            "poll_min_s": 0.1,
            "poll_max_s": 0.5,
            "backoff_base_s": 0.1,
            "backoff_max_s": 2,
            "lease_s": 6,
        },
        max_concurrent_downloads=4,
        **on_postgres,
    )
    end = DATA_START + timedelta(days=days)
    environ = {**os.environ, **token_environ(merchants)}
    started = time.perf_counter()
    running = [
        await asyncio.create_subprocess_exec(
            *backfill_argv(
                config,
                DATA_START.date().isoformat(),
                end.date().isoformat(),
                "--log-level",
                "warning",
            ),
            env=environ,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for _ in range(processes)
    ]
    codes = [await process.wait() for process in running]
    if any(codes):
        raise SystemExit(f"a harvester exited with {codes}")
    return time.perf_counter() - started


async def case(
    processes: int, merchant_count: int, days: int, state_url: str | None, file_delay_s: float
) -> Outcome:
    merchants = {f"BENCH{n:03d}SHOP": f"bench-token-{n}" for n in range(merchant_count)}
    file_host = Faults(file_slow=1.0, slow_s=file_delay_s) if file_delay_s > 0 else Faults()
    async with Simulator(settings(merchants, days), SystemClock(), file_host) as sim:
        with tempfile.TemporaryDirectory(prefix="bench-processes-") as folder:
            url = None if state_url is None else fresh_database(state_url, f"p{processes}")
            started = datetime.now(UTC)
            seconds = await harvest(Path(folder), sim.api_url, merchants, days, processes, url)
        stats = sim.stats
        assert stats.first_create_at is not None
        assert stats.last_done_at is not None
        return Outcome(
            processes,
            seconds,
            (0,) * processes,
            stats.exports_created,
            stats.busy_503s,
            stats.max_running,
            (stats.first_create_at - started).total_seconds(),
            (stats.last_done_at - stats.first_create_at).total_seconds(),
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--merchants", type=int, default=6)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--state-url", help="postgresql://... (default: SQLite)")
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="on a throwaway PostgreSQL server (started as tests/pgserver.py does)",
    )
    parser.add_argument(
        "--file-delay-s",
        type=float,
        default=0.3,
        help="pause between the 4 pieces of each file (0: a file host as fast as loopback)",
    )
    args = parser.parse_args()
    if not args.postgres:
        await measure(args)
        return
    with running_server() as server:
        with psycopg.connect(server.url("postgres"), autocommit=True) as connection:
            connection.execute(b"CREATE DATABASE bench")
        args.state_url = server.url("bench")
        await measure(args)


async def measure(args: argparse.Namespace) -> None:
    chunks = args.merchants * 2 * -(-args.days // 30)
    print(
        f"{args.merchants} merchants x 2 types x {args.days} days = {chunks} chunks, "
        f"server limit {SERVER_LIMIT}, state: {'PostgreSQL' if args.state_url else 'SQLite'}, "
        f"file host: {args.file_delay_s * 3:g} s per file"
    )
    print(
        f"{'processes':>9}  {'seconds':>8}  {'1st export s':>12}  {'exports span s':>14}  "
        f"{'exports':>7}  {'busy 503s':>9}  {'max running':>11}"
    )
    results = []
    for processes in (1, 3):
        outcome = await case(
            processes, args.merchants, args.days, args.state_url, args.file_delay_s
        )
        results.append(outcome)
        print(
            f"{outcome.processes:>9}  {outcome.seconds:>8.1f}  {outcome.first_export_s:>12.1f}  "
            f"{outcome.exports_span_s:>14.1f}  {outcome.chunks_exports:>7}  "
            f"{outcome.busy_503s:>9}  {outcome.max_running:>11}"
        )
    one, three = results
    print(f"three processes take {three.seconds / one.seconds:.2f}x the time of one")


if __name__ == "__main__":
    asyncio.run(main())
