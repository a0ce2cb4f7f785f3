"""`harvester status`: what the store says, read-only, in text and JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from harvester.cli import main
from harvester.clover.chunks import ExportType, TimeRange
from harvester.state.records import ExportState
from harvester.state.sqlite import Store
from tests.fakeclock import FakeClock

DAY = timedelta(days=1)
JAN = datetime(2025, 1, 1, tzinfo=UTC)


def month(n: int) -> TimeRange:
    return TimeRange(JAN + n * 30 * DAY, JAN + (n + 1) * 30 * DAY)


async def store_in_every_state(path: Path, clock: FakeClock) -> None:
    """Chunks complete, failed, exporting, downloading, pending and lost-export for one merchant."""
    async with await Store.open(path, clock) as store:
        chunks = await store.add_chunks("SHOP1", ExportType.ORDERS, [month(n) for n in range(6)])
        done, failed, exporting, downloading, _pending, complete_late = chunks
        for chunk, export_id in ((done, "EXPDONE000001"), (complete_late, "EXPDONE000002")):
            await store.record_export(chunk.id, export_id, "PENDING", 0)
            await store.export_done(export_id, None, [])
            await store.complete_chunk(chunk.id)
        await store.record_export(failed.id, "EXPFAIL000001", "PENDING", 0)
        await store.end_export("EXPFAIL000001", ExportState.FAILED, "status FAILED")
        clock.advance(60)
        await store.fail_chunk(failed.id, "3 exports failed, the last: status FAILED")
        await store.record_export(exporting.id, "EXPRUN0000001", "PENDING", 0)
        await store.update_export("EXPRUN0000001", "IN_PROGRESS", 40)
        await store.record_export(downloading.id, "EXPDL00000001", "PENDING", 0)
        await store.export_done("EXPDL00000001", None, ["http://127.0.0.1:1/f"])


@pytest.fixture
def config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TOKEN_S", "secret-status-token")
    path = tmp_path / "config.yaml"
    path.write_text(
        "regions: {local: {base_url: 'http://127.0.0.1:9', windows: always}}\n"
        "merchants:\n"
        "  - {id: SHOP1, region: local, token: '${TOKEN_S}', types: [ORDERS]}\n"
        "  - {id: SHOP2, region: local, token: '${TOKEN_S}', types: [PAYMENTS]}\n"
    )
    return path


async def test_status_shows_every_state(
    config_path: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    """Status reports coverage, gaps, chunk counts, exports in flight and the last error."""
    await store_in_every_state(config_path.parent / "state" / "harvester.sqlite3", clock)
    assert main(["status", "--config", str(config_path), "--json"]) == 0
    rows = {row["merchant"]: row for row in json.loads(capsys.readouterr().out)}
    shop = rows["SHOP1"]
    assert shop["covered_from"] == "2025-01-01T00:00:00Z"
    assert shop["covered_through"] == "2025-01-31T00:00:00Z"
    assert shop["gaps"] == [{"start": "2025-01-31T00:00:00Z", "end": "2025-05-31T00:00:00Z"}]
    assert shop["chunks"] == {
        "pending": 1,
        "exporting": 1,
        "downloading": 1,
        "complete": 2,
        "failed": 1,
    }
    assert [(f["export_id"], f["percent"]) for f in shop["in_flight"]] == [
        ("EXPRUN0000001", 40.0),
        ("EXPDL00000001", 100.0),
    ]
    assert shop["last_error"] == "3 exports failed, the last: status FAILED"
    assert rows["SHOP2"]["covered_from"] is None  # configured, nothing harvested yet

    assert main(["status", "--config", str(config_path)]) == 0
    text = capsys.readouterr().out
    assert "SHOP1 ORDERS: covered 2025-01-01T00:00:00Z through 2025-01-31T00:00:00Z" in text
    assert "in flight: export EXPRUN0000001 IN_PROGRESS 40% for" in text
    assert "last error at" in text
    assert "SHOP2 PAYMENTS: nothing covered yet" in text


def test_status_without_a_store_says_so(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Status on a config that never ran fails cleanly and creates no store."""
    assert main(["status", "--config", str(config_path)]) == 1
    assert "no such file" in capsys.readouterr().err
    assert not (config_path.parent / "state").exists()
