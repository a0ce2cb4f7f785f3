"""The output folder: checked parts, whole-chunk publish, atomic replace, crash recovery."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from harvester.clover.chunks import ExportType, TimeRange
from harvester.errors import BadFile
from harvester.output import folder as folder_module
from harvester.output.folder import (
    MANIFEST_NAME,
    WRITE_BYTES,
    ChunkOutput,
    EmptyReason,
    Manifest,
    PartInfo,
    recover,
    renameat2,
)
from tests.conftest import open_in

MERCHANT = "MERCHANT00001"
JANUARY = TimeRange(datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 1, 31, tzinfo=UTC))
HARVESTED_AT = datetime(2025, 3, 1, 12, 30, 15, 250000, tzinfo=UTC)
T = TypeVar("T")


def export_file(count: int, tag: str = "a") -> bytes:
    return json.dumps({"elements": [{"id": f"{tag}{n}"} for n in range(count)]}).encode()


@pytest.fixture
def chunk(tmp_path: Path) -> ChunkOutput:
    return ChunkOutput(tmp_path / "out", MERCHANT, ExportType.PAYMENTS, JANUARY)


async def write_part(
    chunk: ChunkOutput, index: int, body: bytes, expected_size: int | None
) -> PartInfo:
    writer = await chunk.open_part(index)
    async with writer:
        await writer.write(body)
        return await writer.commit(expected_size, index - 1)


async def write_pieces(chunk: ChunkOutput, index: int, body: bytes, piece: int) -> PartInfo:
    """Part `index` written `piece` bytes at a time, as a download hands it over."""
    writer = await chunk.open_part(index)
    async with writer:
        for start in range(0, len(body), piece):
            await writer.write(body[start : start + piece])
        return await writer.commit(len(body), index - 1)


async def save_part(chunk: ChunkOutput, index: int, body: bytes) -> PartInfo:
    return await write_part(chunk, index, body, len(body))


async def stage(chunk: ChunkOutput, bodies: list[bytes], export_id: str = "E1") -> Manifest:
    parts = [await save_part(chunk, index, body) for index, body in enumerate(bodies, start=1)]
    return Manifest(MERCHANT, ExportType.PAYMENTS, JANUARY, export_id, HARVESTED_AT, tuple(parts))


def listing(folder: Path) -> set[str]:
    return {entry.name for entry in folder.iterdir()}


# -- parts ----------------------------------------------------------------------------------


async def test_a_part_written_in_pieces_commits_with_hash_and_count(chunk: ChunkOutput) -> None:
    """Streamed pieces become one staged part whose sha256, size and object count are right."""
    body = export_file(250)
    info = await write_pieces(chunk, 3, body, 1000)
    assert info == PartInfo(3, 2, len(body), hashlib.sha256(body).hexdigest(), 250)
    assert (chunk.staging_dir / "part-00003.json").read_bytes() == body
    assert listing(chunk.staging_dir) == {"part-00003.json"}
    assert not chunk.final_dir.exists()


class CountingExecutor(ThreadPoolExecutor):
    """The loop's default executor, counting the jobs handed to a worker thread."""

    def __init__(self) -> None:
        super().__init__(max_workers=2)
        self.jobs = 0

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        self.jobs += 1
        return super().submit(fn, *args, **kwargs)


@pytest.mark.parametrize(
    ("padding", "most_jobs"),
    [
        pytest.param(450, 1, id="clover-sized: open-write-sync-rename in one"),
        pytest.param(6_000, 1 + 6_100_000 // WRITE_BYTES, id="6 MB: a job per WRITE_BYTES"),
    ],
)
async def test_a_part_takes_few_thread_jobs_and_is_never_read_back(
    chunk: ChunkOutput, padding: int, most_jobs: int
) -> None:
    """A part in 64 KiB pieces is hashed and checked as it streams: it goes to a worker
    thread once per WRITE_BYTES (the first job opens the file) and once to be synced and
    renamed, never a job per piece, a job to open it, nor a second reading to count its
    elements."""
    elements = [{"id": f"o{n}", "pad": "x" * padding} for n in range(1000)]
    body = json.dumps({"elements": elements}).encode()
    executor = CountingExecutor()
    asyncio.get_running_loop().set_default_executor(executor)
    writer = await chunk.open_part(1)
    async with writer:
        for start in range(0, len(body), 64 * 1024):
            await writer.write(body[start : start + 64 * 1024])
        info = await writer.commit(len(body), 0)
    assert info == PartInfo(1, 0, len(body), hashlib.sha256(body).hexdigest(), 1000)
    assert (chunk.staging_dir / "part-00001.json").read_bytes() == body
    assert executor.jobs <= most_jobs


async def test_a_last_part_in_memory_is_staged_by_the_publish_that_follows(
    chunk: ChunkOutput,
) -> None:
    """Committed with `publish_next`, a part still wholly in memory costs no thread job of
    its own: nothing of it is on the disk until publish, whose one job stages it and puts
    the chunk in place. A part that went to the disk already is committed as ever."""
    executor = CountingExecutor()
    asyncio.get_running_loop().set_default_executor(executor)
    first = await save_part(chunk, 1, export_file(3, "a"))
    assert executor.jobs == 1
    big = b'{"elements": [' + b" " * WRITE_BYTES + b"]}"
    writer = await chunk.open_part(2)
    async with writer:
        await writer.write(big)  # to the disk: a job
        second = await writer.commit(len(big), 1, publish_next=True)
    assert executor.jobs == 3  # the write, and the commit's own
    body = export_file(5, "c")
    writer = await chunk.open_part(3)
    async with writer:
        await writer.write(body)
        third = await writer.commit(len(body), 2, publish_next=True)
    assert executor.jobs == 3
    assert listing(chunk.staging_dir) == {"part-00001.json", "part-00002.json"}
    manifest = Manifest(
        MERCHANT, ExportType.PAYMENTS, JANUARY, "E1", HARVESTED_AT, (first, second, third)
    )
    await chunk.publish(manifest)
    assert executor.jobs == 4
    assert third == PartInfo(3, 2, len(body), hashlib.sha256(body).hexdigest(), 5)
    assert (chunk.final_dir / "part-00003.json").read_bytes() == body
    assert listing(chunk.final_dir) == {
        "part-00001.json",
        "part-00002.json",
        "part-00003.json",
        MANIFEST_NAME,
    }


async def test_a_part_left_to_publish_that_fails_to_stage_leaves_nothing_open_or_behind(
    chunk: ChunkOutput, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Publish stages the part first; a full disk then fails publish, and the part's file is
    neither left open nor left in staging. Staged again, the chunk is published."""
    body = export_file(4)
    writer = await chunk.open_part(1)
    async with writer:
        await writer.write(body)
        info = await writer.commit(len(body), 0, publish_next=True)
    manifest = Manifest(MERCHANT, ExportType.PAYMENTS, JANUARY, "E1", HARVESTED_AT, (info,))

    def full(descriptor: int, buffers: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(os, "writev", full)
        with pytest.raises(OSError, match="No space left"):
            await chunk.publish(manifest)
    assert open_in(chunk.staging_dir) == []
    assert listing(chunk.staging_dir) == set()
    assert not chunk.final_dir.exists()
    with pytest.raises(BadFile, match=r"part-00001\.json is not staged"):
        await chunk.publish(manifest)  # the part went with the failure: downloaded again
    await chunk.publish(await stage(chunk, [body]))
    assert (chunk.final_dir / "part-00001.json").read_bytes() == body


async def test_an_unknown_size_skips_the_length_check(chunk: ChunkOutput) -> None:
    """Without an expected size (no Content-Length) a valid part still commits."""
    body = export_file(0)
    writer = await chunk.open_part(1)
    async with writer:
        await writer.write(body)
        info = await writer.commit(None, 0)
    assert (info.size, info.objects) == (len(body), 0)


@pytest.mark.parametrize(
    ("body", "expected_size", "problem"),
    [
        pytest.param(export_file(3), 10_000, "truncated: got", id="truncated"),
        pytest.param(export_file(3), 5, "too long: got", id="too-long"),
        pytest.param(b'{"elements": [{"id": 1}', None, "not JSON", id="bad-json"),
        pytest.param(b"\xff\xfe garbage", None, "not JSON", id="not-text"),
        pytest.param(b'[{"id": 1}]', None, "not a JSON object", id="not-an-object"),
        pytest.param(b'{"items": []}', None, '"elements" list', id="no-elements"),
        pytest.param(b'{"elements": {"id": 1}}', None, '"elements" list', id="elements-object"),
        pytest.param(
            export_file(1001), None, "1001 elements or more, more than 1000", id="too-many"
        ),
        pytest.param(b'{"elements": [{"id": 1}, 7]}', None, "element 1 is not", id="element"),
    ],
)
async def test_a_bad_file_is_refused_and_leaves_nothing(
    chunk: ChunkOutput, body: bytes, expected_size: int | None, problem: str
) -> None:
    """A truncated, malformed or oversized file raises BadFile and leaves nothing: refused
    before its bytes went to a worker thread, it never touched the disk."""
    with pytest.raises(BadFile, match=problem):
        await write_part(chunk, 1, body, expected_size)
    assert not chunk.staging_dir.exists()


async def test_a_bad_file_already_on_disk_is_deleted(chunk: ChunkOutput) -> None:
    """A file refused after a first WRITE_BYTES went to the disk leaves no temp file."""
    body = b'{"elements": [' + b" " * WRITE_BYTES + b"7]}"
    with pytest.raises(BadFile, match="element 0 is not"):
        await write_part(chunk, 1, body, len(body))
    assert listing(chunk.staging_dir) == set()


async def test_a_part_given_up_before_its_first_job_costs_no_thread_job(
    chunk: ChunkOutput,
) -> None:
    """A download that fails before WRITE_BYTES arrived (the usual broken connection)
    leaves without a worker thread: nothing was opened, so nothing is deleted."""
    executor = CountingExecutor()
    asyncio.get_running_loop().set_default_executor(executor)
    writer = await chunk.open_part(1)

    async def download_that_breaks() -> None:
        async with writer:
            await writer.write(b'{"elements": [')
            raise ConnectionError("peer went away")

    with pytest.raises(ConnectionError):
        await download_that_breaks()
    await writer.abort()  # again: still nothing to do
    assert executor.jobs == 0
    assert not chunk.staging_dir.exists()


async def test_the_truncation_message_gives_both_sizes(chunk: ChunkOutput) -> None:
    """A short body says how many bytes came of how many promised."""
    with pytest.raises(BadFile, match=r"^truncated: got 4 of 9 bytes$"):
        await write_part(chunk, 1, b"{}  ", 9)


async def test_leaving_a_writer_on_error_deletes_its_temp_file(chunk: ChunkOutput) -> None:
    """An exception inside `async with writer` aborts it: no temp file remains."""
    writer = await chunk.open_part(1)
    staged_meanwhile: list[set[str]] = []

    async def download_that_breaks() -> None:
        async with writer:
            await writer.write(b'{"elements": [' + b" " * WRITE_BYTES)  # goes to the disk
            staged_meanwhile.append(listing(chunk.staging_dir))
            raise ConnectionError("peer went away")

    with pytest.raises(ConnectionError):
        await download_that_breaks()
    assert staged_meanwhile == [{".part-00001.json.tmp"}]
    assert listing(chunk.staging_dir) == set()
    with pytest.raises(RuntimeError, match="after commit or abort"):
        await writer.write(b"more")


async def test_saved_part_checks_the_hash(chunk: ChunkOutput) -> None:
    """A staged part counts as saved only if its sha256 matches."""
    info = await save_part(chunk, 1, export_file(5))
    assert await chunk.saved_part(1, info.sha256)
    assert not await chunk.saved_part(1, "0" * 64)
    assert not await chunk.saved_part(2, info.sha256)


def test_part_names_and_bad_merchant_ids(tmp_path: Path) -> None:
    """Part files are numbered from 1 with five digits; a merchant id cannot escape the folder."""
    assert ChunkOutput.part_name(1) == "part-00001.json"
    assert ChunkOutput.part_name(123456) == "part-123456.json"
    with pytest.raises(ValueError, match="start at 1"):
        ChunkOutput.part_name(0)
    for bad in ("", "..", "../etc", ".hidden", "a/b"):
        with pytest.raises(ValueError, match="folder name"):
            ChunkOutput(tmp_path, bad, ExportType.ORDERS, JANUARY)
    orders = ChunkOutput(tmp_path, MERCHANT, ExportType.ORDERS, JANUARY)
    assert orders.final_dir == tmp_path / MERCHANT / "orders" / JANUARY.name
    assert orders.staging_dir == tmp_path / MERCHANT / "orders" / f".staging-{JANUARY.name}"


# -- publish --------------------------------------------------------------------------------


async def test_publish_puts_the_complete_folder_in_place(chunk: ChunkOutput) -> None:
    """The chunk folder appears with every part and the manifest; staging is gone."""
    bodies = [export_file(1000, "a"), export_file(7, "b")]
    manifest = await stage(chunk, bodies)
    assert not chunk.final_dir.exists()
    assert (await chunk.look()).published is None

    await chunk.publish(manifest)

    assert listing(chunk.final_dir) == {"part-00001.json", "part-00002.json", MANIFEST_NAME}
    assert (chunk.final_dir / "part-00002.json").read_bytes() == bodies[1]
    assert (chunk.final_dir / MANIFEST_NAME).read_text() == manifest.to_json()
    assert (await chunk.look()).published == manifest
    assert not chunk.staging_dir.exists()
    assert listing(chunk.final_dir.parent) == {JANUARY.name}


async def test_publish_syncs_the_folders_above_a_type_folder_once_per_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each publish syncs its manifest, its staging folder and its type folder (the renamed
    entry); the merchant folder (the type folder's entry) on the first publish into that
    type folder, the output folder (the merchant folder's entry) on the first into that
    merchant."""
    synced: list[Path] = []
    sync = os.fsync

    def spy(descriptor: int) -> None:
        synced.append(Path(os.readlink(f"/proc/self/fd/{descriptor}")))
        sync(descriptor)

    out = tmp_path / "out"  # pytest gives it resolved, as /proc names it
    output = folder_module.FolderOutput(out)
    merchant_dir = out / MERCHANT
    february = TimeRange.from_ms(JANUARY.end_ms, JANUARY.end_ms + 28 * 86_400_000)
    for number, time_range in enumerate((JANUARY, february, JANUARY)):
        chunk = output.chunk(MERCHANT, ExportType.PAYMENTS, time_range)
        parts = [await save_part(chunk, 1, export_file(2, f"e{number}"))]
        manifest = Manifest(
            MERCHANT, ExportType.PAYMENTS, time_range, f"E{number}", HARVESTED_AT, tuple(parts)
        )
        synced.clear()
        with monkeypatch.context() as patch:
            patch.setattr(os, "fsync", spy)
            await chunk.publish(manifest)
        above = [merchant_dir, out] if number == 0 else []
        staging = chunk.staging_dir
        assert synced == [staging / MANIFEST_NAME, staging, merchant_dir / "payments", *above]
    orders = output.chunk(MERCHANT, ExportType.ORDERS, JANUARY)
    parts = [await save_part(orders, 1, export_file(1))]
    synced.clear()
    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", spy)
        await orders.publish(
            Manifest(MERCHANT, ExportType.ORDERS, JANUARY, "E9", HARVESTED_AT, tuple(parts))
        )
    staging = orders.staging_dir
    assert synced == [staging / MANIFEST_NAME, staging, merchant_dir / "orders", merchant_dir]


async def test_publish_drops_staged_files_the_manifest_does_not_list(chunk: ChunkOutput) -> None:
    """Parts left from an abandoned export are not published with the new ones."""
    await stage(chunk, [export_file(1), export_file(2), export_file(3)], "OLD")
    manifest = await stage(chunk, [export_file(4, "n")], "NEW")
    await chunk.publish(manifest)
    assert listing(chunk.final_dir) == {"part-00001.json", MANIFEST_NAME}


async def test_publish_lists_staging_only_when_it_may_hold_what_the_manifest_does_not(
    chunk: ChunkOutput, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A staging folder this chunk made, holding just the parts it committed, is published
    without a listing (each system call in a worker thread costs a lock hand-over with the
    loop). One made by an earlier run, or one where a part was given up after touching the
    disk, is listed, and what the manifest does not name is dropped."""
    listed: list[str] = []  # the staging folder, each time it is listed
    listdir = os.listdir

    def spy(path: Any) -> list[str]:
        shown = os.readlink(f"/proc/self/fd/{path}") if isinstance(path, int) else str(path)
        if shown == str(chunk.staging_dir):
            listed.append(shown)
        return listdir(path)

    monkeypatch.setattr(os, "listdir", spy)
    await chunk.publish(await stage(chunk, [export_file(2)]))
    assert listed == []
    assert listing(chunk.final_dir) == {"part-00001.json", MANIFEST_NAME}

    # An earlier run left a stray file in staging: a new object of the chunk did not make
    # the folder, so it lists it.
    chunk.staging_dir.mkdir()
    (chunk.staging_dir / "part-00009.json").write_bytes(b"{}")
    again = ChunkOutput(chunk.output_dir, MERCHANT, ExportType.PAYMENTS, JANUARY)
    await again.publish(await stage(again, [export_file(3)], "E2"))
    assert len(listed) == 1
    assert listing(again.final_dir) == {"part-00001.json", MANIFEST_NAME}

    # A part given up after its first job: a file of it may be left; publish lists.
    third = ChunkOutput(chunk.output_dir, MERCHANT, ExportType.PAYMENTS, JANUARY)
    manifest = await stage(third, [export_file(4)], "E3")
    writer = await third.open_part(2)
    await writer.write(b'{"elements": [' + b" " * WRITE_BYTES)
    await writer.abort()
    await third.publish(manifest)
    assert len(listed) == 2
    assert listing(third.final_dir) == {"part-00001.json", MANIFEST_NAME}


async def test_a_part_is_whole_however_little_each_write_takes(
    chunk: ChunkOutput, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pieces of a write job go out in one writev; when the kernel takes only part of
    them (as it may), the rest follows, in order, from where it stopped."""
    writev = os.writev
    calls: list[int] = []

    def stingy(descriptor: int, buffers: Any) -> int:
        calls.append(len(buffers))
        return writev(descriptor, [bytes(buffers[0])[:1000]])

    monkeypatch.setattr(os, "writev", stingy)
    body = export_file(700)
    info = await write_pieces(chunk, 1, body, 4096)
    assert (chunk.staging_dir / "part-00001.json").read_bytes() == body
    assert info.size == len(body)
    assert calls[0] == -(-len(body) // 4096)  # every piece handed over in the first call
    # Each call took at most 1000 bytes of the first buffer left: so many calls, no more.
    pieces = [len(body[start : start + 4096]) for start in range(0, len(body), 4096)]
    assert len(calls) == sum(-(-size // 1000) for size in pieces)


async def test_publish_writes_over_a_manifest_a_crash_left_in_staging(chunk: ChunkOutput) -> None:
    """A crash after the manifest was written in staging, before the folder moved, leaves it
    there, perhaps torn: the next publish writes the whole manifest over it."""
    await stage(chunk, [export_file(1)], "OLD")
    (chunk.staging_dir / MANIFEST_NAME).write_text('{"merchant_id": "MERCHANT00001", "ty')
    manifest = await stage(chunk, [export_file(2, "n")], "NEW")
    await chunk.publish(manifest)
    assert (chunk.final_dir / MANIFEST_NAME).read_text() == manifest.to_json()
    assert listing(chunk.final_dir) == {"part-00001.json", MANIFEST_NAME}


async def test_publish_refuses_a_manifest_whose_part_is_not_staged(chunk: ChunkOutput) -> None:
    """A listed part missing from staging is a BadFile and nothing is published."""
    manifest = await stage(chunk, [export_file(1)])
    (chunk.staging_dir / "part-00001.json").unlink()
    with pytest.raises(BadFile, match=r"part-00001\.json is not staged"):
        await chunk.publish(manifest)
    assert not chunk.final_dir.exists()


async def test_publish_refuses_another_chunks_manifest(chunk: ChunkOutput) -> None:
    """A manifest for another range cannot be published into this chunk."""
    manifest = await stage(chunk, [export_file(1)])
    other = TimeRange(JANUARY.end, datetime(2025, 2, 28, tzinfo=UTC))
    wrong = Manifest(MERCHANT, ExportType.PAYMENTS, other, "E1", HARVESTED_AT, manifest.parts)
    with pytest.raises(ValueError, match="does not belong"):
        await chunk.publish(wrong)


@pytest.mark.parametrize("exchange_error", [None, errno.EINVAL, errno.ENOSYS])
async def test_publishing_again_replaces_the_folder(
    tmp_path: Path, exchange_error: int | None
) -> None:
    """A second harvest replaces the first whole, by exchange or by the rename fallback."""
    calls: list[int] = []

    def rename(old: Path, new: Path, flags: int) -> None:
        calls.append(flags)
        if exchange_error is not None:
            raise OSError(exchange_error, os.strerror(exchange_error))
        renameat2(old, new, flags)

    chunk = ChunkOutput(tmp_path / "out", MERCHANT, ExportType.PAYMENTS, JANUARY, rename=rename)
    await chunk.publish(await stage(chunk, [export_file(3, "old"), export_file(3, "old")], "E1"))
    assert calls == []  # nothing to exchange with the first time

    new_body = export_file(2, "new")
    second = await stage(chunk, [new_body], "E2")
    await chunk.publish(second)

    assert calls == [2]
    assert listing(chunk.final_dir) == {"part-00001.json", MANIFEST_NAME}
    assert (chunk.final_dir / "part-00001.json").read_bytes() == new_body
    assert (await chunk.look()).published == second
    assert listing(chunk.final_dir.parent) == {JANUARY.name}


async def test_an_unexpected_exchange_error_is_raised(tmp_path: Path) -> None:
    """Only 'not supported' errors take the fallback; others surface and keep the old folder."""

    def rename(old: Path, new: Path, flags: int) -> None:
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))

    chunk = ChunkOutput(tmp_path / "out", MERCHANT, ExportType.PAYMENTS, JANUARY, rename=rename)
    await chunk.publish(await stage(chunk, [export_file(1)], "E1"))
    with pytest.raises(PermissionError):
        await chunk.publish(await stage(chunk, [export_file(2)], "E2"))
    published = (await chunk.look()).published
    assert published is not None
    assert published.export_id == "E1"


async def test_a_reader_never_sees_a_partial_chunk(chunk: ChunkOutput) -> None:
    """While publish runs, a reader finds either no chunk folder or the whole of it."""
    manifest = await stage(chunk, [export_file(10, str(n)) for n in range(40)])
    expected = {ChunkOutput.part_name(n) for n in range(1, 41)} | {MANIFEST_NAME}
    seen: list[set[str] | None] = []
    stop = threading.Event()

    def read_repeatedly() -> None:
        while not stop.is_set():
            try:
                seen.append(set(os.listdir(chunk.final_dir)))
            except FileNotFoundError:
                seen.append(None)

    reader = threading.Thread(target=read_repeatedly)
    reader.start()
    try:
        await chunk.publish(manifest)
    finally:
        stop.set()
        reader.join(timeout=10)
    assert seen
    assert all(entry is None or entry == expected for entry in seen)
    assert set(os.listdir(chunk.final_dir)) == expected


async def test_discard_staging_removes_it(chunk: ChunkOutput) -> None:
    """Discarding drops the staged parts; discarding nothing is harmless."""
    await stage(chunk, [export_file(1)])
    await chunk.discard_staging()
    assert not chunk.staging_dir.exists()
    await chunk.discard_staging()


# -- manifest -------------------------------------------------------------------------------


def test_manifest_round_trips_in_a_stable_layout() -> None:
    """to_json writes the documented keys in order; from_json reads back the same manifest."""
    parts = (PartInfo(1, 0, 123, "a" * 64, 1000), PartInfo(2, 1, 45, "b" * 64, 5))
    manifest = Manifest(MERCHANT, ExportType.ORDERS, JANUARY, "EXP1", HARVESTED_AT, parts)
    text = manifest.to_json()
    assert text.endswith("}\n")
    document = json.loads(text)
    assert list(document) == [
        "merchant_id",
        "type",
        "range",
        "export_id",
        "harvested_at",
        "objects",
        "parts",
        "empty_reason",
    ]
    assert document["empty_reason"] is None
    assert document["type"] == "ORDERS"
    assert document["range"] == {
        "start": "2025-01-01T00:00:00Z",
        "end": "2025-01-31T00:00:00Z",
        "start_ms": JANUARY.start_ms,
        "end_ms": JANUARY.end_ms,
    }
    assert document["harvested_at"] == "2025-03-01T12:30:15.250000Z"
    assert document["objects"] == 1005
    assert document["parts"][1] == {
        "file": "part-00002.json",
        "url_index": 1,
        "size": 45,
        "sha256": "b" * 64,
        "objects": 5,
    }
    assert Manifest.from_json(text) == manifest
    assert Manifest.from_json(text).to_json() == text


def test_an_empty_chunk_says_why_and_older_manifests_still_read() -> None:
    """A manifest without parts carries its empty_reason; one written before that field
    existed reads back with none."""
    empty = Manifest(
        MERCHANT, ExportType.ORDERS, JANUARY, "EXP1", HARVESTED_AT, (), EmptyReason.NO_FILES
    )
    document = json.loads(empty.to_json())
    assert (document["parts"], document["objects"], document["empty_reason"]) == ([], 0, "no_files")
    assert Manifest.from_json(empty.to_json()) == empty
    del document["empty_reason"]
    assert Manifest.from_json(json.dumps(document)).empty_reason is None


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"merchant_id": "M"}',
        '{"merchant_id": "M", "type": "REFUNDS", "range": {"start_ms": 0, "end_ms": 1},'
        ' "export_id": "E", "harvested_at": "2025-01-01T00:00:00Z", "parts": []}',
        '{"merchant_id": "M", "type": "ORDERS", "range": {"start_ms": 0, "end_ms": 1},'
        ' "export_id": "E", "harvested_at": "2025-01-01T00:00:00Z",'
        ' "parts": [{"file": "x.json", "url_index": 0, "size": 1, "sha256": "", "objects": 1}]}',
        '{"merchant_id": "M", "type": "ORDERS", "range": {"start_ms": 0, "end_ms": 1},'
        ' "export_id": "E", "harvested_at": "2025-01-01T00:00:00", "parts": []}',
        '{"merchant_id": "M", "type": "ORDERS", "range": {"start_ms": 0, "end_ms": 1},'
        ' "export_id": "E", "harvested_at": "2025-01-01T00:00:00Z", "parts": [],'
        ' "empty_reason": 0}',
        '{"merchant_id": "M", "type": "ORDERS", "range": {"start_ms": 0, "end_ms": 1},'
        ' "export_id": "E", "harvested_at": "2025-01-01T00:00:00Z", "parts": [],'
        ' "empty_reason": "bored"}',
    ],
)
def test_a_malformed_manifest_is_a_value_error(text: str) -> None:
    """from_json refuses text that is not a harvester manifest."""
    with pytest.raises(ValueError, match="not a harvester manifest"):
        Manifest.from_json(text)


async def test_an_unreadable_published_manifest_counts_as_none(chunk: ChunkOutput) -> None:
    """A chunk folder whose manifest cannot be read is treated as not harvested."""
    await chunk.publish(await stage(chunk, [export_file(1)]))
    (chunk.final_dir / MANIFEST_NAME).write_text("{ broken")
    assert (await chunk.look()).published is None


async def test_a_chunk_folder_without_a_manifest_counts_as_none_and_is_replaced(
    chunk: ChunkOutput,
) -> None:
    """A folder under the chunk's name that holds no manifest (not the harvester's) is
    treated as not harvested; publish swaps it out."""
    chunk.final_dir.mkdir(parents=True)
    (chunk.final_dir / "notes.txt").write_text("someone else's")
    assert (await chunk.look()).published is None
    manifest = await stage(chunk, [export_file(1)])
    await chunk.publish(manifest)
    assert listing(chunk.final_dir) == {"part-00001.json", MANIFEST_NAME}
    assert listing(chunk.final_dir.parent) == {JANUARY.name}


# -- recover --------------------------------------------------------------------------------


def make_folder(path: Path, *files: str) -> Path:
    path.mkdir(parents=True)
    for name in files:
        (path / name).write_text("x")
    return path


def test_recover_clears_every_kind_of_leftover(tmp_path: Path) -> None:
    """Each crash leftover is restored, cleaned or removed; anything else is left alone."""
    out = tmp_path / "out"
    payments = out / MERCHANT / "payments"
    orders = out / MERCHANT / "orders"
    february = TimeRange(JANUARY.end, datetime(2025, 3, 2, tzinfo=UTC)).name
    march = TimeRange(datetime(2025, 3, 2, tzinfo=UTC), datetime(2025, 4, 1, tzinfo=UTC)).name

    # A crash between the two fallback renames: only the old folder exists.
    make_folder(payments / f".old-{JANUARY.name}", "part-00001.json", MANIFEST_NAME)
    # A crash after the swap, before the old folder was deleted.
    make_folder(payments / february, "part-00001.json", MANIFEST_NAME)
    make_folder(payments / f".old-{february}", "part-00001.json")
    # Staging of an export still in flight, and of one that is not.
    make_folder(orders / f".staging-{JANUARY.name}", "part-00001.json", ".part-00002.json.tmp")
    make_folder(orders / f".staging-{march}", "part-00001.json")
    # Names recover does not own.
    make_folder(payments / ".old-not-a-chunk", "keep")
    make_folder(payments / ".staging-whatever", "keep")
    (payments / "notes.txt").write_text("mine")
    make_folder(out / MERCHANT / "refunds" / f".staging-{march}", "keep")

    asked: list[tuple[str, str, str]] = []

    def keep_staging(merchant_id: str, type_folder: str, chunk_name: str) -> bool:
        asked.append((merchant_id, type_folder, chunk_name))
        return chunk_name == JANUARY.name

    touched = recover(out, keep_staging)

    assert set(touched) == {
        payments / JANUARY.name,
        payments / f".old-{february}",
        orders / f".staging-{JANUARY.name}" / ".part-00002.json.tmp",
        orders / f".staging-{march}",
    }
    assert sorted(asked) == [
        (MERCHANT, "orders", JANUARY.name),
        (MERCHANT, "orders", march),
    ]
    assert listing(payments / JANUARY.name) == {"part-00001.json", MANIFEST_NAME}
    assert listing(payments) == {
        JANUARY.name,
        february,
        ".old-not-a-chunk",
        ".staging-whatever",
        "notes.txt",
    }
    assert listing(orders) == {f".staging-{JANUARY.name}"}
    assert listing(orders / f".staging-{JANUARY.name}") == {"part-00001.json"}
    assert listing(out / MERCHANT / "refunds") == {f".staging-{march}"}
    assert recover(out, keep_staging) == []


def test_recover_of_a_missing_output_folder_does_nothing(tmp_path: Path) -> None:
    """Before the first run there is no output folder and nothing to recover."""
    assert recover(tmp_path / "absent", lambda *_: False) == []
    assert not (tmp_path / "absent").exists()


async def test_a_kept_staging_is_reused_after_recover(chunk: ChunkOutput) -> None:
    """Parts staged before a crash survive recover and are recognised as saved."""
    info = await save_part(chunk, 1, export_file(3))
    writer = await chunk.open_part(2)
    await writer.write(b'{"elements": [' + b" " * WRITE_BYTES)  # the crash comes mid-download
    assert ".part-00002.json.tmp" in listing(chunk.staging_dir)
    recover(chunk.output_dir, lambda *_: True)
    assert listing(chunk.staging_dir) == {"part-00001.json"}
    assert await chunk.saved_part(1, info.sha256)
    await writer.abort()
