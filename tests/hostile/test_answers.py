"""Answers that never end or break the rules: each fails its chunk with a clear error."""

from __future__ import annotations

import time
from pathlib import Path

from tests.hostile.running import ONE_CHUNK, run_cli, write_config
from tests.hostile.server import HostileServer, Mode


async def harvest(tmp_path: Path, mode: Mode, **top: object) -> tuple[str, str, HostileServer]:
    """One chunk from a server in `mode`: it fails (exit 1) without a traceback."""
    async with HostileServer(mode) as server:
        config = str(write_config(tmp_path, server.url, **top))
        run = await run_cli("backfill", "--config", config, *ONE_CHUNK)
    assert run.code == 1, run.err
    assert "Traceback" not in run.err
    assert "unexpected error" not in run.out
    return run.out, run.err, server


async def test_an_endless_file_stops_at_max_file_bytes_and_is_not_fetched_again(
    tmp_path: Path,
) -> None:
    """A file past max_file_bytes fails its chunk once, leaving no partial file behind."""
    out, _, server = await harvest(tmp_path, Mode.ENDLESS_FILE, max_file_bytes=1024 * 1024)
    assert "larger than max_file_bytes (1048576 bytes)" in out
    assert server.requests["file"] == 1
    assert not [p for p in (tmp_path / "data").rglob("*") if p.is_file()]


async def test_a_trickling_file_fails_within_its_deadline(tmp_path: Path) -> None:
    """A body that keeps trickling in is cut off at its deadline and called too slow."""
    started = time.monotonic()
    out, _, server = await harvest(
        tmp_path,
        Mode.TRICKLE_FILE,
        timing={"download_floor_s": 0.5, "download_cap_s": 1.0, "max_attempts": 1},
    )
    assert "too slow" in out
    assert server.requests["file"] == 1
    assert server.file_bytes_sent < 20  # one byte a tenth of a second, for about half a second
    assert time.monotonic() - started < 30


async def test_an_endless_api_answer_is_refused_past_its_cap(tmp_path: Path) -> None:
    """An API answer past 4 MiB is refused as such, without reading the rest."""
    out, _, _ = await harvest(tmp_path, Mode.HUGE_ANSWER)
    assert "answer refused after 4194304 bytes" in out


async def test_an_export_id_that_is_a_path_fails_the_export(tmp_path: Path) -> None:
    """An id like ../../../etc fails the export; no request ever carries it."""
    out, _, server = await harvest(tmp_path, Mode.EXPORT_ID_PATH)
    assert "is not the shape of Clover's ids" in out
    assert server.requests["poll"] == 0


async def test_duplicate_file_urls_fail_the_export(tmp_path: Path) -> None:
    """exportUrls listing one URL many times fails the export; no file is fetched."""
    out, _, server = await harvest(tmp_path, Mode.DUPLICATE_URLS)
    assert "exportUrls lists the same file more than once" in out
    assert server.requests["file"] == 0


async def test_a_deeply_nested_answer_is_an_unreadable_answer(tmp_path: Path) -> None:
    """JSON nested a hundred thousand levels deep is an 'unreadable answer', not a crash."""
    out, err, _ = await harvest(tmp_path, Mode.DEEP_NESTING)
    assert "unreadable answer" in out
    assert "RecursionError" not in out + err
