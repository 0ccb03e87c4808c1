"""Steps (A)-(C) of scripts/demo: the reference's live scoping QA, replayed on one browser
through mitmdump with the addon and the SDK with its own routing off."""

from __future__ import annotations

import json

import kernel

from .harness import API_KEY, HEADERS, Demo


class RouteSteps:
    """(A) routes a live browser's stream, (B) keeps the stale route of a browser killed on the
    VM, (C) falls back to the CP for its events: in that order, through `demo`."""

    def __init__(self, demo: Demo) -> None:
        self.demo = demo
        self.sid = ""  # the browser of the three steps, created by (A)

    def step_a(self) -> None:
        demo = self.demo
        demo.say(HEADERS["A"])
        demo.mark()
        browser = demo.client.browsers.create()
        self.sid = browser.session_id
        demo.remember(self.sid)
        cached = demo.records(lambda rs: any(r["decision"] == "route_cached" for r in rs))
        demo.say(f"    browser {self.sid} created through the proxy (shown as {{id}} below)")
        demo.check(
            [
                (r["decision"], r["reason"], r["session_id"])
                for r in cached
                if r["decision"].startswith("route_")
            ]
            == [("route_cached", "create", self.sid)],
            "the create response filled the route cache",
        )

        demo.mark()
        with demo.client.browsers.telemetry.stream(self.sid) as stream:
            events = [str(event.to_dict().get("id")) for event in stream]
        recs = demo.records(lambda rs: any(r["decision"] == "routed" and "vm_status" in r for r in rs))
        demo.show(recs)
        counts = demo.attempts()
        demo.say(f"    client got {len(events)} events: {', '.join(demo.short(e) for e in events)}")
        got = [(r["decision"], r.get("vm_status")) for r in recs]
        demo.check(got == [("routed", 200)], "decision routed, the VM answered 200", got)
        demo.check(counts == {"VM": 1, "CP": 0}, "every outbound attempt went to the VM host", counts)
        demo.check(
            len(events) == demo.sim.sse_count and all(e.startswith(f"vm-{self.sid}-") for e in events),
            f"the stream delivered the VM's {demo.sim.sse_count} events",
            events,
        )

    def step_b(self) -> None:
        demo = self.demo
        demo.say(HEADERS["B"])
        demo.sim.kill_on_vm(self.sid)
        demo.say("    browser {id} killed on the VM only; the route is still cached (stale)")
        demo.mark()
        error: kernel.APIStatusError | None = None
        try:
            with demo.client.browsers.telemetry.stream(self.sid) as stream:
                for _ in stream:
                    pass
        except kernel.APIStatusError as exc:
            error = exc
        recs = demo.records(lambda rs: any(r["decision"] == "no_fallback" for r in rs))
        demo.show(recs)
        counts = demo.attempts()
        body = error.body if error is not None else None
        desc = f"{type(error).__name__} {error.status_code} {json.dumps(body)}" if error else "no error"
        demo.say(f"    client got {desc}")
        demo.check(
            isinstance(error, kernel.NotFoundError)
            and isinstance(body, dict)
            and body.get("code") == "browser_gone",
            "the client got the VM's 404 browser_gone (kernel.NotFoundError)",
        )
        got = [(r["decision"], r["reason"], r.get("vm_status")) for r in recs]
        demo.check(
            got == [("no_fallback", "not_eligible", 404)],
            "decision no_fallback (not_eligible), no eviction",
            got,
        )
        demo.check(
            counts == {"VM": 1, "CP": 0}, "zero control-plane re-issues: every attempt went to the VM", counts
        )

    def step_c(self) -> None:
        demo = self.demo
        demo.say(HEADERS["C"])
        demo.say("    read 1: the stale route is used, the VM says browser_gone")
        page, recs, counts = demo.observe(lambda: demo.client.browsers.telemetry.events(self.sid), "fallback")
        ids = [str(item.to_dict().get("id")) for item in page.items]
        demo.say(f"    client got a page of {len(ids)} events: {', '.join(demo.short(i) for i in ids)}")
        demo.check(
            bool(ids) and all(i.startswith(f"cp-{self.sid}-") for i in ids), "the client got the CP's page"
        )
        cp = demo.sim.stats()["cp"]["requests"]
        reissued = (
            counts == {"VM": 1, "CP": 1}
            and cp[0]["headers"].get("authorization") == f"Bearer {API_KEY}"
            and "jwt" not in cp[0]["query"]
        )
        demo.check(reissued, "exactly one CP re-issue, with the API key restored and no jwt", counts)
        by = {r["decision"]: r for r in recs}
        fallback, reissue, evicted = (
            by.get("fallback", {}),
            by.get("reissue", {}),
            by.get("route_evicted", {}),
        )
        linked = (
            (fallback.get("vm_status"), fallback.get("cp_status")) == (404, 200)
            and reissue.get("serves") == fallback.get("flow_id")
            and len(recs) == 3
        )
        demo.check(linked, "decision fallback (VM 404, CP 200), linked to its re-issue")
        demo.check(
            (evicted.get("reason"), evicted.get("session_id")) == ("browser_gone", self.sid),
            "the route was evicted (route_evicted, browser_gone)",
        )

        demo.say("    read 2: no route any more, straight to the control plane")
        page, recs, counts = demo.observe(
            lambda: demo.client.browsers.telemetry.events(self.sid), "passthrough"
        )
        again = [str(item.to_dict().get("id")) for item in page.items]
        demo.say(f"    client got a page of {len(again)} events from the CP")
        got = [(r["decision"], r["reason"], r.get("cp_status")) for r in recs]
        demo.check(got == [("passthrough", "no_route", 200)], "decision passthrough (no_route)", got)
        demo.check(counts == {"VM": 0, "CP": 1}, "zero VM attempts, one CP request", counts)
