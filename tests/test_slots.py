from __future__ import annotations

import asyncio
import random
from contextlib import AbstractAsyncContextManager

import pytest

from harvester.pacing.slots import ExportSlots, Slot
from tests.conftest import until
from tests.fakeclock import FakeClock


class Exports:
    """Tasks that ask for a slot at a given time and hold it for a while; records the grants."""

    def __init__(self, clock: FakeClock, slots: ExportSlots) -> None:
        self.clock = clock
        self.slots = slots
        self.granted: list[tuple[str, Slot]] = []

    async def run(self, name: str, merchant_id: str, ask_at_s: float, hold_s: float) -> None:
        await self.clock.sleep(ask_at_s - self.clock.monotonic())
        async with self.slots.hold(merchant_id) as slot:
            self.granted.append((name, slot))
            await self.clock.sleep(hold_s)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.granted]


class ByHand:
    """Enters and leaves slot blocks by hand, to act at exact moments of a test.

    It keeps every block it opened: an abandoned block is closed, releasing its slot, whenever
    the garbage collector gets to it.
    """

    def __init__(self, slots: ExportSlots) -> None:
        self.slots = slots
        self.blocks: dict[str, AbstractAsyncContextManager[Slot]] = {}

    async def enter(self, name: str, merchant_id: str) -> Slot:
        block = self.slots.hold(merchant_id)
        self.blocks[name] = block
        return await block.__aenter__()

    def enter_later(self, name: str, merchant_id: str) -> asyncio.Task[Slot]:
        return asyncio.create_task(self.enter(name, merchant_id))

    async def leave(self, name: str) -> None:
        await self.blocks[name].__aexit__(None, None, None)


async def test_a_storm_never_grants_beyond_the_limit(clock: FakeClock) -> None:
    """50 exports from 5 merchants, with busy 503s along the way, never hold more than the limit."""
    slots = ExportSlots(4)
    rng = random.Random(3)
    over_limit: list[tuple[int, int]] = []
    limits_seen: set[int] = set()

    async def export(merchant_id: str, created: bool) -> None:
        # Whole seconds here and half seconds for the busy 503s: a grant and its check happen
        # at one instant, with no limit drop in between.
        await clock.sleep(rng.randint(0, 30))
        async with slots.hold(merchant_id) as slot:
            if slots.in_use > slots.limit:
                over_limit.append((slots.in_use, slots.limit))
            limits_seen.add(slots.limit)
            if created:  # the others' POSTs are still on their way: they hold, not run
                slots.went_through(slot)
            await clock.sleep(rng.randint(5, 120))

    async def server_says_busy() -> None:
        for at_s in (10.5, 25.5, 60.5, 200.5):
            await clock.sleep(at_s - clock.monotonic())
            slots.busy()

    async with asyncio.TaskGroup() as group:
        group.create_task(server_says_busy())
        for n in range(50):
            group.create_task(export(f"m{n % 5}", created=n % 3 != 0))
    assert over_limit == []
    assert limits_seen <= {1, 2, 3, 4}
    assert min(limits_seen) < 4, "the busy answers lowered the limit"
    assert slots.max_in_use == 4
    assert slots.in_use == 0
    assert slots.waiting == 0


async def test_singles_are_served_before_a_hogs_backlog(clock: FakeClock) -> None:
    """A merchant queueing 10 exports does not keep two merchants with one each waiting."""
    slots = ExportSlots(1)
    exports = Exports(clock, slots)
    async with asyncio.TaskGroup() as group:
        for n in range(10):
            group.create_task(exports.run(f"hog{n}", "hog", 0.0, 1.0))
        group.create_task(exports.run("a", "a", 0.0, 1.0))
        group.create_task(exports.run("b", "b", 0.0, 1.0))
    assert exports.names == ["hog0", "a", "b", *(f"hog{n}" for n in range(1, 10))]
    assert [slot.order for _, slot in exports.granted] == list(range(1, 13))


async def test_least_recently_served_goes_first_not_first_come(clock: FakeClock) -> None:
    """Of two waiting merchants, the one served longer ago goes first, even if it asked later."""
    slots = ExportSlots(1)
    exports = Exports(clock, slots)
    async with asyncio.TaskGroup() as group:
        group.create_task(exports.run("y first", "y", 0.0, 1.0))
        group.create_task(exports.run("x first", "x", 0.0, 1.0))
        group.create_task(exports.run("z", "z", 0.5, 8.0))
        group.create_task(exports.run("x again", "x", 3.0, 1.0))
        group.create_task(exports.run("y again", "y", 4.0, 1.0))
    assert exports.names == ["y first", "x first", "z", "y again", "x again"]


async def test_one_merchants_waiters_go_in_arrival_order(clock: FakeClock) -> None:
    """Exports of one merchant get slots in the order they asked."""
    slots = ExportSlots(2)
    exports = Exports(clock, slots)
    async with asyncio.TaskGroup() as group:
        for n in range(8):
            group.create_task(exports.run(str(n), "m1", n * 0.1, 1.0))
    assert exports.names == [str(n) for n in range(8)]


@pytest.mark.parametrize(
    ("maximum", "events", "limit"),
    [
        (8, "", 8),
        (8, "B", 1),  # nothing running: never below 1
        (1, "B", 1),
        (8, "WWWB", 3),  # three running when the server said busy
        (8, "WWWBB", 3),  # the rest of a burst changes nothing
        (8, "WWWBBBBB", 3),
        (8, "WO" + "B", 2),  # an orphan runs too
        (8, "WWWB" + "W" * 3, 4),  # then `limit` in a row probe upwards by one
        (8, "WWWB" + "W" * 3 + "W" * 4, 5),
        (8, "WWWB" + "W" * 3 + "B", 4),  # a new burst: 7 running, but a busy never raises
        (8, "W" * 100, 8),
        (3, "W" * 10 + "B", 3),
        (8, "B" + "W", 2),
        (8, "B" + "W" + "WW", 3),
    ],
)
def test_limit_follows_what_runs(maximum: int, events: str, limit: int) -> None:
    """The first busy answer of a burst sets the limit to the exports running (W created, O an
    orphan), never below 1 nor up; `limit` creates in a row without one add one."""
    slots = ExportSlots(maximum)
    for order, event in enumerate(events, 1):
        if event == "B":
            slots.busy()
        elif event == "O":
            slots.hold_orphan(Slot("m", order))
        else:
            slots.went_through(Slot("m", order))
    assert slots.limit == limit
    assert slots.maximum == maximum


async def test_an_orphan_keeps_its_slot_after_its_holder_left() -> None:
    """A create that lost its answer leaves its slot taken, counted as running, until the
    orphan is released; then a waiter gets it."""
    slots = ExportSlots(1)
    hand = ByHand(slots)
    slot = await hand.enter("lost", "m1")
    release = slots.hold_orphan(slot)
    await hand.leave("lost")
    assert (slots.in_use, slots.running, slots.orphans) == (1, 1, 1)
    waiter = hand.enter_later("next", "m2")
    await until(lambda: slots.waiting == 1)
    release()
    release()  # a second call gives back nothing more
    assert (await waiter).merchant_id == "m2"
    assert (slots.in_use, slots.running, slots.orphans) == (1, 0, 0)


async def test_an_orphan_released_before_its_holder_left_frees_the_slot_once() -> None:
    """Released while its lane still holds the slot, the slot goes back when the lane leaves."""
    slots = ExportSlots(2)
    hand = ByHand(slots)
    slot = await hand.enter("lost", "m1")
    slots.hold_orphan(slot)()
    assert slots.in_use == 1
    await hand.leave("lost")
    assert (slots.in_use, slots.orphans) == (0, 0)


def test_maximum_below_one_is_rejected() -> None:
    """A host that may run no export at all is a ValueError."""
    with pytest.raises(ValueError, match="maximum"):
        ExportSlots(0)


async def test_after_a_drop_no_one_is_granted_until_in_use_is_under_the_limit() -> None:
    """When the limit falls below the slots in use, waiters wait until enough are released."""
    slots = ExportSlots(4)
    hand = ByHand(slots)
    for n in range(4):
        slot = await hand.enter(f"held{n}", f"m{n}")
        if n < 2:
            slots.runs(slot)  # two exports created; the other two POSTs are on their way
    slots.busy()
    assert slots.limit == 2
    late = hand.enter_later("late", "m9")
    await until(lambda: slots.waiting == 1)

    await hand.leave("held0")
    await hand.leave("held1")
    assert slots.in_use == 2
    assert slots.waiting == 1
    await hand.leave("held2")
    assert (await late).merchant_id == "m9"
    assert slots.in_use == 2


async def test_a_rising_limit_lets_a_waiter_in() -> None:
    """When successes raise the limit, a waiter gets the new slot at once."""
    slots = ExportSlots(2)
    hand = ByHand(slots)
    slots.busy()
    held = await hand.enter("held", "m1")
    waiter = hand.enter_later("waiter", "m2")
    await until(lambda: slots.waiting == 1)
    slots.went_through(held)
    assert slots.limit == 2
    assert (await waiter).merchant_id == "m2"
    assert slots.in_use == 2


async def test_cancelled_while_waiting_leaks_nothing() -> None:
    """A waiter cancelled in the queue leaves it, and the slots are all there afterwards."""
    slots = ExportSlots(2)
    hand = ByHand(slots)
    await hand.enter("held0", "m0")
    await hand.enter("held1", "m1")
    waiters = [hand.enter_later(f"waiter{n}", f"m{n % 3}") for n in range(6)]
    await until(lambda: slots.waiting == 6)
    for task in waiters:
        task.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert slots.waiting == 0
    assert slots.in_use == 2
    await hand.leave("held0")
    await hand.leave("held1")
    assert slots.in_use == 0
    await hand.enter("fresh0", "m3")
    await hand.enter("fresh1", "m4")
    assert slots.in_use == 2


async def test_error_or_cancellation_inside_the_block_releases() -> None:
    """A slot is given back when its block raises or its task is cancelled."""
    slots = ExportSlots(2)

    async def failing() -> None:
        async with slots.hold("m1"):
            raise RuntimeError("export went wrong")

    with pytest.raises(RuntimeError, match="export went wrong"):
        await failing()
    assert slots.in_use == 0

    inside = asyncio.Event()

    async def hanging() -> None:
        async with slots.hold("m1"):
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(hanging())
    await inside.wait()
    assert slots.in_use == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert slots.in_use == 0


async def test_cancelled_as_it_is_granted_hands_the_slot_on() -> None:
    """A waiter cancelled in the instant it is granted passes the slot to the next waiter."""
    slots = ExportSlots(1)
    hand = ByHand(slots)
    await hand.enter("first", "m1")
    unlucky = hand.enter_later("unlucky", "m2")
    await until(lambda: slots.waiting == 1)
    next_in_line = hand.enter_later("next", "m3")
    await until(lambda: slots.waiting == 2)

    await hand.leave("first")
    assert slots.in_use == 1  # granted to `unlucky`, which has not run yet
    unlucky.cancel()
    await asyncio.gather(unlucky, return_exceptions=True)

    assert unlucky.cancelled()
    assert slots.waiting == 0  # handed on, not leaked
    assert (await next_in_line).merchant_id == "m3"
    assert slots.in_use == 1


async def test_cancelled_before_its_turn_is_skipped() -> None:
    """A waiter cancelled but not yet unwound when a slot frees is passed over, not granted."""
    slots = ExportSlots(1)
    hand = ByHand(slots)
    await hand.enter("first", "m1")
    cancelled = hand.enter_later("cancelled", "m2")
    await until(lambda: slots.waiting == 1)
    next_in_line = hand.enter_later("next", "m3")
    await until(lambda: slots.waiting == 2)

    cancelled.cancel()
    await hand.leave("first")
    await asyncio.gather(cancelled, return_exceptions=True)

    assert cancelled.cancelled()
    assert (await next_in_line).merchant_id == "m3"
    assert slots.in_use == 1
    assert slots.waiting == 0


@pytest.mark.parametrize("cancel_at_s", [n / 2 for n in range(13)])
async def test_cancellation_at_any_moment_leaks_nothing(
    clock: FakeClock, cancel_at_s: float
) -> None:
    """Cancelling half the exports at any instant leaves every slot free once the rest finish."""
    slots = ExportSlots(3)
    exports = Exports(clock, slots)
    rng = random.Random(int(cancel_at_s * 2))
    tasks = [
        asyncio.create_task(exports.run(str(n), f"m{n % 4}", rng.randint(0, 3), rng.randint(1, 3)))
        for n in range(20)
    ]
    await clock.sleep(cancel_at_s)
    for task in tasks[::2]:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    assert slots.in_use == 0
    assert slots.waiting == 0
    assert slots.max_in_use <= 3
    hand = ByHand(slots)
    for n in range(3):
        await hand.enter(f"fresh{n}", f"m{n}")
    assert slots.in_use == 3
