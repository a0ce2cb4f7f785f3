"""Clover's Export API client: defensive reading of answers, and every status translated."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from harvester.clover.api import CloverApi, download_file, parse_export, parse_grant
from harvester.clover.chunks import ExportType, TimeRange
from harvester.clover.ratelimit import RequestLimiter
from harvester.errors import (
    AnswerLost,
    BadFile,
    CloverError,
    CloverRefused,
    CloverUnavailable,
    CreateDenied,
    ExportNotFound,
    FileExpired,
    RateLimited,
    TokenRejected,
    Unavailable503,
)
from tests.fakeclock import FakeClock

SPAN = TimeRange(datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 1, 31, tzinfo=UTC))
JAN_1 = datetime(2025, 1, 1, tzinfo=UTC)
JAN_1_MS = 1735689600000
FILE_BODY = json.dumps({"elements": [{"id": f"O{n}"} for n in range(200)]}).encode()


# -- parse_export -------------------------------------------------------------------------


def test_a_full_export_answer_is_read() -> None:
    """Id, status, percent, epoch-ms availableUntil and the file URLs come through."""
    info = parse_export(
        {
            "id": "E1",
            "status": "DONE",
            "percentComplete": 100,
            "availableUntil": JAN_1_MS,
            "exportUrls": {"elements": [{"url": "https://f/1"}, {"url": "https://f/2"}]},
        }
    )
    assert (info.id, info.status, info.percent) == ("E1", "DONE", 100.0)
    assert info.available_until == JAN_1
    assert info.urls == ("https://f/1", "https://f/2")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(["not", "an", "object"], "not a JSON object", id="list"),
        pytest.param({"status": "DONE"}, "has no id", id="no-id"),
        pytest.param({"id": "", "status": "DONE"}, "has no id", id="empty-id"),
        pytest.param({"id": 7, "status": "DONE"}, "has no id", id="numeric-id"),
        pytest.param({"id": "E1"}, "E1: answer has no status", id="no-status"),
        pytest.param(
            {"id": "E1", "status": "DONE", "exportUrls": {"elements": [{"name": "x"}]}},
            "element without a url",
            id="element-without-url",
        ),
        pytest.param(
            {"id": "E1", "status": "DONE", "exportUrls": {"elements": ["https://f/1"]}},
            "element without a url",
            id="element-not-an-object",
        ),
        pytest.param(
            {"id": "E1", "status": "DONE", "exportUrls": {"elements": [{"url": ""}]}},
            "element without a url",
            id="empty-url",
        ),
    ],
)
def test_an_unusable_export_answer_is_a_clover_error(body: Any, message: str) -> None:
    """An answer without a usable id, status or file URL raises CloverError naming the gap."""
    with pytest.raises(CloverError, match=message):
        parse_export(body)


@pytest.mark.parametrize(
    ("created", "modified", "expected"),
    [
        (JAN_1_MS, JAN_1_MS + 90_500, 90.5),
        (str(JAN_1_MS), str(JAN_1_MS + 1000), 1.0),
        (None, JAN_1_MS, None),
        (JAN_1_MS, "soon", None),
        (JAN_1_MS, JAN_1_MS - 1000, None),
    ],
)
def test_the_servers_own_duration_is_modified_less_created_time(
    created: Any, modified: Any, expected: float | None
) -> None:
    """modifiedTime - createdTime, when both are readable and in order; else None."""
    body = {"id": "E1", "status": "DONE", "createdTime": created, "modifiedTime": modified}
    assert parse_export(body).server_duration_s == expected


@pytest.mark.parametrize(
    ("percent", "expected"),
    [(None, 0.0), ("42.5", 42.5), ("lots", 0.0), ([1], 0.0), (-5, 0.0), (250, 100.0)],
)
def test_percent_is_read_leniently_and_bounded(percent: Any, expected: float) -> None:
    """A missing or unreadable percentComplete is 0; others are kept within 0..100."""
    info = parse_export({"id": "E1", "status": "IN_PROGRESS", "percentComplete": percent})
    assert info.percent == expected


@pytest.mark.parametrize(
    "export_urls",
    [None, "https://f/1", {"elements": "https://f/1"}, {"other": []}],
)
def test_export_urls_of_another_shape_mean_no_urls(export_urls: Any) -> None:
    """exportUrls that is not an object holding an "elements" list gives urls None."""
    info = parse_export({"id": "E1", "status": "DONE", "exportUrls": export_urls})
    assert info.urls is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(JAN_1_MS, JAN_1, id="epoch-ms"),
        pytest.param(float(JAN_1_MS), JAN_1, id="epoch-ms-float"),
        pytest.param(1735689600, JAN_1, id="ten-digits-are-seconds"),
        pytest.param(str(JAN_1_MS), JAN_1, id="numeric-string-ms"),
        pytest.param(" 2025-01-01T00:00:00Z ", JAN_1, id="iso-z"),
        pytest.param("2025-01-01T01:00:00+01:00", JAN_1, id="iso-offset"),
        pytest.param("2025-01-01T00:00:00", JAN_1, id="iso-naive-is-utc"),
        pytest.param("tomorrow", None, id="text"),
        pytest.param(True, None, id="bool"),
        pytest.param(None, None, id="missing"),
        pytest.param([JAN_1_MS], None, id="list"),
        pytest.param(10**30, None, id="out-of-range"),
        pytest.param(float("nan"), None, id="nan"),
    ],
)
def test_available_until_is_read_in_every_plausible_shape(
    value: Any, expected: datetime | None
) -> None:
    """availableUntil: epoch ms (or seconds, if ten digits), numeric text or ISO; else None."""
    info = parse_export({"id": "E1", "status": "DONE", "availableUntil": value})
    assert info.available_until == expected


# -- parse_grant --------------------------------------------------------------------------


def test_a_grant_is_read_with_expirations_in_epoch_seconds() -> None:
    """Both tokens and their expirations (epoch seconds, or ISO) come through."""
    grant = parse_grant(
        {
            "access_token": "a-1",
            "refresh_token": "r-1",
            "access_token_expiration": 1735689600,
            "refresh_token_expiration": "2025-01-01T00:00:00Z",
        }
    )
    assert (grant.access_token, grant.refresh_token) == ("a-1", "r-1")
    assert grant.access_expires_at == JAN_1
    assert grant.refresh_expires_at == JAN_1
    assert "a-1" not in repr(grant)
    assert "r-1" not in repr(grant)


def test_a_grant_without_expirations_has_none() -> None:
    """Missing or unreadable expirations are None, not errors."""
    grant = parse_grant(
        {"access_token": "a-1", "refresh_token": "r-1", "access_token_expiration": "soon"}
    )
    assert (grant.access_expires_at, grant.refresh_expires_at) == (None, None)


@pytest.mark.parametrize(
    "body",
    [
        "access_token=a-1",
        {"refresh_token": "r-1"},
        {"access_token": "a-1"},
        {"access_token": "", "refresh_token": "r-1"},
        {"access_token": "a-1", "refresh_token": 5},
    ],
)
def test_an_unusable_grant_is_a_clover_error(body: Any) -> None:
    """A refresh answer without both tokens raises CloverError."""
    with pytest.raises(CloverError, match="token refresh answer"):
        parse_grant(body)


# -- CloverApi against a scripted host ---------------------------------------------------


@dataclass(slots=True)
class Reply:
    status: int = 200
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Host:
    """A loopback HTTP server that answers every request with `reply`."""

    url: str
    reply: Reply = field(default_factory=Reply)
    seen: list[web.Request] = field(default_factory=list)


@pytest.fixture
async def host() -> AsyncIterator[Host]:
    scripted = Host("")

    async def answer(request: web.Request) -> web.StreamResponse:
        scripted.seen.append(request)
        reply = scripted.reply
        if reply.status in (301, 302):
            raise web.HTTPFound(reply.headers["Location"])
        return web.Response(status=reply.status, text=reply.body, headers=reply.headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    scripted.url = f"http://127.0.0.1:{port}"
    try:
        yield scripted
    finally:
        await runner.cleanup()


@pytest.fixture
async def api(host: Host, clock: FakeClock) -> AsyncIterator[CloverApi]:
    limiter = RequestLimiter(clock, 100, 10, 100, 10)
    async with aiohttp.ClientSession() as session:
        yield CloverApi(session, host.url, limiter, 10.0)


EXPORT_JSON = '{"id": "E1", "status": "PENDING", "percentComplete": 0}'


async def test_create_sends_the_half_open_range_with_the_token(host: Host, api: CloverApi) -> None:
    """A POST carries the bearer token, the type, and endTime = end - 1 ms."""
    host.reply = Reply(200, EXPORT_JSON)
    info = await api.create_export("M1", "tok-1", ExportType.PAYMENTS, SPAN)
    assert info.id == "E1"
    (request,) = host.seen
    assert (request.method, request.path) == ("POST", "/v3/merchants/M1/exports")
    assert request.headers["Authorization"] == "Bearer tok-1"


@pytest.mark.parametrize(
    ("reply", "error", "message"),
    [
        pytest.param(Reply(403, "no export scope"), CreateDenied, "no export scope", id="403"),
        pytest.param(Reply(401, ""), CreateDenied, "401", id="401"),
        pytest.param(Reply(500, "oops"), AnswerLost, "500", id="500"),
        pytest.param(Reply(400, "bad range"), CloverRefused, "400 bad range", id="400"),
        pytest.param(Reply(200, "<html>"), CloverUnavailable, "not JSON", id="not-json"),
        pytest.param(Reply(200, '{"id": "E1"}'), CloverError, "no status", id="no-status"),
        pytest.param(
            Reply(302, "", {"Location": "http://127.0.0.2/"}), CloverRefused, "302", id="redirect"
        ),
    ],
)
async def test_create_translates_every_answer(
    host: Host, api: CloverApi, reply: Reply, error: type[Exception], message: str
) -> None:
    """Each non-success answer to a POST becomes the error the callers act on."""
    host.reply = reply
    with pytest.raises(error, match=message):
        await api.create_export("M1", "tok-1", ExportType.PAYMENTS, SPAN)
    assert len(host.seen) == 1  # one request, no retries, no redirect followed


async def test_a_503_on_create_carries_its_body_for_the_gate(host: Host, api: CloverApi) -> None:
    """A 503 is raised as Unavailable503 with the whole body: the gate decides what it means."""
    host.reply = Reply(503, "available hours are 12:00 - 13:00")
    with pytest.raises(Unavailable503) as raised:
        await api.create_export("M1", "tok-1", ExportType.PAYMENTS, SPAN)
    assert raised.value.body == "available hours are 12:00 - 13:00"


@pytest.mark.parametrize(
    ("headers", "scope", "retry_after_s"),
    [
        ({"X-RateLimit-tokenLimit": "16", "Retry-After": "3"}, "token", 3.0),
        ({"X-RateLimit-crossTokenLimit": "50", "Retry-After": "-2"}, "app", 0.0),
        ({"Retry-After": "soon"}, "token", None),
    ],
)
async def test_a_429_names_its_scope_and_wait(
    host: Host,
    api: CloverApi,
    headers: dict[str, str],
    scope: str,
    retry_after_s: float | None,
) -> None:
    """A 429 is RateLimited with the scope its header names and a usable Retry-After."""
    host.reply = Reply(429, "slow down", headers)
    with pytest.raises(RateLimited) as raised:
        await api.get_export("M1", "tok-1", "E1")
    assert (raised.value.scope, raised.value.retry_after_s) == (scope, retry_after_s)


async def test_a_poll_404_means_the_export_is_gone(host: Host, api: CloverApi) -> None:
    """Clover forgetting an export id is ExportNotFound."""
    host.reply = Reply(404, "")
    with pytest.raises(ExportNotFound, match="E1"):
        await api.get_export("M1", "tok-1", "E1")


async def test_a_poll_answered_about_another_export_is_refused(host: Host, api: CloverApi) -> None:
    """An answer about a different export id than asked for is a CloverError."""
    host.reply = Reply(200, '{"id": "E2", "status": "DONE"}')
    with pytest.raises(CloverError, match="asked for export E1"):
        await api.get_export("M1", "tok-1", "E1")


@pytest.mark.parametrize("status", [400, 401, 403])
async def test_a_refused_refresh_is_token_rejected(host: Host, api: CloverApi, status: int) -> None:
    """400, 401 or 403 to a refresh means the refresh token is no good; none goes with it."""
    host.reply = Reply(status, "invalid_grant")
    with pytest.raises(TokenRejected, match=str(status)):
        await api.refresh("M1", "client-1", "refresh-1")
    assert "Authorization" not in host.seen[0].headers


async def test_a_refresh_is_read_as_a_grant(host: Host, api: CloverApi) -> None:
    """A refresh answer becomes a TokenGrant."""
    host.reply = Reply(200, '{"access_token": "a-2", "refresh_token": "r-2"}')
    grant = await api.refresh("M1", "client-1", "refresh-1")
    assert (grant.access_token, grant.refresh_token) == ("a-2", "r-2")


async def test_no_answer_at_all_is_unavailable(clock: FakeClock) -> None:
    """A host that refuses the connection is CloverUnavailable, worth retrying."""
    limiter = RequestLimiter(clock, 100, 10, 100, 10)
    async with aiohttp.ClientSession() as session:
        api = CloverApi(session, "http://127.0.0.1:9", limiter, 10.0)
        with pytest.raises(CloverUnavailable, match="GET"):
            await api.get_export("M1", "tok-1", "E1")


# -- download_file ------------------------------------------------------------------------


class MemoryWriter:
    """Keeps what download_file writes."""

    def __init__(self) -> None:
        self.data = bytearray()

    async def write(self, data: bytes) -> None:
        self.data += data


async def test_a_file_streams_into_the_writer_without_credentials(host: Host) -> None:
    """The body lands in the writer, its Content-Length comes back, no token is sent."""
    host.reply = Reply(200, '{"elements": []}')
    writer = MemoryWriter()
    async with aiohttp.ClientSession() as session:
        size = await download_file(session, f"{host.url}/file/1", writer, 10.0)
    assert bytes(writer.data) == b'{"elements": []}'
    assert size == len(writer.data)
    assert "Authorization" not in host.seen[0].headers


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (403, FileExpired),
        (404, FileExpired),
        (410, FileExpired),
        (500, CloverUnavailable),
        (429, CloverUnavailable),
        (204, BadFile),
    ],
)
async def test_a_file_hosts_refusal_is_translated(
    host: Host, status: int, error: type[Exception]
) -> None:
    """Gone files are FileExpired, a struggling host CloverUnavailable, anything else BadFile."""
    host.reply = Reply(status, "")
    writer = MemoryWriter()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(error, match=str(status)):
            await download_file(session, f"{host.url}/file/1", writer, 10.0)
    assert writer.data == b""


async def test_an_unreachable_file_host_is_unavailable() -> None:
    """A refused connection to the file host is CloverUnavailable."""
    async with aiohttp.ClientSession() as session:
        with pytest.raises(CloverUnavailable, match="download"):
            await download_file(session, "http://127.0.0.1:9/file/1", MemoryWriter(), 10.0)


async def test_a_body_cut_short_is_a_bad_file() -> None:
    """A connection that closes before Content-Length bytes arrived is BadFile."""

    async def cut_short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"elem')
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(cut_short, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(BadFile, match="cut short"):
                await download_file(session, f"http://127.0.0.1:{port}/f", MemoryWriter(), 10.0)
    finally:
        server.close()
        await server.wait_closed()


# -- issue 7: Clover as documented --------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
async def test_a_denied_create_carries_its_status_for_the_merchant_check(
    host: Host, api: CloverApi, status: int
) -> None:
    """401 and 403 to a create are both CreateDenied (token or permission: the merchant
    client tells which), with the status and Clover's words."""
    host.reply = Reply(status, "not for you")
    with pytest.raises(CreateDenied, match="not for you") as raised:
        await api.create_export("M1", "tok-1", ExportType.PAYMENTS, SPAN)
    assert raised.value.status == status


@pytest.mark.parametrize("status", [500, 502, 504])
async def test_a_5xx_to_a_create_is_a_lost_answer(host: Host, api: CloverApi, status: int) -> None:
    """A create answered 5xx (but 503) reached Clover, which may have made the export."""
    host.reply = Reply(status, "gateway")
    with pytest.raises(AnswerLost, match=str(status)):
        await api.create_export("M1", "tok-1", ExportType.PAYMENTS, SPAN)


async def test_a_create_that_never_connected_is_not_lost(clock: FakeClock) -> None:
    """A refused connection sent nothing: CloverUnavailable, but no lost answer."""
    limiter = RequestLimiter(clock, 100, 10, 100, 10)
    async with aiohttp.ClientSession() as session:
        api = CloverApi(session, "http://127.0.0.1:9", limiter, 10.0)
        with pytest.raises(CloverUnavailable) as raised:
            await api.create_export("M1", "tok-1", ExportType.PAYMENTS, SPAN)
    assert not isinstance(raised.value, AnswerLost)


async def test_a_create_whose_connection_drops_is_a_lost_answer(clock: FakeClock) -> None:
    """A POST sent on a connection that then closes without an answer: AnswerLost."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    limiter = RequestLimiter(clock, 100, 10, 100, 10)
    try:
        async with aiohttp.ClientSession() as session:
            api = CloverApi(session, f"http://127.0.0.1:{port}", limiter, 10.0)
            with pytest.raises(AnswerLost, match="POST"):
                await api.create_export("M1", "tok-1", ExportType.PAYMENTS, SPAN)
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(("status", "works"), [(200, True), (403, True), (401, False)])
async def test_the_merchant_read_says_whether_clover_takes_the_token(
    host: Host, api: CloverApi, status: int, works: bool
) -> None:
    """GET /v3/merchants/{mId} with the token: an answer (403 too) means the token is taken,
    a 401 that it is not."""
    host.reply = Reply(status, '{"id": "M1"}')
    assert await api.token_reads_merchant("M1", "tok-1") is works
    (request,) = host.seen
    assert (request.method, request.path) == ("GET", "/v3/merchants/M1")
    assert request.headers["Authorization"] == "Bearer tok-1"


async def test_a_merchant_read_refused_otherwise_is_a_refusal(host: Host, api: CloverApi) -> None:
    """A 404 to the merchant read is CloverRefused, naming what was asked."""
    host.reply = Reply(404, "no such merchant")
    with pytest.raises(CloverRefused, match="read merchant M1"):
        await api.token_reads_merchant("M1", "tok-1")


async def test_rate_limit_headers_are_read_in_any_case(host: Host, api: CloverApi) -> None:
    """Lower-case retry-after and x-ratelimit-* names (as over HTTP/2) are read all the same."""
    host.reply = Reply(429, "", {"retry-after": "7", "x-ratelimit-crosstokenlimit": "50"})
    with pytest.raises(RateLimited) as raised:
        await api.get_export("M1", "tok-1", "E1")
    assert (raised.value.scope, raised.value.retry_after_s) == ("app", 7.0)


async def serve_once(head: bytes, body: bytes) -> tuple[asyncio.Server, list[bytes]]:
    """A raw HTTP server answering every request with `head` (a Content-Length is added)."""
    requests: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.readuntil(b"\r\n\r\n"))
        length = f"Content-Length: {len(body)}\r\n\r\n".encode()
        writer.write(b"HTTP/1.1 200 OK\r\n" + head + length + body)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0), requests


@pytest.mark.parametrize(
    ("encoding", "packed"),
    [("gzip", gzip.compress(FILE_BODY)), ("deflate", zlib.compress(FILE_BODY))],
)
async def test_a_compressed_file_is_written_decoded(encoding: str, packed: bytes) -> None:
    """A file sent compressed (Content-Length counting the compressed bytes) lands decoded in
    the writer, and its decoded size comes back; the download said what it can read."""
    server, requests = await serve_once(f"Content-Encoding: {encoding}\r\n".encode(), packed)
    port = server.sockets[0].getsockname()[1]
    writer = MemoryWriter()
    try:
        async with aiohttp.ClientSession() as session:
            size = await download_file(session, f"http://127.0.0.1:{port}/f", writer, 10.0)
    finally:
        server.close()
        await server.wait_closed()
    assert bytes(writer.data) == FILE_BODY
    assert size == len(FILE_BODY) != len(packed)
    assert b"accept-encoding: gzip, deflate" in requests[0].lower()


async def test_a_file_in_an_unknown_encoding_is_a_bad_file() -> None:
    """A Content-Encoding the harvester cannot read is BadFile, naming it."""
    server, _ = await serve_once(b"Content-Encoding: br\r\n", b"\x1b\x00")
    port = server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(BadFile, match="br"):
                await download_file(session, f"http://127.0.0.1:{port}/f", MemoryWriter(), 10.0)
    finally:
        server.close()
        await server.wait_closed()
