"""The browser VM's proxy (HTTPS): the jwt check, the answer for a deleted browser, and the
browser's subresources (telemetry events and SSE stream, process exec, files, curl, echo)."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web

from . import shapes
from .control import apply_faults
from .exchange import Exchange
from .shapes import BAD_GATEWAY_BODY, GONE_BODY, VM_PREFIX, sha256
from .state import State

JSON = ("Content-Type", "application/json")


async def handle_vm(ex: Exchange, state: State) -> web.StreamResponse:
    answered = await apply_faults(ex, state)
    if answered is not None:
        return answered
    # parse_qs decodes '+' as space, like the real (Go) server: an unencoded
    # '+' in the jwt is an auth failure, which is the bug this should catch.
    jwt = (parse_qs(ex.query, keep_blank_values=True).get("jwt") or [""])[0]
    session_id, gone = state.vm_session(jwt)
    if gone:
        return deleted_answer(ex, state)
    if session_id is None:
        return ex.error(401, "unauthorized", "missing or invalid jwt")
    if not (ex.path == VM_PREFIX or ex.path.startswith(VM_PREFIX + "/")):
        return ex.error(404, "not_found", "route not found")
    tail = ex.path[len(VM_PREFIX) :].strip("/")
    method = ex.method
    if tail == "telemetry/events" and method == "GET":
        sess = state.lookup(session_id)
        if sess is not None:
            return send_page(ex, shapes.events(sess.session_id, "vm"))
    elif tail == "telemetry/stream" and method == "GET":
        return await _sse(ex, state, session_id, jwt)
    elif tail == "process/exec" and method == "POST":
        return _exec(ex)
    elif tail == "fs/read_file" and method == "GET":
        file_path = (parse_qs(ex.query).get("path") or [""])[0]
        if not file_path:
            return ex.error(400, "bad_request", "path is required")
        return ex.raw(200, [("Content-Type", "application/octet-stream")], shapes.file_bytes(file_path))
    return _echo(ex, tail)


def deleted_answer(ex: Exchange, state: State) -> web.Response:
    """A deleted or killed browser: 404 browser_gone (gzipped if asked), or the live VM's 502."""
    answer, gz = state.deleted_answer()
    if answer == "502":
        return ex.raw(502, [JSON], BAD_GATEWAY_BODY)
    if gz:
        return ex.raw(404, [JSON, ("Content-Encoding", "gzip")], gzip.compress(GONE_BODY))
    return ex.raw(404, [JSON], GONE_BODY)


def send_page(ex: Exchange, items: list[dict[str, Any]]) -> web.Response:
    try:
        items_page, headers = shapes.page(items, ex.query)
    except ValueError as exc:
        return ex.error(400, "bad_request", str(exc))
    return ex.json(200, items_page, headers)


def _echo(ex: Exchange, tail: str) -> web.Response:
    """Any other subresource: what arrived, so tests can check what the proxy sent."""
    echo: dict[str, Any] = {
        "sim": "echo",
        "method": ex.method,
        "path": ex.path,
        "body_sha256": sha256(ex.body),
        "body_len": len(ex.body),
    }
    if tail == "curl/raw":
        echo["sim"] = "curl_raw"
        echo["url"] = (parse_qs(ex.query).get("url") or [""])[0] or None
        return ex.json(200, echo)
    if tail == "curl" or tail.startswith("curl/"):
        # Shape of BrowserCurlResponse, plus the echo.
        echo["sim"] = "curl"
        curl = {
            "status": 200,
            "headers": {"content-type": ["application/json"]},
            "body": json.dumps(echo),
            "duration_ms": 1,
            "sim_echo": echo,
        }
        return ex.json(200, curl)
    return ex.json(200, echo)


def _exec(ex: Exchange) -> web.Response:
    try:
        parsed = json.loads(ex.body) if ex.body else None
    except ValueError:
        parsed = None
    desc = {"sha256": sha256(ex.body), "length": len(ex.body), "json": parsed}
    if not isinstance(parsed, dict) or "command" not in parsed:
        return ex.json(400, {"code": "bad_request", "message": "command is required", "sim_echo": desc})
    # ProcessExecResponse fields; stdout carries the echo so SDK users can read it.
    result = {
        "exit_code": 0,
        "duration_ms": 1,
        "stdout_b64": base64.b64encode(json.dumps(desc).encode()).decode(),
        "stderr_b64": "",
        "sim_echo": desc,
    }
    return ex.json(200, result)


async def _sse(ex: Exchange, state: State, session_id: str, jwt: str) -> web.StreamResponse:
    """`sse_count` events, `sse_interval` apart; held streams wait after the first."""
    out = await ex.start_stream(200, [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
    for seq in range(1, state.sse_count + 1):
        if seq > 1:
            if await state.stopping.wait(state.sse_interval):
                break
            await state.released.wait()  # stop() releases too
            if state.stopping.is_set() or not state.vm_alive(jwt, session_id):
                break  # the real stream closes when the browser goes away
        env = shapes.event(session_id, seq, "vm")
        await out.write(b"data: %s\nid: %d\n\n" % (json.dumps(env).encode(), seq))
    return await ex.end_stream(out)
