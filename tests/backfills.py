"""The real CLI's `backfill` as a child process, as the kill, bucket and many-process tests
start it: JSON logs on a pipe, stdout discarded, the environment plus the test's variables."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path


def backfill_argv(config: Path, start: str, end: str, *extra: str) -> list[str]:
    """`python -m harvester backfill --config CONFIG --from START --to END --log-format json`
    (plus `extra`), as tests and benchmarks run it."""
    return [
        sys.executable,
        "-m",
        "harvester",
        "backfill",
        "--config",
        str(config),
        "--from",
        start,
        "--to",
        end,
        "--log-format",
        "json",
        *extra,
    ]


async def start_backfill(
    config: Path, start: str, end: str, env: Mapping[str, str], *extra: str
) -> asyncio.subprocess.Process:
    """`backfill_argv` as a child process."""
    return await asyncio.create_subprocess_exec(
        *backfill_argv(config, start, end, *extra),
        env={**os.environ, **env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
