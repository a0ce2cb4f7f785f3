"""A loopback HTTP proxy in front of the S3 server that misbehaves on request.

It reads each request's head (and its Content-Length body) to decide, then either answers
with an error itself, or forwards the request unchanged (late, or once released) over the
connection's own upstream connection, piping the answers back as they come. The client
signs for the proxy's host, and the Host header goes upstream unchanged, so signatures hold.

Faults are data: `Fault(status=503, method="PUT", times=2)` answers the next two PUTs 503.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_CODES = {400: "InvalidRequest", 403: "AccessDenied", 500: "InternalError", 503: "SlowDown"}


@dataclass
class Fault:
    """What to do to matching requests: answer `status`, wait `delay_s`, or hold them."""

    method: str | None = None  # None: any
    path_contains: str = ""  # in the path and query, e.g. "uploadId=" or "/.staging/"
    status: int | None = None  # answer this instead of forwarding
    delay_s: float = 0.0  # forward, this much later
    hold: bool = False  # forward only once `release()` is called
    times: int | None = 1  # matching requests it applies to; None: all
    seen: int = 0  # matching requests so far
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # set at the first one

    def matches(self, method: str, target: str) -> bool:
        return (
            (self.times is None or self.seen < self.times)
            and (self.method is None or self.method == method)
            and self.path_contains in target
        )


class FaultProxy:
    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []  # (method, target), every one seen
        self._released = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._streams: set[asyncio.StreamWriter] = set()  # both ends of every connection

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def add(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        return fault

    def release(self) -> None:
        """Let every held request through, now and from now on."""
        self._released.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        for stream in self._streams:
            if not stream.transport.is_closing():  # a closed one has let go of its loop
                stream.transport.abort()
        await asyncio.sleep(0)  # the transports' connection_lost callbacks run
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self._streams.add(writer)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        pipe: asyncio.Task[None] | None = None
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, target, length, expects = _parse_head(head)
                if expects:
                    # Answered here, and the header dropped: upstream gets the body at once.
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    await writer.drain()
                    head = _without_expect(head)
                body = await reader.readexactly(length)
                self.requests.append((method, target))
                fault = next((f for f in self.faults if f.matches(method, target)), None)
                if fault is not None:
                    fault.seen += 1
                    fault.arrived.set()
                    if fault.status is not None:
                        writer.write(_error_answer(fault.status, with_body=method != "HEAD"))
                        await writer.drain()
                        continue
                    if fault.hold:
                        await self._released.wait()
                    await asyncio.sleep(fault.delay_s)
                if upstream is None:
                    upstream = await asyncio.open_connection(*self._upstream)
                    self._streams.add(upstream[1])
                    pipe = asyncio.create_task(_pipe(upstream[0], writer))
                upstream[1].write(head + body)
                await upstream[1].drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            if pipe is not None:
                pipe.cancel()
                await asyncio.gather(pipe, return_exceptions=True)
            # Both closed before any wait: a cancel during the waits must not skip a close.
            streams = [writer] if upstream is None else [writer, upstream[1]]
            for stream in streams:
                stream.close()
            self._connections.discard(task)
            for stream in streams:
                with contextlib.suppress(Exception):
                    await stream.wait_closed()


def _parse_head(head: bytes) -> tuple[str, str, int, bool]:
    """(method, target, Content-Length, whether it says "Expect: 100-continue")."""
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    length = 0
    expects = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "expect":
            expects = value.strip().lower() == "100-continue"
        elif name == "transfer-encoding":
            raise ValueError("the proxy does not read chunked request bodies")
    return method, target, length, expects


def _without_expect(head: bytes) -> bytes:
    lines = head.split(b"\r\n")
    return b"\r\n".join(line for line in lines if not line.lower().startswith(b"expect:"))


def _error_answer(status: int, with_body: bool) -> bytes:
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{_CODES.get(status, "Error")}'
        f"</Code><Message>injected by the test proxy</Message></Error>"
    ).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        f"Content-Type: application/xml\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + (body if with_body else b"")


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await source.read(64 * 1024):
            sink.write(data)
            await sink.drain()
    sink.close()  # upstream hung up: so does the proxy, and the client sees it


@contextlib.asynccontextmanager
async def fault_proxy(upstream_url: str) -> AsyncIterator[FaultProxy]:
    proxy = FaultProxy(upstream_url)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
