"""`harvester serve`: the nightly run every day at `schedule.daily_at`, with metrics between.

/metrics and /healthz stay up between runs; /healthz turns unhealthy when the last night
failed or was missed. SIGHUP re-reads the config for the next run (a bad one is logged and
the old one kept). SIGINT/SIGTERM stop as in `run`: the cli's supervisor sets `stop`.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from harvester import commands
from harvester.clock import Clock, wait_first
from harvester.clover.chunks import ExportType
from harvester.config import Config, load_config
from harvester.errors import ConfigError, HarvesterError
from harvester.harvest.planning import select
from harvester.logs import get_logger
from harvester.ops.health import Health
from harvester.ops.operation import Operation
from harvester.ops.schedule import (
    LastRun,
    next_run_at,
    night_health,
    read_last_run,
    write_last_run,
)
from harvester.pacing.gate import LONGEST_NAP_S

EXIT_FAILED = 1
EXIT_USAGE = 2


def last_run_path(config: Config) -> Path:
    """Where `serve` keeps its last run: beside the state store."""
    return config.state_path.with_name(config.state_path.name + ".last-run.json")


def required_daily_at(config: Config) -> None:
    if config.schedule.daily_at is None:
        raise ConfigError('schedule.daily_at: required by harvester serve (a UTC time, "00:30")')
    if config.load.after_run:
        from harvester.load import missing_extra, needs_extra

        missing = missing_extra()
        if missing is not None:
            raise ConfigError(f"load.after_run: {needs_extra(missing)}")


class Server:
    def __init__(
        self,
        config_path: Path,
        config: Config,
        clock: Clock,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        required_daily_at(config)
        self._path = config_path
        self._environ = environ  # None: the process environment, read again at each reload
        self.config = config
        self._clock = clock
        self._reload = asyncio.Event()
        self._last = read_last_run(last_run_path(config))
        self._running_since: datetime | None = None

    def request_reload(self) -> None:
        """Re-read the config before the next run (what SIGHUP does)."""
        self._reload.set()

    def health(self) -> Health:
        assert self.config.schedule.daily_at is not None
        return night_health(
            self._clock.now(), self.config.schedule.daily_at, self._last, self._running_since
        )

    async def run(self, stop: asyncio.Event) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            async with Operation(self.config, self._clock, health=self.health) as operation:
                await self._loop(stop, operation)
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
        return 0

    async def _loop(self, stop: asyncio.Event, operation: Operation) -> None:
        log = get_logger()
        while not stop.is_set():
            if self._reload.is_set():
                self._reload.clear()
                self._reconfigure(operation)
            daily_at = self.config.schedule.daily_at
            assert daily_at is not None
            now = self._clock.now()
            at = next_run_at(now, daily_at, self._last.started_at if self._last else None)
            wait_s = (at - now).total_seconds()
            if wait_s > 0:
                log.info("serve.waiting", next_run_at=_iso(at))
                while not (stop.is_set() or self._reload.is_set()) and self._clock.now() < at:
                    left_s = (at - self._clock.now()).total_seconds()
                    await wait_first(
                        self._clock.sleep(min(left_s, LONGEST_NAP_S)),
                        stop.wait(),
                        self._reload.wait(),
                    )
                continue
            await self._night(stop, operation)

    def _reconfigure(self, operation: Operation) -> None:
        log = get_logger()
        try:
            config = load_config(self._path, self._environ)
            required_daily_at(config)
        except ConfigError as exc:
            log.error("config.reload_failed", error=str(exc), kept=str(self._path))
            return
        self.config = config
        operation.reconfigure(config)
        log.info("config.reloaded", merchants=len(config.merchants))

    async def _night(self, stop: asyncio.Event, operation: Operation) -> None:
        log = get_logger()
        config = self.config
        started = self._clock.now()
        self._running_since = started
        log.info("serve.run_starting", at=_iso(started), merchants=len(config.merchants))
        await operation.started()
        code = EXIT_FAILED
        note = ""
        try:
            selections = select(config, [], [])
            commands.check_nightly_starts(config, selections)
            summary = await commands.nightly(
                config, selections, self._clock, stop, observer=operation.metrics
            )
            print(summary.render(), flush=True)
            code = summary.exit_code
            if config.load.after_run and not stop.is_set():
                load_code, note = await self._load(config, stop, operation)
                code = code or load_code
        except ConfigError as exc:
            log.error("serve.run_refused", error=str(exc))
            code = EXIT_USAGE
        except HarvesterError as exc:
            log.error("serve.run_failed", error=str(exc))
        finally:
            self._running_since = None
        await operation.finished(code, note)
        if stop.is_set():
            return  # stopped, not ended: the night is still owed at the next start-up
        self._last = LastRun(started, self._clock.now(), code)
        write_last_run(last_run_path(config), self._last)
        log.info("serve.run_ended", exit_code=code)

    async def _load(
        self, config: Config, stop: asyncio.Event, operation: Operation
    ) -> tuple[int, str]:
        """The load after the night's run: (its exit code, what failed). A failed load is
        reported (log, metrics, the health ping); the harvest stands."""
        log = get_logger()
        # dlt only for a config that asks for loads (required_load_extra has checked it is in).
        from harvester.load.command import load

        try:
            loaded = await load(config, stop)
        except HarvesterError as exc:  # a destination dlt does not know, say
            log.error("serve.load_failed", error=str(exc))
            operation.metrics.load_finished(False, {})
            return EXIT_FAILED, f"load failed: {exc}"
        print(loaded.render(), flush=True)
        rows = {export_type: loaded.rows_of(export_type) for export_type in ExportType}
        operation.metrics.load_finished(loaded.all_done, rows)
        if loaded.all_done:
            return 0, f"loaded {loaded.rows} rows"
        problems = list(loaded.problems)
        if loaded.chunks_failed:
            problems.append(
                f"{loaded.chunks_failed} chunks did not hold up (see load.chunk_failed)"
            )
        if loaded.stopped:
            problems.append("stopped")
        log.error("serve.load_failed", error="; ".join(problems))
        return EXIT_FAILED, "load failed: " + "; ".join(problems)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
