"""`harvester run`: up to the start of today, the lookback re-harvest, and resume after expiry."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harvester import commands
from harvester.cli import main
from harvester.clover.chunks import ExportType, TimeRange
from harvester.config import Config
from harvester.harvest.downloader import Downloader
from harvester.harvest.hosts import Hosts
from harvester.harvest.planning import Selection, select
from harvester.harvest.scheduler import Harvest, MerchantWork
from harvester.harvest.summary import Summary
from harvester.output.folder import FolderOutput, Manifest
from harvester.output.target import ChunkTarget
from harvester.simulator import Account, Faults, Simulator
from harvester.state.records import ChunkRecord, ChunkStatus, ExportRecord, PartRecord
from harvester.state.sqlite import Store
from tests.conftest import Scenario, harvested, ids, merchant_ids, new_token, sim_settings
from tests.fakeclock import FakeClock

JUNE = datetime(2025, 6, 1, tzinfo=UTC)
JULY = datetime(2025, 7, 1, tzinfo=UTC)


@pytest.fixture
def june_clock() -> FakeClock:
    return FakeClock(JULY + timedelta(hours=12))


@pytest.fixture
async def live(tmp_path: Path, june_clock: FakeClock) -> AsyncIterator[Scenario]:
    """Two merchants whose data keeps coming: objects exist up to the clock's now."""
    tokens = {m: new_token(m) for m in merchant_ids(2)}
    settings = sim_settings(
        {m: Account(token=t) for m, t in tokens.items()},
        data_start=JUNE,
        data_end=JULY + timedelta(days=30),
        file_ttl_s=86_400.0,
    )
    async with Simulator(settings, june_clock, Faults()) as sim:
        yield Scenario(tmp_path, sim, tokens, top={"default_start": "2025-06-01"})


async def nightly(scenario: Scenario, clock: FakeClock) -> Summary:
    config = scenario.config()
    return await commands.nightly(config, select(config, [], []), clock, asyncio.Event())


def on_disk(scenario: Scenario, merchant_id: str, export_type: ExportType) -> list[dict[str, Any]]:
    return harvested(scenario.output_dir, merchant_id, export_type.folder)


def expected(
    scenario: Scenario, merchant_id: str, export_type: ExportType, span: TimeRange
) -> list[dict[str, Any]]:
    return scenario.sim.objects(merchant_id, str(export_type), span.start_ms, span.end_ms - 1)


def by_id(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    assert len(ids(objects)) == len(set(ids(objects))), "an object is on disk twice"
    return {str(o["id"]): o for o in objects}


async def test_run_harvests_up_to_the_start_of_today(live: Scenario, june_clock: FakeClock) -> None:
    """The nightly run covers default_start to today's midnight; the next night adds a day."""
    assert (await nightly(live, june_clock)).exit_code == 0
    june = TimeRange(JUNE, JULY)
    for merchant_id in live.tokens:
        for export_type in ExportType:
            assert by_id(on_disk(live, merchant_id, export_type)) == by_id(
                expected(live, merchant_id, export_type, june)
            )
    created = live.sim.stats.exports_created
    assert created == 2 * 2  # one 30-day chunk per merchant and type

    june_clock.advance(86_400)
    assert (await nightly(live, june_clock)).exit_code == 0
    assert live.sim.stats.exports_created == created + 2 * 2  # just [Jul 1, Jul 2)
    merchant_id = next(iter(live.tokens))
    folders = sorted(p.name for p in (live.output_dir / merchant_id / "orders").iterdir())
    assert folders == ["20250601T000000Z_20250701T000000Z", "20250701T000000Z_20250702T000000Z"]


async def test_lookback_reharvest_replaces_whole_chunks(
    live: Scenario, june_clock: FakeClock
) -> None:
    """With lookback_days, chunks overlapping the last days are exported again and swapped in,
    carrying the objects' later edits, with no object twice."""
    live.top["lookback_days"] = 3
    assert (await nightly(live, june_clock)).exit_code == 0
    merchant_id = next(iter(live.tokens))
    june_chunk = live.output_dir / merchant_id / "payments" / "20250601T000000Z_20250701T000000Z"
    first_export = json.loads((june_chunk / "_manifest.json").read_text())["export_id"]
    late_june = [
        o
        for o in on_disk(live, merchant_id, ExportType.PAYMENTS)
        if o["createdTime"] >= int((JULY - timedelta(days=2)).timestamp() * 1000)
    ]
    assert late_june, "the fixture should have objects in the last days of June"
    june_clock.advance(3600)
    edited = live.sim.edit(merchant_id, "PAYMENTS", str(late_june[0]["id"]))

    june_clock.advance(86_400)
    assert (await nightly(live, june_clock)).exit_code == 0
    second_export = json.loads((june_chunk / "_manifest.json").read_text())["export_id"]
    assert second_export != first_export
    span = TimeRange(JUNE, JULY + timedelta(days=1))
    got = by_id(on_disk(live, merchant_id, ExportType.PAYMENTS))
    assert got == by_id(expected(live, merchant_id, ExportType.PAYMENTS, span))
    assert got[str(edited["id"])] == edited
    assert not [p for p in june_chunk.parent.iterdir() if p.name.startswith(".")]


class Crash(BaseException):
    """Stands for the process dying: nothing below catches it."""


class CrashingDownloader(Downloader):
    """Dies as it is asked to download a finished export's files."""

    async def publish_chunk(
        self,
        output: ChunkTarget,
        chunk: ChunkRecord,
        export: ExportRecord,
        published: Manifest | None,
        saved_parts: Sequence[PartRecord],
    ) -> Manifest:
        raise Crash


async def crashing_backfill(
    config: Config, selections: Sequence[Selection], span: TimeRange, clock: FakeClock
) -> None:
    """`backfill`, wired by hand to a downloader that dies."""
    assert config.output_dir is not None
    output = FolderOutput(config.output_dir)
    async with (
        await commands.open_store(config, output, clock) as store,
        aiohttp.ClientSession() as session,
    ):
        work = [
            MerchantWork(s.merchant, tuple(await commands.due_chunks(store, config, s, span)))
            for s in selections
        ]
        rng = random.Random(7)
        hosts = Hosts(config, session, store, clock, rng)
        crashing = CrashingDownloader(
            session, store, clock, config.timing, config.max_concurrent_downloads, rng
        )
        await Harvest(config, store, hosts, crashing, output, clock, asyncio.Event(), rng).run(work)


async def test_export_is_made_again_when_files_expired_during_a_crash(
    scenario: Scenario, clock: FakeClock
) -> None:
    """A run that dies after an export is DONE, restarted after its files expired, exports
    that chunk again and delivers every object once."""
    config = scenario.config()
    span = TimeRange(datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 1, 31, tzinfo=UTC))
    merchant_id = next(iter(scenario.tokens))
    selections = select(config, [merchant_id], [ExportType.ORDERS])

    with pytest.raises(BaseExceptionGroup) as died:
        await crashing_backfill(config, selections, span, clock)
    assert died.group_contains(Crash)

    async with await Store.open(config.state_path, clock) as store:
        (chunk,) = await store.chunks(merchant_id, ExportType.ORDERS)
        assert chunk.status is ChunkStatus.DOWNLOADING
        export = await store.get_export(chunk.export_id or "")
        assert export is not None
        assert export.available_until is not None
    clock.advance((export.available_until - clock.now()).total_seconds() + 1)

    summary = await commands.backfill(config, selections, span, clock, asyncio.Event())
    assert summary.exit_code == 0
    assert scenario.sim.stats.exports_created == 2
    got = on_disk(scenario, merchant_id, ExportType.ORDERS)
    assert by_id(got) == by_id(expected(scenario, merchant_id, ExportType.ORDERS, span))


def test_run_without_a_start_date_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A merchant with nothing harvested, no start: and no default_start stops `run` with exit 2."""
    monkeypatch.setenv("TOKEN_X", "secret-value")
    config = tmp_path / "config.yaml"
    config.write_text(
        "regions: {local: {base_url: 'http://127.0.0.1:9', windows: always}}\n"
        "merchants:\n"
        "  - {id: SHOPA, region: local, token: '${TOKEN_X}', start: 2025-01-01}\n"
        "  - {id: SHOPB, region: local, token: '${TOKEN_X}'}\n"
    )
    assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "merchants[1].start" in err
    assert not (tmp_path / "state").exists()
