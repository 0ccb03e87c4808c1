"""One request as the simulator serves it on aiohttp: recorded when it arrives, answered
(whole, streamed, or reset), its record finished just before the last bytes go out."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from aiohttp import HttpVersion11, web

from .state import State

Headers = Iterable[tuple[str, str]]


class Exchange:
    """A request on one side (cp or vm) and the helpers that answer it."""

    def __init__(self, request: web.BaseRequest, side: str, host_key: str, state: State) -> None:
        split = urlsplit(request.raw_path)
        self.request = request
        self.side = side
        self.host_key = host_key
        self.method = request.method
        self.path = split.path or "/"
        self.query = split.query
        self.headers = request.headers
        self.body = b""
        self.status = 0  # what was answered; 0 for a reset
        self._state = state
        self._record: tuple[dict[str, Any], int] | None = None

    def begin_record(self) -> None:
        """Count the request (controls are never counted)."""
        self._record = self._state.begin(
            self.side, self.host_key, self.method, self.path, self.query, self.headers
        )

    async def read_body(self) -> bytes:
        if self.request.version == HttpVersion11 and self.headers.get("Expect", "").lower() == "100-continue":
            await self.request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.request.writer.output_size = 0
        self.body = await self.request.content.read()  # whole, at any size (request.read() stops at 1 MiB)
        if self._record is not None:
            self._state.record_body(self._record[0], self.body)
        return self.body

    def complete(self) -> None:
        """Finish the record, once.

        Called just before the last bytes go out, so a client that has read a whole
        response always finds its record finished (status, t_end, in-flight count).
        """
        record, self._record = self._record, None
        if record is not None:
            self._state.finish(self.side, record[0], record[1], self.status)

    # -- whole answers -----------------------------------------------------

    def raw(self, status: int, headers: Headers, body: bytes) -> web.Response:
        self.status = status
        resp = web.Response(status=status, body=body or None)
        for key, value in headers:
            resp.headers.add(key, value)
        return resp

    def json(self, status: int, obj: object, headers: Mapping[str, str] | None = None) -> web.Response:
        hdrs = [("Content-Type", "application/json"), *(headers or {}).items()]
        return self.raw(status, hdrs, json.dumps(obj).encode())

    def error(self, status: int, code: str, message: str) -> web.Response:
        return self.json(status, {"code": code, "message": message})

    # -- streamed answers --------------------------------------------------

    async def start_stream(
        self, status: int, headers: Headers, *, send_now: bool = False
    ) -> web.StreamResponse:
        """A chunked answer; each write goes out at once (aiohttp sets TCP_NODELAY).

        The headers go out with the first chunk, or at once with `send_now`.
        """
        self.status = status
        resp = web.StreamResponse(status=status)
        for key, value in headers:
            resp.headers.add(key, value)
        resp.enable_chunked_encoding()
        await resp.prepare(self.request)
        if send_now:
            self.request.writer.send_headers()
        return resp

    async def end_stream(self, resp: web.StreamResponse) -> web.StreamResponse:
        self.complete()
        await resp.write_eof()
        return resp

    def truncate(self, resp: web.StreamResponse) -> web.StreamResponse:
        """Close the connection without the terminating chunk: the client sees a cut stream."""
        self.complete()
        transport = self.request.transport
        if transport is not None:
            transport.close()
        return resp  # aiohttp's write_eof then finds the connection closing and lets it go

    # -- no answer ---------------------------------------------------------

    def reset(self) -> web.StreamResponse:
        """Abort with a TCP RST and no HTTP response (SO_LINGER 0, then abort)."""
        self.status = 0
        self.complete()
        transport = self.request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        return web.Response()  # never sent: the transport is gone

    def drop(self) -> web.StreamResponse:
        """Close the connection: the client went away or sent garbage."""
        self.complete()
        transport = self.request.transport
        if transport is not None:
            transport.close()
        return web.Response()
