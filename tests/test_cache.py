"""The route cache: what fills it (browser metadata from a CP origin, by
id and by name), what evicts it (delete, pool release, vm_hosts narrowed) and what it refuses
(a base_url off `browserrouting_vm_hosts`). The pure parts are in test_cache_pure.py."""

from __future__ import annotations

import json
import logging

import pytest
from addon_harness import Harness, Wired, decision, record
from flows import browser, cp_flow, json_response, query_of, view
from known import CP, CP_HOST, JWT, JWT2, JWT_SECRET_PART, SID, SID2, VM_BASE, VM_HOST
from mitmdump_runner import Mitmdump
from mitmproxy import http
from proxy_clients import client, vm_hits
from simulator import Simulator

from addon.recorder import METADATA_KEY
from addon.route_cache import Route, redact

# --------------------------------------------------------------------------- learning


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
async def test_browser_metadata_answers_fill_the_cache_and_reach_the_client_untouched(
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


async def test_browsers_nested_anywhere_in_the_json_are_cached(h: Harness) -> None:
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


async def test_cached_fields_are_trimmed(h: Harness) -> None:
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


# --------------------------------------------------------------------------- names


async def test_names_route_like_ids_and_a_delete_by_either_evicts_both(script: Wired) -> None:
    await script.create("s1", "alpha")
    assert decision(await script.send("GET", "/browsers/alpha/fs/read_file")) == ("routed", None)
    flow = await script.send("GET", "/browsers/alpha/telemetry/events")
    assert flow.metadata["browserrouting"]["session_id"] == "s1"
    await script.send("DELETE", "/browsers/alpha")
    for key in ("alpha", "s1"):
        assert decision(await script.send("GET", f"/browsers/{key}/fs/x")) == ("passthrough", "no_route")
    await script.create("s2", "beta")
    await script.send("DELETE", "/v1/browsers/s2")
    assert decision(await script.send("GET", "/browsers/beta/fs/x")) == ("passthrough", "no_route")


def test_a_delete_by_name_through_mitmdump_evicts_the_id_too(fresh_sim: Simulator, proxy: Mitmdump) -> None:
    with client(proxy) as c:
        sid = c.post(f"{fresh_sim.cp_url}/browsers", json={"name": "qa-beta"}).json()["session_id"]
        fresh_sim.reset()
        assert c.get(f"{fresh_sim.cp_url}/browsers/qa-beta/fs/read_file?path=/z").is_success
        assert len(vm_hits(fresh_sim, "fs/read_file")) == 1
        assert c.delete(f"{fresh_sim.cp_url}/browsers/qa-beta").status_code == 204
        for key in ("qa-beta", sid):
            c.get(f"{fresh_sim.cp_url}/browsers/{key}/fs/read_file?path=/z")
    assert len(vm_hits(fresh_sim, "fs/read_file")) == 1, "after the delete nothing reaches the VM"
    passthroughs = proxy.records("passthrough", wait_for=2)
    assert [r["reason"] for r in passthroughs if r["session_id"] in ("qa-beta", sid)][-2:] == ["no_route"] * 2


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


async def test_a_delete_by_name_or_percent_encoded_id_evicts(h: Harness) -> None:
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
