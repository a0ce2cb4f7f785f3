"""What each CLI word does, as coroutines and functions the CLI (and tests) call.

`plan` reads the state only: the harvest's machinery (aiohttp, the hosts, the downloader,
the output, PostgreSQL) is imported by the words that harvest or migrate.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from harvester.clock import Clock, SystemClock
from harvester.clover.chunks import ExportType, TimeRange, start_of_utc_day
from harvester.config import Config, substitute
from harvester.errors import ChunkOverlap, ConfigError
from harvester.harvest.estimate import Estimate, estimate
from harvester.harvest.observer import RunObserver
from harvester.harvest.planning import (
    Selection,
    lookback_range,
    nightly_range,
    nightly_start,
    plan_chunks,
)
from harvester.harvest.summary import Summary
from harvester.logs import get_logger
from harvester.scrub import register_secret
from harvester.state.backends import export_durations, open_state, read_state
from harvester.state.claims import Owner, ProcessLease, reap
from harvester.state.records import ChunkRecord, ChunkStatus, Snapshot, StateStore
from harvester.state.sqlite import Store

if TYPE_CHECKING:
    import aiohttp

    from harvester.harvest.hosts import HostFactories, Hosts
    from harvester.harvest.scheduler import Harvest, MerchantWork
    from harvester.output.target import Output

USER_AGENT = "clover-harvester/0.1"
_PLAN_ATTEMPTS = 3  # plans cut again when another process's new chunks got in the way
# Merchants planned in one read and one write: bounds the chunks in memory at once, long
# histories included.
_PLAN_MERCHANTS = 500


@dataclass(frozen=True, slots=True)
class PlannedChunk:
    merchant_id: str
    type: ExportType
    range: TimeRange
    resume: bool  # known to the store already (unfinished), not cut anew


def plan_backfill(
    config: Config, selections: Sequence[Selection], requested: TimeRange
) -> list[PlannedChunk]:
    """The chunks `backfill` would harvest; reads the store read-only, calls nothing."""
    snapshot = read_state(config)
    planned = []
    for selection in selections:
        for export_type in selection.types:
            covered, unfinished = _known(snapshot, selection.merchant.id, export_type)
            chunk_plan = plan_chunks(requested, covered, unfinished, config.chunk_days)
            planned += [
                PlannedChunk(selection.merchant.id, export_type, r, True) for r in chunk_plan.resume
            ]
            planned += [
                PlannedChunk(selection.merchant.id, export_type, r, False) for r in chunk_plan.new
            ]
    return planned


def plan_estimate(config: Config, planned: Sequence[PlannedChunk]) -> Estimate:
    """How long the planned exports take, from the durations the state store has seen."""
    regions = {m.id: m.region.name for m in config.merchants}
    by_region = Counter(regions[chunk.merchant_id] for chunk in planned)
    return estimate(by_region, config.regions, export_durations(config))


def check_nightly_starts(config: Config, selections: Sequence[Selection]) -> None:
    """Refuse, before anything is written, a merchant `run` would not know where to start."""
    snapshot = read_state(config)
    for selection in selections:
        for export_type in selection.types:
            covered, _ = _known(snapshot, selection.merchant.id, export_type)
            nightly_start(selection.merchant, config.default_start, covered)


def _known(
    snapshot: Snapshot | None, merchant_id: str, export_type: ExportType
) -> tuple[list[TimeRange], list[TimeRange]]:
    if snapshot is None:
        return [], []
    mine = [c for c in snapshot.chunks if c.merchant_id == merchant_id and c.type == export_type]
    return _split_known(mine)


def _split_known(chunks: Sequence[ChunkRecord]) -> tuple[list[TimeRange], list[TimeRange]]:
    """(covered ranges, ranges of chunks with work outstanding)."""
    covered = [c.range for c in chunks if c.completed_at is not None]
    unfinished = [c.range for c in chunks if c.status is not ChunkStatus.COMPLETE]
    return covered, unfinished


async def backfill(
    config: Config,
    selections: Sequence[Selection],
    requested: TimeRange,
    clock: Clock,
    stop: asyncio.Event,
    *,
    factories: HostFactories | None = None,
    observer: RunObserver | None = None,
) -> Summary:
    from harvester.output.target import open_output

    async with (
        open_output(config) as output,
        shared_state(config, output, clock, "backfill") as lease,
    ):
        planned = planned_work(lease.store, config, selections, lambda *_: requested)
        return await _harvest(config, lease, output, planned, clock, stop, factories, observer)


async def nightly(
    config: Config,
    selections: Sequence[Selection],
    clock: Clock,
    stop: asyncio.Event,
    *,
    factories: HostFactories | None = None,
    observer: RunObserver | None = None,
) -> Summary:
    """`harvester run`: everything up to the start of today, then the lookback re-harvest."""
    from harvester.output.target import open_output

    today = start_of_utc_day(clock.now())
    lookback = lookback_range(today, config.lookback_days)
    async with open_output(config) as output, shared_state(config, output, clock, "run") as lease:

        def requested(
            selection: Selection, export_type: ExportType, covered: Sequence[TimeRange]
        ) -> TimeRange | None:
            start = nightly_start(selection.merchant, config.default_start, covered)
            return nightly_range(start, today)

        planned = planned_work(lease.store, config, selections, requested, lookback=lookback)
        return await _harvest(config, lease, output, planned, clock, stop, factories, observer)


# What a merchant and type should have harvested, given the ranges it has covered (None:
# nothing).
Wanted = Callable[[Selection, ExportType, Sequence[TimeRange]], TimeRange | None]


async def due_chunks(
    store: StateStore,
    config: Config,
    selection: Selection,
    requested: TimeRange,
    types: Sequence[ExportType] | None = None,
) -> list[ChunkRecord]:
    """The chunks of `requested` to harvest: unfinished known ones, and new ones (stored)."""
    (found,) = await due_chunks_of(store, config, [selection], lambda *_: requested, types)
    return found


async def due_chunks_of(
    store: StateStore,
    config: Config,
    selections: Sequence[Selection],
    requested: Wanted,
    types: Sequence[ExportType] | None = None,
    *,
    lookback: TimeRange | None = None,
) -> list[list[ChunkRecord]]:
    """Per selection, the chunks to harvest: for each of its types (or `types`), the
    unfinished known chunks of the range `requested` names and new ones (stored); with
    `lookback`, also its complete chunks overlapping it, due again (Clover objects change
    after creation).

    A few hundred merchants at a time: one read and one write each, whatever the number of
    chunks (a transaction per merchant took minutes at ten thousand merchants).
    """
    found: list[list[ChunkRecord]] = []
    async for _, due in _due_batches(store, config, selections, requested, types, lookback):
        found += due
    return found


async def planned_work(
    store: StateStore,
    config: Config,
    selections: Sequence[Selection],
    requested: Wanted,
    *,
    lookback: TimeRange | None = None,
) -> AsyncGenerator[list[MerchantWork], None]:
    """`due_chunks_of`, a batch of merchants at a time, as the harvest's work: the harvest
    starts on the first batch while the others are planned."""
    from harvester.harvest.scheduler import MerchantWork

    async for batch, due in _due_batches(store, config, selections, requested, None, lookback):
        yield [MerchantWork(s.merchant, tuple(c)) for s, c in zip(batch, due, strict=True)]


async def _due_batches(
    store: StateStore,
    config: Config,
    selections: Sequence[Selection],
    requested: Wanted,
    types: Sequence[ExportType] | None,
    lookback: TimeRange | None,
) -> AsyncIterator[tuple[Sequence[Selection], list[list[ChunkRecord]]]]:
    """Each batch of `_PLAN_MERCHANTS` selections, with its chunks to harvest."""
    for first in range(0, len(selections), _PLAN_MERCHANTS):
        batch = selections[first : first + _PLAN_MERCHANTS]
        yield batch, await _due_batch(store, config, batch, requested, types, lookback)


async def _due_batch(
    store: StateStore,
    config: Config,
    selections: Sequence[Selection],
    requested: Wanted,
    types: Sequence[ExportType] | None,
    lookback: TimeRange | None,
) -> list[list[ChunkRecord]]:
    for attempt in range(1, _PLAN_ATTEMPTS + 1):
        known: dict[tuple[str, ExportType], list[ChunkRecord]] = {}
        for chunk in await store.chunks_of([s.merchant.id for s in selections]):
            known.setdefault((chunk.merchant_id, chunk.type), []).append(chunk)
        wanted: list[tuple[str, ExportType, Sequence[TimeRange]]] = []
        # Per selection: the known chunks it resumes, each with its entry of `wanted`.
        resumed: list[list[tuple[list[ChunkRecord], int]]] = []
        again: list[list[int]] = []  # per selection: complete chunks the lookback takes
        for selection in selections:
            resumed.append([])
            again.append([])
            for export_type in types or selection.types:
                mine = known.get((selection.merchant.id, export_type), [])
                if lookback is not None:
                    again[-1] += [
                        c.id
                        for c in mine
                        if c.status is ChunkStatus.COMPLETE and c.range.overlaps(lookback)
                    ]
                covered, unfinished = _split_known(mine)
                wanted_range = requested(selection, export_type, covered)
                if wanted_range is None:
                    continue
                chunk_plan = plan_chunks(wanted_range, covered, unfinished, config.chunk_days)
                resume = set(chunk_plan.resume)
                resumed[-1].append(([c for c in mine if c.range in resume], len(wanted)))
                wanted.append((selection.merchant.id, export_type, chunk_plan.new))
        try:
            added = await store.add_chunks_of(wanted)
        except ChunkOverlap:
            # Another process cut chunks of its own range meanwhile: plan around them.
            if attempt == _PLAN_ATTEMPTS:
                raise
            continue
        due = [
            [chunk for kept, entry in mine for chunk in (*kept, *added[entry])] for mine in resumed
        ]
        if any(again):
            reset = iter(await store.reset_for_reharvest_of([i for ids in again for i in ids]))
            for chunks, ids in zip(due, again, strict=True):
                chunks += [next(reset) for _ in ids]
        return due
    raise AssertionError("unreachable: the last attempt returns or raises")


@asynccontextmanager
async def shared_state(
    config: Config, output: Output, clock: Clock, command: str
) -> AsyncIterator[ProcessLease]:
    """The store, tidied, with this process's lease on it for as long as the block runs."""
    async with await open_store(config, output, clock) as store:
        # The heartbeat keeps real time whatever `clock` is: see ProcessLease.
        lease = ProcessLease(
            store, Owner.this_process(command), clock, config.timing.lease_s, SystemClock()
        )
        async with lease:
            yield lease


def state_url_argument(text: str, environ: Mapping[str, str]) -> str:
    """`--to-url` checked, with ${VAR} filled in (ConfigError naming the culprit)."""
    url = substitute(text, "--to-url", environ)
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise ConfigError("--to-url: expected postgresql://USER@HOST:PORT/DB")
    if parts.password:
        register_secret(parts.password)
    return url


async def migrate_state(path: Path, url: str, clock: Clock) -> dict[str, int]:
    """Copy the SQLite state at `path` into the empty PostgreSQL state at `url`.

    Chunks (their coverage), exports (a run re-attaches to them), saved parts and refresh
    tokens move, with their ids, in one transaction. Processes, claims and slots do not:
    stop every harvester first. StoreError if the PostgreSQL state holds chunks already.
    """
    async with await Store.open(path, clock) as source:
        tables = await source.dump()
    from harvester.state.postgres import PgStore

    async with await PgStore.open(url, clock) as target:
        return await target.load(tables)


async def open_store(config: Config, output: Output, clock: Clock) -> StateStore:
    """Open the store and tidy the output from whatever dead runs left behind.

    Only what gone processes left: the staging of processes alive (sharing the output)
    is theirs. Processes are read before the output, so one that entered the state after
    this read (whose id is not known here) is alive and its staging is left alone.
    """
    store = await open_state(config, clock)
    await store.start_run()
    await reap(store)
    now = clock.now()
    processes = await store.processes()
    gone = {p.id for p in processes if p.lease_until <= now}
    alone = len(gone) == len(processes)
    if alone:
        # Alone: the shared export limits start from the config, as a lone run's do.
        await store.reset_hosts()
    downloading = await store.chunks(statuses=[ChunkStatus.DOWNLOADING])
    keep = {(c.merchant_id, c.type.folder, c.range.name) for c in downloading}
    tidied = await output.recover(
        lambda merchant, folder, name: (merchant, folder, name) in keep,
        # Alone: whatever is left behind is a gone process's.
        None if alone else (lambda owner: owner is None or owner in gone),
    )
    if tidied:
        get_logger().info("output.recovered", paths=tidied)
    return store


def build_harvest(
    config: Config,
    store: StateStore,
    output: Output,
    session: aiohttp.ClientSession,
    clock: Clock,
    stop: asyncio.Event,
    rng: random.Random,
    factories: HostFactories | None = None,
    observer: RunObserver | None = None,
    lease: ProcessLease | None = None,
) -> tuple[Harvest, Hosts]:
    """A harvest wired to its hosts and downloader (the hosts, to look at them afterwards).

    Without `lease`, the harvest takes one of its own for its run."""
    from harvester.harvest.downloader import Downloader
    from harvester.harvest.hosts import Hosts
    from harvester.harvest.scheduler import Harvest

    hosts = Hosts(config, session, store, clock, rng, factories, observer, lease=lease, stop=stop)
    downloader = Downloader(
        session,
        store,
        clock,
        config.timing,
        config.max_concurrent_downloads,
        rng,
        config.max_file_bytes,
    )
    return Harvest(config, store, hosts, downloader, output, clock, stop, rng, observer), hosts


async def _harvest(
    config: Config,
    lease: ProcessLease,
    output: Output,
    planned: AsyncGenerator[list[MerchantWork], None],
    clock: Clock,
    stop: asyncio.Event,
    factories: HostFactories | None,
    observer: RunObserver | None,
) -> Summary:
    """Harvest what `planned` yields: its first batch is planned before anything starts
    (a plan that fails, fails before any export), the rest while the harvest goes on."""
    log = get_logger()
    async with contextlib.aclosing(planned):
        work: list[MerchantWork] = await anext(planned, [])
        log.info("run.started", merchants=len(work), chunks=sum(len(item.chunks) for item in work))
        return await _harvest_planned(
            config, lease, output, work, planned, clock, stop, factories, observer
        )


async def _harvest_planned(
    config: Config,
    lease: ProcessLease,
    output: Output,
    work: Sequence[MerchantWork],
    more: AsyncIterator[Sequence[MerchantWork]],
    clock: Clock,
    stop: asyncio.Event,
    factories: HostFactories | None,
    observer: RunObserver | None,
) -> Summary:
    import aiohttp

    log = get_logger()
    async with aiohttp.ClientSession(
        headers={"User-Agent": USER_AGENT},
        trust_env=False,
        connector=aiohttp.TCPConnector(limit=64),
    ) as session:
        harvest, _ = build_harvest(
            config,
            lease.store,
            output,
            session,
            clock,
            stop,
            random.Random(),
            factories,
            observer,
            lease,
        )
        try:
            summary = await harvest.run(work, more)
        except asyncio.CancelledError:
            # The shutdown grace ran out (or a second signal came): what was done is still
            # reported; what was cut short is picked up by the next run.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            summary = harvest.summary
            summary.stopped = True
            summary.problems.append("the shutdown grace ran out: work in flight was abandoned")
    # Totals only: the per-merchant tallies are the summary on stdout (1 MB at 1,000 merchants).
    log.info("run.finished", **summary.totals())
    return summary
