"""A real, throwaway PostgreSQL server for the tests, from /usr/lib/postgresql/15/bin.

`initdb` refuses to run as root, so as root the server runs as the `postgres` user, in a
temporary folder it owns; it listens on 127.0.0.1 on a free port, trusts local logins, and
is stopped (and its folder removed) at the end. Without the binaries the tests that need
it are skipped, except in CI (the environment variable CI is set), where they fail.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(os.environ.get("HARVESTER_PG_BIN", "/usr/lib/postgresql/15/bin"))
TMPFS = Path("/dev/shm")  # noqa: S108 (mkdtemp makes a folder of our own in it)


@dataclass(frozen=True, slots=True)
class PgServer:
    host: str
    port: int
    user: str

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def unavailable_reason() -> str | None:
    """Why no server can be started here, or None."""
    for tool in ("initdb", "pg_ctl"):
        if not (BIN / tool).is_file():
            return f"PostgreSQL server binaries not found ({BIN / tool})"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run initdb as"
    return None


def skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL tests cannot run in CI: {reason}")
    pytest.skip(reason)


# What the tests' server may fill: its WAL (at most max_wal_size below) and a database per test.
_TMPFS_ROOM_BYTES = 2 * 1024**3


def _roomy(folder: Path) -> bool:
    """Whether `folder` is there, ours to write in, with room for the tests' server (a
    container's /dev/shm may be as small as 64 MB): if not, the server's files go on disk."""
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return os.access(folder, os.W_OK) and stats.f_bavail * stats.f_frsize >= _TMPFS_ROOM_BYTES


@contextmanager
def running_server(in_memory: bool = False) -> Iterator[PgServer]:
    """Start a server; stop it and remove its files on exit.

    `in_memory`: its files on tmpfs (/dev/shm), where there is one, as the tests want it: they
    create a database each, and CREATE DATABASE opens some 1,200 files, about 16 ms of CPU on
    tmpfs against 250 ms on the disk of a small virtual machine. Benchmarks leave it on disk,
    where SQLite's file is too.
    """
    as_root = os.geteuid() == 0
    tmpfs = in_memory and _roomy(TMPFS)
    folder = Path(tempfile.mkdtemp(prefix="harvester-pg-", dir=TMPFS if tmpfs else None))
    prefix: list[str] = []
    if as_root:
        owner = pwd.getpwnam("postgres")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data = folder / "data"
    port = _free_port()

    def run(*command: str) -> None:
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=120)

    try:
        run(str(BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
        options = (
            f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        if tmpfs:
            options += " -c max_wal_size=128MB -c min_wal_size=32MB"  # memory, there
        run(
            str(BIN / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(folder / "log"),
            "-w",
            "start",
        )
        try:
            yield PgServer("127.0.0.1", port, "postgres")
        finally:
            run(str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    except subprocess.CalledProcessError as exc:
        log = folder / "log"
        detail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(
            f"{exc.cmd[len(prefix)]} failed: {exc.stderr.decode(errors='replace')}{detail}"
        ) from exc
    finally:
        shutil.rmtree(folder, ignore_errors=True)
