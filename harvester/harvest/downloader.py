"""A finished export's files: downloaded in parallel, checked, staged, published as a chunk.

A chunk whose export listed no files, or only files without an object, is published as an
empty chunk: a folder whose manifest lists no parts and says why (`empty_reason`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence

import aiohttp

from harvester.clock import Clock
from harvester.clover.api import Writer, download_file
from harvester.clover.chunks import ExportType
from harvester.config import Timing
from harvester.errors import (
    BadFile,
    CloverUnavailable,
    FileExpired,
    FileTooLarge,
    HarvesterError,
)
from harvester.logs import get_logger
from harvester.output.folder import EmptyReason, Manifest, PartInfo
from harvester.output.room import output_error
from harvester.output.target import ChunkTarget
from harvester.pacing.backoff import backoff_delay
from harvester.scrub import describe_url
from harvester.state.records import ChunkRecord, ExportRecord, PartRecord, StateStore


def download_deadline_s(received: int, timing: Timing) -> float:
    """How long a download may have taken once `received` bytes have arrived.

    A body must average `download_min_bytes_per_s` after the first `download_floor_s`, and
    no download takes longer than `download_cap_s`: a body that trickles in has failed.
    """
    return min(
        timing.download_cap_s,
        timing.download_floor_s + received / timing.download_min_bytes_per_s,
    )


class Downloader:
    """Every file download of the run shares one limit, `max_concurrent_downloads`."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        store: StateStore,
        clock: Clock,
        timing: Timing,
        max_concurrent: int,
        rng: random.Random,
        max_file_bytes: int | None = None,
    ) -> None:
        self._session = session
        self._store = store
        self._clock = clock
        self._timing = timing
        self._limit = asyncio.Semaphore(max_concurrent)
        self._rng = rng
        self._max_file_bytes = max_file_bytes

    async def publish_chunk(
        self,
        output: ChunkTarget,
        chunk: ChunkRecord,
        export: ExportRecord,
        published: Manifest | None,
        saved_parts: Sequence[PartRecord],
    ) -> Manifest:
        """Save every part not saved yet, then swap the chunk's folder into place.

        `published`: the manifest in place as the chunk was looked at (`ChunkTarget.look`);
        `saved_parts`: the export's parts the state holds, read under the chunk's claim.
        """
        recorded = {part.index: part for part in saved_parts}
        if published is not None and published.export_id == export.id:
            # The folder went into place before a crash kept the store from hearing of it.
            # A bucket's staging outlives its publish until tidied (a folder's is renamed).
            await output.discard_staging()
            return published
        saved: dict[int, PartInfo] = {}
        for url_index in range(len(export.urls)):
            index = url_index + 1
            part = recorded.get(index)
            if part is not None and await output.saved_part(index, part.sha256):
                saved[index] = PartInfo(index, url_index, part.size, part.sha256, part.objects)
        missing = [i for i in range(len(export.urls)) if i + 1 not in saved]
        if missing:
            self._check_available(export)
        left = _PartsLeft(len(missing))
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._fetch_part(output, export, url_index, left))
                    for url_index in missing
                ]
        except ExceptionGroup as errors:
            raise _most_telling(errors) from errors
        for task in tasks:
            info = task.result()
            saved[info.index] = info
        parts = tuple(saved[index] for index in sorted(saved))
        empty_reason = None
        if not export.urls:
            empty_reason = EmptyReason.NO_FILES
        elif not any(part.objects for part in parts):
            # Files without one object say nothing a reader needs: an empty chunk, no parts.
            empty_reason, parts = EmptyReason.EMPTY_FILES, ()
        manifest = Manifest(
            merchant_id=chunk.merchant_id,
            type=ExportType(chunk.type),
            range=chunk.range,
            export_id=export.id,
            harvested_at=self._clock.now(),
            parts=parts,
            empty_reason=empty_reason,
        )
        try:
            return await output.publish(manifest)
        except OSError as exc:
            raise output_error(exc) from exc

    def _check_available(self, export: ExportRecord) -> None:
        if export.available_until is not None and self._clock.now() >= export.available_until:
            raise FileExpired(
                f"export {export.id}: files expired at {export.available_until.isoformat()}"
            )

    async def _fetch_part(
        self, output: ChunkTarget, export: ExportRecord, url_index: int, left: _PartsLeft
    ) -> PartInfo:
        """Download one part until it is saved; record it in the store unless it is the last
        of the chunk's to be saved: the chunk is published right after that one (a crash
        in between costs its download again, where a record costs every export a store
        operation: most exports are of one file)."""
        index = url_index + 1
        failures = 0
        log = get_logger().bind(export_id=export.id, part=index)
        while True:
            self._check_available(export)
            try:
                async with self._limit:
                    info = await self._download(
                        output, export.urls[url_index], index, url_index, left
                    )
                if left.saved():
                    part = PartRecord(
                        export.id, index, url_index, info.size, info.sha256, info.objects
                    )
                    await asyncio.shield(self._store.record_part(part))
                log.info("file.saved", size=info.size, objects=info.objects)
                return info
            except OSError as exc:
                raise output_error(exc) from exc
            except (BadFile, CloverUnavailable) as exc:
                failures += 1
                if failures >= self._timing.max_attempts:
                    raise
                delay = backoff_delay(
                    failures - 1, self._timing.backoff_base_s, self._timing.backoff_max_s, self._rng
                )
                log.warning("file.retry", error=str(exc), attempt=failures, wait_s=round(delay, 3))
                await self._clock.sleep(delay)

    async def _download(
        self, output: ChunkTarget, url: str, index: int, url_index: int, left: _PartsLeft
    ) -> PartInfo:
        """One try at one file, within its deadline (real time, like every network timeout)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        received = 0
        deadline = asyncio.timeout_at(started + download_deadline_s(0, self._timing))

        def on_size(size: int) -> None:
            nonlocal received
            received = size
            deadline.reschedule(started + download_deadline_s(size, self._timing))

        try:
            async with deadline:
                part = await output.open_part(index)
                async with part:
                    size = await download_file(
                        self._session,
                        url,
                        CappedWriter(part, self._max_file_bytes, on_size),
                        self._timing.request_timeout_s,
                    )
                    # The chunk's publish follows the last of its parts at once (`left` is
                    # told after this returns): that part may be staged by it.
                    return await part.commit(size, url_index, publish_next=left.last())
        except FileTooLarge as exc:
            # Not tried again: the same export's file would be just as big.
            raise FileTooLarge(f"{describe_url(url)}: {exc}; download stopped") from exc
        except TimeoutError:
            if not deadline.expired():
                raise
            elapsed = loop.time() - started
            raise CloverUnavailable(
                f"{describe_url(url)}: too slow: {received} bytes in {elapsed:.1f} s "
                f"(a download must average {self._timing.download_min_bytes_per_s:g} bytes/s "
                f"after {self._timing.download_floor_s:g} s, and end within "
                f"{self._timing.download_cap_s:g} s)"
            ) from None


class _PartsLeft:
    """How many of a chunk's parts are still to be saved."""

    __slots__ = ("_count",)

    def __init__(self, count: int) -> None:
        self._count = count

    def saved(self) -> bool:
        """One more is saved: True if others are still to come (so it is worth recording)."""
        self._count -= 1
        return self._count > 0

    def last(self) -> bool:
        """True if the part about to be saved is the last still to come: every other is."""
        return self._count == 1


class CappedWriter:
    """Passes a file's bytes on to its part, never letting it grow past `max_bytes`.

    The write that would pass the cap raises FileTooLarge and writes nothing: an endless
    body fills no disk. `on_size` hears the size after each write (the deadline grows).
    """

    def __init__(self, part: Writer, max_bytes: int | None, on_size: Callable[[int], None]) -> None:
        self._part = part
        self._max_bytes = max_bytes
        self._on_size = on_size
        self.size = 0

    async def write(self, data: bytes) -> None:
        if self._max_bytes is not None and self.size + len(data) > self._max_bytes:
            raise FileTooLarge(f"larger than max_file_bytes ({self._max_bytes} bytes)")
        await self._part.write(data)
        self.size += len(data)
        self._on_size(self.size)


def _most_telling(errors: ExceptionGroup[Exception]) -> Exception:
    """Of several parts' failures, the one that decides what happens to the chunk."""
    flat: list[Exception] = []
    pending: list[Exception] = [errors]
    while pending:
        error = pending.pop()
        if isinstance(error, ExceptionGroup):
            pending.extend(error.exceptions)
        else:
            flat.append(error)
    for kind in (FileExpired, HarvesterError):
        for error in flat:
            if isinstance(error, kind):
                return error
    return flat[0]
