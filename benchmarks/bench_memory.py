"""Memory of the download path: export files of ~1 MB against files of ~20 MB, in one run.

The issue: "Files of a finished export download in parallel ... streamed to disk with
aiofiles. Memory must not grow with file size." Each case harvests one export of the same
objects (same seed, 1000 objects per file, so the same number of files) from the simulator
on loopback; only the padding the simulator adds to each object differs, so only the file
size changes. Every case runs in a fresh subprocess, twice: once under tracemalloc (the
peak of Python allocations during the harvest, all threads included) and once without it
(the peak RSS, ru_maxrss, less the RSS before the harvest). The simulator serves from this
process, so its copies of the files count in neither figure.

The check of each part (harvester/clover/export_file.py: valid JSON, an "elements" list of at
most 1000 objects) is part of the path measured: it reads the file as a stream, one
element at a time, so it must stay flat too.

    make bench          # or: .venv/bin/python benchmarks/bench_memory.py
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from harvester import commands
from harvester.clock import SystemClock
from harvester.clover.chunks import TimeRange
from harvester.config import load_config
from harvester.harvest.planning import select
from harvester.logs import configure_logging
from harvester.simulator import Account, Faults, Simulator, SimulatorSettings

MERCHANT = "BENCHMERCHANT1"
TOKEN = "bench-token-not-secret"  # noqa: S105 -- a loopback simulator's made-up token
DATA_START = datetime(2025, 1, 1, tzinfo=UTC)
DATA_END = DATA_START + timedelta(days=10)
OBJECTS_PER_DAY = 1600.0  # ~16 000 objects: 16 files of 1000, two rounds of 8 downloads
MAX_CONCURRENT_DOWNLOADS = 8
MB = 1_000_000


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    padding_bytes: int  # added to each object by the simulator


SMALL_PADDING = 550  # ~1 MB files
LARGE_PADDING = 19_550  # ~20 MB files
CASES = (
    Case("small (baseline)", SMALL_PADDING),
    Case("large", LARGE_PADDING),
)


@dataclass(frozen=True, slots=True)
class Measure:
    files: int
    bytes: int
    seconds: float
    peak_bytes: int  # tracemalloc peak, or RSS growth


# -- the measured subprocess ----------------------------------------------------------------


def _max_rss_bytes() -> int:
    """The peak RSS of this process image so far.

    Linux's VmHWM, which starts afresh at exec; ru_maxrss would carry over the peak of the
    parent at fork, and the parent holds the simulator's files.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


async def _harvest(config_path: Path, trace: bool) -> dict[str, Any]:
    configure_logging("json", "warning", stream=io.StringIO())
    config = load_config(config_path)
    requested = TimeRange(DATA_START, DATA_END)
    # Imported before the measure (the CLI imports them when a harvest starts): loading code
    # is not the harvest's memory.
    import harvester.harvest.scheduler
    import harvester.output.target  # noqa: F401

    rss_before = _max_rss_bytes()
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    summary = await commands.backfill(
        config, select(config, [], []), requested, SystemClock(), asyncio.Event()
    )
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] if trace else _max_rss_bytes() - rss_before
    if summary.exit_code != 0:
        raise SystemExit(f"the harvest failed:\n{summary.render()}")
    tallies = list(summary.tallies.values())
    return {
        "files": sum(t.parts for t in tallies),
        "bytes": sum(t.bytes for t in tallies),
        "seconds": seconds,
        "peak_bytes": peak,
        "rss_before": rss_before,
    }


def child(args: argparse.Namespace) -> None:
    result = asyncio.run(_harvest(Path(args.config), args.trace))
    print(json.dumps(result))


# -- the driver -----------------------------------------------------------------------------


def _write_config(folder: Path, api_url: str) -> Path:
    document = {
        "output_dir": "data",
        "state_path": "state/harvester.sqlite3",
        "max_concurrent_downloads": MAX_CONCURRENT_DOWNLOADS,
        "timing": {"poll_min_s": 0.1, "poll_max_s": 0.5},
        "regions": {"local": {"base_url": api_url, "windows": "always"}},
        "merchants": [
            {"id": MERCHANT, "region": "local", "token": "${BENCH_TOKEN}", "types": ["PAYMENTS"]}
        ],
    }
    folder.mkdir(parents=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


async def _run_child(config_path: Path, case: Case, trace: bool) -> tuple[Measure, int]:
    command = [sys.executable, __file__, "--child", "--config", str(config_path)]
    if trace:
        command.append("--trace")
    process = await asyncio.create_subprocess_exec(
        *command,
        env={**os.environ, "BENCH_TOKEN": TOKEN},
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"{case.name}: the measured process failed ({process.returncode})")
    found = json.loads(stdout.decode().strip().splitlines()[-1])
    measure = Measure(found["files"], found["bytes"], found["seconds"], found["peak_bytes"])
    return measure, found["rss_before"]


async def drive() -> None:
    rows: list[tuple[Case, Measure, Measure]] = []
    rss_before = 0
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as scratch:
        for number, case in enumerate(CASES):
            settings = SimulatorSettings(
                accounts={MERCHANT: Account(token=TOKEN)},
                seed=7,
                data_start=DATA_START,
                data_end=DATA_END,
                objects_per_day=OBJECTS_PER_DAY,
                objects_per_file=1000,
                pending_s=0.0,
                export_base_s=0.2,
                export_per_object_s=0.0,
                object_padding_bytes=case.padding_bytes,
            )
            async with Simulator(settings, SystemClock(), Faults()) as sim:
                measured = []
                for trace in (True, False):
                    folder = Path(scratch) / f"case{number}-{'trace' if trace else 'rss'}"
                    config_path = _write_config(folder, sim.api_url)
                    measure, rss_before = await _run_child(config_path, case, trace)
                    measured.append(measure)
                    print(
                        f"  {case.name}: {'tracemalloc' if trace else 'rss'} done "
                        f"in {measure.seconds:.1f} s",
                        file=sys.stderr,
                    )
            rows.append((case, measured[0], measured[1]))
    _print_table(rows, rss_before)


def _print_table(rows: list[tuple[Case, Measure, Measure]], rss_before: int) -> None:
    base_traced, base_rss = rows[0][1].peak_bytes, rows[0][2].peak_bytes
    header = (
        "case",
        "file size",
        "files",
        "total",
        "traced peak",
        "ratio",
        "RSS growth",
        "ratio",
        "time",
    )
    table = [header]
    for case, traced, rss in rows:
        table.append(
            (
                case.name,
                f"{traced.bytes / traced.files / MB:.1f} MB",
                str(traced.files),
                f"{traced.bytes / MB:.0f} MB",
                f"{traced.peak_bytes / MB:.1f} MB",
                f"{traced.peak_bytes / base_traced:.1f}x",
                f"{rss.peak_bytes / MB:.1f} MB",
                f"{rss.peak_bytes / base_rss:.1f}x" if base_rss > 0 else "-",
                f"{rss.seconds:.1f} s",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    print()
    print(
        f"Download path memory, {MAX_CONCURRENT_DOWNLOADS} downloads at once "
        f"(RSS before the harvest: {rss_before / MB:.0f} MB; ratios against the first row)"
    )
    for row in table:
        print(
            "  ".join(
                cell.rjust(w) if i else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
    else:
        asyncio.run(drive())


if __name__ == "__main__":
    main()
