"""The Kernel control plane (plain HTTP): bearer auth, browsers, pools, paged history, and a
browser's other subresource calls proxied to its VM (streamed, for SSE), as the real CP does."""

from __future__ import annotations

import io
import json
import ssl
from urllib.parse import quote, unquote

import aiohttp
from aiohttp import web
from yarl import URL

from . import shapes
from .control import apply_faults
from .exchange import Exchange
from .shapes import VM_PREFIX, Session
from .state import State
from .vm import send_page

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
NOT_RELAYED = HOP_BY_HOP | {"server", "date"}
# The VM sees the client's headers, not the forwarding client's defaults.
SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Content-Type")


class ControlPlane:
    """The CP's routes; `open()` on the simulator's loop before the first request."""

    def __init__(self, state: State, vm_trust: ssl.SSLContext) -> None:
        self._state = state
        self._vm_trust = vm_trust
        self._client: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(ssl=self._vm_trust, limit=0)
        self._client = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # relay the VM's bytes as sent (gzip included)
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=300, sock_read=300),
            middlewares=(_one_attempt,),
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def handle(self, ex: Exchange) -> web.StreamResponse:
        state = self._state
        answered = await apply_faults(ex, state)
        if answered is not None:
            return answered
        auth = ex.headers.get("Authorization", "")
        if not (auth.startswith("Bearer ") and auth[len("Bearer ") :].strip()):
            return ex.error(401, "unauthorized", "missing or invalid bearer token")
        rel = ex.path[len("/v1") :] if ex.path == "/v1" or ex.path.startswith("/v1/") else ex.path
        raw_parts = [p for p in rel.split("/") if p]
        parts = [unquote(p) for p in raw_parts]
        method = ex.method
        if parts == ["browsers"]:
            if method == "GET":
                return send_page(ex, [state.browser_obj(s) for s in state.sessions()])
            if method == "POST":
                return self._create(ex, pool=None)
            return ex.error(405, "method_not_allowed", "method not allowed")
        if len(parts) >= 2 and parts[0] == "browsers":
            sess = state.lookup(parts[1])
            if sess is None:
                return ex.error(404, "not_found", "browser not found")
            if len(parts) == 2:
                return self._browser(ex, sess)
            if parts[2:] == ["telemetry", "events"] and method == "GET":
                return send_page(ex, shapes.events(sess.session_id, "control_plane"))
            return await self._forward(ex, sess, "/".join(raw_parts[2:]))
        if len(parts) == 3 and parts[0] == "browser_pools" and method == "POST":
            if parts[2] == "acquire":
                return self._create(ex, pool=parts[1])
            if parts[2] == "release":
                return self._release(ex, parts[1])
        return ex.error(404, "not_found", "route not found")

    def _create(self, ex: Exchange, pool: str | None) -> web.Response:
        try:
            data = json.loads(ex.body) if ex.body.strip() else {}
        except ValueError:
            return ex.error(400, "bad_request", "invalid JSON body")
        if not isinstance(data, dict):
            return ex.error(400, "bad_request", "body must be a JSON object")
        name = data.get("name")
        if name is not None and not isinstance(name, str):
            return ex.error(400, "bad_request", "name must be a string")
        try:
            sess = self._state.new_session(name or None, pool)
        except ValueError as exc:
            return ex.error(409, "conflict", str(exc))
        return ex.json(200, self._state.browser_obj(sess))

    def _browser(self, ex: Exchange, sess: Session) -> web.Response:
        if ex.method in ("GET", "HEAD", "PATCH"):
            return ex.json(200, self._state.browser_obj(sess))
        if ex.method == "DELETE":
            self._state.delete(sess)
            return ex.raw(204, [], b"")  # SDK: delete_by_id casts to None
        return ex.error(405, "method_not_allowed", "method not allowed")

    def _release(self, ex: Exchange, pool: str) -> web.Response:
        try:
            data = json.loads(ex.body) if ex.body.strip() else {}
        except ValueError:
            data = None
        session_id = data.get("session_id") if isinstance(data, dict) else None
        if not isinstance(session_id, str) or not session_id:
            return ex.error(400, "bad_request", "session_id is required")
        sess = self._state.lookup(session_id)
        if sess is None or sess.pool != pool:
            return ex.error(404, "not_found", "browser not found in pool")
        self._state.delete(sess)
        return ex.raw(204, [], b"")  # SDK: release casts to None

    async def _forward(self, ex: Exchange, sess: Session, tail: str) -> web.StreamResponse:
        """Proxy a browser subresource call to the VM, as the real CP does."""
        assert self._client is not None, "ControlPlane.open() first"
        kept = [p for p in ex.query.split("&") if p and p.split("=", 1)[0] != "jwt"]
        kept.append("jwt=" + quote(sess.jwt, safe=""))
        state = self._state
        url = URL(f"https://{state.vm_host}:{state.vm_port}{VM_PREFIX}/{tail}?{'&'.join(kept)}", encoded=True)
        headers: dict[str, str] = {}
        for key, value in ex.headers.items():
            if key.lower() in HOP_BY_HOP or key.lower() == "authorization":
                continue
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        headers["X-Sim-Via"] = "control-plane"
        if not any(key.lower() == "accept-encoding" for key in headers):
            headers["Accept-Encoding"] = "identity"
        sends_body = bool(ex.body) or ex.method in ("POST", "PUT", "PATCH")
        try:
            resp = await self._client.request(
                ex.method,
                url,
                headers=headers,
                data=io.BytesIO(ex.body) if sends_body else None,  # bytes over 1 MiB: a warning
                skip_auto_headers=SKIP_AUTO_HEADERS,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, OSError, TimeoutError):
            return ex.error(502, "bad_gateway", "browser VM unreachable")
        async with resp:
            return await _relay(ex, resp)


async def _one_attempt(req: aiohttp.ClientRequest, send: aiohttp.ClientHandlerType) -> aiohttp.ClientResponse:
    """The VM's answer to one attempt; a dropped connection ends the request. aiohttp sends an
    idempotent request again when its connection drops (RFC 9112 9.3.1): around the
    middlewares, on ClientOSError or ServerDisconnectedError. Raised as their base class, the
    drop is not retried: the CP relays what the VM did, once, and a reset is the client's 502,
    counted once."""
    try:
        return await send(req)
    except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
        raise aiohttp.ClientConnectionError(*exc.args) from exc


async def _relay(ex: Exchange, resp: aiohttp.ClientResponse) -> web.StreamResponse:
    """The VM's answer to the client: whole if sized, else (SSE) chunk by chunk as it comes."""
    relay = [(k, v) for k, v in resp.headers.items() if k.lower() not in NOT_RELAYED]
    ctype = resp.headers.get("Content-Type", "").lower()
    chunked = "chunked" in resp.headers.get("Transfer-Encoding", "").lower()
    if "text/event-stream" not in ctype and (resp.headers.get("Content-Length") is not None or not chunked):
        try:
            data = await resp.read()
        except (aiohttp.ClientError, OSError, TimeoutError):
            return ex.error(502, "bad_gateway", "browser VM connection dropped")
        return ex.raw(resp.status, relay, data)
    out = await ex.start_stream(resp.status, relay, send_now=True)
    while True:
        try:
            chunk = await resp.content.readany()
        except (aiohttp.ClientError, OSError, TimeoutError):
            return ex.truncate(out)  # no terminating chunk: the client sees the cut
        if not chunk:
            break
        await out.write(chunk)
    return await ex.end_stream(out)
