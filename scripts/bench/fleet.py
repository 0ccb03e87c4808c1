"""The bench's own CP and VM for the figures of many routes: a CP listing as many browsers as
asked, a VM counting what reaches it, and a routes file written as the addon writes it."""

from __future__ import annotations

import json
import socketserver
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import httpx
from mitmdump_runner import Mitmdump

from .base import AUTH, ROOT, SUBRESOURCES

JWT_LENGTH = 175
PAGE = 250  # browsers per CP list page


def session_id(i: int) -> str:
    return f"{i:024x}"


def jwt(i: int) -> str:
    """A jwt of JWT_LENGTH characters, unique per browser: three base64url parts, as a real
    one has (the padding letters leave no stray bits, as an encoder's output never does)."""
    head = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    body = f"eyJzZXNzaW9uX2lkIjoi{i:024x}".ljust(94, "Q")
    return f"{head}.{body}.".ljust(JWT_LENGTH, "A")


def browser(i: int, vm: str) -> dict[str, Any]:
    token = jwt(i)
    return {
        "session_id": session_id(i),
        "created_at": "2026-01-01T00:00:00.000Z",
        "cdp_ws_url": f"wss://{vm}/browser/cdp?jwt={token}",
        "browser_live_view_url": f"https://{vm}/browser/live?jwt={token}",
        "base_url": f"http://{vm}/browser/kernel",
        "headless": False,
        "stealth": False,
        "timeout_seconds": 60,
    }


class _BenchHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _BenchServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        split = urlsplit(self.path)
        status, body, headers = self.server.answer(split.path, parse_qs(split.query))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


class _BenchServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, host: str, answer: Callable[[str, dict[str, list[str]]], Any]) -> None:
        self.answer = answer
        self.host = host
        super().__init__((host, 0), _BenchHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def server_bind(self) -> None:  # no reverse DNS lookup
        socketserver.TCPServer.server_bind(self)

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class Fleet:
    """A CP on 127.0.0.1 listing as many browsers as asked (`/browsers?offset&limit`), all on
    a VM at 127.0.0.2 that answers any request with 200 and counts them."""

    def __init__(self) -> None:
        self.vm_hits = 0
        self.vm = _BenchServer("127.0.0.2", self._vm)
        self.vm_netloc = self.vm.origin.removeprefix("http://")
        self.cp = _BenchServer("127.0.0.1", self._cp)

    def _vm(self, path: str, query: dict[str, list[str]]) -> tuple[int, bytes, dict[str, str]]:
        self.vm_hits += 1
        return 200, b'{"ok":true}', {}

    def _cp(self, path: str, query: dict[str, list[str]]) -> tuple[int, bytes, dict[str, str]]:
        if path != "/browsers":
            return 404, b'{"code":"not_found","message":"route not found"}', {}
        offset, limit = int(query["offset"][0]), int(query["limit"][0])
        return 200, self.page(offset, limit), {"X-Has-More": "true", "X-Next-Offset": str(offset + limit)}

    def page(self, offset: int, limit: int) -> bytes:
        return json.dumps([browser(i, self.vm_netloc) for i in range(offset, offset + limit)]).encode()

    def options(self, vm_hosts: str, **extra: str) -> dict[str, str]:
        return {
            "browserrouting_control_plane": self.cp.origin,
            "browserrouting_vm_hosts": vm_hosts,
            "browserrouting_subresources": SUBRESOURCES,
            "browserrouting_log": "",
            **extra,
        }

    def feed(self, proxy: Mitmdump, count: int, start: int = 0) -> None:
        with httpx.Client(proxy=proxy.url, headers=AUTH, timeout=300, trust_env=False) as c:
            for offset in range(start, start + count, PAGE):
                c.get(f"{self.cp.origin}/browsers", params={"offset": offset, "limit": min(PAGE, count)})

    def routes(self, proxy: Mitmdump, *indexes: int) -> int:
        """How many of these browsers' routed requests reach the VM through `proxy`."""
        before = self.vm_hits
        with httpx.Client(proxy=proxy.url, headers=AUTH, timeout=60, trust_env=False) as c:
            for i in indexes:
                c.get(f"{self.cp.origin}/browsers/{session_id(i)}/fs/read_file?path=/x")
        return self.vm_hits - before

    def write_routes_file(self, path: Path, count: int) -> None:
        """A routes file holding `count` browsers' routes, written as the addon writes it."""
        objects = [browser(i, self.vm_netloc) for i in range(count)]
        try:
            sys.path.insert(0, str(ROOT))
            from addon.route_cache import dump_routes, route_from_object

            text = dump_routes(
                [r for o in objects if (r := route_from_object(cast(dict[object, object], o)))]
            )
        except (ImportError, AttributeError, TypeError):
            entries = [{"session_id": o["session_id"], "base_url": o["base_url"], "jwt": jwt(i)} for i, o in
                       enumerate(objects)]  # fmt: skip
            text = json.dumps({"routes": entries})
        path.write_text(text)
        path.chmod(0o600)

    def close(self) -> None:
        self.cp.close()
        self.vm.close()


def quiet_dropped_connections() -> None:
    """A load generator that stops drops its connections: the servers print no traceback for that."""
    handle_error = socketserver.BaseServer.handle_error

    def quiet(self: socketserver.BaseServer, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            handle_error(self, request, client_address)

    socketserver.BaseServer.handle_error = quiet  # type: ignore[method-assign]
