"""A command's CPU time and peak memory, measured on it alone.

Linux carries a process's peak RSS (ru_maxrss) over `exec`, and a child forked from a big
process (a pytest worker holds hundreds of MB) starts with that process's RSS as its peak.
So the command is started by a small launcher, a fresh interpreter that forks it and
reports its rusage: the peak is then the command's own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

_LAUNCHER = """\
import json, os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as report:
    json.dump({"code": os.waitstatus_to_exitcode(status),
               "cpu_s": usage.ru_utime + usage.ru_stime,
               "peak_rss_kib": usage.ru_maxrss}, report)
"""


@dataclass(frozen=True, slots=True)
class Measured:
    code: int
    out: str
    err: str
    cpu_s: float  # user + system
    peak_rss_mb: float


def run_measured(argv: list[str], report: Path, timeout_s: float = 120) -> Measured:
    """Run `argv` (its first item a path to the program) and measure it; `report` is a file
    the launcher may write."""
    done = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, str(report), *argv],
        capture_output=True,
        timeout=timeout_s,
        check=False,
    )
    figures = json.loads(report.read_text())
    return Measured(
        code=figures["code"],
        out=done.stdout.decode(errors="replace"),
        err=done.stderr.decode(errors="replace"),
        cpu_s=figures["cpu_s"],
        peak_rss_mb=figures["peak_rss_kib"] / 1024,  # Linux reports kibibytes
    )
