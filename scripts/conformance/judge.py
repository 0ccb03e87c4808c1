"""A case's verdict: run it, then decide from the violations it owns, the problems it found with
what the caller got, and why it could not be judged. A violation another case owns is reported
with the verdict but does not decide it."""

from __future__ import annotations

import fnmatch
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .caserun import CaseError, CaseRun, ClientContext, NotApplicable
from .cases import Case, catalog, short
from .driver import DriverError
from .proxy import RuleRefused

log = logging.getLogger(__name__)

VERDICTS = ("pass", "fail", "n/a", "expected", "error", "info")
Finding = tuple[str, str]  # (violation, flow id)


@dataclass
class Verdict:
    case: str
    verdict: str
    why: str = ""  # one line: what failed, why n/a, the error, what the client does
    violations: list[Finding] = field(default_factory=list)  # the ones this case owns
    others: list[Finding] = field(default_factory=list)  # seen, owned by other cases
    problems: list[tuple[str, str | None]] = field(default_factory=list)  # what the caller got, wrongly
    flows: list[str] = field(default_factory=list)  # the case's flows, in request order
    failing_flow: str | None = None  # the request the repro's curl line replays
    repro: dict[str, str] = field(default_factory=dict)  # "har" and "curl": paths of the files
    seconds: float = 0.0
    driver_failed: bool = False  # the error was the driver's: it is started again for the next case

    @property
    def failed(self) -> bool:
        return self.verdict in ("fail", "error")


def owners(rule: str) -> list[str]:
    return [c.id for c in catalog().values() if rule in c.owns]


def run_case(ctx: ClientContext, case: Case) -> Verdict:
    started = time.monotonic()
    c = CaseRun(ctx, case.wait_window)
    try:
        for need in case.needs:
            c.need(need)
        outcome = case.run(c)
    except NotApplicable as e:
        return Verdict(case.id, "n/a", str(e), flows=[r["flow_id"] for r in c.flows], seconds=_since(started))
    except (CaseError, DriverError, RuleRefused) as e:
        flows = [r["flow_id"] for r in c.flows]
        return Verdict(case.id, "error", str(e), flows=flows, seconds=_since(started),
                       driver_failed=isinstance(e, DriverError))  # fmt: skip
    finally:
        ctx.proxy.clear()
    verdict = decide(case, c, outcome.problems, outcome.info)
    verdict.seconds = _since(started)
    return verdict


def decide(case: Case, c: CaseRun, problems: list[tuple[str, str | None]], info: str | None) -> Verdict:
    seen = [(v, r["flow_id"]) for r in c.flows for v in r.get("violations") or []]
    owned = [f for f in seen if f[0] in case.owns]
    verdict = Verdict(
        case.id, "pass", violations=owned, others=[f for f in seen if f[0] not in case.owns],
        problems=problems, flows=[r["flow_id"] for r in c.flows],
    )  # fmt: skip
    if case.info:
        verdict.verdict, verdict.why = "info", info or ""
    elif owned or problems:
        verdict.verdict = "fail"
        verdict.failing_flow = (owned[0][1] if owned else None) or next((f for _, f in problems if f), None)
        verdict.why = "; ".join(
            [f"{rule} (flow {short(flow)})" for rule, flow in owned]
            + [problem + (f" (flow {short(flow)})" if flow else "") for problem, flow in problems]
        )
    if verdict.others:
        also = ", ".join(
            f"{rule} (flow {short(flow)}, {' or '.join(owners(rule))})" for rule, flow in verdict.others
        )
        verdict.why = "; ".join(filter(None, [verdict.why, f"also seen: {also}"]))
    return verdict


def _since(started: float) -> float:
    return round(time.monotonic() - started, 2)


# -- --expect ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """A known failure: `CLIENT CASE`, each a glob (`*` for any), from an --expect file."""

    client: str
    case: str
    line: int

    def matches(self, client: str, case: str) -> bool:
        return fnmatch.fnmatchcase(client, self.client) and fnmatch.fnmatchcase(case, self.case)


def read_expected(path: Path) -> list[Expected]:
    """ValueError (naming the line) for a line that is not `CLIENT CASE`; OSError when unreadable."""
    found = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) != 2:
            raise ValueError(f"{path}:{number}: want `CLIENT CASE` (globs allowed), got {line.strip()!r}")
        found.append(Expected(words[0], words[1], number))
    return found


def apply_expected(client: str, verdicts: Iterable[Verdict], expected: list[Expected]) -> list[str]:
    """Turn listed failures into `expected`; returns the listed pairs that passed (stale entries)."""
    stale = []
    for v in verdicts:
        listed = any(e.matches(client, v.case) for e in expected)
        if listed and v.verdict == "fail":
            v.verdict = "expected"
        elif listed and v.verdict == "pass":
            stale.append(f"{client} {v.case}")
    return stale
