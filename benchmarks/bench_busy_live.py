"""How busy the real CLI keeps a server that takes fewer exports than it was told, on real time.

Issue 20: an independent check measured the server's slots busy 86.5% and 86.9% of the run
(48 exports, 25 busy 503s), where `bench_busy.py` says 91-96%. This benchmark measures the
way that check does: the real `harvester backfill` in a subprocess, against the simulator
(in this process, on the real clock) that runs at most 2 exports at once and answers busy
503s past that; the config says 6. Four merchants, both types, six 30-day chunks each: 48
exports of 4-16 s (the data starts mid-February, so each merchant's first chunks hold
none or half the objects of the others).

The figure is the server's running exports over its limit, integrated over the whole span
of the run (the process's start to its exit), and over first create to last DONE alone (as
`bench_busy.py` counts, on real time). The idle slot-seconds are then split, exactly:

- head: each slot from the process's start to its first create (start-up, planning);
- gaps: an export's DONE to the next create into the slot it freed, split in turn into the
  time until the harvester saw the DONE (its poll) and the rest (after the poll: slot hand-over,
  the gate's busy backoff, the POST);
- tail: each slot from its last DONE to the process's exit (the last downloads, the end).

    .venv/bin/python -m benchmarks.bench_busy_live [--runs 2] [--first-seed 1]  # from the root
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from benchmarks.sim_config import token_environ, write_config
from harvester.clock import SystemClock
from harvester.simulator import Account, Faults, Simulator, SimulatorSettings

SERVER_EXPORTS = 2
CONFIGURED_EXPORTS = 6
MERCHANTS = [f"BUSYLIVE{n:04d}" for n in range(4)]
HARVEST_FROM, HARVEST_TO = "2025-01-01", "2025-06-30"  # six chunks of 30 days
# No objects before mid-February: the first chunk is empty (pending 1 s + 3 s), the second
# half full (~10 s), the others full (~1200 objects: ~16 s).
DATA_START = datetime(2025, 2, 15, tzinfo=UTC)
DATA_END = datetime(2025, 6, 30, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Run:
    """What one run left: the process's start and exit, the server's spans and refusals, and
    when the harvester logged each export DONE (epoch seconds)."""

    started_s: float
    exited_s: float
    spans: list[tuple[str, float, float]]  # (export id, created, ended) on the server
    busy_503s: list[float]
    seen_done: dict[str, float]  # export id -> when the harvester logged export.done


@dataclass(frozen=True, slots=True)
class Breakdown:
    span_s: float
    busy_whole: float  # running / (limit x (exit - start))
    busy_inner: float  # running / (limit x (last DONE - first create))
    running_s: float
    head_s: list[float]  # per slot: start -> its first create
    gaps_s: list[float]  # DONE -> next create into that slot
    gap_spans: list[tuple[float, float]]  # each gap's (DONE, create), from the first create
    unseen_s: list[float]  # per gap: DONE -> the harvester logged it
    tail_s: list[float]  # per slot: its last DONE -> exit
    tail_unseen_s: list[float]  # per slot: its last DONE -> the harvester logged it
    burst_503s: int  # before the first export ended
    later_503s: int
    busy_503s_at: list[float]  # from the first create


def breakdown(run: Run, slots: int) -> Breakdown:
    """Split the slots' idle time into head, gaps and tail, pairing each create with the slot
    freed longest ago (a slot no export has held yet: free since the process started)."""
    events = sorted(
        [(created, 1, export_id) for export_id, created, _ in run.spans]
        + [(ended, 0, export_id) for export_id, _, ended in run.spans]
    )  # at one instant an end comes before a create: the create may take its slot
    free: deque[tuple[float, str | None]] = deque((run.started_s, None) for _ in range(slots))
    head: list[float] = []
    gaps: list[float] = []
    gap_spans: list[tuple[float, float]] = []
    unseen: list[float] = []
    for at, is_create, export_id in events:
        if not is_create:
            free.append((at, export_id))
            continue
        since, freed_by = free.popleft()
        if freed_by is None:
            head.append(at - since)
        else:
            gaps.append(at - since)
            gap_spans.append((since, at))
            seen = run.seen_done.get(freed_by, since)
            unseen.append(min(max(0.0, seen - since), at - since))
    tail = [run.exited_s - since for since, _ in free]
    tail_unseen = [
        min(max(0.0, run.seen_done.get(freed_by, since) - since), run.exited_s - since)
        for since, freed_by in free
        if freed_by is not None
    ]
    running_s = sum(ended - created for _, created, ended in run.spans)
    first_create = min(created for _, created, _ in run.spans)
    last_done = max(ended for _, _, ended in run.spans)
    first_done = min(ended for _, _, ended in run.spans)
    span_s = run.exited_s - run.started_s
    return Breakdown(
        span_s=span_s,
        busy_whole=running_s / (slots * span_s),
        busy_inner=running_s / (slots * (last_done - first_create)),
        running_s=running_s,
        head_s=head,
        gaps_s=gaps,
        gap_spans=[(since - first_create, at - first_create) for since, at in gap_spans],
        unseen_s=unseen,
        tail_s=tail,
        tail_unseen_s=tail_unseen,
        burst_503s=sum(1 for at in run.busy_503s if at < first_done),
        later_503s=sum(1 for at in run.busy_503s if at >= first_done),
        busy_503s_at=[at - first_create for at in run.busy_503s],
    )


def _seen_done(log: Path) -> dict[str, float]:
    seen: dict[str, float] = {}
    for line in log.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "export.done":
            seen[event["export_id"]] = datetime.fromisoformat(event["timestamp"]).timestamp()
    return seen


def _start(
    words: list[str], env: dict[str, str], folder: Path, sink: BinaryIO
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # noqa: S603 -- the harvester's own CLI, on files we wrote
        [sys.executable, "-m", "harvester", *words],
        env=env,
        cwd=folder,
        stdout=sink,
        stderr=subprocess.STDOUT,
    )


async def run_once(folder: Path, seed: int) -> Run:
    tokens = {m: f"busy-live-token-{m}" for m in MERCHANTS}
    settings = SimulatorSettings(
        accounts={m: Account(token=t) for m, t in tokens.items()},
        seed=seed,
        data_start=DATA_START,
        data_end=DATA_END,
        objects_per_day=40.0,
        max_concurrent_exports=SERVER_EXPORTS,
        pending_s=1.0,
        export_base_s=3.0,
        export_per_object_s=0.01,
    )
    async with Simulator(settings, SystemClock(), Faults()) as sim:
        config = write_config(folder, sim.api_url, MERCHANTS, CONFIGURED_EXPORTS)
        log = folder / "harvester.log"
        words = ["backfill", "--config", str(config), "--from", HARVEST_FROM, "--to", HARVEST_TO]
        words += ["--no-live", "--log-format", "json", "--log-level", "info"]
        env = {**os.environ, **token_environ(tokens)}
        with log.open("wb") as sink:
            started_s = time.time()
            child = _start(words, env, folder, sink)
            # wait4 in a thread: the simulator in this loop must go on serving meanwhile.
            _, status, _ = await asyncio.to_thread(os.wait4, child.pid, 0)
            exited_s = time.time()
        stats = sim.stats
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"the harvest exited {code}; its log: {log.read_text()[-2000:]}")
    return Run(
        started_s, exited_s, list(stats.export_spans), list(stats.busy_503_times), _seen_done(log)
    )


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, -(-9 * len(ordered) // 10) - 1)] if ordered else 0.0


def report(found: Breakdown, slots: int) -> str:
    idle = slots * found.span_s - found.running_s

    def share(seconds: float) -> str:
        return f"{seconds:6.1f} slot-s = {seconds / (slots * found.span_s):5.1%} of the run"

    seen = sum(found.unseen_s)
    return "\n".join(
        [
            f"  span {found.span_s:.1f} s (process start to exit); slots busy "
            f"{found.busy_whole:.1%} over it, {found.busy_inner:.1%} over first create to "
            f"last DONE",
            f"  idle {share(idle)}:",
            f"    head {share(sum(found.head_s))}  (per slot: "
            + ", ".join(f"{s:.2f} s" for s in found.head_s)
            + ")",
            f"    gaps {share(sum(found.gaps_s))}  ({len(found.gaps_s)} DONE -> next create: "
            f"median {statistics.median(found.gaps_s):.2f} s, p90 {_p90(found.gaps_s):.2f} s, "
            f"max {max(found.gaps_s):.2f} s)",
            f"      until the DONE was seen {share(seen)}",
            f"      after it was seen       {share(sum(found.gaps_s) - seen)}",
            f"    tail {share(sum(found.tail_s))}  (per slot: "
            + ", ".join(f"{s:.2f} s" for s in found.tail_s)
            + ")",
            f"      until the DONE was seen {share(sum(found.tail_unseen_s))}",
            f"      after it was seen       {share(sum(found.tail_s) - sum(found.tail_unseen_s))}",
            f"    the longest gaps: {_longest(found)}",
            f"  busy 503s: {found.burst_503s + found.later_503s} ({found.burst_503s} before the "
            f"first export ended, {found.later_503s} after)",
        ]
    )


def _longest(found: Breakdown, count: int = 3) -> str:
    """The longest gaps, when they began (from the first create), and the busy 503s within."""
    described = []
    for done, created in sorted(found.gap_spans, key=lambda gap: gap[0] - gap[1])[:count]:
        refused = sum(1 for at in found.busy_503s_at if done <= at < created)
        described.append(f"{created - done:.2f} s at +{done:.1f} s ({refused} busy 503s in it)")
    return "; ".join(described)


async def main(runs: int, first_seed: int) -> None:
    print(
        f"harvester backfill told {CONFIGURED_EXPORTS} exports at once, the server takes "
        f"{SERVER_EXPORTS}; {len(MERCHANTS)} merchants x 2 types x 6 chunks"
    )
    for number in range(first_seed, first_seed + runs):
        load = os.getloadavg()
        with tempfile.TemporaryDirectory(prefix="bench-busy-live-") as folder:
            run = await run_once(Path(folder), seed=number)  # the run's number is its seed
        lengths = [ended - created for _, created, ended in run.spans]
        print(
            f"run {number}: load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
            f"{len(run.spans)} exports of {min(lengths):.1f}-{max(lengths):.1f} s",
            flush=True,
        )
        print(report(breakdown(run, SERVER_EXPORTS), SERVER_EXPORTS), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--first-seed", type=int, default=1, help="the simulator's, run by run")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.runs, arguments.first_seed))
