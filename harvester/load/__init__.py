"""`harvester load`: the published chunks into tables (DuckDB, PostgreSQL, any dlt destination).

May import ground, clover, config, state and output; ops/ (serve, the load view) imports it.
Imported only by the `load` command and by `serve` with `load.after_run`: dlt is imported in
source.py and pipeline.py alone, so no other command pays for it. Reads the output (its
layout, from output/), never writes it, and knows nothing of the harvest.
"""

import importlib.util
import os

# Before anything here imports dlt, which reads these as it starts: no anonymous telemetry
# (no network but the destination's), dlt's own log lines only for errors, and its
# intermediate files uncompressed (gzip took a third of a load's time; they are deleted once
# loaded).
os.environ["RUNTIME__DLTHUB_TELEMETRY"] = "false"
os.environ.setdefault("RUNTIME__LOG_LEVEL", "ERROR")
os.environ.setdefault("DATA_WRITER__DISABLE_COMPRESSION", "true")


def missing_extra() -> str | None:
    """The first module of the `load` extra that is not installed, if any (dlt not imported)."""
    for name in ("dlt", "duckdb"):
        if importlib.util.find_spec(name) is None:
            return name
    return None


def needs_extra(missing: str) -> str:
    return (
        f"needs the load extra ({missing} is not installed): pip install 'clover-harvester[load]'"
    )
