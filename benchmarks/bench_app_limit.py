"""Clover's app limit across processes: 1 and 3 harvesters on one state, SQLite and PostgreSQL.

Issue 18: "the app's rate and concurrency hold across every process that shares a state".
A simulator on loopback enforces Clover's documented app limit (50 requests in any sliding
second and 10 in flight over all tokens, 429 with `X-RateLimit-crossToken*`) and the token's
(16/s, 5 in flight), with exports of ~0.1 s and a server limit of 10, so that the rate limit,
not the export slots, is what binds. `--merchants` merchants x 2 types, one 30-day chunk
each, are harvested to the end by 1 or 3 real `harvester backfill` processes started
together on a fresh state: a SQLite file, or a database on a throwaway PostgreSQL server
(started as tests/pgserver.py does; skipped where there is none).

Printed per case: the wall time, exports per second, app-scope 429s (rate and in-flight
ones), token 429s, and the most API requests the server saw in any sliding second (the goal:
no app 429 and at most 50 in any second).

    make bench-app-limit    # or: .venv/bin/python -m benchmarks.bench_app_limit
        [--merchants 200] [--backends sqlite postgresql] [--processes 1 3]
        [--stop-one-after SECONDS]

`--stop-one-after`: one of several processes gets SIGTERM that long after the start, as an
operator stops a backfill next to the nightly run (its exit code then reads 143). The others
take its share; what it sent in its last second still counts at the server.

The harvesters are started in a folder of their own: with PYTHONPATH=DIR they run the
package found in DIR (another checkout, for figures before a change), the simulator this one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.sim_config import token_environ, write_config
from harvester.clock import SystemClock
from harvester.simulator import Account, Faults, Simulator, SimulatorSettings
from harvester.simulator.app import (
    APP_CONCURRENT_HEADER,
    APP_RATE_HEADER,
    CONCURRENT_HEADER,
    RATE_HEADER,
)
from tests.backfills import backfill_argv
from tests.pgserver import PgServer, running_server, unavailable_reason

DATA_START = datetime(2025, 1, 1, tzinfo=UTC)
DAYS = 30
SERVER_LIMIT = 10
APP_REQUESTS_PER_S = 50


@dataclass(frozen=True, slots=True)
class Outcome:
    backend: str
    processes: int
    seconds: float
    exports: int
    app_rate_429s: int
    app_concurrent_429s: int
    token_429s: int
    most_in_a_second: int
    exit_codes: tuple[int, ...]


def settings(merchants: dict[str, str]) -> SimulatorSettings:
    return SimulatorSettings(
        accounts={m: Account(token=t) for m, t in merchants.items()},
        data_start=DATA_START,
        data_end=DATA_START + timedelta(days=DAYS),
        objects_per_day=2.0,
        objects_per_file=1000,
        max_concurrent_exports=SERVER_LIMIT,
        pending_s=0.0,
        export_base_s=0.1,
        export_per_object_s=0.0,
        app_requests_per_s=APP_REQUESTS_PER_S,
        app_concurrent=10,
    )


@contextlib.contextmanager
def postgres() -> Iterator[PgServer | None]:
    """A throwaway server, or None (with the reason printed) where none can start."""
    reason = unavailable_reason()
    if reason is not None:
        print(f"PostgreSQL cases skipped: {reason}")
        yield None
        return
    with running_server() as server:
        yield server


def fresh_database(server: PgServer, name: str) -> str:
    with psycopg.connect(server.url("postgres"), autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {name}".encode())
        connection.execute(f"CREATE DATABASE {name}".encode())
    return server.url(name)


async def case(
    backend: str,
    processes: int,
    merchant_count: int,
    server: PgServer | None,
    keep_logs: Path | None,
    stop_one_s: float | None = None,
) -> Outcome:
    merchants = {f"LIMIT{n:04d}SHOP": f"limit-token-{n:04d}-abcdef" for n in range(merchant_count)}
    async with Simulator(settings(merchants), SystemClock(), Faults()) as sim:
        with tempfile.TemporaryDirectory(prefix="bench-app-limit-") as name:
            folder = Path(name)
            state: dict[str, Any] = {}
            if server is not None:
                state = {"state_url": fresh_database(server, f"app_limit_{processes}")}
            write_config(
                folder,
                sim.api_url,
                merchants,
                SERVER_LIMIT,
                timing={"poll_min_s": 0.1, "poll_max_s": 1, "backoff_base_s": 0.1},
                **state,
            )
            end = (DATA_START + timedelta(days=DAYS)).date().isoformat()
            config = folder / "config.yaml"
            argv = backfill_argv(config, DATA_START.date().isoformat(), end, "--no-live")
            started = time.perf_counter()
            with contextlib.ExitStack() as logs:
                running = [
                    await asyncio.create_subprocess_exec(
                        *argv,
                        "--log-level",
                        "warning" if keep_logs is None else "debug",
                        env={**os.environ, **token_environ(merchants)},
                        cwd=folder,  # PYTHONPATH, not this checkout, says which harvester runs
                        stdout=asyncio.subprocess.DEVNULL,
                        stderr=asyncio.subprocess.DEVNULL
                        if keep_logs is None
                        else logs.enter_context(
                            (keep_logs / f"{backend}-{processes}-{n}.log").open("wb")
                        ),
                    )
                    for n in range(processes)
                ]
                if stop_one_s is not None and processes > 1:
                    # One process stopped mid-run, as an operator stops a backfill: the others
                    # take its share, and its last second still counts at the server.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(running[-1].wait(), stop_one_s)
                    if running[-1].returncode is None:
                        running[-1].terminate()
                codes = tuple([await process.wait() for process in running])
            seconds = time.perf_counter() - started
        stats = sim.stats
        return Outcome(
            backend,
            processes,
            seconds,
            stats.exports_created,
            stats.rate_limited[APP_RATE_HEADER],
            stats.rate_limited[APP_CONCURRENT_HEADER],
            stats.rate_limited[RATE_HEADER] + stats.rate_limited[CONCURRENT_HEADER],
            stats.max_requests_in_a_second,
            codes,
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--merchants", type=int, default=200)
    parser.add_argument(
        "--backends", nargs="+", choices=("sqlite", "postgresql"), default=["sqlite", "postgresql"]
    )
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--logs", type=Path, help="keep each harvester's debug log in this folder")
    parser.add_argument(
        "--stop-one-after",
        type=float,
        metavar="SECONDS",
        help="SIGTERM one of several processes this long after the start (its exit code: 143)",
    )
    args = parser.parse_args()
    print(
        f"{args.merchants} merchants x 2 types, one {DAYS}-day chunk each; server limit "
        f"{SERVER_LIMIT}, ~0.1 s exports; app limit {APP_REQUESTS_PER_S}/s and 10 in flight, "
        "token 16/s and 5"
    )
    print(
        f"{'state':>10} {'processes':>9} {'seconds':>7} {'exports/s':>9} {'app 429s':>8} "
        f"{'(in flight)':>11} {'token 429s':>10} {'most in 1 s':>11} {'exits':>9}"
    )
    with postgres() as server:
        for backend in args.backends:
            if backend == "postgresql" and server is None:
                continue
            for processes in args.processes:
                o = await case(
                    backend,
                    processes,
                    args.merchants,
                    server if backend == "postgresql" else None,
                    args.logs,
                    args.stop_one_after,
                )
                exits = ",".join(str(code) for code in o.exit_codes)
                print(
                    f"{o.backend:>10} {o.processes:>9} {o.seconds:>7.1f} "
                    f"{o.exports / o.seconds:>9.1f} "
                    f"{o.app_rate_429s + o.app_concurrent_429s:>8} {o.app_concurrent_429s:>11} "
                    f"{o.token_429s:>10} {o.most_in_a_second:>11} {exits:>9}",
                    flush=True,
                )


if __name__ == "__main__":
    asyncio.run(main())
