"""Audit mode's `missing_fallback` in addon/audit/watcher.py: the violation is set on the VM flow when
the window ends with no further traffic (a timer), when the client sends its next VM request for
the session, or at shutdown; the record is logged again and mitmweb is told to redraw the flow.

The addon's parts run in a taddons context; each hook goes through mitmproxy's addon manager,
in chain order, as in mitmdump.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from addon_harness import start as start_script
from mitmproxy import hooks, http
from mitmproxy.proxy.layers.http import _hooks as http_hooks
from mitmproxy.test import taddons, tflow

from addon.hooks import BrowserRouting
from addon.recorder import METADATA_KEY

CP = "https://api.example.test"
SID = "sess-timer-1"
JWT = "eyJhbGciOiJub25lIn0.eyJzIjoxfQ.sig+/="
VM_BASE = "https://proxy.vm.test:8443/browser/kernel"
WINDOW_MS = 150
GONE = {"code": "browser_gone", "message": "browser not found"}


class Redraws:
    """An addon that sees what mitmweb would redraw (the `update` hook)."""

    def __init__(self) -> None:
        self.flow_ids: list[str] = []

    def update(self, flows: list[Any]) -> None:
        self.flow_ids += [f.id for f in flows]


@dataclass
class Proxy:
    tctx: taddons.context
    parts: BrowserRouting
    redraws: Redraws
    log_path: Path

    async def send(
        self, method: str, url: str, headers: dict[str | bytes, str | bytes] | None = None
    ) -> http.HTTPFlow:
        flow = tflow.tflow(req=http.Request.make(method, url, b"", headers or {}))
        for hook in (http_hooks.HttpRequestHeadersHook, http_hooks.HttpRequestHook):
            await self.tctx.master.addons.handle_lifecycle(hook(flow))
        return flow

    async def answer(self, flow: http.HTTPFlow, status: int, body: object) -> http.HTTPFlow:
        flow.response = http.Response.make(status, json.dumps(body), {"Content-Type": "application/json"})
        for hook in (http_hooks.HttpResponseHeadersHook, http_hooks.HttpResponseHook):
            await self.tctx.master.addons.handle_lifecycle(hook(flow))
        return flow

    async def gone_on_vm(self) -> http.HTTPFlow:
        """The client's own GET of telemetry/events on the VM, answered 404 browser_gone."""
        vm = await self.send("GET", f"{VM_BASE}/telemetry/events?jwt={quote(JWT, safe='')}")
        return await self.answer(vm, 404, GONE)

    def logged(self, flow: http.HTTPFlow) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.log_path.read_text().splitlines()]
        return [r for r in lines if r.get("flow_id") == flow.id and r["decision"].startswith("client_")]

    def table(self) -> Any:
        return json.loads(self.tctx.command(self.parts.audit.table))


async def start(tmp_path: Path, window_ms: int) -> AsyncIterator[Proxy]:
    parts = BrowserRouting()
    redraws = Redraws()
    addons = [parts, redraws]
    log_path = tmp_path / "decisions.jsonl"
    with taddons.context(*addons) as tctx:
        start_script(tctx, addons)  # what loading the script does: every option, once
        tctx.configure(
            parts.router, browserrouting_control_plane=CP, browserrouting_vm_hosts="*.vm.test",
            browserrouting_subresources="telemetry", browserrouting_mode="audit",
            browserrouting_audit_window=window_ms, browserrouting_log=str(log_path),
        )  # fmt: skip
        proxy = Proxy(tctx, parts, redraws, log_path)
        created = await proxy.send("POST", f"{CP}/browsers", {"Authorization": "Bearer sk-x"})
        browser = {
            "session_id": SID,
            "base_url": VM_BASE,
            "cdp_ws_url": f"wss://proxy.vm.test/cdp?jwt={quote(JWT, safe='')}",
        }
        await proxy.answer(created, 200, browser)
        assert parts.router.cache.get(SID) is not None
        yield proxy


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[Proxy]:
    async for p in start(tmp_path, WINDOW_MS):
        yield p


@pytest.fixture
async def slow_proxy(tmp_path: Path) -> AsyncIterator[Proxy]:
    """A window far longer than any test: only traffic or shutdown settle a browser_gone."""
    async for p in start(tmp_path, 60_000):
        yield p


def record(flow: http.HTTPFlow) -> dict[str, Any]:
    rec: dict[str, Any] = flow.metadata[METADATA_KEY]
    return rec


async def test_missing_fallback_is_set_when_the_window_ends_without_traffic(proxy: Proxy) -> None:
    vm = await proxy.gone_on_vm()
    assert record(vm)["violations"] == [] and vm.marked == ":white_check_mark:", "not before the window ends"
    proxy.redraws.flow_ids.clear()
    await asyncio.sleep(WINDOW_MS / 1000 + 0.15)
    assert record(vm)["violations"] == ["missing_fallback"]
    assert vm.marked == ":warning:"
    assert vm.comment.splitlines()[0] == f"audit missing_fallback: client_routed, VM 404 [{SID}]"
    assert [r["violations"] for r in proxy.logged(vm)] == [[], ["missing_fallback"]], "logged again"
    assert vm.id in proxy.redraws.flow_ids, "mitmweb is told to redraw the flow"
    assert proxy.table()["rules"]["missing_fallback"] == {"checked": 1, "broken": [vm.id]}


async def test_a_fallback_within_the_window_cancels_the_timer(proxy: Proxy) -> None:
    vm = await proxy.gone_on_vm()
    fallback = await proxy.send(
        "GET", f"{CP}/browsers/{SID}/telemetry/events", {"Authorization": "Bearer sk-x"}
    )
    assert proxy.parts.audit.waiting == {}, "the timer is cancelled"
    await proxy.answer(fallback, 200, [])
    await asyncio.sleep(WINDOW_MS / 1000 + 0.15)
    assert (record(fallback)["decision"], record(fallback)["serves"]) == ("client_fallback", vm.id)
    assert record(fallback)["violations"] == [] and record(vm)["violations"] == []
    assert len(proxy.logged(vm)) == 1
    assert proxy.table()["rules"]["missing_fallback"] == {"checked": 1, "broken": []}


async def test_the_next_vm_request_of_the_session_settles_it_at_once(slow_proxy: Proxy) -> None:
    vm = await slow_proxy.gone_on_vm()
    await slow_proxy.send("GET", f"{VM_BASE}/telemetry/stream?jwt={quote(JWT, safe='')}")
    assert record(vm)["violations"] == ["missing_fallback"] and vm.marked == ":warning:"
    assert [r["violations"] for r in slow_proxy.logged(vm)] == [[], ["missing_fallback"]]
    assert slow_proxy.parts.audit.waiting == {}, "its timer is cancelled"


async def test_shutdown_settles_what_is_still_waiting_and_logs_the_table(
    slow_proxy: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    vm = await slow_proxy.gone_on_vm()
    await slow_proxy.tctx.master.addons.trigger_event(hooks.DoneHook())
    assert record(vm)["violations"] == ["missing_fallback"]
    assert [r["violations"] for r in slow_proxy.logged(vm)] == [[], ["missing_fallback"]]
    logged = next(
        r.getMessage() for r in caplog.records if r.getMessage().startswith("browserrouting audit: ")
    )
    table = json.loads(logged.removeprefix("browserrouting audit: "))
    assert table["rules"]["missing_fallback"]["broken"] == [vm.id]
