"""Where harvested chunks land: the one interface of the output folder and the bucket.

The downloader and the scheduler see only these Protocols; `open_output` picks the
implementation the config asks for (output/folder.py for a folder, output/bucket.py for
`s3://`). Both keep the same layout and the same promises to readers: a chunk appears
only complete, with its `_manifest.json`, and a chunk harvested again is replaced whole.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Protocol, Self

from harvester.clover.chunks import ExportType, TimeRange
from harvester.config import Config
from harvester.output.folder import ChunkLook, FolderOutput, KeepStaging, Manifest, PartInfo


class StagedPart(Protocol):
    """One part being written, hashed as it streams; `async with` aborts it unless committed."""

    async def write(self, data: bytes) -> None: ...

    async def commit(
        self, expected_size: int | None, url_index: int, *, publish_next: bool = False
    ) -> PartInfo:
        """Check the part (BadFile if truncated or not an export file) and stage it.

        `publish_next`: the chunk's publish comes right after, with nothing in between;
        the part may then be left for publish to stage (a folder does so, to save a thread
        job), and is not staged if that publish never comes.
        """
        ...

    async def abort(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


class ChunkTarget(Protocol):
    """Where one chunk's parts are staged and published."""

    async def open_part(self, index: int) -> StagedPart: ...

    async def saved_part(self, index: int, expected_sha256: str) -> bool:
        """True if part `index` is staged with this sha256: a resumed run need not fetch it."""
        ...

    async def publish(self, manifest: Manifest) -> Manifest:
        """Put the staged parts in place with their manifest, replacing any earlier harvest;
        returns the manifest as published. BadFile if a listed part is not staged."""
        ...

    async def discard_staging(self) -> None: ...

    async def adopt_staging(self, gone_owners: Collection[str]) -> str | None:
        """Take over what processes now gone (`gone_owners`) staged for this chunk; call
        holding its claim. Returns where it was, if anything was adopted."""
        ...

    async def look(self) -> ChunkLook:
        """The published manifest and whether `adopt_staging` may find anything, at once:
        what a download looks at first."""
        ...


class Output(Protocol):
    """The whole destination: a folder or a bucket prefix."""

    def chunk(
        self, merchant_id: str, type: ExportType, range: TimeRange, owner: str | None = None
    ) -> ChunkTarget:
        """Where the chunk goes; `owner` (this process's id) names its staging where the
        implementation keeps staging per process."""
        ...

    async def recover(
        self, keep_staging: KeepStaging, owner_gone: Callable[[str | None], bool] | None = None
    ) -> list[str]:
        """Clear what a crash left behind; call at start-up, before any work. Returns what
        was removed or restored, for the log. `owner_gone(owner)` says whether a process
        that staged something is gone (None for what predates owners); without it, this
        process is alone and everything left behind is a gone process's."""
        ...


@asynccontextmanager
async def open_output(config: Config) -> AsyncIterator[Output]:
    """The output the config names, checked usable (a bucket: reachable, writable)."""
    if config.bucket is not None:
        # Imported here: only bucket users pay for loading the S3 client.
        from harvester.output.bucket import open_bucket

        async with open_bucket(
            config.bucket, config.timing, config.max_concurrent_downloads
        ) as bucket:
            yield bucket
        return
    if config.output_dir is None:  # pragma: no cover -- load_config sets one of the two
        raise ValueError("the config names neither an output folder nor a bucket")
    yield FolderOutput(config.output_dir)
