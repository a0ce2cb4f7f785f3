"""The harvester's exceptions: one root, a few branches.

Foreign exceptions (aiohttp, sqlite3, OSError) are translated into these at the edge,
so that the scheduler never sees a library's types.
"""

from __future__ import annotations

from datetime import datetime


class HarvesterError(Exception):
    """Root of everything the harvester raises on purpose."""


class ConfigError(HarvesterError):
    """Bad configuration or command line; the message names the culprit. Exit code 2."""


class StoreError(HarvesterError):
    """The state store could not be read or written."""


class ChunkOverlap(StoreError):
    """A new chunk would overlap a known one of the same merchant and type."""


class CloverError(HarvesterError):
    """Clover answered something other than what we asked for."""


class CloverUnavailable(CloverError):
    """A transient failure: connection error, timeout, 5xx. Worth retrying with backoff."""


class Unavailable503(CloverUnavailable):
    """A 503 on creating an export. Whether the window is closed or the server is full
    depends on `body` and on the host's window table: the gate decides (`classify_503`)."""

    def __init__(self, message: str, body: str) -> None:
        super().__init__(message)
        self.body = body


class WindowClosed(CloverUnavailable):
    """A 503 that speaks of available hours: the export window is closed."""

    def __init__(self, message: str, reopens_at: datetime | None = None) -> None:
        super().__init__(message)
        self.reopens_at = reopens_at


class ServerBusy(CloverUnavailable):
    """A 503 while the window is open: the server runs as many exports as it can."""


class RateLimited(CloverError):
    """A 429. `scope` is "token" (this merchant's token) or "app" (every token on the host)."""

    def __init__(self, message: str, scope: str, retry_after_s: float | None) -> None:
        super().__init__(message)
        self.scope = scope
        self.retry_after_s = retry_after_s


class AnswerLost(CloverUnavailable):
    """The request went out but no usable answer came back (a timeout, a reset, a 5xx).

    On a create, Clover may have made the export anyway: an orphan that holds a server slot.
    """


class CloverRefused(CloverError):
    """Clover refused the request in a way that retrying will not fix."""


class PermissionMissing(CloverRefused):
    """The app lacks Clover's export permission for the merchant (its token works)."""


class CreateDenied(CloverRefused):
    """401 or 403 on creating an export: a rejected token or a missing export permission.

    Clover answers 401 for both, and a 403 is reported too; a cheap read with the same token
    tells them apart (see MerchantClient).
    """

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class TokenRejected(CloverRefused):
    """401: the access token is not (or no longer) accepted."""


class TokenCommandFailed(HarvesterError):
    """`token_command` timed out, exited non-zero, or printed no usable token: that merchant
    fails for this run. The message names the command, its exit status and the first line of
    its stderr (scrubbed), never a token."""


class ExportNotFound(CloverRefused):
    """404 on an export id: the server no longer knows it."""


class ExportFailed(HarvesterError):
    """An export ended without usable files: an unknown status, DONE without URLs, a stall."""


class DownloadError(HarvesterError):
    """A file could not be downloaded intact."""


class BadFile(DownloadError):
    """The body was truncated, not JSON, or broke the 1000-object rule: download it again."""


class FileTooLarge(DownloadError):
    """The file grew past max_file_bytes: not downloaded again, it would be just as big."""


class FileExpired(DownloadError):
    """The file host answered 403/404/410, or availableUntil has passed: export again."""


class OutputError(HarvesterError):
    """The output (the folder or the bucket) could not be read or written.

    `errno` is the OSError's code when a folder failed (ENOSPC, EROFS, ...), else None.
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno
