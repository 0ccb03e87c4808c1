"""The fault and control surface: latency and injected faults on every counted request, and
the CP's `/_sim/*` endpoints (JSON in and out, no auth, never counted)."""

from __future__ import annotations

import http.client
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .exchange import Exchange
from .state import State

if TYPE_CHECKING:
    from .server import Simulator


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


async def handle_control(ex: Exchange, sim: Simulator) -> web.StreamResponse:
    """Answer `GET|POST /_sim/<action>` through the simulator's Python API."""
    action = ex.path[len("/_sim") :].strip("/")
    body = await ex.read_body()
    try:
        data: Any = json.loads(body) if body.strip() else {}
    except ValueError:
        return ex.error(400, "bad_request", "invalid JSON")
    args: dict[str, Any] = data if isinstance(data, dict) else {}
    try:
        result = _action(sim, ex.method, action, data, args)
    except (BadRequest, ValueError, TypeError) as exc:
        return ex.error(400, "bad_request", str(exc))
    except KeyError:
        return ex.error(404, "not_found", "browser not found")
    if result is None:
        return ex.error(404, "not_found", f"unknown control {ex.method} /_sim/{action}")
    return ex.json(200, result)


def _action(sim: Simulator, method: str, action: str, data: Any, args: dict[str, Any]) -> Any:
    """Run one control; its JSON result, or None for an unknown control."""
    if method == "GET" and action == "stats":
        return sim.stats()
    if method == "GET" and action == "browsers":
        return list(sim.browsers.values())
    if method != "POST":
        return None
    if action == "kill":
        sim.kill_on_vm(_text(args, "session", '{"session": "<id or name>"}'))
    elif action == "fault":
        sim.set_fault(
            args.get("status"),
            reset=bool(args.get("reset", False)),
            path_contains=args.get("path_contains"),
            side=str(args.get("side", "vm")),
            times=args.get("times"),
        )
    elif action == "latency":
        sim.set_latency(cp=float(args.get("cp", 0)), vm=float(args.get("vm", 0)))
    elif action == "gzip_gone":
        sim.set_gzip_gone(data if isinstance(data, bool) else bool(args.get("enabled", True)))
    elif action == "deleted_browser":
        sim.set_deleted_browser(_text(args, "answer", '{"answer": "gone" | "502"}'))
    elif action == "hold":
        sim.hold_streams(bool(args.get("hold", True)))
    elif action == "release":
        sim.release_streams()
    elif action == "reset":
        sim.reset()
    elif action == "create":
        return sim.create_browser(name=args.get("name"), pool=args.get("pool"))
    else:
        return None
    return {"ok": True}


def _text(args: dict[str, Any], key: str, expected: str) -> str:
    """A control's string argument, or a 400 that shows the body it expects."""
    value = args.get(key)
    if not isinstance(value, str):
        raise BadRequest(f"expected {expected}")
    return value
