"""What surrounds a command's work: metrics kept, written to a textfile, served, and pinged.

`Operation` lives as long as the process (one `run`, or `serve` with its many runs): it
serves `/metrics` and `/healthz` on `metrics.listen` and rewrites `metrics.textfile` every
`metrics.interval_s`. Around each run, `started()` and `finished(code)` move the run gauges,
write the textfile once more and ping `healthcheck_url`. Without `metrics:` nothing is
exported, no metric is kept and prometheus-client is not imported.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

from harvester.clock import Clock, nap
from harvester.config import Config
from harvester.harvest.observer import RunObserver
from harvester.logs import get_logger
from harvester.ops.health import Health, ping

if TYPE_CHECKING:
    from aiohttp import web

    from harvester.ops.metrics import Metrics


def _always_healthy() -> Health:
    return Health(True, "running")


class Operation:
    def __init__(
        self,
        config: Config,
        clock: Clock,
        metrics: Metrics | None = None,
        health: Callable[[], Health] = _always_healthy,
    ) -> None:
        self._config = config
        self._clock = clock
        settings = config.metrics
        if metrics is None and (settings.listen is not None or settings.textfile is not None):
            from harvester.ops.metrics import Metrics

            metrics = Metrics(clock)
        self._exported = metrics
        # What the run reports to: the metrics, or (none exported) nobody.
        self.metrics: RunObserver = metrics or RunObserver()
        self._regions(config)
        self._health = health
        self._runner: web.AppRunner | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self.address: tuple[str, int] | None = None  # where /metrics is served, once started

    async def __aenter__(self) -> Operation:
        settings = self._config.metrics
        if settings.listen is not None:
            await self._serve(*settings.listen)
        if settings.textfile is not None:
            self._writer = asyncio.create_task(self._write_every(settings.interval_s))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._closing.set()
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        await self.write_textfile()
        if self._runner is not None:
            await self._runner.cleanup()

    def reconfigure(self, config: Config) -> None:
        """Use `config` from the next run on (the listen address and textfile stay)."""
        self._config = config
        self._regions(config)

    def _regions(self, config: Config) -> None:
        if self._exported is not None:
            self._exported.regions(sorted({m.region.name for m in config.merchants}))

    async def started(self) -> None:
        if self._exported is not None:
            self._exported.run_started()
        await self.write_textfile()
        if self._config.healthcheck_url is not None:
            await ping(self._config.healthcheck_url, "start", self._clock)

    async def finished(self, code: int, note: str = "") -> None:
        """`note`, if any, follows the exit code in the ping's body (a failed load, say)."""
        if self._exported is not None:
            self._exported.run_finished(ok=code == 0)
        await self.write_textfile()
        if self._config.healthcheck_url is not None:
            event = "success" if code == 0 else "fail"
            body = f"exit code {code}\n" + (f"{note}\n" if note else "")
            await ping(self._config.healthcheck_url, event, self._clock, body)

    async def write_textfile(self) -> None:
        path = self._config.metrics.textfile
        if path is None or self._exported is None:
            return
        try:
            await asyncio.to_thread(_write, self._exported, str(path))
        except OSError as exc:
            # Metrics must never stop a harvest; the next interval tries again.
            get_logger().warning("metrics.write_failed", path=str(path), error=str(exc))

    async def _write_every(self, interval_s: float) -> None:
        while await nap(self._clock, interval_s, self._closing):
            await self.write_textfile()

    async def _serve(self, host: str, port: int) -> None:
        # Imported here: aiohttp's server side is some 14 ms of every run's start-up, and
        # only runs with metrics.listen serve.
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/metrics", self._metrics_page)
        app.router.add_get("/healthz", self._health_page)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses  # port 0 (tests) binds a free port
        self.address = (host, int(bound[0][1]) if bound else port)
        get_logger().info("metrics.listening", host=host, port=self.address[1])

    async def _metrics_page(self, request: web.Request) -> web.Response:
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST

        assert self._exported is not None  # served only with metrics.listen: made then
        return web.Response(
            body=self._exported.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _health_page(self, request: web.Request) -> web.Response:
        from aiohttp import web

        health = self._health()
        return web.Response(
            status=200 if health.healthy else 503,
            text=json.dumps({"healthy": health.healthy, "detail": health.detail}) + "\n",
            content_type="application/json",
        )


def _write(metrics: Metrics, path: str) -> None:
    metrics.write_textfile(path)
