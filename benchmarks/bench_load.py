"""`harvester load` into DuckDB against DuckDB's own `read_json`, on the same files.

The `bulk` data: one merchant's payments and orders over 30 days at 2800 objects a day
(realistic objects, no padding, 1000 per file): about 160 000 objects, about 75 MB of
export files, harvested here from the simulator on loopback into a scratch folder. Then,
each in a fresh subprocess whose peak RSS is read with wait4 (ru_maxrss, interpreter and
imports included in both):

- `harvester load --config F --no-live`: manifests read, every part checked (size, sha256,
  count), dlt's extract, normalise (child tables for line items) and load into a DuckDB file,
  merged on id;
- the baseline, a plain DuckDB `CREATE TABLE ... AS SELECT unnest(elements, recursive := true)
  FROM read_json('<type>/[!.]*/part-*.json', ...)` per type into another DuckDB file: one row
  per object, no checks, no child tables, no merge.

Rows per second are objects over each subprocess's wall time.

    .venv/bin/python -m benchmarks.bench_load      # from the repository's root (make bench)
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import tempfile
import time
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
DATA_END = DATA_START + timedelta(days=30)
OBJECTS_PER_DAY = 2800.0
MB = 1_000_000
REPOSITORY = Path(__file__).resolve().parent.parent

BASELINE = """
import sys, duckdb
data, database = sys.argv[1], sys.argv[2]
with duckdb.connect(database) as db:
    for kind in ("payments", "orders"):
        db.execute(
            f"CREATE TABLE {kind} AS SELECT unnest(elements, recursive := true) FROM read_json("
            f"'{data}/*/{kind}/[!.]*/part-*.json', maximum_object_size = 268435456)"
        )
    counts = [db.execute(f"SELECT count(*) FROM {k}").fetchall() for k in ("payments", "orders")]
    print(sum(found[0][0] for found in counts))
"""


@dataclass(frozen=True, slots=True)
class Measure:
    rows: int
    seconds: float
    peak_rss: int  # bytes


def _measured(command: list[str], env: dict[str, str]) -> tuple[str, float, int]:
    """(stdout, wall seconds, peak RSS in bytes) of one subprocess, read with wait4."""
    started = time.perf_counter()
    process = subprocess.Popen(  # noqa: S603 -- our own commands
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPOSITORY
    )
    assert process.stdout is not None
    out = process.stdout.read().decode()
    # ru_maxrss of a child starts from this process's RSS at the fork: keep this one small.
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{command[:4]}: exit code {process.returncode}\n{out}")
    return out, seconds, usage.ru_maxrss * 1024


async def _harvest(folder: Path) -> tuple[Path, int, int]:
    """The bulk data harvested into `folder`/data: (config, objects, bytes)."""
    document: dict[str, Any] = {
        "output_dir": "data",
        "state_path": "state/harvester.sqlite3",
        "timing": {"poll_min_s": 0.1, "poll_max_s": 0.5},
        "regions": {"local": {"base_url": "http://127.0.0.1:1", "windows": "always"}},
        "merchants": [{"id": MERCHANT, "region": "local", "token": "${BENCH_TOKEN}"}],
    }
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
    )
    configure_logging("json", "warning", stream=io.StringIO())
    async with Simulator(settings, SystemClock(), Faults()) as sim:
        document["regions"]["local"]["base_url"] = sim.api_url
        path = folder / "config.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        config = load_config(path, {"BENCH_TOKEN": TOKEN})
        summary = await commands.backfill(
            config,
            select(config, [], []),
            TimeRange(DATA_START, DATA_END),
            SystemClock(),
            asyncio.Event(),
        )
    if summary.exit_code != 0:
        raise SystemExit(f"the harvest failed:\n{summary.render()}")
    tallies = summary.tallies.values()
    return path, sum(t.objects for t in tallies), sum(t.bytes for t in tallies)


def main() -> None:
    if sys.argv[1:2] == ["--harvest"]:
        # In a child of its own: the simulator's memory stays out of the measuring process,
        # whose peak RSS its children would start from.
        config, objects, size = asyncio.run(_harvest(Path(sys.argv[2])))
        print(objects, size)
        return
    with tempfile.TemporaryDirectory(prefix="bench-load-") as scratch:
        folder = Path(scratch)
        env = {**os.environ, "BENCH_TOKEN": TOKEN}
        out, _, _ = _measured(
            [sys.executable, "-m", "benchmarks.bench_load", "--harvest", str(folder)], env
        )
        objects, size = (int(n) for n in out.split())
        config = folder / "config.yaml"
        print(f"bulk data: {objects} objects, {size / MB:.1f} MB of export files", flush=True)
        out, seconds, rss = _measured(
            [sys.executable, "-m", "harvester", "load", "--config", str(config), "--no-live"],
            env,
        )
        loaded = Measure(_rows_from_summary(out), seconds, rss)
        out, seconds, rss = _measured(
            [sys.executable, "-c", BASELINE, str(folder / "data"), str(folder / "plain.duckdb")],
            env,
        )
        baseline = Measure(int(out.strip().splitlines()[-1]), seconds, rss)
    for measure in (loaded, baseline):
        if measure.rows != objects:
            raise SystemExit(f"expected {objects} rows, got {measure.rows}")
    _print_table(loaded, baseline)


def _rows_from_summary(out: str) -> int:
    """The row count on the summary's last line: "N rows from M chunks into ..."."""
    return int(out.strip().splitlines()[-1].split()[0])


def _print_table(loaded: Measure, baseline: Measure) -> None:
    rows = [("into DuckDB", "rows", "seconds", "rows/s", "peak RSS")]
    for name, measure in (("harvester load (dlt)", loaded), ("read_json CTAS", baseline)):
        rows.append(
            (
                name,
                str(measure.rows),
                f"{measure.seconds:.1f}",
                f"{measure.rows / measure.seconds:,.0f}",
                f"{measure.peak_rss / MB:.0f} MB",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    speed = (loaded.rows / loaded.seconds) / (baseline.rows / baseline.seconds)
    print(
        f"harvester load: {speed:.2f}x the rows/s of read_json "
        f"({1 / speed:.1f}x slower), {loaded.peak_rss / baseline.peak_rss:.2f}x its peak RSS"
    )


if __name__ == "__main__":
    main()
