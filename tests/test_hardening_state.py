"""Per-flow state is freed on every ending of a flow, counted with taddons.

The addon keeps two things per flow in progress: the client's original request of a routed
GET (`router.originals`, it holds the API key) and, in audit mode, the exchange a VM request
opened (`audit.open`). Each test builds the parts exactly as the `-s` script does, drives one
flow through mitmproxy's hooks in order to one ending, and counts what is left.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import pytest
from addon_harness import run_hook, start
from mitmproxy import http
from mitmproxy.flow import Error
from mitmproxy.test import taddons, tflow, tutils

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
    return {"originals": len(parts.router.originals), "open": len(parts.audit.open)}


@pytest.mark.parametrize("ending", ENDINGS)
async def test_per_flow_state_is_freed_on_every_ending(parts: BrowserRouting, ending: str) -> None:
    flow = client_request(parts)
    await end(parts, flow, ending)
    assert open_state(parts) == {"originals": 0, "open": 0}
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
