"""What polling predicts with: durations from the store's covered chunks and from this run."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from harvester.clover.chunks import ExportType, TimeRange
from harvester.harvest.durations import ExportDurations
from harvester.state.records import StateStore
from harvester.state.sqlite import Store
from tests.conftest import BACKENDS, DATA_START, opened_store
from tests.fakeclock import FakeClock

MERCHANT = "M000TESTSHOP0"
OTHER = "M001TESTSHOP1"
HOST = "local"
DAY = timedelta(days=1)
SPAN_S = 30 * DAY.total_seconds()  # a month(n)'s


def month(n: int) -> TimeRange:
    return TimeRange(DATA_START + n * 30 * DAY, DATA_START + (n + 1) * 30 * DAY)


async def export_taking(
    store: StateStore,
    clock: FakeClock,
    n: int,
    seconds: float,
    type: ExportType = ExportType.PAYMENTS,
) -> None:
    """Month n of MERCHANT's payments (or `type`) exported in `seconds`, and covered."""
    [chunk] = await store.add_chunks(MERCHANT, type, [month(n)])
    await store.record_export(chunk.id, f"E{n}{type.value}", "PENDING", 0.0)
    clock.advance(seconds)
    await store.export_done(f"E{n}{type.value}", None, ["https://files/1"])
    await store.complete_chunk(chunk.id)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_merchants_durations_come_from_its_covered_chunks(
    tmp_path: Path, clock: FakeClock, backend: str, request: pytest.FixtureRequest
) -> None:
    """The latest `latest` DONE exports of covered chunks, in one read; a chunk not covered
    counts for nothing; a shorter range scales them down."""
    async with opened_store(backend, request, tmp_path / "state.sqlite3", clock) as store:
        for n, seconds in enumerate((900.0, 600.0, 300.0, 120.0)):
            await export_taking(store, clock, n, seconds)
        [open_chunk] = await store.add_chunks(MERCHANT, ExportType.PAYMENTS, [month(5)])
        await store.record_export(open_chunk.id, "E5PAYMENTS", "PENDING", 0.0)
        durations = ExportDurations(store, latest=3)

        found = await durations.expected(HOST, MERCHANT, ExportType.PAYMENTS, month(6))
        assert found == (120.0, 300.0, 600.0)
        three_days = TimeRange(month(6).start, month(6).start + 3 * DAY)
        assert await durations.expected(HOST, MERCHANT, ExportType.PAYMENTS, three_days) == (
            12.0,
            30.0,
            60.0,
        )
        durations.observe(HOST, MERCHANT, ExportType.PAYMENTS, month(6), 240.0)
        found = await durations.expected(HOST, MERCHANT, ExportType.PAYMENTS, month(7))
        assert found == (120.0, 240.0, 300.0)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_both_types_of_a_merchant_come_in_one_read(
    tmp_path: Path, clock: FakeClock, backend: str, request: pytest.FixtureRequest
) -> None:
    """The store answers for every type at once, the latest `latest` of each, oldest first;
    the run reads a merchant once: its other type's history is what that read found."""
    async with opened_store(backend, request, tmp_path / "state.sqlite3", clock) as store:
        for n, seconds in enumerate((900.0, 600.0, 300.0)):
            await export_taking(store, clock, n, seconds)
        for n, seconds in enumerate((50.0, 70.0)):
            await export_taking(store, clock, n, seconds, ExportType.ORDERS)
        assert await store.past_durations(MERCHANT, 2) == {
            ExportType.PAYMENTS: [(600.0, SPAN_S), (300.0, SPAN_S)],
            ExportType.ORDERS: [(50.0, SPAN_S), (70.0, SPAN_S)],
        }
        assert await store.past_durations(OTHER, 2) == {t: [] for t in ExportType}

        durations = ExportDurations(store, latest=2)
        assert await durations.expected(HOST, MERCHANT, ExportType.PAYMENTS, month(6)) == (
            300.0,
            600.0,
        )
        await export_taking(store, clock, 2, 10.0, ExportType.ORDERS)  # after the read
        assert await durations.expected(HOST, MERCHANT, ExportType.ORDERS, month(6)) == (
            50.0,
            70.0,
        )


async def test_a_merchant_not_seen_borrows_the_shorter_half_of_its_hosts(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Nothing of its own: the shorter half of what other merchants of the host took; nothing
    on the host either, or history turned off: nothing."""
    async with await Store.open(tmp_path / "state.sqlite3", clock) as store:
        durations = ExportDurations(store, latest=20)
        assert await durations.expected(HOST, OTHER, ExportType.ORDERS, month(0)) == ()
        for seconds in (400.0, 100.0, 300.0, 200.0, 0.0):
            durations.observe(HOST, MERCHANT, ExportType.PAYMENTS, month(0), seconds)
        assert await durations.expected(HOST, OTHER, ExportType.ORDERS, month(0)) == (
            100.0,
            200.0,
        )
        assert await durations.expected("elsewhere", OTHER, ExportType.ORDERS, month(0)) == ()

        off = ExportDurations(store, latest=0)
        off.observe(HOST, MERCHANT, ExportType.PAYMENTS, month(0), 100.0)
        assert await off.expected(HOST, MERCHANT, ExportType.PAYMENTS, month(0)) == ()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_merchant_new_to_the_store_borrows_the_latest_of_its_type_until_the_host_learns(
    tmp_path: Path, clock: FakeClock, backend: str, request: pytest.FixtureRequest
) -> None:
    """Before any export of its host was seen, a merchant with no history of its own borrows
    the shorter half of the latest `latest` covered exports of its type of any merchant, read
    once per type; once its host has seen an export, the host's; the other type has none."""
    async with opened_store(backend, request, tmp_path / "state.sqlite3", clock) as store:
        for n, seconds in enumerate((900.0, 100.0, 400.0, 300.0, 200.0)):
            await export_taking(store, clock, n, seconds)
        durations = ExportDurations(store, latest=4)

        # The latest four: 100, 400, 300, 200 (not the oldest, 900); the shorter half of them.
        assert await durations.expected(HOST, OTHER, ExportType.PAYMENTS, month(6)) == (
            100.0,
            200.0,
        )
        assert await durations.expected(HOST, OTHER, ExportType.ORDERS, month(6)) == ()
        await export_taking(store, clock, 5, 10.0)  # read once: not seen by this run's reads
        assert await durations.expected(HOST, OTHER, ExportType.PAYMENTS, month(6)) == (
            100.0,
            200.0,
        )
        durations.observe(HOST, MERCHANT, ExportType.ORDERS, month(0), 50.0)
        assert await durations.expected(HOST, OTHER, ExportType.PAYMENTS, month(6)) == (50.0,)
