"""Health pings: /start, the bare URL on success, /fail with the exit code; never fatal."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from harvester.config import Secret, load_config
from harvester.errors import ConfigError
from harvester.ops.health import PING_ATTEMPTS, ping, ping_url
from harvester.ops.operation import Operation
from tests.conftest import Scenario
from tests.fakeclock import FakeClock
from tests.harness import log_events
from tests.test_cli import GOOD, write


@dataclasses.dataclass
class PingServer:
    """A loopback stand-in for healthchecks.io: records each ping, answers `status`."""

    url: str
    pings: list[tuple[str, str]]  # (path, body)
    status: int = 200


@asynccontextmanager
async def ping_server() -> AsyncIterator[PingServer]:
    server = PingServer("", [])

    async def record(request: web.Request) -> web.Response:
        server.pings.append((request.path, await request.text()))
        return web.Response(status=server.status, text="OK")

    app = web.Application()
    app.router.add_post("/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}/ping/abc-123"
    try:
        yield server
    finally:
        await runner.cleanup()


def test_ping_urls_follow_the_healthchecks_convention() -> None:
    """start and fail are suffixes of the check's URL; success is the URL itself."""
    base = "https://hc-ping.com/uuid"
    assert ping_url(base, "start") == f"{base}/start"
    assert ping_url(base, "success") == base
    assert ping_url(base, "fail") == f"{base}/fail"
    with pytest.raises(ValueError, match="unknown ping event"):
        ping_url(base, "done")


async def test_a_run_pings_start_then_success_or_fail_with_its_exit_code(
    scenario: Scenario, clock: FakeClock
) -> None:
    """started() pings /start; finished(0) the bare URL; finished(1) /fail, body naming the code."""
    async with ping_server() as server:
        config = dataclasses.replace(scenario.config(), healthcheck_url=Secret(server.url))
        async with Operation(config, clock) as operation:
            await operation.started()
            await operation.finished(0)
            await operation.started()
            await operation.finished(143)
    assert server.pings == [
        ("/ping/abc-123/start", ""),
        ("/ping/abc-123", "exit code 0\n"),
        ("/ping/abc-123/start", ""),
        ("/ping/abc-123/fail", "exit code 143\n"),
    ]


async def test_a_failing_ping_is_retried_logged_and_never_raised(
    clock: FakeClock, log_buffer: Any
) -> None:
    """A 500 answer is retried PING_ATTEMPTS times, logged with the host only, and returns False."""
    async with ping_server() as server:
        server.status = 500
        assert await ping(Secret(server.url), "start", clock) is False
    assert len(server.pings) == PING_ATTEMPTS
    failures = log_events(log_buffer, "healthcheck.failed")
    assert [f["error"] for f in failures] == ["HTTP 500"] * PING_ATTEMPTS
    assert "abc-123" not in log_buffer.getvalue()


async def test_an_unreachable_ping_host_does_not_fail_the_run(
    scenario: Scenario, clock: FakeClock, log_buffer: Any
) -> None:
    """With nothing listening at the ping URL, the run's start and end go on regardless."""
    async with ping_server() as server:
        url = server.url  # closed once the block ends: nothing listens there any more
    config = dataclasses.replace(scenario.config(), healthcheck_url=Secret(url))
    async with Operation(config, clock) as operation:
        await operation.started()
        await operation.finished(1)
    events = log_events(log_buffer, "healthcheck.failed")
    assert {e["ping"] for e in events} == {"start", "fail"}
    assert "abc-123" not in log_buffer.getvalue()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://example.com/ping/x", "only allowed to a loopback host"),
        ("ftp://example.com/x", "expected an https:// URL"),
        ("https://hc-ping.com/x?secret=1", "expected no query"),
        ("https://[bad/x", "cannot read it as a URL"),
    ],
)
def test_bad_healthcheck_urls_are_refused_without_showing_them(
    tmp_path: Path, url: str, problem: str
) -> None:
    """A bad ping URL names the key and the problem, never the URL."""
    path = write(tmp_path, {**GOOD, "healthcheck_url": url})
    with pytest.raises(ConfigError, match=re.escape(problem)) as caught:
        load_config(path, {"TOKEN_ABC": "x"})
    assert str(caught.value).startswith("healthcheck_url: ")
    assert url not in str(caught.value)


def test_healthcheck_url_is_kept_secret(tmp_path: Path) -> None:
    """The ping URL reads ${VAR}, loses a trailing slash, and never shows in the config's repr."""
    path = write(tmp_path, {**GOOD, "healthcheck_url": "${PING_URL}"})
    config = load_config(path, {"TOKEN_ABC": "x", "PING_URL": "https://hc-ping.com/uuid-1/"})
    assert config.healthcheck_url is not None
    assert config.healthcheck_url.reveal() == "https://hc-ping.com/uuid-1"
    assert "uuid-1" not in repr(config)
