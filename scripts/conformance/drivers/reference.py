"""The `reference` client: routes by itself exactly as the reference change says, with httpx.

    python reference.py [--flaw NAME[,NAME...]]

It learns routes from the control plane's browser answers (create, retrieve, list, pool acquire:
`session_id`, `base_url`, the jwt of `cdp_ws_url`), forgets them on a delete and a pool release,
sends allowlisted subresource calls to the VM with the route's jwt and no API key, and on a
`404 {"code": "browser_gone"}` to a GET of a fallback-eligible path evicts the route and re-issues
the call once to the control plane, with the API key and without the jwt, returning that answer
as it is. It never retries. Speaks the driver protocol (docs/conform.md) on stdin and stdout.

`--flaw` breaks one rule on purpose, so that the runner's own tests can show each case fail
(see FLAWS); a flawed reference is no reference.
"""

from __future__ import annotations

import argparse
import os
import re
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import httpx
from driver_io import Answer, Clock, Request, failed, parsed, serve, setting

REGISTRY = ("telemetry/events",)  # the reference's fallback-eligible paths
FLAWS = {
    "api_key_on_vm": "keeps the API key on VM requests",
    "jwt_on_cp": "keeps the jwt on the fallback's CP re-issue",
    "fallback_on_5xx": "falls back on a VM 5xx too",
    "fallback_on_post": "falls back on any method",
    "fallback_on_any_path": "falls back on any routed path",
    "two_reissues": "sends the fallback's CP re-issue twice, the second before the first is answered",
    "no_eviction": "keeps the route after a browser_gone fallback",
    "buffered_stream": "reads a whole event stream before the caller sees its first event",
}
METADATA_PATH = re.compile(r"^(?:/v\d+)?/browsers(?:/[^/]+)?/?$")
ACQUIRE_PATH = re.compile(r"^(?:/v\d+)?/browser_pools/[^/]+/acquire/?$")
DELETE_PATH = re.compile(r"^(?:/v\d+)?/browsers/([^/]+)/?$")
RELEASE_PATH = re.compile(r"^(?:/v\d+)?/browser_pools/[^/]+/release/?$")


@dataclass(frozen=True)
class Route:
    base_url: str
    jwt: str


class Reference:
    def __init__(self, flaws: set[str]) -> None:
        self.flaws = flaws
        self.base = setting("KERNEL_BASE_URL").rstrip("/")
        self.auth = {"Authorization": f"Bearer {setting('KERNEL_API_KEY')}"}
        entries = os.environ.get("KERNEL_BROWSER_ROUTING_SUBRESOURCES", "").split(",")
        self.allowlist = tuple(e.strip().strip("/") for e in entries if e.strip())
        tls = ssl.create_default_context(cafile=setting("KERNEL_CONFORM_CA"))
        self.http = httpx.Client(proxy=setting("KERNEL_CONFORM_PROXY"), verify=tls, trust_env=False)
        self.routes: dict[str, Route] = {}

    # -- the control plane's browser calls ---------------------------------------------------

    def browser_op(self, request: Request) -> Answer:
        op, sid = request["op"], quote(str(request.get("session_id", "")), safe="")
        pool = quote(str(request.get("pool", "")), safe="")
        method, path, body = {
            "create": ("POST", "/browsers", {}),
            "retrieve": ("GET", f"/browsers/{sid}", None),
            "list": ("GET", "/browsers", None),
            "delete": ("DELETE", f"/browsers/{sid}", None),
            "acquire": ("POST", f"/browser_pools/{pool}/acquire", {}),
            "release": ("POST", f"/browser_pools/{pool}/release", {"session_id": request.get("session_id")}),
        }[op]
        try:
            response = self.http.request(
                method, self.base + path, json=body, headers=self.auth, timeout=seconds(request)
            )
        except httpx.HTTPError as error:
            return transport_failure(error)
        self.learn(response)
        answer = result(response)
        if response.is_success and op == "list":
            answer["count"] = len(answer["json"]) if isinstance(answer["json"], list) else 0
        elif response.is_success and op in ("create", "retrieve", "acquire"):
            answer["session_id"] = answer["json"]["session_id"]
        return answer

    def learn(self, response: httpx.Response) -> None:
        """Routes from a successful JSON answer of a browser-metadata path; evictions from a
        successful delete or pool release."""
        if not response.is_success:
            return
        method, path = response.request.method, response.request.url.path
        if method == "DELETE" and (found := DELETE_PATH.match(path)):
            self.routes.pop(unquote(found.group(1)), None)
        elif method == "POST" and RELEASE_PATH.match(path):
            released = parsed(response.request.content.decode() or "null")
            if isinstance(released, dict):
                self.routes.pop(str(released.get("session_id")), None)
        elif "json" in response.headers.get("content-type", "") and (
            METADATA_PATH.match(path) or (method == "POST" and ACQUIRE_PATH.match(path))
        ):
            self.walk(parsed(response.text))

    def walk(self, value: Any) -> None:
        if isinstance(value, list):
            for item in value:
                self.walk(item)
        elif isinstance(value, dict):
            sid, base, cdp = value.get("session_id"), value.get("base_url"), value.get("cdp_ws_url")
            if isinstance(sid, str) and isinstance(base, str) and isinstance(cdp, str):
                jwt = (parse_qs(urlsplit(cdp).query).get("jwt") or [""])[0]
                if jwt:
                    self.routes[sid.strip()] = Route(base.strip().rstrip("/"), jwt)
            for child in value.values():
                self.walk(child)

    # -- a browser subresource call ---------------------------------------------------------

    def call(self, request: Request) -> Answer:
        sid, path = str(request["session_id"]), str(request["path"]).strip("/")
        method, query = (
            str(request.get("method", "GET")).upper(),
            [tuple(p) for p in request.get("query") or []],
        )
        cp_url = f"{self.base}/browsers/{quote(sid, safe='')}/{path}"
        route = self.routes.get(sid)
        if route is None or not allowlisted(path, self.allowlist):
            return self.send(request, method, cp_url, query, self.auth)
        vm_headers = self.auth if "api_key_on_vm" in self.flaws else {}
        vm_query = [*query, ("jwt", route.jwt)]
        answer = self.send(request, method, f"{route.base_url}/{path}", vm_query, vm_headers)
        if not self.falls_back(method, path, answer):
            return answer
        if "no_eviction" not in self.flaws:
            self.routes.pop(sid, None)
        cp_query = vm_query if "jwt_on_cp" in self.flaws else query
        if "two_reissues" in self.flaws:
            return self.reissue_twice(request, method, cp_url, cp_query)
        return self.send(request, method, cp_url, cp_query, self.auth)

    def reissue_twice(self, request: Request, method: str, url: str, query: list[Any]) -> Answer:
        """The flaw `two_reissues`: the first re-issue holds back its (empty) body until the second
        has its answer, so that the second is surely sent while the first is unanswered."""
        headers_sent, second_answered = threading.Event(), threading.Event()

        def held_body() -> Iterator[bytes]:
            headers_sent.set()  # httpx asks for the body once the headers are on their way
            second_answered.wait(10)
            yield b""

        first: list[Answer] = []
        thread = threading.Thread(
            target=lambda: first.append(self.send(request, method, url, query, self.auth, held_body()))
        )
        thread.start()
        headers_sent.wait(10)
        self.send(request, method, url, query, self.auth)
        second_answered.set()
        thread.join()
        return first[0]

    def falls_back(self, method: str, path: str, answer: Answer) -> bool:
        status = answer["status"]
        if method != "GET" and "fallback_on_post" not in self.flaws:
            return False
        if path not in REGISTRY and "fallback_on_any_path" not in self.flaws:
            return False
        if status is not None and status >= 500 and "fallback_on_5xx" in self.flaws:
            return True
        json_body = answer.get("json")
        return status == 404 and isinstance(json_body, dict) and json_body.get("code") == "browser_gone"

    def send(
        self, request: Request, method: str, url: str, query: list[Any], headers: dict[str, str],
        content: Iterator[bytes] | None = None,
    ) -> Answer:  # fmt: skip
        body = request.get("body") if method in ("POST", "PUT", "PATCH") else None
        built = self.http.build_request(
            method, url, params=query, headers=headers, json=body, content=content, timeout=seconds(request)
        )
        clock = Clock()
        try:
            response = self.http.send(built, stream=True)
        except httpx.HTTPError as error:
            return transport_failure(error)
        try:
            if request.get("stream") and response.is_success:
                return self.events(response, clock, int(request.get("max_events", 3)))
            response.read()
            return result(response)
        except httpx.HTTPError as error:
            return transport_failure(error)
        finally:
            response.close()

    def events(self, response: httpx.Response, clock: Clock, max_events: int) -> Answer:
        """Server-sent events as they arrive (each `data:` block one event)."""
        if "buffered_stream" in self.flaws:
            response.read()
            lines = iter(response.text.splitlines())
        else:
            lines = response.iter_lines()
        events: list[dict[str, Any]] = []
        data: list[str] = []
        for line in lines:
            if line.startswith("data:"):
                data.append(line[5:].strip())
            elif not line and data:
                events.append({"t_ms": clock.ms(), "data": parsed("\n".join(data))})
                data = []
                if len(events) >= max_events:
                    break
        return {"ok": True, "status": response.status_code, "error": None, "events": events}


def allowlisted(path: str, allowlist: tuple[str, ...]) -> bool:
    return any(path == entry or path.startswith(entry + "/") for entry in allowlist)


def seconds(request: Request) -> float:
    return float(request.get("timeout_ms", 10000)) / 1000


def result(response: httpx.Response) -> Answer:
    answer: Answer = {"ok": response.is_success, "status": response.status_code, "error": None}
    if not response.is_success:
        answer["error"] = {"kind": "status", "message": f"HTTP {response.status_code}"}
    answer |= {"json": parsed(response.text), "body": response.text}
    return answer


def transport_failure(error: httpx.HTTPError) -> Answer:
    kind = "timeout" if isinstance(error, httpx.TimeoutException) else "connection"
    return failed(kind, f"{type(error).__name__}: {error}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--flaw", default="", help="comma-separated: " + ", ".join(FLAWS))
    flaws = {f.strip() for f in parser.parse_args().flaw.split(",") if f.strip()}
    if unknown := flaws - set(FLAWS):
        parser.error(f"unknown flaw {', '.join(sorted(unknown))} (known: {', '.join(FLAWS)})")
    client = Reference(flaws)
    ops = ("create", "retrieve", "list", "delete", "acquire", "release")
    handlers = {op: client.browser_op for op in ops} | {"call": client.call}
    label = "reference" + (f" --flaw {','.join(sorted(flaws))}" if flaws else "")
    hello = {"client": label, "language": "python", "version": "httpx " + httpx.__version__}
    status: int = serve(hello, handlers, ("stream", "routing"))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
