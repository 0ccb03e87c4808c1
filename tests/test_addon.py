"""The three addons together, driven hook by hook in mitmproxy's order with taddons/tflow.

The fallback's real re-issue goes through `mitmproxy.addons.clientplayback.ReplayHandler`
(network); here `addon.reissue.ReplayHandler` is replaced by a fake that answers without a
network but, like the real one, runs the re-issue through the addons' own hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import inspect
import io
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
from mitmproxy import exceptions, hooks, http
from mitmproxy import io as mitmio
from mitmproxy.addons import clientplayback
from mitmproxy.addons.script import load_script
from mitmproxy.flow import Error
from mitmproxy.test import taddons, tflow, tutils
from mitmproxy.utils.emoji import emoji

import addon.reissue as reissue_mod
from addon import chain
from addon.auditor import RoutingAudit
from addon.commands import RouteCommands
from addon.fallback import MAX_GONE_BODY
from addon.injector import FaultInjection
from addon.paths import DEFAULT_SUBRESOURCES, SUBRESOURCES_ENV
from addon.persistence import RoutesFile
from addon.recorder import METADATA_KEY, DecisionRecorder
from addon.reissue import ControlPlaneFallback
from addon.router import BrowserRouting
from addon.routes import Route, redact

ROOT = Path(__file__).resolve().parent.parent

CP = "https://api.example.test"
CP_HOST = "api.example.test"
API_KEY = "sk-secret"
SID = "sess-a1b2c3"
SID2 = "sess-d4e5f6"
JWT_SECRET_PART = "SIGNATURE-secret-part"
JWT = f"eyJhbGciOiJIUzI1NiJ9.eyJzaWQiOiJzZXNzLWExYjJjMyJ9.{JWT_SECRET_PART}"
JWT2 = "eyJhbGciOiJIUzI1NiJ9.eyJzaWQiOiJzZXNzLWQ0ZTVmNiJ9.OTHER-secret-part"
VM_HOST = "proxy.iad.vm.test"
VM_PORT = 8443
VM_BASE = f"https://{VM_HOST}:{VM_PORT}/browser/kernel"
GONE = {"code": "browser_gone", "message": "browser not found"}
CP_BODY = {"events": [{"seq": 1, "type": "console"}], "source": "control-plane"}

# Telemetry is routed explicitly, as the reference's tests do.
TEST_OPTIONS: dict[str, Any] = {
    "browserrouting_control_plane": CP,
    "browserrouting_vm_hosts": "*.vm.test",
    "browserrouting_subresources": "curl,telemetry,fs,process,computer",
}


# --------------------------------------------------------------------------- builders


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


# --------------------------------------------------------------------------- harness


async def run_hook(addons: list[Any], name: str, flow: http.HTTPFlow) -> None:
    """One hook on every addon in chain order, awaiting the async ones."""
    for a in addons:
        fn = getattr(a, name, None)
        if fn is not None:
            result = fn(flow)
            if inspect.isawaitable(result):
                await result


async def deliver(
    addons: list[Any], flow: http.HTTPFlow, response: http.Response, streamed: dict[str, bytes]
) -> None:
    """responseheaders, then response; a response set to stream reaches `response` without a
    body, as in mitmproxy (its bytes went straight to the client: kept in `streamed`)."""
    flow.response = response
    await run_hook(addons, "responseheaders", flow)
    if flow.response.stream:
        streamed[flow.id] = flow.response.raw_content or b""
        flow.response.raw_content = None
    await run_hook(addons, "response", flow)


async def cp_answer(copy: http.HTTPFlow) -> http.Response | Error:
    return cp_response()


@dataclass
class Reissues:
    """What the fake ReplayHandler got; `answer` decides what the CP says to a re-issue."""

    addons: list[Any]
    streamed: dict[str, bytes]
    copies: list[http.HTTPFlow] = field(default_factory=list)
    received: list[http.Request] = field(default_factory=list)  # the request as handed over
    sent: list[http.Request] = field(default_factory=list)  # after the addons' request hooks
    options: list[Any] = field(default_factory=list)
    answer: Callable[[http.HTTPFlow], Awaitable[http.Response | Error]] = field(
        default_factory=lambda: cp_answer
    )

    async def run(self, copy: http.HTTPFlow) -> None:
        """What ReplayHandler.replay does, minus the network: the copy is live and passes
        through every addon's hooks; the answer is set on it."""
        self.copies.append(copy)
        self.received.append(copy.request.copy())
        copy.live = True
        await run_hook(self.addons, "requestheaders", copy)
        await run_hook(self.addons, "request", copy)
        self.sent.append(copy.request.copy())
        answer = await self.answer(copy)
        if isinstance(answer, http.Response):
            await deliver(self.addons, copy, answer, self.streamed)
        else:
            copy.error = answer
            await run_hook(self.addons, "error", copy)
        copy.live = False


def fake_replay_handler(reissues: Reissues) -> type:
    class FakeReplayHandler:
        """Same constructor as clientplayback.ReplayHandler; replay() needs no network."""

        def __init__(self, flow: http.HTTPFlow, options: Any) -> None:
            self.flow = flow
            reissues.options.append(options)

        async def replay(self) -> None:
            await reissues.run(self.flow)

    return FakeReplayHandler


@dataclass
class Harness:
    tctx: taddons.context
    parts: chain.Parts
    router: BrowserRouting
    fallback: ControlPlaneFallback
    recorder: DecisionRecorder
    reissues: Reissues
    log_path: Path
    streamed: dict[str, bytes]
    flows: list[http.HTTPFlow] = field(default_factory=list)
    secrets: set[str] = field(default_factory=lambda: {API_KEY, JWT, JWT_SECRET_PART, JWT2})

    @property
    def addons(self) -> list[Any]:
        return [self.parts]  # the one object that takes the flow hooks

    def configure(self, **options: Any) -> None:
        self.tctx.configure(self.router, **options)

    async def request(self, flow: http.HTTPFlow) -> http.HTTPFlow:
        self.flows.append(flow)
        await run_hook(self.addons, "requestheaders", flow)
        await run_hook(self.addons, "request", flow)
        return flow

    async def respond(self, flow: http.HTTPFlow, response: http.Response) -> http.HTTPFlow:
        await deliver(self.addons, flow, response, self.streamed)
        return flow

    async def fail(self, flow: http.HTTPFlow, msg: str) -> http.HTTPFlow:
        flow.error = Error(msg)
        await run_hook(self.addons, "error", flow)
        return flow

    async def exchange(self, flow: http.HTTPFlow, response: http.Response) -> http.HTTPFlow:
        await self.request(flow)
        return await self.respond(flow, response)

    async def learn(
        self,
        *objs: dict[str, Any],
        body: object = None,
        method: str = "POST",
        path: str = "/browsers",
        status: int = 200,
        content_type: str = "application/json",
    ) -> http.HTTPFlow:
        """A CP browser-metadata call whose response describes `objs` (or is `body`)."""
        doc = body if body is not None else (objs[0] if len(objs) == 1 else list(objs))
        return await self.exchange(
            cp_flow(method, path), json_response(status, doc, content_type=content_type)
        )

    def client_view(self, flow: http.HTTPFlow) -> tuple[Any, ...]:
        assert flow.response is not None
        return view(flow.response, self.streamed.get(flow.id))

    def log(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text(encoding="utf-8").splitlines()]


def start(tctx: taddons.context, addons: list[Any]) -> None:
    """What loading `-s addon/browser_routing.py` does: configure each addon with every option."""
    for a in addons:
        tctx.master.addons.invoke_addon_sync(a, hooks.ConfigureHook(set(tctx.options.keys())))


@contextlib.contextmanager
def running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: dict[str, Any]) -> Iterator[Harness]:
    # Built exactly as addon/browser_routing.py builds them.
    parts = chain.Parts()
    router, fallback, recorder = parts.router, parts.fallback, parts.recorder
    streamed: dict[str, bytes] = {}
    reissues = Reissues([parts], streamed)
    monkeypatch.setattr(reissue_mod, "ReplayHandler", fake_replay_handler(reissues))
    log_path = tmp_path / "decisions.jsonl"
    with taddons.context(*parts.chain) as tctx:
        start(tctx, parts.chain)
        tctx.configure(router, browserrouting_log=str(log_path), **options)
        try:
            yield Harness(tctx, parts, router, fallback, recorder, reissues, log_path, streamed)
        finally:
            recorder.done()


def secret_texts(h: Harness, caplog_text: str) -> list[str]:
    texts = [caplog_text, h.log_path.read_text(encoding="utf-8") if h.log_path.exists() else ""]
    for f in h.flows + h.reissues.copies:
        texts.append(json.dumps(f.metadata, default=str))
        texts.append(f.comment)
    return texts


def assert_no_secrets(h: Harness, caplog_text: str) -> None:
    for text in secret_texts(h, caplog_text):
        for secret in h.secrets:
            assert secret not in text
            assert quote(secret, safe="") not in text


@pytest.fixture
async def h(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[Harness]:
    caplog.set_level(logging.DEBUG)
    monkeypatch.delenv(SUBRESOURCES_ENV, raising=False)
    with running(tmp_path, monkeypatch, TEST_OPTIONS) as harness:
        yield harness
    # Every test doubles as a secrets check: metadata, comments, the log file, the logs.
    assert_no_secrets(harness, caplog.text)


async def routed(
    h: Harness, path: str = f"/browsers/{SID}/telemetry/events", method: str = "GET", **kw: Any
) -> http.HTTPFlow:
    """Cache SID's route (once), then send a request that must be routed."""
    if h.router.cache.get(SID) is None:
        await h.learn(browser())
    flow = await h.request(cp_flow(method, path, **kw))
    assert flow.metadata[METADATA_KEY]["decision"] == "routed"
    assert flow.request.host == VM_HOST
    return flow


def record(flow: http.HTTPFlow) -> dict[str, Any]:
    rec = flow.metadata[METADATA_KEY]
    assert isinstance(rec, dict)
    return rec


# =========================================================================== reference cases


async def test_positive_fallback(h: Harness) -> None:
    cp_url = f"{CP}/v1/browsers/{SID}/telemetry/events?since=5&limit=10"
    flow = await routed(h, f"/v1/browsers/{SID}/telemetry/events?since=5&limit=10")
    assert flow.request.url == f"{VM_BASE}/telemetry/events?since=5&limit=10&jwt={JWT}"
    assert "authorization" not in flow.request.headers

    await h.respond(flow, gone_response())

    # exactly one CP re-issue: the client's URL, Authorization restored, no jwt
    assert len(h.reissues.copies) == 1
    copy = h.reissues.copies[0]
    sent = h.reissues.sent[0]
    assert h.reissues.received[0].url == cp_url
    assert sent.url == cp_url
    assert sent.method == "GET"
    assert sent.headers["Authorization"] == f"Bearer {API_KEY}"
    assert sent.headers["Host"] == CP_HOST
    assert sent.headers["X-Trace"] == "trace-1"
    assert "jwt" not in dict(query_of(sent.url))
    assert copy.id != flow.id
    assert copy.is_replay == "request"
    # mitmproxy's options (upstream mode, TLS) reach the re-issue; streaming does not
    (options,) = h.reissues.options
    assert options.mode == h.tctx.options.mode and options.ssl_insecure == h.tctx.options.ssl_insecure
    assert options.stream_large_bodies is None
    # the route is evicted: the browser is gone
    assert h.router.cache.get(SID) is None
    assert h.router.originals == {}
    # the client gets the CP's answer
    assert h.client_view(flow) == view(cp_response())
    # the two records link the flows
    rec = record(flow)
    assert rec["decision"] == "fallback"
    assert rec["reason"] is None
    assert rec["vm_status"] == 404
    assert rec["cp_status"] == 200
    assert rec["reissue_flow"] == copy.id
    assert rec["session_id"] == SID
    assert rec["url"] == cp_url
    assert {"decision": "route_evicted", "reason": "browser_gone", "session_id": SID} in rec["cache"]
    crec = record(copy)
    assert crec["decision"] == "reissue"
    assert crec["serves"] == flow.id
    assert crec["cp_status"] == 200
    assert crec["url"] == cp_url
    assert crec["session_id"] == SID
    assert flow.marked == ":arrows_counterclockwise:"
    assert copy.marked in emoji
    assert flow.comment.splitlines()[0] == f"fallback: VM 404 browser_gone, CP re-issue 200 [{SID}]"
    # the next call for that browser goes to the CP
    again = await h.request(cp_flow("GET", f"/v1/browsers/{SID}/telemetry/events"))
    assert record(again)["reason"] == "no_route"


@pytest.mark.parametrize(
    "cp_answer_response",
    [lambda: json_response(404, GONE), lambda: cp_response(502, {"error": "bad gateway"})],
    ids=["cp_404_browser_gone", "cp_502"],
)
async def test_cp_also_errors_no_loop(h: Harness, cp_answer_response: Callable[[], http.Response]) -> None:
    async def answer(copy: http.HTTPFlow) -> http.Response:
        return cp_answer_response()

    h.reissues.answer = answer
    flow = await routed(h)
    await h.respond(flow, gone_response())

    assert len(h.reissues.copies) == 1  # never a second re-issue
    copy = h.reissues.copies[0]
    assert h.reissues.sent[0].host == CP_HOST  # the re-issue was not routed back to the VM
    assert h.client_view(flow) == view(cp_answer_response())
    expected_status = cp_answer_response().status_code
    assert record(flow)["decision"] == "fallback"
    assert record(flow)["cp_status"] == expected_status
    assert record(copy)["decision"] == "reissue"
    assert record(copy)["cp_status"] == expected_status
    assert "reissue_flow" not in record(copy)


async def test_ineligible_path(h: Harness) -> None:
    flow = await routed(h, f"/browsers/{SID}/telemetry/stream")
    vm = gone_response()
    expected = view(vm)
    await h.respond(flow, vm)
    assert h.reissues.copies == []
    assert record(flow)["decision"] == "no_fallback"
    assert record(flow)["reason"] == "not_eligible"
    assert record(flow)["vm_status"] == 404
    assert flow.response is vm
    assert h.client_view(flow) == expected
    assert h.router.cache.get(SID) is not None  # only a fallback evicts
    assert flow.marked == ":x:"


@pytest.mark.parametrize(
    "tail",
    ["telemetry/events/extra", "telemetry", "telemetry/eventsx", "telemetry/stream", "telemetry/events2"],
)
async def test_eligible_subresource_wrong_suffix(h: Harness, tail: str) -> None:
    flow = await routed(h, f"/browsers/{SID}/{tail}")
    vm = gone_response()
    expected = view(vm)
    await h.respond(flow, vm)
    assert h.reissues.copies == []
    assert (record(flow)["decision"], record(flow)["reason"]) == ("no_fallback", "not_eligible")
    assert h.client_view(flow) == expected


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_transient_5xx(h: Harness, status: int) -> None:
    flow = await routed(h)
    vm = json_response(status, GONE, headers={"Retry-After": "1"})
    expected = view(vm)
    await h.respond(flow, vm)
    assert h.reissues.copies == []
    assert (record(flow)["decision"], record(flow)["reason"]) == ("no_fallback", "status")
    assert record(flow)["vm_status"] == status
    assert flow.response is vm
    assert flow.response.stream is True  # streamed through, not held back
    assert h.client_view(flow) == expected
    assert h.router.cache.get(SID) is not None


async def test_connection_error(h: Harness) -> None:
    flow = await routed(h)
    await h.fail(flow, "Server connection to ('proxy.iad.vm.test', 8443) failed: Connection refused")
    assert h.reissues.copies == []
    assert flow.response is None
    rec = record(flow)
    assert (rec["decision"], rec["reason"]) == ("no_fallback", "vm_error")
    assert "Connection refused" in rec["error"]
    assert "vm_status" not in rec
    assert flow.comment.splitlines()[0] == f"no_fallback (vm_error), VM no answer [{SID}]"
    assert h.router.originals == {}
    assert h.router.cache.get(SID) is not None
    assert [line["decision"] for line in h.log()][-1] == "no_fallback"


async def test_success(h: Harness) -> None:
    flow = await routed(h)
    vm = json_response(200, {"events": [], "source": "vm"})
    expected = view(vm)
    await h.respond(flow, vm)
    assert h.reissues.copies == []
    rec = record(flow)
    assert (rec["decision"], rec["reason"], rec["vm_status"]) == ("routed", None, 200)
    assert flow.response is vm
    assert flow.response.stream is True
    assert h.client_view(flow) == expected
    assert h.router.originals == {}
    assert flow.marked == ":rocket:"


@pytest.mark.parametrize("status", [201, 204, 301, 304, 399])
async def test_routed_below_400_keeps_routed(h: Harness, status: int) -> None:
    flow = await routed(h)
    vm = http.Response.make(status, b"", {"Location": "/elsewhere?jwt=x&a=1"})
    # a relative Location off the route's base_url is made absolute on the VM, without the jwt
    expected = view(
        http.Response.make(status, b"", {"Location": f"https://{VM_HOST}:{VM_PORT}/elsewhere?a=1"})
    )
    await h.respond(flow, vm)
    assert h.reissues.copies == []
    assert (record(flow)["decision"], record(flow)["reason"], record(flow)["vm_status"]) == (
        "routed",
        None,
        status,
    )
    assert h.client_view(flow) == expected
    assert h.router.originals == {}


@pytest.mark.parametrize(
    "body",
    [
        b'{"code":"not_found","message":"no such file"}',
        b"404 page not found",
        b'[{"code":"browser_gone"}]',
        b'{"code":7}',
        b'{"error":{"code":"browser_gone"}}',
        b"",
    ],
)
async def test_non_browser_gone_404(h: Harness, body: bytes) -> None:
    flow = await routed(h)
    vm = http.Response.make(404, body, {"Content-Type": "application/json"})
    expected = view(vm)
    await h.respond(flow, vm)
    assert h.reissues.copies == []
    assert (record(flow)["decision"], record(flow)["reason"]) == ("no_fallback", "not_browser_gone")
    assert flow.response is vm
    assert flow.response.stream is False  # a 404 is buffered to be read
    assert h.client_view(flow) == expected
    assert h.router.cache.get(SID) is not None


async def test_other_4xx_403(h: Harness) -> None:
    flow = await routed(h)
    vm = json_response(403, GONE)
    expected = view(vm)
    await h.respond(flow, vm)
    assert h.reissues.copies == []
    assert (record(flow)["decision"], record(flow)["reason"]) == ("no_fallback", "status")
    assert record(flow)["vm_status"] == 403
    assert h.client_view(flow) == expected


async def test_post(h: Harness) -> None:
    body = b'{"event":"x","bin":"\x00\xff"}'
    flow = await routed(h, method="POST", content=body, headers=(("Content-Type", "application/json"),))
    assert flow.request.method == "POST"
    assert flow.request.raw_content == body
    vm = gone_response()
    expected = view(vm)
    await h.respond(flow, vm)
    assert h.reissues.copies == []
    assert (record(flow)["decision"], record(flow)["reason"]) == ("no_fallback", "not_get")
    assert h.client_view(flow) == expected
    assert h.router.originals == {}
    assert h.router.cache.get(SID) is not None


@pytest.mark.parametrize(
    ("path", "reason", "cached"),
    [
        (f"/browsers/{SID}/telemetry/events", "no_route", False),
        (f"/browsers/{SID}/replays/x", "not_allowlisted", True),
    ],
)
async def test_non_routed(h: Harness, path: str, reason: str, cached: bool) -> None:
    if cached:
        await h.learn(browser())
    flow = await h.request(cp_flow("GET", path))
    assert flow.request.url == f"{CP}{path}"
    assert flow.request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert (record(flow)["decision"], record(flow)["reason"]) == ("passthrough", reason)
    cp = json_response(404, GONE)  # even the CP saying browser_gone changes nothing
    expected = view(cp)
    await h.respond(flow, cp)
    assert h.reissues.copies == []
    assert record(flow)["decision"] == "passthrough"
    assert record(flow)["cp_status"] == 404
    assert flow.response is cp
    assert flow.response.stream is False
    assert h.client_view(flow) == expected


# =========================================================================== more fallback


async def test_gzip_encoded_browser_gone_still_falls_back(h: Harness) -> None:
    flow = await routed(h)
    vm = gone_response()
    vm.encode("gzip")
    assert vm.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(vm.raw_content or b"") == json.dumps(GONE).encode()
    await h.respond(flow, vm)
    assert len(h.reissues.copies) == 1
    assert record(flow)["decision"] == "fallback"
    assert h.client_view(flow) == view(cp_response())


async def test_browser_gone_keyed_off_body_not_content_type(h: Harness) -> None:
    flow = await routed(h)
    await h.respond(flow, http.Response.make(404, json.dumps(GONE), {"Content-Type": "text/plain"}))
    assert len(h.reissues.copies) == 1
    assert record(flow)["decision"] == "fallback"


async def test_undecodable_404_is_not_browser_gone_and_untouched(h: Harness) -> None:
    flow = await routed(h)
    vm = http.Response.make(404, b"not gzip at all", {"Content-Encoding": "gzip"})
    expected = view(vm)
    await h.respond(flow, vm)
    assert h.reissues.copies == []
    assert record(flow)["reason"] == "not_browser_gone"
    assert h.client_view(flow) == expected


def _padded_gone(size: int) -> bytes:
    head, tail = b'{"code":"browser_gone","pad":"', b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


async def test_oversize_404_with_content_length_streams_and_does_not_fall_back(h: Harness) -> None:
    flow = await routed(h)
    body = _padded_gone(MAX_GONE_BODY + 1)
    vm = http.Response.make(404, body, {"Content-Type": "application/json"})
    assert vm.headers["Content-Length"] == str(MAX_GONE_BODY + 1)
    expected = view(vm)
    flow.response = vm
    await run_hook(h.addons, "responseheaders", flow)
    assert flow.response.stream is True
    flow.response = None
    await h.respond(flow, vm)
    assert h.reissues.copies == []
    assert (record(flow)["decision"], record(flow)["reason"]) == ("no_fallback", "not_browser_gone")
    assert h.client_view(flow) == expected


async def test_oversize_404_without_length_is_not_browser_gone(h: Harness) -> None:
    flow = await routed(h)
    body = _padded_gone(MAX_GONE_BODY + 1)
    vm = http.Response.make(404, body, {"Content-Type": "application/json"})
    del vm.headers["Content-Length"]
    vm.headers["Transfer-Encoding"] = "chunked"
    expected = view(vm)
    await h.respond(flow, vm)
    assert flow.response is vm
    assert h.reissues.copies == []
    assert record(flow)["reason"] == "not_browser_gone"
    assert h.client_view(flow) == expected


async def test_small_gzip_404_decoding_past_the_bound_is_not_browser_gone(h: Harness) -> None:
    flow = await routed(h)
    vm = http.Response.make(404, _padded_gone(4 * MAX_GONE_BODY), {"Content-Type": "application/json"})
    vm.encode("gzip")
    assert len(vm.raw_content or b"") < MAX_GONE_BODY
    expected = view(vm)
    await h.respond(flow, vm)
    assert h.reissues.copies == []
    assert record(flow)["reason"] == "not_browser_gone"
    assert h.client_view(flow) == expected


async def test_404_at_the_bound_is_still_read(h: Harness) -> None:
    flow = await routed(h)
    vm = http.Response.make(404, _padded_gone(MAX_GONE_BODY), {"Content-Type": "application/json"})
    await h.respond(flow, vm)
    assert len(h.reissues.copies) == 1
    assert record(flow)["decision"] == "fallback"


@pytest.mark.parametrize(
    ("status", "stream"), [(200, True), (204, True), (302, True), (403, True), (404, True)]
)
async def test_routed_responses_stream_unless_they_may_be_browser_gone(
    h: Harness, status: int, stream: bool
) -> None:
    flow = await routed(h, f"/browsers/{SID}/telemetry/stream")  # not fallback-eligible
    flow.response = http.Response.make(status, b"data: tick\n\n", {"Content-Type": "text/event-stream"})
    await run_hook(h.addons, "responseheaders", flow)
    assert flow.response.stream is stream


@pytest.mark.parametrize(("method", "stream"), [("GET", False), ("POST", True), ("DELETE", True)])
async def test_only_a_404_to_an_eligible_get_is_buffered(h: Harness, method: str, stream: bool) -> None:
    flow = await routed(h, f"/browsers/{SID}/telemetry/events", method=method)
    flow.response = gone_response()
    await run_hook(h.addons, "responseheaders", flow)
    assert flow.response.stream is stream


async def test_responseheaders_overrides_stream_large_bodies_for_small_404(h: Harness) -> None:
    flow = await routed(h)
    flow.response = gone_response()
    flow.response.stream = True  # as stream_large_bodies presets it
    await run_hook(h.addons, "responseheaders", flow)
    assert flow.response.stream is False


async def test_passthrough_responses_are_not_set_to_stream(h: Harness) -> None:
    flow = await h.request(cp_flow("GET", "/browsers"))
    flow.response = json_response(200, [])
    await run_hook(h.addons, "responseheaders", flow)
    assert flow.response.stream is False


async def test_reissue_flow_is_buffered(h: Harness) -> None:
    seen: list[bool | Any] = []

    async def answer(copy: http.HTTPFlow) -> http.Response:
        resp = cp_response()
        resp.stream = True  # e.g. preset by stream_large_bodies
        return resp

    h.reissues.answer = answer
    orig_rh = h.fallback.on_responseheaders

    def spy(flow: http.HTTPFlow) -> None:
        orig_rh(flow)
        if flow.response is not None:
            seen.append(flow.response.stream)

    h.fallback.on_responseheaders = spy  # type: ignore[method-assign]
    flow = await routed(h)
    await h.respond(flow, gone_response())
    copy = h.reissues.copies[0]
    assert seen[-1] is False  # the re-issue's responseheaders
    assert copy.response is not None
    assert copy.response.stream is False
    assert copy.response.raw_content == view(cp_response())[3]
    assert h.client_view(flow) == view(cp_response())


async def test_reissue_connect_error_gives_502_fallback_failed(h: Harness) -> None:
    async def answer(copy: http.HTTPFlow) -> Error:
        return Error("Server connection to ('api.example.test', 443) failed: Name or service not known")

    h.reissues.answer = answer
    flow = await routed(h)
    await h.respond(flow, gone_response())
    assert len(h.reissues.copies) == 1
    assert flow.response is not None
    assert flow.response.status_code == 502
    body = json.loads(flow.response.get_content() or b"")
    assert body["code"] == "fallback_failed"
    assert "fallback failed" in body["message"]
    assert "Name or service not known" in body["message"]
    rec = record(flow)
    assert rec["decision"] == "fallback"
    assert "Name or service not known" in rec["error"]
    assert "cp_status" not in rec
    assert flow.comment.splitlines()[0].startswith("fallback: VM 404 browser_gone, CP re-issue failed")
    crec = record(h.reissues.copies[0])
    assert crec["decision"] == "reissue"
    assert "Name or service not known" in crec["error"]
    assert h.router.cache.get(SID) is None


async def test_reissue_without_answer_gives_502(h: Harness) -> None:
    async def answer(copy: http.HTTPFlow) -> Error:
        return Error("killed")

    h.reissues.answer = answer
    flow = await routed(h)
    await h.respond(flow, gone_response())
    assert flow.response is not None
    assert flow.response.status_code == 502
    assert b"fallback failed: killed" in (flow.response.content or b"")


async def test_reissue_flow_is_not_routed_again(h: Harness) -> None:
    flow = await routed(h)
    await h.respond(flow, gone_response())
    copy = h.reissues.copies[0]
    # The route for SID is gone by now; put it back to prove the guard, not the cache miss.
    h.router.add(Route(SID, VM_BASE, JWT), "test")
    again = copy.copy()
    again.metadata = copy.metadata.copy()
    again.metadata[METADATA_KEY] = dict(record(copy))
    again.response = None
    again.live = True
    before = again.request.copy()
    await run_hook(h.addons, "request", again)
    assert again.request.url == before.url == f"{CP}/browsers/{SID}/telemetry/events"
    assert again.request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert record(again)["decision"] == "reissue"
    assert h.reissues.sent[0].url == f"{CP}/browsers/{SID}/telemetry/events"


async def test_offline_flow_does_not_reissue(h: Harness) -> None:
    # A routed flow read back from a file (mitmdump -nr): live is False.
    flow = await routed(h)
    flow.live = False
    vm = gone_response()
    expected = view(vm)
    await h.respond(flow, vm)
    assert h.reissues.copies == []
    assert record(flow)["decision"] == "routed"
    assert h.client_view(flow) == expected
    assert h.router.cache.get(SID) is not None


async def test_offline_request_is_not_routed(h: Harness) -> None:
    await h.learn(browser())
    flow = tflow.tflow(req=cp_request("GET", f"/browsers/{SID}/telemetry/events"), live=False)
    await h.request(flow)
    assert flow.request.url == f"{CP}/browsers/{SID}/telemetry/events"
    assert METADATA_KEY not in flow.metadata


async def test_fallback_by_browser_name(h: Harness) -> None:
    await h.learn(browser(name="my-browser"))
    flow = await h.request(cp_flow("GET", "/browsers/my-browser/telemetry/events"))
    assert record(flow)["decision"] == "routed"
    assert record(flow)["session_id"] == SID
    await h.respond(flow, gone_response())
    assert h.reissues.sent[0].url == f"{CP}/browsers/my-browser/telemetry/events"
    assert h.router.cache.get(SID) is None
    assert h.router.cache.get("my-browser") is None


async def test_fallbacks_run_concurrently(h: Harness) -> None:
    gate = asyncio.Event()

    async def answer(copy: http.HTTPFlow) -> http.Response:
        if SID in copy.request.path:
            await gate.wait()  # a slow CP answer
        return cp_response()

    h.reissues.answer = answer
    await h.learn(browser(), browser(SID2, jwt=JWT2))
    slow = await h.request(cp_flow("GET", f"/browsers/{SID}/telemetry/events"))
    fast = await h.request(cp_flow("GET", f"/browsers/{SID2}/telemetry/events"))
    slow_task = asyncio.create_task(h.respond(slow, gone_response()))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not slow_task.done()
    await asyncio.wait_for(h.respond(fast, gone_response()), timeout=2)
    assert record(fast)["decision"] == "fallback"
    assert record(fast)["cp_status"] == 200
    assert not slow_task.done()
    gate.set()
    await asyncio.wait_for(slow_task, timeout=2)
    assert record(slow)["cp_status"] == 200
    assert len(h.reissues.copies) == 2


def test_reissue_uses_mitmproxys_replay_handler() -> None:
    # The real re-issue goes through mitmproxy's own upstream machinery (internal API: pinned).
    assert reissue_mod.ReplayHandler is clientplayback.ReplayHandler  # type: ignore[attr-defined]
    assert list(inspect.signature(clientplayback.ReplayHandler.__init__).parameters) == [
        "self",
        "flow",
        "options",
    ]
    assert inspect.iscoroutinefunction(clientplayback.ReplayHandler.replay)


# =========================================================================== route cache


@pytest.mark.parametrize(
    ("method", "path", "status", "doc", "reason"),
    [
        ("POST", "/browsers", 201, browser(), "create"),
        ("POST", "/v1/browsers", 200, browser(), "create"),
        ("GET", "/browsers", 200, [browser()], "list"),
        ("GET", "/v1/browsers", 200, {"items": [browser()], "has_more": False}, "list"),
        ("GET", f"/browsers/{SID}", 200, browser(), "retrieve"),
        ("GET", f"/v1/browsers/{SID}/", 200, browser(), "retrieve"),
        ("POST", "/browser_pools/pool-1/acquire", 200, browser(), "pool_acquire"),
        ("POST", "/v1/browser_pools/pool-1/acquire", 200, {"lease": {"browser": browser()}}, "pool_acquire"),
    ],
)
async def test_cache_filled_from_browser_metadata(
    h: Harness, method: str, path: str, status: int, doc: object, reason: str
) -> None:
    cp = json_response(status, doc)
    expected = view(cp)
    flow = await h.exchange(cp_flow(method, path), cp)
    assert h.router.cache.get(SID) == Route(SID, VM_BASE, JWT)
    assert h.client_view(flow) == expected  # reading it changed nothing
    rec = record(flow)
    assert (rec["decision"], rec["reason"], rec["cp_status"]) == (
        "passthrough",
        "not_browser_subresource",
        status,
    )
    assert rec["cache"] == [{"decision": "route_cached", "reason": reason, "session_id": SID}]
    lines = h.log()
    assert [line["decision"] for line in lines] == ["route_cached", "passthrough"]
    assert lines[0]["session_id"] == SID
    assert lines[0]["base_url"] == VM_BASE
    assert lines[0]["jwt"] == redact(JWT)
    assert lines[0]["flow_id"] == flow.id
    # and it is used
    routed_flow = await h.request(cp_flow("GET", f"/browsers/{SID}/fs/list"))
    assert routed_flow.request.host == VM_HOST


async def test_cache_filled_from_nested_json(h: Harness) -> None:
    doc = {
        "items": [browser("s-1"), {"wrapper": {"browser": browser("s-2", name="n2")}}],
        "pool": [[browser("s-3", cdp_only=True)]],
        "noise": [1, "x", None, {"session_id": "s-4", "base_url": VM_BASE}],
    }
    await h.learn(body=doc, method="GET", path="/browsers")
    assert sorted(r.session_id for r in h.router.cache) == ["s-1", "s-2", "s-3"]
    assert h.router.cache.get("n2") == Route("s-2", VM_BASE, JWT, "n2")
    assert len([line for line in h.log() if line["decision"] == "route_cached"]) == 3


async def test_cache_jwt_from_cdp_ws_url_is_query_decoded(h: Harness) -> None:
    obj = browser()
    del obj["jwt"]
    obj["cdp_ws_url"] = f"wss://{VM_HOST}/browser/cdp?x=1&jwt=eyJ.tok%2Bx.{JWT_SECRET_PART}"
    await h.learn(obj)
    route = h.router.cache.get(SID)
    assert route is not None
    assert route.jwt == f"eyJ.tok+x.{JWT_SECRET_PART}"
    flow = await h.request(cp_flow("GET", f"/browsers/{SID}/fs/list"))
    assert ("jwt", f"eyJ.tok+x.{JWT_SECRET_PART}") in query_of(flow.request.url)
    assert f"jwt=eyJ.tok%2Bx.{JWT_SECRET_PART}" in flow.request.path


async def test_cache_jwt_field_used_as_is_but_trimmed(h: Harness) -> None:
    await h.learn(browser(jwt=f"  eyJ.tok%2Bx.{JWT_SECRET_PART}  "))
    route = h.router.cache.get(SID)
    assert route is not None
    assert route.jwt == f"eyJ.tok%2Bx.{JWT_SECRET_PART}"


async def test_cache_fields_trimmed(h: Harness) -> None:
    await h.learn(browser(f"  {SID} ", base_url=f"  {VM_BASE}/  ", name=" nm "))
    assert h.router.cache.get(SID) == Route(SID, VM_BASE, JWT, "nm")


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "application/vnd.kernel+json"]
)
async def test_cache_accepts_json_content_types(h: Harness, content_type: str) -> None:
    await h.learn(browser(), content_type=content_type)
    assert h.router.cache.get(SID) is not None


@pytest.mark.parametrize("content_type", ["text/plain", "text/html", "application/x-ndjson", ""])
async def test_cache_skips_non_json_content_types(h: Harness, content_type: str) -> None:
    cp = json_response(200, browser(), content_type=content_type)
    if not content_type:
        del cp.headers["Content-Type"]
    expected = view(cp)
    flow = await h.exchange(cp_flow("POST", "/browsers"), cp)
    assert len(h.router.cache) == 0
    assert h.client_view(flow) == expected
    assert "cache" not in record(flow)


@pytest.mark.parametrize("status", [199, 302, 400, 404, 409, 500])
async def test_cache_skips_non_2xx(h: Harness, status: int) -> None:
    cp = json_response(status, browser())
    expected = view(cp)
    flow = await h.exchange(cp_flow("POST", "/browsers"), cp)
    assert len(h.router.cache) == 0
    assert h.client_view(flow) == expected
    assert record(flow)["cp_status"] == status


@pytest.mark.parametrize(
    "raw",
    [
        b'{"session_id": "sess-a1b2c3", "base_url": ',
        b"\xff\xfe\x00garbage",
        b"",
        b'{"session_id": 5, "base_url": "https://proxy.iad.vm.test", "jwt": "x"}',
        b'{"session_id": "s", "base_url": ["https://proxy.iad.vm.test"], "jwt": "x"}',
        b'{"session_id": "s", "base_url": "https://proxy.iad.vm.test", "jwt": 5}',
        b'"just a string"',
    ],
)
async def test_cache_skips_malformed_json_silently(
    h: Harness, caplog: pytest.LogCaptureFixture, raw: bytes
) -> None:
    cp = http.Response.make(200, raw, {"Content-Type": "application/json"})
    expected = view(cp)
    flow = await h.exchange(cp_flow("POST", "/browsers"), cp)
    assert len(h.router.cache) == 0
    assert h.client_view(flow) == expected
    assert record(flow)["decision"] == "passthrough"
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_cache_reads_gzip_json_without_altering_it(h: Harness) -> None:
    cp = json_response(200, browser())
    cp.encode("gzip")
    expected = view(cp)
    flow = await h.exchange(cp_flow("POST", "/browsers"), cp)
    assert h.router.cache.get(SID) is not None
    assert h.client_view(flow) == expected
    assert flow.response is not None
    assert flow.response.headers["Content-Encoding"] == "gzip"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/browsers/{SID}/fs/list"),  # a subresource answer (not routed: no route yet)
        ("DELETE", f"/browsers/{SID}"),  # a delete's own body never adds the route
        ("DELETE", "/browsers"),
        ("GET", "/browser_pools/pool-1/acquire"),
        ("GET", "/profiles"),
        ("POST", "/browser_pools/pool-1/release"),
    ],
)
async def test_cache_only_from_browser_metadata_paths(h: Harness, method: str, path: str) -> None:
    await h.exchange(cp_flow(method, path), json_response(200, browser()))
    assert len(h.router.cache) == 0


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PATCH", f"/browsers/{SID}"),
        ("PUT", f"/v1/browsers/{SID}"),
        ("POST", f"/browsers/{SID}"),
        ("PUT", "/browsers"),
    ],
)
async def test_cache_learns_from_a_browser_update(h: Harness, method: str, path: str) -> None:
    """As the SDKs do: any method but DELETE on the browsers paths returns browsers."""
    flow = await h.exchange(cp_flow(method, path), json_response(200, browser()))
    assert h.router.cache.get(SID) is not None
    assert record(flow)["cache"] == [{"decision": "route_cached", "reason": "update", "session_id": SID}]


async def test_one_cache_serves_every_cp_origin(h: Harness) -> None:
    h.configure(browserrouting_control_plane=f"{CP}, http://cp2.example.test:8080")
    flow = await h.exchange(
        cp_flow("POST", "/browsers", scheme="http", host="cp2.example.test", port=8080),
        json_response(200, browser()),
    )
    assert record(flow)["cache"][0]["decision"] == "route_cached"
    via_first = await h.request(cp_flow("GET", f"/browsers/{SID}/fs/a"))
    assert via_first.request.host == VM_HOST
    via_second = await h.request(
        cp_flow("GET", f"/browsers/{SID}/fs/b", scheme="http", host="cp2.example.test", port=8080)
    )
    assert via_second.request.url.startswith(f"{VM_BASE}/fs/b?")


@pytest.mark.parametrize(
    ("scheme", "host", "port"),
    [
        ("https", "evil.example.test", 443),
        ("https", CP_HOST, 8443),
        ("http", CP_HOST, 443),
        ("https", VM_HOST, 8443),
    ],
)
async def test_only_cp_origins_fill_or_evict(h: Harness, scheme: str, host: str, port: int) -> None:
    other = await h.exchange(
        cp_flow("POST", "/browsers", scheme=scheme, host=host, port=port), json_response(200, browser())
    )
    assert len(h.router.cache) == 0
    assert METADATA_KEY not in other.metadata
    assert other.comment == ""
    assert other.marked == ""
    await h.learn(browser())
    delete = await h.exchange(
        cp_flow("DELETE", f"/browsers/{SID}", scheme=scheme, host=host, port=port), json_response(200, {})
    )
    assert h.router.cache.get(SID) is not None
    assert METADATA_KEY not in delete.metadata
    assert [line["decision"] for line in h.log()] == ["route_cached", "passthrough"]


async def test_cp_host_match_is_case_insensitive(h: Harness) -> None:
    await h.exchange(cp_flow("POST", "/browsers", host="API.Example.TEST"), json_response(200, browser()))
    assert h.router.cache.get(SID) is not None


# --------------------------------------------------------------------------- eviction


async def test_delete_evicts_and_its_body_does_not_readd(h: Harness) -> None:
    await h.learn(browser())
    cp = json_response(200, browser())  # the delete describes the browser it deleted
    expected = view(cp)
    flow = await h.exchange(cp_flow("DELETE", f"/v1/browsers/{SID}"), cp)
    assert h.router.cache.get(SID) is None
    assert record(flow)["cache"] == [{"decision": "route_evicted", "reason": "delete", "session_id": SID}]
    assert h.client_view(flow) == expected
    assert [(line["decision"], line.get("reason")) for line in h.log()][-2:] == [
        ("route_evicted", "delete"),
        ("passthrough", "not_browser_subresource"),
    ]
    after = await h.request(cp_flow("GET", f"/browsers/{SID}/fs/x"))
    assert record(after)["reason"] == "no_route"


async def test_delete_by_name_and_percent_encoded_id(h: Harness) -> None:
    await h.learn(browser(name="my browser"), browser(SID2, jwt=JWT2))
    await h.exchange(cp_flow("DELETE", "/browsers/my%20browser"), http.Response.make(204))
    assert h.router.cache.get(SID) is None
    await h.exchange(cp_flow("DELETE", f"/browsers/{SID2[:4]}%2D{SID2[5:]}"), http.Response.make(204))
    assert h.router.cache.get(SID2) is None


@pytest.mark.parametrize("status", [404, 409, 500, 302])
async def test_unsuccessful_delete_does_not_evict(h: Harness, status: int) -> None:
    await h.learn(browser())
    await h.exchange(cp_flow("DELETE", f"/browsers/{SID}"), json_response(status, {"code": "x"}))
    assert h.router.cache.get(SID) is not None


async def test_pool_release_evicts(h: Harness) -> None:
    await h.learn(browser(), path="/browser_pools/p/acquire")
    body = json.dumps({"session_id": f" {SID} ", "reuse": True}).encode()
    flow = await h.exchange(
        cp_flow(
            "POST",
            "/v1/browser_pools/p/release",
            content=body,
            headers=(("Content-Type", "application/json"),),
        ),
        http.Response.make(204),
    )
    assert h.router.cache.get(SID) is None
    assert record(flow)["cache"] == [
        {"decision": "route_evicted", "reason": "pool_release", "session_id": SID}
    ]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"session_id=" + SID.encode(), 204),
        (json.dumps({"id": SID}).encode(), 204),
        (json.dumps({"session_id": 5}).encode(), 204),
        (json.dumps([SID]).encode(), 204),
        (json.dumps({"session_id": SID}).encode(), 400),
    ],
)
async def test_pool_release_without_session_id_or_unsuccessful_keeps_route(
    h: Harness, body: bytes, status: int
) -> None:
    await h.learn(browser())
    await h.exchange(cp_flow("POST", "/browser_pools/p/release", content=body), http.Response.make(status))
    assert h.router.cache.get(SID) is not None


# --------------------------------------------------------------------------- vm_hosts refusal


@pytest.mark.parametrize(
    ("base_url", "reason"),
    [
        ("https://evil.example.test/browser/kernel", "vm_host"),
        ("https://vm.test.evil.example/browser/kernel", "vm_host"),
        ("ftp://proxy.iad.vm.test/browser/kernel", "scheme"),
        ("wss://proxy.iad.vm.test/browser/kernel", "scheme"),
    ],
)
async def test_refused_route_is_logged_and_never_used(
    h: Harness, caplog: pytest.LogCaptureFixture, base_url: str, reason: str
) -> None:
    flow = await h.learn(browser(base_url=base_url))
    assert h.router.cache.get(SID) is None
    assert record(flow)["cache"] == [{"decision": "route_refused", "reason": reason, "session_id": SID}]
    refused = [line for line in h.log() if line["decision"] == "route_refused"]
    assert len(refused) == 1
    assert (refused[0]["reason"], refused[0]["session_id"], refused[0]["base_url"]) == (reason, SID, base_url)
    assert any(r.levelno == logging.WARNING and "route_refused" in r.getMessage() for r in caplog.records)
    after = await h.request(cp_flow("GET", f"/browsers/{SID}/fs/x"))
    assert record(after)["reason"] == "no_route"
    assert after.request.host == CP_HOST


async def test_vm_hosts_star_allows_any_host(h: Harness) -> None:
    h.configure(browserrouting_vm_hosts="*")
    await h.learn(browser(base_url="https://10.0.0.7:8443/browser/kernel"))
    flow = await h.request(cp_flow("GET", f"/browsers/{SID}/fs/x"))
    assert (flow.request.host, flow.request.port) == ("10.0.0.7", 8443)


async def test_narrowing_vm_hosts_evicts_cached_routes(h: Harness) -> None:
    await h.learn(
        browser(),
        browser(SID2, jwt=JWT2, base_url="https://proxy.other.test/browser/kernel"),
        path="/browsers",
        method="GET",
    )
    assert h.router.cache.get(SID2) is None  # refused already
    h.configure(browserrouting_vm_hosts="*.other.test")
    assert h.router.cache.get(SID) is None
    assert [line["decision"] for line in h.log()][-1] == "route_evicted"
    assert h.log()[-1]["reason"] == "vm_host"


# =========================================================================== routing


async def test_routing_rewrites_request_in_place(h: Harness) -> None:
    await h.learn(browser())
    body = b"\x00\x01binary\r\n\xff{json}"
    flow = cp_flow(
        "PUT",
        f"/v1/browsers/{SID}/fs/write?path=%2Ftmp%2Fa%20b&mode=0644",
        content=body,
        headers=(
            ("Content-Type", "application/octet-stream"),
            ("X-Custom", "v1"),
            ("authorization", f"Basic {API_KEY}"),
            ("X-Custom", "v2"),
        ),
    )
    before = flow.request.copy()
    await h.request(flow)
    req = flow.request
    assert (req.scheme, req.host, req.port) == ("https", VM_HOST, VM_PORT)
    assert req.headers["Host"] == f"{VM_HOST}:{VM_PORT}"
    assert req.path == f"/browser/kernel/fs/write?path=%2Ftmp%2Fa%20b&mode=0644&jwt={JWT}"
    assert req.url == f"{VM_BASE}/fs/write?path=%2Ftmp%2Fa%20b&mode=0644&jwt={JWT}"
    assert "Authorization" not in req.headers
    assert req.method == "PUT"
    assert req.raw_content == body
    assert req.http_version == before.http_version
    # every other header, byte for byte and in order
    keep = [(k, v) for k, v in before.headers.fields if k.lower() not in (b"host", b"authorization")]
    assert [(k, v) for k, v in req.headers.fields if k.lower() != b"host"] == keep
    rec = record(flow)
    assert (rec["decision"], rec["reason"], rec["session_id"], rec["method"]) == ("routed", None, SID, "PUT")
    assert rec["url"] == before.url
    assert rec["vm_url"] == f"{VM_BASE}/fs/write?path=%2Ftmp%2Fa%20b&mode=0644&jwt={redact(JWT)}"
    assert rec["flow_id"] == flow.id
    assert flow.marked == ":rocket:"
    await h.respond(flow, json_response(200, {"ok": True}))  # the comment is written as the answer comes
    assert flow.comment.splitlines()[0] == f"routed to VM {VM_HOST}:{VM_PORT} (200) [{SID}]"


async def test_routing_http2_authority_follows(h: Harness) -> None:
    await h.learn(browser())
    flow = await h.request(cp_flow("GET", f"/browsers/{SID}/fs/x", http2=True))
    assert flow.request.authority == f"{VM_HOST}:{VM_PORT}"
    assert flow.request.host_header == f"{VM_HOST}:{VM_PORT}"
    assert "Host" not in flow.request.headers
    assert "authorization" not in flow.request.headers


@pytest.mark.parametrize(
    ("base_url", "scheme", "host", "port", "host_header", "prefix"),
    [
        ("https://p1.vm.test/browser/kernel", "https", "p1.vm.test", 443, "p1.vm.test", "/browser/kernel"),
        ("https://p1.vm.test/browser/kernel/", "https", "p1.vm.test", 443, "p1.vm.test", "/browser/kernel"),
        ("http://p2.vm.test:8080", "http", "p2.vm.test", 8080, "p2.vm.test:8080", ""),
        ("https://P3.VM.test:9443/a/b", "https", "p3.vm.test", 9443, "p3.vm.test:9443", "/a/b"),
    ],
)
async def test_routing_takes_scheme_host_port_and_path_from_base_url(
    h: Harness, base_url: str, scheme: str, host: str, port: int, host_header: str, prefix: str
) -> None:
    await h.learn(browser(base_url=base_url))
    flow = await h.request(cp_flow("GET", f"/browsers/{SID}/process/exec"))
    req = flow.request
    assert (req.scheme, req.host.lower(), req.port) == (scheme, host, port)
    assert req.headers["Host"].lower() == host_header
    assert req.path == f"{prefix}/process/exec?jwt={JWT}"


async def test_routing_keeps_percent_encoded_raw_tail(h: Harness) -> None:
    await h.learn(browser())
    flow = await h.request(cp_flow("GET", f"/browsers/{SID}/fs/dir%2Fsub/file%20name%3F.txt?q=a%26b"))
    assert flow.request.path == f"/browser/kernel/fs/dir%2Fsub/file%20name%3F.txt?q=a%26b&jwt={JWT}"
    assert f"/browsers/{SID}" not in flow.request.url


async def test_routing_url_encodes_jwt(h: Harness) -> None:
    odd = f"eyJ+ab/c=d&e?f g#{JWT_SECRET_PART}"
    h.secrets.add(odd)
    await h.learn(browser(jwt=odd))
    flow = await h.request(cp_flow("GET", f"/browsers/{SID}/fs/x?a=1"))
    assert flow.request.path == f"/browser/kernel/fs/x?a=1&jwt={quote(odd, safe='')}"
    assert query_of(flow.request.url) == [("a", "1"), ("jwt", odd)]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("jwt=client-own-token-123456&x=1", "jwt=client-own-token-123456&x=1"),
        ("x=1&jwt=client-own-token-123456", "x=1&jwt=client-own-token-123456"),
        ("x=1&j%77t=client-own-token-123456", "x=1&j%77t=client-own-token-123456"),
    ],
)
async def test_routing_keeps_clients_own_jwt(h: Harness, query: str, expected: str) -> None:
    h.secrets.add("client-own-token-123456")
    await h.learn(browser())
    flow = await h.request(cp_flow("GET", f"/browsers/{SID}/fs/x?{query}"))
    assert flow.request.path == f"/browser/kernel/fs/x?{expected}"
    assert [v for k, v in query_of(flow.request.url) if k == "jwt"] == ["client-own-token-123456"]
    assert "client-own-token-123456" not in record(flow)["url"]
    assert "client-own-token-123456" not in record(flow)["vm_url"]


async def test_routing_keeps_query_params_in_order(h: Harness) -> None:
    await h.learn(browser())
    flow = await h.request(cp_flow("GET", f"/browsers/{SID}/fs/x?b=2&a=1&b=3&flag&empty=&sp=a+b"))
    assert flow.request.path == f"/browser/kernel/fs/x?b=2&a=1&b=3&flag&empty=&sp=a+b&jwt={JWT}"


async def test_routing_by_name_and_percent_encoded_id(h: Harness) -> None:
    await h.learn(browser(name="my browser"))
    by_name = await h.request(cp_flow("GET", "/browsers/my%20browser/fs/x"))
    assert by_name.request.url == f"{VM_BASE}/fs/x?jwt={JWT}"
    assert record(by_name)["session_id"] == SID
    encoded = await h.request(cp_flow("GET", f"/v1/browsers/{SID[:4]}%2D{SID[5:]}/fs/x"))
    assert encoded.request.url == f"{VM_BASE}/fs/x?jwt={JWT}"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
async def test_routing_keeps_method(h: Harness, method: str) -> None:
    await h.learn(browser())
    flow = await h.request(cp_flow(method, f"/browsers/{SID}/computer/click", content=b'{"x":1}'))
    assert flow.request.method == method
    assert flow.request.host == VM_HOST
    assert flow.request.raw_content == b'{"x":1}'
    # only a GET is kept for a fallback
    assert (flow.id in h.router.originals) is (method == "GET")


# --------------------------------------------------------------------------- passthrough


@pytest.mark.parametrize(
    ("path", "reason", "session_id"),
    [
        ("/v1/profiles", "not_browser_subresource", None),
        ("/browsers", "not_browser_subresource", None),
        (f"/browsers/{SID}", "not_browser_subresource", None),
        (f"/browsers/{SID}/replays", "not_allowlisted", SID),
        (f"/browsers/{SID}/curlx", "not_allowlisted", SID),
        (f"/browsers/{SID}/telemetryx/a", "not_allowlisted", SID),
        (f"/v1/browsers/{SID}/logs/stream", "not_allowlisted", SID),
        ("/browsers/unknown-session/fs/x", "no_route", "unknown-session"),
        ("/browsers/unknown%20name/fs/x", "no_route", "unknown name"),
    ],
)
async def test_passthrough_reasons(h: Harness, path: str, reason: str, session_id: str | None) -> None:
    await h.learn(browser())
    flow = cp_flow("GET", path)
    before = flow.request.copy()
    await h.request(flow)
    assert flow.request.url == before.url
    assert flow.request.headers.fields == before.headers.fields
    rec = record(flow)
    assert (rec["decision"], rec["reason"], rec["session_id"]) == ("passthrough", reason, session_id)
    assert flow.marked == ":arrow_right:"
    cp = json_response(200, {"ok": True})
    expected = view(cp)
    await h.respond(flow, cp)
    assert flow.comment.splitlines()[0].startswith(f"passthrough ({reason})")
    assert record(flow)["cp_status"] == 200
    assert h.client_view(flow) == expected
    assert h.log()[-1]["decision"] == "passthrough"
    assert h.log()[-1]["reason"] == reason


async def test_non_cp_request_is_not_looked_at(h: Harness) -> None:
    await h.learn(browser())
    flow = cp_flow("GET", f"/browsers/{SID}/fs/x", host="example.org")
    before = flow.request.copy()
    await h.exchange(flow, json_response(200, {}))
    assert flow.request.url == before.url
    assert flow.request.headers.fields == before.headers.fields
    assert METADATA_KEY not in flow.metadata
    assert (flow.comment, flow.marked) == ("", "")
    assert len(h.log()) == 2  # the learn only


# =========================================================================== options


@contextlib.contextmanager
def env_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: str | None) -> Iterator[Harness]:
    if env is None:
        monkeypatch.delenv(SUBRESOURCES_ENV, raising=False)
    else:
        monkeypatch.setenv(SUBRESOURCES_ENV, env)
    options = {k: v for k, v in TEST_OPTIONS.items() if k != "browserrouting_subresources"}
    with running(tmp_path, monkeypatch, options) as harness:
        yield harness


@pytest.mark.parametrize(
    ("env", "default", "routed_tails", "not_routed_tails"),
    [
        ("telemetry", "telemetry", ["telemetry/events", "telemetry/stream"], ["fs/x", "curl/raw"]),
        ("", "", [], ["fs/x", "telemetry/stream", "curl/raw"]),
        (" fs , ,curl ", " fs , ,curl ", ["fs/x", "curl/raw"], ["telemetry/stream"]),
        (
            None,
            DEFAULT_SUBRESOURCES,
            ["telemetry/stream", "fs/x", "logs/stream"],
            ["telemetry/events", "logs"],
        ),
    ],
)
async def test_subresources_default_from_env(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: str | None,
    default: str,
    routed_tails: list[str],
    not_routed_tails: list[str],
) -> None:
    with env_running(tmp_path, monkeypatch, env) as h:
        assert h.tctx.options.browserrouting_subresources == default
        await h.learn(browser())
        for tail in routed_tails:
            flow = await h.request(cp_flow("GET", f"/browsers/{SID}/{tail}"))
            assert record(flow)["decision"] == "routed", tail
        for tail in not_routed_tails:
            flow = await h.request(cp_flow("GET", f"/browsers/{SID}/{tail}"))
            assert (record(flow)["decision"], record(flow)["reason"]) == ("passthrough", "not_allowlisted"), (
                tail
            )


async def test_subresources_option_overrides_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with env_running(tmp_path, monkeypatch, "telemetry") as h:
        h.configure(browserrouting_subresources="fs")
        await h.learn(browser())
        assert record(await h.request(cp_flow("GET", f"/browsers/{SID}/fs/x")))["decision"] == "routed"
        assert (
            record(await h.request(cp_flow("GET", f"/browsers/{SID}/telemetry/x")))["decision"]
            == "passthrough"
        )


async def test_bad_env_subresources_refused_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with (
        pytest.raises(exceptions.OptionsError, match="browserrouting_subresources"),
        env_running(tmp_path, monkeypatch, "fs,te lemetry"),
    ):
        pass  # pragma: no cover


async def test_option_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SUBRESOURCES_ENV, raising=False)
    with running(tmp_path, monkeypatch, {}) as h:
        opts = h.tctx.options
        assert opts.browserrouting_control_plane == "https://api.onkernel.com"
        assert opts.browserrouting_subresources == DEFAULT_SUBRESOURCES
        assert opts.browserrouting_fallback == "telemetry/events"
        assert opts.browserrouting_vm_hosts == "*.onkernel.com"
        assert h.router.origins == (("https", "api.onkernel.com", 443),)
        assert h.fallback.eligible == ("telemetry/events",)
        # the defaults work together against the real CP and VM host names
        h.tctx.configure(h.router, browserrouting_subresources="telemetry")
        real_base = "https://proxy.iad-1.onkernel.com:8443/browser/kernel"
        await h.exchange(
            cp_flow("POST", "/browsers", host="api.onkernel.com"),
            json_response(200, browser(base_url=real_base)),
        )
        flow = await h.request(cp_flow("GET", f"/browsers/{SID}/telemetry/events", host="api.onkernel.com"))
        assert flow.request.host == "proxy.iad-1.onkernel.com"
        await h.respond(flow, gone_response())
        assert record(flow)["decision"] == "fallback"
        assert h.reissues.sent[0].url == f"https://api.onkernel.com/browsers/{SID}/telemetry/events"


async def test_log_option_default_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SUBRESOURCES_ENV, raising=False)
    with running(tmp_path, monkeypatch, TEST_OPTIONS) as h:
        assert h.tctx.options.browserrouting_log == str(h.log_path)
        h.configure(browserrouting_log="")
        await h.learn(browser())
        assert not h.log_path.exists() or h.log_path.read_text() == ""
        assert list(tmp_path.iterdir()) in ([], [h.log_path])
    with taddons.context(DecisionRecorder()) as tctx:
        assert tctx.options.browserrouting_log == ""


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("browserrouting_control_plane", "api.example.test"),
        ("browserrouting_control_plane", "https://"),
        ("browserrouting_control_plane", "https://api.example.test/v1"),
        ("browserrouting_control_plane", "ftp://api.example.test"),
        ("browserrouting_control_plane", " , "),
        ("browserrouting_subresources", "fs,te lemetry"),
        ("browserrouting_subresources", "fs?x"),
        ("browserrouting_fallback", "telemetry/events?x"),
        ("browserrouting_fallback", 'telemetry/"events"'),
        ("browserrouting_vm_hosts", "bad host"),
        ("browserrouting_vm_hosts", "*.vm.test/path"),
        ("browserrouting_log", "/nonexistent-dir-for-test/x/decisions.jsonl"),
    ],
)
async def test_bad_option_refused_keeps_previous(h: Harness, option: str, value: str) -> None:
    previous = getattr(h.tctx.options, option)
    state = (h.router.origins, h.router.subresources, h.router.vm_hosts, h.fallback.eligible)
    with pytest.raises(exceptions.OptionsError) as e:
        h.configure(**{option: value})
    assert option in str(e.value)
    assert getattr(h.tctx.options, option) == previous
    assert (h.router.origins, h.router.subresources, h.router.vm_hosts, h.fallback.eligible) == state
    # still working on the previous values, log included
    flow = await routed(h)
    await h.respond(flow, gone_response())
    assert record(flow)["decision"] == "fallback"
    assert h.log()[-1]["decision"] == "fallback"


async def test_bad_option_in_a_mixed_update_rolls_back_every_option(h: Harness) -> None:
    with pytest.raises(exceptions.OptionsError, match="browserrouting_control_plane"):
        h.configure(browserrouting_fallback="process/list", browserrouting_control_plane="nope")
    assert h.tctx.options.browserrouting_fallback == "telemetry/events"
    assert h.fallback.eligible == ("telemetry/events",)


async def test_option_lists_skip_empty_entries(h: Harness) -> None:
    h.configure(
        browserrouting_control_plane=f" ,{CP},, ",
        browserrouting_subresources=" ,fs,, telemetry/ ,",
        browserrouting_fallback=",telemetry/events,,",
        browserrouting_vm_hosts=", *.vm.test ,",
    )
    assert h.router.origins == (("https", CP_HOST, 443),)
    assert h.router.subresources == ("fs", "telemetry")
    assert h.fallback.eligible == ("telemetry/events",)
    assert h.router.vm_hosts == ("*.vm.test",)


async def test_fallback_option_one_entry_adds_an_endpoint(h: Harness) -> None:
    h.configure(browserrouting_fallback="telemetry/events, /process//list/")
    assert h.fallback.eligible == ("telemetry/events", "process/list")
    flow = await routed(h, f"/browsers/{SID}/process/list")
    await h.respond(flow, gone_response())
    assert record(flow)["decision"] == "fallback"
    assert h.reissues.sent[0].url == f"{CP}/browsers/{SID}/process/list"


async def test_fallback_option_empty_makes_nothing_eligible(h: Harness) -> None:
    h.configure(browserrouting_fallback="")
    flow = await routed(h)
    await h.respond(flow, gone_response())
    assert (record(flow)["decision"], record(flow)["reason"]) == ("no_fallback", "not_eligible")


async def test_log_option_switches_file_live(h: Harness, tmp_path: Path) -> None:
    await h.learn(browser())
    second = tmp_path / "second.jsonl"
    h.configure(browserrouting_log=str(second))
    flow = await routed(h)
    await h.respond(flow, json_response(200, {}))
    assert [line["decision"] for line in h.log()] == ["route_cached", "passthrough"]
    assert [json.loads(line)["decision"] for line in second.read_text().splitlines()] == ["routed"]


# =========================================================================== decisions


async def test_log_one_line_per_final_decision_and_cache_change(h: Harness) -> None:
    await h.learn(browser())  # route_cached + passthrough
    ok = await routed(h, f"/browsers/{SID}/fs/x")
    await h.respond(ok, json_response(200, {}))  # routed
    await h.exchange(cp_flow("GET", "/elsewhere", host="example.org"), json_response(200, {}))  # nothing
    gone = await routed(h)
    assert len(h.log()) == 3  # nothing logged before a decision is final
    await h.respond(gone, gone_response())  # route_evicted + reissue + fallback
    failed = await h.request(cp_flow("GET", f"/browsers/{SID}/fs/x"))  # passthrough no_route
    await h.fail(failed, "client disconnected")  # its final line
    lines = h.log()
    assert [(line["decision"], line["reason"]) for line in lines] == [
        ("route_cached", "create"),
        ("passthrough", "not_browser_subresource"),
        ("routed", None),
        ("route_evicted", "browser_gone"),
        ("reissue", None),
        ("fallback", None),
        ("passthrough", "no_route"),
    ]
    for line in lines:
        assert isinstance(line["ts"], float)
    copy = h.reissues.copies[0]
    assert lines[2]["flow_id"] == ok.id
    assert lines[2]["vm_status"] == 200
    assert lines[4]["flow_id"] == copy.id
    assert lines[4]["serves"] == gone.id
    assert lines[4]["cp_status"] == 200
    assert lines[5]["flow_id"] == gone.id
    assert lines[5]["reissue_flow"] == copy.id
    assert (lines[5]["vm_status"], lines[5]["cp_status"]) == (404, 200)
    assert lines[5]["url"] == f"{CP}/browsers/{SID}/telemetry/events"
    assert lines[5]["vm_url"] == f"{VM_BASE}/telemetry/events?jwt={redact(JWT)}"
    assert lines[3]["flow_id"] == gone.id


async def test_records_are_json_and_flows_can_be_saved(h: Harness) -> None:
    await h.learn(browser())
    ok = await routed(h, f"/browsers/{SID}/fs/x")
    await h.respond(ok, json_response(200, {}))
    gone = await routed(h)
    await h.respond(gone, gone_response())
    err = await routed(h, f"/browsers/{SID}/fs/y")
    await h.fail(err, "boom")
    flows = [*h.flows, *h.reissues.copies]
    for f in flows:
        rec = record(f)
        assert json.loads(json.dumps(rec)) == rec
        for key in ("decision", "reason", "session_id", "method", "url", "flow_id"):
            assert key in rec
        assert rec["flow_id"] == f.id
        assert f.marked in emoji
        assert f.comment.splitlines()[0].startswith(rec["decision"])
        f.copy()  # metadata must deep-copy
    buf = io.BytesIO()
    writer = mitmio.FlowWriter(buf)
    for f in flows:
        writer.add(f)
    buf.seek(0)
    read = list(mitmio.FlowReader(buf).stream())
    assert [f.metadata[METADATA_KEY]["decision"] for f in read] == [record(f)["decision"] for f in flows]


@pytest.mark.parametrize(
    ("scenario", "decision", "marker"),
    [
        ("passthrough", "passthrough", ":arrow_right:"),
        ("routed", "routed", ":rocket:"),
        ("fallback", "fallback", ":arrows_counterclockwise:"),
        ("no_fallback", "no_fallback", ":x:"),
    ],
)
async def test_markers(h: Harness, scenario: str, decision: str, marker: str) -> None:
    if scenario == "passthrough":
        flow = await h.exchange(cp_flow("GET", "/browsers"), json_response(200, []))
    else:
        flow = await routed(h)
        responses = {
            "routed": json_response(200, {}),
            "fallback": gone_response(),
            "no_fallback": json_response(500, {}),
        }
        await h.respond(flow, responses[scenario])
    assert record(flow)["decision"] == decision
    assert flow.marked == marker
    assert marker in emoji
    if scenario == "fallback":
        assert h.reissues.copies[0].marked == ":leftwards_arrow_with_hook:"


async def test_stream_broken_after_success_stays_routed(h: Harness) -> None:
    flow = await routed(h, f"/browsers/{SID}/telemetry/stream")
    flow.response = http.Response.make(200, b"", {"Content-Type": "text/event-stream"})
    await run_hook(h.addons, "responseheaders", flow)
    await h.fail(flow, "client disconnected")
    rec = record(flow)
    assert (rec["decision"], rec["vm_status"], rec["error"]) == ("routed", 200, "client disconnected")
    assert h.router.originals == {}
    assert h.log()[-1]["decision"] == "routed"


async def test_vm_error_on_non_get_is_vm_error(h: Harness) -> None:
    flow = await routed(h, f"/browsers/{SID}/fs/x", method="POST", content=b"{}")
    await h.fail(flow, "connection reset")
    assert (record(flow)["decision"], record(flow)["reason"]) == ("no_fallback", "vm_error")


async def test_replayed_flow_is_decided_afresh(h: Harness) -> None:
    await h.learn(browser())
    flow = cp_flow("GET", f"/browsers/{SID}/fs/x")
    flow.metadata[METADATA_KEY] = {"decision": "passthrough", "reason": "no_route", "stale": True}
    await h.request(flow)
    assert record(flow)["decision"] == "routed"
    assert "stale" not in record(flow)


async def test_secrets_never_in_clear(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    await h.learn(browser(), browser(SID2, jwt=JWT2, base_url="https://evil.example.test/x"))
    ok = await routed(h, f"/browsers/{SID}/fs/x?jwt={JWT}")
    await h.respond(ok, json_response(200, {}))
    gone = await routed(h)
    await h.respond(gone, gone_response())

    async def fail(copy: http.HTTPFlow) -> Error:
        return Error("refused")

    h.reissues.answer = fail
    await h.learn(browser())
    bad = await routed(h)
    await h.respond(bad, gone_response())
    await h.exchange(cp_flow("DELETE", f"/browsers/{SID}"), json_response(200, browser()))
    texts = secret_texts(h, caplog.text)
    assert len(texts) > 10
    joined = "\n".join(texts)
    assert redact(JWT) in joined  # a short prefix is fine
    for secret in (API_KEY, JWT, JWT_SECRET_PART, JWT2):
        assert secret not in joined
    # the API key never reached the VM either
    assert "Authorization" not in ok.request.headers


# =========================================================================== entry script


def test_entry_script_wires_the_addons_in_hook_order() -> None:
    module = load_script(str(ROOT / "addon" / "browser_routing.py"))
    assert module is not None
    router, routes_file, fallback, audit, injector, commands, recorder, parts = module.addons
    assert isinstance(router, BrowserRouting)
    assert isinstance(routes_file, RoutesFile)
    assert isinstance(fallback, ControlPlaneFallback)
    assert isinstance(audit, RoutingAudit)
    assert isinstance(injector, FaultInjection)
    assert isinstance(commands, RouteCommands)
    assert isinstance(recorder, DecisionRecorder)
    assert router.recorder is recorder and router.injector is injector
    assert routes_file.router is router and commands.router is router
    assert fallback.router is router and audit.router is router and audit.fallback is fallback
    assert fallback.recorder is recorder and commands.recorder is recorder and audit.recorder is recorder
    assert audit.injector is injector
    assert isinstance(parts, chain.Parts) and parts.router is router


async def test_reissue_whose_answer_breaks_off_gives_502(h: Harness) -> None:
    """The CP sent its headers, then the connection died: no half answer for the client."""

    async def answer(copy: http.HTTPFlow) -> Error:
        copy.response = cp_response()  # headers arrived ...
        return Error("peer closed connection without sending complete message body")  # ... the body did not

    h.reissues.answer = answer
    flow = await routed(h)
    await h.respond(flow, gone_response())
    assert flow.response is not None and flow.response.status_code == 502
    assert json.loads(flow.response.get_content() or b"")["code"] == "fallback_failed"
    rec = record(flow)
    assert rec["decision"] == "fallback" and "cp_status" not in rec
    assert "complete message body" in rec["error"]


def test_reissue_options_pass_everything_but_streaming() -> None:
    from types import SimpleNamespace

    from addon.reissue import ReissueOptions

    real = SimpleNamespace(
        stream_large_bodies="1k", mode=["upstream:http://127.0.0.1:1"], body_size_limit="9m"
    )
    options = ReissueOptions(real)  # type: ignore[arg-type]
    assert options.stream_large_bodies is None
    assert options.mode == real.mode and options.body_size_limit == "9m"


async def test_reissue_carries_a_get_body_that_arrived_after_the_headers(h: Harness) -> None:
    """mitmproxy reads the body after `requestheaders`, where the route is chosen."""
    await h.learn(browser())
    flow = cp_flow("GET", f"/browsers/{SID}/telemetry/events", content=b'{"q": 1}')
    body, flow.request.raw_content = flow.request.raw_content, None
    h.flows.append(flow)
    await run_hook(h.addons, "requestheaders", flow)
    flow.request.raw_content = body
    await run_hook(h.addons, "request", flow)
    assert record(flow)["decision"] == "routed"
    await h.respond(flow, gone_response())
    (sent,) = h.reissues.received
    assert sent.raw_content == b'{"q": 1}' and sent.headers["authorization"] == f"Bearer {API_KEY}"
