"""What makes a published chunk loadable, on chunk folders written here: the manifest names
the chunk, each part has its size and sha256, and a chunk replaced while read is read again."""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from harvester.clover.chunks import ExportType, TimeRange
from harvester.load.published import ChunkRef, FolderChunks, Published, verified_chunk
from harvester.load.verify import BadChunk
from harvester.output.folder import MANIFEST_NAME, Manifest, PartInfo

MERCHANT = "MERCHANT00001"
JANUARY = TimeRange(datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 1, 31, tzinfo=UTC))
CHUNK = ChunkRef(MERCHANT, ExportType.PAYMENTS, JANUARY.name)


def body(*ids: str) -> bytes:
    return json.dumps({"elements": [{"id": i, "amount": 5} for i in ids]}).encode()


def publish(root: Path, bodies: list[bytes], first: int = 1, objects: int | None = None) -> Path:
    """A chunk folder as the harvest publishes it (parts numbered from `first`)."""
    folder = root / CHUNK.key
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for n, data in enumerate(bodies):
        index = first + n
        (folder / f"part-{index:05d}.json").write_bytes(data)
        count = objects if objects is not None else len(json.loads(data)["elements"])
        parts.append(PartInfo(index, n, len(data), hashlib.sha256(data).hexdigest(), count))
    manifest = Manifest(
        MERCHANT, ExportType.PAYMENTS, JANUARY, "EXPORT1", datetime.now(UTC), tuple(parts)
    )
    (folder / MANIFEST_NAME).write_text(manifest.to_json())
    return folder


def verify(root: Path, source: Published | None = None) -> list[dict[str, Any]]:
    source = source or FolderChunks(root, 1024 * 1024)
    manifest = source.manifest(CHUNK)
    assert manifest is not None
    chunk = verified_chunk(source, CHUNK, manifest)
    return [obj for _, data in chunk.parts for obj in json.loads(data)["elements"]]


def test_a_published_chunk_verifies_and_hidden_folders_are_not_chunks(tmp_path: Path) -> None:
    folder = publish(tmp_path, [body("A", "B"), body("C")])
    shutil.copytree(folder, folder.with_name(f".staging-{JANUARY.name}@x"))
    shutil.copytree(folder, folder.with_name(f".old-{JANUARY.name}"))
    source = FolderChunks(tmp_path, 1024 * 1024)
    assert [o["id"] for o in verify(tmp_path)] == ["A", "B", "C"]
    assert source.names(MERCHANT, ExportType.PAYMENTS) == [JANUARY.name]
    assert source.names(MERCHANT, ExportType.ORDERS) == []
    assert source.names("NOBODY", ExportType.ORDERS) == []


def tamper(folder: Path, how: str) -> None:
    part = folder / "part-00001.json"
    if how == "manifest_not_json":
        (folder / MANIFEST_NAME).write_text("{not json")
    elif how == "part_gone":
        part.unlink()
    elif how == "flipped":
        part.write_bytes(part.read_bytes().replace(b'"A"', b'"X"'))
    elif how == "longer":
        part.write_bytes(part.read_bytes() + b" ")


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("manifest_not_json", "not a harvester manifest"),
        ("part_gone", "part-00001.json is missing"),
        ("flipped", "part-00001.json does not match the sha256 in the manifest"),
        ("longer", "part-00001.json has 67 bytes, the manifest says 66"),
    ],
)
def test_a_chunk_that_does_not_hold_up_is_refused_by_name(
    tmp_path: Path, how: str, message: str
) -> None:
    folder = publish(tmp_path, [body("A", "B")])
    tamper(folder, how)
    with pytest.raises(BadChunk) as caught:
        verify(tmp_path)
    assert str(caught.value).startswith(f"{folder}: {message}")


@pytest.mark.parametrize(
    ("data", "objects", "message"),
    [
        (b"[1, 2", 1, "part-00001.json is not JSON"),
        (b'{"elements": [{"no": "id"}]}', 1, "part-00001.json is not a list of objects with an id"),
        (b'{"elements": {"id": "A"}}', 1, "part-00001.json is not a list of objects with an id"),
        (body("A", "B"), 3, "part-00001.json holds 2 objects, the manifest says 3"),
    ],
)
def test_a_manifest_written_to_match_a_bad_part_is_refused(
    tmp_path: Path, data: bytes, objects: int, message: str
) -> None:
    """Size and sha256 hold, yet the part is no export file: the manifest was forged too."""
    folder = publish(tmp_path, [data], objects=objects)
    with pytest.raises(BadChunk) as caught:
        verify(tmp_path)
    assert str(caught.value) == f"{folder}: {message}"


def test_a_manifest_in_another_chunks_folder_is_refused(tmp_path: Path) -> None:
    folder = publish(tmp_path, [body("A")])
    other = folder.with_name("20250201T000000Z_20250303T000000Z")
    folder.rename(other)
    source = FolderChunks(tmp_path, 1024 * 1024)
    moved = ChunkRef(MERCHANT, ExportType.PAYMENTS, other.name)
    manifest = source.manifest(moved)
    assert manifest is not None
    with pytest.raises(BadChunk, match="the manifest is of MERCHANT00001 PAYMENTS 20250101"):
        verified_chunk(source, moved, manifest)


class ReplacedWhileRead(FolderChunks):
    """The chunk is harvested again (new part numbers, the old parts gone) as its first part
    is about to be read."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, 1024 * 1024)
        self.replaced = False

    def part(self, chunk: ChunkRef, file_name: str) -> bytes | None:
        if not self.replaced:
            self.replaced = True
            folder = self.root / chunk.key
            shutil.rmtree(folder)
            publish(self.root, [body("A2"), body("B2")], first=4)
        return super().part(chunk, file_name)


def test_a_chunk_replaced_while_read_is_read_from_its_new_manifest(tmp_path: Path) -> None:
    publish(tmp_path, [body("A"), body("B")])
    source = ReplacedWhileRead(tmp_path)
    assert [o["id"] for o in verify(tmp_path, source)] == ["A2", "B2"]
