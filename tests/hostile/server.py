"""A hostile Clover on loopback: one mode per answer that breaks the rules.

Unlike the simulator, which plays Clover's plausible behaviours, this server plays a
broken or malicious one. It is deliberately small: a create answers an export, a poll
answers DONE with file URLs on the same server, and a file is one small valid part; the
mode replaces exactly one of these answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from enum import StrEnum
from pathlib import Path

from aiohttp import web

EXPORT_ID = "HOSTILE000001"
SIGNATURE = "X-Amz-Signature=5ec7e75ec7e75ec7e75ec7e7"  # what a pre-signed URL's query grants
GOOD_FILE = json.dumps({"elements": [{"id": f"OBJ{n:05d}"} for n in range(10)]}).encode()


class Mode(StrEnum):
    GOOD = "good"  # behaves: every chunk completes
    ECHO_CREATE_400 = "echo_create_400"  # a 400 on create whose body echoes the request
    ECHO_POLL_500 = "echo_poll_500"  # a 500 on poll whose body echoes the request
    TOKEN_IN_FIELDS = "token_in_fields"  # the token inside the export's status and id
    FILE_ERROR_500 = "file_error_500"  # the file host answers 500, the URL carries a grant
    ENDLESS_FILE = "endless_file"  # a file body that never ends
    TRICKLE_FILE = "trickle_file"  # a file body sent one byte at a time, slowly
    HUGE_ANSWER = "huge_answer"  # a poll answer that never ends
    EXPORT_ID_PATH = "export_id_path"  # an export id that climbs out of its path
    DUPLICATE_URLS = "duplicate_urls"  # exportUrls listing one URL many times
    DEEP_NESTING = "deep_nesting"  # a poll answer nested a hundred thousand levels deep
    BIG_FILE = "big_file"  # a valid part of ~3 MB (fills a small disk)
    HANG_FILE = "hang_file"  # a file that never starts to arrive
    HOLD_CREATE = "hold_create"  # a create answered only once `release` exists


class HostileServer:
    """Serves `mode` on 127.0.0.1; counts what it was asked."""

    def __init__(self, mode: Mode, release: Path | None = None, arrived: Path | None = None):
        self.mode = mode
        self.requests: Counter[str] = Counter()
        self.file_bytes_sent = 0
        self._release = release  # HOLD_CREATE: answer the create once this file exists
        self._arrived = arrived  # HOLD_CREATE: created when the create arrives
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()  # set on exit: hanging answers end
        self.url = ""

    async def __aenter__(self) -> HostileServer:
        app = web.Application()
        app.router.add_post("/v3/merchants/{merchant}/exports", self._create)
        app.router.add_get("/v3/merchants/{merchant}/exports/{export_id}", self._poll)
        app.router.add_get("/files/{name}", self._file)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        port = server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        self._closing.set()
        await self._runner.cleanup()

    def _export(
        self, export_id: str, status: str, urls: list[str] | None = None
    ) -> dict[str, object]:
        body: dict[str, object] = {"id": export_id, "status": status, "percentComplete": 0}
        if urls is not None:
            body["percentComplete"] = 100
            body["exportUrls"] = {"elements": [{"url": url} for url in urls]}
        return body

    def _export_id(self, request: web.Request) -> str:
        self.requests["creates_answered"] += 1
        return f"{EXPORT_ID[:-2]}{self.requests['creates_answered']:02d}"

    async def _create(self, request: web.Request) -> web.StreamResponse:
        self.requests["create"] += 1
        authorization = request.headers.get("Authorization", "")
        if self.mode is Mode.ECHO_CREATE_400:
            glued = f"X{authorization.removeprefix('Bearer ')}X"  # an echo without a boundary
            body = await request.text()
            echo = f"bad request: you sent Authorization: {authorization}, {glued} and {body}"
            return web.Response(status=400, text=echo)
        if self.mode is Mode.EXPORT_ID_PATH:
            return web.json_response(self._export("../../../etc", "PENDING"))
        if self.mode is Mode.TOKEN_IN_FIELDS:
            token = authorization.removeprefix("Bearer ")
            return web.json_response(self._export(EXPORT_ID, f"PENDING {token}"))
        if self.mode is Mode.HOLD_CREATE:
            assert self._release is not None
            assert self._arrived is not None
            self._arrived.touch()
            # The release is a file another process writes: nothing to wait on but the disk.
            while not self._release.exists():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        return web.json_response(self._export(self._export_id(request), "PENDING"))

    async def _poll(self, request: web.Request) -> web.StreamResponse:
        self.requests["poll"] += 1
        export_id = request.match_info["export_id"]
        if self.mode is Mode.ECHO_POLL_500:
            authorization = request.headers.get("Authorization", "")
            return web.Response(status=500, text=f"internal error for {authorization}")
        if self.mode is Mode.TOKEN_IN_FIELDS:
            token = request.headers.get("Authorization", "").removeprefix("Bearer ")
            return web.json_response(self._export(export_id, f"FAILED {token}"))
        if self.mode is Mode.HUGE_ANSWER:
            response = web.StreamResponse()
            await response.prepare(request)
            await response.write(b'{"id": "' + export_id.encode() + b'", "padding": "')
            with contextlib.suppress(ConnectionError):  # until the harvester hangs up
                while True:
                    await response.write(b"x" * 65536)
            return response
        if self.mode is Mode.DEEP_NESTING:
            return web.Response(text="[" * 100_000 + "]" * 100_000, content_type="application/json")
        name = f"{export_id}-1.json"
        url = f"{self.url}/files/{name}?{SIGNATURE}"
        urls = [url] * 20_000 if self.mode is Mode.DUPLICATE_URLS else [url]
        return web.json_response(self._export(export_id, "DONE", urls))

    async def _file(self, request: web.Request) -> web.StreamResponse:
        self.requests["file"] += 1
        if self.mode is Mode.FILE_ERROR_500:
            return web.Response(status=500, text=f"cannot serve {request.path_qs}")
        if self.mode is Mode.HANG_FILE:
            await self._closing.wait()
            return web.Response(status=503)
        response = web.StreamResponse()
        await response.prepare(request)
        if self.mode is Mode.ENDLESS_FILE:
            await response.write(b'{"elements": [')
            piece = b'{"id": "X"},' * 5000
            with contextlib.suppress(ConnectionError):  # until the harvester hangs up
                while True:
                    await response.write(piece)
                    self.file_bytes_sent += len(piece)
            return response
        if self.mode is Mode.TRICKLE_FILE:
            with contextlib.suppress(ConnectionError):
                while True:
                    await response.write(b" ")
                    self.file_bytes_sent += 1
                    await asyncio.sleep(0.1)
            return response
        body = GOOD_FILE
        if self.mode is Mode.BIG_FILE:
            padding = "p" * 3000
            body = json.dumps(
                {"elements": [{"id": f"BIG{n:04d}", "padding": padding} for n in range(1000)]}
            ).encode()
        await response.write(body)
        self.file_bytes_sent += len(body)
        await response.write_eof()
        return response
