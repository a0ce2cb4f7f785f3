"""The state in PostgreSQL: the state_url setting, `migrate-state`, and `status` reading it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import psycopg
import pytest

from harvester.cli import main
from harvester.clock import SystemClock
from harvester.clover.chunks import ExportType
from harvester.config import Config
from harvester.errors import ConfigError, StoreError
from harvester.state.backends import read_state
from harvester.state.postgres import PgStore, read_export_durations, safe_url
from harvester.state.records import PartRecord
from harvester.state.sqlite import Store
from tests.conftest import NOW, Scenario
from tests.fakeclock import FakeClock
from tests.pgserver import PgServer
from tests.test_config import MERCHANT, load
from tests.test_store import JANUARY

URL = "postgresql://harvester@db.example:5432/harvest"


def test_state_url_is_read_with_its_password_from_the_environment(tmp_path: Path) -> None:
    """state_url takes ${VAR} for the password; the config's repr never shows it."""
    config = load(
        tmp_path,
        "state_url: postgresql://harvester:${PGPASS}@db.example:5432/harvest\n" + MERCHANT,
        {"PGPASS": "s3cret-pw"},
    )
    assert config.state_url is not None
    assert config.state_url.reveal() == "postgresql://harvester:s3cret-pw@db.example:5432/harvest"
    assert "s3cret-pw" not in repr(config)
    assert safe_url(config.state_url.reveal()) == URL


def test_without_state_url_the_state_is_sqlite(tmp_path: Path) -> None:
    """By default the state is the SQLite file at state_path."""
    assert load(tmp_path, MERCHANT).state_url is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"state_path: s.sqlite3\nstate_url: {URL}\n", "state_path, state_url: give one of them"),
        ("state_url: mysql://u@h/db\n", "state_url: expected postgresql://"),
        ("state_url: postgresql://u@h\n", "state_url: expected postgresql://"),
        ("state_url: postgresql://u:${NOPE}@h/db\n", "environment variable NOPE is not set"),
    ],
)
def test_bad_state_settings_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    """Both keys, another scheme, no database, or a missing variable: a clear ConfigError."""
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, text + MERCHANT)


def test_a_password_written_in_the_url_is_not_echoed(tmp_path: Path) -> None:
    """A refused state_url's message does not repeat what was written (it may hold one)."""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, "state_url: mysql://u:hunter2@h/db\n" + MERCHANT)
    assert "hunter2" not in str(caught.value)


async def test_migrate_state_copies_a_sqlite_state_into_postgresql(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Chunks, exports, parts and refresh tokens move with their ids; the run that follows
    re-attaches to the moved export; a second copy into a filled state is refused."""
    path = tmp_path / "state.sqlite3"
    clock = SystemClock()
    async with await Store.open(path, clock) as store:
        (chunk,) = await store.add_chunks("M1", ExportType.ORDERS, [JANUARY])
        await store.record_export(chunk.id, "EXPORT1", "IN_PROGRESS", 40.0)
        await store.export_done("EXPORT1", None, ["https://files/1"])
        await store.record_part(PartRecord("EXPORT1", 1, 0, 10, "ab" * 32, 3))
        await store.save_refresh_token("M1", "refresh-tok", None)
        (done,) = await store.add_chunks("M1", ExportType.PAYMENTS, [JANUARY])
        await store.complete_chunk(done.id)
    assert (
        await asyncio.to_thread(
            main, ["migrate-state", "--from-path", str(path), "--to-url", pg_url]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "copied 2 chunks, 1 exports, 1 parts, 1 refresh_tokens" in out
    async with await PgStore.open(pg_url, clock) as moved:
        (orders,) = await moved.chunks("M1", ExportType.ORDERS)
        assert orders.id == chunk.id
        assert orders.export_id == "EXPORT1"
        export = await moved.get_export("EXPORT1")
        assert export is not None
        assert export.urls == ("https://files/1",)
        assert [p.sha256 for p in await moved.parts("EXPORT1")] == ["ab" * 32]
        assert await moved.refresh_token("M1") == ("refresh-tok", None)
        assert await moved.covered("M1", ExportType.PAYMENTS) == [JANUARY]
        # New chunks get new ids after the copied ones.
        (later,) = await moved.add_chunks("M2", ExportType.ORDERS, [JANUARY])
        assert later.id > max(chunk.id, done.id)
    assert (
        await asyncio.to_thread(
            main, ["migrate-state", "--from-path", str(path), "--to-url", pg_url]
        )
        == 1
    )
    assert "already holds 3 chunks" in capsys.readouterr().err


def test_migrate_state_refuses_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing file, another scheme or an unset variable: exit 2 naming the argument."""
    missing = str(tmp_path / "none.sqlite3")
    assert main(["migrate-state", "--from-path", missing, "--to-url", URL]) == 2
    assert "--from-path" in capsys.readouterr().err
    path = tmp_path / "state.sqlite3"
    path.write_bytes(b"")
    assert main(["migrate-state", "--from-path", str(path), "--to-url", "mysql://h/db"]) == 2
    assert "--to-url: expected postgresql://" in capsys.readouterr().err
    monkeypatch.delenv("PG_SECRET", raising=False)
    bad = "postgresql://u:${PG_SECRET}@h/db"
    assert main(["migrate-state", "--from-path", str(path), "--to-url", bad]) == 2
    assert "environment variable PG_SECRET is not set" in capsys.readouterr().err


async def test_status_reads_a_postgresql_state(
    scenario: Scenario, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status` with state_url shows what the PostgreSQL state holds."""
    scenario.top["state_url"] = pg_url
    config_path = scenario.config_path()
    text = config_path.read_text().replace("state_path: state/harvester.sqlite3\n", "")
    config_path.write_text(text)
    merchant = next(iter(scenario.tokens))
    async with await PgStore.open(pg_url, SystemClock()) as store:
        (chunk,) = await store.add_chunks(merchant, ExportType.ORDERS, [JANUARY])
        await store.complete_chunk(chunk.id)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in scenario.environ.items():
            patch.setenv(name, value)
        assert (
            await asyncio.to_thread(main, ["status", "--config", str(config_path), "--json"]) == 0
        )
    rows = json.loads(capsys.readouterr().out)
    (orders,) = [r for r in rows if r["merchant"] == merchant and r["type"] == "ORDERS"]
    assert orders["chunks"]["complete"] == 1


def test_plan_reads_nothing_from_an_empty_postgresql_database(pg_url: str, tmp_path: Path) -> None:
    """Before the first run the database holds no state: plan and status see none."""
    config = load(tmp_path, f"state_url: {pg_url}\n" + MERCHANT)
    assert isinstance(config, Config)
    assert read_state(config) is None


async def test_plan_reads_export_durations_from_postgresql(pg_url: str) -> None:
    """plan's estimate reads how long exports took from the PostgreSQL state (none before
    the first run)."""
    assert await read_export_durations(pg_url) == []
    clock = FakeClock(NOW)
    async with await PgStore.open(pg_url, clock) as store:
        (chunk,) = await store.add_chunks("M1", ExportType.ORDERS, [JANUARY])
        await store.record_export(chunk.id, "EXPORT1", "PENDING", 0.0)
        clock.advance(42)
        await store.export_done("EXPORT1", None, ["https://files/1"])
    assert await read_export_durations(pg_url) == [42.0]


async def test_first_opens_at_once_migrate_once(pg_url: str) -> None:
    """Several processes' first runs race to create the schema: each open succeeds."""
    clock = SystemClock()
    stores = await asyncio.gather(*(PgStore.open(pg_url, clock) for _ in range(4)))
    try:
        for store in stores:
            assert await store.chunks() == []
    finally:
        for store in stores:
            await store.close()


async def test_connection_errors_never_show_the_password(pg_server: PgServer) -> None:
    """A refused connection names the database without the password given in the URL."""
    url = f"postgresql://nobody:hunter2@127.0.0.1:{pg_server.port}/no_such_database"
    with pytest.raises(StoreError) as caught:
        await PgStore.open(url, SystemClock())
    message = str(caught.value)
    assert "hunter2" not in message
    assert f"postgresql://nobody@127.0.0.1:{pg_server.port}/no_such_database" in message


async def test_a_write_lands_though_its_caller_is_cancelled(pg_url: str) -> None:
    """As on SQLite (tests/test_store.py): a store call, once made, lands even if its caller
    is cancelled while it waits (here for a row another connection holds), which is why
    callers do not shield their store calls."""
    async with await PgStore.open(pg_url, FakeClock(NOW)) as store:
        (chunk,) = await store.add_chunks("M1CANCELSHOP", ExportType.ORDERS, [JANUARY])
        blocker = await psycopg.AsyncConnection.connect(pg_url)
        async with blocker, blocker.transaction():
            await blocker.execute("SELECT 1 FROM chunks WHERE id = %s FOR UPDATE", (chunk.id,))
            write = asyncio.create_task(store.record_export(chunk.id, "E1", "PENDING", 0.0))
            await asyncio.sleep(0)  # the call is made
            write.cancel()
            with pytest.raises(asyncio.CancelledError):
                await write
            assert (await store.get_chunk(chunk.id)).export_id is None  # still held back
        for _ in range(500):  # the lock is gone: the write goes through on its own
            if (await store.get_chunk(chunk.id)).export_id is not None:
                break
            await asyncio.sleep(0.01)
        assert (await store.get_chunk(chunk.id)).export_id == "E1"
        recorded = await store.get_export("E1")
        assert recorded is not None
        assert recorded.chunk_id == chunk.id
