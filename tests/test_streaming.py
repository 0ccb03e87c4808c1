"""What streams and what is held back: routed answers stream, except a 404 to an eligible GET,
buffered up to MAX_GONE_BODY to be read as browser_gone; a re-issue's answer is whole. Unit tests
with taddons, then SSE streams and large bodies through a real mitmdump."""

from __future__ import annotations

import json
from typing import Any

import pytest
from addon_harness import Harness, record, routed, run_hook
from conftest import proxy_options
from flows import cp_flow, cp_response, gone_response, json_response, view
from known import SID
from mitmdump_runner import Mitmdump
from mitmproxy import http
from proxy_clients import client, create_browser, requests_to
from simulator import Simulator

from addon.fallback_rule import MAX_GONE_BODY

# --------------------------------------------------------------------------- which answers stream


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


async def test_the_reissues_answer_is_buffered_whole(h: Harness) -> None:
    seen: list[bool | Any] = []

    async def answer(copy: http.HTTPFlow) -> http.Response:
        resp = cp_response()
        resp.stream = True  # e.g. preset by stream_large_bodies
        return resp

    h.reissues.answer = answer
    orig_rh = h.fallback.on_responseheaders

    def spy(flow: http.HTTPFlow, record: dict[str, Any]) -> None:
        orig_rh(flow, record)
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


async def test_a_stream_broken_after_a_vm_success_stays_routed(h: Harness) -> None:
    flow = await routed(h, f"/browsers/{SID}/telemetry/stream")
    flow.response = http.Response.make(200, b"", {"Content-Type": "text/event-stream"})
    await run_hook(h.addons, "responseheaders", flow)
    await h.fail(flow, "client disconnected")
    rec = record(flow)
    assert (rec["decision"], rec["vm_status"], rec["error"]) == ("routed", 200, "client disconnected")
    assert h.router.originals == {}
    assert h.log()[-1]["decision"] == "routed"


# --------------------------------------------------------------------------- the bounds of a buffered 404


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
    await h.respond_untouched(flow, vm)
    assert flow.response is vm
    assert record(flow)["reason"] == "not_browser_gone"


async def test_small_gzip_404_decoding_past_the_bound_is_not_browser_gone(h: Harness) -> None:
    flow = await routed(h)
    vm = http.Response.make(404, _padded_gone(4 * MAX_GONE_BODY), {"Content-Type": "application/json"})
    vm.encode("gzip")
    assert len(vm.raw_content or b"") < MAX_GONE_BODY
    await h.respond_untouched(flow, vm)
    assert record(flow)["reason"] == "not_browser_gone"


async def test_404_at_the_bound_is_still_read(h: Harness) -> None:
    flow = await routed(h)
    vm = http.Response.make(404, _padded_gone(MAX_GONE_BODY), {"Content-Type": "application/json"})
    await h.respond(flow, vm)
    assert len(h.reissues.copies) == 1
    assert record(flow)["decision"] == "fallback"


# --------------------------------------------------------------------------- through a real mitmdump


def test_routed_sse_delivers_first_event_while_the_stream_is_open(
    fresh_sim: Simulator, proxy: Mitmdump
) -> None:
    sid = create_browser(proxy, fresh_sim)["session_id"]
    fresh_sim.reset()
    fresh_sim.hold_streams(True)
    try:
        with (
            client(proxy) as c,
            c.stream("GET", f"{fresh_sim.cp_url}/browsers/{sid}/telemetry/stream") as response,
        ):
            assert response.status_code == 200
            lines = response.iter_lines()
            first = next(line for line in lines if line.startswith("data:"))
            # The server is still holding the stream open: nothing else has been sent yet.
            vm = requests_to(fresh_sim, "vm", "telemetry/stream")
            assert len(vm) == 1 and vm[0]["t_end"] is None
            fresh_sim.release_streams()
            rest = [line for line in lines if line.startswith("data:")]
        assert json.loads(first.removeprefix("data:"))["id"] == f"vm-{sid}-1"
        assert len(rest) == 2
    finally:
        fresh_sim.release_streams()
    assert requests_to(fresh_sim, "cp", "telemetry/stream") == []
    assert proxy.records("routed", sid)[-1]["vm_status"] == 200


def test_an_sse_stream_the_cp_serves_is_live_too(sim: Simulator) -> None:
    """Not routed (not allowlisted here), the stream goes through the CP, and still live."""
    with Mitmdump(proxy_options(sim, browserrouting_subresources="process")) as proxy:
        sid = create_browser(proxy, sim)["session_id"]
        sim.hold_streams(True)
        try:
            with (
                client(proxy) as c,
                c.stream("GET", f"{sim.cp_url}/browsers/{sid}/telemetry/stream") as response,
            ):
                lines = response.iter_lines()
                first = next(line for line in lines if line.startswith("data:"))
                assert requests_to(sim, "cp", "telemetry/stream")[-1]["t_end"] is None  # still open
                sim.release_streams()
                assert len([line for line in lines if line.startswith("data:")]) == 2
        finally:
            sim.release_streams()
        assert json.loads(first.removeprefix("data:"))["id"] == f"vm-{sid}-1"
        assert proxy.records("passthrough", sid)[-1]["reason"] == "not_allowlisted"


def test_streamed_request_bodies_are_routed_too(sim: Simulator) -> None:
    """With stream_large_bodies, mitmproxy connects upstream before the `request` hook runs:
    the route must be chosen on the headers, and the body must arrive whole."""
    with Mitmdump(proxy_options(sim, stream_large_bodies="1k")) as proxy:
        sid = create_browser(proxy, sim)["session_id"]
        sim.reset()
        body = json.dumps({"command": "cat", "stdin": "z" * 200_000}).encode()
        with client(proxy) as c:
            got = c.post(f"{sim.cp_url}/browsers/{sid}/process/exec", content=body)
        assert got.status_code == 200
        vm = requests_to(sim, "vm", "process/exec")
        assert len(vm) == 1 and vm[0]["body_len"] == len(body) and "authorization" not in vm[0]["headers"]
        assert requests_to(sim, "cp", "process/exec") == []
        assert proxy.records("routed", sid)[-1]["vm_status"] == 200


def test_fallback_answer_is_whole_with_stream_large_bodies_set(sim: Simulator) -> None:
    """mitmproxy streams bodies over stream_large_bodies midway; the re-issue's must not be."""
    with Mitmdump(proxy_options(sim, stream_large_bodies="1k")) as proxy:
        sid = create_browser(proxy, sim)["session_id"]  # a browser object is under 1k
        sim.kill_on_vm(sid)
        with client(proxy) as c:
            got = c.get(f"{sim.cp_url}/browsers/{sid}/telemetry/events")
        assert got.status_code == 200 and len(got.content) > 1024
        assert got.json()[0]["id"] == f"cp-{sid}-1"
        assert proxy.records("fallback", sid)[-1]["cp_status"] == 200
