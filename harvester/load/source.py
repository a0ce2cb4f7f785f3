"""The dlt source: resources `payments` and `orders`, one row per object, merged on `id`.

A chunk loads when its manifest is new or has changed since the last load: each resource
keeps, in dlt's resource state, the sha256 of every chunk's manifest it loaded. dlt stores
that state in the destination with the rows of the same load, so it lives with the tables.
Nested lists (an order's line items, its payments, refunds) become child tables, which
dlt's merge replaces together with their parent row.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import dlt
from dlt.extract.resource import DltResource
from dlt.extract.source import DltSource

from harvester.clover.chunks import ExportType
from harvester.load.published import ChunkRef, Published, verified_chunk
from harvester.load.summary import LoadSummary
from harvester.load.verify import BadChunk, elements, fingerprint
from harvester.logs import get_logger

SOURCE_NAME = "clover"
MERCHANT_COLUMN = "merchant_id"  # added to every row: whose object it is
Wanted = Sequence[tuple[str, Sequence[ExportType]]]  # merchant ids with the types they harvest


def clover_source(
    published: Published, wanted: Wanted, summary: LoadSummary, stop: threading.Event
) -> DltSource:
    """The source over `published`, for the merchants and types in `wanted`. `summary`
    counts what each resource loaded, skipped and refused; `stop` ends it between chunks."""

    @dlt.source(name=SOURCE_NAME)
    def clover() -> list[DltResource]:
        return [
            _resource(export_type, published, wanted, summary, stop) for export_type in ExportType
        ]

    source: DltSource = clover()
    return source


def _resource(
    export_type: ExportType,
    published: Published,
    wanted: Wanted,
    summary: LoadSummary,
    stop: threading.Event,
) -> DltResource:
    def rows() -> Iterator[list[dict[str, Any]]]:
        loaded: dict[str, str] = dlt.current.resource_state().setdefault("chunks", {})
        for merchant_id, types in wanted:
            if export_type not in types:
                continue
            for name in published.names(merchant_id, export_type):
                if stop.is_set():
                    summary.stopped = True
                    return
                chunk = ChunkRef(merchant_id, export_type, name)
                yield from _chunk_rows(published, chunk, loaded, summary)

    resource: DltResource = dlt.resource(
        rows,
        name=export_type.folder,
        write_disposition="merge",
        primary_key="id",
    )
    return resource


def _chunk_rows(
    published: Published, chunk: ChunkRef, loaded: dict[str, str], summary: LoadSummary
) -> Iterator[list[dict[str, Any]]]:
    """The rows of one chunk if it is new or changed and holds up; the state notes it."""
    log = get_logger()
    manifest = published.manifest(chunk)
    if manifest is None:
        return  # not published (a folder without its manifest), or gone since the listing
    if loaded.get(chunk.key) == fingerprint(manifest):
        summary.unchanged(chunk.merchant_id, chunk.type)
        return
    where = published.where(chunk)
    try:
        verified = verified_chunk(published, chunk, manifest)
    except BadChunk as exc:
        log.error(
            "load.chunk_failed",
            merchant=chunk.merchant_id,
            type=str(chunk.type),
            chunk=chunk.name,
            error=str(exc),
        )
        summary.failed(chunk.merchant_id, chunk.type, str(exc))
        return
    rows = 0
    for part, data in verified.parts:
        objects = elements(where, part, data)
        for obj in objects:
            obj[MERCHANT_COLUMN] = chunk.merchant_id
        rows += len(objects)
        if objects:
            yield objects
    loaded[chunk.key] = verified.fingerprint
    summary.loaded(chunk.merchant_id, chunk.type, rows)
    log.info(
        "load.chunk_extracted",
        merchant=chunk.merchant_id,
        type=str(chunk.type),
        chunk=chunk.name,
        export_id=verified.manifest.export_id,
        objects=rows,
    )
