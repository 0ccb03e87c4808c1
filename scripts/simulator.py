#!/usr/bin/env python3
"""Local simulator of the Kernel control plane (CP) and a browser VM proxy.

Tests need to see *where* traffic went (CP vs. VM), with what headers, and how
the addon copes with dead sessions, faults, latency and streams, without any
network access. The CP is plain HTTP; the VM proxy is HTTPS with a throwaway
self-signed certificate. Both record every request for later assertions.

For a deleted (or VM-killed) browser the VM answers `404 browser_gone`, as the
reference describes, or with `deleted_browser="502"` (`--deleted-browser 502`) a
`502 bad_gateway`, as the live VM proxy does today.

Standard library only (plus `cryptography`, a mitmproxy dependency, for the
certificate). Usable as a module (`from simulator import Simulator`) or a CLI.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import datetime as dt
import gzip
import hashlib
import http.client
import ipaddress
import json
import logging
import re
import secrets
import shutil
import signal
import socket
import socketserver
import ssl
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, MappingProxyType, TracebackType
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

log = logging.getLogger("kernel_simulator")

GONE_BODY = b'{"code":"browser_gone","message":"browser not found"}'
BAD_GATEWAY_BODY = b'{"code":"bad_gateway","message":"browser unavailable"}'
DELETED_BROWSER_ANSWERS = ("gone", "502")  # what the VM answers for a deleted or killed browser
VM_PREFIX = "/browser/kernel"
CP_EVENT_COUNT = 5  # historical events the CP holds per browser
VM_EVENT_COUNT = 5  # events the VM's own /telemetry/events page holds
# Not relayed by the CP proxy: per-connection headers, plus ones the CP sets itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
_JWT_RE = re.compile(r"(jwt=)([^&\s]*)")


def _redact(text: str) -> str:
    """Keep only the first 6 characters of any jwt query value (log hygiene)."""
    return _JWT_RE.sub(lambda m: m.group(1) + m.group(2)[:6] + "...", text)


def _require_loopback(host: str) -> None:
    # The simulator must never listen outside 127.0.0.0/8.
    try:
        addr = ipaddress.IPv4Address(host)
    except ValueError as exc:
        raise ValueError(f"host must be an IPv4 loopback literal, got {host!r}") from exc
    if not addr.is_loopback:
        raise ValueError(f"host must be in 127.0.0.0/8, got {host!r}")


def _check_deleted_browser(answer: object) -> str:
    if answer not in DELETED_BROWSER_ANSWERS:
        raise ValueError(f"deleted_browser must be 'gone' or '502', got {answer!r}")
    return str(answer)


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _make_cert(directory: Path, vm_host: str) -> tuple[Path, Path]:
    """Self-signed CA:TRUE cert usable directly as a trust anchor (--cacert / verify=)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kernel-simulator VM proxy")])
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(vm_host)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / "vm-cert.pem"
    key_path = directory / "vm-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


@dataclass
class _Session:
    session_id: str
    jwt: str
    name: str | None
    pool: str | None
    created_at: str


@dataclass
class _Fault:
    status: int | None
    reset: bool
    path_contains: str | None
    side: str
    times: int | None


@dataclass
class _SideStats:
    count: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)


class _BadRequest(Exception):
    """Raised by control handlers to answer 400 with a message."""


class _Server(ThreadingHTTPServer):
    """One listening side (cp or vm); TLS is wrapped per connection, in its thread."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # the default backlog of 5 delays bursts of connections by a SYN retry (1 s)

    def __init__(self, addr: tuple[str, int], sim: Simulator, side: str, ctx: ssl.SSLContext | None) -> None:
        self.sim = sim
        self.side = side
        self.ctx = ctx
        self.conns: set[socket.socket] = set()
        self.conns_lock = threading.Lock()
        super().__init__(addr, _Handler)
        self.host_key = f"{self.server_name}:{self.server_port}"

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), i.e. a reverse DNS lookup; skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Handshake here (worker thread), not in accept(): a slow client must not
        # block every other connection.
        sock: socket.socket = request
        if self.ctx is not None:
            try:
                request.settimeout(10)
                sock = self.ctx.wrap_socket(request, server_side=True)
                sock.settimeout(None)
            except (OSError, ValueError):
                return
        with self.conns_lock:
            self.conns.add(sock)
        try:
            _Handler(sock, client_address, self)
        finally:
            with self.conns_lock:
                self.conns.discard(sock)
            if sock is not request:
                with contextlib.suppress(OSError):
                    sock.close()

    def close_all(self) -> None:
        """Unblock keep-alive/streaming handlers so stop() does not leave them hanging."""
        with self.conns_lock:
            conns = list(self.conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms stalls
    timeout = 120  # idle keep-alive connections are dropped after this
    server: _Server
    sim_status: int = 0
    on_complete: Callable[[], None] | None = None

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_GET
    do_PUT = do_GET
    do_PATCH = do_GET
    do_DELETE = do_GET
    do_HEAD = do_GET
    do_OPTIONS = do_GET

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # one line per request is logged by _dispatch, with the jwt redacted

    def log_error(self, format: str, *args: Any) -> None:
        log.debug("%s: " + format, self.server.side, *args)

    def _dispatch(self) -> None:
        sim = self.server.sim
        side = self.server.side
        split = urlsplit(self.path)
        path, query = split.path or "/", split.query
        self.sim_status = 0
        started = time.monotonic()
        if side == "cp" and (path == "/_sim" or path.startswith("/_sim/")):
            sim._control(self, path, self._read_body())
            log.debug("control %s %s -> %s", self.command, path, self.sim_status)
            return
        rec, gen = sim._begin(side, self.server.host_key, self.command, path, query, self.headers)
        self.on_complete = lambda: sim._finish(side, rec, gen, self.sim_status)
        try:
            body = self._read_body()
            sim._record_body(rec, body)
            if side == "cp":
                sim._handle_cp(self, path, query, body)
            else:
                sim._handle_vm(self, path, query, body)
        except (OSError, http.client.HTTPException) as exc:
            # Client went away (or sent garbage); nothing sensible left to answer.
            log.debug("%s connection error: %r", side, exc)
            self.close_connection = True
        finally:
            self.complete()
            log.info(
                "%s %s %s -> %s (%.0f ms)",
                side,
                self.command,
                _redact(self.path),
                self.sim_status or "reset",
                (time.monotonic() - started) * 1000,
            )

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # discard trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    # -- response helpers --------------------------------------------------

    def complete(self) -> None:
        """Finalize the stats record, once.

        Called just before the last bytes go out, so a client that has read a whole
        response always finds its record finished (status, t_end, in-flight count).
        """
        callback, self.on_complete = self.on_complete, None
        if callback is not None:
            callback()

    def send_raw(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.sim_status = status
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        if status not in (204, 304) and not 100 <= status < 200:
            self.send_header("Content-Length", str(len(body)))
        self.complete()
        self.end_headers()
        if body and self.command != "HEAD" and status not in (204, 304):
            self.wfile.write(body)

    def send_json(self, status: int, obj: object, headers: Mapping[str, str] | None = None) -> None:
        hdrs = [("Content-Type", "application/json"), *(headers or {}).items()]
        self.send_raw(status, hdrs, json.dumps(obj).encode())

    def send_error_json(self, status: int, code: str, message: str) -> None:
        self.send_json(status, {"code": code, "message": message})

    def start_chunked(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.sim_status = status
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def write_chunk(self, data: bytes) -> None:
        # wfile is unbuffered (wbufsize=0): each chunk hits the socket immediately.
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def end_chunked(self) -> None:
        self.complete()
        self.wfile.write(b"0\r\n\r\n")

    def reset_connection(self) -> None:
        """Abort with a TCP RST and no HTTP response (SO_LINGER 0, then close)."""
        self.sim_status = 0
        self.close_connection = True
        self.complete()
        sock = self.connection
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # rfile holds a reference to the socket; both must go for the real close.
        for closable in (self.rfile, sock):
            with contextlib.suppress(OSError):
                closable.close()


class Simulator:
    """Kernel control plane + VM proxy simulator; see module docstring."""

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
    ) -> None:
        _require_loopback(cp_host)
        _require_loopback(vm_host)
        self._deleted_browser_default = _check_deleted_browser(deleted_browser)
        self._deleted_browser = self._deleted_browser_default
        self.cp_host = cp_host
        self.vm_host = vm_host
        self._cp_port_req = cp_port
        self._vm_port_req = vm_port
        self.sse_interval = sse_interval
        self.sse_count = sse_count
        self._cert_dir = cert_dir
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}  # CP view, insertion-ordered
        self._vm_live: dict[str, str] = {}  # jwt -> session_id
        self._vm_gone: dict[str, str] = {}  # jwt -> session_id, killed on the VM
        self._fault: _Fault | None = None
        self._latency = {"cp": 0.0, "vm": 0.0}
        self._gzip_gone = False
        self._released = threading.Event()
        self._released.set()
        self._stopping = threading.Event()
        self._stats = {"cp": _SideStats(), "vm": _SideStats()}
        self._by_host: dict[str, int] = {}
        self._gen = 0  # bumped by reset() so in-flight requests don't touch new stats
        self._servers: dict[str, _Server] = {}
        self._threads: list[threading.Thread] = []
        self._tmpdir: str | None = None
        self._cert_path: Path | None = None
        self._client_ctx: ssl.SSLContext | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> Simulator:
        if self._servers:
            return self
        if self._cert_dir is None:
            self._tmpdir = tempfile.mkdtemp(prefix="kernel-sim-")
            directory = Path(self._tmpdir)
        else:
            directory = Path(self._cert_dir)
        cert_path, key_path = _make_cert(directory, self.vm_host)
        self._cert_path = cert_path
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(cert_path, key_path)
        server_ctx.set_alpn_protocols(["http/1.1"])  # no h2 here; tell clients early
        self._client_ctx = ssl.create_default_context(cafile=str(cert_path))
        self._stopping.clear()
        self._servers["cp"] = _Server((self.cp_host, self._cp_port_req), self, "cp", None)
        self._servers["vm"] = _Server((self.vm_host, self._vm_port_req), self, "vm", server_ctx)
        for side, server in self._servers.items():
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.1}, name=f"sim-{side}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._released.set()  # let held streams finish
        for server in self._servers.values():
            server.shutdown()
            server.close_all()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _port(self, side: str) -> int:
        server = self._servers.get(side)
        if server is None:
            raise RuntimeError("simulator not started")
        return int(server.server_address[1])

    @property
    def cp_port(self) -> int:
        return self._port("cp")

    @property
    def vm_port(self) -> int:
        return self._port("vm")

    @property
    def cp_url(self) -> str:
        return f"http://{self.cp_host}:{self.cp_port}"

    @property
    def vm_url(self) -> str:
        return f"https://{self.vm_host}:{self.vm_port}"

    @property
    def base_url(self) -> str:
        return f"{self.vm_url}{VM_PREFIX}"

    @property
    def cert_path(self) -> str:
        if self._cert_path is None:
            raise RuntimeError("simulator not started")
        return str(self._cert_path)

    @property
    def browsers(self) -> Mapping[str, dict[str, Any]]:
        """Snapshot of CP-known browsers (session_id -> browser object), read-only."""
        with self._lock:
            sessions = list(self._sessions.values())
        return MappingProxyType({s.session_id: self._browser_obj(s) for s in sessions})

    # -- browser state -----------------------------------------------------

    def _browser_obj(self, s: _Session) -> dict[str, Any]:
        enc = quote(s.jwt, safe="")
        vm = f"{self.vm_host}:{self.vm_port}"
        obj: dict[str, Any] = {
            "session_id": s.session_id,
            "created_at": s.created_at,
            "cdp_ws_url": f"wss://{vm}/browser/cdp?jwt={enc}",
            "webdriver_ws_url": f"wss://{vm}/browser/webdriver?jwt={enc}",
            "browser_live_view_url": f"https://{vm}/browser/live?jwt={enc}",
            "base_url": self.base_url,
            "headless": False,
            "stealth": False,
            "gpu": False,
            "kiosk_mode": False,
            "memory": "8GiB",
            "region": "us-east",
            "timeout_seconds": 60,
        }
        if s.name is not None:
            obj["name"] = s.name
        if s.pool is not None:
            obj["pool"] = {"id": "pool_" + _sha256(s.pool.encode())[:16], "name": s.pool}
        return obj

    def _new_session(self, name: str | None, pool: str | None) -> _Session:
        with self._lock:
            if name is not None and any(s.name == name for s in self._sessions.values()):
                raise ValueError(f"a browser named {name!r} already exists")
            sess = _Session(
                session_id=secrets.token_hex(12),
                # Deliberately contains '+', '/' and '=' so URL-encoding bugs show up.
                jwt=f"tok+{secrets.token_hex(16)}/x=",
                name=name,
                pool=pool,
                created_at=_now_iso(),
            )
            self._sessions[sess.session_id] = sess
            self._vm_live[sess.jwt] = sess.session_id
        return sess

    def _lookup(self, id_or_name: str) -> _Session | None:
        with self._lock:
            sess = self._sessions.get(id_or_name)
            if sess is None:
                sess = next((s for s in self._sessions.values() if s.name == id_or_name), None)
            return sess

    def _delete(self, sess: _Session) -> None:
        # The CP forgets it; the VM proxy answers its jwt as for a deleted browser (_send_deleted).
        with self._lock:
            self._sessions.pop(sess.session_id, None)
            self._vm_live.pop(sess.jwt, None)
            self._vm_gone[sess.jwt] = sess.session_id

    def create_browser(self, name: str | None = None, pool: str | None = None) -> dict[str, Any]:
        """Create a browser directly (not counted as a request)."""
        return self._browser_obj(self._new_session(name, pool))

    def jwt_for(self, session_id_or_name: str) -> str:
        """The raw (unencoded) jwt of a session, for direct VM requests in tests."""
        sess = self._lookup(session_id_or_name)
        if sess is None:
            raise KeyError(session_id_or_name)
        return sess.jwt

    # -- controls ----------------------------------------------------------

    def kill_on_vm(self, session_id_or_name: str) -> None:
        """VM forgets the session (answered as a deleted browser); the CP still lists and serves it."""
        sess = self._lookup(session_id_or_name)
        if sess is None:
            raise KeyError(session_id_or_name)
        with self._lock:
            self._vm_live.pop(sess.jwt, None)
            self._vm_gone[sess.jwt] = sess.session_id

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
        if side not in ("vm", "cp", "both"):
            raise ValueError("side must be 'vm', 'cp' or 'both'")
        if status is not None and not 400 <= int(status) <= 599:
            raise ValueError("status must be a 4xx/5xx code")
        if times is not None and int(times) < 1:
            raise ValueError("times must be >= 1")
        with self._lock:
            if status is None and not reset:
                self._fault = None
            else:
                self._fault = _Fault(
                    status=None if status is None else int(status),
                    reset=bool(reset),
                    path_contains=path_contains,
                    side=side,
                    times=None if times is None else int(times),
                )

    def set_latency(self, cp: float = 0, vm: float = 0) -> None:
        with self._lock:
            self._latency = {"cp": float(cp), "vm": float(vm)}

    def set_gzip_gone(self, enabled: bool) -> None:
        with self._lock:
            self._gzip_gone = bool(enabled)

    def set_deleted_browser(self, answer: str) -> None:
        """What the VM answers for a deleted or killed browser: "gone" (404 browser_gone) or "502"."""
        answer = _check_deleted_browser(answer)
        with self._lock:
            self._deleted_browser = answer

    def hold_streams(self, hold: bool = True) -> None:
        """While held, SSE streams send their first event and then wait."""
        if hold:
            self._released.clear()
        else:
            self._released.set()

    def release_streams(self) -> None:
        self._released.set()

    def reset(self) -> None:
        """Clear counters, faults, latency, gzip and holds, restore deleted_browser; browsers are kept."""
        with self._lock:
            self._stats = {"cp": _SideStats(), "vm": _SideStats()}
            self._by_host = {}
            self._gen += 1
            self._fault = None
            self._latency = {"cp": 0.0, "vm": 0.0}
            self._gzip_gone = False
            self._deleted_browser = self._deleted_browser_default
        self._released.set()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {
                side: {
                    "count": st.count,
                    "in_flight": st.in_flight,
                    "max_in_flight": st.max_in_flight,
                    "requests": copy.deepcopy(st.requests),
                }
                for side, st in self._stats.items()
            }
            out["by_host"] = dict(self._by_host)
        return out

    # -- accounting --------------------------------------------------------

    def _begin(
        self, side: str, host_key: str, method: str, path: str, query: str, headers: Any
    ) -> tuple[dict[str, Any], int]:
        hdrs: dict[str, str] = {}
        for key, value in headers.items():
            k = key.lower()
            hdrs[k] = f"{hdrs[k]}, {value}" if k in hdrs else value
        rec: dict[str, Any] = {
            "method": method,
            "path": path,
            "query": query,
            "headers": hdrs,
            "body_sha256": _sha256(b""),
            "body_len": 0,
            "status": None,
            "t_start": time.time(),
            "t_end": None,
        }
        if side == "vm":
            rec["via_cp"] = hdrs.get("x-sim-via") == "control-plane"
        with self._lock:
            st = self._stats[side]
            st.count += 1
            st.in_flight += 1
            st.max_in_flight = max(st.max_in_flight, st.in_flight)
            st.requests.append(rec)
            self._by_host[host_key] = self._by_host.get(host_key, 0) + 1
            return rec, self._gen

    def _record_body(self, rec: dict[str, Any], body: bytes) -> None:
        with self._lock:
            rec["body_sha256"] = _sha256(body)
            rec["body_len"] = len(body)

    def _finish(self, side: str, rec: dict[str, Any], gen: int, status: int) -> None:
        with self._lock:
            rec["t_end"] = time.time()
            rec["status"] = status or None
            if gen == self._gen:  # else reset() replaced the stats meanwhile
                self._stats[side].in_flight -= 1

    def _take_fault(self, side: str, path: str) -> _Fault | None:
        with self._lock:
            fault = self._fault
            if fault is None or fault.side not in (side, "both"):
                return None
            if fault.path_contains is not None and fault.path_contains not in path:
                return None
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self._fault = None
            return copy.copy(fault)

    def _pre(self, h: _Handler, side: str, path: str) -> bool:
        """Apply latency and faults; True if the request was already answered."""
        with self._lock:
            delay = self._latency[side]
        if delay > 0:
            self._stopping.wait(delay)
        fault = self._take_fault(side, path)
        if fault is None:
            return False
        if fault.reset:
            h.reset_connection()
        else:
            status = fault.status or 502
            phrase = http.client.responses.get(status, "Error")
            h.send_raw(status, [("Content-Type", "text/plain")], f"simulated {status} {phrase}\n".encode())
        return True

    # -- control endpoints (CP /_sim/*, never counted) ----------------------

    def _control(self, h: _Handler, path: str, body: bytes) -> None:
        action = path[len("/_sim") :].strip("/")
        try:
            data: Any = json.loads(body) if body.strip() else {}
        except ValueError:
            h.send_error_json(400, "bad_request", "invalid JSON")
            return
        args: dict[str, Any] = data if isinstance(data, dict) else {}
        try:
            result = self._control_action(h.command, action, data, args)
        except (_BadRequest, ValueError, TypeError) as exc:
            h.send_error_json(400, "bad_request", str(exc))
            return
        except KeyError:
            h.send_error_json(404, "not_found", "browser not found")
            return
        if result is None:
            h.send_error_json(404, "not_found", f"unknown control {h.command} /_sim/{action}")
            return
        h.send_json(200, result)

    def _control_action(self, method: str, action: str, data: Any, args: dict[str, Any]) -> Any:
        if method == "GET" and action == "stats":
            return self.stats()
        if method == "GET" and action == "browsers":
            return list(self.browsers.values())
        if method != "POST":
            return None
        if action == "kill":
            session = args.get("session")
            if not isinstance(session, str):
                raise _BadRequest('expected {"session": "<id or name>"}')
            self.kill_on_vm(session)
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
            answer = args.get("answer")
            if not isinstance(answer, str):
                raise _BadRequest('expected {"answer": "gone" | "502"}')
            self.set_deleted_browser(answer)
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

    # -- control plane -----------------------------------------------------

    def _handle_cp(self, h: _Handler, path: str, query: str, body: bytes) -> None:
        if self._pre(h, "cp", path):
            return
        auth = h.headers.get("Authorization", "")
        if not (auth.startswith("Bearer ") and auth[len("Bearer ") :].strip()):
            h.send_error_json(401, "unauthorized", "missing or invalid bearer token")
            return
        rel = path[len("/v1") :] if path == "/v1" or path.startswith("/v1/") else path
        raw_parts = [p for p in rel.split("/") if p]
        parts = [unquote(p) for p in raw_parts]
        method = h.command
        if parts == ["browsers"]:
            if method == "GET":
                self._cp_list(h, query)
            elif method == "POST":
                self._cp_create(h, body, pool=None)
            else:
                h.send_error_json(405, "method_not_allowed", "method not allowed")
            return
        if len(parts) >= 2 and parts[0] == "browsers":
            sess = self._lookup(parts[1])
            if sess is None:
                h.send_error_json(404, "not_found", "browser not found")
            elif len(parts) == 2:
                self._cp_browser(h, sess)
            elif parts[2:] == ["telemetry", "events"] and method == "GET":
                self._send_events_page(h, sess, query, "control_plane")
            else:
                self._cp_forward(h, sess, "/".join(raw_parts[2:]), query, body)
            return
        if len(parts) == 3 and parts[0] == "browser_pools" and method == "POST":
            if parts[2] == "acquire":
                self._cp_create(h, body, pool=parts[1])
                return
            if parts[2] == "release":
                self._cp_release(h, parts[1], body)
                return
        h.send_error_json(404, "not_found", "route not found")

    def _cp_list(self, h: _Handler, query: str) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
        _send_page(h, [self._browser_obj(s) for s in sessions], query)

    def _cp_create(self, h: _Handler, body: bytes, pool: str | None) -> None:
        try:
            data = json.loads(body) if body.strip() else {}
        except ValueError:
            h.send_error_json(400, "bad_request", "invalid JSON body")
            return
        if not isinstance(data, dict):
            h.send_error_json(400, "bad_request", "body must be a JSON object")
            return
        name = data.get("name")
        if name is not None and not isinstance(name, str):
            h.send_error_json(400, "bad_request", "name must be a string")
            return
        try:
            sess = self._new_session(name or None, pool)
        except ValueError as exc:
            h.send_error_json(409, "conflict", str(exc))
            return
        h.send_json(200, self._browser_obj(sess))

    def _cp_browser(self, h: _Handler, sess: _Session) -> None:
        if h.command in ("GET", "HEAD", "PATCH"):
            h.send_json(200, self._browser_obj(sess))
        elif h.command == "DELETE":
            self._delete(sess)
            h.send_raw(204, [], b"")  # SDK: delete_by_id casts to None
        else:
            h.send_error_json(405, "method_not_allowed", "method not allowed")

    def _cp_release(self, h: _Handler, pool: str, body: bytes) -> None:
        try:
            data = json.loads(body) if body.strip() else {}
        except ValueError:
            data = None
        session_id = data.get("session_id") if isinstance(data, dict) else None
        if not isinstance(session_id, str) or not session_id:
            h.send_error_json(400, "bad_request", "session_id is required")
            return
        sess = self._lookup(session_id)
        if sess is None or sess.pool != pool:
            h.send_error_json(404, "not_found", "browser not found in pool")
            return
        self._delete(sess)
        h.send_raw(204, [], b"")  # SDK: release casts to None

    def _cp_forward(self, h: _Handler, sess: _Session, tail: str, query: str, body: bytes) -> None:
        """Proxy a browser subresource call to the VM, as the real CP does."""
        kept = [p for p in query.split("&") if p and p.split("=", 1)[0] != "jwt"]
        kept.append("jwt=" + quote(sess.jwt, safe=""))
        target = f"{VM_PREFIX}/{tail}?{'&'.join(kept)}"
        headers: dict[str, str] = {}
        for key, value in h.headers.items():
            if key.lower() in HOP_BY_HOP or key.lower() == "authorization":
                continue
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        headers["X-Sim-Via"] = "control-plane"
        if body or h.command in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPSConnection(self.vm_host, self.vm_port, context=self._client_ctx, timeout=300)
        try:
            try:
                conn.request(h.command, target, body=body or None, headers=headers)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                log.debug("cp -> vm failed: %r", exc)
                h.send_error_json(502, "bad_gateway", "browser VM unreachable")
                return
            relay = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP | {"server", "date"}]
            ctype = (resp.getheader("Content-Type") or "").lower()
            sized = resp.getheader("Content-Length") is not None or not resp.chunked
            if "text/event-stream" not in ctype and sized:
                try:
                    data = resp.read()
                except (OSError, http.client.HTTPException):
                    h.send_error_json(502, "bad_gateway", "browser VM connection dropped")
                    return
                h.send_raw(resp.status, relay, data)
                return
            # Stream (SSE) chunk by chunk so clients see each event as it is sent.
            h.start_chunked(resp.status, relay)
            while True:
                try:
                    chunk = resp.read1(65536)
                except (OSError, http.client.HTTPException):
                    h.close_connection = True  # no terminating chunk: client sees truncation
                    return
                if not chunk:
                    break
                h.write_chunk(chunk)
            h.end_chunked()
        finally:
            conn.close()

    # -- VM proxy ----------------------------------------------------------

    def _send_deleted(self, h: _Handler) -> None:
        with self._lock:
            gz, answer = self._gzip_gone, self._deleted_browser
        if answer == "502":
            h.send_raw(502, [("Content-Type", "application/json")], BAD_GATEWAY_BODY)
            return
        headers = [("Content-Type", "application/json")]
        body = GONE_BODY
        if gz:
            body = gzip.compress(GONE_BODY)
            headers.append(("Content-Encoding", "gzip"))
        h.send_raw(404, headers, body)

    def _handle_vm(self, h: _Handler, path: str, query: str, body: bytes) -> None:
        if self._pre(h, "vm", path):
            return
        # parse_qs decodes '+' as space, like the real (Go) server: an unencoded
        # '+' in the jwt is an auth failure, which is the bug this should catch.
        jwt = (parse_qs(query, keep_blank_values=True).get("jwt") or [""])[0]
        with self._lock:
            session_id = self._vm_live.get(jwt) if jwt else None
            gone = bool(jwt) and jwt in self._vm_gone
        if gone:
            self._send_deleted(h)
            return
        if session_id is None:
            h.send_error_json(401, "unauthorized", "missing or invalid jwt")
            return
        if not (path == VM_PREFIX or path.startswith(VM_PREFIX + "/")):
            h.send_error_json(404, "not_found", "route not found")
            return
        tail = path[len(VM_PREFIX) :].strip("/")
        method = h.command
        if tail == "telemetry/events" and method == "GET":
            sess = self._lookup(session_id)
            if sess is not None:
                self._send_events_page(h, sess, query, "vm")
                return
        elif tail == "telemetry/stream" and method == "GET":
            self._vm_sse(h, session_id, jwt)
            return
        elif tail == "process/exec" and method == "POST":
            self._vm_exec(h, body)
            return
        elif tail == "fs/read_file" and method == "GET":
            file_path = (parse_qs(query).get("path") or [""])[0]
            if not file_path:
                h.send_error_json(400, "bad_request", "path is required")
                return
            h.send_raw(200, [("Content-Type", "application/octet-stream")], _file_bytes(file_path))
            return
        echo: dict[str, Any] = {
            "sim": "echo",
            "method": method,
            "path": path,
            "body_sha256": _sha256(body),
            "body_len": len(body),
        }
        if tail == "curl/raw":
            echo["sim"] = "curl_raw"
            echo["url"] = (parse_qs(query).get("url") or [""])[0] or None
            h.send_json(200, echo)
        elif tail == "curl" or tail.startswith("curl/"):
            # Shape of BrowserCurlResponse, plus the echo.
            echo["sim"] = "curl"
            h.send_json(
                200,
                {
                    "status": 200,
                    "headers": {"content-type": ["application/json"]},
                    "body": json.dumps(echo),
                    "duration_ms": 1,
                    "sim_echo": echo,
                },
            )
        else:
            h.send_json(200, echo)

    def _vm_exec(self, h: _Handler, body: bytes) -> None:
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        desc = {"sha256": _sha256(body), "length": len(body), "json": parsed}
        if not isinstance(parsed, dict) or "command" not in parsed:
            h.send_json(400, {"code": "bad_request", "message": "command is required", "sim_echo": desc})
            return
        # ProcessExecResponse fields; stdout carries the echo so SDK users can read it.
        h.send_json(
            200,
            {
                "exit_code": 0,
                "duration_ms": 1,
                "stdout_b64": base64.b64encode(json.dumps(desc).encode()).decode(),
                "stderr_b64": "",
                "sim_echo": desc,
            },
        )

    def _vm_sse(self, h: _Handler, session_id: str, jwt: str) -> None:
        h.start_chunked(200, [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
        for seq in range(1, self.sse_count + 1):
            if seq > 1:
                if self._stopping.wait(self.sse_interval):
                    break
                while not self._released.wait(0.05):
                    if self._stopping.is_set():
                        break
                with self._lock:
                    alive = self._vm_live.get(jwt) == session_id
                if self._stopping.is_set() or not alive:
                    break  # the real stream closes when the browser goes away
            env = _event(session_id, seq, "vm")
            h.write_chunk(b"data: %s\nid: %d\n\n" % (json.dumps(env).encode(), seq))
        h.end_chunked()

    def _send_events_page(self, h: _Handler, sess: _Session, query: str, origin: str) -> None:
        count = CP_EVENT_COUNT if origin == "control_plane" else VM_EVENT_COUNT
        _send_page(h, [_event(sess.session_id, seq, origin) for seq in range(1, count + 1)], query)


def _event(session_id: str, seq: int, origin: str) -> dict[str, Any]:
    """A TelemetryEventsResponse envelope; `source`/`id` (extra fields) tell CP from VM."""
    prefix = "cp" if origin == "control_plane" else "vm"
    text = f"{prefix} event {seq}"
    return {
        "seq": seq,
        "id": f"{prefix}-{session_id}-{seq}",
        "source": origin,
        "event": {
            "category": "console",
            "type": "console_log",
            "ts": int(time.time() * 1_000_000),
            "source": {
                "kind": "cdp",
                "event": "Runtime.consoleAPICalled",
                "metadata": {"sim_origin": origin},
            },
            "data": {"level": "log", "text": text, "args": [text]},
        },
    }


def _page(items: list[dict[str, Any]], query: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Offset page as SyncOffsetPagination reads it: JSON array + X-Has-More/X-Next-Offset.

    X-Next-Offset is the next page's start, or 0 on the last page (the SDK's stop sentinel).
    """
    qs = parse_qs(query)
    try:
        offset = int((qs.get("offset") or ["0"])[0])
        limit = int((qs.get("limit") or ["20"])[0])
    except ValueError as exc:
        raise ValueError("offset and limit must be integers") from exc
    if offset < 0 or limit < 1:
        raise ValueError("offset must be >= 0 and limit >= 1")
    limit = min(limit, 100)
    page = items[offset : offset + limit]
    nxt = offset + len(page)
    more = nxt < len(items)
    return page, {"X-Has-More": "true" if more else "false", "X-Next-Offset": str(nxt if more else 0)}


def _send_page(h: _Handler, items: list[dict[str, Any]], query: str) -> None:
    try:
        page, headers = _page(items, query)
    except ValueError as exc:
        h.send_error_json(400, "bad_request", str(exc))
        return
    h.send_json(200, page, headers)


def _file_bytes(path: str) -> bytes:
    # Deterministic, includes every byte value so binary mangling is detectable.
    return f"simulated file {path}\n".encode() + bytes(range(256))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Simulate the Kernel control plane and a browser VM proxy, on loopback only.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""\
When both sides listen it prints one JSON line: cp_url, vm_url, base_url, ca_cert.
Controls, on the control plane without auth (JSON in and out), e.g.
  curl -s -X POST $CP/_sim/kill -d '{"session": "<id or name>"}'
  POST /_sim/kill       {"session"}  the VM answers as for a deleted browser; the CP still knows it
  POST /_sim/deleted_browser {"answer": "gone"|"502"}  a deleted/killed browser's VM answer:
                        404 browser_gone, or 502 bad_gateway (the live VM proxy today)
  POST /_sim/fault      {"status": 502|503|504, "reset": bool, "path_contains", "side": vm|cp|both,
                         "times"}  (status null and reset false: clear)
  POST /_sim/latency    {"cp": s, "vm": s}
  POST /_sim/gzip_gone  {"enabled": bool}  browser_gone bodies gzip-encoded
  POST /_sim/hold       {"hold": bool}  SSE streams send one event, then wait; /_sim/release
  POST /_sim/create     {"name", "pool"}   GET /_sim/browsers
  GET  /_sim/stats      requests per side and per host, max in flight; POST /_sim/reset clears
""",
    )
    parser.add_argument("--cp-host", default="127.0.0.1")
    parser.add_argument("--cp-port", type=int, default=0)
    parser.add_argument("--vm-host", default="127.0.0.2")
    parser.add_argument("--vm-port", type=int, default=0)
    parser.add_argument("--sse-interval", type=float, default=0.2, help="seconds between SSE events")
    parser.add_argument("--sse-count", type=int, default=3, help="events per SSE stream")
    parser.add_argument("--cert-dir", default=None, help="where to write the VM cert (default: temp dir)")
    parser.add_argument(
        "--deleted-browser",
        choices=DELETED_BROWSER_ANSWERS,
        default="gone",
        help="the VM's answer for a deleted or killed browser: 404 browser_gone, or a 502 (default: gone)",
    )
    parser.add_argument("--quiet", action="store_true", help="do not log requests to stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s sim %(message)s",
    )
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    sim = Simulator(
        cp_host=args.cp_host,
        cp_port=args.cp_port,
        vm_host=args.vm_host,
        vm_port=args.vm_port,
        sse_interval=args.sse_interval,
        sse_count=args.sse_count,
        cert_dir=args.cert_dir,
        deleted_browser=args.deleted_browser,
    ).start()
    try:
        ready = {
            "cp_url": sim.cp_url,
            "vm_url": sim.vm_url,
            "base_url": sim.base_url,
            "ca_cert": sim.cert_path,
        }
        print(json.dumps(ready), flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
