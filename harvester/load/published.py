"""The published chunks of an output, read-only: from the output folder or from the bucket.

Only what a reader may rely on is read: a chunk is a non-hidden folder (or key prefix) with a
`_manifest.json`, and its data are the parts that manifest lists, checked against it. Staging
(`.staging-*` folders, the bucket's `.staging/` prefix) and swap leftovers (`.old-*`) are
never looked at. The interface is synchronous: dlt pulls the rows from a worker thread.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from harvester.clover.chunks import ExportType
from harvester.errors import OutputError
from harvester.load.verify import BadChunk, check_part, elements, fingerprint, read_manifest
from harvester.output.bucket import BucketOutput
from harvester.output.folder import MANIFEST_NAME, ChunkOutput, Manifest, PartInfo

MANIFEST_MAX_BYTES = 16 * 1024 * 1024
_READ_ATTEMPTS = 3  # a chunk replaced while it is read is read again from its new manifest
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class ChunkRef:
    merchant_id: str
    type: ExportType
    name: str  # the chunk's folder name: its TimeRange.name

    @property
    def key(self) -> str:
        """The chunk's place in the layout, and its key in the load state."""
        return f"{self.merchant_id}/{self.type.folder}/{self.name}"


@dataclass(frozen=True, slots=True)
class VerifiedChunk:
    fingerprint: str
    manifest: Manifest
    parts: tuple[tuple[PartInfo, bytes], ...]  # each part's bytes, checked against the manifest


class Published(Protocol):
    def names(self, merchant_id: str, type: ExportType) -> list[str]:
        """The chunks published for the merchant and type, in order."""
        ...

    def where(self, chunk: ChunkRef) -> str:
        """The chunk's folder or URL, for messages."""
        ...

    def manifest(self, chunk: ChunkRef) -> bytes | None:
        """The chunk's manifest as stored; None if there is none (now)."""
        ...

    def part(self, chunk: ChunkRef, file_name: str) -> bytes | None:
        """The part as stored (at most the size cap and a byte); None if it is gone."""
        ...


def verified_chunk(source: Published, chunk: ChunkRef, manifest: bytes) -> VerifiedChunk:
    """The chunk's parts, each checked against `manifest`. BadChunk (naming the chunk) if one
    does not hold up. A part gone because the chunk was harvested again meanwhile: the chunk
    is read again from its new manifest."""
    where = source.where(chunk)
    for _ in range(_READ_ATTEMPTS):
        found = read_manifest(where, manifest, chunk.merchant_id, chunk.type, chunk.name)
        parts = []
        for part in found.parts:
            data = source.part(chunk, ChunkOutput.part_name(part.index))
            if data is None:
                break
            check_part(where, part, data)
            elements(where, part, data)  # parsed again as it loads: the rows are not kept
            parts.append((part, data))
        else:
            return VerifiedChunk(fingerprint(manifest), found, tuple(parts))
        again = source.manifest(chunk)
        if again is None or again == manifest:
            break
        manifest = again
    missing = ChunkOutput.part_name(found.parts[len(parts)].index)
    raise BadChunk(f"{where}: {missing} is missing")


class FolderChunks:
    """The published chunks under an output folder."""

    def __init__(self, root: Path, max_part_bytes: int) -> None:
        self.root = root
        self._limit = max_part_bytes

    def names(self, merchant_id: str, type: ExportType) -> list[str]:
        try:
            entries = os.listdir(self.root / merchant_id / type.folder)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise OutputError(f"{self.root / merchant_id / type.folder}: {exc.strerror}") from exc
        return sorted(name for name in entries if not name.startswith("."))

    def where(self, chunk: ChunkRef) -> str:
        return str(self.root / chunk.key)

    def manifest(self, chunk: ChunkRef) -> bytes | None:
        return self._read(self.root / chunk.key / MANIFEST_NAME, MANIFEST_MAX_BYTES)

    def part(self, chunk: ChunkRef, file_name: str) -> bytes | None:
        return self._read(self.root / chunk.key / file_name, self._limit)

    @staticmethod
    def _read(path: Path, limit: int) -> bytes | None:
        try:
            with path.open("rb") as file:
                return file.read(limit + 1)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise OutputError(f"{path}: {exc.strerror}") from exc


class BucketChunks:
    """The published chunks under a bucket prefix, read through the harvest's own client.

    The client lives on the event loop `loop`, which must keep running while dlt reads from
    its worker thread.
    """

    def __init__(
        self, bucket: BucketOutput, loop: asyncio.AbstractEventLoop, max_part_bytes: int
    ) -> None:
        self._bucket = bucket
        self._loop = loop
        self._limit = max_part_bytes

    def names(self, merchant_id: str, type: ExportType) -> list[str]:
        prefix = f"{self._bucket.root}{merchant_id}/{type.folder}/"
        names = []
        for key in self._call(self._keys(prefix)):
            name, _, rest = key[len(prefix) :].partition("/")
            if rest == MANIFEST_NAME and not name.startswith("."):
                names.append(name)
        return sorted(names)

    def where(self, chunk: ChunkRef) -> str:
        return self._bucket.url(f"{self._bucket.root}{chunk.key}")

    def manifest(self, chunk: ChunkRef) -> bytes | None:
        return self._get(f"{self._bucket.root}{chunk.key}/{MANIFEST_NAME}", MANIFEST_MAX_BYTES)

    def part(self, chunk: ChunkRef, file_name: str) -> bytes | None:
        return self._get(f"{self._bucket.root}{chunk.key}/{file_name}", self._limit)

    def _get(self, key: str, limit: int) -> bytes | None:
        return self._call(self._fetch(key, limit))

    async def _fetch(self, key: str, limit: int) -> bytes | None:
        size = await self._bucket.size(key)
        if size is None:
            return None
        if size > limit:
            # Larger than anything the harvest stores: not read at all.
            raise BadChunk(f"{self._bucket.url(key)}: {size} bytes, more than {limit}")
        return await self._bucket.read(key, limit)

    async def _keys(self, prefix: str) -> list[str]:
        try:
            return [key async for key in self._bucket.keys(prefix)]
        except (BotoCoreError, ClientError) as exc:
            raise OutputError(
                f"{self._bucket.url(prefix)}: cannot list: {self._bucket.describe(exc)}"
            ) from exc

    def _call(self, work: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()
