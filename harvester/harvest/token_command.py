"""Access tokens from the app that owns them: `token_command`, run once per merchant and token.

It follows the credential-process convention (AWS CLI's `credential_process`, kubectl's exec
plugins, git's credential helpers): the program runs without a shell, with the merchant id
appended as its last argument and CLOVER_MERCHANT_ID and CLOVER_REGION added to the
process's environment, and prints one JSON object on stdout:
`{"access_token": "...", "expires_at": "2026-12-05T00:00:00Z"}` (`expires_at` optional: ISO
8601 or epoch seconds; without it the token is kept `ttl_s`).

What the command prints is hostile text. Its stdout is read up to 64 KiB (past that it is
killed); the token is registered with the scrubber the moment it is read, before anything
can log it; its stderr is kept up to 64 KiB and only its first line, scrubbed and cut short,
ever reaches a message. A run gets `timeout_s` of real time (the program runs in real time,
as a request to Clover does, whatever clock the harvest is given); then its whole process
group is killed. A token from the command is never stored: not in the state, not in a log.

The harvester asks again when the token is within the refresh margin of its expiry, and
once after a 401; a command that hands back the token Clover just refused leaves the
merchant "token rejected". A command that fails fails its merchant for the run: later asks
get the same error without running it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from harvester.clock import Clock
from harvester.config import TokenCommand
from harvester.errors import TokenCommandFailed
from harvester.logs import get_logger
from harvester.scrub import MIN_TOKEN_CHARS, register_secret, scrub

MAX_STDOUT_BYTES = 64 * 1024
MAX_STDERR_BYTES = 64 * 1024  # kept to find the first line; the rest is drained unread
MAX_STDERR_LINE_CHARS = 200
REAP_S = 5.0  # after a kill, the longest wait for the pipes to close
# An access token goes into an Authorization header: visible ASCII, no spaces.
_TOKEN = re.compile(r"[\x21-\x7e]+")
_EPOCH = re.compile(r"\d+(\.\d+)?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class CommandAnswer:
    """What the command printed, read. The token stays out of reprs."""

    access_token: str = field(repr=False)
    expires_at: datetime | None  # None: not said; the token is kept ttl_s


def read_answer(stdout: bytes) -> CommandAnswer:
    """The command's stdout read as the protocol says; ValueError saying what is wrong with
    it, never quoting it. Any access token in it is registered with the scrubber first."""
    try:
        text = stdout.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("its output is not UTF-8 text") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        _register_bare_token(text)
        raise ValueError(
            f"its output is not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            'expected {"access_token": "...", "expires_at": "..."}'
        ) from None
    if not isinstance(value, dict):
        raise ValueError(f"its output is JSON but not an object (got {type(value).__name__})")
    token = value.get("access_token")
    if isinstance(token, str):
        # Stripped: what surrounds it is never part of it (and a whole-word match finds it).
        register_secret(token.strip())
    if not isinstance(token, str) or not token.strip():
        raise ValueError("its output has no access_token (text)")
    token = token.strip()
    if not _TOKEN.fullmatch(token):
        raise ValueError("its access_token holds spaces or characters a header cannot carry")
    return CommandAnswer(token, _expires_at(value.get("expires_at")))


def _register_bare_token(text: str) -> None:
    """A command that prints the bare token instead of JSON is a likely mistake: that text
    is blotted out too, in case its stderr says it again."""
    word = text.strip()
    if len(word) >= MIN_TOKEN_CHARS and len(word) <= 4096 and _TOKEN.fullmatch(word):
        register_secret(word)


def _expires_at(value: object) -> datetime | None:
    if value is None:
        return None
    shown = repr(value)[:60]
    if isinstance(value, str) and _EPOCH.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            if not math.isfinite(value):
                raise ValueError
            return datetime.fromtimestamp(value, UTC)
        except (ValueError, OverflowError, OSError):
            raise ValueError(f"its expires_at {shown} is not a time") from None
    if isinstance(value, str):
        try:
            instant = datetime.fromisoformat(value.strip())
        except ValueError:
            instant = None
        if instant is not None and instant.tzinfo is not None:
            return instant.astimezone(UTC)
    raise ValueError(
        f"its expires_at {shown} is neither epoch seconds nor ISO 8601 with an offset "
        "(like 2026-12-05T00:00:00Z)"
    )


class _Capture:
    """A pipe read to its end, keeping at most `limit` bytes; `on_overflow` is called once,
    when the limit is first passed.

    It always reads to the end, even past the limit: a pipe left unread stays open (its
    reader may have paused it), and a process is only reaped once its pipes are closed.
    """

    def __init__(self, limit: int, on_overflow: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self.data = bytearray()
        self.overflowed = False
        self._on_overflow = on_overflow

    async def read(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(64 * 1024):
            room = self.limit - len(self.data)
            self.data += chunk[: max(room, 0)]
            if len(chunk) > room and not self.overflowed:
                self.overflowed = True
                if self._on_overflow is not None:
                    self._on_overflow()


def first_line(stderr: bytes) -> str:
    """The first non-empty line of a command's stderr as it may be shown: scrubbed, bounded."""
    text = stderr.decode("utf-8", errors="replace")
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    # Scrubbed whole, then cut: a cut first could leave a piece of a token the scrubber misses.
    line = scrub(_CONTROL.sub("?", line))
    if len(line) > MAX_STDERR_LINE_CHARS:
        line = f"{line[: MAX_STDERR_LINE_CHARS - 3]}..."
    return line or "(empty)"


class TokenCommandRunner:
    """Runs `token_command` for any merchant, at most `concurrency` runs at once."""

    def __init__(self, command: TokenCommand, environ: Mapping[str, str] | None = None) -> None:
        self._command = command
        self._environ = environ
        self._runs = asyncio.Semaphore(command.concurrency)

    def __repr__(self) -> str:
        return f"TokenCommandRunner({self._command.shown})"

    async def fetch(self, merchant_id: str, region: str) -> CommandAnswer:
        """The merchant's current token, or TokenCommandFailed."""
        async with self._runs:
            return await self._run(merchant_id, region)

    def failure(self, what: str, stderr: bytes | None = None) -> TokenCommandFailed:
        """The error for a run that went wrong: the command, what happened, its stderr."""
        shown = scrub(self._command.shown)
        said = f"; stderr: {first_line(stderr)}" if stderr is not None else ""
        return TokenCommandFailed(f"token_command {shown}: {what}{said}")

    async def _run(self, merchant_id: str, region: str) -> CommandAnswer:
        command = self._command
        environ = os.environ if self._environ is None else self._environ
        try:
            process = await asyncio.create_subprocess_exec(
                *command.argv,
                merchant_id,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**environ, "CLOVER_MERCHANT_ID": merchant_id, "CLOVER_REGION": region},
                # Its own process group: a timeout kills whatever it started, too.
                start_new_session=True,
            )
        except OSError as exc:
            raise self.failure(f"cannot start it: {exc.strerror or exc}") from None
        out = _Capture(MAX_STDOUT_BYTES, on_overflow=lambda: _kill(process))
        err = _Capture(MAX_STDERR_BYTES)
        timed_out = finished = False
        try:
            async with asyncio.timeout(command.timeout_s):
                await _finish(process, out, err)
            finished = True
        except TimeoutError:
            timed_out = True
        finally:
            if not finished:
                _kill(process)
                await asyncio.shield(_reap(process))
        stderr = bytes(err.data)
        if timed_out:
            raise self.failure(f"timed out after {command.timeout_s:g} s (killed)", stderr)
        if out.overflowed:
            raise self.failure(f"printed more than {MAX_STDOUT_BYTES} bytes (killed)", stderr)
        status = process.returncode
        try:
            # Read even after a failure: a token in it must be scrubbed from its stderr too.
            answer = read_answer(bytes(out.data))
        except ValueError as exc:
            problem = f"exited with status {status}" if status else f"exited 0 but {exc}"
            raise self.failure(problem, stderr) from None
        if status != 0:
            raise self.failure(f"exited with status {status}", stderr)
        return answer


def _kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


async def _finish(process: asyncio.subprocess.Process, out: _Capture, err: _Capture) -> None:
    """Both pipes read to their end, then the process reaped."""
    assert process.stdout is not None
    assert process.stderr is not None
    await asyncio.gather(out.read(process.stdout), err.read(process.stderr))
    await process.wait()


async def _reap(process: asyncio.subprocess.Process) -> None:
    """A killed process reaped, its pipes drained so that they close: at most REAP_S, as a
    child that escaped the process group may still hold them open."""
    assert process.stdout is not None
    assert process.stderr is not None
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(REAP_S):
            await _finish(process, _Capture(0), _Capture(0))


class CommandToken:
    """One merchant's token from `token_command` (a `TokenSource`): asked for when first
    needed, again within `margin_s` of its expiry, and once more after a 401."""

    def __init__(
        self,
        merchant_id: str,
        region: str,
        runner: TokenCommandRunner,
        clock: Clock,
        margin_s: float,
        ttl_s: float,
    ) -> None:
        self._merchant_id = merchant_id
        self._region = region
        self._runner = runner
        self._clock = clock
        self._margin = timedelta(seconds=margin_s)
        self._ttl = timedelta(seconds=ttl_s)
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._expires_at = datetime.min.replace(tzinfo=UTC)
        self._refused: str | None = None  # a token Clover refused that the command gave again
        self._failure: TokenCommandFailed | None = None

    def __repr__(self) -> str:
        return f"CommandToken(merchant_id={self._merchant_id!r})"

    async def get(self) -> str:
        async with self._lock:
            if self._token is None or self._clock.now() >= self._expires_at - self._margin:
                await self._fetch()
            assert self._token is not None
            return self._token

    async def rejected(self, token: str) -> bool:
        async with self._lock:
            if self._token is not None and token != self._token:
                return True  # another coroutine already asked again while this one waited
            if token == self._refused:
                return False
            await self._fetch()
            if self._token == token:
                self._refused = token
                get_logger().error(
                    "token.rejected",
                    merchant=self._merchant_id,
                    source="token_command",
                    error="Clover refused the token and the command gave the same one again",
                )
                return False
            return True

    async def _fetch(self) -> None:
        if self._failure is not None:
            raise self._failure
        try:
            answer = await self._runner.fetch(self._merchant_id, self._region)
        except TokenCommandFailed as exc:
            self._failure = exc
            self._token = None
            raise
        now = self._clock.now()
        expires_at = answer.expires_at or now + self._ttl
        if expires_at <= now:
            self._failure = self._runner.failure(
                f"gave a token that expired at {expires_at.isoformat()} (now {now.isoformat()})"
            )
            self._token = None
            raise self._failure
        self._token = answer.access_token
        self._expires_at = expires_at
        get_logger().info(
            "token.fetched",
            merchant=self._merchant_id,
            source="token_command",
            expires_at=expires_at.isoformat(),
            expires_at_given=answer.expires_at is not None,
        )
