"""The cases (their ids are an interface) and what they share: the registry, the outcome a case
returns, and the checks written once. The cases themselves are in cases_routing and
cases_fallback; `CASES` holds them all, in the order the spec lists them."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from .caserun import CaseError, CaseRun, NotApplicable, Op
from .proxy import Record

EVENTS, STREAM = "telemetry/events", "telemetry/stream"  # the registry's one path; a routed stream
PAGE = (("limit", "2"),)
ALLOWLIST = "telemetry"  # the clients' own allowlist (KERNEL_BROWSER_ROUTING_SUBRESOURCES) and the audit's


@dataclass
class Outcome:
    """What a case found: the problems with what the caller got (each with the flow it concerns),
    or, for a reporting case, what the client does."""

    problems: list[tuple[str, str | None]] = field(default_factory=list)
    info: str | None = None

    def expect(self, ok: bool, problem: str, flow: Record | None = None) -> None:
        if not ok:
            self.problems.append((problem, flow["flow_id"] if flow else None))


@dataclass(frozen=True)
class Case:
    id: str
    checks: str  # what it checks, one sentence
    reference: str  # the rule of the reference it stands for
    owns: frozenset[str]  # the audit's violations that decide it
    run: Callable[[CaseRun], Outcome]
    wait_window: bool = False  # a browser_gone may need the audit window to end to be judged
    info: bool = False  # it reports what the client does; no verdict
    needs: tuple[str, ...] = ("routing",)


CASES: dict[str, Case] = {}


def case(
    case_id: str, checks: str, reference: str, owns: tuple[str, ...] = (), *, wait_window: bool = False,
    info: bool = False, needs: tuple[str, ...] = ("routing",),
) -> Callable[[Callable[[CaseRun], Outcome]], Callable[[CaseRun], Outcome]]:  # fmt: skip
    def register(run: Callable[[CaseRun], Outcome]) -> Callable[[CaseRun], Outcome]:
        CASES[case_id] = Case(case_id, checks, reference, frozenset(owns), run, wait_window, info, needs)
        return run

    return register


# -- reading an op's flows ----------------------------------------------------------------------


def of(op: Op, decision: str) -> list[Record]:
    return [r for r in op.flows if r["decision"] == decision]


def status_of(record: Record) -> int | None:
    status = record.get("vm_status" if record["decision"] == "client_routed" else "cp_status")
    return status if isinstance(status, int) else None


def short(flow_id: str | None) -> str:
    return (flow_id or "")[:8]


def on_vm(op: Op) -> Record:
    """The op's first VM request: the situation of every fault case (n/a when there is none)."""
    flows = of(op, "client_routed")
    if not flows:
        raise NotApplicable(
            f"the client sent {op.what} to the control plane, not to the VM: nothing to judge"
        )
    return flows[0]


def injected(op: Op, kind: str) -> Record:
    """The op's first VM request that the proxy answered with `kind`."""
    first = on_vm(op)
    hit = [r for r in of(op, "client_routed") if r.get("injected") == kind]
    if not hit:
        raise CaseError(f"the proxy did not answer {op.what} with {kind} (flow {short(first['flow_id'])})")
    return hit[0]


def expect_vm(out: Outcome, op: Op) -> None:
    cp = of(op, "client_cp")
    out.expect(bool(of(op, "client_routed")), f"{op.what} went to the control plane, not to the VM", *cp[:1])


def expect_cp(out: Outcome, op: Op) -> None:
    vm = of(op, "client_routed")
    out.expect(not vm and bool(op.flows), f"{op.what} went to the VM, not to the control plane", *vm[:1])


def expect_answer(out: Outcome, op: Op, record: Record) -> None:
    """The caller got the status this flow answered (an error when it answered nothing)."""
    want, side = status_of(record), "VM" if record["decision"] == "client_routed" else "control plane"
    if want is None:
        out.expect(op.status is None, f"the caller got {op.got()}, but the {side} answered nothing", record)
    else:
        out.expect(op.status == want, f"the caller got {op.got()}, but the {side} answered {want}", record)


def expect_last_answer(out: Outcome, op: Op) -> None:
    """The caller got the answer to the op's last request (after any retry or fallback)."""
    if op.flows:
        expect_answer(out, op, op.flows[-1])
    else:
        out.expect(False, f"the proxy saw no request for {op.what}")


def catalog() -> dict[str, Case]:
    """Every case, in the order the spec lists them."""
    for module in ("cases_routing", "cases_fallback"):  # importing a module registers its cases
        importlib.import_module(f".{module}", __package__)
    return CASES
