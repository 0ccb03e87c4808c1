"""Audit mode with hand-written httpx clients that route by themselves, through a real mitmweb.

A conforming client (the reference's rules) audits clean; each non-conforming one is caught with
exactly its violation; the audit never changes a byte of what either side gets; and no secret
shows in anything the audit writes.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from audit_helpers import (
    RawClient,
    Route,
    audit_options,
    audit_table,
    audited,
    broken_by,
    flow_lines,
    route_of,
    secret_forms,
    summary,
)
from mitmdump_runner import Mitmdump
from mitmproxy import io
from proxy_clients import API_KEY, AUTH, cp_requests, vm_requests, web_api
from simulator import Simulator

WINDOW_MS = 800
ALLOWLIST = ("telemetry", "process")  # fs is not: a VM call there is not allowlisted
REGISTRY = ("telemetry/events",)
GONE = {"code": "browser_gone", "message": "browser not found"}


SIMULATOR_OPTIONS = {"sse_interval": 0.02}  # the module's simulator: a VM stream ends quickly


@pytest.fixture(scope="module")
def web(sim: Simulator) -> Iterator[Mitmdump]:
    with Mitmdump(audit_options(sim, ",".join(ALLOWLIST), WINDOW_MS), tool="mitmweb") as proxy:
        yield proxy


@pytest.fixture
def raw(web: Mitmdump, sim: Simulator) -> Iterator[RawClient]:
    sim.reset()  # no fault left over
    web.command("browserrouting.inject.clear")
    client = RawClient(web, sim)
    yield client
    client.close()


class ReferenceClient:
    """Routes as the reference does: learns routes from the CP's answers, sends allowlisted calls
    to the VM with the route's jwt and no API key, and on a 404 browser_gone to an eligible GET
    evicts the route and re-issues the call once to the CP, with the API key and no jwt."""

    def __init__(self, raw: RawClient) -> None:
        self.raw = raw
        self.routes: dict[str, Route] = {}

    def create(self) -> str:
        route = self.raw.create()
        self.routes[route.session_id] = route
        return route.session_id

    def call(self, method: str, sid: str, tail: str, params: list[tuple[str, str]]) -> httpx.Response:
        route = self.routes.get(sid)
        if route is None or not any(tail == p or tail.startswith(p + "/") for p in ALLOWLIST):
            return self.raw.cp(method, f"/browsers/{sid}/{tail}", params=params)
        answer = self.raw.vm(method, route, tail, params=params)
        if method == "GET" and tail in REGISTRY and answer.status_code == 404 and is_gone(answer):
            del self.routes[sid]
            return self.raw.cp(method, f"/browsers/{sid}/{tail}", params=params)
        return answer


def is_gone(answer: httpx.Response) -> bool:
    try:
        return bool(answer.json().get("code") == "browser_gone")
    except ValueError:
        return False


def gone_on_the_vm(raw: RawClient, sim: Simulator) -> tuple[Route, str]:
    """A new browser whose VM then says browser_gone to its events: the route, and the events'
    CP path (what a fallback re-issues)."""
    route = raw.create()
    sim.kill_on_vm(route.session_id)
    assert raw.vm("GET", route, "telemetry/events").json() == GONE
    return route, f"/browsers/{route.session_id}/telemetry/events"


def ids(answer: httpx.Response) -> list[str]:
    assert answer.status_code == 200, answer.text
    return [event["id"] for event in answer.json()]


def fake_jwt(session_id: str) -> str:
    """A jwt-shaped token whose `session.id` claim names the session (its signature is junk)."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part({'session': {'id': session_id}})}.c2lnbmF0dXJl"


# --------------------------------------------------------------------------- a conforming client


def test_conforming_client_falls_back_once_on_browser_gone_and_audits_ok(
    web: Mitmdump, sim: Simulator, raw: RawClient
) -> None:
    client = ReferenceClient(raw)
    sid = client.create()
    jwt = client.routes[sid].jwt
    assert ids(client.call("GET", sid, "telemetry/events", [("limit", "2")])) == [
        f"vm-{sid}-1",
        f"vm-{sid}-2",
    ]
    sim.kill_on_vm(sid)  # the VM now says browser_gone
    assert ids(client.call("GET", sid, "telemetry/events", [("limit", "2")])) == [
        f"cp-{sid}-1",
        f"cp-{sid}-2",
    ]
    # The caller reads the same page again: the route is gone, so the SDK asks the CP. A new
    # call, not a second re-issue of the VM's answer (that one was answered).
    assert ids(client.call("GET", sid, "telemetry/events", [("limit", "2")])) == [
        f"cp-{sid}-1",
        f"cp-{sid}-2",
    ]

    flows = audited(web, sid, 4)
    assert summary(flows) == [
        ("client_routed", "GET", 200, []),
        ("client_routed", "GET", 404, []),
        ("client_fallback", "GET", 200, []),
        ("client_cp", "GET", 200, []),
    ]
    assert flows[2]["serves"] == flows[1]["flow_id"] and flows[2]["notes"] == []
    vm = vm_requests(sim, jwt)
    assert [r["status"] for r in vm] == [200, 404] and all("authorization" not in r["headers"] for r in vm)
    cp = cp_requests(sim, sid)
    assert [r["query"] for r in cp] == ["limit=2", "limit=2"]
    assert all(r["headers"]["authorization"] == AUTH["Authorization"] for r in cp)

    time.sleep(WINDOW_MS / 1000 + 0.3)  # past the window: still no missing fallback
    assert all(flow_lines(web, f["flow_id"])[-1]["violations"] == [] for f in flows)
    assert broken_by(audit_table(web), flows) == {}
    comments = {f["id"]: f["comment"] for f in web_api(web, "/flows")}
    assert all(comments[f["flow_id"]].startswith("audit ok") for f in flows)


# --------------------------------------------------------------------------- non-conforming clients


def test_api_key_kept_on_the_vm_request_is_api_key_on_vm(
    web: Mitmdump, sim: Simulator, raw: RawClient
) -> None:
    route = raw.create()
    assert raw.vm("GET", route, "telemetry/events", auth=True).status_code == 200
    assert summary(audited(web, route.session_id, 1)) == [("client_routed", "GET", 200, ["api_key_on_vm"])]
    assert vm_requests(sim, route.jwt)[0]["headers"]["authorization"] == AUTH["Authorization"]  # left as sent


def test_cp_retry_after_a_vm_502_is_unexpected_fallback(
    web: Mitmdump, sim: Simulator, raw: RawClient
) -> None:
    route = raw.create()
    sim.set_fault(502, path_contains="/telemetry/events", side="vm", times=1)
    assert raw.vm("GET", route, "telemetry/events").status_code == 502
    assert raw.cp("GET", f"/browsers/{route.session_id}/telemetry/events").status_code == 200
    assert summary(audited(web, route.session_id, 2)) == [
        ("client_routed", "GET", 502, []),
        ("client_fallback", "GET", 200, ["unexpected_fallback"]),
    ]


def test_a_second_reissue_sent_before_the_first_is_answered_is_repeated_fallback(
    web: Mitmdump, sim: Simulator, raw: RawClient
) -> None:
    route, path = gone_on_the_vm(raw, sim)
    sim.set_latency(cp=0.4)  # the first re-issue is still unanswered when the second goes out
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(raw.cp, "GET", path)
        time.sleep(0.15)
        second = pool.submit(raw.cp, "GET", path)
        assert (first.result().status_code, second.result().status_code) == (200, 200)
    flows = audited(web, route.session_id, 3)
    assert summary(flows) == [
        ("client_routed", "GET", 404, []),
        ("client_fallback", "GET", 200, []),
        ("client_fallback", "GET", 200, ["repeated_fallback"]),
    ]
    assert flows[1]["serves"] == flows[2]["serves"] == flows[0]["flow_id"]
    assert broken_by(audit_table(web), flows) == {"repeated_fallback": [flows[2]["flow_id"]]}


def test_the_same_call_after_a_fallback_was_answered_is_a_new_cp_call(
    web: Mitmdump, sim: Simulator, raw: RawClient
) -> None:
    route, path = gone_on_the_vm(raw, sim)
    assert [raw.cp("GET", path).status_code for _ in range(2)] == [200, 200]  # one after the other
    flows = audited(web, route.session_id, 3)
    assert summary(flows) == [
        ("client_routed", "GET", 404, []),
        ("client_fallback", "GET", 200, []),
        ("client_cp", "GET", 200, []),
    ]
    assert broken_by(audit_table(web), flows) == {}


def test_a_browser_gone_to_a_post_keeps_the_route_and_the_next_vm_call_conforms(
    web: Mitmdump, sim: Simulator, raw: RawClient
) -> None:
    """The reference evicts only when it falls back: a gone POST leaves the route in place."""
    client = ReferenceClient(raw)
    sid = client.create()
    web.command("browserrouting.inject", f"{sid}/process=gone:1")
    assert is_gone(client.call("POST", sid, "process/exec", [])), "no fallback on a POST"
    assert ids(client.call("GET", sid, "telemetry/events", [("limit", "1")])) == [f"vm-{sid}-1"]
    flows = audited(web, sid, 2)
    assert summary(flows) == [("client_routed", "POST", 404, []), ("client_routed", "GET", 200, [])]
    assert [f["notes"] for f in flows] == [["injected"], ["gone_before"]]
    assert not web.records("route_evicted", sid, wait_for=0) and not cp_requests(sim, sid)
    assert broken_by(audit_table(web), flows) == {}


def test_route_reused_after_browser_gone_is_stale_route(
    web: Mitmdump, sim: Simulator, raw: RawClient
) -> None:
    route, path = gone_on_the_vm(raw, sim)
    assert raw.cp("GET", path).status_code == 200
    assert raw.vm("GET", route, "telemetry/stream").json() == GONE  # the dead route, again
    assert summary(audited(web, route.session_id, 3)) == [
        ("client_routed", "GET", 404, []),
        ("client_fallback", "GET", 200, []),
        ("client_routed", "GET", 404, ["stale_route"]),
    ]


def test_jwt_kept_on_the_cp_reissue_is_jwt_on_cp(web: Mitmdump, sim: Simulator, raw: RawClient) -> None:
    route, path = gone_on_the_vm(raw, sim)
    assert raw.cp("GET", path, params={"jwt": route.jwt}).status_code == 200
    assert summary(audited(web, route.session_id, 2)) == [
        ("client_routed", "GET", 404, []),
        ("client_fallback", "GET", 200, ["jwt_on_cp"]),
    ]


def test_wrong_jwt_on_the_vm_is_jwt_mismatch(web: Mitmdump, raw: RawClient) -> None:
    route = raw.create()
    assert raw.vm("GET", route, "telemetry/events", jwt=fake_jwt(route.session_id)).status_code == 401
    (flow,) = audited(web, route.session_id, 1)  # attributed by the token's session claim
    assert summary([flow]) == [("client_routed", "GET", 401, ["jwt_mismatch"])]


def test_vm_call_to_a_path_off_the_allowlist_is_not_allowlisted(web: Mitmdump, raw: RawClient) -> None:
    route = raw.create()
    assert raw.vm("GET", route, "fs/read_file", params=[("path", "/x")]).status_code == 200
    assert summary(audited(web, route.session_id, 1)) == [("client_routed", "GET", 200, ["not_allowlisted"])]


def test_cp_call_for_an_allowlisted_subresource_of_a_cached_session_is_not_routed(
    web: Mitmdump, raw: RawClient
) -> None:
    route = raw.create()
    assert raw.cp("GET", f"/browsers/{route.session_id}/telemetry/stream").status_code == 200
    assert summary(audited(web, route.session_id, 1)) == [("client_cp", "GET", 200, ["not_routed"])]


def test_cp_retry_after_the_cps_own_5xx_on_a_fallback_is_not_repeated_fallback(
    web: Mitmdump, sim: Simulator, raw: RawClient
) -> None:
    route, path = gone_on_the_vm(raw, sim)
    sim.set_fault(503, path_contains=path, side="cp", times=1)
    assert [raw.cp("GET", path).status_code for _ in range(2)] == [503, 200]
    assert summary(audited(web, route.session_id, 3)) == [
        ("client_routed", "GET", 404, []),
        ("client_fallback", "GET", 503, []),
        ("client_fallback", "GET", 200, []),
    ]


def test_a_cp_rule_fails_the_clients_fallback_once_and_its_retry_is_no_repeated_fallback(
    web: Mitmdump, sim: Simulator, raw: RawClient
) -> None:
    """`cp:` in audit mode hits the client's own CP calls for the browser: its re-issue after a
    browser_gone fails once (the proxy answers 503 for the CP), and its retry gets the CP's page."""
    route = raw.create()
    sid = route.session_id
    web.command("browserrouting.inject", f"{sid}/telemetry/events=gone:1")
    web.command("browserrouting.inject", f"cp:{sid}/telemetry/events=503:1")
    path = f"/browsers/{sid}/telemetry/events"
    assert raw.vm("GET", route, "telemetry/events").json() == GONE
    first, retry = raw.cp("GET", path), raw.cp("GET", path)
    assert (first.status_code, first.json()["code"]) == (503, "service_unavailable")
    assert ids(retry)[:1] == [f"cp-{sid}-1"]
    flows = audited(web, sid, 3)
    assert summary(flows) == [
        ("client_routed", "GET", 404, []),
        ("client_fallback", "GET", 503, []),
        ("client_fallback", "GET", 200, []),
    ]
    assert [(f.get("injected"), f["notes"]) for f in flows] == [
        ("gone", ["injected"]),
        ("503", ["injected"]),
        (None, []),
    ]
    assert len(cp_requests(sim, sid)) == 1 and vm_requests(sim, route.jwt) == [], (
        "both injected answers stood in"
    )


# --------------------------------------------------------------------------- traffic and secrets

EXEC_BODY = json.dumps({"command": "cat", "args": ["héllo ✓", "\x00\r\n", "x" * 5000]}, ensure_ascii=False)
UNCOMPARED = frozenset(
    {"host", "connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer"}
    | {"transfer-encoding", "upgrade"}
)


def mixed_traffic(raw: RawClient, a: Route, b: Route) -> tuple[list[httpx.Response], Route]:
    """Create, CP reads, VM GET/POST with bodies, an SSE stream, a 404, a browser_gone with its
    fallback, and what the audit flags (API key on the VM, jwt on the CP, a stale route)."""
    json_body: dict[str, Any] = {
        "content": EXEC_BODY.encode(),
        "headers": {"Content-Type": "application/json"},
    }
    created = raw.cp("POST", "/browsers", json={})
    new = route_of(created.json())
    return [
        created,
        raw.cp("GET", f"/browsers/{a.session_id}"),
        raw.cp("GET", f"/browsers/{b.session_id}"),
        raw.vm("GET", a, "telemetry/events", params=[("limit", "2"), ("x", "a+b c")]),
        raw.vm("POST", a, "process/exec", **json_body),
        raw.vm("GET", a, "telemetry/stream", headers={"Accept": "text/event-stream"}),
        raw.vm("GET", a, "fs/read_file", params=[("path", "/bin/data")]),
        raw.vm("GET", a, "telemetry/events", auth=True),
        raw.cp("GET", f"/browsers/{a.session_id}/telemetry/events", params={"limit": "3"}),
        raw.cp("POST", f"/browsers/{a.session_id}/process/exec", **json_body),
        raw.cp("GET", f"/browsers/{a.session_id}", params={"jwt": a.jwt}),
        raw.cp("GET", "/browsers/no-such-browser"),
        raw.vm("GET", b, "telemetry/events"),
        raw.cp("GET", f"/browsers/{b.session_id}/telemetry/events"),
        raw.vm("GET", b, "telemetry/events"),
        raw.cp("DELETE", f"/browsers/{new.session_id}"),
    ], new


def normalise(text: bytes | str, new: Route) -> bytes:
    """What necessarily differs between two runs: the browser each creates, and timestamps."""
    data = text.encode() if isinstance(text, str) else text
    for value, mark in ((new.session_id, "<created>"), (new.jwt, "<jwt>")):
        for form in sorted(secret_forms(value), key=len, reverse=True):
            data = data.replace(form.encode(), mark.encode())
    data = re.sub(rb'"ts": ?\d+', b'"ts": 0', data)
    return re.sub(rb'"created_at": ?"[^"]*"', b'"created_at": ""', data)


def run_traffic(proxy: Mitmdump, sim: Simulator, a: Route, b: Route) -> tuple[list[Any], list[Any]]:
    """(what the simulator received, what the client got), normalised, for one run."""
    sim.reset()
    raw = RawClient(proxy, sim)
    try:
        answers, new = mixed_traffic(raw, a, b)
    finally:
        raw.close()
    received = [
        (
            r["method"],
            normalise(r["path"], new),
            normalise(r["query"], new),
            sorted((k, normalise(v, new)) for k, v in r["headers"].items() if k not in UNCOMPARED),
            r["body_sha256"],
            r["status"],
        )
        for side in ("cp", "vm")
        for r in sim.stats()[side]["requests"]
    ]
    got = [
        (
            a.status_code,
            [(k, normalise(v, new)) for k, v in a.headers.multi_items() if k != "date"],
            normalise(a.content, new),
        )
        for a in answers
    ]
    return received, got


def test_audit_mode_never_alters_what_either_side_gets(sim: Simulator) -> None:
    a, b = route_of(sim.create_browser()), route_of(sim.create_browser())
    sim.kill_on_vm(b.session_id)
    with Mitmdump({"ssl_verify_upstream_trusted_ca": sim.cert_path}, with_addon=False) as plain:
        expected = run_traffic(plain, sim, a, b)
    with Mitmdump(audit_options(sim, ",".join(ALLOWLIST), WINDOW_MS)) as audit:
        assert run_traffic(audit, sim, a, b) == expected
        flagged = {v for r in audit.records(wait_for=16) for v in r.get("violations", [])}
    assert len(expected[0]) >= 16 and len(expected[1]) == 16
    assert {"api_key_on_vm", "jwt_on_cp", "not_routed", "stale_route"} <= flagged, "the audit did judge"


def test_no_secret_in_the_log_comments_metadata_output_or_audit_table(sim: Simulator) -> None:
    a, b = route_of(sim.create_browser()), route_of(sim.create_browser())
    sim.kill_on_vm(b.session_id)
    proxy = Mitmdump(audit_options(sim, ",".join(ALLOWLIST), WINDOW_MS), tool="mitmweb")
    saved = proxy.workdir / "flows.mitm"
    proxy.options["save_stream_file"] = str(saved)
    with proxy:
        proxy.command("browserrouting.inject", f"{a.session_id}/telemetry/events=gone:1")
        raw = RawClient(proxy, sim)
        try:
            _, new = mixed_traffic(raw, a, b)  # its first VM events call gets the injected gone
            raw.vm("GET", a, "telemetry/events", jwt=fake_jwt(a.session_id))
        finally:
            raw.close()
        time.sleep(WINDOW_MS / 1000 + 0.3)
        table = proxy.command("browserrouting.audit")
        comments = "\n".join(f["comment"] for f in web_api(proxy, "/flows"))
        proxy.stop()
        log = proxy.log_path.read_text()
        output = "".join(proxy.output)
        with saved.open("rb") as f:
            flows = list(io.FlowReader(f).stream())
    metadata = json.dumps([flow.metadata for flow in flows], ensure_ascii=False)
    saved_comments = "\n".join(flow.comment for flow in flows)

    secrets = {API_KEY, *(s for r in (a, b, new) for s in secret_forms(r.jwt)), fake_jwt(a.session_id)}
    texts = {"log": log, "comments": comments, "metadata": metadata, "saved comments": saved_comments}
    texts |= {"output": output, "table": table}
    leaks = {(name, s) for name, text in texts.items() for s in secrets if s in text}
    assert leaks == set()
    # What was scanned does speak of these sessions and their violations.
    for name in ("log", "comments", "metadata", "saved comments"):
        assert all(r.session_id in texts[name] for r in (a, b)), name
        assert "api_key_on_vm" in texts[name] and "jwt_mismatch" in texts[name], name
    assert "missing_fallback" in log and "missing_fallback" in comments  # set after the flows were saved
    assert json.loads(table)["rules"]["jwt_on_cp"]["broken"]
    assert "browserrouting audit: " in output
