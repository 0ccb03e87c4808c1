"""Requests, flows and answers as mitmproxy hands them to the addon, built with no addon running,
and what a client receives of an answer."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from known import API_KEY, CP_BODY, CP_HOST, GONE, JWT, SID, VM_BASE, VM_HOST, VM_PORT
from mitmproxy import http
from mitmproxy.test import tflow, tutils


def cp_request(
    method: str = "GET",
    path: str = "/browsers",
    *,
    content: bytes = b"",
    headers: tuple[tuple[str, str], ...] = (),
    host: str = CP_HOST,
    port: int = 443,
    scheme: str = "https",
    http2: bool = False,
) -> http.Request:
    """A client's request as mitmproxy parses it, with the API key in Authorization."""
    default_port = 443 if scheme == "https" else 80
    authority = host if port == default_port else f"{host}:{port}"
    fields: list[tuple[bytes, bytes]] = [] if http2 else [(b"Host", authority.encode())]
    fields += [
        (b"Authorization", f"Bearer {API_KEY}".encode()),
        (b"Accept", b"application/json"),
        (b"User-Agent", b"kernel-python/0.131.0"),
        (b"X-Trace", b"trace-1"),
    ]
    fields += [(k.encode(), v.encode()) for k, v in headers]
    if content:
        fields.append((b"Content-Length", str(len(content)).encode()))
    return tutils.treq(
        method=method.encode(),
        scheme=scheme.encode(),
        host=host,
        port=port,
        path=path.encode(),
        authority=authority.encode() if http2 else b"",
        http_version=b"HTTP/2.0" if http2 else b"HTTP/1.1",
        headers=http.Headers(fields),
        content=content,
    )


def cp_flow(method: str = "GET", path: str = "/browsers", **kwargs: Any) -> http.HTTPFlow:
    return tflow.tflow(req=cp_request(method, path, **kwargs))


def json_response(
    status: int = 200,
    body: object = None,
    *,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> http.Response:
    return http.Response.make(
        status, json.dumps(body).encode(), {"Content-Type": content_type, **(headers or {})}
    )


def gone_response(**kwargs: Any) -> http.Response:
    return json_response(404, GONE, headers={"X-VM": "metro-proxy"}, **kwargs)


def cp_response(status: int = 200, body: object = CP_BODY) -> http.Response:
    return json_response(status, body, headers={"X-Served-By": "control-plane", "Set-Cookie": "cp=1"})


def browser(
    sid: str = SID,
    *,
    base_url: str = VM_BASE,
    jwt: str = JWT,
    name: str | None = None,
    cdp_only: bool = False,
) -> dict[str, Any]:
    """A browser object as the CP returns it."""
    obj: dict[str, Any] = {
        "session_id": sid,
        "base_url": base_url,
        "cdp_ws_url": f"wss://{VM_HOST}:{VM_PORT}/browser/cdp?jwt={quote(jwt, safe='')}",
        "created_at": "2025-01-01T00:00:00Z",
        "headless": True,
    }
    if not cdp_only:
        obj["jwt"] = jwt
    if name is not None:
        obj["name"] = name
    return obj


def view(response: http.Response, body: bytes | None = None) -> tuple[Any, ...]:
    """What a client receives: status, reason, headers (in order) and raw bytes."""
    return (
        response.status_code,
        response.reason,
        tuple(response.headers.fields),
        body if body is not None else response.raw_content,
    )


def query_of(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query, keep_blank_values=True)
