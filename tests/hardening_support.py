"""Shared by the hardening tests: a scriptable loopback HTTP server, a raw HTTP/1.1 client
through the proxy, and what the proxy process shows (its output, its memory).

The simulator answers what the Kernel service answers; these answer what a test needs that
no real server should send (a body in a coding that is not an HTTP coding, a brotli bomb,
a lone surrogate, a redirect from the VM), byte for byte as given.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import brotli
from mitmdump_runner import Mitmdump
from proxy_clients import API_KEY

AUTH = ("Authorization", f"Bearer {API_KEY}")
CRASH_MARKS = ("Addon error", "Traceback")


@dataclass
class Reply:
    """An answer as it goes on the wire: Content-Length is added unless a header says otherwise."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=lambda: [("Content-Type", "application/json")])
    body: bytes = b"{}"

    @classmethod
    def json(cls, doc: object, status: int = 200, *extra: tuple[str, str]) -> Reply:
        return cls(status, [("Content-Type", "application/json"), *extra], json.dumps(doc).encode())


@dataclass
class Seen:
    """One request as the server received it, and the answer it sent."""

    method: str
    target: str  # the request target as received: path and query, undecoded
    headers: list[tuple[str, str]]
    body: bytes
    reply: Reply | None = None

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


Answerer = Reply | Callable[[Seen], Reply]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def handle_one_request(self) -> None:
        try:
            self.raw_requestline = self.rfile.readline(1 << 20)
            if not self.raw_requestline or not self.parse_request():
                self.close_connection = True
                return
            seen = Seen(self.command, self.path, list(self.headers.items()), self._body())
            answerer = self.server.scripted.answerer(seen)
            reply = answerer(seen) if callable(answerer) else answerer
            headers = list(reply.headers)
            if not {k.lower() for k, _ in headers} & {"content-length", "transfer-encoding"}:
                headers.append(("Content-Length", str(len(reply.body))))
            seen.reply = Reply(reply.status, headers, reply.body)  # as it went on the wire
            self.server.scripted.record(seen)
            head = [f"HTTP/1.1 {reply.status} {http.client.responses.get(reply.status, 'Status')}"]
            head += [f"{k}: {v}" for k, v in headers]
            self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + reply.body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr: tuple[str, int], scripted: ScriptedServer) -> None:
        self.scripted = scripted
        super().__init__(addr, _Handler)

    def server_bind(self) -> None:  # no reverse DNS lookup (HTTPServer's getfqdn)
        import socketserver

        socketserver.TCPServer.server_bind(self)


class ScriptedServer:
    """A plain-HTTP loopback server that answers each path as told and records every request.

    `on(path, reply)` answers requests whose path (without query) is `path`; a callable reply
    is given the request. Unknown paths get a 404 JSON body."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._answers: dict[str, Answerer] = {}
        self._seen: list[Seen] = []
        self._lock = threading.Lock()
        self._server: _Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def on(self, path: str, reply: Answerer) -> None:
        with self._lock:
            self._answers[path] = reply

    def answerer(self, seen: Seen) -> Answerer:
        with self._lock:
            return self._answers.get(seen.path, Reply.json({"code": "not_found"}, 404))

    def record(self, seen: Seen) -> None:
        with self._lock:
            self._seen.append(seen)

    def seen(self, path_part: str = "") -> list[Seen]:
        with self._lock:
            return [s for s in self._seen if path_part in s.target]

    def start(self) -> ScriptedServer:
        self._server = _Server((self.host, 0), self)
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------- raw client


@dataclass
class RawAnswer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes  # as received: never decoded
    seconds: float

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def raw_request(
    proxy: Mitmdump,
    method: str,
    url: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    timeout: float = 15,
) -> RawAnswer:
    """One HTTP/1.1 request to the proxy in absolute form, headers exactly as given (the API
    key unless `headers` says otherwise), and the answer undecoded."""
    headers = [AUTH] if headers is None else headers
    host = urlsplit(url).netloc
    lines = [f"{method} {url} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers)]
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)  # header bytes as given
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        content = response.read()
        return RawAnswer(response.status, list(response.getheaders()), content, time.monotonic() - started)


def request_headers(host: str, headers: list[tuple[str, str]], body: bytes) -> list[tuple[str, str]]:
    """The header list `raw_request` sends: what the upstream must receive when no rule applies."""
    sent = [("Host", host), *headers]
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
        sent.append(("Content-Length", str(len(body))))
    return sent


# --------------------------------------------------------------------------- the proxy process


def crashes(proxy: Mitmdump, since: int = 0) -> list[str]:
    """Lines of the proxy's output, from line `since` on, that show a hook raised."""
    return [line for line in proxy.output[since:] if any(mark in line for mark in CRASH_MARKS)]


def browser(session_id: str, base_url: str, jwt: str = "tok-abc.def.ghi", **extra: Any) -> dict[str, Any]:
    """A browser object as the CP returns it."""
    return {"session_id": session_id, "base_url": base_url, "jwt": jwt, "headless": True, **extra}


def brotli_bomb(prefix: bytes, inflated_mib: int = 1100, filler: bytes = b" ") -> bytes:
    """`prefix` then `inflated_mib` MiB of `filler`, brotli-compressed to a couple of KB,
    built in chunks so the test itself never holds the inflated text."""
    compressor = brotli.Compressor(quality=5)
    out = [compressor.process(prefix)]
    chunk = filler * (1 << 20)
    out += [compressor.process(chunk) for _ in range(inflated_mib)]
    out.append(compressor.finish())
    return b"".join(out)
