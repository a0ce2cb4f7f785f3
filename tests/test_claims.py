"""Claims and leases: a chunk is worked on by one live process at a time."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path
from typing import Any, cast

import pytest
from structlog.testing import capture_logs

from harvester import commands
from harvester.cli import main
from harvester.clover.chunks import ExportType, TimeRange
from harvester.errors import StoreError
from harvester.harvest import scheduler
from harvester.harvest.planning import select
from harvester.harvest.scheduler import Harvest
from harvester.state.claims import ClaimLost, Owner, ProcessLease, machine_id, pid_alive, reap
from harvester.state.records import (
    ChunkRecord,
    ChunkStatus,
    ExportState,
    PartRecord,
    ProcessRecord,
    StateStore,
)
from harvester.state.sqlite import Store
from tests.conftest import BACKENDS, Scenario, opened_store
from tests.fakeclock import FakeClock
from tests.harness import FULL, assert_exactly_once, harvest, log_events, simulated
from tests.test_config import load

START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
JANUARY = TimeRange(datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 1, 31, tzinfo=UTC))
FEBRUARY = TimeRange(JANUARY.end, datetime(2025, 3, 2, tzinfo=UTC))
MERCHANT = "MERCHANT00001"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture(params=BACKENDS)
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[StateStore]:
    """The store on each backend: every test taking it runs on SQLite and on PostgreSQL."""
    async with opened_store(request.param, request, tmp_path / "state.sqlite3", clock) as opened:
        yield opened


def process(
    name: str, clock: FakeClock, lease_s: float = 30, machine: str = "elsewhere", pid: int = 1
) -> ProcessRecord:
    return ProcessRecord(
        id=name,
        host=f"host-{name}",
        pid=pid,
        machine=machine,
        command="backfill",
        started_at=clock.now(),
        lease_until=clock.now() + timedelta(seconds=lease_s),
    )


async def chunk_id(store: StateStore) -> int:
    (chunk,) = await store.add_chunks(MERCHANT, ExportType.ORDERS, [JANUARY])
    return chunk.id


async def test_a_claim_of_a_live_process_is_refused_naming_it(
    store: StateStore, clock: FakeClock
) -> None:
    """While its holder's lease runs, a chunk's claim goes to nobody else; the answer names
    the holder."""
    await store.register_process(process("a", clock))
    await store.register_process(process("b", clock))
    chunk = await chunk_id(store)
    assert (await store.claim_chunk(chunk, "a")).granted
    refused = await store.claim_chunk(chunk, "b")
    assert not refused.granted
    assert refused.held_by is not None
    assert refused.held_by.host == "host-a"
    assert (await store.claim_chunk(chunk, "a")).granted  # asking again keeps it
    assert await store.holds_chunk(chunk, "a")
    assert not await store.holds_chunk(chunk, "b")


async def test_held_parts_are_the_exports_saved_parts_only_while_the_claim_holds(
    store: StateStore, clock: FakeClock
) -> None:
    """`held_parts` gives the export's parts to the holder of the chunk's claim, None to
    anyone else and once the claim is taken over; ProcessLease turns None into ClaimLost."""
    await store.register_process(process("a", clock, lease_s=10))
    await store.register_process(process("b", clock, lease_s=100))
    chunk = await chunk_id(store)
    await store.claim_chunk(chunk, "a")
    assert await store.held_parts(chunk, "a", "E1") == []
    await store.record_export(chunk, "E1", "PENDING", 0.0)
    part = PartRecord("E1", 1, 0, 10, "ab" * 32, 2)
    await store.record_part(part)
    assert await store.held_parts(chunk, "a", "E1") == [part]
    assert await store.held_parts(chunk, "b", "E1") is None
    clock.advance(11)
    assert (await store.claim_chunk(chunk, "b")).granted
    assert await store.held_parts(chunk, "a", "E1") is None
    assert await store.held_parts(chunk, "b", "E1") == [part]
    lease = ProcessLease(store, Owner("a", "host-a", 1, "m", "backfill"), clock, 10)
    with pytest.raises(ClaimLost, match=f"chunk {chunk} was taken over"):
        await lease.held_parts(chunk, "E1")


async def test_an_exports_done_confirms_the_claim_and_reads_the_parts_in_the_same_operation(
    store: StateStore, clock: FakeClock
) -> None:
    """`export_done_held` records the DONE and answers as `held_parts` does; the DONE lands
    even for a process whose claim was taken over, and ProcessLease then says ClaimLost."""
    await store.register_process(process("a", clock, lease_s=10))
    await store.register_process(process("b", clock, lease_s=100))
    chunk = await chunk_id(store)
    await store.claim_chunk(chunk, "a")
    await store.record_export(chunk, "E1", "PENDING", 0.0)
    part = PartRecord("E1", 1, 0, 10, "ab" * 32, 2)
    await store.record_part(part)
    done, held = await store.export_done_held("E1", None, ["https://f/1"], None, chunk, "a")
    assert (done.state, done.urls, held) == (ExportState.DONE, ("https://f/1",), [part])
    await store.record_export(chunk, "E2", "PENDING", 0.0)
    clock.advance(11)
    assert (await store.claim_chunk(chunk, "b")).granted
    lease = ProcessLease(store, Owner("a", "host-a", 1, "m", "backfill"), clock, 10)
    with pytest.raises(ClaimLost, match=f"chunk {chunk} was taken over"):
        await lease.export_done(chunk, "E2", None, ["https://f/2"], None)
    recorded = await store.get_export("E2")
    assert recorded is not None
    assert recorded.state is ExportState.DONE


async def test_a_chunk_completed_by_its_holder_ends_its_claim_in_the_same_operation(
    store: StateStore, clock: FakeClock
) -> None:
    """`complete_chunk` with the holder's id leaves the chunk COMPLETE and unclaimed, so the
    next process to ask is granted it (to find it done); without an owner no claim moves."""
    await store.register_process(process("a", clock))
    await store.register_process(process("b", clock))
    first, second = (
        chunk.id
        for chunk in await store.add_chunks(MERCHANT, ExportType.ORDERS, [JANUARY, FEBRUARY])
    )
    await store.claim_chunks([first, second], "a")
    await store.complete_chunk(first, "a")
    await store.complete_chunk(second)
    assert not await store.holds_chunk(first, "a")
    assert await store.holds_chunk(second, "a")
    taken = await store.claim_chunk(first, "b")
    assert taken.granted
    assert taken.chunk.status is ChunkStatus.COMPLETE
    assert not (await store.claim_chunk(second, "b")).granted


async def test_the_claim_of_a_process_whose_lease_ran_out_is_taken_over(
    store: StateStore, clock: FakeClock
) -> None:
    """Once the holder's lease has passed unrenewed, the next process to ask gets the chunk."""
    await store.register_process(process("a", clock, lease_s=10))
    await store.register_process(process("b", clock, lease_s=100))
    chunk = await chunk_id(store)
    await store.claim_chunk(chunk, "a")
    clock.advance(9)
    assert not (await store.claim_chunk(chunk, "b")).granted
    clock.advance(2)
    assert (await store.claim_chunk(chunk, "b")).granted
    assert not await store.holds_chunk(chunk, "a")


async def test_release_and_end_free_claims_at_once(store: StateStore, clock: FakeClock) -> None:
    """A released claim, and every claim of an ended process, can be taken at once."""
    for name in ("a", "b"):
        await store.register_process(process(name, clock))
    first = await chunk_id(store)
    (second,) = await store.add_chunks(MERCHANT, ExportType.PAYMENTS, [JANUARY])  # another chunk
    await store.claim_chunk(first, "a")
    await store.claim_chunk(second.id, "a")
    await store.release_chunk(first, "a")
    assert (await store.claim_chunk(first, "b")).granted
    assert not (await store.claim_chunk(second.id, "b")).granted
    await store.end_process("a")
    assert (await store.claim_chunk(second.id, "b")).granted


async def test_renewing_a_lapsed_lease_says_so_and_keeps_untaken_claims(
    store: StateStore, clock: FakeClock
) -> None:
    """A renewal after the lease ran out reports the lapse; claims nobody took stay held."""
    await store.register_process(process("a", clock, lease_s=10))
    chunk = await chunk_id(store)
    await store.claim_chunk(chunk, "a")
    assert await store.renew_process("a", clock.now() + timedelta(seconds=10))
    clock.advance(11)
    assert not await store.renew_process("a", clock.now() + timedelta(seconds=10))
    assert await store.holds_chunk(chunk, "a")


async def renewed(store: StateStore, owner: str, until: datetime) -> None:
    """Wait (on the store's thread, not on time) until the owner's lease reaches `until`."""
    for _ in range(500):
        (mine,) = [p for p in await store.processes() if p.id == owner]
        if mine.lease_until >= until:
            return
    raise AssertionError(f"the lease of {owner} was not renewed to {until}")


async def test_the_heartbeat_renews_the_lease_and_exit_ends_it(
    store: StateStore, clock: FakeClock
) -> None:
    """A lease renews itself every third of its length, and ends when its block is left."""
    lease = ProcessLease(store, Owner.this_process("backfill"), clock, lease_s=30)
    async with lease:
        chunk = await chunk_id(store)
        assert (await lease.claim(chunk)).granted
        for _ in range(10):
            clock.advance(10)
            await renewed(store, lease.owner.id, clock.now() + timedelta(seconds=20))
        await lease.confirm(chunk)
    (mine,) = await store.processes()
    assert mine.lease_until <= clock.now()
    assert not await store.holds_chunk(chunk, lease.owner.id)


async def test_confirm_raises_once_the_chunk_was_taken_over(
    store: StateStore, clock: FakeClock
) -> None:
    """A process that lost its claim finds out before it acts on the chunk."""
    lease = ProcessLease(store, Owner.this_process("run"), clock, lease_s=30)
    async with lease:
        chunk = await chunk_id(store)
        await lease.claim(chunk)
        await store.register_process(process("other", clock, lease_s=300))
        await store.end_process(lease.owner.id)  # as if its lease had run out
        assert (await store.claim_chunk(chunk, "other")).granted
        with pytest.raises(ClaimLost):
            await lease.confirm(chunk)


async def test_reap_ends_processes_of_this_machine_whose_pid_is_gone(
    store: StateStore, clock: FakeClock
) -> None:
    """A dead process on this machine loses its lease at once; one elsewhere keeps it."""
    finished = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await finished.wait()
    dead_pid = finished.pid
    assert not pid_alive(dead_pid)
    await store.register_process(process("dead", clock, machine=machine_id(), pid=dead_pid))
    await store.register_process(process("far", clock, machine="other-box", pid=dead_pid))
    with capture_logs() as logs:
        assert await reap(store) == ["dead"]
    assert [log["event"] for log in logs] == ["lease.reaped"]
    live = {p.id for p in await store.processes() if p.lease_until > clock.now()}
    assert live == {"far"}


async def test_live_processes_are_those_whose_lease_runs_on_the_machine_asked_for(
    store: StateStore, clock: FakeClock
) -> None:
    """What `processes` says of the live ones (the lease running now), optionally of one
    machine, oldest first: reap reads these, not every process that ever ran."""
    await store.register_process(process("old", clock, lease_s=10, machine="here"))
    clock.advance(1)
    await store.register_process(process("here", clock, machine="here"))
    clock.advance(1)
    await store.register_process(process("far", clock, machine="there"))
    clock.advance(1)
    await store.register_process(process("ended", clock, machine="here"))
    await store.end_process("ended")
    clock.advance(8)  # "old"'s lease has run out
    everyone = await store.processes()
    assert [p.id for p in everyone] == ["old", "here", "far", "ended"]
    live = [p for p in everyone if p.lease_until > clock.now()]
    assert await store.live_processes() == live
    assert [p.id for p in live] == ["here", "far"]
    assert [p.id for p in await store.live_processes("here")] == ["here"]
    assert await store.live_processes("nowhere") == []


async def test_status_snapshot_names_the_holder_of_each_claim(
    store: StateStore, clock: FakeClock
) -> None:
    """The snapshot lists claims of live processes only, with host, pid and command."""
    await store.register_process(process("a", clock, lease_s=10, pid=4242))
    await store.register_process(process("b", clock, lease_s=100))
    chunk = await chunk_id(store)
    (other,) = await store.add_chunks(MERCHANT, ExportType.PAYMENTS, [JANUARY])
    await store.claim_chunk(chunk, "a")
    await store.claim_chunk(other.id, "b")
    snapshot = await store.snapshot(clock.now())
    assert [(h.chunk_id, h.holder.host, h.holder.pid) for h in snapshot.held] == [
        (chunk, "host-a", 4242),
        (other.id, "host-b", 1),
    ]
    later = await store.snapshot(clock.now() + timedelta(seconds=20))
    assert [h.chunk_id for h in later.held] == [other.id]


async def test_two_stores_opening_a_new_file_at_once_both_succeed(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Several processes' first runs race to create and migrate the file: none fails."""
    path = tmp_path / "fresh" / "state.sqlite3"
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from harvester.clock import SystemClock\n"
        "from harvester.state.sqlite import Store\n"
        "async def main():\n"
        "    async with await Store.open(Path(sys.argv[1]), SystemClock()) as store:\n"
        "        await store.chunks()\n"
        "asyncio.run(main())\n"
    )
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, str(path), stderr=asyncio.subprocess.PIPE
        )
        for _ in range(6)
    ]
    for started in processes:
        _, stderr = await started.communicate()
        assert started.returncode == 0, stderr.decode()[-2000:]


async def planned_with_one_held(
    scenario: Scenario, clock: FakeClock, lease_s: float
) -> list[ChunkRecord]:
    """Plan the scenario's full backfill; a process elsewhere claims its first chunk."""
    config = scenario.config()
    async with await Store.open(config.state_path, clock) as store:
        chunks = await commands.due_chunks(store, config, select(config, [], [])[0], FULL)
        await store.register_process(process("other", clock, lease_s=lease_s))
        assert (await store.claim_chunk(chunks[0].id, "other")).granted
    return chunks


async def test_a_chunk_held_elsewhere_is_waited_for_and_reported_done_elsewhere(
    tmp_path: Path, clock: FakeClock, log_buffer: StringIO
) -> None:
    """The run does the rest first, waits for the chunk another process holds, and counts it
    done by that process once it is complete, without an export of its own for it."""
    async with simulated(tmp_path, clock, merchants=1) as scenario:
        chunks = await planned_with_one_held(scenario, clock, lease_s=3600)

        async def the_other_finishes(harvest: Harvest) -> None:
            # Once the run has found the chunk held (and gone on with the others).
            while not log_events(log_buffer, "chunk.held_elsewhere"):
                await clock.sleep(1)
            await clock.sleep(200)
            async with await Store.open(scenario.config().state_path, clock) as store:
                await store.complete_chunk(chunks[0].id)
                await store.release_chunk(chunks[0].id, "other")

        run = await harvest(scenario, clock, beside=the_other_finishes)
    assert run.summary.all_done
    tallies = run.summary.tallies.values()
    assert sum(t.chunks_elsewhere for t in tallies) == 1
    assert sum(t.chunks_done for t in tallies) == len(chunks)
    assert scenario.sim.stats.exports_created == len(chunks) - 1
    (held,) = log_events(log_buffer, "chunk.held_elsewhere")
    assert held["host"] == "host-other"
    assert "harvested by another process" in run.summary.render()


async def test_chunks_held_elsewhere_are_looked_at_again_soon_then_twice_as_late_each_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk another process holds is mostly an export in flight there: the run looks at
    it again a quarter second after finding it held, then twice as late each time, up to a
    tenth of the lease (5 s here), and so sees it done soon after its holder completes it."""
    # Each step of virtual time lets the loop run 50 ms first (not 2): a lane whose store
    # call ended just then, on a loaded machine, still looks before time moves on.
    clock = FakeClock(START, tick_s=0.05)
    looks: list[float] = []
    first_look = asyncio.Event()
    claim = ProcessLease.claim

    async def looked_at(lease: ProcessLease, chunk_id: int) -> Any:
        looks.append(clock.monotonic())
        first_look.set()
        return await claim(lease, chunk_id)

    monkeypatch.setattr(ProcessLease, "claim", looked_at)
    async with simulated(tmp_path, clock, merchants=1) as scenario:
        config = scenario.config()
        async with await Store.open(config.state_path, clock) as store:
            chunks = await commands.due_chunks(store, config, select(config, [], [])[0], FULL)
            await store.register_process(process("other", clock, lease_s=3600))
            assert all(c.granted for c in await store.claim_chunks([c.id for c in chunks], "other"))

        async def the_other_finishes(harvest: Harvest) -> None:
            await first_look.wait()
            await clock.sleep(3)
            # All of them at 3 s: the fake clock stands still while a thread job runs.
            still = threading.Event()
            standing = asyncio.get_running_loop().run_in_executor(None, still.wait)
            try:
                async with await Store.open(config.state_path, clock) as store:
                    for chunk in chunks:
                        await store.complete_chunk(chunk.id)
                        await store.release_chunk(chunk.id, "other")
            finally:
                still.set()
                await standing

        run = await harvest(scenario, clock, beside=the_other_finishes)
    assert run.summary.all_done
    assert sum(t.chunks_elsewhere for t in run.summary.tallies.values()) == len(chunks)
    assert scenario.sim.stats.exports_created == 0
    # Each round looks at every chunk (in no time, on the fake clock). The rounds' starts,
    # from the first: done at 3 s, seen so at 3.75 s (with a look every 5 s, at 5 s).
    rounds = [round(at - looks[0], 6) for at in looks]
    assert sorted(set(rounds)) == [0, 0.25, 0.75, 1.75, 3.75]
    assert all(rounds.count(start) == len(chunks) for start in rounds)


async def test_a_merchant_whose_chunks_are_all_held_elsewhere_waits_behind_the_others(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Taking up one merchant at a time, the first, whose every chunk another process
    holds, goes to the back of the queue: the others are harvested meanwhile, and its
    chunks count as done elsewhere once that process has completed them."""
    monkeypatch.setattr(scheduler, "active_merchants", lambda maximum: 1)
    async with simulated(tmp_path, clock, merchants=3) as scenario:
        config = scenario.config()
        async with await Store.open(config.state_path, clock) as store:
            due = await commands.due_chunks_of(
                store, config, select(config, [], []), lambda *_: FULL
            )
            held = due[0]
            await store.register_process(process("other", clock, lease_s=3600))
            claims = await store.claim_chunks([chunk.id for chunk in held], "other")
            assert all(claim.granted for claim in claims)
        others = sum(len(chunks) for chunks in due[1:])

        async def the_other_finishes(harvest: Harvest) -> None:
            while scenario.sim.stats.exports_created < others:
                await clock.sleep(1)
            await clock.sleep(30)
            async with await Store.open(config.state_path, clock) as store:
                for chunk in held:
                    await store.complete_chunk(chunk.id)
                    await store.release_chunk(chunk.id, "other")

        run = await harvest(scenario, clock, beside=the_other_finishes)
    assert run.summary.all_done
    assert sum(t.chunks_elsewhere for t in run.summary.tallies.values()) == len(held)
    assert scenario.sim.stats.exports_created == others


async def test_a_chunk_whose_holder_stopped_renewing_is_taken_over(
    tmp_path: Path, clock: FakeClock
) -> None:
    """When the holder's lease runs out, the waiting run harvests the chunk itself."""
    async with simulated(tmp_path, clock, merchants=1) as scenario:
        chunks = await planned_with_one_held(scenario, clock, lease_s=120)
        run = await harvest(scenario, clock)
    assert run.summary.all_done
    assert sum(t.chunks_elsewhere for t in run.summary.tallies.values()) == 0
    assert scenario.sim.stats.exports_created == len(chunks)
    assert_exactly_once(scenario)


async def test_status_shows_which_process_holds_what(
    scenario: Scenario, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    """`harvester status` names host, pid, command and lease end of each held chunk."""
    chunks = await planned_with_one_held(scenario, clock, lease_s=3600)
    config_path = scenario.config_path()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in scenario.environ.items():
            patch.setenv(name, value)
        assert main(["status", "--config", str(config_path), "--json"], clock=clock) == 0
        rows = json.loads(capsys.readouterr().out)
        assert main(["status", "--config", str(config_path)], clock=clock) == 0
        text = capsys.readouterr().out
    held = [h for row in rows for h in row["held"]]
    assert held == [
        {
            "range": chunks[0].range.name,
            "host": "host-other",
            "pid": 1,
            "command": "backfill",
            "lease_until": (clock.now() + timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
        }
    ]
    assert f"held: {chunks[0].range} by host-other pid 1 (backfill)" in text


class StaleFirstListing:
    """A store whose first chunk listing misses what another process has just added."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self.stale = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def chunks_of(self, *args: Any, **kwargs: Any) -> list[ChunkRecord]:
        if self.stale:
            self.stale = False
            return []
        return await self._store.chunks_of(*args, **kwargs)


async def test_a_plan_cut_from_a_stale_listing_is_cut_again(
    store: StateStore, tmp_path: Path
) -> None:
    """Two processes plan overlapping ranges at once: the one whose new chunks collide with
    the other's plans again around them instead of failing."""
    config = load(tmp_path, "merchants:\n  - {id: M1, token: t-token-16-chars, types: [ORDERS]}\n")
    mid = TimeRange(datetime(2025, 1, 15, tzinfo=UTC), datetime(2025, 2, 14, tzinfo=UTC))
    (theirs,) = await store.add_chunks("M1", ExportType.ORDERS, [mid])
    requested = TimeRange(datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 3, 2, tzinfo=UTC))
    stale = StaleFirstListing(store)
    (selection,) = select(config, [], [])
    planned = await commands.due_chunks(cast(StateStore, stale), config, selection, requested)
    assert not stale.stale
    assert sorted(c.range for c in planned) == [
        TimeRange(requested.start, mid.start),
        mid,
        TimeRange(mid.end, requested.end),
    ]
    assert theirs.id in {c.id for c in planned}


async def test_an_export_recorded_again_changes_nothing_and_another_chunks_is_refused(
    store: StateStore, clock: FakeClock
) -> None:
    """Recording an export is idempotent for its chunk (a retried store call) and an error
    for any other: one export id never serves two chunks."""
    chunk = await chunk_id(store)
    (other,) = await store.add_chunks(MERCHANT, ExportType.PAYMENTS, [JANUARY])
    first = await store.record_export(chunk, "E1", "PENDING", 0.0)
    clock.advance(5)
    again = await store.record_export(chunk, "E1", "IN_PROGRESS", 50.0)
    assert again == first
    assert (await store.get_chunk(chunk)).exports_created == 1
    with pytest.raises(StoreError, match=f"export E1 already belongs to chunk {chunk}, not"):
        await store.record_export(other.id, "E1", "PENDING", 0.0)
    assert (await store.get_chunk(other.id)).export_id is None
