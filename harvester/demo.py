"""`make demo`: harvest a few sample merchants from the built-in simulator, end to end.

Starts `harvester simulate` on loopback, writes a demo config, runs `harvester backfill`
as a user would, then prints the summary, where the files are, and how busy the
simulator's export slots were while work remained.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

MERCHANTS = ("DEMOCAFE00001", "DEMOBAKERY002", "DEMOBOOKS0003", "DEMOGARAGE004", "DEMOFLORIST05")
DATA_FROM, DATA_TO = "2025-01-01", "2025-05-01"
EXPORT_LIMIT = 3


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _config(folder: Path, port: int) -> str:
    merchants = "\n".join(
        f"  - id: {merchant}\n    region: local\n    token: ${{DEMO_TOKEN_{n}}}"
        for n, merchant in enumerate(MERCHANTS)
    )
    return f"""\
output_dir: data
state_path: state/harvester.sqlite3
chunk_days: 30
max_concurrent_downloads: 8
timing:
  poll_min_s: 0.2
  poll_max_s: 2
  backoff_base_s: 0.2
  backoff_max_s: 5
regions:
  local:
    base_url: http://127.0.0.1:{port}
    windows: always
    max_concurrent_exports: {EXPORT_LIMIT}
merchants:
{merchants}
"""


def main() -> int:
    folder = Path("demo-output").resolve()
    if folder.exists():
        subprocess.run(["rm", "-rf", str(folder)], check=True)  # noqa: S603, S607 - our own folder
    folder.mkdir()
    port = _free_port()
    tokens = {f"DEMO_TOKEN_{n}": secrets.token_urlsafe(24) for n in range(len(MERCHANTS))}
    env = {**os.environ, **tokens}
    env["SIMULATOR_MERCHANTS"] = ",".join(
        f"{merchant}={tokens[f'DEMO_TOKEN_{n}']}" for n, merchant in enumerate(MERCHANTS)
    )
    (folder / "config.yaml").write_text(_config(folder, port))
    simulator = subprocess.Popen(  # noqa: S603 - our own CLI
        [
            sys.executable,
            "-m",
            "harvester",
            "simulate",
            "--port",
            str(port),
            "--file-port",
            str(_free_port()),
            "--max-concurrent-exports",
            str(EXPORT_LIMIT),
            "--data-from",
            DATA_FROM,
            "--data-to",
            DATA_TO,
            "--objects-per-day",
            "150",
            "--objects-per-file",
            "1000",
            "--export-seconds",
            "2",
            "--log-format",
            "console",
        ],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert simulator.stdout is not None
        print(simulator.stdout.readline().strip())
        print(f"harvesting {len(MERCHANTS)} merchants, {DATA_FROM} to {DATA_TO} ...", flush=True)
        started = time.monotonic()
        result = subprocess.run(  # noqa: S603 - our own CLI
            [
                sys.executable,
                "-m",
                "harvester",
                "backfill",
                "--config",
                str(folder / "config.yaml"),
                "--from",
                DATA_FROM,
                "--to",
                DATA_TO,
                "--log-format",
                "json",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=(folder / "harvester.log").open("w"),
            text=True,
            check=False,
        )
        wall_s = time.monotonic() - started
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_simulator/stats") as answer:
            stats = json.load(answer)
    finally:
        simulator.terminate()
        simulator.wait(timeout=10)
    print(result.stdout)
    files = sorted((folder / "data").rglob("part-*.json"))
    print(f"exit code {result.returncode}; {len(files)} files under {folder / 'data'}")
    print(f"log: {folder / 'harvester.log'}")
    print(f"wall time: {wall_s:.1f} s")
    print(
        f"exports created: {stats['exports_created']}, busy 503s: {stats['busy_503s']}, "
        f"most running at once: {stats['max_running']} (limit {EXPORT_LIMIT})"
    )
    busy = slot_busyness(stats, EXPORT_LIMIT)
    if busy is not None:
        print(
            f"export slots busy: {busy:.0%} (running exports / limit, averaged while work remained)"
        )
    return result.returncode


def slot_busyness(stats: dict[str, object], limit: int) -> float | None:
    first, last, running = (
        stats.get("first_create_at"),
        stats.get("last_done_at"),
        stats.get("running_seconds"),
    )
    if (
        not isinstance(first, str)
        or not isinstance(last, str)
        or not isinstance(running, int | float)
    ):
        return None
    from datetime import datetime

    span = (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()
    return running / (limit * span) if span > 0 else None


if __name__ == "__main__":
    sys.exit(main())
