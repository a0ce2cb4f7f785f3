"""The dlt pipeline of `harvester load`: its destination, its working folder, one run.

dlt's anonymous telemetry is off (see harvester/load/__init__.py), and its own log lines
are kept to errors: the harvester logs the load.
dlt's working folder (its local copy of the state, schemas and load packages) lives beside
the state store, never in the output; dlt restores it from the destination when it is gone.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dlt
from dlt.common.destination.exceptions import UnknownDestinationModule
from dlt.pipeline.exceptions import PipelineStepFailed

from harvester.config import Config
from harvester.errors import ConfigError, HarvesterError
from harvester.load.published import Published
from harvester.load.source import Wanted, clover_source
from harvester.load.summary import LoadSummary
from harvester.load.verify import MESSAGE_CHARS
from harvester.scrub import register_secret, scrub
from harvester.state.postgres import safe_url

PIPELINE_PREFIX = "clover_"


class LoadFailed(HarvesterError):
    """The load as a whole failed (the destination, or reading the output)."""


@dataclass(frozen=True, slots=True)
class Destination:
    reference: Any  # what dlt.pipeline takes: a destination object or a name
    shown: str  # where the tables go, for messages (never a password)


def default_duckdb_path(config: Config) -> Path:
    """Next to the output folder (`data` -> `data.duckdb`); for a bucket, beside the state."""
    if config.load.duckdb_path is not None:
        return config.load.duckdb_path
    if config.output_dir is not None:
        return config.output_dir.with_name(config.output_dir.name + ".duckdb")
    assert config.bucket is not None
    return config.state_path.parent / f"{config.bucket.name}.duckdb"


def working_folder(config: Config) -> Path:
    """dlt's working folder: beside the state store."""
    return config.state_path.parent / "load"


def destination(config: Config) -> Destination:
    settings = config.load
    if settings.destination == "duckdb":
        path = default_duckdb_path(config)
        path.parent.mkdir(parents=True, exist_ok=True)
        return Destination(dlt.destinations.duckdb(credentials=str(path)), str(path))
    if settings.destination == "postgres":
        assert settings.dsn is not None
        dsn = settings.dsn.reveal()
        password = urlsplit(dsn).password
        if password:
            register_secret(password)
        return Destination(dlt.destinations.postgres(credentials=dsn), safe_url(dsn))
    # Another dlt destination, configured through dlt's environment variables.
    return Destination(settings.destination, settings.destination)


def run(
    config: Config,
    published: Published,
    wanted: Wanted,
    summary: LoadSummary,
    stop: threading.Event,
) -> None:
    """Extract, normalise and load into the destination; blocking (call it in a thread).

    LoadFailed if the load as a whole fails; chunks that do not hold up are in `summary`.
    """
    target = destination(config)
    identity = f"{config.load.destination}|{target.shown}|{config.load.dataset}"
    name = PIPELINE_PREFIX + hashlib.sha256(identity.encode()).hexdigest()[:12]
    try:
        pipeline = dlt.pipeline(
            pipeline_name=name,
            pipelines_dir=str(working_folder(config)),
            destination=target.reference,
            dataset_name=config.load.dataset,
        )
        source = clover_source(published, wanted, summary, stop)
        if config.load.destination == "duckdb":
            # DuckDB reads JSON lines in bulk: twice as fast as dlt's INSERT statements.
            pipeline.run(source, loader_file_format="jsonl")
        else:
            pipeline.run(source)
    except UnknownDestinationModule:
        raise ConfigError(
            f"load.destination: dlt knows no destination {config.load.destination!r}"
        ) from None
    except PipelineStepFailed as exc:
        cause = _our_cause(exc) or exc
        raise LoadFailed(f"{target.shown}: the {exc.step} step failed: {_shown(cause)}") from None
    except Exception as exc:  # dlt's configuration and dependency errors, before any step
        raise LoadFailed(f"{target.shown}: {_shown(exc)}") from None


def _our_cause(exc: BaseException) -> HarvesterError | None:
    """The harvester's own error under dlt's wrapping (reading the output failed), if any."""
    seen: BaseException | None = exc.__cause__ or exc.__context__
    for _ in range(10):
        if seen is None or isinstance(seen, HarvesterError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _shown(exc: BaseException) -> str:
    return scrub(str(exc).strip().replace("\n", " ")[:MESSAGE_CHARS])
