"""Steps (D) and (E) of scripts/demo: the live QA that needs fault injection or audit mode.

(D) audits the official `kernel` SDK's own routing: the SDK sends its telemetry calls to
the VM by itself, a `mitmweb` with `browserrouting_mode=audit` judges each exchange, and
fault-injection rules added through mitmweb's command API make the VM answer 502 or
browser_gone on demand. (E) runs route mode against a simulator whose VM answers 502 for
a deleted browser, as the live VM proxy does today, reaches the fallback by injecting
browser_gone, and plays a VM going down (502 twice, then browser_gone) with a fallback
whose CP call fails once, one rule each. Each step prints through the harness's `Demo`
(records, counts, PASS/FAIL), so that the output reads as one.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import kernel
from mitmdump_runner import Mitmdump
from simulator import Simulator

from .harness import ROUTING_ENV, Demo, Record, sdk_client

SDK_ROUTING = "telemetry"  # the SDK's own allowlist in (D), as in the reference's live QA
# The SDK's second retry comes 0.75-1 s after the VM's answer: a window of 1.5 s sees it as a
# retry, and keeps the wait for a missing fallback short.
AUDIT_WINDOW_MS = 1500
VM_PATH = "/browser/kernel/telemetry"


@dataclass
class LiveQa:
    audit: Mitmdump  # mitmweb in audit mode, on the demo's simulator
    audit_client: kernel.Kernel  # the SDK with its own routing on
    live_sim: Simulator  # its VM answers 502 for a deleted or killed browser
    route: Mitmdump  # mitmweb in route mode, on live_sim
    route_client: kernel.Kernel  # the SDK with its own routing off, through `route`
    cp_client: kernel.Kernel  # the SDK straight to live_sim's CP, not through any proxy
    api_key: str

    @classmethod
    def start(
        cls,
        stack: contextlib.ExitStack,
        sim: Simulator,
        options: Callable[[Simulator], dict[str, str]],
        api_key: str,
    ) -> LiveQa:
        """Start what (D) and (E) need, each cleanup registered on `stack` first.
        Raises OSError or RuntimeError when something does not start."""
        audit = Mitmdump(
            {
                **options(sim),
                "browserrouting_mode": "audit",
                "browserrouting_audit_window": str(AUDIT_WINDOW_MS),
            },
            tool="mitmweb",
        )
        stack.callback(audit.cleanup)
        audit.start()
        live_sim = Simulator(deleted_browser="502")
        stack.callback(live_sim.stop)
        live_sim.start()
        route = Mitmdump(options(live_sim), tool="mitmweb")
        stack.callback(route.cleanup)
        route.start()
        clients = (
            # The SDK's default retries: how it treats a VM 5xx is part of what is audited.
            sdk_client(api_key, sim.cp_url, routing=SDK_ROUTING, proxy=audit, max_retries=2),
            sdk_client(api_key, live_sim.cp_url, routing="", proxy=route, max_retries=0),
            sdk_client(api_key, live_sim.cp_url, routing="", proxy=None, max_retries=0),
        )
        for client in clients:
            stack.callback(client.close)
        return cls(audit, clients[0], live_sim, route, clients[1], clients[2], api_key)


def show_audit(demo: Demo, records: list[Record]) -> None:
    """Audit records in the demo's table style: each exchange's verdict, notes in brackets."""
    demo.say(f"    {'decision':<15}{'status':<8}{'verdict':<34}flow")
    for r in records:
        if r["decision"].startswith("route_"):
            status, verdict, flow = "-", f"reason: {r['reason']}", f"route cache: {r['session_id']}"
        else:
            side, code = ("VM", r.get("vm_status")) if "vm_url" in r else ("CP", r.get("cp_status"))
            status = f"{side} {code if code is not None else '-'}"
            notes = [f"injected {r['injected']}" if n == "injected" else n for n in r.get("notes") or []]
            verdict = ", ".join(r.get("violations") or []) or "ok"
            verdict += f" [{', '.join(notes)}]" if notes else ""
            path = r["url"].split("//", 1)[-1].split("/", 1)[-1].split("?", 1)[0]  # no jwt shown
            flow = f"{r['method']} /{path}"
        demo.say(f"    {r['decision']:<15}{status:<8}{verdict:<34}{demo.short(flow)}")


def audited(records: list[Record], decision: str = "client_routed") -> list[Record]:
    return [r for r in records if r["decision"] == decision]


def answered(count: int) -> Callable[[list[Record]], bool]:
    """Until `count` VM exchanges have their answer."""
    return lambda rs: len([r for r in audited(rs) if "vm_status" in r]) >= count


def api_error(call: Callable[[], object]) -> kernel.APIStatusError | None:
    try:
        call()
    except kernel.APIStatusError as exc:
        return exc
    return None


def describe(demo: Demo, error: kernel.APIStatusError | None) -> str:
    if error is None:
        return "no error"
    return demo.short(f"{type(error).__name__} {error.status_code} {json.dumps(error.body)}")


def event_ids(items: list[Any]) -> list[str]:
    return [str(item.to_dict().get("id")) for item in items]


def audit_sdk_routing(demo: Demo, qa: LiveQa) -> None:
    """(D): the SDK routes, the audit judges; its header is printed by the caller."""
    proxy, client = qa.audit, qa.audit_client
    demo.use(demo.sim, proxy, client)
    finding = f"expected finding for kernel {kernel.__version__} (no browser_gone fallback)"
    demo.say(f"    mitmweb -s addon/browser_routing.py on {proxy.url}, on the same simulator")
    demo.say(
        f"      browserrouting_mode=audit, audit_window={AUDIT_WINDOW_MS} ms, subresources={SDK_ROUTING}"
    )
    demo.say(f"    kernel SDK {kernel.__version__}, its own routing on ({ROUTING_ENV}={SDK_ROUTING}),")
    demo.say("      its default 2 retries; rules injected through mitmweb's command API")

    demo.say("    normal calls: create a browser, open its telemetry stream, GET its telemetry events")
    demo.mark()
    sid = client.browsers.create().session_id
    demo.remember(sid)
    with client.browsers.telemetry.stream(sid) as stream:
        streamed = [str(event.to_dict().get("id")) for event in stream]
    page = event_ids(client.browsers.telemetry.events(sid).items)
    recs = demo.records(lambda rs: answered(2)(rs) and bool(audited(rs, "client_cp")))
    show_audit(demo, recs)
    counts = demo.attempts()
    jwt = demo.sim.jwt_for(sid)
    vm = demo.sim.stats()["vm"]["requests"]
    flows = [r for r in recs if r["decision"].startswith("client_")]
    demo.check(
        [(r["decision"], r["violations"]) for r in flows]
        == [("client_cp", []), ("client_routed", []), ("client_routed", [])],
        "the create went to the CP, the stream and the events read to the VM: all audit clean",
        [(r["decision"], r.get("violations")) for r in flows],
    )
    demo.check(
        counts == {"VM": 2, "CP": 1}
        and [r["path"] for r in vm] == [f"{VM_PATH}/stream", f"{VM_PATH}/events"]
        and all("authorization" not in r["headers"] for r in vm)
        and all(parse_qs(r["query"]).get("jwt") == [jwt] for r in vm),
        "on the VM: no API key, the route's jwt, the base_url's paths",
        counts,
    )
    demo.check(
        bool(streamed) and all(i.startswith("vm-") for i in streamed + page),
        "the client got the VM's stream and page",
    )

    rule = f"{sid}/telemetry/stream=502:2"
    demo.say(f"    :browserrouting.inject {demo.short(rule)}  then open the stream again")
    proxy.command("browserrouting.inject", rule)
    demo.mark()
    with client.browsers.telemetry.stream(sid) as stream:
        streamed = [str(event.to_dict().get("id")) for event in stream]
    recs = demo.records(answered(3))
    show_audit(demo, recs)
    counts = demo.attempts()
    got = [(r.get("vm_status"), r.get("injected"), "vm_retry" in r["notes"], r["violations"]) for r in recs]
    demo.check(
        got == [(502, "502", False, []), (502, "502", True, []), (200, None, True, [])],
        "the SDK retried the 502s on the VM: vm_retry notes, no violation",
        got,
    )
    demo.check(
        counts == {"VM": 1, "CP": 0} and len(streamed) == demo.sim.sse_count,
        "the proxy answered the 502s itself: one VM attempt, no CP call, the client got the stream",
        counts,
    )

    rule = f"{sid}/telemetry/events=gone:1"
    demo.say(f"    :browserrouting.inject {demo.short(rule)}  then GET the telemetry events")
    proxy.command("browserrouting.inject", rule)
    demo.mark()
    error = api_error(lambda: client.browsers.telemetry.events(sid))
    recs = demo.records(answered(1))
    show_audit(demo, recs)
    counts = demo.attempts()
    demo.say(f"    client got {describe(demo, error)}")
    gone = next(iter(audited(recs)), {})
    demo.check(
        (gone.get("vm_status"), gone.get("injected"), gone.get("violations")) == (404, "gone", [])
        and counts == {"VM": 0, "CP": 0}
        and isinstance(error, kernel.NotFoundError),
        "the proxy answered 404 browser_gone; the SDK gave the caller the 404 and sent nothing to the CP",
        counts,
    )
    seconds = AUDIT_WINDOW_MS / 1000
    demo.say(
        f"    ... no further traffic; when the {seconds:g} s window ends, the audit logs the flow again:"
    )
    later = demo.records(
        lambda rs: any("missing_fallback" in r["violations"] for r in audited(rs)), timeout=seconds + 3
    )[len(recs) :]
    show_audit(demo, later)
    missing = next(iter(audited(later)), {})
    demo.check(
        missing.get("flow_id") == gone.get("flow_id")
        and missing.get("violations") == ["missing_fallback"]
        and missing["ts"] - gone["ts"] >= seconds - 0.1
        and demo.sim.stats()["by_host"] == {},
        f"{finding}: missing_fallback, reported when the window ended",
    )

    demo.say("    the next call: GET the telemetry events again")
    demo.mark()
    page = event_ids(client.browsers.telemetry.events(sid).items)
    recs = demo.records(answered(1))
    show_audit(demo, recs)
    counts = demo.attempts()
    stale = audited(recs)
    demo.check(
        [r["violations"] for r in stale] == [["stale_route"]] and counts == {"VM": 1, "CP": 0},
        f"{finding}: stale_route, the SDK kept using the route the VM said was gone",
        [r["violations"] for r in stale],
    )

    demo.say("    a browser_gone where no fallback applies: a new browser, its stream answered gone once")
    other = client.browsers.create().session_id
    demo.remember(other)
    rule = f"{other}/telemetry/stream=gone:1"
    demo.say(f"    :browserrouting.inject {demo.short(rule)}  then open the stream, twice")
    proxy.command("browserrouting.inject", rule)
    demo.mark()
    error = api_error(lambda: list(client.browsers.telemetry.stream(other)))
    with client.browsers.telemetry.stream(other) as stream:
        streamed = [str(event.to_dict().get("id")) for event in stream]
    recs = demo.records(answered(2))
    show_audit(demo, recs)
    kept = audited(recs)
    demo.check(
        [(r.get("vm_status"), r["violations"], r["notes"]) for r in kept]
        == [(404, [], ["injected"]), (200, [], ["gone_before"])]
        and isinstance(error, kernel.NotFoundError)
        and len(streamed) == demo.sim.sse_count,
        "the stream allows no fallback, so the route is kept: the next read conforms (gone_before)",
        [(r.get("vm_status"), r["violations"], r["notes"]) for r in kept],
    )

    table = json.loads(proxy.command("browserrouting.audit"))
    rules = table["rules"]
    cells = [f"{name} {rule['checked']}/{len(rule['broken'])}" for name, rule in rules.items()]
    demo.say("    :browserrouting.audit  (rule checked/broken)")
    for at in range(0, len(cells), 5):
        demo.say("      " + "  ".join(cells[at : at + 5]))
    demo.say("      notes: " + ", ".join(f"{name} {n}" for name, n in table["notes"].items()))
    broken = {name: rule["broken"] for name, rule in rules.items() if rule["broken"]}
    demo.check(
        broken == {"missing_fallback": [gone.get("flow_id")], "stale_route": [r["flow_id"] for r in stale]}
        and table["notes"]["vm_retry"] == 2
        and table["notes"]["gone_before"] == 1,
        "the audit table names those two flows and no other broken rule",
        broken,
    )


def live_like_route_mode(demo: Demo, qa: LiveQa) -> None:
    """(E): route mode with the live VM's 502 for a gone browser; its header is printed by the caller."""
    sim, proxy, client = qa.live_sim, qa.route, qa.route_client
    demo.use(sim, proxy, client)
    demo.say(f"    a second simulator   CP {sim.cp_url}   VM {sim.vm_url}")
    demo.say(
        "      its VM answers 502 bad_gateway for a deleted or killed browser, as the live VM proxy does"
    )
    demo.say(f"    mitmweb -s addon/browser_routing.py on {proxy.url}, route mode, SDK routing off")
    sid = client.browsers.create().session_id
    demo.remember(sid)
    qa.cp_client.browsers.delete_by_id(sid)
    demo.say("    browser {id} created through the proxy, then deleted at the CP directly, not through it")
    routes = json.loads(proxy.command("browserrouting.routes"))
    demo.check(
        sid in [route["session_id"] for route in routes],
        "the proxy still holds its route (browserrouting.routes): the route is stale",
    )

    demo.say("    read 1: GET the telemetry events on the stale route, no injection")
    error, recs, counts = demo.observe(
        lambda: api_error(lambda: client.browsers.telemetry.events(sid)), "no_fallback"
    )
    demo.say(f"    client got {describe(demo, error)}")
    got = [(r["decision"], r["reason"], r.get("vm_status")) for r in recs]
    demo.check(got == [("no_fallback", "status", 502)], "decision no_fallback (status), VM 502", got)
    demo.check(
        error is not None
        and error.status_code == 502
        and isinstance(error.body, dict)
        and error.body.get("code") == "bad_gateway"
        and counts == {"VM": 1, "CP": 0},
        "the client got the VM's 502, with zero control-plane re-issues",
        counts,
    )

    demo.say(f"    read 2: :browserrouting.inject {demo.short(sid)}=gone  then the same read")
    proxy.command("browserrouting.inject", f"{sid}=gone")
    error, recs, counts = demo.observe(
        lambda: api_error(lambda: client.browsers.telemetry.events(sid)), "fallback"
    )
    demo.say(f"    client got {describe(demo, error)}: the CP's own answer for a deleted browser")
    fallback_once(demo, qa, recs, counts, cp_status=404)
    demo.check(
        isinstance(error, kernel.NotFoundError)
        and error.body == {"code": "not_found", "message": "browser not found"},
        "the client got the CP's answer as it is (its 404 not_found), not a second fallback",
    )

    other = client.browsers.create().session_id
    demo.remember(other, "{id2}")
    sim.kill_on_vm(other)
    demo.say("    read 3: browser {id2} created through the proxy, then killed on the VM only")
    demo.say("      (the CP still serves its events); :browserrouting.inject {id2}=gone  then GET its events")
    proxy.command("browserrouting.inject", f"{other}=gone")
    page, recs, counts = demo.observe(
        lambda: event_ids(client.browsers.telemetry.events(other).items), "fallback"
    )
    demo.say(f"    client got a page of {len(page)} events: {demo.short(', '.join(page))}")
    fallback_once(demo, qa, recs, counts, cp_status=200)
    demo.check(bool(page) and all(i.startswith(f"cp-{other}-") for i in page), "the client got the CP's page")
    vm_going_down(demo, qa)


def vm_going_down(demo: Demo, qa: LiveQa) -> None:
    """(E) read 4: the VM answers 502 twice then browser_gone, the fallback's CP re-issue fails
    once; one rule each, typed once, instead of a command at each right moment."""
    proxy, client = qa.route, qa.route_client
    sid = client.browsers.create().session_id
    demo.remember(sid, "{id3}")
    rules = (f"{sid}/telemetry/events=502*2>gone", f"cp:{sid}/telemetry/events=503:1")
    demo.say("    read 4: browser {id3} created through the proxy; a VM going down, a CP that fails once:")
    for rule, what in zip(
        rules, ("502 twice, then browser_gone", "the fallback's CP re-issue fails once"), strict=True
    ):
        demo.say(f"    :browserrouting.inject {demo.short(rule):<36}  {what}")
        proxy.command("browserrouting.inject", rule)
    demo.say("      then GET its telemetry events three times")
    demo.mark()
    errors = [api_error(lambda: client.browsers.telemetry.events(sid)) for _ in range(3)]
    recs = demo.records(lambda rs: any(r["decision"] == "fallback" for r in rs))
    demo.show(recs)
    counts = demo.attempts()
    for n, error in enumerate(errors, 1):
        demo.say(f"    call {n}: client got {describe(demo, error)}")
    flows = [r for r in recs if not r["decision"].startswith("route_")]
    got = [(r["decision"], r["reason"], r.get("vm_status"), r.get("injected")) for r in flows]
    demo.check(
        got[:2] == [("no_fallback", "status", 502, "502")] * 2
        and [e.status_code if e else None for e in errors[:2]] == [502, 502],
        "no fallback on the 502s: the client got each 502, decision no_fallback (status)",
        got,
    )
    by = {r["decision"]: r for r in recs}
    fallback, reissue = by.get("fallback", {}), by.get("reissue", {})
    demo.check(
        [r["decision"] for r in flows].count("fallback") == 1
        and (fallback.get("injected"), fallback.get("vm_status")) == ("gone", 404)
        and (by.get("route_evicted", {}).get("reason")) == "browser_gone",
        "one fallback, on the browser_gone: the route evicted",
    )
    third = errors[2]
    demo.check(
        third is not None
        and third.status_code == 503
        and (reissue.get("injected"), reissue.get("cp_status"), fallback.get("cp_status"))
        == ("503", 503, 503)
        and [r["decision"] for r in flows].count("reissue") == 1,
        "the client got the CP's 503 (the re-issue's answer), and no second re-issue",
        [r["decision"] for r in flows],
    )
    listed = json.loads(proxy.command("browserrouting.inject.list"))
    spent = [(demo.short(r["rule"]), r["spent"]) for r in listed if sid in r["rule"]]
    demo.say(f"    :browserrouting.inject.list  {', '.join(f'{rule} spent' for rule, done in spent if done)}")
    demo.check(
        counts == {"VM": 0, "CP": 0} and spent == [(demo.short(rule), True) for rule in rules],
        "the proxy answered every call itself, VM and CP; both rules are spent",
        counts,
    )


def fallback_once(demo: Demo, qa: LiveQa, recs: list[Record], counts: dict[str, int], cp_status: int) -> None:
    """The checks of one fallback that an injected `gone` caused."""
    session = recs[0]["session_id"] if recs else None
    cp = demo.sim.stats()["cp"]["requests"]
    demo.check(
        counts == {"VM": 0, "CP": 1}
        and cp[0]["headers"].get("authorization") == f"Bearer {qa.api_key}"
        and "jwt" not in cp[0]["query"],
        "the proxy answered for the VM; exactly one CP re-issue, API key restored, no jwt",
        counts,
    )
    by = {r["decision"]: r for r in recs}
    fallback, reissue = by.get("fallback", {}), by.get("reissue", {})
    demo.check(
        (fallback.get("injected"), fallback.get("vm_status"), fallback.get("cp_status"))
        == ("gone", 404, cp_status)
        and reissue.get("serves") == fallback.get("flow_id")
        and len(recs) == 3,
        f"decision fallback (injected: gone, VM 404, CP {cp_status}), linked to its re-issue",
    )
    evicted = by.get("route_evicted", {})
    demo.check(
        (evicted.get("reason"), evicted.get("session_id")) == ("browser_gone", session),
        "the route was evicted (route_evicted, browser_gone)",
    )
