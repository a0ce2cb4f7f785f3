"""CPU per byte: the harvester's CPU time per 100 MB verified and published.

Issue 20: "The `bulk` run (77.6 MB verified and published): 2.78 s of CPU, which is 3.6 s
per 100 MB" (the goal is at most 1 s). The simulator serves one merchant's payments and
orders from this process; the harvester runs `harvester backfill` in a fresh subprocess,
into an output folder, and its CPU time (user + system, from wait4, start-up included) is
set against the bytes published. Two shapes of file: Clover-sized objects (about 450 bytes
each) and padded objects (about 20 kB each, files of ~20 MB); and a one-day run first, the
fixed cost of a run (start-up above all), which the "more than the fixed cost" figure leaves
out.

The machine is shared and noisy (other processes' load, and their file churn, which makes
creating a file dearer): `--runs N` runs every case N times, the cases taking turns, and
gives each figure's range and median.

    .venv/bin/python -m benchmarks.bench_cpu            # from the repository's root
    .venv/bin/python -m benchmarks.bench_cpu --runs 5   # ranges and medians of five rounds
    .venv/bin/python -m benchmarks.bench_cpu --profile DIR  # py-spy samples, every thread
                                                            # (pip install py-spy first)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from harvester.clock import SystemClock
from harvester.simulator import Account, Faults, Simulator, SimulatorSettings

MERCHANT = "BENCHMERCHANT1"
TOKEN = "bench-token-not-secret"  # noqa: S105 -- a loopback simulator's made-up token
DATA_START = datetime(2025, 1, 1, tzinfo=UTC)
MB = 1_000_000
PY_SPY = str(Path(sys.executable).with_name("py-spy"))


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    days: int
    objects_per_day: float
    padding_bytes: int


# The first case is the fixed cost (start-up, state, one small export of each type): the
# others' "more than that" figure is their CPU less it, per 100 MB more.
CASES = (
    Case("fixed cost (1 day)", 1, 100.0, 0),
    Case("Clover-sized objects", 30, 4000.0, 0),
    Case("~20 kB objects", 4, 1000.0, 19_550),
)


@dataclass(frozen=True, slots=True)
class Measure:
    bytes: int
    cpu_s: float
    system_s: float  # of cpu_s, in the kernel: file creation on a busy disk varies most
    wall_s: float


def _published_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in (folder / "data").rglob("part-*.json"))


def _start(case: Case, folder: Path, api_url: str, profile: Path | None) -> subprocess.Popen[bytes]:
    document = {
        "output_dir": "data",
        "state_path": "state/harvester.sqlite3",
        "chunk_days": 30,
        "timing": {"poll_min_s": 0.1, "poll_max_s": 0.5},
        "regions": {"local": {"base_url": api_url, "windows": "always"}},
        "merchants": [{"id": MERCHANT, "region": "local", "token": "${BENCH_TOKEN}"}],
    }
    folder.mkdir(parents=True)
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    end = (DATA_START + timedelta(days=case.days)).date().isoformat()
    words = ["backfill", "--config", str(config), "--from", "2025-01-01", "--to", end]
    # py-spy sees every thread (cProfile would see the event loop's only).
    spy = [PY_SPY, "record", "--threads", "-f", "raw", "-o", str(profile), "--"] if profile else []
    return subprocess.Popen(  # noqa: S603 -- the harvester's own CLI, on files we wrote
        [*spy, sys.executable, "-m", "harvester", *words, "--log-format", "json"],
        env={**os.environ, "BENCH_TOKEN": TOKEN},
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _run(case: Case, folder: Path, profile: Path | None) -> Measure:
    settings = SimulatorSettings(
        accounts={MERCHANT: Account(token=TOKEN)},
        seed=7,
        data_start=DATA_START,
        data_end=DATA_START + timedelta(days=case.days),
        objects_per_day=case.objects_per_day,
        objects_per_file=1000,
        pending_s=0.0,
        export_base_s=0.2,
        export_per_object_s=0.0,
        object_padding_bytes=case.padding_bytes,
    )
    async with Simulator(settings, SystemClock(), Faults()) as sim:
        child = _start(case, folder, sim.api_url, profile)
        started = time.perf_counter()
        # wait4 in a thread: the simulator in this loop must go on serving meanwhile.
        _, status, usage = await asyncio.to_thread(os.wait4, child.pid, 0)
        wall_s = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{case.name}: the harvest exited {code}")
    cpu_s = usage.ru_utime + usage.ru_stime
    return Measure(_published_bytes(folder), cpu_s, usage.ru_stime, wall_s)


async def drive(profile: str | None, runs: int = 1) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as scratch:
        print("harvester backfill, one merchant, output folder; cpu = user + system of the process")
        per_100s: list[list[float]] = [[] for _ in CASES]
        extras: list[list[float]] = [[] for _ in CASES]
        users: list[list[float]] = [[] for _ in CASES]  # per 100 MB, the system time left out
        for round_ in range(runs):
            if runs > 1:
                print(f"round {round_ + 1} of {runs}")
            fixed: Measure | None = None
            for number, case in enumerate(CASES):
                stats = Path(profile) / f"case{number}.txt" if profile and round_ == 0 else None
                found = await _run(case, Path(scratch) / f"round{round_}-case{number}", stats)
                per_100 = found.cpu_s / (found.bytes / (100 * MB))
                per_100s[number].append(per_100)
                users[number].append((found.cpu_s - found.system_s) / (found.bytes / (100 * MB)))
                more = ""
                if fixed is None:
                    fixed = found
                else:
                    extra = (found.cpu_s - fixed.cpu_s) / ((found.bytes - fixed.bytes) / (100 * MB))
                    extras[number].append(extra)
                    more = f"  more than the fixed cost {extra:5.2f} s"
                print(
                    f"{case.name:<22} {found.bytes / MB:7.1f} MB  cpu {found.cpu_s:6.2f} s  "
                    f"(system {found.system_s:4.2f} s)  "
                    f"wall {found.wall_s:6.2f} s  cpu per 100 MB {per_100:6.2f} s{more}"
                )
                if stats is not None:
                    print(f"{'':<22} py-spy samples (flamegraph.pl's raw format): {stats}")
        if runs > 1:
            print(f"cpu per 100 MB over {runs} rounds: lowest-highest (median)")
            for number, case in enumerate(CASES[1:], start=1):
                print(
                    f"{case.name:<22} {_spread(per_100s[number])}  "
                    f"more than the fixed cost {_spread(extras[number])}  "
                    f"user alone {_spread(users[number])}"
                )


def _spread(values: list[float]) -> str:
    return f"{min(values):4.2f}-{max(values):4.2f} s ({statistics.median(values):4.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--profile", metavar="DIR", help="py-spy samples of each case into DIR")
    parser.add_argument("--runs", type=int, default=1, help="rounds of every case (default 1)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    asyncio.run(drive(args.profile, args.runs))


if __name__ == "__main__":
    main()
