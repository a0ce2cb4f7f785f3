"""Status polls per export, and how busy the server's slots stay, for exports of ~5 s, ~60 s
and ~30 min (issue 20: "105 status polls for 16 exports: 6.6 each").

Four merchants, both types. A first backfill of four months starts from an empty state (cold:
nothing learned, 32 exports); a second one of the next four months (five chunks per merchant
and type, the last one 3 days long: 40 exports) runs on the state the first one left (warm:
each merchant and type's durations are known). A third backfill, of the first four months, is
of four newcomers, merchants not seen before, on the state the others left (32 exports). The
server takes 2 exports at once, as configured. Each is run with polls aimed by past durations
(`timing.poll_history` 20, the default) and without (`poll_history: 0`: by each export's own
progress alone), at the production polling bounds (poll_min_s 2, poll_max_s 60).

The busy share is the server's: the time-integral of its running exports over 2 x (the
backfill's start to its last export's end). A slot stays ours from the create until we see
DONE, so a late poll shows there.

It runs on a fake clock (hours in seconds); a metronome caps each leap of virtual time at a
thousandth of an export, so that real disk latency is not counted as idle virtual time.

    .venv/bin/python -m benchmarks.bench_polls [--seed 1]

(as a module from the repository's root: the fake clock lives with the tests)
"""

from __future__ import annotations

import argparse
import asyncio
import io
import tempfile
import time
from dataclasses import dataclass
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
MERCHANTS = [f"POLLBENCH{n:04d}" for n in range(4)]
NEWCOMERS = [f"POLLBENCH{n:04d}" for n in range(4, 8)]
NOW = datetime(2025, 12, 1, 12, 0, tzinfo=UTC)
COLD = TimeRange(datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 5, 1, tzinfo=UTC))
WARM = TimeRange(datetime(2025, 5, 1, tzinfo=UTC), datetime(2025, 9, 1, tzinfo=UTC))
OBJECTS_PER_DAY = 20.0  # about 600 a 30-day chunk


@dataclass(frozen=True, slots=True)
class Length:
    name: str
    typical_s: float
    pending_s: float
    base_s: float
    per_object_s: float


LENGTHS = (
    Length("~5 s", 5.0, 0.5, 3.5, 0.002),
    Length("~60 s", 60.0, 1.0, 45.0, 0.025),
    Length("~30 min", 1800.0, 1.0, 1200.0, 1.0),
)


@dataclass(frozen=True, slots=True)
class Phase:
    exports: int
    polls: int
    busy: float

    def __str__(self) -> str:
        return (
            f"{self.exports} exports, {self.polls / self.exports:.1f} polls each, "
            f"slots busy {self.busy:.1%}"
        )


async def backfill(
    sim: Simulator,
    clock: FakeClock,
    folder: Path,
    requested: TimeRange,
    history: int,
    merchants: list[str],
) -> Phase:
    tokens = {m: f"bench-token-{m}" for m in merchants}
    path = write_config(
        folder,
        sim.api_url,
        merchants,
        SERVER_EXPORTS,
        timing={"poll_min_s": 2, "poll_max_s": 60, "poll_history": history},
    )
    config = load_config(path, token_environ(tokens))
    before = sim.stats  # the live counters: read what they hold now
    exports, polls, running_s = (
        before.exports_created,
        before.requests["poll"],
        before.running_seconds,
    )
    started = clock.now()
    summary = await commands.backfill(
        config, select(config, [], []), requested, clock, asyncio.Event()
    )
    assert summary.exit_code == 0, summary.render()
    after = sim.stats
    assert after.last_done_at is not None
    span_s = (after.last_done_at - started).total_seconds()
    return Phase(
        exports=after.exports_created - exports,
        polls=after.requests["poll"] - polls,
        busy=(after.running_seconds - running_s) / (SERVER_EXPORTS * span_s),
    )


async def measure(length: Length, history: int, seed: int) -> tuple[Phase, Phase, Phase]:
    clock = FakeClock(NOW)
    settings = SimulatorSettings(
        accounts={m: Account(token=f"bench-token-{m}") for m in MERCHANTS + NEWCOMERS},
        seed=seed,
        data_start=COLD.start,
        data_end=WARM.end,
        objects_per_day=OBJECTS_PER_DAY,
        objects_per_file=200,
        max_concurrent_exports=SERVER_EXPORTS,
        pending_s=length.pending_s,
        export_base_s=length.base_s,
        export_per_object_s=length.per_object_s,
    )
    done = asyncio.Event()

    async def metronome() -> None:
        while not done.is_set():
            await clock.sleep(max(0.25, length.typical_s / 1000))

    with tempfile.TemporaryDirectory() as folder:
        async with Simulator(settings, clock, Faults()) as sim:
            beat = asyncio.create_task(metronome())
            try:
                cold = await backfill(sim, clock, Path(folder), COLD, history, MERCHANTS)
                warm = await backfill(sim, clock, Path(folder), WARM, history, MERCHANTS)
                new = await backfill(sim, clock, Path(folder), COLD, history, NEWCOMERS)
            finally:
                done.set()
                await beat
    return cold, warm, new


async def main(seed: int) -> None:
    configure_logging("json", "warning", stream=io.StringIO())
    print(
        f"{len(MERCHANTS)} merchants x 2 types, the server takes {SERVER_EXPORTS} exports; "
        "cold: an empty state, warm: the next months on what it learned, newcomers: "
        f"{len(NEWCOMERS)} merchants not seen before, on that state"
    )
    for length in LENGTHS:
        print(f"exports of {length.name}:")
        for label, history in (("history off", 0), ("aimed by history", 20)):
            started = time.perf_counter()
            cold, warm, new = await measure(length, history, seed)
            print(
                f"  {label:>16}: cold      {cold}\n  {'':>16}  warm      {warm}\n"
                f"  {'':>16}  newcomers {new} ({time.perf_counter() - started:.1f} s real)",
                flush=True,
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    asyncio.run(main(parser.parse_args().seed))
