"""Per-flow state is freed on every ending of a flow, counted with taddons.

The addon keeps per flow in progress: the client's original request of a routed GET
(`router.originals`, it holds the API key), in audit mode the exchange a VM request opened
(`audit.open`), and for a flow a fault-injection rule picked, the step its `request` hook
carries out, the hold it waits in, the answer it cuts. Each test builds the parts exactly as
the `-s` script does, drives one flow through mitmproxy's hooks in order to one ending, and
counts what is left.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from addon_harness import run_hook, start
from mitmproxy import ctx, http
from mitmproxy.flow import Error
from mitmproxy.test import taddons, tflow, tutils

from addon.faults import CUT_ERROR
from addon.hooks import BrowserRouting
from addon.recorder import METADATA_KEY
from addon.route_cache import Route

CP_HOST = "api.example.test"
SID = "sess-state"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzZXNzaW9uIjp7ImlkIjoic2Vzcy1zdGF0ZSJ9fQ.sig"
VM_BASE = "https://proxy.iad.vm.test:8443/browser/kernel"
ENDINGS = ["answered", "answered_404", "errored", "killed", "client_gone", "injected_reset"]


@pytest.fixture(params=["route", "audit"])
def parts(request: pytest.FixtureRequest) -> Iterator[BrowserRouting]:
    built = BrowserRouting()
    with taddons.context(built) as tctx:
        start(tctx, [built])
        tctx.configure(
            built.router,
            browserrouting_control_plane=f"https://{CP_HOST}",
            browserrouting_vm_hosts="*.vm.test",
            browserrouting_subresources="fs,telemetry",
            browserrouting_mode=request.param,
            browserrouting_audit_window=50,
        )
        built.router.add(Route(SID, VM_BASE, JWT), "command")
        yield built


def client_request(parts: BrowserRouting) -> http.HTTPFlow:
    """In route mode the client asks the CP (the addon routes); in audit mode it asks the VM."""
    if parts.router.mode == "route":
        url = f"https://{CP_HOST}/browsers/{SID}/telemetry/events"
        headers = [(b"Authorization", b"Bearer sk-secret")]
    else:
        url = f"{VM_BASE}/telemetry/events?jwt={quote(JWT, safe='')}"
        headers = []
    request = tutils.treq()
    request.url = url
    request.headers = http.Headers(headers)
    return tflow.tflow(req=request)


async def end(parts: BrowserRouting, flow: http.HTTPFlow, ending: str) -> None:
    """Take a flow from its request to one ending, through the hooks mitmproxy would call."""
    if ending == "injected_reset":
        parts.injector.add_rule(f"{SID}=reset:1")
    await run_hook([parts], "requestheaders", flow)
    if ending != "injected_reset":
        await run_hook([parts], "request", flow)
    if ending.startswith("answered"):
        status = 404 if ending == "answered_404" else 200
        flow.response = http.Response.make(
            status, b'{"code": "not_found"}', {"Content-Type": "application/json"}
        )
        await run_hook([parts], "responseheaders", flow)
        await run_hook([parts], "response", flow)
        return
    if ending == "killed":
        flow.kill()  # another addon (block_list, a script, mitmweb's kill button)
    elif ending == "errored":
        flow.error = Error("Connection refused")
    elif ending == "client_gone":
        flow.error = Error("Client disconnected.")
    await run_hook([parts], "error", flow)


def open_state(parts: BrowserRouting) -> dict[str, int]:
    injector = parts.injector
    return {
        "originals": len(parts.router.originals),
        "open": len(parts.audit.open),
        "awaiting": len(injector.awaiting),
        "held": len(injector.holds.by_flow),
        "cutting": len(injector.cutting),
    }


FREED = dict.fromkeys(("originals", "open", "awaiting", "held", "cutting"), 0)


@pytest.mark.parametrize("ending", ENDINGS)
async def test_per_flow_state_is_freed_on_every_ending(parts: BrowserRouting, ending: str) -> None:
    flow = client_request(parts)
    await end(parts, flow, ending)
    assert open_state(parts) == FREED
    record = flow.metadata[METADATA_KEY]
    if parts.router.mode == "audit":
        assert record["decision"] == "client_routed"
    elif ending.startswith("answered"):
        assert record["decision"] == ("routed" if ending == "answered" else "no_fallback")
    else:
        assert (record["decision"], record["reason"]) == ("no_fallback", "vm_error")


async def test_a_flow_waiting_for_its_answer_holds_its_state(parts: BrowserRouting) -> None:
    """The counts above can fail: until the flow ends, its state is there."""
    flow = client_request(parts)
    await run_hook([parts], "requestheaders", flow)
    await run_hook([parts], "request", flow)
    held = "originals" if parts.router.mode == "route" else "open"
    assert open_state(parts)[held] == 1


HELD_ENDINGS = ["client_left", "rules_cleared", "killed_in_mitmweb", "time_ran_out"]


@pytest.mark.parametrize("ending", HELD_ENDINGS)
async def test_a_held_flow_frees_its_state_on_every_ending(parts: BrowserRouting, ending: str) -> None:
    parts.injector.add_rule(f"{SID}=delay@50" if ending == "time_ran_out" else f"{SID}=hang")
    flow = client_request(parts)
    await run_hook([parts], "requestheaders", flow)
    assert parts.request is not None, "the request hook is there while a flow waits for its step"
    holding = parts.request(flow)
    assert holding is not None
    task = asyncio.ensure_future(holding)
    await asyncio.sleep(0.01)
    assert open_state(parts)["held"] == 1 and parts.request is None
    assert parts.client_disconnected is not None
    parts.client_disconnected(tflow.tclient_conn())  # another client leaving lets nothing go
    await asyncio.sleep(0.01)
    assert not task.done() or ending == "time_ran_out"
    if ending == "client_left":
        parts.client_disconnected(flow.client_conn)
    elif ending == "rules_cleared":
        parts.commands.inject_clear()
    elif ending == "killed_in_mitmweb":
        flow.kill()  # as mitmweb's kill button does, telling no addon
    await asyncio.wait_for(task, 2)
    if ending == "time_ran_out":
        assert flow.error is None, "a delay ran its course: the request goes on"
        flow.response = http.Response.make(200, b"{}", {"Content-Type": "application/json"})
        await run_hook([parts], "responseheaders", flow)
        await run_hook([parts], "response", flow)
    else:
        assert flow.error is not None and flow.error.msg == Error.KILLED_MESSAGE
        await run_hook([parts], "error", flow)
    assert open_state(parts) == FREED
    assert (parts.request, parts.client_disconnected) == (None, None)
    assert flow.metadata[METADATA_KEY]["injected"] == ("delay" if ending == "time_ran_out" else "hang")


async def test_a_cut_flow_frees_its_state_and_ends_killed(parts: BrowserRouting) -> None:
    parts.injector.add_rule(f"{SID}=cut:1")
    flow = client_request(parts)
    await run_hook([parts], "requestheaders", flow)
    assert parts.request is None, "a cut needs no request hook"
    flow.response = http.Response.make(200, b'{"events": []}', {"Content-Type": "application/json"})
    await run_hook([parts], "responseheaders", flow)
    assert callable(flow.response.stream)
    assert (
        list(flow.response.stream(b"0123456789")) == [b"01234"] and list(flow.response.stream(b"abc")) == []
    )
    assert open_state(parts)["cutting"] == 1
    flow.response.raw_content = None  # streamed to the client
    await run_hook([parts], "response", flow)
    assert open_state(parts) == FREED
    assert flow.error is not None and flow.error.msg == Error.KILLED_MESSAGE
    record = flow.metadata[METADATA_KEY]
    assert (record["injected"], record["error"], record["vm_status"]) == ("cut", CUT_ERROR, 200)


async def test_a_reload_keeps_the_rules_as_they_are_and_the_flows_they_hold(parts: BrowserRouting) -> None:
    """mitmproxy configures a reloaded script with every option again: the rules added by
    command, their counts and draws, and the hangs they hold are not reset by that."""
    parts.injector.add_rule(f"{SID}=hang")
    parts.injector.add_rule("other=502*2>gone")
    assert [str(parts.injector.rules[1].take()) for _ in range(2)] == ["502*2", "502*2"]
    flow = client_request(parts)
    await run_hook([parts], "requestheaders", flow)
    assert parts.request is not None
    holding = parts.request(flow)
    assert holding is not None
    task = asyncio.ensure_future(holding)
    await asyncio.sleep(0.01)

    reloaded = BrowserRouting()
    for part, old in zip(reloaded.parts, parts.parts, strict=True):
        part.take_over(old)
    reloaded.configure(set(ctx.options.keys()))
    await asyncio.sleep(0.01)
    assert [r["rule"] for r in json.loads(reloaded.injector.rules_json())] == [
        f"{SID}=hang",
        "other=502*2>gone",
    ]
    assert reloaded.injector.rules[1].kind == "gone" and not task.done(), "counts kept, the hang held"
    reloaded.commands.inject_clear()
    await asyncio.wait_for(task, 2)
    assert flow.error is not None and open_state(reloaded)["held"] == 0
