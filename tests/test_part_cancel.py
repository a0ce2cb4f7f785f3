"""Cancelling a download while its part file is being opened or closed leaks no file handle."""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest

from harvester.clover.chunks import ExportType, TimeRange
from harvester.output.folder import WRITE_BYTES, ChunkOutput
from tests.conftest import DATA_START, open_in

WAIT_S = 5.0  # real seconds; only reached if the thread never gets going


@pytest.mark.parametrize(
    ("body", "left"),
    [
        # The first WRITE_BYTES go to the disk in a job that opens the file first.
        pytest.param(b'{"elements": [' + b" " * WRITE_BYTES, set(), id="first-write"),
        # A small part is opened by the job that writes, syncs and renames it: that job
        # ends regardless, and a part under its final name is whole and checked (reused
        # if its sha256 is recorded, replaced or cleared by publish if not).
        pytest.param(b'{"elements": []}', {"part-00001.json"}, id="commit"),
    ],
)
async def test_cancel_while_the_file_opens_closes_and_removes_the_temp_file(
    tmp_path: Path, body: bytes, left: set[str]
) -> None:
    """A part cancelled while its first thread job opens its file (a sibling part failed)
    holds no file handle afterwards and leaves no temp file."""
    entered, release = threading.Event(), threading.Event()

    def held_open(path: str, flags: int) -> int:
        entered.set()
        release.wait(WAIT_S)
        return os.open(path, flags, 0o666)

    output = ChunkOutput(
        tmp_path,
        "M1",
        ExportType.PAYMENTS,
        TimeRange(DATA_START, DATA_START + timedelta(days=1)),
        opener=held_open,
    )

    async def download() -> None:
        async with await output.open_part(1) as part:
            await part.write(body)
            await part.commit(len(body), 0)

    task = asyncio.create_task(download())
    assert await asyncio.to_thread(entered.wait, WAIT_S)
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The cancelled part waited for its thread job, then closed and deleted the file.
    assert open_in(output.staging_dir) == []
    assert {entry.name for entry in output.staging_dir.iterdir()} == left


async def test_cancel_during_abort_still_closes_the_temp_file(tmp_path: Path) -> None:
    """A part aborted (say, truncated) and then cancelled while its close waits for a
    thread still closes and deletes its temp file."""
    # One worker thread, so that a job can be held in the queue on purpose.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=1))
    output = ChunkOutput(
        tmp_path, "M1", ExportType.PAYMENTS, TimeRange(DATA_START, DATA_START + timedelta(days=1))
    )
    writer = await output.open_part(1)
    await writer.write(b'{"elements": [' + b" " * WRITE_BYTES)  # to the disk: opened
    assert len(open_in(output.staging_dir)) == 1
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
    assert open_in(output.staging_dir) == []
    assert list(output.staging_dir.iterdir()) == []
