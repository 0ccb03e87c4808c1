"""The fault and control surface: latency and injected faults on every counted request, and
the CP's `/_sim/*` endpoints (JSON in and out, no auth, never counted)."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .exchange import Exchange
from .state import State

# Runs one control: (method, action, JSON body, its object or {}) -> its JSON result, or None
# for an unknown control. The simulator's Python API, handed in so that this module needs no
# import of the server.
Action = Callable[[str, str, Any, dict[str, Any]], Any]


class BadRequest(Exception):
    """Raised by control actions to answer 400 with a message."""


def is_control(path: str) -> bool:
    return path == "/_sim" or path.startswith("/_sim/")


async def apply_faults(ex: Exchange, state: State) -> web.StreamResponse | None:
    """Apply the side's latency, then any matching fault; the answer if the fault took the request."""
    delay = state.latency(ex.side)
    if delay > 0:
        await state.stopping.wait(delay)
    fault = state.take_fault(ex.side, ex.path)
    if fault is None:
        return None
    if fault.reset:
        return ex.reset()
    status = fault.status or 502
    phrase = http.client.responses.get(status, "Error")
    return ex.raw(status, [("Content-Type", "text/plain")], f"simulated {status} {phrase}\n".encode())


async def handle_control(ex: Exchange, act: Action) -> web.StreamResponse:
    """Answer `GET|POST /_sim/<action>` through the simulator's Python API."""
    action = ex.path[len("/_sim") :].strip("/")
    body = await ex.read_body()
    try:
        data: Any = json.loads(body) if body.strip() else {}
    except ValueError:
        return ex.error(400, "bad_request", "invalid JSON")
    args: dict[str, Any] = data if isinstance(data, dict) else {}
    try:
        result = act(ex.method, action, data, args)
    except (BadRequest, ValueError, TypeError) as exc:
        return ex.error(400, "bad_request", str(exc))
    except KeyError:
        return ex.error(404, "not_found", "browser not found")
    if result is None:
        return ex.error(404, "not_found", f"unknown control {ex.method} /_sim/{action}")
    return ex.json(200, result)


def text_arg(args: dict[str, Any], key: str, expected: str) -> str:
    """A control's string argument, or a 400 that shows the body it expects."""
    value = args.get(key)
    if not isinstance(value, str):
        raise BadRequest(f"expected {expected}")
    return value
