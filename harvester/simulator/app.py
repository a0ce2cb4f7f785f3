"""The fake Clover: the Export API and a separate file host on loopback.

Where Clover's behaviour is unknown (or shown only by its docs and samples), a setting
picks the way it is played (see SimulatorSettings): how files are encoded, what an empty
export returns, which status a missing export permission gets, the case of header names,
which host serves the files, the name of the DONE status, and what percentComplete counts.
Requests as Clover's Python sample sends them (a trailing slash on `/exports/`,
`?access_token=`, times as strings) are always accepted.

All time comes from the injected Clock and every state is computed from `clock.now()`
when a request arrives, so a test with a FakeClock sees the same thing every run. All
randomness comes from `random.Random`s seeded from the settings: one for faults and
fates, one for ids and tokens, and one per merchant and type for the objects (data.py).
"""

from __future__ import annotations

import gzip
import json
import math
import random
import uuid
import zlib
from collections import Counter, defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from email.utils import formatdate
from enum import StrEnum
from types import TracebackType
from typing import Any

from aiohttp import web

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
from harvester.simulator.data import (
    FILTER_FIELDS,
    TYPES,
    Dataset,
    Object,
    Staff,
    epoch_ms,
    make_object,
    random_id,
)
from harvester.simulator.faults import API_FAULTS, EXPORT_FATES, FILE_FAULTS, FaultKind, Faults

WINDOW_BODIES = ("hours", "bare")
BUSY_MESSAGE = "Too many concurrent exports, please retry later"
# A 429's header names the limit broken: per token first, then for the whole app.
RATE_HEADER = "X-RateLimit-tokenLimit"
CONCURRENT_HEADER = "X-RateLimit-tokenConcurrentLimit"
APP_RATE_HEADER = "X-RateLimit-crossTokenLimit"
APP_CONCURRENT_HEADER = "X-RateLimit-crossTokenConcurrentLimit"
RATE_LIMIT_HEADERS = (RATE_HEADER, CONCURRENT_HEADER, APP_RATE_HEADER, APP_CONCURRENT_HEADER)
_DAY_MS = 86_400_000
# Fates that strike partway through the work, and those of them that end FAILED.
_PARTWAY_FATES = (FaultKind.EXPORT_FAILED, FaultKind.EXPORT_STUCK, FaultKind.EXPORT_FORGOTTEN)
_FAILING_FATES = (FaultKind.EXPORT_FAILED, FaultKind.EXPORT_STUCK)
_SLOW_FILE_PIECES = 4
# What a proxy in front of the file host might send instead of JSON.
_GARBAGE = b"<html><body><h1>502 Bad Gateway</h1></body></html>\n"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class Account:
    """How one merchant authenticates, and whether the app may export its data."""

    token: str | None = field(default=None, repr=False)  # static bearer token
    refresh_token: str | None = field(default=None, repr=False)  # for expiring-token merchants
    client_id: str | None = None  # required with refresh_token
    export_permission: bool = True  # False: creating an export answers permission_status

    def __post_init__(self) -> None:
        if self.refresh_token is not None and self.client_id is None:
            raise ValueError("an account with a refresh_token needs a client_id")


@dataclass(slots=True, kw_only=True)
class SimulatorSettings:
    accounts: dict[str, Account]  # merchant id -> account
    seed: int = 1
    data_start: datetime  # objects exist with createdTime in [data_start, data_end)
    data_end: datetime
    objects_per_day: float = 40.0  # per merchant and type, on average
    objects_per_file: int = 1000
    max_concurrent_exports: int = 3  # server-wide; a create beyond it answers 503 busy
    max_range_days: int = 30
    pending_s: float = 1.0  # PENDING this long, then IN_PROGRESS
    export_base_s: float = 5.0  # IN_PROGRESS lasts base + per_object * objects
    export_per_object_s: float = 0.001
    file_ttl_s: float = 86400.0  # availableUntil = done time + ttl
    expired_status: int = 403  # what the file host answers after availableUntil
    filter_field: str = "createdTime"  # or "modifiedTime": which timestamp the range filters on
    window: Callable[[datetime], bool] | None = None  # is the export window open; None: always
    window_body: str = "hours"  # the 503 outside the window: "hours" (JSON message) or "bare"
    window_hours_text: str = "10:00 and 15:00"
    token_requests_per_s: int = 16
    token_concurrent: int = 5
    app_requests_per_s: int = 50
    app_concurrent: int = 10
    api_latency_s: float = 0.0  # each API response waits this long, so requests overlap
    access_token_ttl_s: float = 3600.0
    refresh_token_ttl_s: float = 86400.0 * 30
    stuck_fail_after_s: float = 3600.0  # a stuck export turns FAILED this long after it stalls
    retry_after_s: float = 1.0  # the Retry-After of a 429 for too many requests in flight
    # Each object in a file gets a "padding" field this many characters long: bigger files
    # with the same objects, for the memory benchmark. 0: objects as generated.
    object_padding_bytes: int = 0
    # The unknowns, each played one way or another (see the module docstring).
    file_encoding: str = "identity"  # one of FILE_ENCODINGS
    empty_exports: str = "file"  # one of EMPTY_EXPORTS
    permission_status: int = 403  # one of PERMISSION_STATUSES
    header_case: str = "canonical"  # one of HEADER_CASES
    file_host: str = "separate"  # one of FILE_HOSTS
    done_status: str = "DONE"  # one of DONE_STATUSES
    progress_count: str = "steady"  # one of PROGRESS_COUNTS

    def __post_init__(self) -> None:
        if self.data_start.tzinfo is None or self.data_end.tzinfo is None:
            raise ValueError("data_start and data_end must be timezone-aware")
        if not 1 <= self.objects_per_file <= MAX_OBJECTS_PER_FILE:
            raise ValueError(f"objects_per_file must be within 1..{MAX_OBJECTS_PER_FILE}")
        if self.window_body not in WINDOW_BODIES:
            raise ValueError(f"window_body must be one of {WINDOW_BODIES}")
        if self.filter_field not in FILTER_FIELDS:
            raise ValueError(f"filter_field must be one of {FILTER_FIELDS}")
        if self.object_padding_bytes < 0:
            raise ValueError("object_padding_bytes must not be negative")
        for name, choices in (
            ("file_encoding", FILE_ENCODINGS),
            ("empty_exports", EMPTY_EXPORTS),
            ("permission_status", PERMISSION_STATUSES),
            ("header_case", HEADER_CASES),
            ("file_host", FILE_HOSTS),
            ("done_status", DONE_STATUSES),
            ("progress_count", PROGRESS_COUNTS),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")


@dataclass(slots=True)
class SimulatorStats:
    """What the simulator saw and did; read it through `Simulator.stats` to get it current."""

    exports_created: int = 0
    exports_by_final_state: Counter[str] = field(default_factory=Counter)  # DONE/FAILED/FORGOTTEN
    max_running: int = 0  # the most exports running at once, counting each new one
    running_seconds: float = 0.0  # the integral over time of the number of running exports
    first_create_at: datetime | None = None
    last_done_at: datetime | None = None  # the last time an export stopped running
    busy_503s: int = 0  # injected ones included, as for every outcome counter
    # When each busy 503 was answered, and each ended export's (id, created, ended), instants
    # in epoch seconds, in the order seen: how busy the slots were, moment by moment.
    busy_503_times: list[float] = field(default_factory=list)
    export_spans: list[tuple[str, float, float]] = field(default_factory=list)
    window_503s: int = 0
    rate_limited: Counter[str] = field(default_factory=Counter)  # by header name
    max_requests_in_a_second: int = 0  # the most API requests of any sliding second, refused too
    requests: Counter[str] = field(default_factory=Counter)  # create/poll/refresh/file
    file_downloads: int = 0  # files served whole and intact
    file_auth_headers: int = 0  # file-host requests that carried an Authorization header
    refreshes: int = 0
    refresh_reuse: int = 0  # used refresh tokens presented again
    bad_tokens: int = 0  # 401s for a token not accepted
    permission_denied: int = 0  # creates refused for want of the export permission
    sample_requests: Counter[str] = field(default_factory=Counter)  # trailing_slash, ...
    faults_injected: Counter[str] = field(default_factory=Counter)  # by fault kind

    def as_dict(self) -> dict[str, Any]:
        """The stats as JSON-able values: instants in ISO 8601, counters as plain dicts."""
        result: dict[str, Any] = {}
        for stat in fields(self):
            value = getattr(self, stat.name)
            if isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, Counter):
                value = dict(sorted(value.items()))
            result[stat.name] = value
        return result


class ExportStatus(StrEnum):
    PENDING = "PENDING"
    IN_PROGRESS = "IN_PROGRESS"
    DONE = "DONE"
    FAILED = "FAILED"


def _shown_percent(percent: int, now_s: float, count: str) -> int:
    """What percentComplete a running export shows, as `count` (PROGRESS_COUNTS) plays it."""
    if count == "none":
        return 0
    if count == "jumpy" and math.floor(now_s) % 3 == 0:
        return max(0, percent - 7)
    return percent


@dataclass(slots=True)
class _Export:
    id: str
    merchant_id: str
    type: str
    start_ms: int
    end_ms: int
    created_s: float
    in_progress_s: float  # PENDING before this
    work_s: float  # how long IN_PROGRESS lasts when nothing goes wrong
    stops_s: float  # progress stops rising: done, or where a fault strikes
    ends_s: float  # the export stops running and shows its final state
    fate: FaultKind | None  # the fault that decides how it ends, if any
    file_key: str  # the unguessable part of its file URLs
    available_until_ms: int
    files: list[bytes] | None = None  # the snapshot at ends_s, taken when first needed

    @property
    def final_state(self) -> str:
        """How it ended, for the stats: a final status, or FORGOTTEN."""
        state = self.status_at(self.ends_s)
        return "FORGOTTEN" if state is None else state[0].value

    def status_at(self, now_s: float) -> tuple[ExportStatus, int, float] | None:
        """Status, percent and the instant of its last change; None once forgotten."""
        if now_s < self.in_progress_s:
            return ExportStatus.PENDING, 0, self.created_s
        percent = 0
        if self.work_s > 0:
            done = (min(now_s, self.stops_s) - self.in_progress_s) / self.work_s
            percent = min(99, math.floor(100 * done))
        if now_s < self.ends_s:
            return ExportStatus.IN_PROGRESS, percent, min(now_s, self.stops_s)
        if self.fate is FaultKind.EXPORT_FORGOTTEN:
            return None
        if self.fate in _FAILING_FATES:
            return ExportStatus.FAILED, percent, self.ends_s
        return ExportStatus.DONE, 100, self.ends_s


@dataclass(slots=True)
class _Grant:
    """An issued access or refresh token."""

    merchant_id: str
    expires_s: float
    client_id: str | None = None
    used: bool = False


def parse_export_request(body: object, max_range_days: int) -> tuple[str, int, int]:
    """Type, startTime and endTime of a create request; ValueError with Clover's message."""
    if not isinstance(body, dict):
        raise ValueError("The request body must be a JSON object")
    export_type = body.get("type")
    if export_type not in TYPES:
        raise ValueError(f"Invalid export type, expected one of {', '.join(TYPES)}")
    start_ms = _epoch_ms(body.get("startTime"), "startTime")
    end_ms = _epoch_ms(body.get("endTime"), "endTime")
    if end_ms < start_ms:
        raise ValueError("endTime must not be before startTime")
    if end_ms - start_ms > max_range_days * _DAY_MS:
        raise ValueError(f"The time range of an export cannot exceed {max_range_days} days")
    return export_type, start_ms, end_ms


def _epoch_ms(value: object, name: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    raise ValueError(f"{name} must be epoch milliseconds")


def _bearer(request: web.Request) -> str | None:
    """The access token: the Bearer header, or `?access_token=` as Clover's sample sends it."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    in_query = request.query.get("access_token", "").strip()
    return in_query or None


def _message(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"message": message}, status=status, headers=headers)


def _drop_connection(request: web.Request) -> web.Response:
    """Close the socket without answering; the returned response is never written."""
    request.protocol.force_close()
    return web.Response()


class Simulator:
    """Clover's Export API on one port and its file host on another, both on loopback."""

    def __init__(
        self, settings: SimulatorSettings, clock: Clock, faults: Faults | None = None
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.faults = faults if faults is not None else Faults()
        self._stats = SimulatorStats()
        self._rng = random.Random(settings.seed)
        # Ids and tokens also depend on the start instant: like Clover's, they never repeat
        # when a simulator is restarted under a harvester that still remembers the old ones.
        self._ids = random.Random(f"{settings.seed}/{clock.now().isoformat()}")
        self._data = Dataset(
            settings.seed,
            settings.data_start,
            settings.data_end,
            settings.objects_per_day,
            settings.filter_field,
        )
        self._exports: dict[str, _Export] = {}
        self._exports_by_file_key: dict[str, _Export] = {}
        self._running: list[_Export] = []  # not yet seen to have ended
        self._ended_running_s = 0.0
        self._access_grants: dict[str, _Grant] = {}
        self._refresh_grants: dict[str, _Grant] = {}
        now_s = self._now_s()
        for merchant_id, account in settings.accounts.items():
            if account.refresh_token is not None:
                self._refresh_grants[account.refresh_token] = _Grant(
                    merchant_id, now_s + settings.refresh_token_ttl_s, account.client_id
                )
        self._token_requests: defaultdict[str, deque[float]] = defaultdict(deque)
        self._app_requests: deque[float] = deque()
        self._token_in_flight: Counter[str] = Counter()
        self._app_in_flight = 0
        self._limits = {
            RATE_HEADER: settings.token_requests_per_s,
            CONCURRENT_HEADER: settings.token_concurrent,
            APP_RATE_HEADER: settings.app_requests_per_s,
            APP_CONCURRENT_HEADER: settings.app_concurrent,
        }
        self._runners: list[web.AppRunner] = []
        self._api_url: str | None = None
        self._file_url: str | None = None

    # -- lifecycle --------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", api_port: int = 0, file_port: int = 0) -> None:
        api = web.Application()
        create = self._api("create", self._create_export)
        api.router.add_post("/v3/merchants/{merchant_id}/exports", create)
        # Clover's Python sample POSTs with a trailing slash, and Clover takes it.
        api.router.add_post("/v3/merchants/{merchant_id}/exports/", create)
        api.router.add_get(
            "/v3/merchants/{merchant_id}/exports/{export_id}", self._api("poll", self._get_export)
        )
        api.router.add_get("/v3/merchants/{merchant_id}", self._api("merchant", self._merchant))
        api.router.add_post("/oauth/v2/refresh", self._api("refresh", self._refresh))
        api.router.add_get("/_simulator/stats", self._serve_stats)
        files = web.Application()
        for app in (api, files):
            # Both hosts serve files; `file_host` decides which one the URLs name.
            app.router.add_get(
                r"/exports/{file_key}/{export_id}-{index:\d+}.json", self._serve_file
            )
            app.on_response_prepare.append(self._set_header_case)
        try:
            self._api_url = await self._listen(api, host, api_port)
            self._file_url = await self._listen(files, host, file_port)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        while self._runners:
            await self._runners.pop().cleanup()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _listen(self, app: web.Application, host: str, port: int) -> str:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        self._runners.append(runner)
        await web.TCPSite(runner, host, port).start()
        bound_port = runner.addresses[0][1]
        return f"http://[{host}]:{bound_port}" if ":" in host else f"http://{host}:{bound_port}"

    @property
    def api_url(self) -> str:
        if self._api_url is None:
            raise RuntimeError("the simulator has not been started")
        return self._api_url

    @property
    def file_url(self) -> str:
        if self._file_url is None:
            raise RuntimeError("the simulator has not been started")
        return self._file_url

    @property
    def file_base_url(self) -> str:
        """Where the file URLs handed out point: the file host, or the API host itself."""
        return self.api_url if self.settings.file_host == "api" else self.file_url

    async def _set_header_case(self, request: web.Request, response: web.StreamResponse) -> None:
        """With header_case "lower", every name goes out lower-case, as over HTTP/2."""
        if self.settings.header_case != "lower":
            return
        items = list(response.headers.items())
        response.headers.clear()
        for name, value in items:
            response.headers.add(name.lower(), value)
        # Added after this hook unless present: present them lower-case already.
        response.headers.setdefault("date", formatdate(usegmt=True))
        response.headers.setdefault("server", "clover-simulator")

    # -- inspection, for tests and the demo ---------------------------------------------

    @property
    def stats(self) -> SimulatorStats:
        self._settle(self._now_s())
        return self._stats

    def objects(self, merchant_id: str, type: str, start_ms: int, end_ms: int) -> list[Object]:
        """Current versions of the objects whose filter field is in [start_ms, end_ms]."""
        return self._data.objects(merchant_id, type, start_ms, end_ms, self._now_ms())

    def all_objects(self, merchant_id: str, type: str) -> list[Object]:
        return self._data.all_objects(merchant_id, type, self._now_ms())

    def edit(self, merchant_id: str, type: str, object_id: str) -> Object:
        """Change an object's amount now (a refund, an edit) and return the new version."""
        return self._data.edit(merchant_id, type, object_id, self._now_ms())

    def grant_access_token(self, merchant_id: str, token: str, expires_at: datetime) -> None:
        """Clover issued `token` for the merchant to the app, by a flow of the app's own (its
        OAuth, its refresh): accepted until `expires_at`, then answered 401."""
        self._access_grants[token] = _Grant(merchant_id, expires_at.timestamp())

    def revoke_access_tokens(self, merchant_id: str) -> None:
        """Clover stops accepting the merchant's issued access tokens, expired or not (an app
        reinstalled, say); its refresh tokens stay valid."""
        for grant in self._access_grants.values():
            if grant.merchant_id == merchant_id:
                grant.expires_s = -math.inf

    def running_exports(self) -> int:
        self._settle(self._now_s())
        return len(self._running)

    # -- time and export bookkeeping ----------------------------------------------------

    def _now_s(self) -> float:
        return self.clock.now().timestamp()

    def _now_ms(self) -> int:
        return epoch_ms(self.clock.now())

    def _settle(self, now_s: float) -> None:
        """Record the exports that have ended by now; bring running_seconds up to now."""
        still_running = []
        for export in self._running:
            if export.ends_s > now_s:
                still_running.append(export)
                continue
            self._ended_running_s += export.ends_s - export.created_s
            self._stats.export_spans.append((export.id, export.created_s, export.ends_s))
            self._stats.exports_by_final_state[export.final_state] += 1
            ended_at = datetime.fromtimestamp(export.ends_s, UTC)
            if self._stats.last_done_at is None or ended_at > self._stats.last_done_at:
                self._stats.last_done_at = ended_at
        self._running = still_running
        self._stats.running_seconds = self._ended_running_s + sum(
            now_s - export.created_s for export in still_running
        )

    def _new_export(
        self, merchant_id: str, export_type: str, start_ms: int, end_ms: int, now_s: float
    ) -> _Export:
        settings = self.settings
        count = len(self._data.objects(merchant_id, export_type, start_ms, end_ms, self._now_ms()))
        work_s = settings.export_base_s + settings.export_per_object_s * count
        fate = self._inject(EXPORT_FATES)
        in_progress_s = now_s + settings.pending_s
        stops_s = in_progress_s + work_s
        if fate in _PARTWAY_FATES:
            stops_s = in_progress_s + work_s * self._rng.uniform(0.2, 0.8)
        ends_s = stops_s + (settings.stuck_fail_after_s if fate is FaultKind.EXPORT_STUCK else 0)
        export_id = random_id(self._ids)
        while export_id in self._exports:
            export_id = random_id(self._ids)
        export = _Export(
            id=export_id,
            merchant_id=merchant_id,
            type=export_type,
            start_ms=start_ms,
            end_ms=end_ms,
            created_s=now_s,
            in_progress_s=in_progress_s,
            work_s=work_s,
            stops_s=stops_s,
            ends_s=ends_s,
            fate=fate,
            file_key=f"{self._ids.getrandbits(128):032x}",
            available_until_ms=round((ends_s + settings.file_ttl_s) * 1000),
        )
        self._exports[export.id] = export
        self._exports_by_file_key[export.file_key] = export
        self._running.append(export)
        stats = self._stats
        stats.exports_created += 1
        stats.max_running = max(stats.max_running, len(self._running))
        if stats.first_create_at is None:
            stats.first_create_at = datetime.fromtimestamp(now_s, UTC)
        return export

    def _describe(self, export: _Export, now_s: float) -> dict[str, Any] | None:
        """The export object as Clover shows it now; None once the server forgot it."""
        state = export.status_at(now_s)
        if state is None:
            return None
        status, percent, changed_s = state
        if status is ExportStatus.IN_PROGRESS:
            percent = _shown_percent(percent, now_s, self.settings.progress_count)
        view: dict[str, Any] = {
            "id": export.id,
            "type": export.type,
            "status": status.value,
            "percentComplete": percent,
            "startTime": export.start_ms,
            "endTime": export.end_ms,
            "createdTime": round(export.created_s * 1000),
            "modifiedTime": round(changed_s * 1000),
            "merchantRef": {"id": export.merchant_id},
        }
        if status is ExportStatus.DONE:
            view["status"] = self.settings.done_status
            view["availableUntil"] = export.available_until_ms
            files = self._files(export)
            no_urls = not files and self.settings.empty_exports == "no_urls"
            if export.fate is not FaultKind.DONE_WITHOUT_URLS and not no_urls:
                folder = f"{self.file_base_url}/exports/{export.file_key}"
                view["exportUrls"] = {
                    "elements": [
                        {"url": f"{folder}/{export.id}-{n}.json", "export": {"id": export.id}}
                        for n in range(len(files))
                    ]
                }
        return view

    def _files(self, export: _Export) -> list[bytes]:
        """The export's file bodies, a snapshot of the objects as they were when it ended."""
        if export.files is None:
            found = self._data.objects(
                export.merchant_id,
                export.type,
                export.start_ms,
                export.end_ms,
                round(export.ends_s * 1000),
            )
            size = self.settings.objects_per_file
            chunks = [found[i : i + size] for i in range(0, len(found), size)]
            if not chunks and self.settings.empty_exports == "file":
                chunks = [[]]
            padding = self.settings.object_padding_bytes
            if padding:
                filler = "x" * padding
                chunks = [[{**obj, "padding": filler} for obj in chunk] for chunk in chunks]
            export.files = [json.dumps({"elements": chunk}).encode() for chunk in chunks]
        return export.files

    def _inject(self, kinds: tuple[FaultKind, ...]) -> FaultKind | None:
        fault = self.faults.first_firing(kinds, self._rng)
        if fault is not None:
            self._stats.faults_injected[fault.value] += 1
        return fault

    # -- the API host -------------------------------------------------------------------

    def _api(self, kind: str, handler: Handler) -> Handler:
        """Wrap an API handler in what every API call goes through: limits, faults, latency."""

        async def handle(request: web.Request) -> web.StreamResponse:
            self._stats.requests[kind] += 1
            token = _bearer(request)
            limit_hit = self._check_rate_limits(token)
            if limit_hit is not None:
                return self._rate_limited(limit_hit)
            self._app_in_flight += 1
            if token is not None:
                self._token_in_flight[token] += 1
            try:
                fault = self._inject(API_FAULTS)
                slow_s = self.faults.slow_s if fault is FaultKind.API_SLOW else 0.0
                await self.clock.sleep(self.settings.api_latency_s + slow_s)
                if fault is FaultKind.API_RESET:
                    return _drop_connection(request)
                if fault is FaultKind.API_5XX:
                    status = self._rng.choice((500, 502, 504))
                    return _message(status, "Internal server error")
                if fault is FaultKind.API_429:
                    header = self.faults.rate_limit_header
                    return self._rate_limited(header or self._rng.choice(RATE_LIMIT_HEADERS))
                return await handler(request)
            finally:
                self._app_in_flight -= 1
                if token is not None:
                    self._token_in_flight[token] -= 1

        return handle

    def _check_rate_limits(self, token: str | None) -> str | None:
        """The header of the limit this request breaks, if any.

        Refused requests count in the sliding windows too: retrying early lengthens
        the penalty, as Clover warns.
        """
        now = self.clock.monotonic()
        windows = [(self._app_requests, APP_RATE_HEADER)]
        if token is not None:
            windows.insert(0, (self._token_requests[token], RATE_HEADER))
        broken = None
        for times, header in windows:
            while times and times[0] <= now - 1.0:
                times.popleft()
            times.append(now)
            if header == APP_RATE_HEADER:
                self._stats.max_requests_in_a_second = max(
                    self._stats.max_requests_in_a_second, len(times)
                )
            if broken is None and len(times) > self._limits[header]:
                broken = header
        if broken is not None:
            return broken
        if token is not None and self._token_in_flight[token] >= self._limits[CONCURRENT_HEADER]:
            return CONCURRENT_HEADER
        if self._app_in_flight >= self._limits[APP_CONCURRENT_HEADER]:
            return APP_CONCURRENT_HEADER
        return None

    def _rate_limited(self, header: str) -> web.Response:
        self._stats.rate_limited[header] += 1
        headers = {header: str(self._limits[header])}
        if header in (CONCURRENT_HEADER, APP_CONCURRENT_HEADER):
            headers["Retry-After"] = f"{self.settings.retry_after_s:g}"
        return _message(429, "Too Many Requests", headers)

    def _authorize(self, request: web.Request, merchant_id: str) -> Account | web.Response:
        account = self.settings.accounts.get(merchant_id)
        token = _bearer(request)
        if account is None or token is None:
            return self._unauthorized()
        if token == account.token:
            return account
        grant = self._access_grants.get(token)
        if grant is None or grant.merchant_id != merchant_id or grant.expires_s <= self._now_s():
            return self._unauthorized()
        return account

    def _unauthorized(self) -> web.Response:
        self._stats.bad_tokens += 1
        return _message(401, "401 Unauthorized")

    async def _create_export(self, request: web.Request) -> web.StreamResponse:
        merchant_id = request.match_info["merchant_id"]
        account = self._authorize(request, merchant_id)
        if isinstance(account, web.Response):
            return account
        if not account.export_permission:
            self._stats.permission_denied += 1
            status = self.settings.permission_status
            if status == 401:
                return _message(401, "401 Unauthorized")
            return _message(
                status, "The app does not have permission to export this merchant's data"
            )
        try:
            body = await request.json()
            export_type, start_ms, end_ms = parse_export_request(body, self.settings.max_range_days)
        except ValueError as exc:  # json.JSONDecodeError is a ValueError too
            return _message(400, str(exc))
        self._note_sample_ways(request, body)
        now_s = self._now_s()
        self._settle(now_s)
        window = self.settings.window
        window_open = window is None or window(self.clock.now())
        if not window_open or self._inject((FaultKind.WINDOW_503,)):
            self._stats.window_503s += 1
            if self.settings.window_body == "bare":
                return web.Response(status=503)
            hours = self.settings.window_hours_text
            return _message(503, f"The export API is only available between {hours} UTC")
        at_limit = len(self._running) >= self.settings.max_concurrent_exports
        if at_limit or self._inject((FaultKind.BUSY_503,)):
            self._stats.busy_503s += 1
            self._stats.busy_503_times.append(now_s)
            return _message(503, BUSY_MESSAGE)
        export = self._new_export(merchant_id, export_type, start_ms, end_ms, now_s)
        if self._inject((FaultKind.CREATE_LOST,)):
            # Made, and then the answer is lost on its way back.
            lost = self._rng.choice(("reset", 502, 504))
            if lost == "reset":
                return _drop_connection(request)
            return _message(int(lost), "Gateway error")
        return web.json_response(self._describe(export, now_s))

    def _note_sample_ways(self, request: web.Request, body: object) -> None:
        """Count what Clover's sample does differently, for tests to see it was taken."""
        if request.path.endswith("/"):
            self._stats.sample_requests["trailing_slash"] += 1
        if "access_token" in request.query:
            self._stats.sample_requests["access_token_query"] += 1
        if isinstance(body, dict) and isinstance(body.get("startTime"), str):
            self._stats.sample_requests["string_times"] += 1

    async def _merchant(self, request: web.Request) -> web.StreamResponse:
        """`GET /v3/merchants/{mId}`: the cheap read that tells whether a token is taken."""
        merchant_id = request.match_info["merchant_id"]
        account = self._authorize(request, merchant_id)
        if isinstance(account, web.Response):
            return account
        return web.json_response({"id": merchant_id, "name": f"Simulated shop {merchant_id}"})

    async def _get_export(self, request: web.Request) -> web.StreamResponse:
        merchant_id = request.match_info["merchant_id"]
        account = self._authorize(request, merchant_id)
        if isinstance(account, web.Response):
            return account
        now_s = self._now_s()
        self._settle(now_s)
        export = self._exports.get(request.match_info["export_id"])
        view = None
        if export is not None and export.merchant_id == merchant_id:
            view = self._describe(export, now_s)
        if view is None:
            return _message(404, "Export not found")
        return web.json_response(view)

    async def _refresh(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not all(
            isinstance(body.get(key), str) for key in ("client_id", "refresh_token")
        ):
            return _message(400, "client_id and refresh_token are required")
        now_s = self._now_s()
        grant = self._refresh_grants.get(body["refresh_token"])
        if grant is not None and grant.used:
            self._stats.refresh_reuse += 1
            return self._unauthorized()
        if grant is None or grant.client_id != body["client_id"] or grant.expires_s <= now_s:
            return self._unauthorized()
        grant.used = True
        access_token, refresh_token = self._new_token(), self._new_token()
        access = _Grant(grant.merchant_id, now_s + self.settings.access_token_ttl_s)
        refresh = _Grant(
            grant.merchant_id, now_s + self.settings.refresh_token_ttl_s, grant.client_id
        )
        self._access_grants[access_token] = access
        self._refresh_grants[refresh_token] = refresh
        self._stats.refreshes += 1
        return web.json_response(
            {
                "access_token": access_token,
                "access_token_expiration": math.floor(access.expires_s),
                "refresh_token": refresh_token,
                "refresh_token_expiration": math.floor(refresh.expires_s),
            }
        )

    def _new_token(self) -> str:
        return str(uuid.UUID(int=self._ids.getrandbits(128), version=4))

    async def _serve_stats(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.stats.as_dict())

    # -- the file host --------------------------------------------------------------------

    async def _serve_file(self, request: web.Request) -> web.StreamResponse:
        self._stats.requests["file"] += 1
        if "Authorization" in request.headers:
            self._stats.file_auth_headers += 1
        export = self._exports_by_file_key.get(request.match_info["file_key"])
        index = int(request.match_info["index"])
        # Only files whose URLs were handed out exist.
        if (
            export is None
            or export.id != request.match_info["export_id"]
            or export.files is None
            or index >= len(export.files)
        ):
            return web.Response(status=404, text="Not Found")
        if self._now_ms() > export.available_until_ms:
            return self._expired()
        plain = export.files[index]
        body, headers = self._encode(plain)
        fault = self._inject(FILE_FAULTS)
        if fault is FaultKind.FILE_EXPIRED_EARLY:
            return self._expired()
        if fault is FaultKind.FILE_RESET:
            return _drop_connection(request)
        if fault is FaultKind.FILE_5XX:
            return web.Response(status=self._rng.choice((500, 502, 503, 504)), text="Server Error")
        if fault is FaultKind.FILE_TRUNCATED:
            response = await self._start_body(request, len(body), headers)
            await response.write(body[: len(body) // 2])
            request.protocol.force_close()
            return response
        if fault is FaultKind.FILE_BAD_JSON:
            # A proxy's page: never encoded.
            garbage = (_GARBAGE * (len(body) // len(_GARBAGE) + 1))[: len(body)]
            return web.Response(body=garbage, content_type="application/json")
        if fault is FaultKind.FILE_OVERSIZE:
            oversize, headers = self._encode(self._oversize(export, plain))
            return web.Response(body=oversize, content_type="application/json", headers=headers)
        self._stats.file_downloads += 1
        if fault is FaultKind.FILE_SLOW:
            response = await self._start_body(request, len(body), headers)
            piece = math.ceil(len(body) / _SLOW_FILE_PIECES)
            for offset in range(0, len(body), piece):
                if offset:
                    await self.clock.sleep(self.faults.slow_s)
                await response.write(body[offset : offset + piece])
            await response.write_eof()
            return response
        return web.Response(body=body, content_type="application/json", headers=headers)

    def _encode(self, body: bytes) -> tuple[bytes, dict[str, str]]:
        """The body as the file host sends it, and its Content-Encoding header if any.

        Whatever the client asked for, as S3 does with an object stored compressed.
        """
        encoding = self.settings.file_encoding
        if encoding == "gzip":
            return gzip.compress(body, mtime=0), {"Content-Encoding": "gzip"}
        if encoding == "deflate":
            return zlib.compress(body), {"Content-Encoding": "deflate"}
        return body, {}

    async def _start_body(
        self, request: web.Request, length: int, headers: dict[str, str]
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json", **headers})
        response.content_length = length
        await response.prepare(request)
        return response

    def _expired(self) -> web.Response:
        return web.Response(status=self.settings.expired_status, text="Request has expired")

    def _oversize(self, export: _Export, body: bytes) -> bytes:
        """The file's objects padded with made-up ones to one more than Clover allows."""
        elements: list[Object] = json.loads(body)["elements"]
        staff = Staff.hire(self._rng)
        while len(elements) <= MAX_OBJECTS_PER_FILE:
            created_ms = self._rng.randint(export.start_ms, export.end_ms)
            elements.append(make_object(self._rng, export.type, created_ms, staff))
        return json.dumps({"elements": elements}).encode()
