"""`harvester simulate`: the simulator's flags, and serving it until told to stop."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import TYPE_CHECKING

from harvester.clock import Clock
from harvester.simulator.choices import (
    DONE_STATUSES,
    EMPTY_EXPORTS,
    FILE_ENCODINGS,
    FILE_HOSTS,
    HEADER_CASES,
    MAX_OBJECTS_PER_FILE,
    PERMISSION_STATUSES,
    PROGRESS_COUNTS,
)
from harvester.simulator.faults import Faults

if TYPE_CHECKING:
    from harvester.simulator.app import Account, SimulatorSettings

MERCHANTS_ENV = "SIMULATOR_MERCHANTS"
_HOURS = re.compile(r"(\d\d):(\d\d)-(\d\d):(\d\d)")


@dataclass(frozen=True, slots=True)
class DailyWindow:
    """Open every day from `opens` until `closes`, UTC; a window past midnight wraps."""

    opens: time
    closes: time

    def __call__(self, now: datetime) -> bool:
        moment = now.astimezone(UTC).time()
        if self.opens < self.closes:
            return self.opens <= moment < self.closes
        return moment >= self.opens or moment < self.closes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address to listen on")
    parser.add_argument("--port", type=int, default=8099, help="the API port")
    parser.add_argument("--file-port", type=int, help="the file host's port (default: port + 1)")
    parser.add_argument("--seed", type=int, default=1, help="seed for the data and the faults")
    parser.add_argument(
        "--merchant",
        action="append",
        default=[],
        metavar="ID=TOKEN",
        help=f"a merchant with a static token (repeat; default: ${MERCHANTS_ENV}=ID=TOKEN,...)",
    )
    parser.add_argument(
        "--refresh-merchant",
        action="append",
        default=[],
        metavar="ID=CLIENT_ID:REFRESH_TOKEN",
        help="a merchant with expiring tokens and this first refresh token (repeat)",
    )
    parser.add_argument(
        "--no-permission",
        action="append",
        default=[],
        metavar="ID",
        help="this merchant's creates are refused: no export permission (repeat)",
    )
    parser.add_argument("--max-concurrent-exports", type=int, default=3)
    parser.add_argument("--data-from", default="2024-01-01", metavar="YYYY-MM-DD")
    parser.add_argument("--data-to", default="2024-07-01", metavar="YYYY-MM-DD")
    parser.add_argument("--objects-per-day", type=float, default=40.0)
    parser.add_argument("--objects-per-file", type=int, default=MAX_OBJECTS_PER_FILE)
    parser.add_argument(
        "--export-seconds", type=float, default=5.0, help="how long an export runs, at least"
    )
    parser.add_argument(
        "--export-seconds-per-object",
        type=float,
        default=0.001,
        help="and this much longer for each object it holds",
    )
    parser.add_argument("--file-ttl-s", type=float, default=86400.0)
    parser.add_argument(
        "--window-open-hours",
        metavar="HH:MM-HH:MM",
        help="the daily export window, UTC (default: always open)",
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND=PROBABILITY",
        help="inject a fault with this probability (repeat)",
    )
    parser.add_argument("--latency-s", type=float, default=0.0, help="each API response waits")
    # Clover's REST limits, enforced with 429s as Clover documents them (per token, per app).
    parser.add_argument("--token-requests-per-s", type=int, default=16, metavar="N")
    parser.add_argument("--token-concurrent", type=int, default=5, metavar="N")
    parser.add_argument(
        "--app-requests-per-s",
        type=int,
        default=50,
        metavar="N",
        help="requests of all tokens together in any sliding second (429 crossTokenLimit)",
    )
    parser.add_argument(
        "--app-concurrent",
        type=int,
        default=10,
        metavar="N",
        help="requests of all tokens in flight at once (429 crossTokenConcurrentLimit)",
    )
    # Clover's unknowns, each played one way or the other.
    parser.add_argument(
        "--file-encoding",
        choices=FILE_ENCODINGS,
        default="identity",
        help="how the file host encodes files, whatever the client asks for",
    )
    parser.add_argument(
        "--empty-exports",
        choices=EMPTY_EXPORTS,
        default="file",
        help='an export of a range without objects: one file of {"elements": []}, '
        "exportUrls.elements: [], or no exportUrls",
    )
    parser.add_argument(
        "--permission-status",
        type=int,
        choices=PERMISSION_STATUSES,
        default=403,
        help="the answer to a create without the export permission (--no-permission)",
    )
    parser.add_argument(
        "--header-case",
        choices=HEADER_CASES,
        default="canonical",
        help="response header names as usual, or all lower case (as over HTTP/2)",
    )
    parser.add_argument(
        "--file-host",
        choices=FILE_HOSTS,
        default="separate",
        help="file URLs on the file host's port, or on the API host itself",
    )
    parser.add_argument(
        "--done-status",
        choices=DONE_STATUSES,
        default="DONE",
        help="the status of a finished export (COMPLETE: Clover's 2016 name)",
    )
    parser.add_argument(
        "--progress-count",
        choices=PROGRESS_COUNTS,
        default="steady",
        help="percentComplete of a running export: the work done, always 0, or now and then lower",
    )


def settings_from_args(args: argparse.Namespace) -> tuple[SimulatorSettings, Faults]:
    """The simulator's settings and faults; ValueError naming the flag on bad input."""
    from harvester.simulator.app import SimulatorSettings  # the server, only to run it

    if not _is_loopback(args.host):
        raise ValueError(f"--host must be a loopback address, got {args.host!r}")
    data_start = _parse_date(args.data_from, "--data-from")
    data_end = _parse_date(args.data_to, "--data-to")
    checks = (
        (0 <= args.port <= 65535, "--port must be within 0..65535"),
        (args.file_port is None or 0 <= args.file_port <= 65535, "--file-port must be 0..65535"),
        (data_start < data_end, "--data-to must be after --data-from"),
        (args.max_concurrent_exports >= 1, "--max-concurrent-exports must be at least 1"),
        (args.objects_per_day >= 0, "--objects-per-day must not be negative"),
        (
            1 <= args.objects_per_file <= MAX_OBJECTS_PER_FILE,
            f"--objects-per-file must be within 1..{MAX_OBJECTS_PER_FILE}",
        ),
        (args.export_seconds >= 0, "--export-seconds must not be negative"),
        (
            args.export_seconds_per_object >= 0,
            "--export-seconds-per-object must not be negative",
        ),
        (args.file_ttl_s > 0, "--file-ttl-s must be positive"),
        (args.latency_s >= 0, "--latency-s must not be negative"),
        (args.token_requests_per_s >= 1, "--token-requests-per-s must be at least 1"),
        (args.token_concurrent >= 1, "--token-concurrent must be at least 1"),
        (args.app_requests_per_s >= 1, "--app-requests-per-s must be at least 1"),
        (args.app_concurrent >= 1, "--app-concurrent must be at least 1"),
    )
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    settings = SimulatorSettings(
        accounts=_accounts(args),
        seed=args.seed,
        data_start=data_start,
        data_end=data_end,
        objects_per_day=args.objects_per_day,
        objects_per_file=args.objects_per_file,
        max_concurrent_exports=args.max_concurrent_exports,
        export_base_s=args.export_seconds,
        export_per_object_s=args.export_seconds_per_object,
        file_ttl_s=args.file_ttl_s,
        api_latency_s=args.latency_s,
        token_requests_per_s=args.token_requests_per_s,
        token_concurrent=args.token_concurrent,
        app_requests_per_s=args.app_requests_per_s,
        app_concurrent=args.app_concurrent,
        file_encoding=args.file_encoding,
        empty_exports=args.empty_exports,
        permission_status=args.permission_status,
        header_case=args.header_case,
        file_host=args.file_host,
        done_status=args.done_status,
        progress_count=args.progress_count,
    )
    if args.window_open_hours is not None:
        window = _parse_window(args.window_open_hours)
        settings.window = window
        settings.window_hours_text = f"{window.opens:%H:%M} and {window.closes:%H:%M}"
    return settings, _faults(args.fault)


async def serve(
    settings: SimulatorSettings,
    faults: Faults,
    host: str,
    api_port: int,
    file_port: int | None,
    stop: asyncio.Event,
    clock: Clock,
) -> None:
    """Serve until `stop` is set; print where, in one line, once listening.

    Without a file port the file host takes the port after the API's (any free one if
    the API's is 0).
    """
    from harvester.simulator.app import Simulator

    if file_port is None:
        file_port = api_port + 1 if api_port else 0
    simulator = Simulator(settings, clock, faults)
    await simulator.start(host, api_port, file_port)
    try:
        print(f"simulator: api {simulator.api_url} files {simulator.file_url}", flush=True)
        await stop.wait()
    finally:
        await simulator.stop()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_date(text: str, flag: str) -> datetime:
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{flag} expects YYYY-MM-DD, got {text!r}") from None
    return datetime.combine(day, time(), UTC)


def _parse_window(text: str) -> DailyWindow:
    match = _HOURS.fullmatch(text)
    try:
        if match is None:
            raise ValueError
        open_hour, open_minute, close_hour, close_minute = map(int, match.groups())
        window = DailyWindow(time(open_hour, open_minute), time(close_hour, close_minute))
    except ValueError:
        raise ValueError(f"--window-open-hours expects HH:MM-HH:MM, got {text!r}") from None
    if window.opens == window.closes:
        raise ValueError("--window-open-hours must not open and close at the same time")
    return window


def _accounts(args: argparse.Namespace) -> dict[str, Account]:
    from harvester.simulator.app import Account

    # The messages never repeat the value: it holds a token.
    accounts: dict[str, Account] = {}
    static = args.merchant
    source = "--merchant"
    if not static:
        static = [item for item in os.environ.get(MERCHANTS_ENV, "").split(",") if item.strip()]
        source = MERCHANTS_ENV
    for item in static:
        merchant_id, _, token = (part.strip() for part in item.partition("="))
        if not merchant_id or not token:
            raise ValueError(f"{source} expects ID=TOKEN")
        if merchant_id in accounts:
            raise ValueError(f"{source} names merchant {merchant_id} twice")
        accounts[merchant_id] = Account(token=token)
    for item in args.refresh_merchant:
        merchant_id, _, grant = item.partition("=")
        client_id, _, refresh_token = grant.partition(":")
        if not merchant_id or not client_id or not refresh_token:
            raise ValueError("--refresh-merchant expects ID=CLIENT_ID:REFRESH_TOKEN")
        account = accounts.setdefault(merchant_id, Account())
        if account.refresh_token is not None:
            raise ValueError(f"--refresh-merchant names merchant {merchant_id} twice")
        account.refresh_token, account.client_id = refresh_token, client_id
    if not accounts:
        raise ValueError(
            f"no merchants: give --merchant or --refresh-merchant, or set {MERCHANTS_ENV}"
        )
    for merchant_id in args.no_permission:
        if merchant_id not in accounts:
            raise ValueError(f"--no-permission names an unknown merchant {merchant_id!r}")
        accounts[merchant_id].export_permission = False
    return accounts


def _faults(items: list[str]) -> Faults:
    faults = Faults()
    for item in items:
        kind, _, probability = item.partition("=")
        try:
            faults.set_probability(kind, float(probability))
        except ValueError as exc:
            raise ValueError(f"--fault {item!r}: {exc}") from None
    return faults
