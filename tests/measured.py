"""A command's CPU time and peak memory, measured on it alone.

Linux carries a process's peak RSS (ru_maxrss) over `exec`, and a child forked from a big
process (a pytest worker holds hundreds of MB) starts with that process's RSS as its peak.
So the command is started by a small launcher, a fresh interpreter that forks it, passes
SIGTERM on to it, and writes its exit code and rusage to a report file: the peak is then
the command's own. Tests use `run_measured`; benchmarks that watch the command as it runs
start `launched(...)` themselves and read the report with `read_usage`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

_LAUNCHER = """\
import json, os, signal, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(pid, signum))
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as report:
    json.dump({"code": os.waitstatus_to_exitcode(status),
               "cpu_s": usage.ru_utime + usage.ru_stime,
               "system_s": usage.ru_stime,
               "peak_rss_kib": usage.ru_maxrss}, report)
"""


@dataclass(frozen=True, slots=True)
class Usage:
    code: int
    cpu_s: float  # user + system
    system_s: float  # of cpu_s, in the kernel (file systems and sockets)
    peak_rss_mb: float


@dataclass(frozen=True, slots=True)
class Measured:
    usage: Usage
    out: str
    err: str


def launched(argv: list[str], report: Path) -> list[str]:
    """The command line that runs `argv` (its first item a path to the program) through the
    launcher, which writes its usage to `report` when it exits."""
    return [sys.executable, "-c", _LAUNCHER, str(report), *argv]


def read_usage(report: Path) -> Usage:
    figures = json.loads(report.read_text())
    return Usage(
        code=figures["code"],
        cpu_s=figures["cpu_s"],
        system_s=figures["system_s"],
        peak_rss_mb=figures["peak_rss_kib"] / 1024,  # Linux reports kibibytes
    )


def run_measured(argv: list[str], report: Path, timeout_s: float = 120) -> Measured:
    """Run `argv` to its end and measure it; `report` is a file the launcher may write."""
    done = subprocess.run(
        launched(argv, report), capture_output=True, timeout=timeout_s, check=False
    )
    return Measured(
        read_usage(report),
        out=done.stdout.decode(errors="replace"),
        err=done.stderr.decode(errors="replace"),
    )
