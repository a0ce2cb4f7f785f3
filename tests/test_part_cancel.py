"""Cancelling a download while its part file is being opened leaks no file handle."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import aiofiles.threadpool
import pytest

from harvester.chunks import ExportType, TimeRange
from harvester.output import ChunkOutput
from tests.conftest import DATA_START

WAIT_S = 5.0  # real seconds; only reached if the thread never gets going


async def test_cancel_during_open_closes_and_removes_the_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part cancelled while its file opens (a sibling part failed) closes and deletes it."""
    entered, release, opened_event = threading.Event(), threading.Event(), threading.Event()
    opened: list[IO[Any]] = []

    def held_open(*args: Any, **kwargs: Any) -> IO[Any]:
        entered.set()
        release.wait(WAIT_S)
        file: IO[Any] = open(*args, **kwargs)  # noqa: SIM115 -- handed to aiofiles, as real
        opened.append(file)
        opened_event.set()
        return file

    # aiofiles opens files in a worker thread with this function.
    monkeypatch.setattr(aiofiles.threadpool, "sync_open", held_open)
    output = ChunkOutput(
        tmp_path, "M1", ExportType.PAYMENTS, TimeRange(DATA_START, DATA_START + timedelta(days=1))
    )
    task = asyncio.create_task(output.open_part(1))
    assert await asyncio.to_thread(entered.wait, WAIT_S)
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The open finishes in its thread whether or not anyone still waits for it.
    assert await asyncio.to_thread(opened_event.wait, WAIT_S)
    try:
        assert [file.closed for file in opened] == [True]
        assert list(output.staging_dir.iterdir()) == []
    finally:
        for file in opened:
            file.close()


async def test_cancel_during_abort_still_closes_the_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part aborted (say, truncated) and then cancelled while its close waits for a
    thread still closes and deletes its temp file."""
    opened: list[IO[Any]] = []

    def recording_open(*args: Any, **kwargs: Any) -> IO[Any]:
        file: IO[Any] = open(*args, **kwargs)  # noqa: SIM115 -- handed to aiofiles, as real
        opened.append(file)
        return file

    monkeypatch.setattr(aiofiles.threadpool, "sync_open", recording_open)
    # One worker thread, so that a job can be held in the queue on purpose.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=1))
    output = ChunkOutput(
        tmp_path, "M1", ExportType.PAYMENTS, TimeRange(DATA_START, DATA_START + timedelta(days=1))
    )
    writer = await output.open_part(1)
    await writer.write(b'{"elements": [')
    release = threading.Event()
    loop = asyncio.get_running_loop()
    # Submitted now, ahead of anything abort() queues: the close waits behind it.
    holding = loop.run_in_executor(None, release.wait, WAIT_S)
    aborting = asyncio.create_task(writer.abort())
    for _ in range(3):
        await asyncio.sleep(0)  # let abort() queue its close behind the held worker
    aborting.cancel()
    release.set()
    await holding
    with pytest.raises(asyncio.CancelledError):
        await aborting
    # Let every job queued behind the held one finish.
    for _ in range(3):
        await asyncio.to_thread(lambda: None)
    try:
        assert [file.closed for file in opened] == [True]
        assert list(output.staging_dir.iterdir()) == []
    finally:
        for file in opened:
            file.close()
