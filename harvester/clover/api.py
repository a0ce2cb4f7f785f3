"""Clover's Export API over HTTP. The only module that uses aiohttp's client.

Each call here makes exactly one request and translates every answer that is not a success
into the harvester's error family; retry policy lives with the callers. The bearer token is
sent to the region's API host only: file downloads carry no credentials at all.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from harvester.clover.chunks import ExportType, TimeRange
from harvester.clover.encoding import ACCEPT_ENCODING, BodyDecoder
from harvester.clover.ratelimit import RequestLimiter, scope_of_header
from harvester.errors import (
    AnswerLost,
    BadFile,
    CloverError,
    CloverRefused,
    CloverUnavailable,
    CreateDenied,
    ExportFailed,
    ExportNotFound,
    FileExpired,
    RateLimited,
    TokenRejected,
    Unavailable503,
)
from harvester.scrub import describe_url, scrub, scrub_url

# What one read of a body may return. A Clover-sized export file (about half a megabyte)
# arrives in two pieces rather than seven: each piece costs a pass through the writer,
# the hash and the check, whatever its size. The decoded pieces stay within
# encoding.DECODED_PIECE_BYTES, as large.
DOWNLOAD_PIECE_BYTES = 256 * 1024
_BODY_IN_ERRORS = 200  # characters of a server's answer quoted in an error message
# An export's JSON is small (a few hundred bytes, plus a URL per 1000 objects): an API answer
# larger than this is not one, and is never read whole into memory.
MAX_ANSWER_BYTES = 4 * 1024 * 1024
# Clover's export ids are 13 letters and digits; a little more is accepted, never a character
# that could change the path it goes into ("/", ".", "%").
_EXPORT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ExportStatus(StrEnum):
    PENDING = "PENDING"  # queued behind other exports
    IN_PROGRESS = "IN_PROGRESS"
    DONE = "DONE"  # files are listed in exportUrls
    COMPLETE = "COMPLETE"  # DONE's name in Clover's 2016 docs: read as DONE


# Any other status is a failed export.
DONE_STATUSES = frozenset({ExportStatus.DONE, ExportStatus.COMPLETE})
RUNNING_STATUSES = frozenset({ExportStatus.PENDING, ExportStatus.IN_PROGRESS})


@dataclass(frozen=True, slots=True)
class ExportInfo:
    """What Clover says about one export."""

    id: str
    status: str
    percent: float
    available_until: datetime | None
    urls: tuple[str, ...] | None  # None: the answer had no exportUrls
    # modifiedTime - createdTime, both the server's: once DONE, how long the export took
    # (polling learns from it); None when either is missing or they are out of order.
    server_duration_s: float | None = None


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """A refresh answer. The tokens stay out of reprs."""

    access_token: str = field(repr=False)
    access_expires_at: datetime | None
    refresh_token: str = field(repr=False)
    refresh_expires_at: datetime | None


def _instant(value: Any, unit_s: float) -> datetime | None:
    """An epoch number (in units of `unit_s` seconds), numeric string or ISO text; else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                return None
            return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value * unit_s, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    return None


def _epoch_ms(value: Any) -> datetime | None:
    # The sheet says "probably epoch ms"; a ten-digit number can only be seconds.
    if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) < 10**11:
        return _instant(value, 1.0)
    return _instant(value, 0.001)


def parse_export(body: Any) -> ExportInfo:
    """Read an export object defensively; raise CloverError if it has no usable id or status."""
    if not isinstance(body, Mapping):
        raise CloverError(f"export answer is not a JSON object but a {type(body).__name__}")
    export_id = body.get("id")
    status = body.get("status")
    if not isinstance(export_id, str) or not export_id:
        raise CloverError("export answer has no id")
    if not _EXPORT_ID.fullmatch(export_id):
        # It would go into the next request's path: "../../x" must never become a GET.
        raise ExportFailed(
            f"export id {export_id[:80]!r} is not the shape of Clover's ids (letters and digits)"
        )
    if not isinstance(status, str):
        raise CloverError(f"export {export_id}: answer has no status")
    try:
        percent = float(body.get("percentComplete") or 0)
    except (TypeError, ValueError):
        percent = 0.0
    urls: tuple[str, ...] | None = None
    export_urls = body.get("exportUrls")
    if isinstance(export_urls, Mapping) and isinstance(export_urls.get("elements"), list):
        found = [item.get("url") for item in export_urls["elements"] if isinstance(item, Mapping)]
        if len(found) != len(export_urls["elements"]) or not all(
            isinstance(url, str) and url for url in found
        ):
            raise CloverError(f"export {export_id}: exportUrls has an element without a url")
        urls = tuple(str(url) for url in found)
        if len(set(urls)) != len(urls):
            raise ExportFailed(f"export {export_id}: exportUrls lists the same file more than once")
    return ExportInfo(
        id=export_id,
        status=status,
        percent=max(0.0, min(100.0, percent)),
        available_until=_epoch_ms(body.get("availableUntil")),
        urls=urls,
        server_duration_s=_server_duration_s(body),
    )


def _server_duration_s(body: Mapping[str, Any]) -> float | None:
    created = _epoch_ms(body.get("createdTime"))
    modified = _epoch_ms(body.get("modifiedTime"))
    if created is None or modified is None or modified < created:
        return None
    return (modified - created).total_seconds()


def parse_grant(body: Any) -> TokenGrant:
    if not isinstance(body, Mapping):
        raise CloverError("token refresh answer is not a JSON object")
    access, refresh = body.get("access_token"), body.get("refresh_token")
    if not isinstance(access, str) or not access or not isinstance(refresh, str) or not refresh:
        raise CloverError("token refresh answer lacks access_token or refresh_token")
    return TokenGrant(
        access_token=access,
        access_expires_at=_instant(body.get("access_token_expiration"), 1.0),
        refresh_token=refresh,
        refresh_expires_at=_instant(body.get("refresh_token_expiration"), 1.0),
    )


def _retry_after(headers: CIMultiDictProxy[str]) -> float | None:
    try:
        return max(0.0, float(headers["Retry-After"]))
    except (KeyError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    headers: CIMultiDictProxy[str]  # names in any case: Clover prints them lower-case
    text: str  # scrubbed of every known secret: safe to quote, store and raise
    raw: str = field(repr=False)  # as sent: only a token grant is read from it

    def json(self, what: str) -> Any:
        return _parse_json(self.text, what)

    def grant_json(self, what: str) -> Any:
        """The answer as sent: a refresh may hand back a token the process already knows."""
        return _parse_json(self.raw, what)


def _parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise CloverError(f"{what}: unreadable answer: JSON nested too deeply") from None
    except ValueError as exc:
        raise CloverUnavailable(f"{what}: answer is not JSON: {scrub(text[:80])!r}") from exc


async def _read_answer(response: aiohttp.ClientResponse, what: str) -> str:
    """The body as text, refused past MAX_ANSWER_BYTES without reading the rest."""
    if (response.content_length or 0) > MAX_ANSWER_BYTES:
        raise CloverError(
            f"{what}: answer of {response.content_length} bytes refused "
            f"(an API answer is at most {MAX_ANSWER_BYTES} bytes)"
        )
    body = bytearray()
    async for piece in response.content.iter_chunked(DOWNLOAD_PIECE_BYTES):
        body += piece
        if len(body) > MAX_ANSWER_BYTES:
            raise CloverError(
                f"{what}: answer refused after {MAX_ANSWER_BYTES} bytes "
                f"(an API answer is at most {MAX_ANSWER_BYTES} bytes)"
            )
    try:
        return body.decode(response.charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return body.decode("utf-8", errors="replace")


class Writer(Protocol):
    """Where `download_file` streams a file's bytes (`output.folder.PartWriter`, in production)."""

    async def write(self, data: bytes) -> None: ...


class CloverApi:
    """One Clover API host. One request per call, no retries."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        limiter: RequestLimiter,
        request_timeout_s: float,
    ) -> None:
        self._session = session
        self._base_url = base_url
        self._limiter = limiter
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)

    async def create_export(
        self, merchant_id: str, token: str, export_type: ExportType, span: TimeRange
    ) -> ExportInfo:
        """POST an export of [start, end): Clover gets endTime = end - 1 ms (half-open)."""
        what = f"create {export_type} export {span}"
        answer = await self._request(
            "POST",
            f"/v3/merchants/{merchant_id}/exports",
            merchant_id,
            token,
            {"type": str(export_type), "startTime": span.start_ms, "endTime": span.end_ms - 1},
        )
        if answer.status in (401, 403):
            raise CreateDenied(
                f"{what}: Clover answered {answer.status} ({answer.text[:_BODY_IN_ERRORS]})",
                answer.status,
            )
        if answer.status == 503:
            # Window closed or server full: that depends on the host's window table, which
            # the gate holds (`gate.classify_503`).
            raise Unavailable503(
                f"{what}: Clover answered 503 {answer.text[:_BODY_IN_ERRORS]}", answer.text
            )
        if answer.status >= 500:
            # The POST arrived: the export may have been made before the server failed.
            raise AnswerLost(f"{what}: Clover answered {answer.status}")
        self._raise_for_status(answer, what)
        return parse_export(answer.json(what))

    async def token_reads_merchant(self, merchant_id: str, token: str) -> bool:
        """One cheap authenticated read, `GET /v3/merchants/{mId}`: does Clover take the token?

        False for a 401; True for an answer (a 403 too: the token was recognised).
        """
        what = f"read merchant {merchant_id}"
        answer = await self._request(
            "GET", f"/v3/merchants/{merchant_id}", merchant_id, token, None
        )
        if answer.status == 401:
            return False
        if answer.status == 403:
            return True
        self._raise_for_status(answer, what)
        return True

    async def get_export(self, merchant_id: str, token: str, export_id: str) -> ExportInfo:
        what = f"poll export {export_id}"
        answer = await self._request(
            "GET", f"/v3/merchants/{merchant_id}/exports/{export_id}", merchant_id, token, None
        )
        if answer.status == 404:
            raise ExportNotFound(f"Clover no longer knows export {export_id} (404)")
        self._raise_for_status(answer, what)
        info = parse_export(answer.json(what))
        if info.id != export_id:
            raise CloverError(f"asked for export {export_id}, Clover answered about {info.id}")
        return info

    async def refresh(self, merchant_id: str, client_id: str, refresh_token: str) -> TokenGrant:
        what = "refresh the access token"
        answer = await self._request(
            "POST",
            "/oauth/v2/refresh",
            merchant_id,
            None,
            {"client_id": client_id, "refresh_token": refresh_token},
        )
        if answer.status in (400, 401, 403):
            raise TokenRejected(f"refresh token rejected ({answer.status})")
        self._raise_for_status(answer, what)
        return parse_grant(answer.grant_json(what))

    async def _request(
        self, method: str, path: str, merchant_id: str, token: str | None, body: Any
    ) -> _Answer:
        headers = {"Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        try:
            async with (
                self._limiter.request(merchant_id),
                self._session.request(
                    method,
                    self._base_url + path,
                    json=body,
                    headers=headers,
                    timeout=self._timeout,
                    # A redirect could carry the bearer token to another host: refuse them.
                    allow_redirects=False,
                ) as response,
            ):
                raw = await _read_answer(response, f"{method} {path}")
                # Scrubbed where it enters: an error body may echo the Authorization header.
                return _Answer(
                    response.status,
                    CIMultiDictProxy(CIMultiDict(response.headers)),
                    scrub(raw),
                    raw,
                )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # Never connected: the request did not go out.
            raise CloverUnavailable(
                f"{method} {path}: {type(exc).__name__}: {scrub(str(exc))}"
            ) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AnswerLost(f"{method} {path}: {type(exc).__name__}: {scrub(str(exc))}") from exc

    def _raise_for_status(self, answer: _Answer, what: str) -> None:
        if answer.status < 300:
            return
        quoted = answer.text[:_BODY_IN_ERRORS]
        if answer.status == 429:
            raise RateLimited(
                f"{what}: rate limited (429)",
                scope=str(scope_of_header(answer.headers)),
                retry_after_s=_retry_after(answer.headers),
            )
        if answer.status == 401:
            raise TokenRejected(f"{what}: token rejected (401)")
        if answer.status >= 500:
            raise CloverUnavailable(f"{what}: Clover answered {answer.status} {quoted}")
        raise CloverRefused(f"{what}: Clover answered {answer.status} {quoted}")


async def download_file(
    session: aiohttp.ClientSession, url: str, writer: Writer, stall_timeout_s: float
) -> int:
    """Stream one export file, decoded, into `writer`; return the decoded size.

    No credentials: export file URLs are pre-signed and may be on another host. The body
    may come compressed (see encoding.py), and then Content-Length counts the bytes as sent:
    aiohttp reads exactly that many, undecoded, and a body that ends sooner is BadFile (cut
    short); `writer` gets the decoded JSON.
    """
    # A slow but moving body is fine; a body that stops moving is not.
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=stall_timeout_s, sock_read=stall_timeout_s
    )
    try:
        async with session.get(
            url,
            timeout=timeout,
            headers={"Accept-Encoding": ACCEPT_ENCODING},
            auto_decompress=False,
        ) as response:
            # A pre-signed URL grants access by its query: messages show host and path only
            # (`describe_url`), made when a message is, not for every file.
            if response.status in (403, 404, 410):
                raise FileExpired(
                    f"file host answered {response.status} for {describe_url(url)}: "
                    "the file has expired"
                )
            if response.status >= 500 or response.status == 429:
                raise CloverUnavailable(
                    f"file host answered {response.status} for {describe_url(url)}"
                )
            if response.status != 200:
                raise BadFile(f"file host answered {response.status} for {describe_url(url)}")
            decoder = BodyDecoder(response.headers.get("Content-Encoding"))
            decoded = 0
            async for piece in response.content.iter_chunked(DOWNLOAD_PIECE_BYTES):
                for data in decoder.feed(piece):
                    decoded += len(data)
                    await writer.write(data)
            for data in decoder.finish():
                decoded += len(data)
                await writer.write(data)
            return decoded
    except aiohttp.ClientPayloadError as exc:
        raise BadFile(f"{describe_url(url)}: body cut short: {scrub_url(str(exc), url)}") from exc
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise CloverUnavailable(
            f"download {describe_url(url)}: {type(exc).__name__}: {scrub_url(str(exc), url)}"
        ) from exc
