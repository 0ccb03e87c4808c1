"""The addon's parts driven hook by hook in mitmproxy's order with taddons/tflow: the `Harness`
(and its `h` fixture in conftest.py), the entry script wired as mitmdump wires it.

The fallback's real re-issue goes through `mitmproxy.addons.clientplayback.ReplayHandler`
(network); here `addon.fallback.ReplayHandler` is replaced by a fake that answers without a
network but, like the real one, runs the re-issue through the addons' own hooks.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from flows import browser, cp_flow, cp_response, json_response, view
from known import API_KEY, CP_HOST, JWT, JWT2, JWT_SECRET_PART, ROOT, SID, VM_BASE, VM_HOST
from mitmproxy import hooks, http
from mitmproxy.addons.script import load_script
from mitmproxy.flow import Error
from mitmproxy.test import taddons, tflow, tutils

import addon.fallback as reissue_mod
from addon.fallback import ControlPlaneFallback
from addon.hooks import BrowserRouting
from addon.recorder import METADATA_KEY, DecisionRecorder
from addon.router import Router

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

    def fail_with(self, message: str) -> None:
        """Every re-issue from now on ends in this error, with no answer from the CP."""

        async def error(copy: http.HTTPFlow) -> Error:
            return Error(message)

        self.answer = error

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
    parts: BrowserRouting
    router: Router
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

    async def respond_untouched(self, flow: http.HTTPFlow, response: http.Response) -> http.HTTPFlow:
        """Answers `flow` with `response`: the client must get it byte for byte, with no re-issue."""
        expected = view(response)
        await self.respond(flow, response)
        assert self.reissues.copies == []
        assert self.client_view(flow) == expected
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
    parts = BrowserRouting()
    router, fallback, recorder = parts.router, parts.fallback, parts.recorder
    streamed: dict[str, bytes] = {}
    reissues = Reissues([parts], streamed)
    monkeypatch.setattr(reissue_mod, "ReplayHandler", fake_replay_handler(reissues))
    log_path = tmp_path / "decisions.jsonl"
    with taddons.context(parts) as tctx:
        start(tctx, [parts])
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


# --------------------------------------------------------------------------- the entry script


class Wired:
    """The entry script's addons, wired as mitmdump wires them, in a taddons context."""

    def __init__(self, tctx: taddons.context, addons: list[Any]) -> None:
        self.tctx = tctx
        (self.parts,) = addons
        parts = self.parts
        self.router, self.routes_file, self.fallback = parts.router, parts.routes_file, parts.fallback
        self.commands, self.recorder = parts.commands, parts.recorder

    async def send(
        self, method: str, path: str, response: http.Response | None = None, replay: bool = False
    ) -> http.HTTPFlow:
        """One client request through the hooks, answered by `response`; `replay`: by server replay."""
        req = tutils.treq(method=method.encode(), scheme=b"https", host=CP_HOST, port=443, path=path.encode())
        flow = tflow.tflow(req=req)
        for name in ("requestheaders", "request", "responseheaders", "response"):
            if name == "responseheaders":
                flow.response = response or http.Response.make(
                    200, b"{}", {"Content-Type": "application/json"}
                )
                flow.is_replay = "response" if replay else None
            await run_hook([self.parts], name, flow)
        return flow

    async def create(self, session_id: str, name: str | None = None) -> None:
        obj = {
            "session_id": session_id,
            "name": name,
            "base_url": VM_BASE,
            "cdp_ws_url": f"wss://x/cdp?jwt={JWT}",
        }
        await self.send(
            "POST",
            "/browsers",
            http.Response.make(200, json.dumps(obj), {"Content-Type": "application/json"}),
        )


def wired(**options: Any) -> Iterator[Wired]:
    """The entry script loaded as `-s` loads it, with these options, its addons running."""
    module = load_script(str(ROOT / "addon" / "browser_routing.py"))
    assert module is not None
    with taddons.context(*module.addons) as tctx:
        tctx.options.update(
            browserrouting_control_plane=f"https://{CP_HOST}",
            browserrouting_vm_hosts="*.vm.test",
            browserrouting_subresources="telemetry,fs",
            **options,
        )
        for a in module.addons:
            if hasattr(a, "running"):
                a.running()
        yield Wired(tctx, module.addons)


def decision(flow: http.HTTPFlow) -> tuple[str, str | None]:
    """A flow's (decision, reason)."""
    rec = record(flow)
    return rec["decision"], rec["reason"]
