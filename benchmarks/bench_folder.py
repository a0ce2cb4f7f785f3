"""CPU per chunk of the output folder: look, one part staged, publish (issue 18's output side).

The harvester's folder output lands each chunk through a few worker-thread jobs (the look,
the part's write-sync-rename, the publish), and a thread hop costs CPU of its own: futex
wake-ups and GIL hand-offs. This times that path alone, without HTTP or the state: chunks
of one part each (`--merchants` merchants x 2 types, a part of `--objects` Clover-sized
objects fed in 64 KiB pieces), `--concurrent` at a time, into a fresh folder under TMPDIR.

The baseline, measured in the same run, is the floor: the same files and folders, hashed
and checked the same way in the event loop, the same system calls the layout's promises
need (listing, staging folder, part, manifest, every sync, the rename into place), all of
a chunk's in one thread job. The harvester's figure less the floor's is the price of its
layering. CPU is the process's user + system time (every thread) over the chunks.

The machine is shared and noisy, and creating a file on ext4 costs more while other
processes delete many (the inodes freed lately are passed over): the cases take turns,
`--runs` times, and each figure is given as its range and median. TMPDIR=/dev/shm leaves
the disk out.

    .venv/bin/python -m benchmarks.bench_folder [--runs 3] [--merchants 1000] [--objects 100]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from harvester.clover.chunks import ExportType, TimeRange
from harvester.clover.export_file import StreamCheck
from harvester.output.folder import MANIFEST_NAME, ChunkOutput, FolderOutput, Manifest, PartInfo

RANGE = TimeRange(datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 1, 31, tzinfo=UTC))
HARVESTED_AT = datetime(2025, 2, 1, tzinfo=UTC)
PIECE_BYTES = 64 * 1024
OWNER = "bench-1"
FIRST_TYPE = next(iter(ExportType))


@dataclass(frozen=True, slots=True)
class Measure:
    cpu_us: float  # per chunk, user + system, every thread
    system_us: float
    wall_s: float


def export_file(objects: int) -> bytes:
    """A Clover-sized export file: objects of about 450 bytes."""
    elements = [{"id": f"O{n:012d}", "note": "x" * 400} for n in range(objects)]
    return json.dumps({"elements": elements}).encode()


def pieces_of(body: bytes) -> list[bytes]:
    return [body[start : start + PIECE_BYTES] for start in range(0, len(body), PIECE_BYTES)]


async def harvester_chunk(
    output: FolderOutput, merchant: str, kind: ExportType, body: bytes
) -> None:
    """What the download does with a chunk of one part: look, stage the part, publish."""
    chunk = output.chunk(merchant, kind, RANGE, owner=OWNER)
    await chunk.look()
    part = await chunk.open_part(1)
    async with part:
        for piece in pieces_of(body):
            await part.write(piece)
        info = await part.commit(len(body), 0)
    await chunk.publish(Manifest(merchant, kind, RANGE, "E1", HARVESTED_AT, (info,)))


async def floor_chunk(output: FolderOutput, merchant: str, kind: ExportType, body: bytes) -> None:
    """The same files, hashed and checked the same way, in one thread job."""
    chunk = output.chunk(merchant, kind, RANGE, owner=OWNER)
    digest, check = hashlib.sha256(), StreamCheck()
    pieces = pieces_of(body)
    for piece in pieces:
        digest.update(piece)
        check.feed(piece)
    info = PartInfo(1, 0, len(body), digest.hexdigest(), check.finish())
    manifest = Manifest(merchant, kind, RANGE, "E1", HARVESTED_AT, (info,))
    await asyncio.to_thread(_land, chunk, pieces, manifest.to_json().encode())


def _land(chunk: ChunkOutput, pieces: list[bytes], manifest: bytes) -> None:
    type_dir = chunk.final_dir.parent
    with contextlib.suppress(FileNotFoundError):
        os.listdir(type_dir)  # the look
    chunk.staging_dir.mkdir(parents=True)
    temp = chunk.staging_dir / ".part-00001.json.tmp"
    write_synced(temp, pieces)
    os.rename(temp, chunk.staging_dir / "part-00001.json")
    write_synced(chunk.staging_dir / MANIFEST_NAME, [manifest])
    sync_folder(chunk.staging_dir)
    os.rename(chunk.staging_dir, chunk.final_dir)
    # As the harvester does on a type folder's first publish (each chunk's here), and on a
    # merchant's first (the first type's, here).
    above = [type_dir.parent.parent] if chunk.type is FIRST_TYPE else []
    for folder in (type_dir, type_dir.parent, *above):
        sync_folder(folder)


def write_synced(path: Path, pieces: list[bytes]) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        for piece in pieces:
            os.write(descriptor, piece)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def sync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


Land = Callable[[FolderOutput, str, ExportType, bytes], Awaitable[None]]
CASES: tuple[tuple[str, Land], ...] = (
    ("harvester (look, part, publish)", harvester_chunk),
    ("floor (one job per chunk)", floor_chunk),
)


async def _land_all(land: Land, folder: Path, merchants: int, body: bytes, concurrent: int) -> None:
    output = FolderOutput(folder)
    room = asyncio.Semaphore(concurrent)

    async def one(merchant: str, kind: ExportType) -> None:
        async with room:
            await land(output, merchant, kind, body)

    async with asyncio.TaskGroup() as group:
        for number in range(merchants):
            for kind in ExportType:
                group.create_task(one(f"M{number:06d}", kind))


def measure(land: Land, folder: Path, merchants: int, body: bytes, concurrent: int) -> Measure:
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    asyncio.run(_land_all(land, folder, merchants, body, concurrent))
    wall_s = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    chunks = merchants * len(ExportType)
    system_s = after.ru_stime - before.ru_stime
    cpu_s = after.ru_utime - before.ru_utime + system_s
    return Measure(cpu_s / chunks * 1e6, system_s / chunks * 1e6, wall_s)


def _spread(values: list[float]) -> str:
    return f"{min(values):6.0f}-{max(values):6.0f} ({statistics.median(values):6.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="rounds of both cases (default 3)")
    parser.add_argument("--merchants", type=int, default=1000, help="x 2 types (default 1000)")
    parser.add_argument("--objects", type=int, default=100, help="per part (default 100)")
    parser.add_argument("--concurrent", type=int, default=8, help="chunks at a time (default 8)")
    args = parser.parse_args()
    if min(args.runs, args.merchants, args.objects, args.concurrent) < 1:
        parser.error("--runs, --merchants, --objects and --concurrent must be at least 1")
    body = export_file(args.objects)
    found: dict[str, list[Measure]] = {name: [] for name, _ in CASES}
    with tempfile.TemporaryDirectory(prefix="bench-folder-") as scratch:
        print(
            f"output folder in {scratch}: {args.merchants} merchants x 2 types, one part of "
            f"{len(body)} bytes per chunk, {args.concurrent} chunks at a time"
        )
        print(f"{'case':<34} {'cpu us/chunk':>12} {'system':>7} {'wall s':>7}")
        for round_ in range(args.runs):
            for number, (name, land) in enumerate(CASES):
                folder = Path(scratch) / f"round{round_}-case{number}"
                result = measure(land, folder, args.merchants, body, args.concurrent)
                found[name].append(result)
                print(
                    f"{name:<34} {result.cpu_us:12.0f} {result.system_us:7.0f} {result.wall_s:7.2f}"
                )
    print(f"cpu us per chunk over {args.runs} rounds: lowest-highest (median)")
    for name, _ in CASES:
        print(f"{name:<34} {_spread([result.cpu_us for result in found[name]])}")
    (harvester, _), (floor, _) = CASES
    over = [a.cpu_us - b.cpu_us for a, b in zip(found[harvester], found[floor], strict=True)]
    print(f"{'harvester over the floor':<34} {_spread(over)}")


if __name__ == "__main__":
    main()
