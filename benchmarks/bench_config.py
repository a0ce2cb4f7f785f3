"""Hostile and huge configs: how long `check-config` takes, and how much memory, to refuse them.

Issue 9: "A 559-byte alias bomb (billion laughs) took 68 s and 6.5 GB, then MemoryError"
and "549k merchants with a bad id at the end took 108 s and 3 GB before exit 2". Each case
runs the real CLI (`python -m harvester check-config`) in a fresh subprocess and reports its
exit code, wall time, CPU time and peak RSS (ru_maxrss, from wait4).

    .venv/bin/python benchmarks/bench_config.py                  # the bomb and 100k merchants
    .venv/bin/python benchmarks/bench_config.py --merchants 549000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Billion laughs where the config reads a value (a merchant id): 440 bytes, 9^9 strings.
_LEVELS = [
    '&a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
    *(
        f"&{name} [{','.join(['*' + previous] * 9)}]"
        for previous, name in zip("abcdefgh", "bcdefghi", strict=True)
    ),
]
BOMB = (
    "merchants:\n  - id: [" + ",\n        ".join(_LEVELS) + "]\n    token: tok-0123456789abcdef\n"
)


def many_merchants(count: int) -> str:
    lines = [
        "regions: {local: {base_url: 'http://127.0.0.1:9', windows: always}}\n",
        "merchants:\n",
    ]
    lines += [f"  - {{id: M{n:012d}, region: local, token: tok-{n:024d}}}\n" for n in range(count)]
    lines.append("  - {id: 'bad/id', region: local, token: tok-000000000000000000000000}\n")
    return "".join(lines)


def measure(name: str, text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.yaml"
        path.write_text(text)
        started = time.monotonic()
        child = subprocess.Popen(  # noqa: S603 -- the harvester's own CLI, on a file we wrote
            [sys.executable, "-m", "harvester", "check-config", "--config", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert child.stderr is not None
        err = child.stderr.read().decode()
        child.stderr.close()
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall_s = time.monotonic() - started
    print(
        f"{name:<24} {len(text):>12,} bytes  exit {child.returncode}  "
        f"wall {wall_s:7.2f} s  cpu {usage.ru_utime + usage.ru_stime:7.2f} s  "
        f"peak RSS {usage.ru_maxrss / 1024:8.1f} MB"
    )
    print(f"{'':<24} {err.strip()[:150]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merchants", type=int, default=100_000)
    args = parser.parse_args()
    measure("alias bomb", BOMB)
    measure(f"{args.merchants:,} merchants", many_merchants(args.merchants))


if __name__ == "__main__":
    main()
