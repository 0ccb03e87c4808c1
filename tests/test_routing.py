"""The rewrite of a routed request: scheme, host, port and path from the route's
base_url, the jwt added, Authorization dropped, all else kept; why a CP request passes through;
and through a real mitmdump, that the API key never reaches the VM nor the jwt the CP."""

from __future__ import annotations

import json
import ssl
from urllib.parse import quote

import httpx
import pytest
from addon_harness import Harness, record, routed
from conftest import proxy_options
from flows import browser, cp_flow, json_response, query_of, view
from known import API_KEY, JWT, JWT_SECRET_PART, SID, VM_BASE, VM_HOST, VM_PORT
from mitmdump_runner import Mitmdump
from mitmproxy import http
from proxy_clients import API_KEY as LIVE_API_KEY
from proxy_clients import AUTH, client, create_browser, events_url, requests_to
from simulator import Simulator

from addon.recorder import METADATA_KEY
from addon.route_cache import redact

# --------------------------------------------------------------------------- the rewrite


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


@pytest.mark.parametrize("absolute_form", [False, True])
async def test_routing_sets_host_and_authority_as_mitmproxys_own_setters_would(
    h: Harness, absolute_form: bool
) -> None:
    await h.learn(browser())
    flow = cp_flow(
        "GET", f"/browsers/{SID}/fs/x", headers=(("host", "second.test"), ("X-A", "1"), ("HOST", "3.test"))
    )
    if absolute_form:  # `GET https://api.../ HTTP/1.1`, as a client of a regular proxy sends it
        flow.request.authority = flow.request.host
    expected = flow.request.copy()
    expected.scheme, expected.port, expected.host = "https", VM_PORT, VM_HOST  # the setters' way
    await h.request(flow)
    assert flow.request.authority == expected.authority == (f"{VM_HOST}:{VM_PORT}" if absolute_form else "")
    want = [f for f in expected.headers.fields if f[0].lower() != b"authorization"]
    assert list(flow.request.headers.fields) == want
    assert [f for f in want if f[0].lower() == b"host"] == [(b"Host", f"{VM_HOST}:{VM_PORT}".encode())]


async def test_routing_an_http2_request_points_its_authority_at_the_vm(h: Harness) -> None:
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


async def test_routing_finds_the_route_by_name_or_percent_encoded_id(h: Harness) -> None:
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


@pytest.mark.parametrize("status", [201, 204, 301, 304, 399])
async def test_a_vm_answer_below_400_stays_routed_and_its_location_drops_the_jwt(
    h: Harness, status: int
) -> None:
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
async def test_each_passthrough_reason_leaves_the_request_untouched(
    h: Harness, path: str, reason: str, session_id: str | None
) -> None:
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


async def test_a_request_to_another_host_is_not_looked_at(h: Harness) -> None:
    await h.learn(browser())
    flow = cp_flow("GET", f"/browsers/{SID}/fs/x", host="example.org")
    before = flow.request.copy()
    await h.exchange(flow, json_response(200, {}))
    assert flow.request.url == before.url
    assert flow.request.headers.fields == before.headers.fields
    assert METADATA_KEY not in flow.metadata
    assert (flow.comment, flow.marked) == ("", "")
    assert len(h.log()) == 2  # the learn only


# ------------------------------------------------------------------------ credentials through a real mitmdump


def test_api_key_never_reaches_the_vm_and_jwt_never_reaches_the_cp(
    fresh_sim: Simulator, proxy: Mitmdump
) -> None:
    sid = create_browser(proxy, fresh_sim)["session_id"]
    jwt = fresh_sim.jwt_for(sid)
    with client(proxy) as c:
        c.get(f"{fresh_sim.cp_url}/browsers/{sid}/fs/read_file", params={"path": "/tmp/x"})
        c.get(f"{fresh_sim.cp_url}/browsers/{sid}/telemetry/events")
    fresh_sim.kill_on_vm(sid)
    with client(proxy) as c:
        c.get(events_url(fresh_sim, sid))
    stats = fresh_sim.stats()
    assert all("authorization" not in r["headers"] for r in stats["vm"]["requests"] if not r["via_cp"])
    assert all("jwt" not in r["query"] for r in stats["cp"]["requests"])
    log = proxy.log_path.read_text()
    assert LIVE_API_KEY not in log and jwt not in log and sid in log


def test_api_key_added_by_modify_headers_never_reaches_the_vm(sim: Simulator) -> None:
    """QA may let mitmproxy add the key; mitmproxy's own addons run after this script."""
    injected = "Bearer sk-injected-by-mitmproxy"
    options = proxy_options(sim, modify_headers=f"|~q|Authorization|{injected}")
    with Mitmdump(options) as proxy, httpx.Client(proxy=proxy.url, timeout=10) as c:  # no key here
        sid = c.post(f"{sim.cp_url}/browsers", json={}).json()["session_id"]
        sim.reset()
        assert c.get(f"{sim.cp_url}/browsers/{sid}/fs/read_file?path=/k").status_code == 200
        sim.kill_on_vm(sid)
        assert c.get(events_url(sim, sid)).status_code == 200
    vm = [r for r in sim.stats()["vm"]["requests"] if not r["via_cp"]]
    assert len(vm) == 2 and all("authorization" not in r["headers"] for r in vm)
    cp = requests_to(sim, "cp", "telemetry/events")
    assert len(cp) == 1 and cp[0]["headers"]["authorization"] == injected


def test_a_cp_over_https_routes_and_falls_back_through_a_tunnel() -> None:
    """As against the live service: the client tunnels (CONNECT) to an HTTPS CP."""
    with Simulator(cp_tls=True) as tls_sim, Mitmdump(proxy_options(tls_sim)) as proxy:
        with httpx.Client(
            proxy=proxy.url, headers=AUTH, timeout=10, verify=ssl.create_default_context(cafile=proxy.ca_cert)
        ) as c:
            sid = c.post(f"{tls_sim.cp_url}/browsers", json={}).json()["session_id"]
            tls_sim.reset()
            assert (
                c.get(f"{tls_sim.cp_url}/browsers/{sid}/fs/read_file", params={"path": "/k"}).status_code
                == 200
            )
            tls_sim.kill_on_vm(sid)
            answer = c.get(events_url(tls_sim, sid))
        assert answer.status_code == 200 and answer.json(), "the CP's events"
        vm = [r for r in tls_sim.stats()["vm"]["requests"] if not r["via_cp"]]
        assert [r["path"].rsplit("/", 1)[-1] for r in vm] == ["read_file", "events"]
        assert all("authorization" not in r["headers"] for r in vm)
        cp = requests_to(tls_sim, "cp", "telemetry/events")
        assert (
            len(cp) == 1
            and "jwt" not in cp[0]["query"]
            and cp[0]["headers"]["authorization"] == AUTH["Authorization"]
        )
        decisions = [json.loads(line)["decision"] for line in proxy.log_path.read_text().splitlines()]
        assert decisions.count("fallback") == 1 and decisions.count("routed") == 1
