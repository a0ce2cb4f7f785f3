"""Many merchants against Clover's app limit: start-up, exports per second, CPU, memory, stop.

Issue 18's figures. A simulator on loopback with `--merchants` merchants x 2 types, one
30-day chunk each, exports of ~0.1 s and a server limit of 10, enforcing Clover's documented
app limit (50 requests in any sliding second and 10 in flight, over all tokens, answered 429
with `X-RateLimit-crossToken*`). One `harvester backfill` process runs against it on SQLite
for `--seconds` after its first export, then gets SIGTERM.

Printed per case:
- start s: from the process's start to the first export the server saw created;
- exports/s: exports created per second between the first export and SIGTERM (or the end);
- share: that rate over what the app limit allows, 50 / (API requests per export, as the
  server counted them);
- CPU ms/export: the process's user + system CPU over every export it created;
- peak RSS MB: the process's own. Linux carries a peak RSS over `exec`, and a child started
  from this process (the simulator of 10,000 merchants holds some 200 MB) would report this
  process's as its own: the harvester is started by a small launcher, a fresh interpreter
  that forks it, passes SIGTERM on, and reports its rusage (tests/measured.py);
- app 429s and the most API requests the server saw in any sliding second;
- stop s: from SIGTERM to exit, and the exit code (143: stopped by SIGTERM, 0: done first).

    make bench-scale     # or: .venv/bin/python -m benchmarks.bench_scale [--merchants 1000 10000]
        [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from harvester.clock import SystemClock
from harvester.simulator import Account, Faults, Simulator, SimulatorSettings
from harvester.simulator.app import APP_CONCURRENT_HEADER, APP_RATE_HEADER
from tests.backfills import backfill_argv
from tests.measured import Usage, launched, read_usage

DATA_START = datetime(2025, 1, 1, tzinfo=UTC)
DAYS = 30
SERVER_LIMIT = 10
APP_REQUESTS_PER_S = 50


@dataclass(frozen=True, slots=True)
class Outcome:
    merchants: int
    start_s: float
    exports_per_s: float
    share: float
    cpu_ms_per_export: float
    peak_rss_mb: float
    app_429s: int
    most_in_a_second: int
    stop_s: float
    exit_code: int
    exports: int


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


def write_config(folder: Path, api_url: str, merchants: dict[str, str]) -> Path:
    document = {
        "output_dir": "data",
        "state_path": "state.sqlite3",
        "timing": {"poll_min_s": 0.1, "poll_max_s": 1, "backoff_base_s": 0.1},
        "regions": {
            "local": {
                "base_url": api_url,
                "windows": "always",
                "max_concurrent_exports": SERVER_LIMIT,
            }
        },
        "merchants": [{"id": m, "region": "local", "token": t} for m, t in merchants.items()],
    }
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump(document))
    return config


async def reap(pid: int, report: Path) -> Usage:
    """Wait for the launcher `pid` without blocking the loop (the simulator runs on it);
    what it reports of the harvester."""
    while True:
        # WNOHANG: never blocks.
        done, _, _ = os.wait4(pid, os.WNOHANG)  # noqa: ASYNC222
        if done:
            # A few bytes, once, after the harvester has exited.
            return read_usage(report)
        await asyncio.sleep(0.05)


async def case(merchant_count: int, seconds: float) -> Outcome:
    merchants = {f"SCALE{n:05d}SHOP": f"scale-token-{n:05d}-abcdef" for n in range(merchant_count)}
    async with Simulator(settings(merchants), SystemClock(), Faults()) as sim:
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as folder:
            config = write_config(Path(folder), sim.api_url, merchants)
            end = DATA_START + timedelta(days=DAYS)
            started_at = datetime.now(UTC)
            started = time.perf_counter()
            report = Path(folder) / "usage.json"
            # The harvester's own CLI, through the launcher; Popen (not asyncio's): reap()
            # waits for it without a child watcher.
            process = subprocess.Popen(  # noqa: S603, ASYNC220
                launched(
                    backfill_argv(
                        config,
                        DATA_START.date().isoformat(),
                        end.date().isoformat(),
                        "--log-level",
                        "warning",
                        "--no-live",
                    ),
                    report,
                ),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            reaper = asyncio.create_task(reap(process.pid, report))
            # The simulator's counters have no event to wait on: look every 10 ms.
            while sim.stats.first_create_at is None and not reaper.done():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            first = sim.stats.first_create_at
            if first is None:
                raise SystemExit(f"the harvester exited before any export: {await reaper}")
            first_at = started + (first - started_at).total_seconds()
            try:
                await asyncio.wait_for(
                    asyncio.shield(reaper), first_at + seconds - time.perf_counter()
                )
                stopped_at = time.perf_counter()
            except TimeoutError:
                stopped_at = time.perf_counter()
                process.send_signal(signal.SIGTERM)
            exports_in_span = sim.stats.exports_created
            span = stopped_at - first_at
            usage = await reaper
            stop_s = time.perf_counter() - stopped_at
        stats = sim.stats
        requests = sum(stats.requests[kind] for kind in ("create", "poll"))
        per_export = requests / max(1, stats.exports_created)
        allowed = APP_REQUESTS_PER_S / per_export
        rate = exports_in_span / span
        app_429s = stats.rate_limited[APP_RATE_HEADER] + stats.rate_limited[APP_CONCURRENT_HEADER]
        return Outcome(
            merchants=merchant_count,
            start_s=first_at - started,
            exports_per_s=rate,
            share=rate / allowed,
            cpu_ms_per_export=1000 * usage.cpu_s / max(1, stats.exports_created),
            peak_rss_mb=usage.peak_rss_mb,
            app_429s=app_429s,
            most_in_a_second=stats.max_requests_in_a_second,
            stop_s=stop_s,
            exit_code=usage.code,
            exports=stats.exports_created,
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--merchants", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    print(
        f"merchants x 2 types, one {DAYS}-day chunk each; server limit {SERVER_LIMIT}, "
        f"~0.1 s exports, app limit {APP_REQUESTS_PER_S}/s and 10 in flight; SQLite; "
        f"SIGTERM {args.seconds:g} s after the first export"
    )
    print(
        f"{'merchants':>9} {'start s':>7} {'exports/s':>9} {'share':>5} {'CPU ms/export':>13} "
        f"{'peak RSS MB':>11} {'app 429s':>8} {'most in 1 s':>11} {'stop s':>6} {'exit':>4} "
        f"{'exports':>7}"
    )
    for count in args.merchants:
        o = await case(count, args.seconds)
        print(
            f"{o.merchants:>9} {o.start_s:>7.1f} {o.exports_per_s:>9.1f} {o.share:>5.2f} "
            f"{o.cpu_ms_per_export:>13.1f} {o.peak_rss_mb:>11.0f} {o.app_429s:>8} "
            f"{o.most_in_a_second:>11} {o.stop_s:>6.1f} {o.exit_code:>4} {o.exports:>7}",
            flush=True,
        )


if __name__ == "__main__":
    asyncio.run(main())
