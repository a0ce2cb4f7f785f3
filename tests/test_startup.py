"""Start-up: the CLI, `--help`, `status` and `plan` load none of the heavy libraries.

PostgreSQL's driver comes with `state_url`, the S3 client with `output_url`, prometheus-client
with `metrics:`, rich with the live view and aiohttp with a command that talks HTTP. Each
check runs in a fresh interpreter: this one has imported everything already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harvester.clock import SystemClock
from harvester.state.sqlite import Store

HEAVY = ("psycopg", "aiobotocore", "botocore", "prometheus_client", "rich", "aiohttp")

# Runs the CLI in-process with argv[2:], then writes the loaded modules to argv[1].
PROBE = """
import json, sys
from harvester.cli import main
try:
    code = main(sys.argv[2:])
except SystemExit as exc:
    code = exc.code
with open(sys.argv[1], "w") as out:
    json.dump({"code": code, "modules": sorted(sys.modules)}, out)
"""


def heavy_in(modules: list[str]) -> list[str]:
    return [name for name in modules if name.split(".")[0] in HEAVY]


def probe(tmp_path: Path, *args: str) -> tuple[int, list[str]]:
    report = tmp_path / "modules.json"
    subprocess.run(
        [sys.executable, "-c", PROBE, str(report), *args],
        check=True,
        env={**os.environ, "TOKEN_ABC": "secret-token-value"},
        stdout=subprocess.DEVNULL,
    )
    found = json.loads(report.read_text())
    return int(found["code"]), list(found["modules"])


def modules_after_importing(module: str) -> list[str]:
    """The modules a fresh interpreter holds once it has imported `module`."""
    shown = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import json, sys, {module}; print(json.dumps(list(sys.modules)))",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    modules: list[str] = json.loads(shown.stdout)
    return modules


def test_importing_the_cli_loads_no_heavy_library() -> None:
    """`import harvester.cli` (what every command pays) loads none of them."""
    modules = modules_after_importing("harvester.cli")
    assert "harvester.cli" in modules
    assert heavy_in(modules) == []


@pytest.mark.parametrize("command", ["help", "status", "plan", "check-config"])
async def test_help_status_and_plan_load_no_heavy_library(tmp_path: Path, command: str) -> None:
    """On a SQLite state and an output folder, the commands that only read load none of them."""
    document = {
        "output_dir": "data",
        "state_path": "state/harvester.sqlite3",
        "regions": {"local": {"base_url": "http://127.0.0.1:9", "windows": "always"}},
        "merchants": [{"id": "ABC123", "region": "local", "token": "${TOKEN_ABC}"}],
    }
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(document))
    async with await Store.open(tmp_path / "state" / "harvester.sqlite3", SystemClock()) as store:
        await store.start_run()
    words = {
        "help": ["--help"],
        "status": ["status", "--config", str(config)],
        "plan": ["plan", "--config", str(config), "--from", "2025-01-01", "--to", "2025-03-01"],
        "check-config": ["check-config", "--config", str(config)],
    }[command]
    code, modules = probe(tmp_path, *words)
    assert code == 0
    assert heavy_in(modules) == []
    assert "structlog" not in modules  # nothing was logged: no logger was made


def test_a_run_without_metrics_listen_loads_no_http_server() -> None:
    """`harvester.ops.operation`, which every run loads, leaves aiohttp's server side to
    runs that serve `metrics.listen`."""
    modules = modules_after_importing("harvester.ops.operation")
    assert "aiohttp.client" in modules
    assert [name for name in modules if name.startswith("aiohttp.web")] == []
