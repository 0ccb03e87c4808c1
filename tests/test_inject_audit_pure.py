"""Unit tests of the pure parts of audit mode: the audit's judgement (addon/audit/rules.py, driven
with times of our choosing) and how audited records read (addon/comments.py). The audit's timer in
addon/audit/watcher.py is in tests/test_audit_timer.py; injection rules in tests/test_inject_rules.py."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote

import pytest
from mitmproxy.utils.emoji import emoji

from addon import paths
from addon.audit.rules import RULES, Audit, Verdict, session_claim
from addon.comments import audit_summary, comment, marker
from addon.route_cache import Route

SID, NAME = "sess-1", "qa-name"
JWT = "tok+jwt/1="
BASE = "https://proxy.vm.test:8443/browser/kernel"
ORIGIN = ("https", "proxy.vm.test", 8443)
EVENTS = "telemetry/events"


# =========================================================================== audit/rules.py


def new_audit(window: float = 1.0) -> Audit:
    audit = Audit()
    audit.subresources = paths.parse_path_entries("telemetry,fs")
    audit.eligible = paths.parse_path_entries(EVENTS)
    audit.window = window
    audit.route_cached(Route(SID, BASE, JWT, NAME))
    return audit


def vm(
    audit: Audit, flow_id: str, t: float, tail: str = EVENTS, method: str = "GET", query: str = "",
    jwt: str | None = JWT, api_key: bool = False, session: str | None = SID,
) -> tuple[Verdict, list[Any]]:  # fmt: skip
    """A VM request as the client sent it (the jwt in its query) at time t."""
    full = "&".join(filter(None, [query, f"jwt={quote(jwt, safe='')}" if jwt else ""]))
    return audit.vm_request(flow_id, session, JWT, jwt, api_key, method, tail, full, t)


def answered(audit: Audit, flow_id: str, t: float, status: int | None, gone: bool = False, **kw: Any) -> Any:
    verdict, _ = vm(audit, flow_id, t, **kw)
    assert verdict.exchange is not None
    audit.vm_answered(verdict.exchange, status, gone, t)
    return verdict.exchange


def cp(
    audit: Audit, flow_id: str, t: float, tail: str | None = EVENTS, method: str = "GET", query: str = "",
    by_id: bool = True, cached: bool = True, has_jwt: bool = False,
) -> tuple[str, Verdict]:  # fmt: skip
    return audit.cp_request(flow_id, SID, by_id, cached, has_jwt, method, tail, query, t)


def test_a_conforming_vm_request_breaks_no_rule_and_each_rule_counts_it() -> None:
    audit = new_audit()
    verdict, settled = vm(audit, "f1", 1.0)
    assert (verdict.violations, verdict.notes, settled) == ([], [], [])
    table: Any = audit.table()
    checked = {r for r, v in table["rules"].items() if v["checked"]}
    assert checked == {"api_key_on_vm", "jwt_mismatch", "not_allowlisted", "stale_route"}
    assert set(table["rules"]) == set(RULES)
    assert table["notes"] == dict.fromkeys(("vm_retry", "auth_fallback", "gone_before", "injected"), 0)


@pytest.mark.parametrize(
    ("kw", "violations"),
    [
        ({"api_key": True}, ["api_key_on_vm"]),
        ({"jwt": "tok+other"}, ["jwt_mismatch"]),
        ({"jwt": None}, ["jwt_mismatch"]),
        ({"tail": "process/exec"}, ["not_allowlisted"]),
        ({"tail": "telemetryx/events"}, ["not_allowlisted"]),
        ({"api_key": True, "tail": "curl"}, ["api_key_on_vm", "not_allowlisted"]),
    ],
)
def test_vm_request_violations(kw: dict[str, Any], violations: list[str]) -> None:
    audit = new_audit()
    assert vm(audit, "f1", 1.0, **kw)[0].violations == violations
    assert all(audit.broken[v] == ["f1"] for v in violations)


@pytest.mark.parametrize(
    ("reason", "stale"),
    [("browser_gone", True), ("delete", True), ("pool_release", True), ("vm_host", False)],
)
def test_stale_route_after_the_vm_said_gone_or_the_cp_deleted_or_released(reason: str, stale: bool) -> None:
    audit = new_audit()
    audit.route_evicted(Route(SID, BASE, JWT), reason)
    assert vm(audit, "f1", 1.0)[0].violations == (["stale_route"] if stale else [])
    audit.route_cached(Route(SID, BASE, JWT))  # learned again: no longer stale
    assert vm(audit, "f2", 2.0)[0].violations == []


def test_cp_requests_jwt_on_cp_and_not_routed() -> None:
    audit = new_audit()
    assert cp(audit, "c1", 1.0, has_jwt=True, tail=None) == ("client_cp", Verdict(["jwt_on_cp"]))
    assert cp(audit, "c2", 1.0)[1].violations == ["not_routed"]
    assert cp(audit, "c3", 1.0, by_id=False)[1].violations == [], "by name: the SDKs route by id only"
    assert cp(audit, "c4", 1.0, cached=False)[1].violations == []
    assert cp(audit, "c5", 1.0, tail="process/exec")[1].violations == []
    assert audit.broken["not_routed"] == ["c2"] and audit.checked["not_routed"] == 5


def test_a_fallback_after_browser_gone_to_an_eligible_get_conforms_and_settles_it() -> None:
    audit = new_audit()
    ex = answered(audit, "v1", 10.0, 404, gone=True, query="limit=2&offset=0")
    assert ex.missing and audit.checked["missing_fallback"] == 1
    decision, verdict = cp(audit, "c1", 10.2, query="limit=2&offset=0")
    assert (decision, verdict.violations, verdict.exchange) == ("client_fallback", [], ex)
    assert not audit.missing_fallback(ex) and audit.broken["missing_fallback"] == []
    assert cp(audit, "c2", 10.3, query="offset=0&limit=2")[0] == "client_cp", "same query, in order"


@pytest.mark.parametrize(
    ("status", "gone", "method", "tail"),
    [(200, False, "GET", EVENTS), (302, False, "GET", EVENTS), (500, False, "GET", EVENTS),
     (502, False, "GET", EVENTS), (None, False, "GET", EVENTS), (404, False, "GET", EVENTS),
     (400, False, "GET", EVENTS), (409, False, "GET", EVENTS), (404, True, "POST", EVENTS),
     (404, True, "GET", "telemetry/stream")],
)  # fmt: skip
def test_unexpected_fallback_after_an_answer_that_allows_none(
    status: int | None, gone: bool, method: str, tail: str
) -> None:
    audit = new_audit()
    answered(audit, "v1", 5.0, status, gone, method=method, tail=tail)
    decision, verdict = cp(audit, "c1", 5.5, method=method, tail=tail)
    assert (decision, verdict.violations, verdict.notes) == ("client_fallback", ["unexpected_fallback"], [])


@pytest.mark.parametrize("status", [401, 403])
def test_a_fallback_after_401_or_403_is_the_sdks_auth_fallback(status: int) -> None:
    audit = new_audit()
    answered(audit, "v1", 5.0, status, tail="fs/read_file", query="path=/x")
    decision, verdict = cp(audit, "c1", 5.9, tail="fs/read_file", query="path=/x")
    assert (decision, verdict.violations, verdict.notes) == ("client_fallback", [], ["auth_fallback"])


@pytest.mark.parametrize("cp_status", [500, 503, None])
def test_a_retry_of_a_failed_reissue_is_a_fallback_again(cp_status: int | None) -> None:
    audit = new_audit()
    ex = answered(audit, "v1", 5.0, 404, gone=True)
    assert cp(audit, "c1", 5.1)[1].violations == []
    audit.fallback_answered(ex, "c1", cp_status)
    assert cp(audit, "c2", 5.2) == ("client_fallback", Verdict([], [], ex))
    audit.fallback_answered(ex, "c2", 200)
    assert ex.fallbacks == ["c1", "c2"] and audit.broken["repeated_fallback"] == []


@pytest.mark.parametrize("cp_status", [200, 404, 403])
def test_after_a_reissue_answered_below_500_the_same_request_is_the_callers_next_call(
    cp_status: int,
) -> None:
    audit = new_audit()
    audit.route_evicted(Route(SID, BASE, JWT, NAME), "browser_gone")
    ex = answered(audit, "v1", 5.0, 404, gone=True, query="limit=2")
    assert cp(audit, "c1", 5.1, cached=False, query="limit=2")[0] == "client_fallback"
    audit.fallback_answered(ex, "c1", cp_status)
    decision, verdict = cp(audit, "c2", 5.2, cached=False, query="limit=2")
    assert (decision, verdict.violations, verdict.exchange) == ("client_cp", [], None)
    assert ex.fallbacks == ["c1"] and audit.checked["repeated_fallback"] == 1


def test_a_second_reissue_while_the_first_is_unanswered_is_repeated_fallback() -> None:
    audit = new_audit()
    ex = answered(audit, "v1", 5.0, 404, gone=True)
    assert cp(audit, "c1", 5.1)[1].violations == []
    assert cp(audit, "c2", 5.15)[1].violations == ["repeated_fallback"]
    assert cp(audit, "c3", 5.18)[1].violations == ["repeated_fallback"]
    audit.fallback_answered(ex, "c1", 200)  # the fallback is done, whatever is still in flight
    assert cp(audit, "c4", 5.2, cached=False)[0] == "client_cp"
    assert audit.broken["repeated_fallback"] == ["c2", "c3"]


def test_the_window_boundary_just_inside_and_just_outside() -> None:
    audit = new_audit(window=0.5)
    answered(audit, "v1", 8.0, 404, gone=True)
    answered(audit, "v2", 8.0, 401, tail="fs/read_file")
    assert cp(audit, "c1", 8.5)[0] == "client_fallback"
    decision, verdict = cp(audit, "c2", 8.5 + 2**-10, tail="fs/read_file")
    assert (decision, verdict.violations) == ("client_cp", ["not_routed"])


def test_vm_retry_is_noted_after_a_5xx_or_no_answer_within_the_window() -> None:
    audit = new_audit(window=1.0)
    answered(audit, "v1", 1.0, 502)
    assert vm(audit, "v2", 1.5)[0].notes == ["vm_retry"]
    answered(audit, "v3", 3.0, None, query="a=1")
    assert vm(audit, "v4", 3.2, query="a=1")[0].notes == ["vm_retry"]
    assert vm(audit, "v5", 3.2, query="a=2")[0].notes == [], "another request"
    answered(audit, "v6", 5.0, 404, query="b=1")
    assert vm(audit, "v7", 5.1, query="b=1")[0].notes == []
    answered(audit, "v8", 7.0, 500, query="c=1")
    assert vm(audit, "v9", 8.5, query="c=1")[0].notes == [], "after the window"
    assert audit.notes["vm_retry"] == 2


@pytest.mark.parametrize(("count", "noted"), [(0, False), (1, True), (2, True)])
def test_the_stainless_retry_count_decides_vm_retry_whatever_the_timing(count: int, noted: bool) -> None:
    audit = new_audit(window=1.0)
    answered(audit, "v1", 1.0, 502)
    verdict, _ = audit.vm_request("v2", SID, JWT, JWT, False, "GET", EVENTS, f"jwt={JWT}", 1.1, count)
    assert verdict.notes == (["vm_retry"] if noted else [])
    late, _ = audit.vm_request("v3", SID, JWT, JWT, False, "GET", EVENTS, f"jwt={JWT}", 9.0, count)
    assert late.notes == (["vm_retry"] if noted else []), "counted by the client, not the clock"


def test_missing_fallback_settled_when_the_window_ends_counts_once() -> None:
    audit = new_audit()
    ex = answered(audit, "v1", 1.0, 404, gone=True)
    assert audit.missing_fallback(ex) and not audit.missing_fallback(ex)
    assert audit.broken["missing_fallback"] == ["v1"] and audit.awaiting == {}


def test_missing_fallback_settled_by_the_next_vm_request_of_the_session() -> None:
    audit = new_audit()
    ex = answered(audit, "v1", 1.0, 404, gone=True)
    assert vm(audit, "o1", 1.1, session="other-session", jwt="tok+o")[1] == []
    settled = vm(audit, "v2", 1.2, tail="telemetry/stream")[1]
    assert settled == [ex] and vm(audit, "v3", 1.3)[1] == []
    assert audit.missing_fallback(ex) and audit.broken["missing_fallback"] == ["v1"]


def test_a_browser_gone_that_allows_no_fallback_needs_none_and_keeps_the_route() -> None:
    audit = new_audit()
    for i, (method, tail) in enumerate([("POST", EVENTS), ("GET", "telemetry/stream")]):
        ex = vm(audit, f"v{i}", 1.0, method=method, tail=tail)[0].exchange
        assert ex is not None and not audit.vm_answered(ex, 404, True, 1.0), "no eviction"
        assert not ex.missing
    assert audit.checked["missing_fallback"] == 0 and audit.awaiting == {}
    verdict = vm(audit, "v9", 2.0)[0]
    assert (verdict.violations, verdict.notes) == ([], ["gone_before"])
    audit.route_cached(Route(SID, BASE, JWT, NAME))  # the CP vouched for the browser again
    assert vm(audit, "v10", 3.0)[0].notes == []


def test_a_browser_gone_to_an_eligible_get_evicts_and_the_next_vm_request_is_stale() -> None:
    audit = new_audit()
    ex = vm(audit, "v1", 1.0)[0].exchange
    assert ex is not None and audit.vm_answered(ex, 404, True, 1.0)
    audit.route_evicted(Route(SID, BASE, JWT, NAME), "browser_gone")  # what the auditor then does
    verdict = vm(audit, "v2", 1.1, tail="telemetry/stream")[0]
    assert (verdict.violations, verdict.notes) == (["stale_route"], [])


def test_forget_old_keeps_memory_flat_over_many_exchanges() -> None:
    audit = new_audit(window=0.5)
    sizes = []
    for i in range(5000):
        t = i * 0.01
        ex = answered(audit, f"v{i}", t, 404, gone=True, query=f"offset={i}")
        if i % 2:
            cp(audit, f"c{i}", t, query=f"offset={i}")
        for settled in vm(audit, f"s{i}", t, tail="fs/read_file", query=f"i={i}")[1]:
            audit.missing_fallback(settled)
        assert not ex.missing
        sizes.append(len(audit.exchanges))
    assert max(sizes) <= 2 * 52 and audit.awaiting == {}
    assert len(audit.broken["missing_fallback"]) == 2500


def test_session_of_a_jwt_is_the_cached_routes_else_the_unsigned_claim() -> None:
    audit = new_audit()
    assert audit.session_of(JWT) == SID and audit.session_of(None) is None
    assert audit.session_of(unsigned({"session": {"id": "sess-9"}})) == "sess-9"
    assert audit.session_of("not-a-jwt") is None


def unsigned(payload: object, raw: bytes | None = None) -> str:
    """A jwt with no signature; the payload unpadded base64url as jwts carry it."""
    data = raw if raw is not None else json.dumps(payload).encode()
    part = base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    return f"eyJhbGciOiJub25lIn0.{part}."


@pytest.mark.parametrize("claim", ["s", "sess-ab", "sess-abc", " sess-x "])  # every padding length
def test_session_claim_reads_session_id_from_the_payload(claim: str) -> None:
    assert session_claim(unsigned({"session": {"id": claim}, "exp": 1})) == claim.strip()


@pytest.mark.parametrize(
    "jwt",
    ["", "a.b", "a.b.c.d", "h.!!!.s", unsigned([1]), unsigned({"session": "sess-1"}),
     unsigned({"session": {"id": 5}}), unsigned({"session": {"id": " "}}), unsigned({"sub": "x"}),
     unsigned(None, b"\xff\xfe"), unsigned(None, b"[" * 100_000)],
)  # fmt: skip
def test_session_claim_refuses_junk(jwt: str) -> None:
    assert session_claim(jwt) is None


def test_jwt_of_and_without_jwt() -> None:
    assert paths.jwt_of("a=1&jwt=tok%2Bx%2F%3D&b=2") == "tok+x/="
    assert paths.jwt_of("%6Awt=x&jwt=y") == "x", "the first, name decoded"
    assert paths.jwt_of("jwtx=1&a=jwt") is None
    assert paths.without_jwt("b=%20&jwt=x&a=1&jwt=y&c") == "b=%20&a=1&c"
    assert paths.without_jwt("jwt=x") == ""


@pytest.mark.parametrize(
    ("path", "tail"),
    [
        ("/browser/kernel/telemetry/events", EVENTS),
        ("/browser/kernel/fs/a/b", "fs/a/b"),
        ("/browser/kernelx/telemetry/events", None),
        ("/browser/kernel", None),
        ("/browser/telemetry/events", None),
    ],
)
def test_vm_tail_is_under_a_base_url_on_a_path_boundary(path: str, tail: str | None) -> None:
    assert new_audit().vm_tail(ORIGIN, path) == tail


@pytest.mark.parametrize(
    "origin",
    [("https", "proxy.vm.test", 443), ("http", "proxy.vm.test", 8443), ("https", "other.vm.test", 8443)],
)
def test_vm_tail_needs_the_base_urls_origin(origin: Any) -> None:
    assert new_audit().vm_tail(origin, "/browser/kernel/telemetry/events") is None


def test_vm_tail_with_default_port_trailing_slash_and_host_case() -> None:
    audit = Audit()
    audit.route_cached(Route("s2", "https://PROXY.vm.test/browser/kernel/", "j2"))
    assert audit.vm_tail(("https", "proxy.vm.test", 443), "/browser/kernel/curl/raw") == "curl/raw"


# =========================================================================== comments.py


AUDITED = ("client_routed", "client_cp", "client_fallback")


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        *[({"decision": d, "violations": []}, ":white_check_mark:") for d in AUDITED],
        *[({"decision": d, "violations": ["jwt_on_cp"]}, ":warning:") for d in AUDITED],
        ({"decision": "client_cp"}, ":white_check_mark:"),
        ({"decision": "routed", "violations": ["x"]}, ":rocket:"),
    ],
)
def test_marker_says_whether_an_audited_flow_conforms(record: dict[str, Any], expected: str) -> None:
    assert marker(record) == expected and expected in emoji


@pytest.mark.parametrize(
    ("record", "summary"),
    [
        ({"decision": "client_routed", "vm_status": 200}, "audit ok: client_routed, VM 200"),
        ({"decision": "client_routed", "violations": ["jwt_mismatch", "stale_route"]},
         "audit jwt_mismatch: client_routed, VM no answer"),
        ({"decision": "client_routed", "vm_status": 404, "injected": "gone",
          "notes": ["vm_retry", "injected"]},
         "audit ok: client_routed, VM 404 (injected gone) [vm_retry, injected]"),
        ({"decision": "client_cp", "violations": ["not_routed"], "cp_status": 200},
         "audit not_routed: client_cp, CP 200"),
        ({"decision": "client_fallback", "serves": "f-1", "notes": ["auth_fallback"]},
         "audit ok: client_fallback of flow f-1, CP no answer [auth_fallback]"),
    ],
)  # fmt: skip
def test_audit_summary_starts_with_ok_or_the_first_violation(record: dict[str, Any], summary: str) -> None:
    assert audit_summary(record) == summary
    assert comment({**record, "session_id": SID}).splitlines()[0] == f"{summary} [{SID}]"
