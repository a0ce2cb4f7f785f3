"""What processes share per host through the store: export slots, the busy backoff, locks."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from harvester.clover.chunks import ExportType
from harvester.pacing.slots import ExportSlots
from harvester.state.claims import Owner, ProcessLease
from harvester.state.records import ChunkStatus, HostView, StateStore
from harvester.state.shared import SharedSlots
from tests.conftest import BACKENDS, opened_store
from tests.fakeclock import FakeClock
from tests.test_claims import JANUARY, START, process

HOST = "https://api.example"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture(params=BACKENDS)
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[StateStore]:
    """The store on each backend, with processes a, b (lease 300 s) and c."""
    async with opened_store(request.param, request, tmp_path / "state.sqlite3", clock) as opened:
        for name, lease_s in (("a", 30.0), ("b", 300.0), ("c", 300.0)):
            await opened.register_process(process(name, clock, lease_s=lease_s))
        yield opened


async def test_the_slots_of_all_processes_count_against_one_limit(
    store: StateStore, clock: FakeClock
) -> None:
    """Three slots for the host: two processes get three between them, the next waits until
    one is given back or its holder's lease ends."""
    first = await store.take_slot(HOST, "a", "M1", None, 3)
    second = await store.take_slot(HOST, "a", "M1", None, 3)
    third = await store.take_slot(HOST, "b", "M2", None, 3)
    assert None not in (first.slot_id, second.slot_id, third.slot_id)
    refused = await store.take_slot(HOST, "c", "M3", None, 3)
    assert refused.slot_id is None
    assert refused.in_use == 3
    assert third.slot_id is not None
    await store.release_slot(third.slot_id)
    assert (await store.take_slot(HOST, "c", "M3", refused.waiter_id, 3)).slot_id is not None
    clock.advance(31)  # a's lease ends: its two slots with it
    after = await store.take_slot(HOST, "b", "M2", None, 3)
    assert after.slot_id is not None
    assert after.in_use == 2


async def test_a_slot_asked_for_a_chunk_says_whether_its_claim_is_still_held(
    store: StateStore,
) -> None:
    """Granted with a chunk, a slot tells its asker whether it holds the chunk's claim (the
    check before a create, in the same operation); a slot refused confirms nothing."""
    (chunk,) = await store.add_chunks("M1", ExportType.ORDERS, [JANUARY])
    await store.claim_chunk(chunk.id, "b")
    mine = await store.take_slot(HOST, "b", "M1", None, 2, chunk.id)
    assert mine.slot_id is not None
    assert mine.claim_held
    taken_over = await store.take_slot(HOST, "c", "M2", None, 2, chunk.id)
    assert taken_over.slot_id is not None
    assert not taken_over.claim_held
    refused = await store.take_slot(HOST, "a", "M3", None, 2, chunk.id)
    assert refused.slot_id is None
    assert refused.claim_held  # nothing looked at without a slot


async def test_slots_go_round_robin_across_merchants_of_all_processes(store: StateStore) -> None:
    """A merchant served last waits behind another process's merchant that waits too."""
    held = await store.take_slot(HOST, "a", "M1", None, 1)
    assert held.slot_id is not None
    m1_again = await store.take_slot(HOST, "a", "M1", None, 1)
    m2 = await store.take_slot(HOST, "b", "M2", None, 1)
    assert m1_again.slot_id is None
    assert m2.slot_id is None
    await store.release_slot(held.slot_id)
    # M1 asks first, but M2 was never served: the slot is M2's.
    assert (await store.take_slot(HOST, "a", "M1", m1_again.waiter_id, 1)).slot_id is None
    assert (await store.take_slot(HOST, "b", "M2", m2.waiter_id, 1)).slot_id is not None


async def test_a_busy_answer_halves_the_shared_limit_and_holds_everyone_back(
    store: StateStore, clock: FakeClock
) -> None:
    """After a busy 503 no process gets a slot until the backoff ends; the limit drops to what
    the process that saw it allows, and exports that go through raise it again."""
    assert await store.slot_busy(HOST, clock.now() + timedelta(seconds=10), 4, 2) == 2
    held_back = await store.take_slot(HOST, "b", "M2", None, 4)
    assert held_back.slot_id is None
    assert held_back.busy_until == clock.now() + timedelta(seconds=10)
    clock.advance(10)
    assert (await store.take_slot(HOST, "b", "M2", held_back.waiter_id, 4)).slot_id is not None
    assert await store.slot_went_through(HOST, 4) == 2
    assert await store.slot_went_through(HOST, 4) == 3
    assert await store.slot_busy(HOST, clock.now(), 4, 1) == 1
    assert await store.slot_busy(HOST, clock.now(), 4, 3) == 1  # never raised by a busy


async def test_one_refresh_lock_per_merchant_across_processes(
    store: StateStore, clock: FakeClock
) -> None:
    """A merchant's refresh lock is one process's at a time; a dead holder's passes on."""
    assert await store.lock_token("M1", "a") is None
    holder = await store.lock_token("M1", "b")
    assert holder is not None
    assert holder.id == "a"
    assert await store.lock_token("M2", "b") is None
    await store.unlock_token("M1", "a")
    assert await store.lock_token("M1", "b") is None
    assert await store.lock_token("M2", "a") is not None
    clock.advance(301)
    await store.register_process(process("d", clock, lease_s=30))
    assert await store.lock_token("M2", "d") is None


async def test_the_processes_on_a_host_are_its_users_while_their_leases_run(
    store: StateStore, clock: FakeClock
) -> None:
    """Each process that joins a host is one more user; one that leaves, ends or whose lease
    runs out is one fewer. Every such change moves the host's version on."""
    views = [await store.join_host(HOST, name, 3) for name in ("a", "b", "c")]
    assert [view.users for view in views] == [1, 2, 3]
    assert [view.version for view in views] == sorted({view.version for view in views})
    await store.leave_host(HOST, "b")
    assert (await store.host_view(HOST)).users == 2
    assert await store.host_version(HOST) > views[-1].version
    clock.advance(31)  # a's lease runs out
    assert (await store.host_view(HOST)).users == 1
    before = await store.host_version(HOST)
    await store.end_process("c")
    assert await store.host_version(HOST) > before
    assert (await store.host_view(HOST)).users == 0
    assert await store.host_view("https://elsewhere.example") == HostView(0, 0, None)


async def test_an_app_pause_is_the_hosts_and_only_ever_extends(
    store: StateStore, clock: FakeClock
) -> None:
    """A pause written for the host is what every process reads; a shorter one later leaves
    the end as it was and does not wake anyone."""
    until = clock.now() + timedelta(seconds=5)
    assert await store.pause_app(HOST, until, 3) == until
    view = await store.host_view(HOST)
    assert view.app_paused_until == until
    assert await store.pause_app(HOST, clock.now() + timedelta(seconds=2), 3) == until
    assert await store.host_version(HOST) == view.version


async def test_what_frees_a_slot_moves_the_hosts_version_on(
    store: StateStore, clock: FakeClock
) -> None:
    """A slot given back, a waiter leaving the queue, a backoff ended and a holder gone each
    move the version on: waiters in other processes look again."""
    held = await store.take_slot(HOST, "a", "M1", None, 1)
    waiting = await store.take_slot(HOST, "b", "M2", None, 1)
    assert held.slot_id is not None
    assert waiting.waiter_id is not None
    steps = [
        store.release_slot(held.slot_id),
        store.leave_slot_queue(waiting.waiter_id),
        store.slot_busy(HOST, clock.now(), 1, 1),
        store.slot_went_through(HOST, 1),
    ]
    for step in steps:
        before = await store.host_version(HOST)
        await step
        assert await store.host_version(HOST) > before
    again = await store.take_slot(HOST, "b", "M2", None, 1)
    assert again.slot_id is not None
    before = await store.host_version(HOST)
    await store.end_process("b")
    assert await store.host_version(HOST) > before


async def test_an_export_going_through_on_a_settled_host_writes_nothing(
    store: StateStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At its maximum with no backoff when the slot was granted, the host has nothing to
    change when an export goes through: no write. After a busy answer it is written (the
    limit grows back), and once back at the maximum nothing is written again."""
    lease = ProcessLease(store, Owner("b", "host-b", 1, "m", "backfill"), clock, 300)
    shared = SharedSlots(ExportSlots(2), lease, HOST, clock, asyncio.Event(), 1.0, random.Random(1))
    written: list[int] = []
    original = store.slot_went_through

    async def counted(host: str, maximum: int) -> int:
        written.append(await original(host, maximum))
        return written[-1]

    monkeypatch.setattr(store, "slot_went_through", counted)
    async with shared.hold("M1"):
        await shared.went_through()
    assert written == []
    async with shared.hold("M1"):
        await shared.busy(clock.now(), 1)
        await shared.went_through()
    assert written == [2]  # a run of one at a limit of one: back to the maximum
    async with shared.hold("M1"):
        await shared.went_through()
    assert written == [2]
    assert shared.shared_limit == 2


async def test_an_exports_done_gives_its_slot_back_in_the_same_operation(
    store: StateStore, clock: FakeClock
) -> None:
    """DONE recorded with the slot's id frees the slot and wakes the host's waiters; the
    block holding it then has nothing left to give back."""
    lease = ProcessLease(store, Owner("b", "host-b", 1, "m", "backfill"), clock, 300)
    shared = SharedSlots(ExportSlots(1), lease, HOST, clock, asyncio.Event(), 1.0, random.Random(1))
    (chunk,) = await store.add_chunks("M1", ExportType.ORDERS, [JANUARY])
    await store.record_export(chunk.id, "E1", "PENDING", 0.0)
    async with shared.hold("M1") as slot:
        assert slot.id is not None
        refused = await store.take_slot(HOST, "c", "M2", None, 1)
        assert refused.slot_id is None
        before = await store.host_version(HOST)
        done, _ = await store.export_done_held(
            "E1", None, ["https://files/1"], slot.given_back(), chunk.id, "b"
        )
        assert done.urls == ("https://files/1",)
        assert slot.id is None
        assert await store.host_version(HOST) > before
        assert (await store.take_slot(HOST, "c", "M2", refused.waiter_id, 1)).slot_id is not None
    assert (await store.get_chunk(chunk.id)).status is ChunkStatus.DOWNLOADING


async def test_a_first_ask_takes_its_merchants_last_grant_into_line(store: StateStore) -> None:
    """A merchant asking anew, served more recently than a merchant waiting, goes after it:
    its place in line counts its own last grant, though it has no waiter row yet."""
    first = await store.take_slot(HOST, "b", "M2", None, 1)  # M2's grant: 1
    assert first.slot_id is not None
    await store.release_slot(first.slot_id)
    mine = await store.take_slot(HOST, "b", "M1", None, 1)  # M1's grant: 2
    assert mine.slot_id is not None
    waiting = await store.take_slot(HOST, "c", "M2", None, 1)
    assert waiting.slot_id is None
    await store.release_slot(mine.slot_id)
    again = await store.take_slot(HOST, "b", "M1", None, 1)
    assert again.slot_id is None  # M2, served less recently, is first
    granted = await store.take_slot(HOST, "c", "M2", waiting.waiter_id, 1)
    assert granted.slot_id is not None
