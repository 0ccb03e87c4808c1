"""Fault injection in route mode, in a real mitmweb / mitmdump, with httpx and curl as clients.

The control plane is the simulator's plain-HTTP CP; routed calls go to its HTTPS VM behind
the proxy. Each test checks what the client got, what the simulator received on each side
(an injected answer never reaches the VM) and the decision records.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import inject_support
import pytest
from conftest import proxy_options
from inject_support import inject
from mitmdump_runner import CommandFailed, Mitmdump
from proxy_clients import AUTH, CACHE_CHANGES, Answer, cp_hits, flow_records, new_browser, send, url, vm_hits
from simulator import Simulator

mitmweb, web = inject_support.mitmweb, inject_support.web  # the module's fixtures

GONE = {"code": "browser_gone", "message": "browser not found"}
STATUS = {"gone": 404, "404": 404, "401": 401, "403": 403, "500": 500, "502": 502, "503": 503, "504": 504}
BAD_RULES = ["x=teapot", "=gone", "s=gone:0", "s=gone:x", "s/../x=gone", "s=502*2>delay"]
SIMULATOR_OPTIONS = {"sse_interval": 0.02}  # the module's simulator: a VM stream ends quickly


# --------------------------------------------------------------------------- helpers


def browser_with_rule(proxy: Mitmdump, sim: Simulator, answer: str) -> str:
    """A new browser, and a rule that answers its session with `answer` (`kind` or `kind:count`)."""
    sid = new_browser(proxy, sim)
    inject(proxy, f"{sid}={answer}")
    return sid


def rule_list(proxy: Mitmdump) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = json.loads(proxy.command("browserrouting.inject.list"))
    return listed


def assert_injected(got: Answer, kind: str) -> None:
    """The injected answer of each kind: its status, a JSON object body."""
    assert got.status == STATUS[kind], got
    assert got.headers["content-type"] == "application/json"
    body = got.json()
    if kind == "gone":
        assert body == GONE
    else:
        assert isinstance(body, dict) and isinstance(body.get("code"), str) and body["code"] != "browser_gone"


# --------------------------------------------------------------------------- every kind


@pytest.mark.parametrize("kind", list(STATUS))
def test_every_kind_answers_its_status_and_json_body_without_reaching_the_vm(
    web: Mitmdump, fresh_sim: Simulator, kind: str
) -> None:
    sid = browser_with_rule(web, fresh_sim, kind)
    for client in ("httpx", "curl"):
        assert_injected(send(client, web, url(fresh_sim, sid, "fs/read_file?path=/k")), kind)
    assert vm_hits(fresh_sim) == [] and cp_hits(fresh_sim, "fs/read_file") == []
    records = flow_records(web, sid, 2)
    assert [(r["decision"], r["reason"], r["injected"], r["vm_status"]) for r in records] == [
        ("no_fallback", "not_eligible", kind, STATUS[kind])
    ] * 2
    assert all(r["vm_url"].startswith(fresh_sim.base_url + "/fs/read_file?path=/k&jwt=") for r in records)


@pytest.mark.parametrize(
    ("kind", "reason"), [("404", "not_browser_gone"), ("401", "status"), ("503", "status")]
)
def test_other_kinds_on_an_eligible_get_take_the_no_fallback_path(
    web: Mitmdump, fresh_sim: Simulator, kind: str, reason: str
) -> None:
    sid = browser_with_rule(web, fresh_sim, kind)
    assert_injected(send("httpx", web, url(fresh_sim, sid, "telemetry/events")), kind)
    assert vm_hits(fresh_sim) == [] and cp_hits(fresh_sim, "telemetry/events") == []
    [record] = flow_records(web, sid, 1)
    assert (record["decision"], record["reason"], record["injected"]) == ("no_fallback", reason, kind)


@pytest.mark.parametrize("client", ["httpx", "curl"])
def test_reset_closes_the_connection_without_an_answer(
    web: Mitmdump, fresh_sim: Simulator, client: str
) -> None:
    sid = browser_with_rule(web, fresh_sim, "reset")
    for tail in ("fs/read_file?path=/r", "telemetry/events"):
        got = send(client, web, url(fresh_sim, sid, tail))
        assert got.status is None, got
        assert (
            "Empty reply" in got.error
            if client == "curl"
            else got.error in ("RemoteProtocolError", "ReadError")
        )
    assert vm_hits(fresh_sim) == [] and cp_hits(fresh_sim, "telemetry/events") == []
    records = flow_records(web, sid, 2)
    assert [(r["decision"], r["reason"], r.get("injected")) for r in records] == [
        ("no_fallback", "vm_error", "reset")
    ] * 2


# --------------------------------------------------------------------------- gone and the fallback


@pytest.mark.parametrize("client", ["httpx", "curl"])
def test_injected_gone_on_an_eligible_get_runs_the_fallback_end_to_end(
    web: Mitmdump, fresh_sim: Simulator, client: str
) -> None:
    sid = browser_with_rule(web, fresh_sim, "gone")
    events = url(fresh_sim, sid, "telemetry/events?limit=2&offset=0")
    got = send(client, web, events)
    assert got.status == 200 and [e["id"] for e in got.json()] == [f"cp-{sid}-1", f"cp-{sid}-2"]
    assert vm_hits(fresh_sim) == [], "the injected answer stood in for the VM"
    cp = cp_hits(fresh_sim, "telemetry/events")
    assert len(cp) == 1, "exactly one control-plane re-issue"
    assert cp[0]["headers"]["authorization"] == AUTH["Authorization"] and cp[0]["query"] == "limit=2&offset=0"

    evicted = web.records("route_evicted", sid)
    assert [e["reason"] for e in evicted] == ["browser_gone"]
    fallback = web.records("fallback", sid)[-1]
    reissue = web.records("reissue", sid)[-1]
    assert (fallback["injected"], fallback["vm_status"], fallback["cp_status"]) == ("gone", 404, 200)
    assert fallback["reissue_flow"] == reissue["flow_id"] and reissue["serves"] == fallback["flow_id"]
    assert reissue["cp_status"] == 200 and "injected" not in reissue

    assert send(client, web, events).status == 200  # the route is gone: straight to the CP
    assert [r["decision"] for r in flow_records(web, sid, 3)] == ["reissue", "fallback", "passthrough"]
    assert flow_records(web, sid, 3)[-1]["reason"] == "no_route"
    assert vm_hits(fresh_sim) == [] and len(cp_hits(fresh_sim, "telemetry/events")) == 2


@pytest.mark.parametrize(
    ("method", "tail", "reason"),
    [
        ("GET", "fs/read_file?path=/g", "not_eligible"),
        ("GET", "telemetry/stream", "not_eligible"),
        ("POST", "process/exec", "not_get"),
        ("POST", "telemetry/events", "not_get"),
    ],
)
def test_injected_gone_elsewhere_reaches_the_client_and_keeps_the_route(
    web: Mitmdump, fresh_sim: Simulator, method: str, tail: str, reason: str
) -> None:
    sid = browser_with_rule(web, fresh_sim, "gone:1")
    body = b'{"command": "true"}' if method == "POST" else b""
    assert_injected(send("curl", web, url(fresh_sim, sid, tail), method, body), "gone")
    assert vm_hits(fresh_sim) == [] and cp_hits(fresh_sim, tail.partition("?")[0]) == []
    [record] = flow_records(web, sid, 1)
    assert (record["decision"], record["reason"], record["injected"]) == ("no_fallback", reason, "gone")
    assert web.records("route_evicted", sid, wait_for=0) == []
    assert send("httpx", web, url(fresh_sim, sid, tail), method, body).status == 200  # still routed
    assert len(vm_hits(fresh_sim)) == 1


# --------------------------------------------------------------------------- matching


def test_a_count_answers_that_many_requests_then_the_vm_answers_again(
    web: Mitmdump, fresh_sim: Simulator
) -> None:
    sid = browser_with_rule(web, fresh_sim, "503:2")
    lefts = [rule_list(web)[0]["left"]]
    statuses = []
    for _ in range(3):
        statuses.append(send("httpx", web, url(fresh_sim, sid, "fs/read_file?path=/c")).status)
        lefts.append(rule_list(web)[0]["left"])
    assert statuses == [503, 503, 200] and lefts == [2, 1, 0, 0]
    assert len(vm_hits(fresh_sim, "fs/read_file")) == 1
    records = flow_records(web, sid, 3)
    assert [(r["decision"], r.get("injected")) for r in records] == [
        ("no_fallback", "503"),
        ("no_fallback", "503"),
        ("routed", None),
    ]


def test_star_answers_for_any_session(web: Mitmdump, fresh_sim: Simulator) -> None:
    sids = [new_browser(web, fresh_sim) for _ in range(2)]
    inject(web, "*=504")
    statuses = [send("httpx", web, url(fresh_sim, s, "process/exec"), "POST", b"{}").status for s in sids]
    assert statuses == [504, 504] and vm_hits(fresh_sim) == []
    assert [r["injected"] for s in sids for r in flow_records(web, s, 1)] == ["504", "504"]


def test_prefixes_match_on_segment_boundaries(web: Mitmdump, fresh_sim: Simulator) -> None:
    whole, stream, partial = (new_browser(web, fresh_sim) for _ in range(3))
    inject(web, f"{whole}/telemetry=500", f"{stream}/telemetry/stream=500", f"{partial}/tele=500")
    tails = ("telemetry/events", "telemetry/stream", "telemetry/streamx", "fs/read_file?path=/p")
    got = {
        (s, t): send("httpx", web, url(fresh_sim, s, t)).status
        for s in (whole, stream, partial)
        for t in tails
    }
    assert [got[whole, t] for t in tails] == [500, 500, 500, 200]
    assert [got[stream, t] for t in tails] == [200, 500, 200, 200]
    assert [got[partial, t] for t in tails] == [200, 200, 200, 200]
    assert len(vm_hits(fresh_sim)) == 12 - 4, "each injected answer kept one request off the VM"


def test_a_session_rule_matches_by_browser_name_and_by_id(web: Mitmdump, fresh_sim: Simulator) -> None:
    named = new_browser(web, fresh_sim, "inject-by-name")
    other = new_browser(web, fresh_sim, "inject-by-id")
    inject(web, "inject-by-name=403", f"{other}=401")
    for key, status in [(named, 403), ("inject-by-name", 403), (other, 401), ("inject-by-id", 401)]:
        assert send("curl", web, url(fresh_sim, key, "curl/raw?url=x")).status == status, key
    assert vm_hits(fresh_sim) == []
    assert [r["injected"] for r in flow_records(web, named, 2)] == ["403"] * 2, "both keyed by the id"


def test_the_first_matching_rule_wins(web: Mitmdump, fresh_sim: Simulator) -> None:
    sid, other = new_browser(web, fresh_sim), new_browser(web, fresh_sim)
    inject(web, f"{sid}/fs=401:1", f"{sid}=500", "*=503")
    sent = [(sid, "fs/read_file?path=/f"), (sid, "fs/read_file?path=/f"), (sid, "telemetry/events")]
    sent.append((other, "fs/read_file?path=/f"))
    assert [send("httpx", web, url(fresh_sim, s, t)).status for s, t in sent] == [401, 500, 500, 503]
    assert [r["left"] for r in rule_list(web)] == [0, None, None]
    assert vm_hits(fresh_sim) == []


def test_rules_never_apply_to_control_plane_requests(web: Mitmdump, fresh_sim: Simulator) -> None:
    sid = new_browser(web, fresh_sim)
    inject(web, "*=502")
    fresh_sim.reset()
    seen = len(web.records(wait_for=0))
    assert send("httpx", web, f"{fresh_sim.cp_url}/browsers").status == 200
    assert send("curl", web, f"{fresh_sim.cp_url}/browsers/{sid}").status == 200
    assert send("httpx", web, url(fresh_sim, sid, "computer/screenshot")).status == 200  # not allowlisted
    assert send("curl", web, url(fresh_sim, "no-such-browser", "fs/read_file")).json()["code"] == "not_found"
    assert fresh_sim.stats()["cp"]["count"] == 4
    assert [r["path"] for r in fresh_sim.stats()["vm"]["requests"]] == ["/browser/kernel/computer/screenshot"]
    passed = [r for r in web.records(wait_for=seen + 4)[seen:] if r["decision"] not in CACHE_CHANGES]
    assert [(r["decision"], r["reason"]) for r in passed] == [
        ("passthrough", "not_browser_subresource"),
        ("passthrough", "not_browser_subresource"),
        ("passthrough", "not_allowlisted"),
        ("passthrough", "no_route"),
    ]
    assert all("injected" not in r for r in passed)


# --------------------------------------------------------------------------- commands and the option


def test_commands_append_list_and_clear_the_rules(web: Mitmdump, fresh_sim: Simulator) -> None:
    sid = new_browser(web, fresh_sim, "inject-commands")
    assert rule_list(web) == []
    inject(web, f"{sid}/telemetry/events=gone:3", "inject-commands=502")
    old_keys = ("rule", "session", "prefix", "kind", "left")  # what a rule of today listed, unchanged
    assert [{k: r[k] for k in old_keys} for r in rule_list(web)] == [
        {"rule": f"{sid}/telemetry/events=gone:3", "session": sid, "prefix": "telemetry/events",
         "kind": "gone", "left": 3},
        {"rule": "inject-commands=502", "session": "inject-commands", "prefix": None,
         "kind": "502", "left": None},
    ]  # fmt: skip
    assert [(r["cp"], r["spent"], [s["step"] for s in r["steps"]]) for r in rule_list(web)] == [
        (False, False, ["gone:3"]),
        (False, False, ["502"]),
    ]
    assert send("httpx", web, url(fresh_sim, sid, "fs/read_file?path=/l")).status == 502
    web.command("browserrouting.inject.clear")
    assert rule_list(web) == []
    assert send("httpx", web, url(fresh_sim, sid, "fs/read_file?path=/l")).status == 200
    assert len(vm_hits(fresh_sim)) == 1


@pytest.mark.parametrize("bad", BAD_RULES)
def test_a_bad_rule_through_the_command_is_refused_naming_it_and_the_rules_are_kept(
    web: Mitmdump, bad: str
) -> None:
    inject(web, "kept-1=502:2", "*/fs=reset")
    before = rule_list(web)
    with pytest.raises(CommandFailed, match=r"browserrouting\.inject: ") as refused:
        web.command("browserrouting.inject", bad)
    assert repr(bad) in str(refused.value)
    assert rule_list(web) == before


@pytest.mark.parametrize("bad", BAD_RULES)
def test_a_bad_rule_set_live_is_refused_naming_it_and_the_rules_are_kept(web: Mitmdump, bad: str) -> None:
    web.command("set", "browserrouting_inject", "kept-1=502:2")
    inject(web, "*/fs=reset")
    before = rule_list(web)
    with pytest.raises(CommandFailed, match="browserrouting_inject") as refused:
        web.command("set", "browserrouting_inject", f"ok=gone,{bad}")
    assert repr(bad) in str(refused.value)
    assert rule_list(web) == before


def test_setting_the_option_live_replaces_the_rule_list(web: Mitmdump, fresh_sim: Simulator) -> None:
    sid = new_browser(web, fresh_sim)
    inject(web, f"{sid}=500", "*=503")
    web.command("set", "browserrouting_inject", f"{sid}/fs=401:1, ,{sid}/process=403")
    assert [r["rule"] for r in rule_list(web)] == [f"{sid}/fs=401:1", f"{sid}/process=403"]
    statuses = [send("httpx", web, url(fresh_sim, sid, t)).status for t in ("fs/read_file?path=/o",) * 2]
    assert statuses == [401, 200] and rule_list(web)[0]["left"] == 0
    web.command("set", "browserrouting_inject", f"{sid}/fs=401:1")  # the same value again: re-armed
    assert rule_list(web)[0]["left"] == 1
    web.command("set", "browserrouting_inject", "")
    assert rule_list(web) == []
    exec_without_command = send("httpx", web, url(fresh_sim, sid, "process/exec"), "POST", b"{}")
    assert exec_without_command.json()["code"] == "bad_request", "the VM's own answer"


# --------------------------------------------------------------------------- mitmdump at start


def test_rules_given_at_start_apply_in_mitmdump(sim: Simulator) -> None:
    options = proxy_options(sim, browserrouting_inject="inject-at-start/fs=503:1,*/telemetry/events=gone:1")
    with Mitmdump(options) as dump:
        sid = new_browser(dump, sim, "inject-at-start")
        sim.reset()
        assert send("curl", dump, url(sim, "inject-at-start", "fs/read_file?path=/s")).status == 503
        assert send("curl", dump, url(sim, sid, "fs/read_file?path=/s")).status == 200
        assert send("curl", dump, url(sim, sid, "telemetry/events")).json()[0]["id"] == f"cp-{sid}-1"
        decided = [
            (r["decision"], r.get("injected"))
            for r in flow_records(dump, sid, 4)
            if r["decision"] != "reissue"
        ]
    assert decided == [("no_fallback", "503"), ("routed", None), ("fallback", "gone")]
    assert len(vm_hits(sim)) == 1


def test_a_bad_rule_at_start_stops_mitmdump_naming_the_option(sim: Simulator) -> None:
    dumps = [Mitmdump(proxy_options(sim, browserrouting_inject=f"ok=gone,{bad}")) for bad in BAD_RULES]

    def refusal(dump: Mitmdump) -> str:
        try:
            dump.start(timeout=15)
        except RuntimeError as e:
            return str(e)
        return "started"

    try:
        with ThreadPoolExecutor(2) as pool:  # two at a time: a start is about a second of CPU
            refusals = list(pool.map(refusal, dumps))
        for dump, bad, refused in zip(dumps, BAD_RULES, refusals, strict=True):
            assert "browserrouting_inject" in refused and repr(bad) in refused, refused
            assert dump.stop() not in (0, None)
    finally:
        for dump in dumps:
            dump.cleanup()
