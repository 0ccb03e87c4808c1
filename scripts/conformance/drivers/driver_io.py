"""The driver protocol's loop for the Python drivers: one JSON request per stdin line, one JSON
answer per stdout line, in order (docs/conform.md, "The driver protocol").

Standard library only, imported as a sibling module (the drivers run as scripts, under whatever
Python and SDK version the runner chose), so that the protocol is written once.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

Request = dict[str, Any]
Answer = dict[str, Any]
Handler = Callable[[Request], Answer]
OPS = ("create", "retrieve", "list", "delete", "acquire", "release", "call")


def setting(name: str) -> str:
    """A setting the runner gives every driver in its environment."""
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"driver: {name} is not set (the conformance runner sets it)")
    return value


def failed(kind: str, message: str, status: int | None = None, **fields: Any) -> Answer:
    """What the caller got when its call did not succeed: `kind` is status, timeout, connection
    or other."""
    return {"ok": False, "status": status, "error": {"kind": kind, "message": message}, **fields}


def parsed(text: str) -> Any:
    """A body as JSON, or None when it is none."""
    try:
        return json.loads(text)
    except ValueError:
        return None


class Clock:
    """Milliseconds since the call began, for the arrival of each stream event."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def ms(self) -> int:
        return round((time.monotonic() - self.start) * 1000)


def serve(hello: Answer, handlers: dict[str, Handler], can: Iterable[str]) -> int:
    """Answer requests until `close` or the end of stdin. `hello` names the client; `can` lists
    the capabilities beyond the ops (`stream`, `routing`)."""
    out = sys.stdout
    for line in sys.stdin:
        if not line.strip():
            continue
        request = parsed(line)
        if not isinstance(request, dict):
            answer: Answer = {"id": None, "driver_error": f"not a JSON object: {line[:80]!r}"}
        elif request.get("op") == "hello":
            answer = {"ok": True, **hello, "can": [*handlers, *can]}
        elif request.get("op") == "close":
            answer = {"ok": True}
        elif (handler := handlers.get(str(request.get("op")))) is None:
            answer = {"driver_error": f"unknown op {request.get('op')!r}"}
        else:
            try:
                answer = handler(request)
            except (KeyError, TypeError, ValueError) as exc:  # a request the driver cannot read
                answer = {"driver_error": f"{type(exc).__name__}: {exc}"}
        if isinstance(request, dict):
            answer["id"] = request.get("id")
        out.write(json.dumps(answer) + "\n")
        out.flush()
        if isinstance(request, dict) and request.get("op") == "close":
            break
    return 0
