"""The output in an S3 bucket (AWS or an S3-compatible server): the folder's layout and promises.

    <prefix>/<merchant_id>/<payments|orders>/<chunk>/part-00001.json ...
    <prefix>/<merchant_id>/<payments|orders>/<chunk>/_manifest.json

Same names, same bytes, same manifest as harvester/output/folder.py writes to a folder. The
harvester's work in progress lives under `<prefix>/.staging/`, in names that never match
`part-*.json`:

    <prefix>/.staging/<merchant_id>/<type>/<chunk>/.part-00001.json   a checked part
    <prefix>/.staging/<merchant_id>/<type>/<chunk>/.part-00001.sha256 written after it
    <prefix>/.staging/<merchant_id>/<type>/<chunk>/.publishing.json   a publish under way

A bucket has no atomic rename, so the manifest is the commit point, and a part a manifest
names is never overwritten: publishing copies the staged parts to part numbers that no live
object uses (a chunk harvested again alternates between two ranges of numbers), then writes
`_manifest.json`, then deletes the previous export's parts, then the staging. A reader that
follows `_manifest.json` sees the old export or the new one, never a mix; a part of the old
one may be gone (404) by the time it asks for it, and then it reads the manifest again.
`.publishing.json` lets the next run finish the tidying a crash interrupted.

Parts stream from the file host to the bucket: kept in memory up to `part_size_mib`, sent as
one PUT if the file ends there, as a multipart upload otherwise. Each piece is checked as it
passes (harvester/clover/export_file.py), so nothing is read back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import io
import re
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from harvester.clover.chunks import ExportType, TimeRange
from harvester.clover.export_file import StreamCheck
from harvester.config import Bucket, Secret, Timing
from harvester.errors import BadFile, ConfigError, OutputError
from harvester.output.folder import (
    MANIFEST_NAME,
    ChunkLook,
    ChunkOutput,
    KeepStaging,
    Manifest,
    PartInfo,
    check_folder_name,
)

if TYPE_CHECKING:
    from types_aiobotocore_s3.client import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

STAGING = ".staging"
_PUBLISHING = ".publishing.json"
_LIVE_PART = re.compile(r"part-(\d{5,})\.json")
_MIB = 1024 * 1024
_MESSAGE_CHARS = 200  # of a server's error message, in ours
_MANIFEST_MAX_BYTES = 16 * _MIB
_COPIES_AT_ONCE = 8
_DELETE_BATCH = 1000  # S3's limit per DeleteObjects
# Answers that mean "these credentials are not accepted", whatever the provider calls them.
_REFUSED_CREDENTIALS = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "InvalidClientTokenId",
        "AuthorizationHeaderMalformed",
    }
)


@asynccontextmanager
async def open_bucket(
    settings: Bucket, timing: Timing, connections: int, *, writable: bool = True
) -> AsyncIterator[BucketOutput]:
    """A client for the bucket, checked before any work: it exists, and it takes writes.

    ConfigError (exit 2) if the bucket is missing, or refuses the credentials or writes;
    OutputError if it cannot be reached. With `writable=False` (a reader: `harvester load`)
    nothing is checked or written here; its reads name what fails.
    """
    config = AioConfig(
        connect_timeout=timing.request_timeout_s,
        read_timeout=timing.request_timeout_s,
        # botocore's standard mode retries 500, 503, throttling and broken connections with
        # exponential backoff and jitter.
        retries={"mode": "standard", "max_attempts": timing.max_attempts},
        max_pool_connections=max(10, connections),
        # S3-compatible servers do not all know the newer checksum trailers.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path" if settings.endpoint_url else "auto"},
        user_agent_extra="clover-harvester",
    )
    secrets = [
        secret.reveal()
        for secret in (settings.access_key_id, settings.secret_access_key, settings.session_token)
        if secret is not None
    ]
    # Without keys here botocore's standard chain finds them (environment, profile, role).
    given = settings.access_key_id is not None and settings.secret_access_key is not None
    region = settings.region or ("us-east-1" if settings.endpoint_url else None)
    # The config has checked endpoint and region: creating the client raises nothing of ours.
    client_context = get_session().create_client(
        "s3",
        region_name=region,
        endpoint_url=settings.endpoint_url,
        config=config,
        aws_access_key_id=_revealed(settings.access_key_id) if given else None,
        aws_secret_access_key=_revealed(settings.secret_access_key) if given else None,
        aws_session_token=_revealed(settings.session_token) if given else None,
    )
    async with client_context as client:
        output = BucketOutput(client, settings, secrets)
        if writable:
            await output.check()
        yield output


class BucketOutput:
    """The bucket prefix as the harvest sees it (harvester/output/target.py's Output)."""

    def __init__(self, client: S3Client, settings: Bucket, secrets: Iterable[str]) -> None:
        self._client = client
        self.settings = settings
        self.name = settings.name
        self.root = f"{settings.prefix}/" if settings.prefix else ""
        self.part_size = settings.part_size_mib * _MIB
        self._secrets = tuple(secrets)

    def __repr__(self) -> str:
        return f"BucketOutput({self.settings.url!r})"

    def chunk(
        self, merchant_id: str, type: ExportType, range: TimeRange, owner: str | None = None
    ) -> BucketChunk:
        """`owner` is not part of the keys: a chunk's staging prefix is the chunk's, and only
        the process holding the chunk's claim writes it (a new holder reuses its parts)."""
        return BucketChunk(self, merchant_id, type, range)

    def url(self, key: str) -> str:
        return f"s3://{self.name}/{key}"

    async def check(self) -> None:
        """Refuse, before any work, a bucket that is missing or will not take our writes."""
        where = f"output_url ({self.settings.url})"
        try:
            await self._client.head_bucket(Bucket=self.name)
            probe = f"{self.root}{STAGING}/.probe-{uuid.uuid4().hex}"
            await self._client.put_object(Bucket=self.name, Key=probe, Body=b"")
            await self._client.delete_object(Bucket=self.name, Key=probe)
        except NoCredentialsError:
            raise ConfigError(
                "object_store: no credentials found: set access_key_id and secret_access_key, "
                "or provide them the usual way (environment, profile, instance role)"
            ) from None
        except ClientError as exc:
            status, code = _status(exc), _code(exc)
            if status == 404 or code == "NoSuchBucket":
                raise ConfigError(f"{where}: the bucket {self.name!r} does not exist") from None
            if code in _REFUSED_CREDENTIALS or (status == 403 and code in ("403", "")):
                raise ConfigError(
                    f"object_store: the bucket refused the credentials ({self.describe(exc)}); "
                    f"check access_key_id and secret_access_key"
                ) from None
            if status == 403:
                raise ConfigError(
                    f"{where}: access denied ({self.describe(exc)}); the credentials need "
                    f"to list, read, write and delete objects under the prefix"
                ) from None
            raise OutputError(f"{where}: {self.describe(exc)}") from None
        except (BotoCoreError, aiohttp.ClientError, TimeoutError) as exc:
            raise OutputError(f"{where}: cannot reach the bucket: {self.describe(exc)}") from None

    async def recover(
        self, keep_staging: KeepStaging, owner_gone: Callable[[str | None], bool] | None = None
    ) -> list[str]:
        """Clear what a crash left in the bucket; call at start-up, before any work.

        Only for a process alone on the state (`owner_gone` None): staging keys name no
        owner, so while other processes live, what is staged may be theirs and is left
        alone (the next process to start alone clears it).

        - a `.publishing.json` means a publish was interrupted: the chunk's live parts its
          live manifest does not list are deleted (the new export's, if the crash came
          before the manifest; the old one's, if after), then the record itself;
        - unfinished multipart uploads under the staging prefix are aborted;
        - a chunk's staging is deleted unless keep_staging(merchant_id, type_folder,
          chunk_name) says its export is still in flight, so that its parts are reused;
        - anything else under the staging prefix is deleted: it is the harvester's.

        Returns the s3:// URLs removed, for the log. Nothing outside the staging prefix is
        touched but the live parts of an interrupted publish.
        """
        touched: list[str] = []
        if owner_gone is not None:
            return touched
        staging_root = f"{self.root}{STAGING}/"
        async with self._translated(self.url(staging_root)):
            uploads = await self._unfinished_uploads(staging_root)
            for key, upload_id in uploads:
                await self._client.abort_multipart_upload(
                    Bucket=self.name, Key=key, UploadId=upload_id
                )
                touched.append(self.url(key))
            groups: dict[tuple[str, ...], list[str]] = defaultdict(list)
            async for key in self.keys(staging_root):
                segments = key.removeprefix(staging_root).split("/")
                groups[tuple(segments[:-1]) if len(segments) == 4 else ()].append(key)
        for where, keys in sorted(groups.items()):
            doomed = keys
            named = _staged_chunk(where)
            if named is not None:
                chunk = self.chunk(*named)
                if chunk.publishing_key in keys:
                    touched += await chunk.finish_interrupted_publish()
                if keep_staging(*where):
                    doomed = [key for key in keys if key == chunk.publishing_key]
            await self.delete(doomed)
            touched += [self.url(key) for key in doomed]
        return touched

    # -- requests, shared by the chunks ----------------------------------------------------

    async def keys(self, prefix: str) -> AsyncIterator[str]:
        """Every key under `prefix`, in order."""
        paginator = self._client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.name, Prefix=prefix):
            for item in page.get("Contents", []):
                if "Key" in item:
                    yield item["Key"]

    async def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = keys[start : start + _DELETE_BATCH]
            async with self._translated(self.url(batch[0])):
                answer = await self._client.delete_objects(
                    Bucket=self.name,
                    Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
                )
            errors = answer.get("Errors", [])
            if errors:
                first = errors[0]
                raise OutputError(
                    f"{self.url(first.get('Key', '?'))}: delete failed: "
                    f"{self._scrub(first.get('Code', '?'))} "
                    f"({len(errors)} of {len(batch)} keys)"
                )

    async def read(self, key: str, limit: int) -> bytes | None:
        """The object's bytes, None if there is none; OutputError if larger than `limit`."""
        async with self._translated(self.url(key)):
            try:
                answer = await self._client.get_object(Bucket=self.name, Key=key)
            except ClientError as exc:
                if _code(exc) in ("NoSuchKey", "404"):
                    return None
                raise
            if answer["ContentLength"] > limit:
                answer["Body"].close()
                raise OutputError(f"{self.url(key)}: larger than {limit} bytes")
            async with answer["Body"] as body:
                return await body.read()

    async def size(self, key: str) -> int | None:
        """The object's size, None if there is none."""
        async with self._translated(self.url(key)):
            try:
                answer = await self._client.head_object(Bucket=self.name, Key=key)
            except ClientError as exc:
                if _status(exc) == 404:
                    return None
                raise
            return answer["ContentLength"]

    async def put(self, key: str, body: bytes | io.BytesIO) -> None:
        async with self._translated(self.url(key)):
            await self._client.put_object(Bucket=self.name, Key=key, Body=body)

    async def copy(self, source: str, key: str) -> None:
        async with self._translated(self.url(key)):
            await self._client.copy_object(
                Bucket=self.name, Key=key, CopySource={"Bucket": self.name, "Key": source}
            )

    async def start_upload(self, key: str) -> str:
        async with self._translated(self.url(key)):
            answer = await self._client.create_multipart_upload(Bucket=self.name, Key=key)
        return answer["UploadId"]

    async def upload_part(self, key: str, upload_id: str, number: int, body: io.BytesIO) -> str:
        async with self._translated(f"{self.url(key)} (part {number})"):
            answer = await self._client.upload_part(
                Bucket=self.name, Key=key, UploadId=upload_id, PartNumber=number, Body=body
            )
        return answer["ETag"]

    async def complete_upload(
        self, key: str, upload_id: str, parts: list[CompletedPartTypeDef]
    ) -> None:
        async with self._translated(self.url(key)):
            await self._client.complete_multipart_upload(
                Bucket=self.name, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )

    async def abort_upload(self, key: str, upload_id: str) -> None:
        async with self._translated(self.url(key)):
            await self._client.abort_multipart_upload(Bucket=self.name, Key=key, UploadId=upload_id)

    async def _unfinished_uploads(self, prefix: str) -> list[tuple[str, str]]:
        paginator = self._client.get_paginator("list_multipart_uploads")
        found = []
        async for page in paginator.paginate(Bucket=self.name, Prefix=prefix):
            for upload in page.get("Uploads", []):
                if "Key" in upload and "UploadId" in upload:
                    found.append((upload["Key"], upload["UploadId"]))
        return found

    @asynccontextmanager
    async def _translated(self, what: str) -> AsyncIterator[None]:
        """The client's exceptions as OutputError naming `what` (never a credential)."""
        try:
            yield
        except (BotoCoreError, ClientError, aiohttp.ClientError, TimeoutError) as exc:
            raise OutputError(f"{what}: {self.describe(exc)}") from None

    def describe(self, exc: BaseException) -> str:
        if isinstance(exc, ClientError):
            message = str(exc.response.get("Error", {}).get("Message", ""))[:_MESSAGE_CHARS]
            text = f"{_status(exc)} {_code(exc)}" + (f": {message}" if message else "")
        else:
            text = f"{type(exc).__name__}: {str(exc)[:_MESSAGE_CHARS]}"
        return self._scrub(text)

    def _scrub(self, text: str) -> str:
        return _scrub(text, self._secrets)


class BucketChunk:
    """Where one chunk's parts are staged and published in the bucket."""

    def __init__(
        self, bucket: BucketOutput, merchant_id: str, type: ExportType, range: TimeRange
    ) -> None:
        check_folder_name(merchant_id)  # it becomes a segment of the keys
        self.bucket = bucket
        self.merchant_id = merchant_id
        self.type = type
        self.range = range
        relative = f"{merchant_id}/{type.folder}/{range.name}/"
        self.live_prefix = f"{bucket.root}{relative}"
        self.staging_prefix = f"{bucket.root}{STAGING}/{relative}"
        self.manifest_key = f"{self.live_prefix}{MANIFEST_NAME}"
        self.publishing_key = f"{self.staging_prefix}{_PUBLISHING}"

    def __repr__(self) -> str:
        return f"BucketChunk({self.bucket.url(self.live_prefix)!r})"

    def staged_key(self, index: int) -> str:
        return f"{self.staging_prefix}.{ChunkOutput.part_name(index)}"

    def hash_key(self, index: int) -> str:
        return f"{self.staging_prefix}.{ChunkOutput.part_name(index).removesuffix('.json')}.sha256"

    async def open_part(self, index: int) -> BucketPart:
        return BucketPart(self, index)

    async def saved_part(self, index: int, expected_sha256: str) -> bool:
        written = await self.bucket.read(self.hash_key(index), limit=1024)
        return written is not None and written.decode("ascii", "replace") == expected_sha256

    async def published_manifest(self) -> Manifest | None:
        data = await self.bucket.read(self.manifest_key, _MANIFEST_MAX_BYTES)
        if data is None:
            return None
        try:
            return Manifest.from_json(data.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            # Not a manifest this harvester wrote: the next publish replaces it.
            return None

    async def look(self) -> ChunkLook:
        """The published manifest; no staging is ever another process's (see adopt_staging)."""
        return ChunkLook(await self.published_manifest(), staged_elsewhere=False)

    async def publish(self, manifest: Manifest) -> Manifest:
        """Copy the staged parts in under unused numbers, commit with the manifest, tidy.

        BadFile if a part is not staged, or is of another size than the manifest says.
        Returns the manifest as published (its part numbers may differ from `manifest`'s).
        """
        if (manifest.merchant_id, manifest.type, manifest.range) != (
            self.merchant_id,
            self.type,
            self.range,
        ):
            raise ValueError(f"the manifest of {manifest.range} does not belong to {self!r}")
        for part in manifest.parts:
            size = await self.bucket.size(self.staged_key(part.index))
            name = ChunkOutput.part_name(part.index)
            if size is None:
                raise BadFile(f"{name} is not staged")
            if size != part.size:
                raise BadFile(f"{name}: {size} bytes staged, the manifest says {part.size}")
        live = [key async for key in self.bucket.keys(self.live_prefix)]
        in_use = {index for index in map(self._live_index, live) if index is not None}
        published = _renumbered(manifest, in_use)
        await self.bucket.put(self.publishing_key, published.to_json().encode())
        limit = asyncio.Semaphore(_COPIES_AT_ONCE)

        async def copy(source: PartInfo, target: PartInfo) -> None:
            async with limit:
                await self.bucket.copy(
                    self.staged_key(source.index),
                    f"{self.live_prefix}{ChunkOutput.part_name(target.index)}",
                )

        async with asyncio.TaskGroup() as group:
            for source, target in zip(manifest.parts, published.parts, strict=True):
                group.create_task(copy(source, target))
        await self.bucket.put(self.manifest_key, published.to_json().encode())
        # Committed. What follows only tidies, and the next run finishes it after a crash.
        listed = {ChunkOutput.part_name(part.index) for part in published.parts}
        await self.bucket.delete(
            [
                key
                for key in live
                if self._live_index(key) is not None
                and key.removeprefix(self.live_prefix) not in listed
            ]
        )
        await self.discard_staging()
        return published

    async def adopt_staging(self, gone_owners: Collection[str]) -> str | None:
        """Nothing to adopt: the chunk's staging prefix is the same for every holder."""
        return None

    async def discard_staging(self) -> None:
        """Delete the chunk's staged objects (its parts' uploads are over by then)."""
        keys = [key async for key in self.bucket.keys(self.staging_prefix)]
        # The record of a publish goes last: while it exists, recover knows what to finish.
        keys.sort(key=lambda key: key == self.publishing_key)
        await self.bucket.delete(keys)

    async def finish_interrupted_publish(self) -> list[str]:
        """After a crash in `publish`: delete the live parts the live manifest does not list."""
        manifest = await self.published_manifest()
        listed = (
            {ChunkOutput.part_name(part.index) for part in manifest.parts}
            if manifest is not None
            else set()
        )
        doomed = [
            key
            async for key in self.bucket.keys(self.live_prefix)
            if self._live_index(key) is not None
            and key.removeprefix(self.live_prefix) not in listed
        ]
        await self.bucket.delete(doomed)
        return [self.bucket.url(key) for key in doomed]

    def _live_index(self, key: str) -> int | None:
        match = _LIVE_PART.fullmatch(key.removeprefix(self.live_prefix))
        return int(match.group(1)) if match else None


class BucketPart:
    """One part streaming into the staging prefix, checked and hashed as it passes.

    Up to `part_size` bytes wait in memory; past that they go as multipart upload parts.
    Nothing becomes a staged part before `commit` has checked it.
    """

    def __init__(self, chunk: BucketChunk, index: int) -> None:
        self._chunk = chunk
        self._bucket = chunk.bucket
        self._key = chunk.staged_key(index)
        self._index = index
        self._buffer = io.BytesIO()  # what the bucket has not been sent yet
        self._upload_id: str | None = None
        self._uploaded: list[CompletedPartTypeDef] = []
        self._hash = hashlib.sha256()
        self._size = 0
        self._check: StreamCheck | None = StreamCheck()
        self._done = False

    async def write(self, data: bytes) -> None:
        """Append `data`; a full buffer goes to the bucket before this returns."""
        if self._done or self._check is None:
            raise RuntimeError(f"{self._key}: write after commit or abort")
        self._hash.update(data)
        self._size += len(data)
        self._check.feed(data)
        self._buffer.write(data)
        if self._buffer.tell() >= self._bucket.part_size:
            await self._send_buffer()

    async def commit(
        self, expected_size: int | None, url_index: int, *, publish_next: bool = False
    ) -> PartInfo:
        """Check the part, then finish its upload and record its sha256 beside it (at once,
        `publish_next` or not: a bucket's publish has no thread job to save).

        BadFile if it is shorter or longer than `expected_size` (when given), not JSON, or
        not an object whose "elements" list holds at most 1000 JSON objects; then nothing
        is staged.
        """
        check = self._check
        if self._done or check is None:
            raise RuntimeError(f"{self._key}: commit after commit or abort")
        try:
            self._check = None
            objects = check.finish()
            if expected_size is not None and self._size != expected_size:
                problem = "truncated" if self._size < expected_size else "too long"
                raise BadFile(f"{problem}: got {self._size} of {expected_size} bytes")
            sha256 = self._hash.hexdigest()
            hash_key = self._chunk.hash_key(self._index)
            # The old hash goes first: it must never vouch for bytes it does not describe.
            await self._bucket.delete([hash_key])
            if self._upload_id is None:
                await self._bucket.put(self._key, self._take_buffer())
            else:
                if self._buffer.tell():
                    await self._send_buffer()
                await self._bucket.complete_upload(self._key, self._upload_id, self._uploaded)
                self._upload_id = None
            await self._bucket.put(hash_key, sha256.encode())
        except BaseException:
            await self.abort()
            raise
        self._done = True
        return PartInfo(self._index, url_index, self._size, sha256, objects)

    async def abort(self) -> None:
        """Give up on the part: its check stops and its unfinished upload is aborted."""
        if self._done:
            return
        self._done = True
        self._take_buffer()
        check, self._check = self._check, None
        upload_id, self._upload_id = self._upload_id, None
        # Shielded: an abort cancelled half-way would leave an upload behind until the next
        # run's recover.
        await asyncio.shield(self._discard(check, upload_id))

    async def _discard(self, check: StreamCheck | None, upload_id: str | None) -> None:
        if check is not None:
            check.abandon()
        if upload_id is not None:
            with contextlib.suppress(OutputError):  # recover aborts it at the next start
                await self._bucket.abort_upload(self._key, upload_id)

    async def _send_buffer(self) -> None:
        if self._upload_id is None:
            self._upload_id = await self._bucket.start_upload(self._key)
        number = len(self._uploaded) + 1
        etag = await self._bucket.upload_part(
            self._key, self._upload_id, number, self._take_buffer()
        )
        self._uploaded.append({"ETag": etag, "PartNumber": number})

    def _take_buffer(self) -> io.BytesIO:
        """The bytes waiting, as a file to send (no copy made), and a fresh buffer."""
        body, self._buffer = self._buffer, io.BytesIO()
        body.seek(0)
        return body

    async def __aenter__(self) -> BucketPart:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.abort()


def _renumbered(manifest: Manifest, in_use: set[int]) -> Manifest:
    """`manifest` with its parts moved to numbers no live object has.

    Unchanged if its numbers are free (a first harvest); otherwise shifted past the highest
    number in use, so a chunk harvested again and again alternates between two ranges.
    """
    if not in_use.intersection(part.index for part in manifest.parts):
        return manifest
    shift = max(in_use)
    return dataclasses.replace(
        manifest,
        parts=tuple(dataclasses.replace(part, index=part.index + shift) for part in manifest.parts),
    )


_TYPES_BY_FOLDER = {export_type.folder: export_type for export_type in ExportType}


def _staged_chunk(where: tuple[str, ...]) -> tuple[str, ExportType, TimeRange] | None:
    """(merchant id, type, range) of a staging prefix's segments, None if they name none."""
    if len(where) != 3 or where[1] not in _TYPES_BY_FOLDER:
        return None
    merchant_id, folder, chunk_name = where
    try:
        check_folder_name(merchant_id)
        return merchant_id, _TYPES_BY_FOLDER[folder], TimeRange.from_name(chunk_name)
    except ValueError:
        return None


def _revealed(secret: Secret | None) -> str | None:
    return secret.reveal() if secret is not None else None


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
