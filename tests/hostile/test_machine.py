"""A failing machine: read-only or full disks, a damaged or newer state, a grace that runs out.

The disks are real: a tmpfs mounted read-only or small in a private mount namespace (as
root of a new user namespace, so no privilege is needed), seen only by the harvester.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sqlite3
import sys
from pathlib import Path

import pytest

from tests.hostile import running
from tests.hostile.running import (
    ONE_CHUNK,
    THREE_CHUNKS,
    TOKEN,
    run_cli,
    run_here,
    write_config,
)
from tests.hostile.server import HostileServer, Mode


def clean_failure(out: str, err: str) -> None:
    """A failure reported in words, with the summary, never as a crash."""
    assert "Traceback" not in err
    assert "unexpected error" not in out
    assert "some work is not done" in out


async def test_a_read_only_output_folder_fails_before_any_export_is_created(
    tmp_path: Path,
) -> None:
    """On a read-only output folder no export is created and the summary says why."""
    data = tmp_path / "data"
    data.mkdir()
    async with HostileServer(Mode.GOOD) as server:
        config = str(write_config(tmp_path, server.url))
        run = await run_cli(
            "backfill",
            "--config",
            config,
            *THREE_CHUNKS,
            inside=f"mount -t tmpfs -o ro none {data}",
        )
    assert run.code == 1, run.err
    assert server.requests["create"] == 0
    assert "Read-only file system (EROFS)" in run.out
    assert "problem: output folder" in run.out
    clean_failure(run.out, run.err)


async def test_an_output_folder_without_room_fails_before_any_export_is_created(
    tmp_path: Path,
) -> None:
    """With less free space than min_free_bytes no export is created."""
    data = tmp_path / "data"
    data.mkdir()
    async with HostileServer(Mode.GOOD) as server:
        config = str(write_config(tmp_path, server.url, min_free_bytes=8 * 1024 * 1024))
        run = await run_cli(
            "backfill",
            "--config",
            config,
            *ONE_CHUNK,
            inside=f"mount -t tmpfs -o size=1m none {data}",
        )
    assert run.code == 1, run.err
    assert server.requests["create"] == 0
    assert "less than the 8388608 a chunk may need" in run.out
    assert "problem: no export created" in run.out
    clean_failure(run.out, run.err)


async def test_a_disk_that_fills_up_stops_new_exports(tmp_path: Path) -> None:
    """Once a write fails for want of space, the other chunks create no export."""
    data = tmp_path / "data"
    data.mkdir()
    async with HostileServer(Mode.BIG_FILE) as server:
        config = str(write_config(tmp_path, server.url, min_free_bytes=0))
        run = await run_cli(
            "backfill",
            "--config",
            config,
            *THREE_CHUNKS,
            inside=f"mount -t tmpfs -o size=2m none {data}",
        )
    assert run.code == 1, run.err
    assert server.requests["create"] == 1
    assert "No space left on device (ENOSPC)" in run.out
    assert "problem: output folder" in run.out
    assert run.out.count("no export created") == 2
    clean_failure(run.out, run.err)


async def test_a_full_state_disk_is_a_clear_error_with_the_summary(tmp_path: Path) -> None:
    """When the state's disk fills up mid-run, the run stops with its summary and exit 1."""
    state = tmp_path / "state"
    state.mkdir()
    arrived, release = tmp_path / "create-arrived", tmp_path / "disk-filled"
    fill = (
        f"mount -t tmpfs -o size=1m none {state}; HARVESTER & "
        f"while [ ! -e {arrived} ]; do sleep 0.02; done; "
        f"dd if=/dev/zero of={state}/filler bs=4k 2>/dev/null || true; "
        f"touch {release}; wait $!"
    )
    async with HostileServer(Mode.HOLD_CREATE, release=release, arrived=arrived) as server:
        config = str(write_config(tmp_path, server.url))
        run = await run_cli("backfill", "--config", config, *ONE_CHUNK, inside=fill)
    assert run.code == 1, run.err
    assert "problem: stopped: state store" in run.out
    assert "full" in run.out
    assert "run.finished" in run.err
    clean_failure(run.out, run.err)


async def harvested_state(tmp_path: Path) -> Path:
    """A state file after one good run."""
    async with HostileServer(Mode.GOOD) as server:
        config = write_config(tmp_path, server.url)
        assert (await run_cli("backfill", "--config", str(config), *ONE_CHUNK)).code == 0
    return tmp_path / "state" / "harvester.sqlite3"


def test_status_and_plan_on_a_newer_schema_ask_for_a_newer_harvester(tmp_path: Path) -> None:
    """A state written by a newer harvester is refused by status and plan in those words."""
    config = str(write_config(tmp_path, "http://127.0.0.1:9"))
    state = tmp_path / "state" / "harvester.sqlite3"
    state.parent.mkdir()
    with sqlite3.connect(state) as connection:
        connection.execute("PRAGMA user_version = 99")
    for args in (("status",), ("plan", *ONE_CHUNK)):
        run = run_here(*args, "--config", config)
        assert run.code == 1
        assert "use a newer harvester" in run.err
        assert "bring it up to date" not in run.err


async def test_status_reads_a_state_on_read_only_media(tmp_path: Path) -> None:
    """status reads a state file on a read-only file system."""
    state = await harvested_state(tmp_path)
    folder = state.parent
    run = await run_cli(
        "status",
        "--config",
        str(tmp_path / "config.yaml"),
        inside=f"mount --bind {folder} {folder}; mount -o remount,bind,ro {folder}",
    )
    assert run.code == 0, run.err
    assert "covered 2025-01-01T00:00:00Z through 2025-01-31T00:00:00Z" in run.out


async def test_a_damaged_state_file_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """A state file that fails SQLite's quick_check is refused and left as it was."""
    state = await harvested_state(tmp_path)
    data = bytearray(state.read_bytes())
    page = 4096
    assert len(data) >= 3 * page
    data[2 * page + 8 : 3 * page] = os.urandom(page - 8)  # a b-tree page's cells
    state.write_bytes(bytes(data))
    before = hashlib.sha256(state.read_bytes()).hexdigest()
    run = await run_cli("backfill", "--config", str(tmp_path / "config.yaml"), *ONE_CHUNK)
    assert run.code == 1
    assert "damaged" in run.err
    assert hashlib.sha256(state.read_bytes()).hexdigest() == before
    assert not state.with_name(state.name + "-wal").exists()


async def test_when_the_grace_runs_out_the_summary_is_still_printed(tmp_path: Path) -> None:
    """SIGTERM with a download that never ends: after the grace, summary and run.finished."""
    async with HostileServer(Mode.HANG_FILE) as server:
        config = str(write_config(tmp_path, server.url))
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "harvester", "backfill", "--config", config, *ONE_CHUNK),
            env={**os.environ, "HOSTILE_TOKEN": TOKEN},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(3000):
            if server.requests["file"]:
                break
            await asyncio.sleep(0.01)
        assert server.requests["file"] == 1
        process.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 128 + signal.SIGTERM
    assert "the shutdown grace ran out" in out.decode()
    assert "stopped before the end" in out.decode()
    assert "run.finished" in err.decode()
    assert "run.abandoned" in err.decode()


def test_without_namespaces_a_disk_test_skips_with_its_reason_but_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where the kernel refuses unprivileged namespaces the disk tests skip, saying why;
    where CI is set they fail instead, so that CI never passes without them."""
    monkeypatch.setattr(running, "namespaces_refused", lambda: "refused (for the test)")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"refused \(for the test\)"):
        running.need_namespaces()
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match=r"cannot run in CI: refused"):
        running.need_namespaces()


def test_this_machine_gives_the_disk_tests_their_namespaces() -> None:
    """The probe itself: here (as in CI) the kernel grants them, so nothing above skipped."""
    running.namespaces_refused.cache_clear()
    reason = running.namespaces_refused()
    if reason is not None and not os.environ.get("CI"):
        pytest.skip(reason)
    assert reason is None
