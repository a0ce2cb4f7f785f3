"""Ten thousand merchants (issue 18): the config, the plan, idle merchants and a stop.

Nothing here is timed on the wall clock: a load is held to the CPU time it takes (a loaded
machine stretches wall time, not CPU time), planning to the transactions it takes, idle
merchants to the tasks alive, and a stop to the virtual time of the fake clock.
"""

from __future__ import annotations

import asyncio
import resource
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import yaml

from harvester import commands
from harvester.clover.chunks import TimeRange
from harvester.config import Config, load_config
from harvester.harvest.planning import select
from harvester.harvest.scheduler import Harvest, active_merchants
from harvester.output.folder import ChunkLook, ChunkOutput, PartWriter
from harvester.state.records import ExportState, StateStore
from harvester.state.sqlite import Store
from harvester.state.sqlstore import SqlStore
from tests.conftest import DATA_START, FAST_TIMING
from tests.fakeclock import FakeClock
from tests.harness import (
    assert_exactly_once,
    harvest,
    log_events,
    metronome,
    recorded_exports,
    simulated,
)

MERCHANTS = 10_000
ONE_CHUNK = TimeRange(DATA_START, DATA_START + timedelta(days=30))


def many_merchants(folder: Path, count: int) -> Path:
    document = {
        "output_dir": "data",
        "state_path": "state.sqlite3",
        "regions": {"local": {"base_url": "http://127.0.0.1:9", "windows": "always"}},
        "merchants": [
            {"id": f"SCALE{n:05d}SHOP", "region": "local", "token": f"scale-token-{n:05d}-abcdef"}
            for n in range(count)
        ],
    }
    path = folder / "config.yaml"
    # libyaml's dumper writes the same text several times faster than the pure-Python one.
    path.write_text(yaml.dump(document, Dumper=yaml.CSafeDumper))
    return path


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


def test_a_config_of_ten_thousand_merchants_loads_within_two_cpu_seconds(
    tmp_path: Path,
) -> None:
    """Loading and checking 10,000 merchants takes under 2 s of this thread's CPU."""
    path = many_merchants(tmp_path, MERCHANTS)
    before = cpu_s()
    config = load_config(path, environ={})
    spent = cpu_s() - before
    assert len(config.merchants) == MERCHANTS
    assert spent < 2.0, f"{spent:.2f} s of CPU"


class Counting:
    """A store that counts the calls made of it (each is one transaction)."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        self.calls[name] += 1
        return getattr(self._store, name)


async def test_planning_twenty_thousand_chunks_takes_a_few_transactions(
    tmp_path: Path, clock: FakeClock
) -> None:
    """10,000 merchants x 2 types are planned in two calls of the store per 500 merchants,
    not one per merchant and type; planned again, they are the same chunks, none added."""
    config: Config = load_config(many_merchants(tmp_path, MERCHANTS), environ={})
    selections = select(config, [], [])
    async with await Store.open(config.state_path, clock) as store:
        counting = Counting(store)
        due = await commands.due_chunks_of(
            counting,
            config,
            selections,
            lambda *_: ONE_CHUNK,
        )
        assert counting.calls == {"chunks_of": 20, "add_chunks_of": 20}
        planned = [chunk for chunks in due for chunk in chunks]
        assert len(planned) == len({chunk.id for chunk in planned}) == 2 * MERCHANTS
        again = await commands.due_chunks_of(store, config, selections, lambda *_: ONE_CHUNK)
        assert [c.id for chunks in again for c in chunks] == [c.id for c in planned]
        assert len(await store.chunks()) == 2 * MERCHANTS


async def test_merchants_waiting_for_their_turn_hold_no_tasks(
    tmp_path: Path, clock: FakeClock
) -> None:
    """With one export slot and 40 merchants, the tasks alive stay those of the few
    merchants taken up at once, and every merchant's chunks are harvested in the end."""
    async with simulated(
        tmp_path, clock, merchants=40, max_concurrent_exports=1, objects_per_day=1.0
    ) as scenario:
        scenario.region["max_concurrent_exports"] = 1
        most = 0
        loop = asyncio.get_running_loop()

        def count_tasks(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
            """Counts the tasks alive as each is made, the only moment their number grows:
            the exact peak, where a look every half second of virtual time could miss one,
            and made the clock step thousands of times more (2 ms of real time a step)."""
            nonlocal most
            task = asyncio.Task(coro, loop=loop, **kwargs)
            most = max(most, len(asyncio.all_tasks(loop)))
            return task

        loop.set_task_factory(count_tasks)
        try:
            run = await harvest(scenario, clock, ONE_CHUNK)
        finally:
            loop.set_task_factory(None)
        assert run.summary.all_done, run.summary.render()
        assert scenario.sim.stats.exports_created == 2 * 40
    # Each merchant taken up has a runner and at most two lanes (its two chunks); the rest
    # is the simulator's and the client's handful. A task per merchant and lane: over 120.
    assert most < 3 * active_merchants(1) + 30, most


async def test_a_stop_with_many_merchants_waiting_ends_at_once_with_every_export_recorded(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Stopped while 150 merchants wait for two slots, the harvest ends within a few
    seconds of virtual time (well inside the shutdown grace), starts no merchant after the
    stop, and every export the server created is in the state for the next run."""
    async with simulated(
        tmp_path, clock, merchants=150, max_concurrent_exports=2, objects_per_day=1.0
    ) as scenario:
        scenario.region["max_concurrent_exports"] = 2
        stop = asyncio.Event()
        stopped_at: list[float] = []

        async def stop_after_some_exports(running: Harvest) -> None:
            while scenario.sim.stats.exports_created < 10:
                await clock.sleep(0.1)
            stopped_at.append(clock.monotonic())
            stop.set()
            await metronome(clock, 3600)  # the fake clock must not leap meanwhile

        run = await harvest(scenario, clock, ONE_CHUNK, stop=stop, beside=stop_after_some_exports)
        ended_s = clock.monotonic() - stopped_at[0]
        created = scenario.sim.stats.exports_created
        assert run.summary.stopped
        assert ended_s < scenario.config().timing.shutdown_grace_s, ended_s
        assert created < 30, "merchants were taken up after the stop"
        assert len(recorded_exports(scenario)) == created


async def test_a_stop_cuts_a_retry_backoff_short_and_fails_nothing(
    tmp_path: Path, clock: FakeClock, log_buffer: StringIO
) -> None:
    """With the server gone (every request a 500) and polls backing off for up to ten
    minutes, a stop ends the harvest at once; the chunks keep their recorded exports, not
    failed, for the next run to pick up."""
    async with simulated(tmp_path, clock, merchants=1, objects_per_day=1.0) as scenario:
        timing = {**FAST_TIMING, "backoff_base_s": 300, "backoff_max_s": 600, "max_attempts": 5}
        scenario.top["timing"] = timing
        stop = asyncio.Event()
        stopped_at: list[float] = []

        async def server_gone_then_stop(running: Harvest) -> None:
            while scenario.sim.stats.exports_created < 1:
                await clock.sleep(0.1)
            scenario.sim.faults.set_probability("api_5xx", 1.0)
            while not log_events(log_buffer, "request.retry"):
                await clock.sleep(0.1)
            await clock.sleep(1)
            stopped_at.append(clock.monotonic())
            stop.set()
            # Short naps: the fake clock must not leap while the harvest waits on sockets.
            await metronome(clock, 3600)

        run = await harvest(
            scenario,
            clock,
            TimeRange(DATA_START, DATA_START + timedelta(days=10)),
            stop=stop,
            beside=server_gone_then_stop,
        )
        assert clock.monotonic() - stopped_at[0] < 5
        assert run.summary.stopped
        assert not any(t.chunks_failed for t in run.summary.tallies.values())
        exports = recorded_exports(scenario)
        assert len(exports) == scenario.sim.stats.exports_created
        assert {export.state for export in exports} == {ExportState.RUNNING}


async def test_merchants_planned_while_the_first_are_harvested_are_harvested_too(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planned two merchants at a time, the harvest starts on the first two and takes up
    the others as their batches are planned: every object lands exactly once."""
    monkeypatch.setattr(commands, "_PLAN_MERCHANTS", 2)
    async with simulated(tmp_path, clock, merchants=5, objects_per_day=2.0) as scenario:
        config = scenario.config()
        summary = await commands.backfill(
            config, select(config, [], []), ONE_CHUNK, clock, asyncio.Event()
        )
        assert summary.exit_code == 0, summary.render()
        assert sum(t.chunks_planned for t in summary.tallies.values()) == 5 * 2
        assert scenario.sim.stats.exports_created == 5 * 2
        assert_exactly_once(scenario, ONE_CHUNK)


async def test_a_stop_while_planning_leaves_the_run_stopped(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped before the last batch of merchants is planned, the run counts as stopped
    (work is left), not as done, even with every chunk it planned complete."""
    monkeypatch.setattr(commands, "_PLAN_MERCHANTS", 2)
    async with simulated(tmp_path, clock, merchants=5, objects_per_day=2.0) as scenario:
        config = scenario.config()
        stop = asyncio.Event()
        add_chunks_of = Store.add_chunks_of
        batches = 0

        async def stop_at_the_third_batch(self: Store, *args: Any) -> Any:
            nonlocal batches
            batches += 1
            if batches == 3:
                stop.set()
            return await add_chunks_of(self, *args)

        monkeypatch.setattr(Store, "add_chunks_of", stop_at_the_third_batch)
        summary = await commands.backfill(config, select(config, [], []), ONE_CHUNK, clock, stop)
        assert summary.stopped
        assert sum(t.chunks_planned for t in summary.tallies.values()) < 5 * 2


async def test_a_process_alone_asks_the_state_few_questions_per_chunk(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alone on the state with nothing staged, a chunk's harvest confirms its claim with
    the grant of its export slot and with the export's DONE (which gives the slot back and
    reads the parts saved), ends the claim with the completion, and never reads the
    processes (only the lease's start and its heartbeat do): at a thousand merchants every
    store operation per chunk is CPU spent per export."""
    calls: Counter[str] = Counter()
    names = ("processes", "holds_chunk", "held_parts", "parts", "release_chunk", "release_slot")
    for name in names:
        original = getattr(SqlStore, name)

        def counted(
            self: SqlStore, *args: Any, _name: str = name, _original: Any = original
        ) -> Any:
            calls[_name] += 1
            return _original(self, *args)

        monkeypatch.setattr(SqlStore, name, counted)
    async with simulated(tmp_path, clock, merchants=4, objects_per_day=1.0) as scenario:
        run = await harvest(scenario, clock, ONE_CHUNK)
        assert run.summary.all_done, run.summary.render()
    chunks = 2 * 4
    assert calls["holds_chunk"] == 0
    assert calls["held_parts"] == 0
    assert calls["parts"] == 0
    assert calls["release_chunk"] == 0  # each claim ended with its chunk's completion
    assert calls["release_slot"] == 0  # each slot given back with its export's DONE
    assert calls["processes"] < chunks / 2, calls


async def test_a_new_export_of_one_file_costs_the_output_folder_one_thread_job(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk's place is looked at (a thread job) for an export known from before: it may
    be in place already, or staged by a process that died. An export just created can be
    neither, so its place is not looked at; and its one file, the chunk's last part, is
    staged by the publish that follows it, in publish's own job."""
    looks: list[str] = []
    part_jobs = 0
    look = ChunkOutput.look
    in_thread = PartWriter._in_thread

    async def counted_look(self: ChunkOutput) -> ChunkLook:
        looks.append(self.range.name)
        return await look(self)

    async def counted_job(self: PartWriter, job: Callable[[], object]) -> None:
        nonlocal part_jobs
        part_jobs += 1
        await in_thread(self, job)

    monkeypatch.setattr(ChunkOutput, "look", counted_look)
    monkeypatch.setattr(PartWriter, "_in_thread", counted_job)
    async with simulated(tmp_path, clock, merchants=4, objects_per_day=1.0) as scenario:
        run = await harvest(scenario, clock, ONE_CHUNK)
        assert run.summary.all_done, run.summary.render()
        assert run.summary.totals()["chunks_done"] == 2 * 4
        assert [len(export.urls) for export in recorded_exports(scenario)] == [1] * 8
    assert looks == []
    assert part_jobs == 0


async def test_the_part_that_completes_a_chunk_is_not_recorded(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Parts are recorded so that a run resumed after a crash need not fetch them again; the
    last of a chunk's parts to be saved is published right away, so it is not: an export of
    three files records two parts, an export of one file none (most exports, one store
    operation each fewer)."""
    # 30 objects a chunk, 10 a file: three files each of the merchant's two exports.
    async with simulated(
        tmp_path, clock, merchants=1, objects_per_day=1.0, objects_per_file=10
    ) as scenario:
        run = await harvest(scenario, clock, ONE_CHUNK)
        assert run.summary.all_done, run.summary.render()
        exports = recorded_exports(scenario)
        async with await Store.open(scenario.config().state_path, clock) as store:
            assert [len(e.urls) for e in exports] == [3, 3]
            assert [len(await store.parts(e.id)) for e in exports] == [2, 2]
    (tmp_path / "one").mkdir()
    async with simulated(tmp_path / "one", clock, merchants=1, objects_per_day=1.0) as scenario:
        run = await harvest(scenario, clock, ONE_CHUNK)
        assert run.summary.all_done, run.summary.render()
        exports = recorded_exports(scenario)
        async with await Store.open(scenario.config().state_path, clock) as store:
            assert [len(e.urls) for e in exports] == [1, 1]
            assert [await store.parts(e.id) for e in exports] == [[], []]
