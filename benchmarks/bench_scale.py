"""Many merchants against Clover's app limit: start-up, exports per second, CPU, memory, stop.

Issue 18's figures. A simulator on loopback with `--merchants` merchants x 2 types, one
30-day chunk each, exports of ~0.1 s and a server limit of 10, enforcing Clover's documented
app limit (50 requests in any sliding second and 10 in flight, over all tokens, answered 429
with `X-RateLimit-crossToken*`). One `harvester backfill` process runs against it on SQLite
for `--seconds` after its first export, then gets SIGTERM.

Two nights per count of merchants. The first starts from an empty state. The second starts
from a state that already holds a first night (each merchant and type's 30-day chunk covered,
its export DONE: filled through the store's own operations, which takes a while at 10,000
merchants) and harvests the next day: one 1-day chunk per merchant and type, each export's
polls aimed by the history read from that state (`past_durations`, once per merchant for
both types). Before it runs, `history read` times that read for every merchant in turn, on
the filled state: what the whole second night spends on it.

Printed per case:
- start s: from the process's start to the first export the server saw created;
- exports/s: exports created per second between the first export and SIGTERM (or the end);
- share: that rate over what the app limit allows, 50 / (API requests per export, as the
  server counted them);
- CPU ms/export: the process's user + system CPU over every export it created; sys: the
  part of it spent in the kernel;
- disk ms/chunk: what this machine's disk charges any writer, in CPU, for one chunk's
  files as the folder output lays them down (a staging folder, a part and a manifest each
  written, synced and renamed, the folders synced), measured on the case's own temp folder
  before the harvester starts. Three new inodes per chunk are the layout's; on an ext4
  without a journal whose block groups hold inodes deleted in the last minute or more (a
  test suite's, another run's), each costs a scan: this figure tells such a disk from the
  harvester. The cases' own folders are deleted only after the last case, and the first
  line names the folder's file system;
- peak RSS MB: the process's own. Linux carries a peak RSS over `exec`, and a child started
  from this process (the simulator of 10,000 merchants holds some 200 MB) would report this
  process's as its own: the harvester is started by a small launcher, a fresh interpreter
  that forks it, passes SIGTERM on, and reports its rusage (tests/measured.py);
- app 429s and the most API requests the server saw in any sliding second;
- stop s: from SIGTERM to exit, and the exit code (143: stopped by SIGTERM, 0: done first).

A single run's CPU per export varies by a fifth or more on a busy machine. `--runs N` runs
every case N times, the cases in turn each round, and ends with each case's median and range
of CPU per export.

    make bench-scale     # or: .venv/bin/python -m benchmarks.bench_scale [--merchants 1000 10000]
        [--seconds 60] [--nights first second] [--runs 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from benchmarks.bench_folder import sync_folder, write_synced
from harvester.clock import SystemClock
from harvester.clover.chunks import ExportType, TimeRange
from harvester.simulator import Account, Faults, Simulator, SimulatorSettings
from harvester.simulator.app import APP_CONCURRENT_HEADER, APP_RATE_HEADER
from harvester.state.sqlite import Store
from tests.backfills import backfill_argv
from tests.fakeclock import FakeClock
from tests.measured import Usage, launched, read_usage

DATA_START = datetime(2025, 1, 1, tzinfo=UTC)
DAYS = 30
SERVER_LIMIT = 10
APP_REQUESTS_PER_S = 50
FIRST_NIGHT = TimeRange(DATA_START, DATA_START + timedelta(days=DAYS))
SECOND_NIGHT = TimeRange(FIRST_NIGHT.end, FIRST_NIGHT.end + timedelta(days=1))
FILL_BATCH = 500  # merchants per step of the first night's filling
FIRST_NIGHT_EXPORT_S = 0.2  # how long each of the first night's exports took


@dataclass(frozen=True, slots=True)
class Outcome:
    merchants: int
    night: str
    start_s: float
    exports_per_s: float
    share: float
    cpu_ms_per_export: float
    sys_ms_per_export: float
    disk_ms_per_chunk: float
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
        data_end=SECOND_NIGHT.end,
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


async def fill_first_night(path: Path, merchants: Sequence[str]) -> float:
    """The state at `path` as a first night leaves it: each merchant and type's 30-day chunk
    covered by a DONE export, recorded through the store's operations (concurrent ones go as
    one SQLite group commit). Returns the seconds it took."""
    started = time.perf_counter()
    clock = FakeClock(datetime.now(UTC) - timedelta(days=1))
    async with await Store.open(path, clock) as store:
        for at in range(0, len(merchants), FILL_BATCH):
            batch = merchants[at : at + FILL_BATCH]
            added = await store.add_chunks_of(
                [(m, t, [FIRST_NIGHT]) for m in batch for t in ExportType]
            )
            chunks = [chunk for rows in added for chunk in rows]
            await asyncio.gather(
                *(store.record_export(c.id, f"NIGHT1E{c.id:09d}", "PENDING", 0.0) for c in chunks)
            )
            clock.advance(FIRST_NIGHT_EXPORT_S)
            await asyncio.gather(
                *(store.export_done(f"NIGHT1E{c.id:09d}", None, ["https://f/1"]) for c in chunks)
            )
            await asyncio.gather(*(store.complete_chunk(c.id) for c in chunks))
    return time.perf_counter() - started


def disk_ms_per_chunk(folder: Path, chunks: int = 100) -> float:
    """CPU ms this thread spends laying down `chunks` chunk folders in `folder` the way the
    folder output does (output/folder.py), each with a part of a bench-sized export file."""
    base = folder / "disk-floor"
    base.mkdir()
    part, manifest = b"x" * 8192, b"{}" * 256
    started = time.thread_time()
    for n in range(chunks):
        staging = base / f".staging-{n}"
        staging.mkdir()
        temp = staging / ".part-00001.json.tmp"
        write_synced(temp, [part])
        os.rename(temp, staging / "part-00001.json")
        write_synced(staging / "_manifest.json", [manifest])
        sync_folder(staging)
        os.rename(staging, base / str(n))
        sync_folder(base)
    return 1000 * (time.thread_time() - started) / chunks


async def history_read_s(path: Path, merchants: Sequence[str]) -> tuple[float, float]:
    """Seconds to read every merchant and type's past durations from the state at `path`,
    one read after another, as a second night reads them (once each); and to read the
    latest of each type of any merchant (what a newcomer borrows, once per type)."""
    async with await Store.open(path, SystemClock()) as store:
        started = time.perf_counter()
        for t in ExportType:
            assert len(await store.recent_durations(t, 20)) == 20
        recent_s = time.perf_counter() - started
        started = time.perf_counter()
        for m in merchants:
            found = await store.past_durations(m, 20)
            assert all(len(found[t]) == 1 for t in ExportType), found
        return time.perf_counter() - started, recent_s


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


def filesystem_of(path: Path) -> str:
    """The type of the filesystem `path` is on (its mount's, from /proc/mounts); "?" if
    this system does not say. An ext4 without a journal is named so: only there does each
    new inode scan past those deleted in the last minute (see "disk ms/chunk")."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "?"
    resolved, best, kind, device = path.resolve(), -1, "?", ""
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        # /proc/mounts escapes a space in a mount point as \040.
        point = Path(fields[1].replace("\\040", " "))
        if resolved.is_relative_to(point) and len(point.parts) > best:
            best, kind, device = len(point.parts), fields[2], fields[0]
    if kind == "ext4":
        try:
            journal = (Path("/sys/fs/ext4") / Path(device).name / "journal_task").read_text()
        except OSError:
            return kind
        if journal.strip() == "<none>":
            return "ext4 without a journal"
    return kind


async def case(merchant_count: int, seconds: float, night: str, root: Path) -> Outcome:
    merchants = {f"SCALE{n:05d}SHOP": f"scale-token-{n:05d}-abcdef" for n in range(merchant_count)}
    requested = SECOND_NIGHT if night == "second" else FIRST_NIGHT
    async with Simulator(settings(merchants), SystemClock(), Faults()) as sim:
        # Kept until every case has run (see main): a case's clean-up is no later case's cost.
        folder = Path(tempfile.mkdtemp(prefix=f"{merchant_count}-{night}-", dir=root))
        config = write_config(folder, sim.api_url, merchants)
        if night == "second":
            state = folder / "state.sqlite3"
            fill_s = await fill_first_night(state, list(merchants))
            read_s, recent_s = await history_read_s(state, list(merchants))
            print(
                f"{merchant_count:>9} first night filled in {fill_s:.1f} s; history read: "
                f"{read_s:.2f} s for {merchant_count} merchants "
                f"({1000 * read_s / merchant_count:.2f} ms each), the latest of "
                f"each type {1000 * recent_s:.1f} ms",
                flush=True,
            )
        disk_ms = disk_ms_per_chunk(folder)
        started_at = datetime.now(UTC)
        started = time.perf_counter()
        report = folder / "usage.json"
        # The harvester's own CLI, through the launcher; Popen (not asyncio's): reap()
        # waits for it without a child watcher.
        process = subprocess.Popen(  # noqa: S603, ASYNC220
            launched(
                backfill_argv(
                    config,
                    requested.start.date().isoformat(),
                    requested.end.date().isoformat(),
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
            await asyncio.wait_for(asyncio.shield(reaper), first_at + seconds - time.perf_counter())
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
            night=night,
            start_s=first_at - started,
            exports_per_s=rate,
            share=rate / allowed,
            cpu_ms_per_export=1000 * usage.cpu_s / max(1, stats.exports_created),
            sys_ms_per_export=1000 * usage.system_s / max(1, stats.exports_created),
            disk_ms_per_chunk=disk_ms,
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
    parser.add_argument(
        "--nights", nargs="+", choices=("first", "second"), default=["first", "second"]
    )
    parser.add_argument("--runs", type=int, default=1, help="how many times each case runs")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error(f"--runs: at least 1, got {args.runs}")
    print(
        f"merchants x 2 types, one {DAYS}-day chunk each (the second night: one day each, on "
        f"the first's state); server limit {SERVER_LIMIT}, ~0.1 s exports, app limit "
        f"{APP_REQUESTS_PER_S}/s and 10 in flight; SQLite; SIGTERM {args.seconds:g} s after "
        "the first export"
    )
    # Every case's folder is deleted only once all have run. On an ext4 without a journal,
    # each new file's inode is looked for past those deleted in the last minute or more: a
    # case's thousands of deletions would charge the next case's output for them.
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as root:
        print(f"output and state in {root} ({filesystem_of(Path(root))})")
        print(
            f"{'merchants':>9} {'night':>6} {'start s':>7} {'exports/s':>9} {'share':>5} "
            f"{'CPU ms/export':>13} {'sys':>4} {'disk ms/chunk':>13} {'peak RSS MB':>11} "
            f"{'app 429s':>8} {'most in 1 s':>11} {'stop s':>6} {'exit':>4} {'exports':>7}",
            flush=True,
        )
        cpu_ms: dict[tuple[int, str], list[float]] = {}
        for _ in range(args.runs):
            for count in args.merchants:
                for night in args.nights:
                    o = await run_and_print(count, args.seconds, night, Path(root))
                    cpu_ms.setdefault((count, night), []).append(o.cpu_ms_per_export)
        if args.runs > 1:
            for (count, night), figures in cpu_ms.items():
                print(
                    f"{count:>9} {night:>6} CPU ms/export over {len(figures)} runs: median "
                    f"{statistics.median(figures):.1f}, {min(figures):.1f} to {max(figures):.1f}"
                )


async def run_and_print(count: int, seconds: float, night: str, root: Path) -> Outcome:
    o = await case(count, seconds, night, root)
    print(
        f"{o.merchants:>9} {o.night:>6} {o.start_s:>7.1f} {o.exports_per_s:>9.1f} "
        f"{o.share:>5.2f} {o.cpu_ms_per_export:>13.1f} {o.sys_ms_per_export:>4.1f} "
        f"{o.disk_ms_per_chunk:>13.2f} {o.peak_rss_mb:>11.0f} "
        f"{o.app_429s:>8} {o.most_in_a_second:>11} {o.stop_s:>6.1f} {o.exit_code:>4} "
        f"{o.exports:>7}",
        flush=True,
    )
    return o


if __name__ == "__main__":
    asyncio.run(main())
