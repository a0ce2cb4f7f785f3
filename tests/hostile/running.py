"""Running the real CLI against the hostile server: a config, a subprocess, what it left."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from harvester.cli import main

TOKEN = "tok-H0st1le-5ecret-0123456789abcdef"
MERCHANT = "HOSTILEMERCH1"
ONE_CHUNK = ("--from", "2025-01-01", "--to", "2025-01-31")
THREE_CHUNKS = ("--from", "2025-01-01", "--to", "2025-03-31")
QUICK_TIMING: dict[str, float] = {
    "poll_min_s": 0.02,
    "poll_max_s": 0.1,
    "backoff_base_s": 0.01,
    "backoff_max_s": 0.05,
    "max_attempts": 2,
    "export_cooldown_s": 0.01,
    "request_timeout_s": 5,
    "shutdown_grace_s": 0.5,
}


def write_config(tmp_path: Path, api_url: str, **top: Any) -> Path:
    """A config harvesting one merchant from `api_url`; `top` overrides top-level keys."""
    timing = {**QUICK_TIMING, **top.pop("timing", {})}
    document = {
        "output_dir": "data",
        "state_path": "state/harvester.sqlite3",
        "max_export_attempts": 1,
        "timing": timing,
        "regions": {
            "local": {"base_url": api_url, "windows": "always", "max_concurrent_exports": 1}
        },
        "merchants": [
            {"id": MERCHANT, "region": "local", "token": "${HOSTILE_TOKEN}", "types": ["ORDERS"]}
        ],
        **top,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@functools.cache
def namespaces_refused() -> str | None:
    """Why this kernel refuses unprivileged user and mount namespaces, or None."""
    probe = ("unshare", "--user", "--map-root-user", "--mount", "true")
    try:
        done = subprocess.run(probe, capture_output=True, timeout=30, check=False)
    except OSError as exc:
        return f"unshare cannot run: {exc}"
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip()
        return f"this kernel refuses unprivileged namespaces ({said or done.returncode})"
    return None


def need_namespaces() -> None:
    """Skip the test, saying why, where namespaces are refused; in CI, fail it instead."""
    reason = namespaces_refused()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"a disk test cannot run in CI: {reason}")
    pytest.skip(reason)


@dataclass(frozen=True, slots=True)
class Ran:
    code: int
    out: str
    err: str


async def run_cli(*args: str, inside: str | None = None, env: dict[str, str] | None = None) -> Ran:
    """`python -m harvester ARGS`; `inside`, if given, is shell run first in a private mount
    namespace (as root of a new user namespace), to mount a read-only or full file system.
    If `inside` names HARVESTER, the harvester runs there instead of after it."""
    command: Sequence[str] = (sys.executable, "-m", "harvester", *args)
    if inside is not None:
        need_namespaces()
        harvester = shlex.join(command)
        script = (
            f"set -e; {inside.replace('HARVESTER', harvester)}"
            if "HARVESTER" in inside
            else f"set -e; {inside}; exec {harvester}"
        )
        command = ("unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script)
    process = await asyncio.create_subprocess_exec(
        *command,
        env={**os.environ, "HOSTILE_TOKEN": TOKEN, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


def run_here(*args: str) -> Ran:
    """`harvester ARGS` in this process, for the words that start no event loop (status,
    plan, check-config): the same code as the subprocess, without its start-up time."""
    out, err = io.StringIO(), io.StringIO()
    saved = os.environ.get("HOSTILE_TOKEN")
    os.environ["HOSTILE_TOKEN"] = TOKEN  # as run_cli hands it to the subprocess
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        if saved is None:
            del os.environ["HOSTILE_TOKEN"]
        else:
            os.environ["HOSTILE_TOKEN"] = saved
    return Ran(code, out.getvalue(), err.getvalue())


def written(folder: Path) -> bytes:
    """Every file under `folder` but the config: output, state, logs."""
    return b"".join(
        p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != "config.yaml"
    )
