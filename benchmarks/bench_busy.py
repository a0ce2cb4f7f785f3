"""How busy the harvester keeps a server that takes fewer exports than it was told (issue 7).

"Told 6 while the server takes 2, slots busy at least 90% of the run." Four merchants, both
types, four months each (32 exports); the simulator runs at most 2 exports at once and
answers busy 503s past that; the config says 6. The figure is the server's busy share:
the time-integral of its running exports over 2 x (first create to last export's end).

It runs on a fake clock (hours in seconds). The fake clock leaps to the next timer whenever
every task waits on real I/O (a thread's fsync, say), which would count real disk latency
as idle virtual time; a metronome caps each leap at `--step-s` of virtual time, so that the
figure measures the scheduling, not this machine's disk.

    .venv/bin/python -m benchmarks.bench_busy [--seeds 3] [--step-s 0.25] [--latency-s S]
        [--poll-history N]

(as a module from the repository's root: the fake clock lives with the tests)
"""

from __future__ import annotations

import argparse
import asyncio
import io
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.sim_config import token_environ, write_config
from harvester import commands
from harvester.clover.chunks import TimeRange
from harvester.config import load_config
from harvester.harvest.planning import select
from harvester.logs import configure_logging
from harvester.simulator import Account, Faults, Simulator, SimulatorSettings
from tests.fakeclock import FakeClock

SERVER_EXPORTS = 2
CONFIGURED_EXPORTS = 6
MERCHANTS = [f"BUSYBENCH{n:04d}" for n in range(4)]
NOW = datetime(2025, 7, 1, 12, 0, tzinfo=UTC)
DATA = TimeRange(datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 5, 1, tzinfo=UTC))
TIMING = {
    "poll_min_s": 1,
    "poll_max_s": 20,
    "backoff_base_s": 1,
    "backoff_max_s": 30,
    "request_timeout_s": 10,
}


async def measure(
    seed: int, step_s: float, latency_s: float, folder: Path, poll_history: int
) -> str:
    clock = FakeClock(NOW)
    tokens = {m: f"bench-token-{m}" for m in MERCHANTS}
    settings = SimulatorSettings(
        accounts={m: Account(token=t) for m, t in tokens.items()},
        seed=seed,
        data_start=DATA.start,
        data_end=DATA.end,
        objects_per_day=20.0,
        objects_per_file=200,
        max_concurrent_exports=SERVER_EXPORTS,
        export_base_s=20.0,
        export_per_object_s=0.01,
        api_latency_s=latency_s,
    )
    started = time.perf_counter()
    async with Simulator(settings, clock, Faults()) as sim:
        path = write_config(
            folder,
            sim.api_url,
            MERCHANTS,
            CONFIGURED_EXPORTS,
            timing={**TIMING, "poll_history": poll_history},
        )
        config = load_config(path, token_environ(tokens))
        done = asyncio.Event()

        async def metronome() -> None:
            while not done.is_set():
                await clock.sleep(step_s)

        beat = asyncio.create_task(metronome())
        try:
            summary = await commands.backfill(
                config, select(config, [], []), DATA, clock, asyncio.Event()
            )
        finally:
            done.set()
            await beat
        stats = sim.stats
    assert summary.exit_code == 0, summary.render()
    assert stats.first_create_at is not None
    assert stats.last_done_at is not None
    span_s = (stats.last_done_at - stats.first_create_at).total_seconds()
    busy = stats.running_seconds / (SERVER_EXPORTS * span_s)
    return (
        f"seed {seed}: {stats.exports_created} exports, {stats.busy_503s} busy 503s, "
        f"peak {stats.max_running} running; span {span_s:.0f} s virtual, "
        f"server slots busy {busy:.1%}; {time.perf_counter() - started:.1f} s real"
    )


async def main(seeds: int, step_s: float, latencies_s: list[float], poll_history: int) -> None:
    configure_logging("json", "warning", stream=io.StringIO())
    print(f"told {CONFIGURED_EXPORTS} exports at once, the server takes {SERVER_EXPORTS}:")
    for latency_s in latencies_s:
        print(f"API answers after {latency_s:g} s:")
        for seed in range(1, seeds + 1):
            with tempfile.TemporaryDirectory() as folder:
                found = await measure(seed, step_s, latency_s, Path(folder), poll_history)
                print(found, flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--step-s", type=float, default=0.25)
    parser.add_argument(
        "--latency-s", type=float, action="append", help="API latency (repeat; default 0, 0.3)"
    )
    parser.add_argument(
        "--poll-history",
        type=int,
        default=20,
        help="timing.poll_history (0: polls by progress alone, as before it)",
    )
    arguments = parser.parse_args()
    asyncio.run(
        main(
            arguments.seeds,
            arguments.step_s,
            arguments.latency_s or [0.0, 0.3],
            arguments.poll_history,
        )
    )
