"""What a QA report's run says: its counts, hosts and sessions and the options its records imply,
in one pass over its records; and its header: the options (given or inferred), the summary chips,
the findings a reviewer looks for. Pure, no mitmproxy import."""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import paths
from ..comments import injected as injected_step
from ..decisions import AUDIT, CP_SIDE, INJECTED_BUT_SENT, ORDER, ROUTE_MODE, Decision
from .conformance import Conformance
from .log import (
    OPTIONS,
    Record,
    Run,
    host_of,
    origin_of,
    path_of,
    session_of,
    violations_of,
)
from .text import offset, scrub, short, status_text

MAX_FINDINGS = 12  # story lines per run


@dataclass
class Facts:
    """Counts and inferences of one run, in one pass over its records."""

    decisions: Counter[str] = field(default_factory=Counter)
    reasons: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    outbound: Counter[str] = field(default_factory=Counter)
    reissues: Counter[str] = field(default_factory=Counter)  # CP re-issues, by host
    injected: Counter[str] = field(default_factory=Counter)
    vm_hosts: set[str] = field(default_factory=set)
    cp_hosts: set[str] = field(default_factory=set)
    cp_origins: set[str] = field(default_factory=set)
    refused_hosts: set[str] = field(default_factory=set)
    routed_tails: set[str] = field(default_factory=set)
    unlisted_tails: set[str] = field(default_factory=set)
    eligible_tails: set[str] = field(default_factory=set)
    ineligible_tails: set[str] = field(default_factory=set)
    conformance: Conformance = field(default_factory=Conformance)  # of the audited flows
    window_seen: float | None = None  # seconds: a missing_fallback reported that long after
    window_least: float | None = None  # seconds: a client_fallback that long after its VM answer
    sessions: set[str] = field(default_factory=set)

    @property
    def modes(self) -> list[str]:
        """The modes the records show: `route`, `audit`, or both (the option changed live)."""
        return [
            m
            for m, kinds in (("route", ROUTE_MODE), ("audit", AUDIT))
            if any(self.decisions[k] for k in kinds)
        ]


def facts_of(run: Run) -> Facts:
    facts = Facts()
    base_paths: dict[str, str] = {}  # session -> its route's base_url path
    gone_flows: set[str] = set()  # flows whose answer evicted a route as browser_gone
    for change in run.cache:
        decision = change["decision"]
        facts.decisions[decision] += 1
        if change.get("reason"):
            facts.reasons[decision][str(change["reason"])] += 1
        if isinstance(session := change.get("session_id"), str) and session:
            facts.sessions.add(session)
        host = host_of(change.get("base_url"))
        if decision == Decision.ROUTE_REFUSED:
            facts.refused_hosts.add(host or str(change.get("base_url")))
            continue
        if host:
            facts.vm_hosts.add(host)
        if isinstance(session, str) and (base := path_of(change.get("base_url"))):
            base_paths[session] = base.rstrip("/")
        if decision == Decision.ROUTE_CACHED and (origin := origin_of(change.get("url"))):
            facts.cp_origins.add(origin)
        if (
            decision == Decision.ROUTE_EVICTED
            and change.get("reason") == "browser_gone"
            and change.get("flow_id")
        ):
            gone_flows.add(str(change["flow_id"]))
    served: dict[str, float] = {}
    for flow_id, record in run.flows.items():
        decision = record["decision"]
        facts.decisions[decision] += 1
        if record.get("reason"):
            facts.reasons[decision][str(record["reason"])] += 1
        if session := session_of(record):
            facts.sessions.add(session)
        url, vm_url = record.get("url"), record.get("vm_url")
        if kind := record.get("injected"):
            facts.injected[str(kind)] += 1
        if (not kind or kind in INJECTED_BUT_SENT) and (host := host_of(vm_url if vm_url else url)):
            facts.outbound[host] += 1
            if decision in (Decision.REISSUE, Decision.CLIENT_FALLBACK):
                facts.reissues[host] += 1
        if vm_url and (host := host_of(vm_url)):
            facts.vm_hosts.add(host)
        if decision in CP_SIDE and (origin := origin_of(url)):
            facts.cp_origins.add(origin)
            if host := host_of(url):
                facts.cp_hosts.add(host)
        kinds = (Decision.ROUTED, Decision.NO_FALLBACK, Decision.FALLBACK, Decision.CLIENT_ROUTED)
        tail = (
            _tail(record, base_paths)
            if decision in kinds or record.get("reason") == "not_allowlisted"
            else None
        )
        if tail is not None:
            if decision in (Decision.ROUTED, Decision.NO_FALLBACK, Decision.FALLBACK) or (
                decision == Decision.CLIENT_ROUTED and "not_allowlisted" not in violations_of(record)
            ):
                facts.routed_tails.add(tail)
            if (decision == Decision.PASSTHROUGH and record.get("reason") == "not_allowlisted") or (
                decision == Decision.CLIENT_ROUTED and "not_allowlisted" in violations_of(record)
            ):
                facts.unlisted_tails.add(tail)
            if decision == Decision.FALLBACK or "missing_fallback" in violations_of(record):
                facts.eligible_tails.add(tail)
            if decision == Decision.NO_FALLBACK and record.get("reason") == "not_eligible":
                facts.ineligible_tails.add(tail)
        if decision in AUDIT:
            facts.conformance.count(flow_id, record, gone_flows)
            if decision == Decision.CLIENT_FALLBACK and isinstance(record.get("serves"), str):
                served[record["serves"]] = run.placed[flow_id]
        if "missing_fallback" in violations_of(record) and flow_id in run.relogged:
            waited = run.relogged[flow_id] - run.placed[flow_id]
            facts.window_seen = max(facts.window_seen or 0.0, waited)
    for vm_flow, at in served.items():
        if vm_flow in run.placed:
            waited = max(0.0, at - run.placed[vm_flow])
            facts.window_least = max(facts.window_least or 0.0, waited)
    return facts


def _tail(record: Record, base_paths: Mapping[str, str]) -> str | None:
    """`{subresource}{suffix}` of a flow: from the CP path, or the VM path under its route."""
    if record["decision"] == Decision.CLIENT_ROUTED:
        base, path = base_paths.get(str(record.get("session_id"))), path_of(record.get("vm_url"))
        if base is not None and path.startswith(base + "/"):
            return paths.normalize_tail(path[len(base) + 1 :])
        return None
    return _cp_tail(path_of(record.get("url")))


@functools.lru_cache(maxsize=16384)
def _cp_tail(path: str) -> str | None:
    sub = paths.parse_subresource_path(path)
    return paths.normalize_tail(sub.tail) if sub else None


# -- the run's header ------------------------------------------------------------------------


def header_options(run: Run, facts: Facts) -> list[dict[str, Any]]:
    """Each option that matters: as given, else inferred from the records (and said so)."""
    audit = "audit" in facts.modes or run.options.get("mode") == "audit"

    def listed(items: Iterable[str]) -> str:
        return ", ".join(sorted(items)) or "none seen"

    inferred = {
        "mode": " and ".join(facts.modes) or "unknown (no flow records)",
        "control_plane": listed(facts.cp_origins),
        "vm_hosts": "seen: " + listed(facts.vm_hosts)
        + (f"; refused: {listed(facts.refused_hosts)}" if facts.refused_hosts else ""),
        "subresources": "covers " + listed(facts.routed_tails)
        + (f"; not {listed(facts.unlisted_tails)}" if facts.unlisted_tails else ""),
        "fallback": "includes " + listed(facts.eligible_tails)
        + (f"; not {listed(facts.ineligible_tails)}" if facts.ineligible_tails else ""),
        "inject": (
            "injected: " + ", ".join(f"{k} ×{n}" for k, n in sorted(facts.injected.items()))
            if facts.injected else "none seen"
        ),
    }  # fmt: skip
    # A missing_fallback is reported when the window ends (or earlier, at the session's next VM
    # request): the longest wait is the window; a paired fallback is within it.
    if facts.window_seen is not None:
        inferred["audit_window"] = (
            f"≈ {facts.window_seen * 1000:.0f} (the longest wait for a missing fallback)"
        )
    elif facts.window_least is not None:
        inferred["audit_window"] = f"≥ {facts.window_least * 1000:.0f} (a fallback that late was paired)"
    else:
        inferred["audit_window"] = "not known from the records"
    rows = []
    for key, name in OPTIONS.items():
        if key == "audit_window" and not audit:
            continue
        given = key in run.options
        value = (run.options[key] or "(empty)") if given else inferred[key]
        rows.append({"name": name, "value": value, "inferred": not given})
    return rows


def findings(run: Run, t0: float) -> list[str]:
    """What happened that a reviewer looks for, in time order, bounded."""
    found: list[tuple[float, int, Record]] = []  # (when, 0 for a flow / 1 for a change, record)
    for flow_id, r in run.flows.items():
        if r["decision"] in (Decision.FALLBACK, Decision.NO_FALLBACK) or r.get("violations"):
            found.append((run.placed[flow_id], 0, r))
    found += [(c["ts"], 1, c) for c in run.cache if c["decision"] == Decision.ROUTE_REFUSED]
    found.sort(key=lambda item: (item[0], item[1]))
    lines = [scrub(f"{offset(at - t0)}  {finding(r)}") for at, _, r in found[:MAX_FINDINGS]]
    if len(found) > MAX_FINDINGS:
        lines.append(f"… and {len(found) - MAX_FINDINGS} more (see the timeline and the tables)")
    return lines


def finding(r: Record) -> str:
    d, session = r["decision"], short(str(r.get("session_id") or "-"), 14)
    if d == Decision.ROUTE_REFUSED:
        return f"route refused ({r.get('reason')}) for {session}: {r.get('base_url')}"
    where = f"{r.get('method', '')} {path_of(r.get('url'))}".strip()
    injected = f" (injected {step})" if (step := injected_step(r)) else ""
    if d == Decision.FALLBACK:
        cp = r.get("cp_status")
        text = f"fallback on {session}: VM {status_text(r.get('vm_status'))} browser_gone{injected}"
        return text + f" → CP re-issue {cp if cp is not None else 'failed'}, {where}"
    if d == Decision.NO_FALLBACK:
        text = f"no_fallback ({r.get('reason')}) on {session}: VM {status_text(r.get('vm_status'))}"
        return text + f"{injected} kept, {where}"
    answer = (
        f"VM {status_text(r.get('vm_status'))}"
        if d == Decision.CLIENT_ROUTED
        else f"CP {status_text(r.get('cp_status'))}"
    )
    return f"{', '.join(violations_of(r))} on {session}: {d}, {answer}{injected}, {where}"


def summary_chips(facts: Facts) -> list[str]:
    chips = []
    for decision in ORDER:
        if n := facts.decisions[decision]:
            reasons = facts.reasons.get(decision)
            detail = ", ".join(f"{k} {v}" for k, v in reasons.most_common(4)) if reasons else ""
            chips.append(f"{decision} {n}" + (f" ({detail})" if detail else ""))
    for decision, n in sorted(facts.decisions.items()):
        if decision not in ORDER:
            chips.append(f"{decision} {n}")
    return chips
