"""The output folder: its layout (a contract with readers), staging, and the atomic publish.

    <output_dir>/<merchant_id>/<payments|orders>/<chunk>/part-00001.json ...
    <output_dir>/<merchant_id>/<payments|orders>/<chunk>/_manifest.json

`<chunk>` is `TimeRange.name`. A chunk folder appears only complete, with its manifest:
parts are written into a hidden sibling `.staging-<chunk>@<owner>` (each first as a hidden
`.part-NNNNN.json.tmp`), fsynced, and the whole folder is renamed into place. `<owner>` is
the id of the process that stages there (see state/claims.py): processes sharing one output
folder never touch each other's staging while they live. A chunk
harvested again is swapped in with one `renameat2(RENAME_EXCHANGE)`, so a reader sees the
old folder or the new one, never a mix. Names starting with a dot are the harvester's work
in progress; readers skip them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any

from harvester.clover.chunks import ExportType, TimeRange, iso
from harvester.clover.export_file import StreamCheck
from harvester.errors import BadFile

MANIFEST_NAME = "_manifest.json"
_STAGING_PREFIX = ".staging-"
_OLD_PREFIX = ".old-"
_OWNER_MARK = "@"  # .staging-<chunk>@<owner>; a name without it is from before owners
_OWNER_ID = re.compile(r"[A-Za-z0-9-]{1,100}")
_PART_NAME = re.compile(r"part-(\d{5,})\.json")
# A part's bytes gathered before a worker thread writes them: a Clover-sized file goes to
# the disk in one job, a larger one in a job per this many bytes.
WRITE_BYTES = 512 * 1024

# Linux renameat2(2): swap two paths atomically.
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
# How a part's temp file is opened: new or emptied, for writing, not inherited by children.
_PART_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
# The most buffers one writev(2) takes (IOV_MAX; POSIX guarantees at least 16).
_IOV_MAX = os.sysconf("SC_IOV_MAX")
# Errors that mean "this kernel, libc or file system cannot exchange": take the fallback.
_EXCHANGE_UNSUPPORTED = frozenset({errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})
# What rename(2) of a folder says when something already lies at its new name.
_IN_THE_WAY = frozenset({errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR})

# (merchant id, type folder, chunk name) -> True if that chunk's export is still in flight,
# so that its staged parts are kept for the next run.
KeepStaging = Callable[[str, str, str], bool]


@dataclass(frozen=True, slots=True)
class PartInfo:
    index: int  # 1-based part number: part-00001.json
    url_index: int  # 0-based position of its URL in the export's exportUrls
    size: int
    sha256: str
    objects: int


class EmptyReason(StrEnum):
    """Why a published chunk holds no parts (`empty_reason` in its manifest)."""

    # The export listed files, and none of them held an object.
    EMPTY_FILES = "empty_files"
    # The export was DONE listing no files (no exportUrls, or an empty list), and a second
    # export of the same range said the same.
    NO_FILES = "no_files"


@dataclass(frozen=True, slots=True)
class Manifest:
    """What `_manifest.json` says about a published chunk."""

    merchant_id: str
    type: ExportType
    range: TimeRange
    export_id: str
    harvested_at: datetime
    parts: tuple[PartInfo, ...]
    empty_reason: EmptyReason | None = None  # set when the chunk holds no object (no parts)

    @property
    def objects(self) -> int:
        """Orders or payments in the chunk, all parts together."""
        return sum(part.objects for part in self.parts)

    def to_json(self) -> str:
        document = {
            "merchant_id": self.merchant_id,
            "type": self.type.value,
            "range": {
                "start": iso(self.range.start),
                "end": iso(self.range.end),
                "start_ms": self.range.start_ms,
                "end_ms": self.range.end_ms,
            },
            "export_id": self.export_id,
            "harvested_at": iso(self.harvested_at),
            "objects": self.objects,
            "parts": [
                {
                    "file": ChunkOutput.part_name(part.index),
                    "url_index": part.url_index,
                    "size": part.size,
                    "sha256": part.sha256,
                    "objects": part.objects,
                }
                for part in self.parts
            ],
            # Added by issue 7, so after the keys readers knew before.
            "empty_reason": None if self.empty_reason is None else self.empty_reason.value,
        }
        return json.dumps(document, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Read a manifest back; ValueError naming what is wrong if it is not one."""
        try:
            document = json.loads(text)
            bounds = _field(document, "range", dict)
            return cls(
                merchant_id=_field(document, "merchant_id", str),
                type=ExportType(_field(document, "type", str)),
                range=TimeRange.from_ms(
                    _field(bounds, "start_ms", int), _field(bounds, "end_ms", int)
                ),
                export_id=_field(document, "export_id", str),
                harvested_at=_parse_iso(_field(document, "harvested_at", str)),
                parts=tuple(_part_from_json(part) for part in _field(document, "parts", list)),
                # Manifests written before issue 7 have no such field.
                empty_reason=_empty_reason(document.get("empty_reason")),
            )
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not a harvester manifest: {exc}") from exc


@dataclass(frozen=True, slots=True)
class ChunkLook:
    """What a chunk's place holds as its download begins, looked at in one go (one thread
    job on a folder: a job per question was a good part of an export's CPU)."""

    published: Manifest | None  # the manifest of the chunk in place, if any to trust
    # Staging of this chunk by another process (or from before owners) lies beside this
    # one's: `adopt_staging` may have something to take over.
    staged_elsewhere: bool


# A chunk's place with nothing in it: no harvest in place, no staging of others beside.
NOTHING_IN_PLACE = ChunkLook(published=None, staged_elsewhere=False)


def _field(document: object, key: str, kind: type[Any]) -> Any:
    if not isinstance(document, dict):
        raise TypeError(f"expected an object holding {key!r}")
    if key not in document:
        raise ValueError(f"{key!r} is missing")
    value = document[key]
    # bool is an int to Python, never to a manifest.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{key!r} is not a {kind.__name__}")
    return value


def _empty_reason(value: object) -> EmptyReason | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError("'empty_reason' is not a string")
    return EmptyReason(value)


def _part_from_json(document: object) -> PartInfo:
    file_name = _field(document, "file", str)
    match = _PART_NAME.fullmatch(file_name)
    if match is None:
        raise ValueError(f"{file_name!r} is not a part file name")
    return PartInfo(
        index=int(match.group(1)),
        url_index=_field(document, "url_index", int),
        size=_field(document, "size", int),
        sha256=_field(document, "sha256", str),
        objects=_field(document, "objects", int),
    )


def _parse_iso(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset")
    return moment.astimezone(UTC)


def check_folder_name(merchant_id: str) -> None:
    """ValueError unless the merchant id can name a folder (or a key's segment) safely."""
    # It must not climb out of the output, nor hide among the harvester's own names.
    if merchant_id in {"", ".", ".."} or merchant_id.startswith(".") or "/" in merchant_id:
        raise ValueError(f"merchant id {merchant_id!r} cannot be a folder name")


class PartWriter:
    """One part being downloaded into its hidden temp file, hashed and checked as it streams.

    Use as `async with`: leaving without `commit` deletes the temp file.

    The pieces are hashed and checked in the event loop as they come (a 64 KiB piece takes
    a fraction of a millisecond), and gathered up to `WRITE_BYTES` before a worker thread
    writes them: a hop per piece, and a second reading of the file to count its elements,
    were most of the CPU spent per byte. The temp file is opened (its staging folder made
    if need be) by the first of those jobs, not by a job of its own: a Clover-sized part
    (1000 objects, about half a megabyte) costs one thread job in all, which opens, writes,
    syncs and renames it; a thread hop costs more CPU than the system calls it carries.
    A part given up before its first job never touched the disk. The file is written through
    its descriptor, all pieces of a job in one `writev`: Python's buffered file would add
    three system calls to open it, and each system call in a worker thread is a hand-over
    of the interpreter's lock with the event loop.

    `staged` is told the part's name and size once it is committed, and the name with None
    if the part was given up after its first job: a file of it may then lie in staging.
    `stage_at_publish` takes the job that stages a part whose chunk's publish comes next
    (see `commit`), for publish's own thread job to run first.
    """

    def __init__(
        self,
        open_temp: Callable[[], int],
        temp_path: Path,
        final_path: Path,
        index: int,
        staged: Callable[[str, int | None], None],
        stage_at_publish: Callable[[Callable[[], None]], None],
    ) -> None:
        self._open_temp = open_temp
        self._file: int | None = None  # the descriptor the first job opened, until closed
        self._staged = staged
        self._stage_at_publish = stage_at_publish
        self._temp_path = temp_path
        self._final_path = final_path
        self._index = index
        self._hash = hashlib.sha256()
        self._check = StreamCheck()
        self._size = 0
        self._pending: list[bytes] = []  # received, not yet handed to a thread to write
        self._pending_bytes = 0
        self._in_flight: asyncio.Future[object] | None = None  # the last thread job
        self._ended = False  # committed, or given up
        self._committed = False
        self._discarding: asyncio.Future[None] | None = None  # abort's clean-up, run once

    async def write(self, data: bytes) -> None:
        """Append `data` to the part; at most `WRITE_BYTES` wait in memory for the disk."""
        if self._ended:
            raise RuntimeError(f"{self._final_path.name}: write after commit or abort")
        self._hash.update(data)
        self._check.feed(data)
        self._size += len(data)
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= WRITE_BYTES:
            await self._in_thread(functools.partial(self._write, self._take_pending()))

    async def commit(
        self, expected_size: int | None, url_index: int, *, publish_next: bool = False
    ) -> PartInfo:
        """Check the part and move it into the staging folder under its final name.

        BadFile if it is shorter or longer than `expected_size` (when given), not JSON, or
        not an object whose "elements" list holds at most 1000 JSON objects. Then no part
        is left behind.

        `publish_next`: the chunk's publish comes right after this one. A part still wholly
        in memory (no thread job has run: a Clover-sized file) is then staged by publish,
        in its thread job, which saves one. Until then nothing of it is on the disk, so a
        publish that never comes (the run is stopped) leaves nothing behind.
        """
        if self._ended:
            raise RuntimeError(f"{self._final_path.name}: commit after commit or abort")
        later = publish_next and self._in_flight is None
        try:
            if expected_size is not None and self._size != expected_size:
                problem = "truncated" if self._size < expected_size else "too long"
                raise BadFile(f"{problem}: got {self._size} of {expected_size} bytes")
            objects = self._check.finish()
            # The part's bytes are synced before it takes its name, so a part under its
            # final name (which a resumed run reuses) holds what was checked. No directory
            # sync per part: publish syncs the staging folder once, and a part lost to a
            # crash before that is simply downloaded again.
            if later:
                self._stage_at_publish(functools.partial(self._stage, self._take_pending()))
            else:
                await self._in_thread(functools.partial(self._finish, self._take_pending()))
        except BaseException:
            await self.abort()
            raise
        self._ended = self._committed = True
        if not later:
            self._staged(self._final_path.name, self._size)
        return PartInfo(
            index=self._index,
            url_index=url_index,
            size=self._size,
            sha256=self._hash.hexdigest(),
            objects=objects,
        )

    async def abort(self) -> None:
        """Give up on the part: its temp file is deleted."""
        if self._committed:
            return
        self._ended = True
        self._take_pending()
        self._check.abandon()
        if self._discarding is None:
            self._discarding = asyncio.ensure_future(self._discard())
        # Shielded: a close cancelled while it waits for a worker thread (a sibling part
        # failed meanwhile) would never run, and the file handle would leak.
        await asyncio.shield(self._discarding)

    async def _in_thread(self, job: Callable[[], object]) -> None:
        """Run `job` in a worker thread. Cancelled, the job goes on there regardless:
        `abort` waits for it before it closes the file."""
        self._in_flight = asyncio.get_running_loop().run_in_executor(None, job)
        await asyncio.shield(self._in_flight)

    def _take_pending(self) -> list[bytes]:
        pieces, self._pending, self._pending_bytes = self._pending, [], 0
        return pieces

    def _write(self, pieces: list[bytes]) -> int:
        """In a worker thread: the pieces appended, the file opened first if need be."""
        if self._file is None:
            self._file = self._open_temp()
        _write_all(self._file, pieces)
        return self._file

    def _finish(self, pieces: list[bytes]) -> None:
        """In a worker thread: the last pieces written, the file synced and closed, and
        renamed to its final name."""
        descriptor = self._write(pieces)
        os.fsync(descriptor)
        # Forgotten before it is closed: a descriptor is never closed twice (by then its
        # number may be another file's).
        self._file = None
        os.close(descriptor)
        os.replace(self._temp_path, self._final_path)

    def _stage(self, pieces: list[bytes]) -> None:
        """In publish's worker thread: `_finish`, for a part whose commit left it to
        publish. Failing, it leaves no file open and no temp file behind."""
        try:
            self._finish(pieces)
        except BaseException:
            self._staged(self._final_path.name, None)
            descriptor, self._file = self._file, None
            _close_and_delete(descriptor, self._temp_path)
            raise
        self._staged(self._final_path.name, self._size)

    async def _discard(self) -> None:
        if self._in_flight is None:
            return  # no job ever ran: nothing was opened or created
        self._staged(self._final_path.name, None)
        await asyncio.wait([self._in_flight])  # its failure is the caller's to report
        # The job that opens the file has ended, so `_file` is what it left: None if it
        # failed before the open, or closed the file.
        descriptor, self._file = self._file, None
        await asyncio.to_thread(_close_and_delete, descriptor, self._temp_path)

    async def __aenter__(self) -> PartWriter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # Without a commit the temp file is never of use, whether or not something failed.
        await self.abort()


def _close_and_delete(descriptor: int | None, path: Path) -> None:
    try:
        if descriptor is not None:
            os.close(descriptor)
    finally:
        path.unlink(missing_ok=True)


def _write_all(descriptor: int, pieces: list[bytes]) -> None:
    """Every byte of `pieces`, in order, in as few `writev` calls as the kernel allows."""
    views = [memoryview(piece) for piece in pieces if piece]
    first = 0  # views before this one are written
    while first < len(views):
        written = os.writev(descriptor, views[first : first + _IOV_MAX])
        while written:
            size = len(views[first])
            if written < size:
                views[first] = views[first][written:]
                break
            written -= size
            first += 1


class ChunkOutput:
    """Where one chunk's files go."""

    def __init__(
        self,
        output_dir: Path,
        merchant_id: str,
        type: ExportType,
        range: TimeRange,
        *,
        rename: Rename | None = None,
        opener: Opener | None = None,
        owner: str | None = None,
        synced_folders: set[Path] | None = None,
    ) -> None:
        """`rename` is renameat2(2) and `opener` opens part files (as `open`'s opener):
        tests pass their own to see what the folder does when the system misbehaves.
        `owner` is the id of the process staging (None: a process alone, as before owners).
        `synced_folders` is shared by the chunks of one output: the type and merchant
        folders whose entries in their parent this process has synced (see `_publish`)."""
        check_folder_name(merchant_id)
        self.output_dir = output_dir
        self.merchant_id = merchant_id
        self.type = type
        self.range = range
        parent = output_dir / merchant_id / type.folder
        if owner is not None and not _is_owner_id(owner):
            raise ValueError(f"owner id {owner!r} cannot be part of a folder name")
        self.owner = owner
        suffix = "" if owner is None else f"{_OWNER_MARK}{owner}"
        self.final_dir = parent / range.name
        self.staging_dir = parent / f"{_STAGING_PREFIX}{range.name}{suffix}"
        self._old_dir = parent / f"{_OLD_PREFIX}{range.name}{suffix}"
        self._rename = rename or renameat2
        self._opener = opener
        self._synced_folders = set() if synced_folders is None else synced_folders
        # What publish may know without listing the staging folder. `_made_staging`: this
        # object made it (so nothing from an earlier run or another process is in it);
        # `_parts_staged`: the parts committed into it since, by name, with their sizes;
        # `_doubtful`: a part was given up after touching the disk, so a file of it may lie
        # there. Set in worker threads and on the loop; a race can only make publish list.
        self._made_staging = False
        self._parts_staged: dict[str, int] = {}
        self._doubtful = False
        # The jobs that stage parts committed for publish to stage (PartWriter.commit).
        self._stage_at_publish: list[Callable[[], None]] = []

    def __repr__(self) -> str:
        return f"ChunkOutput({str(self.final_dir)!r})"

    @staticmethod
    def part_name(index: int) -> str:
        """The file name of part `index` (1-based): "part-00001.json"."""
        if index < 1:
            raise ValueError(f"part numbers start at 1, got {index}")
        return f"part-{index:05d}.json"

    async def open_part(self, index: int) -> PartWriter:
        """Start writing part `index` into the staging folder. Nothing touches the disk yet:
        the part's first thread job opens its file (see PartWriter)."""
        temp_path = self.staging_dir / f".{self.part_name(index)}.tmp"
        return PartWriter(
            functools.partial(self._open_temp, temp_path),
            temp_path,
            self.staging_dir / self.part_name(index),
            index,
            self._part_staged,
            self._stage_at_publish.append,
        )

    def _open_temp(self, temp_path: Path) -> int:
        """In a worker thread: the part's temp file, in the staging folder made if need be;
        its descriptor (PartWriter closes it)."""
        if _make_folder(self.staging_dir):
            self._made_staging = True
        return (self._opener or _open_new)(str(temp_path), _PART_FLAGS)

    def _part_staged(self, name: str, size: int | None) -> None:
        if size is None:
            self._doubtful = True
        else:
            self._parts_staged[name] = size

    def _forget_staging(self) -> None:
        """The staging folder is gone (published or deleted): nothing is known of the next."""
        self._made_staging = self._doubtful = False
        self._parts_staged = {}
        self._stage_at_publish.clear()

    async def saved_part(self, index: int, expected_sha256: str) -> bool:
        """True if part `index` is staged with this sha256: a resumed run need not fetch it."""
        digest = await asyncio.to_thread(_sha256_of, self.staging_dir / self.part_name(index))
        return digest is not None and digest == expected_sha256

    async def publish(self, manifest: Manifest) -> Manifest:
        """Put the staged chunk in place with its manifest, replacing any earlier harvest.

        The staging folder ends up holding exactly the manifest's parts; BadFile if one of
        them is missing or of another size (download it again). Returns `manifest`.
        """
        if (manifest.merchant_id, manifest.type, manifest.range) != (
            self.merchant_id,
            self.type,
            self.range,
        ):
            raise ValueError(f"the manifest of {manifest.range} does not belong to {self!r}")
        stage_first = list(self._stage_at_publish)
        self._stage_at_publish.clear()
        await asyncio.to_thread(self._publish, manifest, stage_first)
        return manifest

    async def discard_staging(self) -> None:
        """Delete the staging folder and whatever it holds."""
        await asyncio.to_thread(_remove_tree, self.staging_dir)
        self._forget_staging()

    async def adopt_staging(self, gone_owners: Collection[str]) -> str | None:
        """Take over what gone processes staged for this chunk; call holding its claim.

        The first staging folder of this chunk whose owner is gone (in `gone_owners`, or
        a name from before owners) becomes this one's, unless this one has its own
        already; the others of gone owners are deleted, so that their parts (of the same
        export, or an abandoned one) are reused or cleared as after a restart. The
        staging of owners still alive is left alone. Returns the folder adopted, if any.
        """
        adopted = await asyncio.to_thread(self._adopt_staging, frozenset(gone_owners))
        return None if adopted is None else str(adopted)

    def _adopt_staging(self, gone_owners: frozenset[str]) -> Path | None:
        adopted = None
        for entry, owner in self._staged_elsewhere():
            if owner is not None and owner not in gone_owners:
                continue
            if adopted is None and not self.staging_dir.exists():
                for leftover in entry.iterdir():
                    if _is_temp_file(leftover):
                        leftover.unlink()
                os.rename(entry, self.staging_dir)
                adopted = entry
            else:
                shutil.rmtree(entry)
        return adopted

    def _staged_elsewhere(self, names: list[str] | None = None) -> list[tuple[Path, str | None]]:
        """The staging folders of this chunk but this process's, by name, with their owners
        (None: named before owners). `names`: the type folder's, if listed already."""
        parent = self.staging_dir.parent
        if names is None:
            try:
                names = os.listdir(parent)
            except (FileNotFoundError, NotADirectoryError):
                return []
        found = []
        for name in sorted(names):
            parsed = _parse_owned(name, _STAGING_PREFIX)
            if parsed is None or name == self.staging_dir.name or parsed[0] != self.range.name:
                continue
            entry = parent / name
            if _is_real_dir(entry):
                found.append((entry, parsed[1]))
        # Looked at only when there is something: staging is never adopted through a link.
        return found if found and _is_real_dir(parent) else []

    async def look(self) -> ChunkLook:
        """The published manifest, and whether others' staging of this chunk lies beside."""
        return await asyncio.to_thread(self._look)

    def _look(self) -> ChunkLook:
        """One listing of the type folder answers both questions: the manifest is read only
        if the chunk's folder is there (a first harvest's look is that listing alone)."""
        try:
            names = os.listdir(self.final_dir.parent)
        except (FileNotFoundError, NotADirectoryError):
            return NOTHING_IN_PLACE
        published = self._published_manifest() if self.range.name in names else None
        return ChunkLook(published, bool(self._staged_elsewhere(names)))

    def _published_manifest(self) -> Manifest | None:
        """The manifest of the chunk folder in place, or None if there is none to trust."""
        try:
            text = (self.final_dir / MANIFEST_NAME).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            return Manifest.from_json(text)
        except ValueError:
            # Not a manifest this harvester wrote: treat the folder as not harvested, so
            # the next publish replaces it.
            return None

    def _publish(self, manifest: Manifest, stage_first: list[Callable[[], None]]) -> None:
        """In a worker thread, `stage_first` done first (parts committed for publish to
        stage). Each system call here is one a promise needs: the staging folder holds
        exactly the manifest's parts; the manifest and every entry of the staging folder
        are synced before it moves; the chunk's entry in its type folder is synced before
        the chunk counts as published."""
        for stage in stage_first:
            stage()
        staging = self.staging_dir
        try:
            folder = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            # No part was staged: the chunk is empty.
            staging.mkdir(parents=True, exist_ok=True)
            folder = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self._fill_staging(folder, manifest)
            os.fsync(folder)
        finally:
            os.close(folder)
        replaced = self._put_in_place()
        self._forget_staging()
        # The chunk's entry in its type folder is synced on every publish. The type
        # folder's entry in the merchant folder, and the merchant folder's in the output
        # folder, are synced the first time this process publishes below them: either may
        # have been made by this run (or by a run that died before syncing it). The
        # harvester never removes a merchant or type folder, so once synced they stay.
        type_dir = self.final_dir.parent
        merchant_dir = type_dir.parent
        _fsync_dir(type_dir)
        for parent in (type_dir, merchant_dir):
            if parent not in self._synced_folders:
                _fsync_dir(parent.parent)
                self._synced_folders.add(parent)
        if replaced:
            # Deleted only once the swap is synced: a crash before leaves the previous
            # harvest as `.old-<chunk>`, which `recover` knows how to clear.
            _remove_tree(self._old_dir)

    def _fill_staging(self, folder: int, manifest: Manifest) -> None:
        """The staging folder (open as `folder`) left holding exactly the manifest's parts,
        each of the size it lists, and the manifest, synced. BadFile if a part is missing
        or of another size.

        The folder is listed unless this object made it and committed exactly the listed
        parts into it, and gave none up: then nothing else can be there."""
        listed = {self.part_name(part.index): part for part in manifest.parts}
        known_whole = (
            self._made_staging
            and not self._doubtful
            and self._parts_staged == {name: part.size for name, part in listed.items()}
        )
        if not known_whole:
            # Parts of an earlier, abandoned export of this chunk may linger: the folder must
            # hold exactly what the manifest lists. (A manifest left by a crash is
            # overwritten.)
            for name in set(os.listdir(folder)) - listed.keys() - {MANIFEST_NAME}:
                _remove_entry(self.staging_dir / name)
        for name, part in listed.items():
            try:
                size = os.stat(name, dir_fd=folder).st_size
            except FileNotFoundError:
                raise BadFile(f"{name} is not staged") from None
            if size != part.size:
                raise BadFile(f"{name}: {size} bytes staged, the manifest says {part.size}")
        # Written in place, not through a temp file and a rename: no reader looks into a
        # staging folder, and the folder moves only once the manifest is whole and synced.
        _write_synced(MANIFEST_NAME, folder, manifest.to_json().encode())

    def _put_in_place(self) -> bool:
        """The staging folder renamed to the chunk's; True if that replaced an earlier
        harvest, now at `.old-<chunk>`. No look first: a rename onto a chunk folder that
        holds anything fails, and only then is the harvest in place swapped out."""
        try:
            os.rename(self.staging_dir, self.final_dir)
        except OSError as exc:
            if exc.errno not in _IN_THE_WAY:
                raise
            self._replace_live()
            return True
        return False

    def _replace_live(self) -> None:
        _remove_tree(self._old_dir)  # left by a crash `recover` did not see
        if _exchange(self.staging_dir, self.final_dir, self._rename):
            # The staging path now holds the previous harvest. As `.old-<chunk>`, a crash
            # before it is deleted leaves a leftover that `recover` knows how to clear.
            os.rename(self.staging_dir, self._old_dir)
        else:
            # Between these two renames the chunk is briefly absent; `recover` renames the
            # old folder back if a crash falls there.
            os.rename(self.final_dir, self._old_dir)
            os.rename(self.staging_dir, self.final_dir)


class FolderOutput:
    """The output folder as the harvest sees it (harvester/output/target.py's Output)."""

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = output_dir
        self._synced_folders: set[Path] = set()

    def __repr__(self) -> str:
        return f"FolderOutput({str(self.output_dir)!r})"

    def chunk(
        self, merchant_id: str, type: ExportType, range: TimeRange, owner: str | None = None
    ) -> ChunkOutput:
        return ChunkOutput(
            self.output_dir,
            merchant_id,
            type,
            range,
            owner=owner,
            synced_folders=self._synced_folders,
        )

    async def recover(
        self,
        keep_staging: KeepStaging,
        owner_gone: Callable[[str | None], bool] | None = None,
    ) -> list[str]:
        """`recover` below, in a worker thread; the paths touched, as text."""
        touched = await asyncio.to_thread(recover, self.output_dir, keep_staging, owner_gone)
        return [str(path) for path in touched]


def _sha256_of(path: Path) -> str | None:
    try:
        with path.open("rb") as file:
            return hashlib.file_digest(file, "sha256").hexdigest()
    except FileNotFoundError:
        return None


def _open_new(path: str, flags: int) -> int:
    return os.open(path, flags, 0o666)


def _make_folder(path: Path) -> bool:
    """`path` made a folder if need be, its parents too; True if this call made it."""
    try:
        os.mkdir(path)
    except FileExistsError:
        return False
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path)
        except FileExistsError:
            return False
    return True


def _write_synced(name: str, folder: int, data: bytes) -> None:
    """`data` as the file `name` in the open folder `folder`, created or truncated, synced."""
    descriptor = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666, dir_fd=folder)
    try:
        _write_all(descriptor, [data])
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove_tree(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)


def _remove_entry(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@functools.cache
def _libc_renameat2() -> Callable[[int, bytes, int, bytes, int], int] | None:
    if sys.platform != "linux":
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc before 2.28, or another libc without it
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    function.restype = ctypes.c_int
    return function


Rename = Callable[[Path, Path, int], None]  # renameat2(old, new, flags)
Opener = Callable[[str, int], int]  # (path, flags) -> file descriptor, as for `open`


def renameat2(old: Path, new: Path, flags: int) -> None:
    """renameat2(2) relative to the working directory; OSError with errno on failure."""
    function = _libc_renameat2()
    if function is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available", str(old), None, str(new))
    if function(_AT_FDCWD, os.fsencode(old), _AT_FDCWD, os.fsencode(new), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(old), None, str(new))


def _exchange(first: Path, second: Path, rename: Rename) -> bool:
    """Swap two existing paths in one step; False if the system cannot."""
    try:
        rename(first, second, _RENAME_EXCHANGE)
    except OSError as exc:
        if exc.errno in _EXCHANGE_UNSUPPORTED:
            return False
        raise
    return True


def _is_chunk_name(name: str) -> bool:
    try:
        TimeRange.from_name(name)
    except ValueError:
        return False
    return True


def _is_real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _is_temp_file(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp") and path.is_file()


def recover(
    output_dir: Path,
    keep_staging: KeepStaging,
    owner_gone: Callable[[str | None], bool] | None = None,
) -> list[Path]:
    """Clear what a crash left in the output folder; call at start-up, before any work.

    Only what gone processes left is touched: `owner_gone(owner)` says whether the owner of
    a `.staging-`/`.old-` folder is gone (None for names from before owners; by default
    every owner counts as gone, for a process alone on its output folder).

    - `.old-<chunk>` without a live `<chunk>` is renamed back (a crash fell between the two
      fallback renames); with a live one it is deleted.
    - Temp files (`.part-*.tmp`, the manifest's) in staging folders are deleted.
    - `.staging-<chunk>` is deleted unless keep_staging(merchant_id, type_folder, chunk_name)
      says its export is still in flight, so that its saved parts are reused (by whoever
      claims the chunk next: see `ChunkOutput.adopt_staging`).

    Returns the paths removed or restored, for the log. Other names are left alone.
    """
    gone = owner_gone or (lambda owner: True)
    touched: list[Path] = []
    if not _is_real_dir(output_dir):
        return touched
    for merchant_dir in sorted(output_dir.iterdir()):
        if merchant_dir.name.startswith(".") or not _is_real_dir(merchant_dir):
            continue
        for type_folder in sorted(export_type.folder for export_type in ExportType):
            type_dir = merchant_dir / type_folder
            if not _is_real_dir(type_dir):
                continue
            changed = _recover_type_dir(merchant_dir.name, type_dir, keep_staging, gone)
            if changed:
                _fsync_dir(type_dir)
                touched.extend(changed)
    return touched


def _parse_owned(name: str, prefix: str) -> tuple[str, str | None] | None:
    """(chunk name, owner or None) of `<prefix><chunk>[@<owner>]`; None for other names."""
    if not name.startswith(prefix):
        return None
    chunk_name, mark, owner = name.removeprefix(prefix).partition(_OWNER_MARK)
    if not _is_chunk_name(chunk_name) or (mark and not _is_owner_id(owner)):
        return None
    return chunk_name, owner if mark else None


def _is_owner_id(owner: str) -> bool:
    return _OWNER_ID.fullmatch(owner) is not None


def _recover_type_dir(
    merchant_id: str,
    type_dir: Path,
    keep_staging: KeepStaging,
    owner_gone: Callable[[str | None], bool],
) -> list[Path]:
    touched: list[Path] = []
    for entry in sorted(type_dir.iterdir()):
        if not _is_real_dir(entry):
            continue
        old = _parse_owned(entry.name, _OLD_PREFIX)
        staging = _parse_owned(entry.name, _STAGING_PREFIX)
        if old is not None:
            chunk_name, owner = old
            if not owner_gone(owner):
                continue
            live = type_dir / chunk_name
            if live.exists():
                shutil.rmtree(entry)
                touched.append(entry)
            else:
                os.rename(entry, live)
                touched.append(live)
        elif staging is not None:
            chunk_name, owner = staging
            if not owner_gone(owner):
                continue
            if keep_staging(merchant_id, type_dir.name, chunk_name):
                for leftover in sorted(entry.iterdir()):
                    if _is_temp_file(leftover):
                        leftover.unlink()
                        touched.append(leftover)
            else:
                shutil.rmtree(entry)
                touched.append(entry)
    return touched
