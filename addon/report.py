"""A QA report a person reads: one self-contained HTML page from decision logs.

Pure, no mitmproxy import: `scripts/report.py` and the command `browserrouting.report` both
call `write_report`. The page (Jinja2, autoescaped) holds a run header per log with the options
that matter, a timeline per run (a lane per browser session, a mark per flow placed by the time
its record was logged, the fallback's link to its re-issue, cache changes as ticks, each mark's
record as its SVG tooltip), the outbound requests per host and, for audit mode, the conformance
table. No network, no external asset, no script.

The log has one line per flow when its decision is final and one per cache change; a record
updated after its flow ended (an audit's `missing_fallback`) is logged again: the last line of a
flow wins, placed where its flow first ended. Records are shown as logged (redacted); a jwt or a
Bearer token that were somehow in clear would be cut here too.

Bounded for large logs: lanes beyond a budget fold into one, and a lane with more marks than
pixels (or beyond the page's budget of detailed marks) draws per-pixel-bucket counts instead.
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus, urlsplit

import jinja2

from . import paths
from .audit import NOTES, RULES
from .routes import redact

Record = dict[str, Any]

# -- page geometry and budgets ---------------------------------------------------

SVG_W = 1090
PLOT_X = 206  # where the time axis starts
PLOT_W = 864  # pixels of time
PAD = 7  # inner margin, so that marks at either end are whole
AXIS_H = 22
LANE_H = 50
ROW_Y = (12, 28, 42)  # VM requests, CP requests, cache changes (within a lane)
MAX_LANES = 240  # on the page, shared by the runs
MAX_DETAILED = 3000  # marks drawn one by one (each carries its record), on the page
MAX_BUCKETS = 15000  # aggregated buckets on the page
MAX_FINDINGS = 12  # story lines per run
MAX_FLOW_IDS = 20  # flow ids listed per broken rule
FOLDED = "\0folded"  # the key of the lane that holds the sessions beyond the budget (no session id)

# decision -> (row, shape); colours live in the template's CSS.
FLOW_STYLE = {
    "routed": (0, "circle"),
    "no_fallback": (0, "cross"),
    "fallback": (0, "diamond"),
    "client_routed": (0, "circle"),
    "passthrough": (1, "dot"),
    "reissue": (1, "triangle"),
    "client_cp": (1, "dot"),
    "client_fallback": (1, "triangle"),
}
CACHE_DECISIONS = ("route_cached", "route_evicted", "route_refused")
DECISION_ORDER = (
    "routed", "passthrough", "fallback", "no_fallback", "reissue",
    "client_routed", "client_cp", "client_fallback", *CACHE_DECISIONS,
)  # fmt: skip
VM_SIDE = frozenset({"routed", "no_fallback", "fallback", "client_routed"})
CP_SIDE = frozenset({"passthrough", "reissue", "client_cp", "client_fallback"})
AUDIT = frozenset({"client_routed", "client_cp", "client_fallback"})
ROUTE = frozenset({"routed", "passthrough", "fallback", "no_fallback", "reissue"})

OPTIONS = {  # the options that matter, as the header names them
    "mode": "mode",
    "control_plane": "CP origins",
    "subresources": "allowlist",
    "fallback": "fallback registry",
    "vm_hosts": "VM hosts",
    "audit_window": "audit window (ms)",
    "inject": "fault injection",
}

_JWT_PARAM = re.compile(r"((?:^|[?&\s\"'])jwt=)([^&\s\"'#]*)", re.IGNORECASE)
_BEARER = re.compile(r"(Bearer\s+)([^\s\"',;]+)", re.IGNORECASE)


# -- reading logs -------------------------------------------------------------------


def option_values(options: Mapping[str, object] | None) -> dict[str, str]:
    """The options that matter, by short name; `browserrouting_` prefixes are accepted."""
    found = {}
    for name, value in (options or {}).items():
        short = name.removeprefix("browserrouting_")
        if short in OPTIONS and value is not None:
            found[short] = str(value)
    return found


@dataclass
class Run:
    """One decision log: its flows (the last record of each) and its cache changes."""

    name: str
    label: str = ""
    options: dict[str, str] = field(default_factory=dict)  # given, not inferred
    flows: dict[str, Record] = field(default_factory=dict)  # flow id -> its last record
    placed: dict[str, float] = field(default_factory=dict)  # flow id -> ts of its first line
    relogged: dict[str, float] = field(default_factory=dict)  # flow id -> ts of its last line
    cache: list[Record] = field(default_factory=list)
    skipped: int = 0  # lines that are no record
    logged_at: dict[str, float] = field(default_factory=dict)  # fallbacks placed at their VM answer
    _last_ts: float = 0.0

    def add(self, line: str) -> None:
        if not line.strip():
            return
        try:
            record = json.loads(line)
        except ValueError:
            self.skipped += 1
            return
        if not isinstance(record, dict) or not isinstance(record.get("decision"), str):
            self.skipped += 1
            return
        ts = record.get("ts")
        if isinstance(ts, int | float) and not isinstance(ts, bool) and math.isfinite(ts):
            self._last_ts = float(ts)
        record["ts"] = self._last_ts
        if record["decision"].startswith("route_"):
            self.cache.append(record)
            return
        key = record.get("flow_id")
        key = key if isinstance(key, str) and key else f"line-{len(self.flows) + len(self.cache)}"
        if key in self.flows:
            self.relogged[key] = self._last_ts
            self.flows[key] = record
        else:
            self.flows[key] = record
            self.placed[key] = self._last_ts

    def finish(self) -> None:
        """A fallback's record is logged when the client has the CP's answer, after its re-issue;
        its VM answered when the route was evicted (browser_gone): the mark goes there, so that
        the link runs forward in time, from the VM's answer to the re-issue."""
        answered = {
            str(c["flow_id"]): c["ts"]
            for c in self.cache
            if c["decision"] == "route_evicted" and c.get("reason") == "browser_gone" and c.get("flow_id")
        }
        for flow_id, record in self.flows.items():
            if record["decision"] == "fallback" and flow_id in answered and flow_id not in self.logged_at:
                self.logged_at[flow_id] = self.placed[flow_id]
                self.placed[flow_id] = min(answered[flow_id], self.placed[flow_id])


def read_run(
    lines: Iterable[str], name: str, label: str = "", options: Mapping[str, object] | None = None
) -> Run:
    run = Run(name=name, label=label, options=option_values(options))
    for line in lines:
        run.add(line)
    run.finish()
    return run


def load_run(path: str | Path, label: str = "", options: Mapping[str, object] | None = None) -> Run:
    """A decision log from a file (OSError when it cannot be read)."""
    path = Path(path).expanduser()
    with path.open(encoding="utf-8", errors="backslashreplace") as lines:
        return read_run(lines, path.name, label, options)


# -- small helpers -----------------------------------------------------------------------


def scrub(text: str) -> str:
    """Cut a jwt query value or a Bearer token that is in clear; a redacted one (ending in
    `…`) stays as logged."""

    def jwt(m: re.Match[str]) -> str:
        value = unquote_plus(m.group(2))
        return m.group(0) if not value or value.endswith("…") else m.group(1) + redact(value)

    text = _JWT_PARAM.sub(jwt, text)
    return _BEARER.sub(lambda m: m.group(1) + "…", text)


def shown_record(record: Record) -> str:
    """A record as its tooltip shows it: JSON, every secret cut."""
    clean = {k: v for k, v in record.items() if k != "ts"}
    if isinstance(clean.get("jwt"), str) and clean["jwt"] and not clean["jwt"].endswith("…"):
        clean["jwt"] = redact(clean["jwt"])
    return scrub(json.dumps(clean, indent=1, ensure_ascii=False, default=str))


def host_of(url: object) -> str | None:
    """`host:port` as mitmproxy counts outbound requests, or None."""
    if not isinstance(url, str):
        return None
    scheme, sep, rest = url.partition("://")
    netloc = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    return _host(scheme, netloc) if sep else None


@functools.lru_cache(maxsize=4096)
def _host(scheme: str, netloc: str) -> str | None:
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    except ValueError:
        return None
    return f"{parts.hostname}:{port}" if parts.hostname and port else None


def origin_of(url: object) -> str | None:
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None
    except ValueError:
        return None


def path_of(url: object) -> str:
    """The path of a URL, without query and fragment (no parsing beyond that: it runs per flow)."""
    if not isinstance(url, str):
        return ""
    _, sep, rest = url.partition("://")
    if sep:
        slash = rest.find("/")
        rest = rest[slash:] if slash >= 0 else ""
    return rest.split("?", 1)[0].split("#", 1)[0]


def css_class(decision: str) -> str:
    return decision if decision in DECISION_ORDER else "other"


def offset(seconds: float) -> str:
    if seconds < 60:
        return f"+{seconds:.3f} s"
    minutes, rest = divmod(seconds, 60)
    return f"+{int(minutes)}:{rest:06.3f}"


def clock(ts: float) -> str:
    if ts <= 0:
        return "unknown time"
    moment = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d} UTC"


def short(text: str, size: int = 22) -> str:
    return text if len(text) <= size else text[: size - 1] + "…"


def session_of(record: Record) -> str | None:
    """The record's session; a flow with none (a create) takes the one session it cached."""
    session = record.get("session_id")
    if isinstance(session, str) and session:
        return session
    changes = record.get("cache")
    if isinstance(changes, list):
        found = {c.get("session_id") for c in changes if isinstance(c, dict)}
        if len(found) == 1 and isinstance(only := found.pop(), str) and only:
            return only
    return None


def violations_of(record: Record) -> list[str]:
    found = record.get("violations")
    return [str(v) for v in found] if isinstance(found, list) else []


def notes_of(record: Record) -> list[str]:
    found = record.get("notes")
    return [str(v) for v in found] if isinstance(found, list) else []


def status_text(value: object) -> str:
    return str(value) if value is not None else "no answer"


# -- what a run says ---------------------------------------------------------------------


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
    broken: dict[str, list[str]] = field(default_factory=lambda: {rule: [] for rule in RULES})
    checked: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)
    window_seen: float | None = None  # seconds: a missing_fallback reported that long after
    window_least: float | None = None  # seconds: a client_fallback that long after its VM answer
    sessions: set[str] = field(default_factory=set)

    @property
    def modes(self) -> list[str]:
        """The modes the records show: `route`, `audit`, or both (the option changed live)."""
        return [
            m for m, kinds in (("route", ROUTE), ("audit", AUDIT)) if any(self.decisions[k] for k in kinds)
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
        if decision == "route_refused":
            facts.refused_hosts.add(host or str(change.get("base_url")))
            continue
        if host:
            facts.vm_hosts.add(host)
        if isinstance(session, str) and (base := path_of(change.get("base_url"))):
            base_paths[session] = base.rstrip("/")
        if decision == "route_cached" and (origin := origin_of(change.get("url"))):
            facts.cp_origins.add(origin)
        if decision == "route_evicted" and change.get("reason") == "browser_gone" and change.get("flow_id"):
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
        if record.get("injected"):
            facts.injected[str(record["injected"])] += 1
        elif host := host_of(vm_url if vm_url else url):
            facts.outbound[host] += 1
            if decision in ("reissue", "client_fallback"):
                facts.reissues[host] += 1
        if vm_url and (host := host_of(vm_url)):
            facts.vm_hosts.add(host)
        if decision in CP_SIDE and (origin := origin_of(url)):
            facts.cp_origins.add(origin)
            if host := host_of(url):
                facts.cp_hosts.add(host)
        kinds = ("routed", "no_fallback", "fallback", "client_routed")
        tail = (
            _tail(record, base_paths)
            if decision in kinds or record.get("reason") == "not_allowlisted"
            else None
        )
        if tail is not None:
            if decision in ("routed", "no_fallback", "fallback") or (
                decision == "client_routed" and "not_allowlisted" not in violations_of(record)
            ):
                facts.routed_tails.add(tail)
            if (decision == "passthrough" and record.get("reason") == "not_allowlisted") or (
                decision == "client_routed" and "not_allowlisted" in violations_of(record)
            ):
                facts.unlisted_tails.add(tail)
            if decision == "fallback" or "missing_fallback" in violations_of(record):
                facts.eligible_tails.add(tail)
            if decision == "no_fallback" and record.get("reason") == "not_eligible":
                facts.ineligible_tails.add(tail)
        if decision in AUDIT:
            _audit_facts(facts, flow_id, record, gone_flows)
            if decision == "client_fallback" and isinstance(record.get("serves"), str):
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
    if record["decision"] == "client_routed":
        base, path = base_paths.get(str(record.get("session_id"))), path_of(record.get("vm_url"))
        if base is not None and path.startswith(base + "/"):
            return paths.normalize_tail(path[len(base) + 1 :])
        return None
    return _cp_tail(path_of(record.get("url")))


@functools.lru_cache(maxsize=16384)
def _cp_tail(path: str) -> str | None:
    sub = paths.parse_subresource_path(path)
    return paths.normalize_tail(sub.tail) if sub else None


def _audit_facts(facts: Facts, flow_id: str, record: Record, gone_flows: set[str]) -> None:
    """The conformance table, approximated from the records: each rule counts the audited
    flows of the kind it applies to as checked."""
    decision = record["decision"]
    if decision == "client_routed":
        for rule in ("api_key_on_vm", "jwt_mismatch", "not_allowlisted", "stale_route"):
            facts.checked[rule] += 1
        gone = flow_id in gone_flows or any(
            c.get("reason") == "browser_gone" for c in record.get("cache") or () if isinstance(c, dict)
        )
        if gone or "missing_fallback" in violations_of(record):
            facts.checked["missing_fallback"] += 1
    else:
        facts.checked["jwt_on_cp"] += 1
        if decision == "client_cp":
            facts.checked["not_routed"] += 1
        else:
            facts.checked["unexpected_fallback"] += 1
            facts.checked["repeated_fallback"] += 1
    for rule in violations_of(record):
        facts.broken.setdefault(rule, []).append(flow_id)
    for note in notes_of(record):
        facts.notes[note] += 1


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
            "answered by the proxy: " + ", ".join(f"{k} ×{n}" for k, n in sorted(facts.injected.items()))
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
        if r["decision"] in ("fallback", "no_fallback") or r.get("violations"):
            found.append((run.placed[flow_id], 0, r))
    found += [(c["ts"], 1, c) for c in run.cache if c["decision"] == "route_refused"]
    found.sort(key=lambda item: (item[0], item[1]))
    lines = [scrub(f"{offset(at - t0)}  {finding(r)}") for at, _, r in found[:MAX_FINDINGS]]
    if len(found) > MAX_FINDINGS:
        lines.append(f"… and {len(found) - MAX_FINDINGS} more (see the timeline and the tables)")
    return lines


def finding(r: Record) -> str:
    d, session = r["decision"], short(str(r.get("session_id") or "-"), 14)
    if d == "route_refused":
        return f"route refused ({r.get('reason')}) for {session}: {r.get('base_url')}"
    where = f"{r.get('method', '')} {path_of(r.get('url'))}".strip()
    injected = f" (injected {r['injected']})" if r.get("injected") else ""
    if d == "fallback":
        cp = r.get("cp_status")
        text = f"fallback on {session}: VM {status_text(r.get('vm_status'))} browser_gone{injected}"
        return text + f" → CP re-issue {cp if cp is not None else 'failed'}, {where}"
    if d == "no_fallback":
        text = f"no_fallback ({r.get('reason')}) on {session}: VM {status_text(r.get('vm_status'))}"
        return text + f"{injected} kept, {where}"
    answer = (
        f"VM {status_text(r.get('vm_status'))}"
        if d == "client_routed"
        else f"CP {status_text(r.get('cp_status'))}"
    )
    return f"{', '.join(violations_of(r))} on {session}: {d}, {answer}{injected}, {where}"


def summary_chips(facts: Facts) -> list[str]:
    chips = []
    for decision in DECISION_ORDER:
        if n := facts.decisions[decision]:
            reasons = facts.reasons.get(decision)
            detail = ", ".join(f"{k} {v}" for k, v in reasons.most_common(4)) if reasons else ""
            chips.append(f"{decision} {n}" + (f" ({detail})" if detail else ""))
    for decision, n in sorted(facts.decisions.items()):
        if decision not in DECISION_ORDER:
            chips.append(f"{decision} {n}")
    return chips


# -- the timeline --------------------------------------------------------------------------


@dataclass(slots=True)
class Item:
    """One thing on a lane: a flow (row 0 or 1) or a cache change (row 2)."""

    ts: float
    row: int
    decision: str
    flow_id: str | None
    record: Record
    bad: bool  # has a violation
    x: int = 0


@dataclass
class Lane:
    key: str  # session id, "" for flows of no session, FOLDED for the folded sessions
    items: list[Item] = field(default_factory=list)
    folded: int = 0  # sessions in the folded lane
    detailed: bool = True

    @property
    def first(self) -> float:
        return min(item.ts for item in self.items) if self.items else 0.0

    @property
    def interest(self) -> int:
        return sum(
            1 for i in self.items if i.bad or i.decision in ("fallback", "no_fallback", "route_refused")
        )


def lanes_of(run: Run) -> list[Lane]:
    lanes: dict[str, Lane] = {}
    for flow_id, record in run.flows.items():
        row = FLOW_STYLE.get(record["decision"], (1, "square"))[0]
        key = session_of(record) or ""
        item = Item(
            run.placed[flow_id], row, record["decision"], flow_id, record, bool(violations_of(record))
        )
        lanes.setdefault(key, Lane(key)).items.append(item)
    for change in run.cache:
        session = change.get("session_id")
        key = session if isinstance(session, str) and session else ""
        lanes.setdefault(key, Lane(key)).items.append(
            Item(change["ts"], 2, change["decision"], None, change, False)
        )
    return sorted(lanes.values(), key=lambda lane: (lane.first, lane.key))


def fold(lanes: list[Lane], cap: int) -> list[Lane]:
    """At most `cap` lanes: the most telling ones, in time order; the rest fold into one."""
    if len(lanes) <= cap:
        return lanes
    ranked = sorted(lanes, key=lambda lane: (-lane.interest, -len(lane.items), lane.first))
    kept, rest = ranked[: cap - 1], ranked[cap - 1 :]
    other = Lane(FOLDED, [item for lane in rest for item in lane.items], folded=len(rest), detailed=False)
    return [*sorted(kept, key=lambda lane: (lane.first, lane.key)), other]


def nice_step(span: float) -> float:
    raw = max(span / 8, 1e-3)
    exp = 10.0 ** math.floor(math.log10(raw))
    return float(next(m * exp for m in (1, 2, 5, 10) if m * exp >= raw))


def axis(span: float) -> list[dict[str, Any]]:
    if span <= 0:
        return [{"x": PLOT_X + PLOT_W // 2, "text": "+0 s"}]
    step = nice_step(span)
    decimals = max(0, -math.floor(math.log10(step)))
    ticks: list[dict[str, Any]] = []
    at = 0.0
    while at <= span * 1.0001 and len(ticks) < 20:
        x = PLOT_X + PAD + round(at / span * (PLOT_W - 2 * PAD))
        ticks.append({"x": x, "text": f"+{at:.{decimals}f} s"})
        at += step
    return ticks


CACHE_SHAPES = {"route_cached": "cached", "route_evicted": "evicted", "route_refused": "refused"}


def mark_of(item: Item, lane_y: int, level: int, t0: float, logged: float | None) -> dict[str, Any]:
    record, decision = item.record, item.decision
    shape = (
        FLOW_STYLE.get(decision, (1, "square"))[1] if item.row < 2 else CACHE_SHAPES.get(decision, "refused")
    )
    dy = (0, -5, 5)[level] if item.row < 2 else 0
    first = f"{decision}" + (f" ({record['reason']})" if record.get("reason") else "")
    first += f" · {offset(item.ts - t0)}"
    first += f" (the VM's answer; logged {offset(logged - t0)})" if logged is not None else ""
    if item.row < 2:
        first += f" · {record.get('method', '')} {path_of(record.get('url'))}"
    return {
        "x": item.x,
        "y": ROW_Y[item.row] + dy,
        "abs_y": lane_y + ROW_Y[item.row] + dy,
        "shape": shape,
        "cls": css_class(decision),
        "decision": decision,
        "flow": item.flow_id or "",
        "bad": item.bad,
        "injected": bool(record.get("injected")),
        "cache": item.row == 2,
        "title": f"{first}\n{shown_record(record)}",
    }


def bucket_title(kinds: Counter[str], bad: int, start: float, end: float, cache: bool) -> str:
    n = sum(kinds.values())
    what = "cache changes" if cache else "flows"
    text = f"{n} {what}, {offset(start)} – {offset(end)}: " + ", ".join(
        f"{k} {v}" for k, v in kinds.most_common()
    )
    return text + (f"; {bad} with violations" if bad else "")


def _toward(x: float, y: float, tx: float, ty: float, by: float) -> tuple[float, float]:
    """(x, y) moved `by` pixels toward (tx, ty)."""
    length = math.hypot(tx - x, ty - y)
    if length <= by:
        return x, y
    return x + (tx - x) * by / length, y + (ty - y) * by / length


@dataclass
class Timeline:
    lanes: list[dict[str, Any]]
    links: list[dict[str, Any]]
    windows: list[dict[str, Any]]
    ticks: list[dict[str, Any]]
    height: int
    undrawn_links: int


def place(run: Run, lanes: list[Lane]) -> tuple[float, float]:
    stamps = [item.ts for lane in lanes for item in lane.items] + list(run.relogged.values())
    t0, t1 = (min(stamps), max(stamps)) if stamps else (0.0, 0.0)
    span = t1 - t0
    for lane in lanes:
        for item in lane.items:
            frac = (item.ts - t0) / span if span > 0 else 0.5
            item.x = PLOT_X + PAD + round(frac * (PLOT_W - 2 * PAD))
    return t0, span


def choose_detail(all_lanes: Sequence[Lane]) -> None:
    """Lanes with more marks than pixels aggregate; so do the largest ones beyond the page's
    budget of detailed marks."""
    budget = MAX_DETAILED
    for lane in sorted(all_lanes, key=lambda lane: len(lane.items)):
        if lane.detailed and len(lane.items) <= PLOT_W and len(lane.items) <= budget:
            budget -= len(lane.items)
        else:
            lane.detailed = False


def bucket_width(all_lanes: Sequence[Lane]) -> int:
    """The narrowest bucket (1 px first) that keeps the page's buckets within budget."""
    aggregated = [lane for lane in all_lanes if not lane.detailed]
    for width in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128):
        seen = {(id(lane), i.row, i.x // width) for lane in aggregated for i in lane.items}
        if len(seen) <= MAX_BUCKETS:
            return width
    return PLOT_W


def timeline(run: Run, lanes: list[Lane], t0: float, span: float, width: int) -> Timeline:
    drawn: dict[str, tuple[int, int]] = {}  # flow id -> mark position
    out = []
    for index, lane in enumerate(lanes):
        lane_y = AXIS_H + index * LANE_H
        entry: dict[str, Any] = {
            "y": lane_y,
            "session": lane.key if lane.key not in ("", FOLDED) else "",
            "kind": {"": "no-session", FOLDED: "folded"}.get(lane.key, "session"),
            "label": {"": "(no session)", FOLDED: f"{lane.folded} more sessions"}.get(
                lane.key, short(lane.key)
            ),
            "full": lane.key or "flows that name no session",
            "marks": [],
            "buckets": [],
            "detailed": lane.detailed,
        }
        flows = [i for i in lane.items if i.row < 2]
        kinds = Counter(i.decision for i in flows)
        bad = sum(1 for i in flows if i.bad)
        entry["sub"] = f"{len(flows)} flow{'s' if len(flows) != 1 else ''}"
        notable = [f"{kinds[k]} {k}" for k in ("fallback", "no_fallback") if kinds[k]]
        entry["sub2"] = ", ".join(notable + ([f"{bad} violating"] if bad else []))
        if lane.key == FOLDED:
            entry["full"] = (
                f"{lane.folded} sessions folded into one lane (the page shows at most {MAX_LANES} lanes)"
            )
        if lane.detailed:
            last: dict[tuple[int, int], int] = {}
            for item in sorted(lane.items, key=lambda i: (i.row, i.x)):
                level = 0
                if item.row < 2:
                    free = [lvl for lvl in (0, 1, 2) if item.x - last.get((item.row, lvl), -99) >= 9]
                    level = free[0] if free else 0
                    last[(item.row, level)] = item.x
                logged = run.logged_at.get(item.flow_id) if item.flow_id else None
                mark = mark_of(item, lane_y, level, t0, logged)
                entry["marks"].append(mark)
                if item.flow_id:
                    drawn[item.flow_id] = (item.x, mark["abs_y"])
        else:
            groups: dict[tuple[int, int], list[Item]] = defaultdict(list)
            for item in lane.items:
                groups[(item.row, item.x // width)].append(item)
            biggest = max((len(g) for g in groups.values()), default=1)
            for (row, bucket), items in sorted(groups.items()):
                kinds = Counter(i.decision for i in items)
                bad = sum(1 for i in items if i.bad)
                height = 4 + round(8 * math.log1p(len(items)) / math.log1p(biggest))
                entry["buckets"].append({
                    "x": bucket * width,  # pixels from the svg's left, as each item's x
                    "w": max(width, 1),
                    "y": ROW_Y[row] - height / 2,
                    "h": height,
                    "cls": css_class(kinds.most_common(1)[0][0]),
                    "count": len(items),
                    "bad": bad,
                    "title": bucket_title(
                        kinds, bad, min(i.ts for i in items) - t0, max(i.ts for i in items) - t0, row == 2
                    ),
                })  # fmt: skip
        out.append(entry)
    links, undrawn = [], 0
    pairs: dict[tuple[str, str], None] = {}  # (VM answer, CP re-issue), in log order
    for flow_id, record in run.flows.items():
        d = record["decision"]
        if d == "fallback" and isinstance(record.get("reissue_flow"), str):
            pairs.setdefault((flow_id, record["reissue_flow"]))
        elif d in ("reissue", "client_fallback") and isinstance(record.get("serves"), str):
            pairs.setdefault((record["serves"], flow_id))
    for src, dst in pairs:
        if src in drawn and dst in drawn:
            (x1, y1), (x2, y2) = drawn[src], drawn[dst]
            cx: float
            cy: float
            if abs(x2 - x1) < 40:  # close in time: a short bow out to the right, visible as such
                cx, cy = max(x1, x2) + 14, (y1 + y2) / 2
            else:
                cx, cy = (x1 + x2) / 2, min(y1, y2) - 10
            # Start and end at the marks' edges, so that the arrow hides neither.
            sx, sy = _toward(x1, y1, cx, cy, 6)
            ex, ey = _toward(x2, y2, cx, cy, 7)
            cp = run.flows.get(dst, {}).get("cp_status")
            title = (
                f"the VM's answer of flow {src} was served by the CP re-issue {dst} (CP {status_text(cp)})"
            )
            d = f"M{sx:.1f},{sy:.1f} Q{cx:.1f},{cy:.1f} {ex:.1f},{ey:.1f}"
            links.append({"from": src, "to": dst, "d": d, "title": title})
        elif src in run.flows or dst in run.flows:
            undrawn += 1
    windows = []
    for flow_id, ended in run.relogged.items():
        record = run.flows[flow_id]
        if "missing_fallback" in violations_of(record) and flow_id in drawn:
            x1, y = drawn[flow_id]
            frac = (ended - t0) / span if span > 0 else 0.5
            x2 = PLOT_X + PAD + round(frac * (PLOT_W - 2 * PAD))
            waited = offset(ended - run.placed[flow_id])[1:]
            title = (
                f"no fallback within the audit window: missing_fallback reported {waited} after the answer"
            )
            windows.append({"x1": x1, "x2": x2, "y": y, "flow": flow_id, "title": title})
    height = AXIS_H + len(lanes) * LANE_H + 4
    return Timeline(out, links, windows, axis(span), height, undrawn)


# -- the page --------------------------------------------------------------------------------


def hosts_table(runs: Sequence[Run], all_facts: Sequence[Facts]) -> dict[str, Any]:
    totals: Counter[str] = Counter()
    for facts in all_facts:
        totals.update(facts.outbound)
    biggest = max(totals.values(), default=1)
    rows = []
    for host, total in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0])):
        vm = any(host in f.vm_hosts for f in all_facts)
        cp = any(host in f.cp_hosts for f in all_facts)
        side = "VM" if vm and not cp else "CP" if cp and not vm else "VM and CP" if vm else "?"
        rows.append({
            "host": host,
            "side": side,
            "per_run": [f.outbound[host] for f in all_facts],
            "total": total,
            "reissues": sum(f.reissues[host] for f in all_facts),
            "bar": max(1, round(80 * total / biggest)),
        })  # fmt: skip
    injected = sum(sum(f.injected.values()) for f in all_facts)
    return {"rows": rows, "injected": injected, "runs": len(runs)}


def conformance(facts: Facts) -> dict[str, Any]:
    rules = []
    for rule in (*RULES, *(r for r in facts.broken if r not in RULES)):
        broken = facts.broken.get(rule, [])
        rules.append({
            "rule": rule,
            "checked": facts.checked[rule],
            "broken": len(broken),
            "flows": broken[:MAX_FLOW_IDS],
            "more": max(0, len(broken) - MAX_FLOW_IDS),
        })  # fmt: skip
    notes = [(n, facts.notes[n]) for n in (*NOTES, *(n for n in facts.notes if n not in NOTES))]
    return {"rules": rules, "notes": notes}


_ENV: jinja2.Environment | None = None


def environment() -> jinja2.Environment:
    global _ENV
    if _ENV is None:
        _ENV = jinja2.Environment(
            loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
    return _ENV


def render(runs: Sequence[Run], title: str = "", now: float | None = None) -> str:
    """The page for these runs (one per decision log)."""
    all_facts = [facts_of(run) for run in runs]
    cap = max(12, MAX_LANES // max(1, len(runs)))
    run_lanes = [fold(lanes_of(run), cap) for run in runs]
    placed = [place(run, lanes) for run, lanes in zip(runs, run_lanes, strict=True)]
    every_lane = [lane for lanes in run_lanes for lane in lanes]
    choose_detail(every_lane)
    width = bucket_width(every_lane)
    views: list[dict[str, Any]] = []
    for index, (run, facts, lanes, (t0, span)) in enumerate(
        zip(runs, all_facts, run_lanes, placed, strict=True)
    ):
        views.append({
            "index": index + 1,
            "name": run.name,
            "label": run.label or run.name,
            "start": clock(t0),
            "span": f"{span:.3f} s" if span < 120 else f"{span / 60:.1f} min",
            "flows": len(run.flows),
            "relogged": len(run.relogged),
            "cache": len(run.cache),
            "sessions": len(facts.sessions),
            "skipped": run.skipped,
            "options": header_options(run, facts),
            "chips": summary_chips(facts),
            "findings": findings(run, t0),
            "timeline": timeline(run, lanes, t0, span, width),
            "audit": conformance(facts) if "audit" in facts.modes else None,
            "decisions": facts.decisions,
        })  # fmt: skip
    decisions = [d for d in DECISION_ORDER if any(f.decisions[d] for f in all_facts)]
    decisions += sorted({d for f in all_facts for d in f.decisions if d not in DECISION_ORDER})
    aggregated = any(not lane.detailed for lane in every_lane)
    return environment().get_template("report.html.j2").render(
        title=title or "Browser routing QA report",
        generated=clock(now if now is not None else datetime.datetime.now(datetime.UTC).timestamp()),
        runs=views,
        hosts=hosts_table(runs, all_facts),
        decisions=decisions,
        inferred=any(o["inferred"] for v in views for o in v["options"]),
        aggregated=aggregated,
        bucket_width=width,
        geometry={
            "svg_w": SVG_W, "plot_x": PLOT_X, "plot_w": PLOT_W, "rows": ROW_Y, "lane_h": LANE_H,
        },
    )  # fmt: skip


@dataclass
class LogSource:
    """A decision log to report on, with how to call it and the options it was written with."""

    path: str | Path
    label: str = ""
    options: Mapping[str, object] | None = None


def write_report(logs: Sequence[LogSource], out: str | Path, title: str = "") -> Path:
    """Read the logs, write the page to `out` (its folder created), return its path.
    OSError when a log cannot be read or the page cannot be written."""
    runs = [load_run(log.path, log.label, log.options) for log in logs]
    target = Path(out).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render(runs, title), encoding="utf-8")
    return target
