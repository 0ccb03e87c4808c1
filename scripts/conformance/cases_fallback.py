"""The fallback cases: the positive path, the reference's negatives (each fault produced by the
proxy's fault injection), the re-issue that fails, the body kept intact, and the two cases that
only report what the client does (its stale-jwt refresh, its retries)."""

from __future__ import annotations

import json

from .caserun import CALL_TIMEOUT_MS, CaseError, CaseRun, NotApplicable, Op
from .cases import (
    EVENTS,
    PAGE,
    STREAM,
    Outcome,
    case,
    expect_answer,
    expect_cp,
    expect_last_answer,
    injected,
    of,
    on_vm,
    short,
    status_of,
)
from .proxy import Record

NO_FALLBACK = ("unexpected_fallback",)
HANG_TIMEOUT_MS = 800  # the caller's timeout in no_fallback_on_timeout: the SDKs try three times


def reissues(op: Op, vm: Record) -> list[Record]:
    """The op's control-plane requests that the audit paired with this VM answer."""
    return [r for r in of(op, "client_fallback") if r.get("serves") == vm["flow_id"]]


def gone_call(c: CaseRun, session: str) -> Op:
    c.inject(f"{session}/{EVENTS}=gone:1", session)
    return c.call(session, "GET", EVENTS, PAGE)


@case(
    "fallback_on_browser_gone",
    "a GET of telemetry/events answered 404 browser_gone by the VM is re-issued once to the control "
    "plane, with the API key and without the jwt; the caller gets the control plane's answer",
    "the positive path: eligible path + GET + 404 browser_gone -> evict the route, re-issue the original "
    "request to the control plane exactly once (Authorization restored, jwt dropped), return its answer",
    ("missing_fallback", "repeated_fallback", "jwt_on_cp", "unexpected_fallback"),
    wait_window=True,
)
def fallback_on_browser_gone(c: CaseRun) -> Outcome:
    op = gone_call(c, c.create())
    c.settle()
    gone = injected(op, "gone")
    out = Outcome()
    found = reissues(op, gone)
    out.expect(
        bool(found), f"the caller got {op.got()}: the call was not re-issued to the control plane", gone
    )
    if found:
        out.expect(
            "authorization" in c.request_headers(found[0]["flow_id"]),
            "the re-issue to the control plane carried no Authorization",
            found[0],
        )
        expect_last_answer(out, op)
    return out


@case(
    "evicts_on_browser_gone",
    "after the VM said browser_gone to a GET of telemetry/events, the client's next call for that browser "
    "goes to the control plane",
    "on fallback: evict the cached route for that session (authoritatively gone)",
    ("stale_route",),
)
def evicts_on_browser_gone(c: CaseRun) -> Outcome:
    session = c.create()
    first = gone_call(c, session)
    after = c.call(session, "GET", EVENTS, PAGE)
    c.settle()
    injected(first, "gone")
    out = Outcome()
    expect_cp(out, after)
    expect_last_answer(out, after)
    return out


def no_fallback(
    c: CaseRun, kind: str, method: str = "GET", path: str = EVENTS, stream: bool = False,
    timeout_ms: int = CALL_TIMEOUT_MS,
) -> tuple[Op, Record]:  # fmt: skip
    """A routed call that the proxy answers with `kind` (every attempt, until the case ends)."""
    session = c.create()
    c.inject(f"{session}/{path}={kind}", session)
    body = {"type": "conform"} if method == "POST" else None
    query = PAGE if method == "GET" and not stream else ()
    op = c.call(session, method, path, query, body, stream, timeout_ms)
    c.settle()
    return op, injected(op, kind.split(":")[0])


def no_fallback_case(
    case_id: str, fault: str, reference: str, kind: str, method: str = "GET", path: str = EVENTS,
    stream: bool = False,
) -> None:  # fmt: skip
    """A negative whose verdict is the audit's `unexpected_fallback` and what the caller got: the
    answer of the VM's last attempt."""

    def run(c: CaseRun) -> Outcome:
        op, _ = no_fallback(c, kind, method, path, stream)
        out = Outcome()
        expect_answer(out, op, of(op, "client_routed")[-1])
        return out

    checks = f"{fault}: no control-plane call; the caller gets the VM's answer"
    needs = ("routing", "stream") if stream else ("routing",)
    case(case_id, checks, reference, NO_FALLBACK, needs=needs)(run)


no_fallback_case(
    "no_fallback_on_5xx", "a VM 502 to a GET of telemetry/events",
    "no fallback on a transient 5xx (502/503/504): returned as is", "502",
)  # fmt: skip
no_fallback_case(
    "no_fallback_on_reset", "the VM connection closed with no answer to a GET of telemetry/events",
    "no fallback on a connection error", "reset",
)  # fmt: skip


@case(
    "no_fallback_on_timeout",
    "a VM that never answers a GET of telemetry/events (the caller's timeout fires): no control-plane "
    "call; the caller gets the timeout",
    "no fallback on a connection error (a VM that does not answer)",
    NO_FALLBACK,
)
def no_fallback_on_timeout(c: CaseRun) -> Outcome:
    op, vm = no_fallback(c, "hang", timeout_ms=HANG_TIMEOUT_MS)
    out = Outcome()
    out.expect(op.error_kind == "timeout", f"the caller got {op.got()}, not its timeout", vm)
    return out


@case(
    "no_fallback_on_cut_body",
    "a VM answer to a GET of telemetry/events cut before its body ends: no control-plane call; the "
    "caller gets the error",
    "no fallback on a connection error (the connection drops mid-answer)",
    NO_FALLBACK,
)
def no_fallback_on_cut_body(c: CaseRun) -> Outcome:
    op, vm = no_fallback(c, "cut")
    out = Outcome()
    out.expect(op.answer.get("ok") is False, f"the caller got {op.got()} as if complete, from a cut body", vm)
    return out


no_fallback_case(
    "no_fallback_on_plain_404", "a VM 404 without the browser_gone code to a GET of telemetry/events",
    "no fallback on a 404 whose body code is not browser_gone", "404:1",
)  # fmt: skip


@case(
    "no_fallback_on_other_4xx",
    "the VM's own 400 (a bad query) to a GET of telemetry/events: no control-plane call; the caller "
    "gets the VM's answer",
    "no fallback on other 4xx (401 and 403 are the SDKs' own stale-jwt rule: auth_refresh_on_401_403)",
    NO_FALLBACK,
)
def no_fallback_on_other_4xx(c: CaseRun) -> Outcome:
    session = c.create()
    op = c.call(session, "GET", EVENTS, (("limit", "0"),))
    c.settle()
    vm = on_vm(op)
    status = status_of(vm)
    if status is None or not 400 <= status < 500 or status in (401, 403, 404):
        raise NotApplicable(f"the VM answered {status} to {op.what}, not another 4xx")
    out = Outcome()
    expect_answer(out, op, vm)
    return out


no_fallback_case(
    "no_fallback_on_post", "a VM 404 browser_gone to a POST of telemetry/events",
    "no fallback on a POST (only a GET falls back)", "gone:1", method="POST",
)  # fmt: skip
no_fallback_case(
    "no_fallback_on_ineligible_path", "a VM 404 browser_gone to a GET of telemetry/stream (the eligible "
    "subresource with the wrong suffix)", "no fallback on a path off the registry", "gone:1", path=STREAM,
    stream=True,
)  # fmt: skip


@case(
    "single_reissue_when_cp_fails",
    "when the re-issue of a browser_gone fails at the control plane (503), the client neither re-issues "
    "again while it waits nor goes back to the VM; the caller gets the control plane's answer",
    "CP-also-errors-no-loop: the re-issue is never routed again and never falls back again",
    ("repeated_fallback", "stale_route"),
    wait_window=True,
)
def single_reissue_when_cp_fails(c: CaseRun) -> Outcome:
    session = c.create()
    c.inject(f"cp:{session}/{EVENTS}=503:1", session)
    op = gone_call(c, session)
    c.settle()
    gone = injected(op, "gone")
    found = reissues(op, gone)
    if not found:
        raise NotApplicable(
            "the client never re-issued the call to the control plane, so no re-issue could fail"
        )
    if status_of(found[0]) != 503:
        raise CaseError(f"the proxy did not fail the re-issue: it answered {status_of(found[0])}")
    out = Outcome()
    back = [r for r in of(op, "client_routed") if r["flow_id"] != gone["flow_id"]]
    out.expect(not back, "the client went back to the VM after the control plane failed", *back[:1])
    expect_last_answer(out, op)
    return out


@case(
    "body_intact_without_fallback",
    "the body of a VM 404 that is not browser_gone reaches the caller byte for byte",
    "the body is only inspected on a 404 and is restored, so that without a fallback the original body "
    "is returned intact",
)
def body_intact_without_fallback(c: CaseRun) -> Outcome:
    op, vm = no_fallback(c, "404:1")
    sent = c.ctx.proxy.response_body(vm["flow_id"])
    if sent is None:
        raise CaseError(f"the proxy holds no body for the VM's 404 (flow {short(vm['flow_id'])})")
    text, got = op.answer.get("body"), op.answer.get("json")
    if not isinstance(text, str) and got is None:
        raise NotApplicable("the driver reports no body for what the caller got")
    out = Outcome()
    same = text == sent.decode("utf-8", "replace") if isinstance(text, str) else got == json.loads(sent)
    out.expect(
        op.status == 404 and same,
        f"the caller got {op.got()} {text or json.dumps(got)}, the VM sent {sent!r}",
        vm,
    )
    return out


@case(
    "auth_refresh_on_401_403",
    "reports what the client does when the VM answers 401 or 403 (the SDKs re-issue once to the control "
    "plane, the reference does not)",
    "not the reference's: other 4xx never fall back; the SDKs' own stale-jwt rule is reported",
    info=True,
)
def auth_refresh_on_401_403(c: CaseRun) -> Outcome:
    calls = []
    for status in ("401", "403"):
        session = c.create()
        c.inject(f"{session}/{EVENTS}={status}:1", session)
        calls.append((status, c.call(session, "GET", EVENTS, PAGE)))
    c.settle()
    said = []
    for status, op in calls:
        found = reissues(op, injected(op, status))
        vm = plural(len(of(op, "client_routed")), "VM attempt")
        cp = f"re-issued {len(found)}x to the control plane" if found else "no control-plane call"
        said.append(f"{status}: {vm}, {cp}, the caller got {op.got()}")
    return Outcome(info="; ".join(said))


@case(
    "vm_retries",
    "reports how the client retries a VM 502 (the proxy answers two, then lets the call through)",
    "not the reference's: it never retries; the SDKs retry a 5xx on the VM",
    info=True,
)
def vm_retries(c: CaseRun) -> Outcome:
    op, _ = no_fallback(c, "502:2")
    vm = of(op, "client_routed")
    retries = sum("vm_retry" in r.get("notes", []) for r in vm)
    cp = len(op.flows) - len(vm)
    attempts, calls = plural(len(vm), "VM attempt"), plural(cp, "control-plane call")
    return Outcome(info=f"{attempts} ({retries} noted vm_retry), {calls}; the caller got {op.got()}")


def plural(n: int, thing: str) -> str:
    return f"{n} {thing}" + ("" if n == 1 else "s")
