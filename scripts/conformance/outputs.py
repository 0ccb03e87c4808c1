"""What a run prints (the matrix, cases x clients, then what each verdict that is not a pass
says) and its JSON file."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from .judge import VERDICTS, Verdict
from .runner import ClientResult
from .scrub import Scrubber

SHOWN = {"fail": "FAIL", "error": "ERROR"}  # what must catch the eye


def cell(verdict: str) -> str:
    return SHOWN.get(verdict, verdict)


def matrix(results: list[ClientResult], case_ids: list[str]) -> list[str]:
    """The matrix: a row per case, a column per client (its spec, then what the driver said it is)."""
    first = max([len(c) for c in case_ids] + [4]) + 2
    widths = [max(len(r.client.spec), len(r.label), 8) + 2 for r in results]
    lines = [
        "case".ljust(first) + "".join(r.client.spec.ljust(w) for r, w in zip(results, widths, strict=True)),
        "".ljust(first) + "".join(r.label.ljust(w) for r, w in zip(results, widths, strict=True)),
    ]
    for case_id in case_ids:
        row = [
            cell(by_case(r).get(case_id, Verdict(case_id, "-")).verdict).ljust(w)
            for r, w in zip(results, widths, strict=True)
        ]
        lines.append(case_id.ljust(first) + "".join(row))
    return [line.rstrip() for line in lines]


def by_case(result: ClientResult) -> dict[str, Verdict]:
    return {v.case: v for v in result.verdicts}


def details(results: list[ClientResult], scrub: Scrubber) -> list[str]:
    """One paragraph per verdict other than pass: failures and errors first."""
    order = {v: i for i, v in enumerate(("fail", "error", "expected", "n/a", "info"))}
    found = [(order[v.verdict], r, v) for r in results for v in r.verdicts if v.verdict in order]
    lines = []
    for _, result, v in sorted(found, key=lambda x: x[0]):
        lines.append(f"{result.client.spec}  {v.case}  {cell(v.verdict)}: {scrub.text(v.why)}")
        if v.repro:
            lines.append(f"    repro: {'  '.join(v.repro.values())}")
    for result in results:
        if result.left_behind:
            lines.append(f"{result.client.spec}: could not delete {', '.join(result.left_behind)}")
    return lines


def summary(results: list[ClientResult]) -> str:
    parts = []
    for r in results:
        counts = Counter(v.verdict for v in r.verdicts)
        parts.append(f"{r.client.spec}: " + ", ".join(f"{counts[v]} {v}" for v in VERDICTS if counts[v]))
    return "; ".join(parts)


def as_json(results: list[ClientResult], meta: dict[str, Any], scrub: Scrubber) -> str:
    clients = []
    for r in results:
        clients.append({
            "client": r.client.spec,
            "label": r.label,
            "setup_error": r.setup_error,
            "left_behind": r.left_behind,
            "decision_log": str(r.folder / "decisions.jsonl"),
            "cases": [
                {
                    "case": v.case,
                    "verdict": v.verdict,
                    "why": v.why,
                    "violations": [{"rule": rule, "flow": flow} for rule, flow in v.violations],
                    "others": [{"rule": rule, "flow": flow} for rule, flow in v.others],
                    "problems": [{"problem": p, "flow": flow} for p, flow in v.problems],
                    "flows": v.flows,
                    "repro": v.repro,
                    "seconds": v.seconds,
                }
                for v in r.verdicts
            ],
        })  # fmt: skip
    return json.dumps(scrub.value({**meta, "clients": clients}), indent=1)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
