"""`make demo`: harvest a few sample merchants from the built-in simulator, end to end.

Starts `harvester simulate` on loopback, writes a demo config, runs `harvester backfill`
as a user would, then prints the summary, where the files are, and how busy the
simulator's export slots were while work remained. Last, `harvester load` puts what it
harvested into DuckDB, and the demo prints orders and payments per merchant from the tables.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

MERCHANTS = ("DEMOCAFE00001", "DEMOBAKERY002", "DEMOBOOKS0003", "DEMOGARAGE004", "DEMOFLORIST05")
DATA_FROM, DATA_TO = "2025-01-01", "2025-04-01"
EXPORT_LIMIT = 3
HARVESTER = [sys.executable, "-m", "harvester"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _config(port: int) -> str:
    merchants = "\n".join(
        f"  - id: {merchant}\n    region: local\n    token: ${{DEMO_TOKEN_{n}}}"
        for n, merchant in enumerate(MERCHANTS)
    )
    return f"""\
output_dir: data
state_path: state/harvester.sqlite3
timing:
  poll_min_s: 0.2
  poll_max_s: 1
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


def slot_busyness(stats: dict[str, Any], limit: int) -> float | None:
    """Running exports / limit, averaged from the first create to the last export's end."""
    if not stats.get("first_create_at") or not stats.get("last_done_at"):
        return None
    first = datetime.fromisoformat(stats["first_create_at"])
    last = datetime.fromisoformat(stats["last_done_at"])
    span_s = (last - first).total_seconds()
    return float(stats["running_seconds"]) / (limit * span_s) if span_s > 0 else None


def main() -> int:
    folder = Path("demo-output").resolve()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    port = _free_port()
    tokens = {f"DEMO_TOKEN_{n}": secrets.token_urlsafe(24) for n in range(len(MERCHANTS))}
    env = {
        **os.environ,
        **tokens,
        # The simulator learns the tokens from its environment, never from a command line.
        "SIMULATOR_MERCHANTS": ",".join(
            f"{merchant}={tokens[f'DEMO_TOKEN_{n}']}" for n, merchant in enumerate(MERCHANTS)
        ),
    }
    config = folder / "config.yaml"
    config.write_text(_config(port))
    simulate = (
        f"simulate --port {port} --file-port {_free_port()} "
        f"--max-concurrent-exports {EXPORT_LIMIT} --data-from {DATA_FROM} --data-to {DATA_TO} "
        "--objects-per-day 150 --objects-per-file 1000 "
        "--export-seconds 1 --export-seconds-per-object 0.0001 --log-format json"
    )
    with (folder / "simulator.log").open("w") as simulator_log:
        simulator = subprocess.Popen(  # noqa: S603 - our own CLI
            [*HARVESTER, *simulate.split()],
            env=env,
            stdout=subprocess.PIPE,
            stderr=simulator_log,
            text=True,
        )
    try:
        assert simulator.stdout is not None
        print(simulator.stdout.readline().strip())
        print(f"harvesting {len(MERCHANTS)} merchants, {DATA_FROM} to {DATA_TO} ...", flush=True)
        started = time.monotonic()
        backfill = f"backfill --config {config} --from {DATA_FROM} --to {DATA_TO} --log-format json"
        with (folder / "harvester.log").open("w") as harvester_log:
            result = subprocess.run(  # noqa: S603 - our own CLI
                [*HARVESTER, *backfill.split()],
                env=env,
                stdout=subprocess.PIPE,
                stderr=harvester_log,
                text=True,
                check=False,
            )
        wall_s = time.monotonic() - started
        stats_url = f"http://127.0.0.1:{port}/_simulator/stats"
        with urllib.request.urlopen(stats_url) as answer:
            stats = json.load(answer)
    finally:
        simulator.terminate()
        simulator.wait(timeout=10)
    print(result.stdout)
    files = sorted((folder / "data").rglob("part-*.json"))
    print(f"exit code {result.returncode}; {len(files)} files under {folder / 'data'}")
    print(f"logs: {folder / 'harvester.log'}, {folder / 'simulator.log'}")
    print(f"wall time: {wall_s:.1f} s")
    print(
        f"exports created: {stats['exports_created']}, busy 503s: {stats['busy_503s']}, "
        f"most running at once: {stats['max_running']} (limit {EXPORT_LIMIT})"
    )
    busy = slot_busyness(stats, EXPORT_LIMIT)
    if busy is not None:
        print(f"export slots busy: {busy:.0%} (running exports / limit, while work remained)")
    if result.returncode != 0:
        return result.returncode
    return load(folder, config, env)


def load(folder: Path, config: Path, env: dict[str, str]) -> int:
    """`harvester load` into DuckDB, then orders and payments per merchant from the tables."""
    print("\nloading into DuckDB ...", flush=True)
    with (folder / "load.log").open("w") as load_log:
        loaded = subprocess.run(  # noqa: S603 - our own CLI
            [*HARVESTER, "load", "--config", str(config), "--log-format", "json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=load_log,
            text=True,
            check=False,
        )
    print(loaded.stdout)
    if loaded.returncode != 0:
        print(f"load: exit code {loaded.returncode}; see {folder / 'load.log'}")
        return loaded.returncode
    import duckdb  # the load extra brings it

    database = folder / "data.duckdb"
    with duckdb.connect(str(database), read_only=True) as db:
        rows = db.sql(
            """
            SELECT merchant_id,
                   (SELECT count(*) FROM clover.orders AS o
                    WHERE o.merchant_id = m.merchant_id) AS orders,
                   (SELECT count(*) FROM clover.payments AS p
                    WHERE p.merchant_id = m.merchant_id) AS payments,
                   (SELECT sum(amount) FROM clover.payments AS p
                    WHERE p.merchant_id = m.merchant_id) AS amount
            FROM (SELECT DISTINCT merchant_id FROM clover.orders
                  UNION SELECT DISTINCT merchant_id FROM clover.payments) AS m
            ORDER BY merchant_id
            """
        ).fetchall()
    print(f"from the tables in {database} (dataset clover):")
    print(f"{'merchant':<15}{'orders':>8}{'payments':>10}{'amount (USD)':>15}")
    for merchant_id, orders, payments, amount in rows:
        print(f"{merchant_id:<15}{orders:>8}{payments:>10}{(amount or 0) / 100:>15,.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
