"""`harvester load`: the published chunks into tables with dlt, on a real DuckDB, a real
PostgreSQL and a real S3 server (SeaweedFS): merge on id, exactly once, only what holds up."""

from __future__ import annotations

import asyncio
import io
import json
import os
import pty
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest

from harvester import commands
from harvester.cli import main
from harvester.clover.chunks import ExportType
from harvester.config import Config, LoadSettings, load_config
from harvester.errors import ConfigError
from harvester.harvest.planning import select
from harvester.load.command import load
from harvester.load.pipeline import default_duckdb_path, working_folder
from harvester.load.summary import LoadSummary
from harvester.ops.load_view import LoadView
from harvester.ops.serve import Server, last_run_path
from tests.conftest import Scenario, harvested, ids, new_token
from tests.fakeclock import FakeClock
from tests.harness import FULL, log_events, simulated
from tests.seaweed import SeaweedFS
from tests.test_bucket import bucket_top, new_prefix
from tests.test_live import plain, read_all
from tests.test_serve import logged

SMALL: dict[str, Any] = {
    "objects_per_day": 2.0
}  # about 240 objects per merchant and type over FULL
JUNE = datetime(2025, 6, 1, tzinfo=UTC)
JULY = datetime(2025, 7, 1, tzinfo=UTC)


async def backfill(scenario: Scenario, clock: FakeClock) -> None:
    config = scenario.config()
    summary = await commands.backfill(config, select(config, [], []), FULL, clock, asyncio.Event())
    assert summary.all_done, summary.render()


async def load_now(config: Config) -> LoadSummary:
    return await load(config, asyncio.Event())


def query(config: Config, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(default_duckdb_path(config)), read_only=True) as db:
        return db.execute(sql, params).fetchall()


def rows_by_id(config: Config, table: str) -> dict[str, tuple[Any, ...]]:
    rows = query(config, f"SELECT id, merchant_id FROM clover.{table}")  # noqa: S608 -- ours
    found = {str(row[0]): row for row in rows}
    assert len(found) == len(rows), f"an id is in {table} twice"
    return found


def on_disk(scenario: Scenario, folder: str) -> list[str]:
    return [i for m in scenario.tokens for i in ids(harvested(scenario.output_dir, m, folder))]


async def test_a_load_makes_one_row_per_object_and_a_second_loads_nothing(
    tmp_path: Path, clock: FakeClock, log_buffer: io.StringIO
) -> None:
    """Every harvested object is one row of `payments` or `orders`, with its merchant and its
    line items in a child table; a second load loads 0 rows, also once dlt's working folder
    is gone (the state lives with the tables); nothing is written into the output."""
    async with simulated(tmp_path, clock, 2, **SMALL) as scenario:
        await backfill(scenario, clock)
        config = scenario.config()
        before = sorted(str(p.relative_to(tmp_path)) for p in scenario.output_dir.rglob("*"))

        first = await load_now(config)

        assert first.exit_code == 0, first.render()
        assert first.chunks_loaded == 2 * 2 * 4
        for export_type in ExportType:
            loaded = rows_by_id(config, export_type.folder)
            assert sorted(loaded) == sorted(on_disk(scenario, export_type.folder))
            assert first.rows_of(export_type) == len(loaded)
        merchant = next(iter(scenario.tokens))
        line_items = sum(
            len(o["lineItems"]["elements"])
            for o in harvested(scenario.output_dir, merchant, "orders")
        )
        assert query(
            config,
            "SELECT count(*) FROM clover.orders__line_items__elements AS i "
            "JOIN clover.orders AS o ON i._dlt_parent_id = o._dlt_id WHERE o.merchant_id = ?",
            merchant,
        ) == [(line_items,)]
        assert default_duckdb_path(config) == tmp_path / "data.duckdb"
        after = sorted(str(p.relative_to(tmp_path)) for p in scenario.output_dir.rglob("*"))
        assert after == before
        assert working_folder(config).is_relative_to(tmp_path / "state")

        second = await load_now(config)
        shutil.rmtree(working_folder(config))
        third = await load_now(config)

    for again in (second, third):
        assert again.exit_code == 0
        assert (again.rows, again.chunks_loaded, again.chunks_unchanged) == (0, 0, 16)
    assert query(config, "SELECT count(*) FROM clover.payments") == [
        (first.rows_of(ExportType.PAYMENTS),)
    ]
    finished = log_events(log_buffer, "load.finished")
    assert [line["rows"] for line in finished] == [first.rows, 0, 0]
    assert len(log_events(log_buffer, "load.chunk_extracted")) == 16


async def test_a_lookback_reharvest_updates_rows_and_replaces_their_children(
    tmp_path: Path, log_buffer: io.StringIO
) -> None:
    """A chunk harvested again with edited objects loads again: one row per id, the new
    values, and the children of its orders replaced rather than added."""
    clock = FakeClock(JULY + timedelta(hours=12))
    live = simulated(
        tmp_path,
        clock,
        1,
        data_start=JUNE,
        data_end=JULY + timedelta(days=30),
        file_ttl_s=86_400.0,
        top={"default_start": "2025-06-01", "lookback_days": 3},
        **SMALL,
    )
    async with live as scenario:
        config = scenario.config()
        merchant = next(iter(scenario.tokens))

        async def nightly() -> None:
            summary = await commands.nightly(config, select(config, [], []), clock, asyncio.Event())
            assert summary.all_done, summary.render()

        await nightly()
        assert (await load_now(config)).exit_code == 0
        children = query(config, "SELECT count(*) FROM clover.orders__line_items__elements")
        payment = harvested(scenario.output_dir, merchant, "payments")[-1]
        order = harvested(scenario.output_dir, merchant, "orders")[-1]
        clock.advance(3600)
        edited_payment = scenario.sim.edit(merchant, "PAYMENTS", str(payment["id"]))
        edited_order = scenario.sim.edit(merchant, "ORDERS", str(order["id"]))
        clock.advance(86_400)
        await nightly()

        again = await load_now(config)

    assert again.exit_code == 0
    # The June chunks again (edited), and the new day's.
    assert again.chunks_loaded == 2 * 2
    payments = rows_by_id(config, "payments")
    assert sorted(payments) == sorted(on_disk(scenario, "payments"))
    assert query(config, "SELECT amount FROM clover.payments WHERE id = ?", payment["id"]) == [
        (edited_payment["amount"],)
    ]
    assert edited_payment["amount"] != payment["amount"]
    assert query(config, "SELECT total FROM clover.orders WHERE id = ?", order["id"]) == [
        (edited_order["total"],)
    ]
    line_items = sum(
        len(o["lineItems"]["elements"]) for o in harvested(scenario.output_dir, merchant, "orders")
    )
    assert query(config, "SELECT count(*) FROM clover.orders__line_items__elements") == [
        (line_items,)
    ]
    assert children[0][0] < line_items  # the new day added some; June's were not doubled


def write_part(folder: Path, name: str, objects: list[dict[str, Any]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps({"elements": objects}))


async def test_staged_and_unpublished_chunks_are_not_loaded(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A staging folder (with parts and a manifest), a swap leftover, and a chunk folder that
    has no manifest: none of them is read."""
    async with simulated(tmp_path, clock, 1, **SMALL) as scenario:
        await backfill(scenario, clock)
        config = scenario.config()
        merchant = next(iter(scenario.tokens))
        base = scenario.output_dir / merchant / "payments"
        chunk = sorted(p for p in base.iterdir())[0]
        staged = base / f".staging-{chunk.name}@abc"
        shutil.copytree(chunk, staged)
        write_part(staged, "part-00009.json", [{"id": "STAGED"}])
        shutil.copytree(chunk, base / f".old-{chunk.name}")
        write_part(base / "20990101T000000Z_20990131T000000Z", "part-00001.json", [{"id": "NOMAN"}])

        summary = await load_now(config)

    assert summary.exit_code == 0, summary.render()
    assert summary.chunks_loaded == 2 * 4
    published = [i for i in on_disk(scenario, "payments") if i != "NOMAN"]
    assert sorted(rows_by_id(config, "payments")) == sorted(published)


async def test_a_corrupt_part_fails_its_chunk_alone_through_the_command_line(
    tmp_path: Path, clock: FakeClock
) -> None:
    """One part with a flipped byte, another cut short: `harvester load` (on a terminal,
    drawing its view) loads every other chunk, names the two it refused, exits 1; once the
    parts are right again, only those two load."""
    async with simulated(tmp_path, clock, 1, **SMALL) as scenario:
        await backfill(scenario, clock)
        config = scenario.config()
        merchant = next(iter(scenario.tokens))
        payments = sorted((scenario.output_dir / merchant / "payments").iterdir())
        flipped = payments[1] / "part-00001.json"
        cut = sorted((scenario.output_dir / merchant / "orders").iterdir())[2] / "part-00001.json"
        originals = {path: path.read_bytes() for path in (flipped, cut)}
        everything = set(on_disk(scenario, "payments")) | set(on_disk(scenario, "orders"))
        body = bytearray(originals[flipped])
        body[len(body) // 2] ^= 0x01
        flipped.write_bytes(bytes(body))
        cut.write_bytes(originals[cut][:-10])

        code, out, screen = await cli_load(scenario)

        assert code == 1, out + screen
        assert f"{payments[1]}: part-00001.json does not match the sha256" in out
        assert f"{cut.parent}: part-00001.json has " in out
        assert "chunks 6 loaded, 0 unchanged, 2 failed" in plain(screen)
        refused = set(ids(json.loads(originals[flipped])["elements"]))
        refused |= set(ids(json.loads(originals[cut])["elements"]))
        loaded = set(rows_by_id(config, "payments")) | set(rows_by_id(config, "orders"))
        assert not refused & loaded
        assert loaded == everything - refused

        for path, data in originals.items():
            path.write_bytes(data)
        repaired = await load_now(config)

    assert (repaired.exit_code, repaired.chunks_loaded, repaired.chunks_unchanged) == (0, 2, 6)
    assert set(rows_by_id(config, "payments")) | set(rows_by_id(config, "orders")) == everything


async def cli_load(scenario: Scenario) -> tuple[int, str, str]:
    """`harvester load` as a user runs it, stderr a pseudo-terminal: (exit code, stdout,
    what the terminal showed)."""
    leader, follower = pty.openpty()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "harvester",
        "load",
        "--config",
        str(scenario.config_path()),
        env={**os.environ, **scenario.environ, "COLUMNS": "160", "TERM": "xterm"},
        stdout=asyncio.subprocess.PIPE,
        stderr=follower,
    )
    os.close(follower)
    screen = await asyncio.to_thread(read_all, leader)
    out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), screen


async def test_a_merchant_added_later_loads_on_its_own(tmp_path: Path, clock: FakeClock) -> None:
    """A merchant harvested after the first load: the next load loads its chunks alone."""
    async with simulated(tmp_path, clock, 2, **SMALL) as scenario:
        first, later = list(scenario.tokens)
        everyone = dict(scenario.tokens)
        scenario.tokens = {first: everyone[first]}
        await backfill(scenario, clock)
        assert (await load_now(scenario.config())).chunks_loaded == 2 * 4
        scenario.tokens = everyone
        await backfill(scenario, clock)
        config = scenario.config()

        summary = await load_now(config)

    assert summary.exit_code == 0
    assert summary.tally(first, ExportType.ORDERS).chunks_unchanged == 4
    assert summary.tally(first, ExportType.ORDERS).chunks_loaded == 0
    assert summary.tally(later, ExportType.ORDERS).chunks_loaded == 4
    assert summary.rows_of(ExportType.ORDERS) == len(
        harvested(scenario.output_dir, later, "orders")
    )
    merchants = query(config, "SELECT merchant_id, count(*) FROM clover.orders GROUP BY ALL")
    assert dict(merchants) == {
        m: len(harvested(scenario.output_dir, m, "orders")) for m in everyone
    }


async def test_a_load_from_a_bucket_reads_only_published_manifests(
    tmp_path: Path, clock: FakeClock, seaweed: SeaweedFS, log_buffer: io.StringIO
) -> None:
    """Harvested into SeaweedFS: every object once, the DuckDB file beside the state; parts
    of a publish under way (no manifest yet) and staging are not read; a tampered part fails
    its chunk; the bucket's keys show in no log."""
    prefix = new_prefix()
    client = seaweed.client()
    top = bucket_top(seaweed.endpoint_url, prefix)
    async with simulated(tmp_path, clock, 1, top=top, **SMALL) as scenario:
        await backfill(scenario, clock)
        config = scenario.config()
        merchant = next(iter(scenario.tokens))
        base = f"{prefix}/{merchant}/payments"
        chunk = "20990101T000000Z_20990131T000000Z"
        body = json.dumps({"elements": [{"id": "PUBLISHING"}]}).encode()
        client.put_object(Bucket="harvest", Key=f"{base}/{chunk}/part-00001.json", Body=body)
        staging = f"{prefix}/.staging/{merchant}/payments/{chunk}"
        client.put_object(Bucket="harvest", Key=f"{staging}/.part-00001.json", Body=body)
        client.put_object(Bucket="harvest", Key=f"{staging}/.publishing.json", Body=b"{}")
        summary = await load_now(config)
        assert summary.exit_code == 0, summary.render()
        assert default_duckdb_path(config) == tmp_path / "state" / "harvest.duckdb"
        for export_type in ExportType:
            got = rows_by_id(config, export_type.folder)
            listed = bucket_objects(client, prefix, merchant, export_type.folder)
            assert sorted(got) == sorted(listed)
        keys = client.list_objects_v2(Bucket="harvest", Prefix=f"{base}/")["Contents"]
        victim = next(
            k["Key"] for k in keys if k["Key"].endswith("part-00001.json") and chunk not in k["Key"]
        )
        data = client.get_object(Bucket="harvest", Key=victim)["Body"].read()
        client.put_object(Bucket="harvest", Key=victim, Body=data.replace(b"{", b" ", 1))
        # The chunk as if harvested again (its manifest changed), with a part tampered with.
        manifest_key = victim.rsplit("/", 1)[0] + "/_manifest.json"
        manifest = client.get_object(Bucket="harvest", Key=manifest_key)["Body"].read()
        client.put_object(Bucket="harvest", Key=manifest_key, Body=manifest + b"\n")

        tampered = await load_now(config)

    assert tampered.exit_code == 1
    (error,) = tampered.tally(merchant, ExportType.PAYMENTS).errors
    chunk_url = f"s3://harvest/{victim.rsplit('/', 1)[0]}"
    assert error == f"{chunk_url}: part-00001.json does not match the sha256 in the manifest"
    assert "PUBLISHING" not in rows_by_id(config, "payments")
    assert top["object_store"]["secret_access_key"] not in log_buffer.getvalue()


def bucket_objects(client: Any, prefix: str, merchant: str, folder: str) -> list[str]:
    found = []
    listing = client.list_objects_v2(Bucket="harvest", Prefix=f"{prefix}/{merchant}/{folder}/")
    for item in listing["Contents"]:
        if item["Key"].endswith("_manifest.json"):
            manifest = json.loads(
                client.get_object(Bucket="harvest", Key=item["Key"])["Body"].read()
            )
            for part in manifest["parts"]:
                key = item["Key"].rsplit("/", 1)[0] + "/" + part["file"]
                body = client.get_object(Bucket="harvest", Key=key)["Body"].read()
                found += ids(json.loads(body)["elements"])
    return found


async def test_a_load_into_postgresql_merges_and_keeps_its_password_out_of_logs(
    tmp_path: Path, clock: FakeClock, pg_url: str, log_buffer: io.StringIO
) -> None:
    """`load:` with a PostgreSQL DSN whose password comes from ${VAR}, into a dataset of its
    own: every object once; a second load 0 rows; the password shows nowhere."""
    password = "load-secret-" + new_token("X")[-16:]
    with psycopg.connect(pg_url, autocommit=True) as connection:
        user = connection.execute("SELECT current_user").fetchone()
        assert user is not None
        connection.execute(f"ALTER ROLE {user[0]} PASSWORD '{password}'".encode())
    dsn = pg_url.replace("@", ":${LOAD_PASSWORD}@", 1)
    load_section = {"destination": "postgres", "dsn": dsn, "dataset": "clover_pg"}
    async with simulated(tmp_path, clock, 1, **SMALL) as scenario:
        await backfill(scenario, clock)
        scenario.top["load"] = load_section
        environ = {**scenario.environ, "LOAD_PASSWORD": password}
        config = load_config(scenario.config_path(), environ)
        first = await load_now(config)
        second = await load_now(config)
    assert first.exit_code == 0, first.render()
    assert (second.rows, second.chunks_unchanged) == (0, 8)
    with psycopg.connect(pg_url) as connection:
        rows = connection.execute("SELECT id FROM clover_pg.payments").fetchall()
    assert sorted(r[0] for r in rows) == sorted(on_disk(scenario, "payments"))
    assert password not in log_buffer.getvalue()
    assert password not in first.render()
    assert not (tmp_path / "data.duckdb").exists()


def test_the_command_line_imports_dlt_only_to_load() -> None:
    """`harvester --help` and every other command leave dlt unimported; its telemetry is off
    whenever the load code is in."""
    script = (
        "import sys\n"
        "from harvester import cli\n"
        "cli.build_parser()\n"
        "assert 'dlt' not in sys.modules, 'dlt was imported'\n"
        "import harvester.load.command, os\n"
        "assert 'dlt' in sys.modules\n"
        "assert os.environ['RUNTIME__DLTHUB_TELEMETRY'] == 'false'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


async def test_serve_loads_after_each_run_and_a_failed_load_is_reported(
    tmp_path: Path, clock: FakeClock, log_buffer: io.StringIO
) -> None:
    """With load.after_run, serve loads after the night's run (rows in the metrics); a load
    that fails (the DuckDB file cannot be opened) makes the night fail in /healthz and the
    metrics, and the harvest stands."""
    top = {"default_start": "2025-06-25", "schedule": {"daily_at": "00:30"}}
    data = {"data_start": JUNE, "data_end": JULY, **SMALL}
    async with simulated(tmp_path, clock, 1, top=top, **data) as scenario:
        for night, duckdb_path in enumerate(("tables.duckdb", "a-folder")):
            scenario.top["load"] = {"after_run": True, "duckdb_path": duckdb_path}
            config = scenario.config()
            last_run_path(config).unlink(missing_ok=True)  # the night is owed again
            server = Server(scenario.config_path(), config, clock, scenario.environ)
            stop = asyncio.Event()
            serving = asyncio.create_task(server.run(stop))
            await logged(log_buffer, "serve.run_ended", night + 1)
            (tmp_path / "a-folder").mkdir(exist_ok=True)
            if night == 0:
                good = server.health()
                rows = query(config, "SELECT count(*) FROM clover.payments")
            else:
                bad = server.health()
            stop.set()
            await serving
        merchant = next(iter(scenario.tokens))
        on_disk_now = harvested(scenario.output_dir, merchant, "payments")
    assert good.healthy, good.detail
    assert rows == [(len(on_disk_now),)]
    assert rows[0][0] > 0
    assert not bad.healthy
    assert "exit code 1" in bad.detail
    (failed,) = log_events(log_buffer, "serve.load_failed")
    assert "a-folder" in failed["error"]
    assert [e["exit_code"] for e in log_events(log_buffer, "serve.run_ended")] == [0, 1]


def test_the_load_view_shows_chunks_and_rows(clock: FakeClock) -> None:
    summary = LoadSummary("/x/data.duckdb", "clover")
    view = LoadView(summary, clock)
    summary.loaded("M1", ExportType.ORDERS, 1200)
    summary.unchanged("M1", ExportType.PAYMENTS)
    clock.advance(75)
    assert view.render().plain == (
        "chunks 1 loaded, 1 unchanged   rows 1,200   into /x/data.duckdb   elapsed 1m15s"
    )
    summary.failed("M1", ExportType.ORDERS, "bad")
    assert "1 unchanged, 1 failed" in view.render().plain


LOAD_CONFIG = "merchants:\n  - {id: M1, token: plain-token-16ch}\nload:\n"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("  destination: Big Query\n", "load.destination: expected a dlt destination name"),
        ("  destination: postgres\n", "load.dsn: required with destination: postgres"),
        ("  dsn: postgresql://u@h/db\n", "load.dsn: only with destination: postgres"),
        (
            "  destination: postgres\n  dsn: mysql://u@h/db\n",
            "load.dsn: expected postgresql://USER@HOST:PORT/DB",
        ),
        (
            "  destination: postgres\n  dsn: postgresql://u@h\n",
            "load.dsn: expected postgresql://USER@HOST:PORT/DB (host and database)",
        ),
        (
            "  destination: postgres\n  dsn: postgresql://u:${NOPE}@h/db\n",
            "load.dsn: environment variable NOPE is not set",
        ),
        (
            "  destination: postgres\n  dsn: postgresql://u@h/db\n  duckdb_path: x.duckdb\n",
            "load.duckdb_path: only with destination: duckdb",
        ),
        ("  dataset: 1st\n", "load.dataset: expected a schema name"),
        ("  after_run: yes please\n", "load.after_run: expected true or false"),
        ("  after: true\n", "load.after: unknown key"),
    ],
)
def test_a_bad_load_section_is_refused_naming_its_key(
    tmp_path: Path, section: str, message: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(LOAD_CONFIG + section)
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert str(caught.value).startswith(message)


def test_a_load_section_is_read_with_its_defaults_and_a_secret_dsn(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        LOAD_CONFIG + "  destination: postgres\n  dsn: postgresql://u:${PW}@h:5432/db\n"
        "  dataset: warehouse\n  after_run: true\n"
    )
    settings = load_config(path, {"PW": "pg-password-123456"}).load
    assert settings.dsn is not None
    assert settings.dsn.reveal() == "postgresql://u:pg-password-123456@h:5432/db"
    assert "pg-password" not in repr(settings)
    assert (settings.destination, settings.dataset, settings.after_run) == (
        "postgres",
        "warehouse",
        True,
    )
    path.write_text(LOAD_CONFIG + "  duckdb_path: tables/all.duckdb\n")
    settings = load_config(path, {}).load
    assert (settings.destination, settings.duckdb_path) == (
        "duckdb",
        tmp_path / "tables/all.duckdb",
    )
    path.write_text("merchants:\n  - {id: M1, token: plain-token-16ch}\n")
    assert load_config(path, {}).load == LoadSettings()


def test_an_unknown_destination_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(LOAD_CONFIG + "  destination: nosuchwarehouse\n")
    assert main(["load", "--config", str(path), "--no-live"]) == 2
    assert "load.destination: dlt knows no destination 'nosuchwarehouse'" in capsys.readouterr().err


def test_without_the_load_extra_load_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    """dlt not installed (hidden from the import system here): exit 2 and how to get it."""
    path = tmp_path / "config.yaml"
    path.write_text(LOAD_CONFIG + "  dataset: clover\n")
    script = (
        "import sys\n"
        "sys.modules['dlt'] = None\n"
        "from harvester.cli import main\n"
        f"sys.exit(main(['load', '--config', {str(path)!r}]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert done.stderr == (
        "harvester: error: harvester load needs the load extra (dlt is not installed): "
        "pip install 'clover-harvester[load]'\n"
    )


async def test_a_stopped_load_loads_nothing_more_and_the_next_one_catches_up(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Stopped (SIGINT, SIGTERM) before its first chunk: no row, exit 1, and the next load
    loads everything; a merchant harvesting payments only gets no orders."""
    async with simulated(tmp_path, clock, 1, **SMALL) as scenario:
        merchant = next(iter(scenario.tokens))
        scenario.merchant_overrides[merchant] = {"types": ["PAYMENTS"]}
        await backfill(scenario, clock)
        config = scenario.config()
        stop = asyncio.Event()
        stop.set()

        stopped = await load(config, stop)
        caught_up = await load_now(config)

    assert (stopped.stopped, stopped.exit_code, stopped.rows) == (True, 1, 0)
    assert "stopped: the chunks not loaded load next time" in stopped.render()
    assert (caught_up.exit_code, caught_up.chunks_loaded) == (0, 4)
    assert sorted(rows_by_id(config, "payments")) == sorted(on_disk(scenario, "payments"))
    tables = query(config, "SELECT table_name FROM information_schema.tables")
    assert ("orders",) not in tables
