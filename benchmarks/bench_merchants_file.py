"""Loading merchants from a merchants_file: how long `check-config` takes, and how much memory.

Issue 21's target: 100,000 rows load in at most 5 s and 200 MB. Each case runs the real CLI
(`python -m harvester check-config`) in a fresh subprocess and reports its exit code, wall
time, CPU time and peak RSS (ru_maxrss, from wait4). Baselines in the same run: one
merchant (the interpreter and imports alone), and the same merchants as a YAML list.

    .venv/bin/python benchmarks/bench_merchants_file.py                 # 100,000 rows
    .venv/bin/python benchmarks/bench_merchants_file.py --rows 500000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOCAL = "regions: {local: {base_url: 'http://127.0.0.1:9', windows: always}}\n"


def csv_rows(count: int) -> str:
    lines = ["id,region,types,start,token"]
    lines += [
        f"M{n:012d},{'us' if n % 2 else 'eu'},PAYMENTS ORDERS,2024-01-01,${{APP_TOKEN}}"
        for n in range(count)
    ]
    return "\n".join(lines) + "\n"


def jsonl_rows(count: int) -> str:
    return "".join(
        json.dumps({"id": f"M{n:012d}", "types": ["PAYMENTS"], "token": f"tok-{n:024d}"}) + "\n"
        for n in range(count)
    )


def yaml_list(count: int) -> str:
    lines = ["merchants:\n"]
    lines += [
        f"  - {{id: M{n:012d}, types: [PAYMENTS, ORDERS], start: 2024-01-01, "
        f"token: '${{APP_TOKEN}}'}}\n"
        for n in range(count)
    ]
    return "".join(lines)


def measure(name: str, config: str, files: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        for file_name, text in files.items():
            (Path(folder) / file_name).write_text(text)
        path = Path(folder) / "config.yaml"
        path.write_text(LOCAL + config)
        started = time.monotonic()
        child = subprocess.Popen(  # noqa: S603 -- the harvester's own CLI, on a file we wrote
            [sys.executable, "-m", "harvester", "check-config", "--config", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "APP_TOKEN": "tok-0123456789abcdef0123"},
        )
        assert child.stdout is not None
        assert child.stderr is not None
        out, err = child.stdout.read(), child.stderr.read()  # a line each: no pipe fills up
        child.stdout.close()
        child.stderr.close()
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall_s = time.monotonic() - started
    said = (out or err).decode().strip().rsplit(": ", 1)[-1][:60]
    print(
        f"{name:<28} exit {child.returncode}  wall {wall_s:6.2f} s  "
        f"cpu {usage.ru_utime + usage.ru_stime:6.2f} s  "
        f"peak RSS {usage.ru_maxrss / 1024:7.1f} MB  {said}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    rows = args.rows
    measure("baseline: 1 merchant", "merchants: [{id: M1, token: tok-0123456789abcdef}]\n", {})
    measure(f"baseline: YAML, {rows:,}", yaml_list(rows), {})
    measure(f"CSV, {rows:,} rows", "merchants_file: m.csv\n", {"m.csv": csv_rows(rows)})
    measure(
        f"JSON Lines, {rows:,} rows", "merchants_file: m.jsonl\n", {"m.jsonl": jsonl_rows(rows)}
    )


if __name__ == "__main__":
    main()
