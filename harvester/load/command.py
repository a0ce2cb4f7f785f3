"""`harvester load`: read the published chunks, load the new and changed ones, report."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from harvester.config import Config
from harvester.load import pipeline
from harvester.load.published import BucketChunks, FolderChunks, Published
from harvester.load.summary import LoadSummary
from harvester.logs import get_logger


def new_summary(config: Config) -> LoadSummary:
    return LoadSummary(pipeline.destination(config).shown, config.load.dataset)


@asynccontextmanager
async def published_chunks(config: Config) -> AsyncIterator[Published]:
    """The output the config names, to read: the folder, or the bucket (never written)."""
    if config.bucket is not None:
        from harvester.output.bucket import open_bucket

        async with open_bucket(
            config.bucket, config.timing, config.max_concurrent_downloads, writable=False
        ) as bucket:
            yield BucketChunks(bucket, asyncio.get_running_loop(), config.max_file_bytes)
        return
    assert config.output_dir is not None
    yield FolderChunks(config.output_dir, config.max_file_bytes)


async def load(
    config: Config, stop: asyncio.Event, summary: LoadSummary | None = None
) -> LoadSummary:
    """Load every merchant and type of the config into the destination of `config.load`.

    Returns the summary: chunks loaded, unchanged and refused per merchant and type, and
    what failed the load as a whole. ConfigError if the destination cannot be used at all.
    """
    summary = summary if summary is not None else new_summary(config)
    log = get_logger()
    wanted = [(m.id, m.types) for m in config.merchants]
    log.info(
        "load.started",
        merchants=len(wanted),
        destination=summary.destination,
        dataset=summary.dataset,
    )
    halt = threading.Event()

    async def relay() -> None:
        await stop.wait()
        halt.set()

    relaying = asyncio.create_task(relay())
    try:
        async with published_chunks(config) as published:
            await asyncio.to_thread(pipeline.run, config, published, wanted, summary, halt)
    except pipeline.LoadFailed as exc:
        log.error("load.failed", error=str(exc))
        summary.problems.append(str(exc))
    finally:
        relaying.cancel()
    log.info("load.finished", **summary.totals())
    return summary
