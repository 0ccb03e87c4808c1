"""The fallback's re-issue: exactly once, to the CP, as the client sent it
(Authorization restored, no jwt), through mitmproxy's own replay machinery, never routed again; a
502 `fallback_failed` when the CP gives no whole answer; many fallbacks at once without queueing."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable

import pytest
from addon_harness import Harness, record, routed, run_hook
from flows import browser, cp_flow, cp_response, gone_response, json_response, query_of, view
from known import API_KEY, CP, CP_HOST, GONE, JWT, JWT2, SID, SID2, VM_BASE
from mitmproxy import http
from mitmproxy.addons import clientplayback
from mitmproxy.flow import Error
from mitmproxy.utils.emoji import emoji

import addon.fallback as reissue_mod
from addon.recorder import METADATA_KEY
from addon.route_cache import Route


async def test_a_browser_gone_is_reissued_once_to_the_cp_as_the_client_sent_it(h: Harness) -> None:
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


@pytest.mark.parametrize(
    "cp_answer_response",
    [lambda: json_response(404, GONE), lambda: cp_response(502, {"error": "bad gateway"})],
    ids=["cp_404_browser_gone", "cp_502"],
)
async def test_a_cp_error_on_the_reissue_reaches_the_client_and_is_never_reissued(
    h: Harness, cp_answer_response: Callable[[], http.Response]
) -> None:
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


# --------------------------------------------------------------------------- the 502 when the re-issue fails


async def test_reissue_connect_error_gives_502_fallback_failed(h: Harness) -> None:
    h.reissues.fail_with("Server connection to ('api.example.test', 443) failed: Name or service not known")
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
    h.reissues.fail_with("killed")
    flow = await routed(h)
    await h.respond(flow, gone_response())
    assert flow.response is not None
    assert flow.response.status_code == 502
    assert b"fallback failed: killed" in (flow.response.content or b"")


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


# ------------------------------------------------------------------------- mitmproxy's machinery, concurrency


def test_reissue_uses_mitmproxys_replay_handler() -> None:
    # The real re-issue goes through mitmproxy's own upstream machinery (internal API: pinned).
    assert reissue_mod.ReplayHandler is clientplayback.ReplayHandler  # type: ignore[attr-defined]
    assert list(inspect.signature(clientplayback.ReplayHandler.__init__).parameters) == [
        "self",
        "flow",
        "options",
    ]
    assert inspect.iscoroutinefunction(clientplayback.ReplayHandler.replay)


def test_reissue_options_pass_everything_but_streaming() -> None:
    from types import SimpleNamespace

    from addon.fallback import ReissueOptions

    real = SimpleNamespace(
        stream_large_bodies="1k", mode=["upstream:http://127.0.0.1:1"], body_size_limit="9m"
    )
    options = ReissueOptions(real)  # type: ignore[arg-type]
    assert options.stream_large_bodies is None
    assert options.mode == real.mode and options.body_size_limit == "9m"


async def test_a_slow_reissue_does_not_hold_up_another(h: Harness) -> None:
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
