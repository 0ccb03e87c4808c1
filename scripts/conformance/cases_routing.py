"""The routing cases: where a client sends its calls, what it learns routes from and when it
forgets them, and whether a routed stream reaches the caller live."""

from __future__ import annotations

from .caserun import CaseRun, NotApplicable, Op
from .cases import EVENTS, PAGE, STREAM, Outcome, case, expect_cp, expect_last_answer, expect_vm, of, on_vm

ROUTED = (
    "condition 1 of the fallback: the request was actually routed to the VM (allowlisted subresource "
    "and a cached route)"
)
LIVE_BURST_MS = 50  # live, events closer than this may have been sent together: no verdict on liveness


@case(
    "routes_allowlisted",
    "an allowlisted subresource call (GET and POST) goes to the browser's VM, with the route's jwt and "
    "without the API key",
    ROUTED + "; the fallback restores Authorization and drops the jwt, so the routed request has the jwt "
    "and no Authorization",
    ("api_key_on_vm", "jwt_mismatch", "not_allowlisted", "not_routed"),
)
def routes_allowlisted(c: CaseRun) -> Outcome:
    session = c.create()
    ops = [c.call(session, "GET", EVENTS, PAGE), c.call(session, "POST", EVENTS, body={"type": "conform"})]
    c.settle()
    out = Outcome()
    for op in ops:
        expect_vm(out, op)
        expect_last_answer(out, op)
    return out


@case(
    "cp_for_not_allowlisted",
    "a subresource call the allowlist does not cover goes to the control plane, without a jwt",
    "no fallback on non-routed requests: a call off the allowlist is never routed",
    ("not_allowlisted", "jwt_on_cp"),
    needs=(),
)
def cp_for_not_allowlisted(c: CaseRun) -> Outcome:
    session = c.create()
    op = c.call(session, "GET", "fs/read_file", (("path", "/conform"),))
    c.settle()
    out = Outcome()
    expect_cp(out, op)
    expect_last_answer(out, op)
    return out


def learns(c: CaseRun, session: str, taught: Op) -> Outcome:
    """After `taught` (whose answer named the browser), an allowlisted call goes to the VM."""
    op = c.call(session, "GET", EVENTS, PAGE)
    c.settle()
    if not any(r["decision"] == "route_cached" and r["session_id"] == session for r in taught.cache):
        raise NotApplicable(
            f"the answer to {taught.what} held no route for the browser (the proxy learned none)"
        )
    out = Outcome()
    expect_vm(out, op)
    expect_last_answer(out, op)
    return out


@case(
    "learns_from_retrieve",
    "a browser the client did not create is routed once the client has retrieved it",
    ROUTED + ": routes are learned from the control plane's browser objects (retrieve)",
    ("not_routed",),
)
def learns_from_retrieve(c: CaseRun) -> Outcome:
    session = c.service.outside_browser()
    return learns(c, session, c.step("retrieve", session_id=session))


@case(
    "learns_from_list",
    "a browser the client did not create is routed once the client has listed browsers",
    ROUTED + ": routes are learned from the control plane's browser objects (list)",
    ("not_routed",),
)
def learns_from_list(c: CaseRun) -> Outcome:
    session = c.service.outside_browser()
    return learns(c, session, c.step("list"))


@case(
    "learns_from_acquire",
    "a browser acquired from a pool is routed",
    ROUTED + ": routes are learned from the control plane's browser objects (pool acquire)",
    ("not_routed",),
)
def learns_from_acquire(c: CaseRun) -> Outcome:
    before = len(c.ops)
    session = c.acquire()
    return learns(c, session, c.ops[before])


def evicts(c: CaseRun, session: str, how: str) -> Outcome:
    """A routed call, then `how` (delete or release) through the client, then the same call: it
    must go to the control plane."""
    first = c.call(session, "GET", EVENTS, PAGE)
    c.step(how, session_id=session)
    after = c.call(session, "GET", EVENTS, PAGE)
    c.settle()
    on_vm(first)  # a route never used is no route to forget
    out = Outcome()
    expect_cp(out, after)
    expect_last_answer(out, after)
    return out


@case(
    "evicts_on_delete",
    "after the client deletes a browser, its calls for that browser no longer go to the VM",
    "the route cache forgets a browser the control plane deleted (a stale route is never used)",
    ("stale_route",),
)
def evicts_on_delete(c: CaseRun) -> Outcome:
    return evicts(c, c.create(), "delete")


@case(
    "evicts_on_release",
    "after the client releases a pool browser, its calls for that browser no longer go to the VM",
    "the route cache forgets a browser released to its pool (a stale route is never used)",
    ("stale_route",),
)
def evicts_on_release(c: CaseRun) -> Outcome:
    return evicts(c, c.acquire(), "release")


@case(
    "stream_is_live",
    "a routed event stream (telemetry/stream) reaches the caller event by event, as the VM sends it",
    "only a 404 is buffered (to read browser_gone); any other routed answer streams through",
    ("api_key_on_vm", "jwt_mismatch", "not_routed"),
    needs=("routing", "stream"),
)
def stream_is_live(c: CaseRun) -> Outcome:
    session = c.create()
    op = c.call(session, "GET", STREAM, stream=True)
    c.settle()
    out = Outcome()
    expect_vm(out, op)
    vm = of(op, "client_routed")[:1]
    times = [int(e.get("t_ms", 0)) for e in op.events]
    interval = c.service.sse_interval
    if interval is None and len(times) < 2:
        raise NotApplicable(f"live: the stream sent {len(times)} events before the call ended")
    out.expect(len(times) >= 2, f"the caller got {op.got()}, not the stream's events", *vm)
    if len(times) < 2:
        return out
    spread = times[-1] - times[0]
    if interval is None:
        if spread < LIVE_BURST_MS:
            raise NotApplicable(
                "live: the events came in one burst; liveness is judged against the simulator"
            )
        return out
    sent = interval * 1000 * (len(times) - 1)
    out.expect(
        spread >= sent / 2,
        f"the caller got {len(times)} events within {spread} ms; the VM sent them over {sent:.0f} ms: "
        "the stream was buffered",
        *vm,
    )
    return out
