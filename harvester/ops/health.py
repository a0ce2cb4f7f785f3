"""Dead-man's-switch pings (healthchecks.io's convention) and what /healthz answers.

`<url>/start` when a run starts; when it ends, the bare `<url>` on success (exit code 0) or
`<url>/fail` otherwise, each a POST whose body says the exit code (the service keeps it as
the ping's log). Cronitor-style services take the same three URLs. A ping that fails is
logged and retried a little, and never fails the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from harvester.clock import Clock
from harvester.config import Secret
from harvester.logs import get_logger

PING_TIMEOUT_S = 10.0
PING_ATTEMPTS = 3
PING_RETRY_S = 2.0


@dataclass(frozen=True, slots=True)
class Health:
    """What /healthz says: healthy or not, and why, in a sentence."""

    healthy: bool
    detail: str


def ping_url(base: str, event: str) -> str:
    """The URL for "start", "success" or "fail" under a check's ping URL."""
    if event == "success":
        return base
    if event in ("start", "fail"):
        return f"{base}/{event}"
    raise ValueError(f"unknown ping event {event!r}")


async def ping(url: Secret, event: str, clock: Clock, body: str = "") -> bool:
    """POST the ping for `event`; True if the service took it. Never raises for a failure."""
    target = ping_url(url.reveal(), event)
    host = urlsplit(target).hostname  # the path is what lets anyone ping: never logged
    log = get_logger()
    timeout = aiohttp.ClientTimeout(total=PING_TIMEOUT_S)
    for attempt in range(1, PING_ATTEMPTS + 1):
        problem: str
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout, trust_env=False) as session,
                session.post(target, data=body.encode(), allow_redirects=False) as answer,
            ):
                if answer.status < 300:
                    log.info("healthcheck.pinged", ping=event, host=host)
                    return True
                problem = f"HTTP {answer.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            problem = type(exc).__name__
        log.warning("healthcheck.failed", ping=event, host=host, error=problem, attempt=attempt)
        if attempt < PING_ATTEMPTS:
            await clock.sleep(PING_RETRY_S * attempt)
    return False
