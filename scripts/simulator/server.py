"""The `Simulator` class: the CP and the VM on aiohttp, in a loop of their own on a background
thread, the VM's certificate from a throwaway CA (trustme), and the synchronous Python API."""

from __future__ import annotations

import asyncio
import functools
import logging
import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import trustme
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from .control import handle_control, is_control, text_arg
from .cp import ControlPlane
from .exchange import Exchange
from .shapes import VM_PREFIX, redact
from .state import Fault, State, require_loopback
from .vm import handle_vm

log = logging.getLogger("kernel_simulator")

SHUTDOWN_TIMEOUT = 0.5  # seconds stop() gives a request still arriving (every answer ends on stop)
SERVER_OPTIONS: dict[str, Any] = {
    "access_log": None,  # one line per request is logged by _serve, with the jwt redacted
    "keepalive_timeout": 120,  # idle keep-alive connections are dropped after this
    "max_line_size": 65536,  # long request lines and headers, as http.server took them
    "max_field_size": 65536,
}


def _write_certs(directory: Path, *hosts: str) -> tuple[Path, ssl.SSLContext, ssl.SSLContext]:
    """A throwaway CA (its cert written as vm-cert.pem, for clients to trust) and a leaf for
    `hosts` and localhost: (cert path, server context, a client context trusting it)."""
    ca = trustme.CA()
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / "vm-cert.pem"
    ca.cert_pem.write_to_path(str(cert_path))
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(*hosts, "localhost").configure_cert(server_ctx)
    server_ctx.set_alpn_protocols(["http/1.1"])  # no h2 here; tell clients early
    return cert_path, server_ctx, ssl.create_default_context(cafile=str(cert_path))


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket's first half, bound now so that its port is known before any request."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class _Server(web.Server):
    """aiohttp's low-level server, also keeping each open connection's transport: stop() cuts
    what a graceful close leaves open (a TLS close waits for the peer's close_notify)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.transports: dict[RequestHandler, asyncio.Transport] = {}

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self.transports[handler] = transport

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        self.transports.pop(handler, None)


class Simulator:
    """Kernel control plane + VM proxy simulator; see the package docstring."""

    def __init__(
        self,
        cp_host: str = "127.0.0.1",
        cp_port: int = 0,
        vm_host: str = "127.0.0.2",
        vm_port: int = 0,
        sse_interval: float = 0.2,
        sse_count: int = 3,
        cert_dir: str | None = None,
        deleted_browser: str = "gone",
        cp_tls: bool = False,
    ) -> None:
        require_loopback(cp_host)
        require_loopback(vm_host)
        self._state = State(vm_host, sse_interval, sse_count, deleted_browser)
        self.cp_host = cp_host
        self.vm_host = vm_host
        self.cp_tls = cp_tls  # the CP over HTTPS too, like the live service, with the VM's CA
        self._hosts = {"cp": cp_host, "vm": vm_host}
        self._ports_req = {"cp": cp_port, "vm": vm_port}
        self._ports: dict[str, int] = {}
        self._host_keys: dict[str, str] = {}  # "host:port" per side, as stats()["by_host"] counts
        self._cert_dir = cert_dir
        self._tmpdir: str | None = None
        self._cert_path: Path | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runners: list[tuple[web.ServerRunner, _Server]] = []
        self._cp: ControlPlane | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> Simulator:
        """Listen on both sides; returns once both accept connections (OSError if one cannot)."""
        if self._loop is not None:
            return self
        if self._cert_dir is None:
            self._tmpdir = tempfile.mkdtemp(prefix="kernel-sim-")
            directory = Path(self._tmpdir)
        else:
            directory = Path(self._cert_dir)
        hosts = (self.vm_host, self.cp_host) if self.cp_tls else (self.vm_host,)
        self._cert_path, server_ctx, client_ctx = _write_certs(directory, *hosts)
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=_run_loop, args=(loop,), name="kernel-sim", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._listen(server_ctx, client_ctx), loop).result()
        except BaseException:
            self.stop()
            raise
        return self

    async def _listen(self, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
        state = self._state
        state.stopping.clear()
        state.stopping.bind(asyncio.get_running_loop())
        state.released.bind(asyncio.get_running_loop())
        self._cp = ControlPlane(state, client_ctx)
        await self._cp.open()
        for side, ctx in (("vm", server_ctx), ("cp", server_ctx if self.cp_tls else None)):
            sock = _bind(self._hosts[side], self._ports_req[side])
            port = int(sock.getsockname()[1])
            self._ports[side] = port
            self._host_keys[side] = f"{self._hosts[side]}:{port}"
            if side == "vm":
                state.vm_port = port
            server = _Server(functools.partial(self._serve, side=side), **SERVER_OPTIONS)
            runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_TIMEOUT)
            await runner.setup()
            self._runners.append((runner, server))
            await web.SockSite(runner, sock, ssl_context=ctx, backlog=128).start()

    async def _serve(self, request: web.BaseRequest, side: str) -> web.StreamResponse:
        """Every request on either side: controls, or a counted CP or VM request, logged once."""
        ex = Exchange(request, side, self._host_keys[side], self._state)
        if side == "cp" and is_control(ex.path):
            resp = await handle_control(ex, self.control)
            log.debug("control %s %s -> %s", ex.method, ex.path, ex.status)
            return resp
        started = time.monotonic()
        ex.begin_record()
        try:
            await ex.read_body()
            if side == "cp":
                assert self._cp is not None
                return await self._cp.handle(ex)
            return await handle_vm(ex, self._state)
        except (OSError, HttpProcessingError) as exc:
            # Client went away (or sent garbage); nothing sensible left to answer.
            log.debug("%s connection error: %r", side, exc)
            return ex.drop()
        finally:
            ex.complete()
            log.info(
                "%s %s %s -> %s (%.0f ms)",
                side,
                ex.method,
                redact(request.raw_path),
                ex.status or "reset",
                (time.monotonic() - started) * 1000,
            )

    def stop(self) -> None:
        """End held streams, close every connection and the loop; safe to call twice."""
        loop, thread = self._loop, self._thread
        self._state.stopping.set()
        self._state.released.set()  # let held streams finish
        if loop is not None and thread is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._close(), loop).result(timeout=SHUTDOWN_TIMEOUT + 5)
            except Exception as exc:  # still stop the loop below
                log.debug("stop: %r", exc)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
        self._loop = self._thread = None
        self._state.stopping.bind(None)
        self._state.released.bind(None)
        self._ports.clear()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    async def _close(self) -> None:
        runners, self._runners = self._runners, []
        await asyncio.gather(*(runner.cleanup() for runner, _ in runners), return_exceptions=True)
        for _, server in runners:
            for transport in list(server.transports.values()):
                transport.abort()
        if self._cp is not None:
            await self._cp.close()
            self._cp = None
        await asyncio.sleep(0)  # the aborted transports' connection_lost

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- settings and addresses ---------------------------------------------

    @property
    def sse_interval(self) -> float:
        """Seconds between the events of a VM stream."""
        return self._state.sse_interval

    @sse_interval.setter
    def sse_interval(self, seconds: float) -> None:
        self._state.sse_interval = seconds

    @property
    def sse_count(self) -> int:
        """Events in a VM stream."""
        return self._state.sse_count

    @sse_count.setter
    def sse_count(self, count: int) -> None:
        self._state.sse_count = count

    def _port(self, side: str) -> int:
        port = self._ports.get(side)
        if port is None:
            raise RuntimeError("simulator not started")
        return port

    @property
    def cp_port(self) -> int:
        return self._port("cp")

    @property
    def vm_port(self) -> int:
        return self._port("vm")

    @property
    def cp_url(self) -> str:
        return f"{'https' if self.cp_tls else 'http'}://{self.cp_host}:{self.cp_port}"

    @property
    def vm_url(self) -> str:
        return f"https://{self.vm_host}:{self.vm_port}"

    @property
    def base_url(self) -> str:
        return f"{self.vm_url}{VM_PREFIX}"

    @property
    def cert_path(self) -> str:
        """The CA certificate that clients trust for the VM, and the CP with cp_tls (PEM)."""
        if self._cert_path is None:
            raise RuntimeError("simulator not started")
        return str(self._cert_path)

    # -- browsers ----------------------------------------------------------

    @property
    def browsers(self) -> Mapping[str, dict[str, Any]]:
        """Snapshot of CP-known browsers (session_id -> browser object), read-only."""
        return self._state.browsers

    def create_browser(self, name: str | None = None, pool: str | None = None) -> dict[str, Any]:
        """Create a browser directly (not counted as a request)."""
        return self._state.browser_obj(self._state.new_session(name, pool))

    def jwt_for(self, session_id_or_name: str) -> str:
        """The raw (unencoded) jwt of a session, for direct VM requests in tests."""
        sess = self._state.lookup(session_id_or_name)
        if sess is None:
            raise KeyError(session_id_or_name)
        return sess.jwt

    # -- controls ----------------------------------------------------------

    def kill_on_vm(self, session_id_or_name: str) -> None:
        """VM forgets the session (answered as a deleted browser); the CP still lists and serves it."""
        self._state.kill_on_vm(session_id_or_name)

    def set_fault(
        self,
        status: int | None,
        reset: bool = False,
        path_contains: str | None = None,
        side: str = "vm",
        times: int | None = None,
    ) -> None:
        """Fail matching requests with `status`, or RST them if `reset`.

        `side` is "vm" (default), "cp" or "both"; `times` limits how many requests
        fail (None = until cleared). set_fault(None) clears.
        """
        fault = Fault(status, reset, path_contains, side, times)  # ValueError if it makes no sense
        self._state.set_fault(None if status is None and not reset else fault)

    def set_latency(self, cp: float = 0, vm: float = 0) -> None:
        """Seconds each side waits before answering."""
        self._state.set_latency(cp=cp, vm=vm)

    def set_gzip_gone(self, enabled: bool) -> None:
        """browser_gone bodies gzip-encoded (Content-Encoding: gzip)."""
        self._state.set_gzip_gone(enabled)

    def set_deleted_browser(self, answer: str) -> None:
        """What the VM answers for a deleted or killed browser: "gone" (404 browser_gone) or "502"."""
        self._state.set_deleted_browser(answer)

    def hold_streams(self, hold: bool = True) -> None:
        """While held, SSE streams send their first event and then wait."""
        self._state.hold_streams(hold)

    def release_streams(self) -> None:
        self._state.hold_streams(False)

    def reset(self) -> None:
        """Clear counters, faults, latency, gzip and holds, restore deleted_browser; browsers are kept."""
        self._state.reset()

    def control(self, method: str, action: str, data: Any, args: dict[str, Any]) -> Any:
        """Run one control; its JSON result, or None for an unknown control."""
        if method == "GET" and action == "stats":
            return self.stats()
        if method == "GET" and action == "browsers":
            return list(self.browsers.values())
        if method != "POST":
            return None
        if action == "kill":
            self.kill_on_vm(text_arg(args, "session", '{"session": "<id or name>"}'))
        elif action == "fault":
            self.set_fault(
                args.get("status"),
                reset=bool(args.get("reset", False)),
                path_contains=args.get("path_contains"),
                side=str(args.get("side", "vm")),
                times=args.get("times"),
            )
        elif action == "latency":
            self.set_latency(cp=float(args.get("cp", 0)), vm=float(args.get("vm", 0)))
        elif action == "gzip_gone":
            self.set_gzip_gone(data if isinstance(data, bool) else bool(args.get("enabled", True)))
        elif action == "deleted_browser":
            self.set_deleted_browser(text_arg(args, "answer", '{"answer": "gone" | "502"}'))
        elif action == "hold":
            self.hold_streams(bool(args.get("hold", True)))
        elif action == "release":
            self.release_streams()
        elif action == "reset":
            self.reset()
        elif action == "create":
            return self.create_browser(name=args.get("name"), pool=args.get("pool"))
        else:
            return None
        return {"ok": True}

    def stats(self) -> dict[str, Any]:
        """Requests per side (count, in flight, max in flight, records) and per host."""
        return self._state.stats()


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """The simulator's thread: run the loop until stop(), then close it cleanly."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
