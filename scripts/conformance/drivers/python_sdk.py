"""Conformance driver for the Kernel Python SDK (`kernel`), its own routing on.

    KERNEL_CONFORM_PROXY=... KERNEL_CONFORM_CA=... KERNEL_API_KEY=... KERNEL_BASE_URL=... \
    KERNEL_BROWSER_ROUTING_SUBRESOURCES=telemetry python python_sdk.py

Speaks the driver protocol (docs/conform.md) on stdin and stdout. The runner puts the SDK version
under test first on PYTHONPATH; the SDK reads its allowlist from the environment when the client
is built. Every call goes through the SDK's public client (`client.get`, `client.post`, ...), so
what the caller gets is what the SDK gives it.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import quote

import httpx
import kernel
from driver_io import Answer, Clock, Request, failed, parsed, serve, setting


def build() -> kernel.Kernel:
    tls = ssl.create_default_context(cafile=setting("KERNEL_CONFORM_CA"))
    http_client = kernel.DefaultHttpxClient(proxy=setting("KERNEL_CONFORM_PROXY"), verify=tls)
    return kernel.Kernel(
        api_key=setting("KERNEL_API_KEY"), base_url=setting("KERNEL_BASE_URL"), http_client=http_client
    )


CLIENT = build()


def timeout(request: Request) -> float:
    return float(request.get("timeout_ms", 10000)) / 1000


def caught(error: Exception, **fields: Any) -> Answer:
    """What the caller got from an SDK exception."""
    if isinstance(error, kernel.APIStatusError):
        text = error.response.text
        return failed("status", str(error), error.status_code, json=parsed(text), body=text, **fields)
    if isinstance(error, kernel.APITimeoutError):
        return failed("timeout", str(error), **fields)
    if isinstance(error, kernel.APIConnectionError | httpx.TransportError):
        return failed("connection", f"{type(error).__name__}: {error}", **fields)
    return failed("other", f"{type(error).__name__}: {error}", **fields)


def browser_op(request: Request) -> Answer:
    """create, retrieve, delete, acquire, release; list answers the first page's size."""
    op, t = request["op"], timeout(request)
    raw: Any
    try:
        if op == "create":
            raw = CLIENT.browsers.with_raw_response.create(timeout=t)
        elif op == "retrieve":
            raw = CLIENT.browsers.with_raw_response.retrieve(request["session_id"], timeout=t)
        elif op == "list":
            raw = CLIENT.browsers.with_raw_response.list(timeout=t)
        elif op == "delete":
            raw = CLIENT.browsers.with_raw_response.delete_by_id(request["session_id"], timeout=t)
        elif op == "acquire":
            raw = CLIENT.browser_pools.with_raw_response.acquire(request["pool"], timeout=t)
        else:
            raw = CLIENT.browser_pools.with_raw_response.release(
                request["pool"], session_id=request["session_id"], timeout=t
            )
        data = raw.parse()
    except Exception as error:  # every failure is what the caller got
        return caught(error)
    answer: Answer = {"ok": True, "status": raw.status_code, "error": None}
    if op == "list":
        answer["count"] = len(data.items)
    elif op in ("create", "retrieve", "acquire"):
        answer["session_id"] = data.session_id
    return answer


def call(request: Request) -> Answer:
    """A browser subresource call through the SDK's generic methods: routed by the SDK."""
    path = f"/browsers/{quote(request['session_id'], safe='')}/{request['path']}"
    options: Any = {"params": dict(request.get("query") or []), "timeout": timeout(request)}
    method = str(request.get("method", "GET")).lower()
    if request.get("stream"):
        return stream(path, options, int(request.get("max_events", 3)))
    kwargs: dict[str, Any] = {"cast_to": httpx.Response, "options": options}
    if method in ("post", "put", "patch"):
        kwargs["body"] = request.get("body")
    try:
        response = getattr(CLIENT, method)(path, **kwargs)
    except Exception as error:
        return caught(error)
    return {"ok": True, "status": response.status_code, "error": None, "json": parsed(response.text),
            "body": response.text}  # fmt: skip


def stream(path: str, options: Any, max_events: int) -> Answer:
    """An SSE stream read through the SDK's Stream, each event timed as the caller sees it."""
    clock, events = Clock(), []
    try:
        with CLIENT.get(
            path, cast_to=object, options=options, stream=True, stream_cls=kernel.Stream[object]
        ) as s:
            status = s.response.status_code
            for event in s:
                events.append({"t_ms": clock.ms(), "data": event})
                if len(events) >= max_events:
                    break
    except Exception as error:
        return caught(error, events=events)
    return {"ok": True, "status": status, "error": None, "events": events}


def main() -> int:
    handlers = {op: browser_op for op in ("create", "retrieve", "list", "delete", "acquire", "release")}
    hello: Answer = {"client": "kernel", "language": "python", "version": kernel.__version__, "cannot": {}}
    if not hasattr(CLIENT, "browser_pools"):
        del handlers["acquire"], handlers["release"]
        hello["cannot"]["acquire"] = f"kernel {kernel.__version__} has no browser_pools"
    routing = hasattr(CLIENT, "browser_route_cache")
    if not routing:
        hello["cannot"]["routing"] = f"kernel {kernel.__version__} has no direct-to-VM routing of its own"
    can = ["stream", "routing"] if routing else ["stream"]
    status: int = serve(hello, {**handlers, "call": call}, can)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
