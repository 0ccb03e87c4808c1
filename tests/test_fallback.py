"""Which VM answers fall back to the control plane: only a 404
`browser_gone` to a routed GET of an eligible path; every other answer reaches the client as is.

The re-issue itself is in test_fallback_reissue.py; the same rules through a real mitmdump in
test_fallback_live.py."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest
from addon_harness import Harness, record, routed
from flows import browser, cp_flow, cp_response, gone_response, json_response, view
from known import API_KEY, CP, GONE, SID
from mitmproxy import http

from addon.fallback_rule import MAX_GONE_BODY, is_browser_gone, no_fallback_reason
from addon.paths import is_fallback_eligible

# -------------------------------------------------------------------- routed answers that are no browser_gone


async def test_a_vm_success_stays_routed_and_streams_to_the_client(h: Harness) -> None:
    flow = await routed(h)
    vm = json_response(200, {"events": [], "source": "vm"})
    await h.respond_untouched(flow, vm)
    rec = record(flow)
    assert (rec["decision"], rec["reason"], rec["vm_status"]) == ("routed", None, 200)
    assert flow.response is vm
    assert flow.response.stream is True
    assert h.router.originals == {}
    assert flow.marked == ":rocket:"


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_a_vm_5xx_streams_to_the_client_without_reissue(h: Harness, status: int) -> None:
    flow = await routed(h)
    vm = json_response(status, GONE, headers={"Retry-After": "1"})
    await h.respond_untouched(flow, vm)
    assert (record(flow)["decision"], record(flow)["reason"]) == ("no_fallback", "status")
    assert record(flow)["vm_status"] == status
    assert flow.response is vm
    assert flow.response.stream is True  # streamed through, not held back
    assert h.router.cache.get(SID) is not None


async def test_a_vm_403_is_no_fallback_status(h: Harness) -> None:
    flow = await routed(h)
    vm = json_response(403, GONE)
    await h.respond_untouched(flow, vm)
    assert (record(flow)["decision"], record(flow)["reason"]) == ("no_fallback", "status")
    assert record(flow)["vm_status"] == 403


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
async def test_a_vm_404_that_is_not_browser_gone_reaches_the_client(h: Harness, body: bytes) -> None:
    flow = await routed(h)
    vm = http.Response.make(404, body, {"Content-Type": "application/json"})
    await h.respond_untouched(flow, vm)
    assert (record(flow)["decision"], record(flow)["reason"]) == ("no_fallback", "not_browser_gone")
    assert flow.response is vm
    assert flow.response.stream is False  # a 404 is buffered to be read
    assert h.router.cache.get(SID) is not None


async def test_undecodable_404_is_not_browser_gone_and_untouched(h: Harness) -> None:
    flow = await routed(h)
    vm = http.Response.make(404, b"not gzip at all", {"Content-Encoding": "gzip"})
    await h.respond_untouched(flow, vm)
    assert record(flow)["reason"] == "not_browser_gone"


async def test_a_vm_connection_error_is_no_fallback_vm_error(h: Harness) -> None:
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


async def test_a_vm_error_on_a_post_is_no_fallback_vm_error(h: Harness) -> None:
    flow = await routed(h, f"/browsers/{SID}/fs/x", method="POST", content=b"{}")
    await h.fail(flow, "connection reset")
    assert (record(flow)["decision"], record(flow)["reason"]) == ("no_fallback", "vm_error")


# --------------------------------------------------------------------- browser_gone where no fallback applies


async def test_browser_gone_on_a_path_off_the_fallback_list_reaches_the_client(h: Harness) -> None:
    flow = await routed(h, f"/browsers/{SID}/telemetry/stream")
    vm = gone_response()
    await h.respond_untouched(flow, vm)
    assert record(flow)["decision"] == "no_fallback"
    assert record(flow)["reason"] == "not_eligible"
    assert record(flow)["vm_status"] == 404
    assert flow.response is vm
    assert h.router.cache.get(SID) is not None  # only a fallback evicts
    assert flow.marked == ":x:"


@pytest.mark.parametrize(
    "tail",
    ["telemetry/events/extra", "telemetry", "telemetry/eventsx", "telemetry/stream", "telemetry/events2"],
)
async def test_only_the_exact_fallback_path_falls_back(h: Harness, tail: str) -> None:
    flow = await routed(h, f"/browsers/{SID}/{tail}")
    vm = gone_response()
    await h.respond_untouched(flow, vm)
    assert (record(flow)["decision"], record(flow)["reason"]) == ("no_fallback", "not_eligible")


async def test_a_post_answered_browser_gone_is_not_reissued(h: Harness) -> None:
    body = b'{"event":"x","bin":"\x00\xff"}'
    flow = await routed(h, method="POST", content=body, headers=(("Content-Type", "application/json"),))
    assert flow.request.method == "POST"
    assert flow.request.raw_content == body
    vm = gone_response()
    await h.respond_untouched(flow, vm)
    assert (record(flow)["decision"], record(flow)["reason"]) == ("no_fallback", "not_get")
    assert h.router.originals == {}
    assert h.router.cache.get(SID) is not None


@pytest.mark.parametrize(
    ("path", "reason", "cached"),
    [
        (f"/browsers/{SID}/telemetry/events", "no_route", False),
        (f"/browsers/{SID}/replays/x", "not_allowlisted", True),
    ],
)
async def test_a_passthrough_is_never_reissued_even_on_browser_gone(
    h: Harness, path: str, reason: str, cached: bool
) -> None:
    if cached:
        await h.learn(browser())
    flow = await h.request(cp_flow("GET", path))
    assert flow.request.url == f"{CP}{path}"
    assert flow.request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert (record(flow)["decision"], record(flow)["reason"]) == ("passthrough", reason)
    cp = json_response(404, GONE)  # even the CP saying browser_gone changes nothing
    await h.respond_untouched(flow, cp)
    assert record(flow)["decision"] == "passthrough"
    assert record(flow)["cp_status"] == 404
    assert flow.response is cp
    assert flow.response.stream is False


# --------------------------------------------------------------------------- browser_gone that falls back


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


async def test_a_route_by_browser_name_falls_back_to_the_clients_url_and_evicts_both_keys(h: Harness) -> None:
    await h.learn(browser(name="my-browser"))
    flow = await h.request(cp_flow("GET", "/browsers/my-browser/telemetry/events"))
    assert record(flow)["decision"] == "routed"
    assert record(flow)["session_id"] == SID
    await h.respond(flow, gone_response())
    assert h.reissues.sent[0].url == f"{CP}/browsers/my-browser/telemetry/events"
    assert h.router.cache.get(SID) is None
    assert h.router.cache.get("my-browser") is None


# --------------------------------------------------------------------------- the predicate's pure parts


@pytest.mark.parametrize(
    ("tail", "eligible"),
    [
        ("telemetry/events", True),
        ("telemetry/events/", True),
        ("/telemetry//events", True),
        ("telemetry/events/x", False),
        ("telemetry", False),
        ("telemetry/eventsx", False),
        ("telemetry/stream", False),
    ],
)
def test_is_fallback_eligible_exact_after_normalisation(tail: str, eligible: bool) -> None:
    assert is_fallback_eligible(tail, ("telemetry/events",)) is eligible


def test_browser_gone_is_a_json_object_whose_code_is_browser_gone() -> None:
    assert is_browser_gone(b'{"code":"browser_gone","message":"browser not found"}')
    assert is_browser_gone(b' {"code": "browser_gone"} ')


@pytest.mark.parametrize(
    "body",
    [
        None,
        b"",
        b"browser_gone",
        b"<html>404 browser_gone</html>",
        b'[{"code":"browser_gone"}]',
        b'"browser_gone"',
        b'{"code":1}',
        b'{"code":null}',
        b'{"code":["browser_gone"]}',
        b'{"code":"not_found"}',
        b'{"code":"BROWSER_GONE"}',
        b'{"error":{"code":"browser_gone"}}',
        b'{"code":"browser_gone"',
        b"\xff\xfe{",
    ],
)
def test_any_other_body_is_not_browser_gone(body: bytes | None) -> None:
    assert is_browser_gone(body) is False


def _gone_body_of_size(size: int) -> bytes:
    head = b'{"code":"browser_gone","pad":"'
    tail = b'"}'
    body = head + b"x" * (size - len(head) - len(tail)) + tail
    assert len(body) == size
    return body


def test_browser_gone_is_read_only_up_to_the_size_bound() -> None:
    assert is_browser_gone(_gone_body_of_size(MAX_GONE_BODY)) is True
    assert is_browser_gone(_gone_body_of_size(MAX_GONE_BODY + 1)) is False


GONE_BODY = b'{"code":"browser_gone"}'


@pytest.mark.parametrize(
    ("method", "eligible", "status", "body", "reason"),
    [
        ("GET", True, 404, GONE_BODY, None),
        # vm_error first, whatever else holds
        ("POST", False, None, None, "vm_error"),
        ("GET", True, None, GONE_BODY, "vm_error"),
        # then not_get
        ("POST", True, 404, GONE_BODY, "not_get"),
        ("HEAD", False, 502, None, "not_get"),
        ("DELETE", True, 404, GONE_BODY, "not_get"),
        # then not_eligible
        ("GET", False, 404, GONE_BODY, "not_eligible"),
        ("GET", False, 502, None, "not_eligible"),
        # then status
        ("GET", True, 403, GONE_BODY, "status"),
        ("GET", True, 502, GONE_BODY, "status"),
        ("GET", True, 410, GONE_BODY, "status"),
        # then not_browser_gone
        ("GET", True, 404, b'{"code":"nope"}', "not_browser_gone"),
        ("GET", True, 404, None, "not_browser_gone"),
    ],
)
def test_no_fallback_reasons_are_checked_in_order(
    method: str, eligible: bool, status: int | None, body: bytes | None, reason: str | None
) -> None:
    assert no_fallback_reason(method, eligible, status, body) == reason


GONE_JSON = b'{"code":"browser_gone","message":"browser not found"}'


def _encode(body: bytes, coding: str) -> bytes:
    from mitmproxy.net import encoding

    if coding == "deflate-raw":  # deflate without the zlib wrapper, as some servers send it
        compressor = zlib.compressobj(wbits=-15)
        return compressor.compress(body) + compressor.flush()
    return bytes(encoding.encode(body, coding))


@pytest.mark.parametrize("coding", ["gzip", "deflate", "deflate-raw", "br", "zstd"])
def test_decode_bounded_decodes_each_coding_and_refuses_bombs(coding: str) -> None:
    from addon.content_coding import decode_bounded

    header = "deflate" if coding == "deflate-raw" else coding
    assert decode_bounded(_encode(GONE_JSON, coding), header, MAX_GONE_BODY) == GONE_JSON
    bomb = _encode(b"\0" * (50 * MAX_GONE_BODY), coding)
    assert len(bomb) < MAX_GONE_BODY  # small on the wire ...
    assert (
        decode_bounded(bomb, header, MAX_GONE_BODY) is None
    )  # ... too big to be browser_gone, never inflated whole


def test_decode_bounded_reads_identity_and_layers_and_refuses_unknown_or_broken() -> None:
    from addon.content_coding import decode_bounded

    assert decode_bounded(GONE_JSON, "", MAX_GONE_BODY) == GONE_JSON
    assert decode_bounded(GONE_JSON, "identity", MAX_GONE_BODY) == GONE_JSON
    assert decode_bounded(GONE_JSON, "compress", MAX_GONE_BODY) is None  # unknown coding: not decodable
    assert decode_bounded(b"not gzip", "gzip", MAX_GONE_BODY) is None
    layered = _encode(_encode(GONE_JSON, "gzip"), "br")  # gzip applied first, then br
    assert decode_bounded(layered, "gzip, br", MAX_GONE_BODY) == GONE_JSON
