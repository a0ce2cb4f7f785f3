"""The command line: parse words, load the config, run a command, map the outcome to an exit code.

Exit codes: 0 all requested work done; 1 it ran but some work failed; 2 usage or
configuration error (found before anything is created or written); 130 / 143 stopped by
SIGINT / SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TextIO

from harvester import commands
from harvester.clock import Clock, SystemClock
from harvester.clover.chunks import ExportType, TimeRange, parse_instant
from harvester.config import Config, load_config
from harvester.errors import ConfigError, HarvesterError, StoreError
from harvester.harvest.estimate import estimate_as_json, render_estimate
from harvester.harvest.observer import Observers, RunObserver
from harvester.harvest.planning import Selection, select
from harvester.harvest.summary import Summary
from harvester.logs import configure_logging, get_logger
from harvester.ops.status import build_status, render_status, status_as_json
from harvester.scrub import register_secret
from harvester.simulator import command as simulator_command
from harvester.state.backends import read_state, state_name

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"harvester: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        default="auto",
        help="JSON lines, console lines, or auto: console on a terminal, JSON elsewhere",
    )
    common.add_argument("--log-level", choices=("debug", "info", "warning", "error"))

    with_config = _Parser(add_help=False, parents=[common])
    with_config.add_argument("--config", required=True, type=Path, help="the YAML config file")

    selecting = _Parser(add_help=False, parents=[with_config])
    selecting.add_argument(
        "--merchant", action="append", default=[], metavar="ID", help="only this merchant (repeat)"
    )
    selecting.add_argument(
        "--type",
        action="append",
        default=[],
        type=str.upper,
        choices=[str(t) for t in ExportType],
        help="only this type (repeat)",
    )

    selecting.add_argument(
        "--no-live",
        action="store_true",
        help="no live progress view, even on a terminal (off a terminal there is none)",
    )

    ranged = _Parser(add_help=False, parents=[selecting])
    ranged.add_argument(
        "--from",
        dest="start",
        required=True,
        metavar="DATE",
        help="YYYY-MM-DD (midnight UTC) or an ISO-8601 instant with offset",
    )
    ranged.add_argument(
        "--to", dest="end", required=True, metavar="DATE", help="exclusive; same forms as --from"
    )

    parser = _Parser(
        prog="harvester",
        description="Harvest Clover orders and payments through the bulk Export API.",
    )
    words = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    words.add_parser("backfill", parents=[ranged], help="harvest a date range")
    plan = words.add_parser("plan", parents=[ranged], help="print the exports backfill would make")
    plan.add_argument("--json", action="store_true", help="print JSON")
    words.add_parser("run", parents=[selecting], help="the nightly job: up to today, then lookback")
    words.add_parser(
        "serve", parents=[with_config], help="run `run` every day at schedule.daily_at, for good"
    )
    status = words.add_parser("status", parents=[with_config], help="what the state store says")
    status.add_argument("--json", action="store_true", help="print JSON")
    words.add_parser("check-config", parents=[with_config], help="validate the config and exit")
    load = words.add_parser(
        "load",
        parents=[with_config],
        help="load the published chunks into tables (DuckDB, PostgreSQL, ...; needs the "
        "load extra)",
    )
    load.add_argument(
        "--no-live",
        action="store_true",
        help="no live progress view, even on a terminal (off a terminal there is none)",
    )
    migrate = words.add_parser(
        "migrate-state",
        parents=[common],
        help="copy a SQLite state into an empty PostgreSQL database",
    )
    migrate.add_argument(
        "--from-path", required=True, type=Path, metavar="F", help="the SQLite state file"
    )
    migrate.add_argument(
        "--to-url",
        required=True,
        metavar="U",
        help="postgresql://USER@HOST:PORT/DB; ${VAR} is read from the environment "
        "(or give the password in PGPASSWORD)",
    )
    simulate = words.add_parser("simulate", parents=[common], help="run the built-in simulator")
    simulator_command.add_arguments(simulate)
    return parser


def main(argv: Sequence[str] | None = None, clock: Clock | None = None) -> int:
    args = build_parser().parse_args(argv)
    clock = clock or SystemClock()
    try:
        if args.command == "simulate":
            configure_logging(args.log_format, args.log_level or "info")
            return _simulate(args, clock)
        if args.command == "migrate-state":
            configure_logging(args.log_format, args.log_level or "info")
            return _migrate_state(args, clock)
        config = load_config(args.config)
        _register_tokens(config)
        level = args.log_level or config.log_level
        configure_logging(args.log_format, level)

        def relog(stream: TextIO, drawing: bool) -> None:
            configure_logging(args.log_format, level, stream=stream, drawing=drawing)

        live = None if getattr(args, "no_live", True) else relog
        if args.command == "check-config":
            print(f"{args.config}: ok ({len(config.merchants)} merchants)")
            return EXIT_OK
        if args.command == "status":
            return _status(config, clock, as_json=args.json)
        if args.command == "load":
            return _load(config, clock, live)
        if args.command == "serve":
            from harvester.ops.serve import Server

            server = Server(args.config, config, clock)
            return asyncio.run(_run_until_signal(server.run, config.timing.shutdown_grace_s, clock))
        selections = select(config, args.merchant, [ExportType(t) for t in args.type])
        if args.command == "run":
            commands.check_nightly_starts(config, selections)
            return _supervise(
                lambda stop, observer: commands.nightly(
                    config, selections, clock, stop, observer=observer
                ),
                config,
                clock,
                live,
            )
        requested = _requested(args)
        if args.command == "plan":
            return _plan(config, selections, requested, as_json=args.json)
        return _supervise(
            lambda stop, observer: commands.backfill(
                config, selections, requested, clock, stop, observer=observer
            ),
            config,
            clock,
            live,
        )
    except ConfigError as exc:
        print(f"harvester: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except HarvesterError as exc:
        print(f"harvester: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _load(config: Config, clock: Clock, live: Callable[[TextIO, bool], None] | None) -> int:
    from harvester.load import missing_extra, needs_extra

    missing = missing_extra()
    if missing is not None:
        raise ConfigError(f"harvester load {needs_extra(missing)}")
    # dlt comes in here only: no other command pays for it.
    from harvester.load.command import load, new_summary

    async def drawn(stop: asyncio.Event) -> int:
        """The load, drawn on a terminal (unless `live` is None; it points the logs at a
        stream), then its summary on stdout."""
        summary = new_summary(config)
        async with contextlib.AsyncExitStack() as view:
            if live is not None and sys.stderr.isatty():
                from harvester.ops.live import live_progress  # rich only on a terminal
                from harvester.ops.load_view import LoadView

                await view.enter_async_context(
                    live_progress(LoadView(summary, clock), sys.stderr, live)
                )
            await load(config, stop, summary)
        print(summary.render(), flush=True)
        return summary.exit_code

    return asyncio.run(_run_until_signal(drawn, config.timing.shutdown_grace_s, clock))


def _register_tokens(config: Config) -> None:
    """Every configured token is scrubbed from server answers and logs from the start."""
    for merchant in config.merchants:
        for secret in (merchant.token, merchant.refresh_token):
            if secret is not None:
                register_secret(secret.reveal())


def _requested(args: argparse.Namespace) -> TimeRange:
    start = parse_instant(args.start, "--from")
    end = parse_instant(args.end, "--to")
    if start >= end:
        raise ConfigError(f"--from ({args.start}) must be before --to ({args.end})")
    return TimeRange(start, end)


def _plan(
    config: Config, selections: Sequence[Selection], requested: TimeRange, *, as_json: bool
) -> int:
    planned = commands.plan_backfill(config, selections, requested)
    found = commands.plan_estimate(config, planned)
    if as_json:
        document = {
            "exports": [
                {
                    "merchant": chunk.merchant_id,
                    "type": str(chunk.type),
                    "range": chunk.range.name,
                    "start": chunk.range.start.isoformat().replace("+00:00", "Z"),
                    "end": chunk.range.end.isoformat().replace("+00:00", "Z"),
                    "resume": chunk.resume,
                }
                for chunk in planned
            ],
            "estimate": estimate_as_json(found),
        }
        _print_to_reader(json.dumps(document, indent=2))
        return EXIT_OK
    lines = []
    for chunk in planned:
        note = "  (resume)" if chunk.resume else ""
        lines.append(f"{chunk.merchant_id}  {chunk.type}  {chunk.range}{note}")
    lines.append(f"{len(planned)} exports")
    lines += render_estimate(found)
    _print_to_reader("\n".join(lines))
    return EXIT_OK


def _migrate_state(args: argparse.Namespace, clock: Clock) -> int:
    if not args.from_path.is_file():
        raise ConfigError(f"--from-path: {args.from_path}: no such file")
    url = commands.state_url_argument(args.to_url, os.environ)
    counts = asyncio.run(commands.migrate_state(args.from_path, url, clock))
    from harvester.state.postgres import safe_url  # loaded by the migration already

    copied = ", ".join(f"{n} {table}" for table, n in counts.items())
    print(f"{args.from_path} -> {safe_url(url)}: copied {copied}")
    return EXIT_OK


def _status(config: Config, clock: Clock, *, as_json: bool) -> int:
    snapshot = read_state(config, clock.now())
    if snapshot is None:
        raise StoreError(f"state store {state_name(config)}: no such file")
    rows = build_status(config, snapshot)
    if as_json:
        _print_to_reader(json.dumps(status_as_json(rows), indent=2))
    else:
        _print_to_reader(render_status(rows))
    return EXIT_OK


def _print_to_reader(text: str) -> None:
    """Print, and stop quietly if the reader went away (`harvester plan ... | head`)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # Whatever is still buffered would fail again when Python flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _supervise(
    work: Callable[[asyncio.Event, RunObserver], Awaitable[Summary]],
    config: Config,
    clock: Clock,
    live: Callable[[TextIO, bool], None] | None = None,
) -> int:
    return asyncio.run(_operated(work, config, clock, live))


async def _operated(
    work: Callable[[asyncio.Event, RunObserver], Awaitable[Summary]],
    config: Config,
    clock: Clock,
    live: Callable[[TextIO, bool], None] | None,
) -> int:
    """One run with its metrics exported and served, its health pings, and on a terminal
    (unless `live` is None) the live view; `live` points the logs at a stream. The run's
    summary goes to stdout last, below the view's last frame."""
    from harvester.ops.operation import Operation  # aiohttp, and prometheus-client with metrics

    summaries: list[Summary] = []

    async def reported(stop: asyncio.Event, observer: RunObserver) -> int:
        summary = await work(stop, observer)
        summaries.append(summary)
        return summary.exit_code

    try:
        async with Operation(config, clock) as operation, contextlib.AsyncExitStack() as view:
            observer: RunObserver = operation.metrics
            if live is not None and sys.stderr.isatty():
                from harvester.ops.live import LiveView, live_progress  # rich only on a terminal

                shown = LiveView(clock)
                observer = Observers([operation.metrics, shown])
                await view.enter_async_context(live_progress(shown, sys.stderr, live))
            await operation.started()
            code = EXIT_FAILED
            try:
                code = await _run_until_signal(
                    lambda stop: reported(stop, observer), config.timing.shutdown_grace_s, clock
                )
            finally:
                await view.aclose()
                await operation.finished(code)
            return code
    finally:
        for summary in summaries:
            print(summary.render(), flush=True)


async def _run_until_signal(
    work: Callable[[asyncio.Event], Awaitable[int]], grace_s: float, clock: Clock
) -> int:
    """Run `work`; on SIGINT/SIGTERM ask it to stop, give it `grace_s`, then cancel it."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[int] = []
    task = asyncio.ensure_future(work(stop))

    def on_signal(signum: int) -> None:
        received.append(signum)
        if len(received) == 1:
            get_logger().warning(
                "run.stopping", signal=signal.Signals(signum).name, grace_s=grace_s
            )
            stop.set()
        else:
            task.cancel()  # a second signal: stop now

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait((task, stopper), return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not task.done():
            grace = asyncio.ensure_future(clock.sleep(grace_s))
            await asyncio.wait((task, grace), return_when=asyncio.FIRST_COMPLETED)
            grace.cancel()
            if not task.done():
                get_logger().warning("run.abandoned", reason="shutdown grace ran out")
                task.cancel()
        try:
            code = await task
        except asyncio.CancelledError:
            code = EXIT_FAILED
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return 128 + received[0] if received else code


def _simulate(args: argparse.Namespace, clock: Clock) -> int:
    try:
        settings, faults = simulator_command.settings_from_args(args)
    except ValueError as exc:
        print(f"harvester simulate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    async def serve(stop: asyncio.Event) -> int:
        await simulator_command.serve(
            settings, faults, args.host, args.port, args.file_port, stop, clock
        )
        return EXIT_OK

    return asyncio.run(_run_until_signal(serve, 5.0, clock))
