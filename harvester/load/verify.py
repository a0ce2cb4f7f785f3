"""What makes a published chunk loadable: its manifest is ours and names it, and every part
has the size and sha256 the manifest gives. Pure: bytes in, a verdict out."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from harvester.clover.chunks import ExportType
from harvester.errors import HarvesterError
from harvester.output.folder import ChunkOutput, Manifest, PartInfo

MESSAGE_CHARS = 300  # of a library's or a file's text, in our messages


class BadChunk(HarvesterError):
    """A published chunk that must not be loaded: its manifest or a part does not hold up.
    The message names the chunk."""


def fingerprint(manifest: bytes) -> str:
    """What identifies one publish of a chunk: a chunk loads again when this changes."""
    return hashlib.sha256(manifest).hexdigest()


def read_manifest(
    where: str, data: bytes, merchant_id: str, type: ExportType, name: str
) -> Manifest:
    """The manifest at `where`, checked to be the one of that merchant, type and chunk."""
    try:
        manifest = Manifest.from_json(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadChunk(f"{where}: {str(exc)[:MESSAGE_CHARS]}") from None
    found = (manifest.merchant_id, manifest.type, manifest.range.name)
    if found != (merchant_id, type, name):
        raise BadChunk(
            f"{where}: the manifest is of {found[0]} {found[1]} {found[2]}, not of the chunk "
            "it sits in"
        )
    return manifest


def check_part(where: str, part: PartInfo, data: bytes | None) -> None:
    """BadChunk unless `data` is the part the manifest describes (size, then sha256)."""
    name = ChunkOutput.part_name(part.index)
    if data is None:
        raise BadChunk(f"{where}: {name} is missing")
    if len(data) != part.size:
        raise BadChunk(f"{where}: {name} has {len(data)} bytes, the manifest says {part.size}")
    if hashlib.sha256(data).hexdigest() != part.sha256:
        raise BadChunk(f"{where}: {name} does not match the sha256 in the manifest")


def elements(where: str, part: PartInfo, data: bytes) -> list[dict[str, Any]]:
    """The objects of a checked part. The sha256 held, so this is what the harvest stored:
    anything else means the manifest was written to match a tampered file."""
    name = ChunkOutput.part_name(part.index)
    try:
        document = orjson.loads(data)  # twice as fast as json's: each part is parsed twice
    except orjson.JSONDecodeError:
        raise BadChunk(f"{where}: {name} is not JSON") from None
    found = document.get("elements") if isinstance(document, dict) else None
    if not isinstance(found, list) or not all(
        isinstance(item, dict) and isinstance(item.get("id"), str) for item in found
    ):
        raise BadChunk(f"{where}: {name} is not a list of objects with an id")
    if len(found) != part.objects:
        raise BadChunk(
            f"{where}: {name} holds {len(found)} objects, the manifest says {part.objects}"
        )
    return found
