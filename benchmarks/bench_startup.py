"""Start-up: how long `harvester --help`, `status` and `plan` take, in fresh processes.

Issue 20: "`--help` alone takes 0.53 s, of which 0.47 s is importing `harvester.cli`" (the
goal is at most 0.25 s). Each command runs the real CLI (`python -m harvester ...`) on a
config of 20 merchants and a SQLite state holding their chunks and exports; the figures are
the median and best wall time of N runs, and the median CPU time (less swayed by a
loaded machine). The baseline in the same run is a bare `python -c pass`
(the interpreter's own start-up), and `import harvester.cli` alone.

    .venv/bin/python benchmarks/bench_startup.py            # 15 runs of each
    .venv/bin/python benchmarks/bench_startup.py --runs 40
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from harvester.clock import SystemClock
from harvester.clover.chunks import ExportType, TimeRange
from harvester.state.sqlite import Store

MERCHANTS = 20


def write_config(folder: Path) -> Path:
    lines = [
        "state_path: state.sqlite3\n",
        "output_dir: out\n",
        "regions: {local: {base_url: 'http://127.0.0.1:9', windows: always}}\n",
        "merchants:\n",
    ]
    lines += [
        f"  - {{id: M{n:011d}, region: local, token: tok-{n:024d}}}\n" for n in range(MERCHANTS)
    ]
    path = folder / "config.yaml"
    path.write_text("".join(lines))
    return path


async def fill_state(path: Path) -> None:
    """A year of monthly chunks per merchant and type, each with one export that took 40 s."""
    months = [datetime(2025, m, 1, tzinfo=UTC) for m in range(1, 13)]
    ranges = [TimeRange(a, b) for a, b in itertools.pairwise(months)]
    async with await Store.open(path, SystemClock()) as store:
        for n in range(MERCHANTS):
            for export_type in ExportType:
                for chunk in await store.add_chunks(f"M{n:011d}", export_type, ranges):
                    export_id = f"E{chunk.id:012d}"
                    await store.record_export(chunk.id, export_id, "RUNNING", 0.0)
                    await store.export_done(export_id, None, [])
                    await store.complete_chunk(chunk.id)


def measure(argv: list[str], runs: int, folder: Path) -> tuple[float, float, float]:
    """Median wall, best wall and median CPU (user + system) of `runs` runs, in seconds."""
    walls, cpus = [], []
    for _ in range(runs):
        started = time.perf_counter()
        child = subprocess.Popen(  # noqa: S603 -- the harvester's own CLI, on files we wrote
            argv, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _, status, usage = os.wait4(child.pid, 0)
        walls.append(time.perf_counter() - started)
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            raise SystemExit(f"{argv}: exit {child.returncode}")
        cpus.append(usage.ru_utime + usage.ru_stime)
    return statistics.median(walls), min(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    python = sys.executable
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        config = str(write_config(folder))
        asyncio.run(fill_state(folder / "state.sqlite3"))
        cases = {
            "python -c pass (baseline)": [python, "-c", "pass"],
            "import harvester.cli": [python, "-c", "import harvester.cli"],
            "harvester --help": [python, "-m", "harvester", "--help"],
            "harvester status": [python, "-m", "harvester", "status", "--config", config],
            "harvester plan": [
                *(python, "-m", "harvester", "plan", "--config", config),
                *("--from", "2025-01-01", "--to", "2026-01-01"),
            ],
        }
        print(f"{args.runs} runs each, {MERCHANTS} merchants; cpu: median user + system")
        for label, argv in cases.items():
            median, best, cpu = measure(argv, args.runs, folder)
            print(f"{label:<28} wall median {median:6.3f} s  best {best:6.3f} s  cpu {cpu:6.3f} s")


if __name__ == "__main__":
    main()
