"""A QA report a person reads: one self-contained HTML page from decision logs.

Pure, no mitmproxy import: `scripts/report.py` and the command `browserrouting.report` both
call `write_report`. The page (Jinja2, autoescaped) holds a run header per log with the options
that matter, a timeline per run (a lane per browser session, a mark per flow placed by the time
its record was logged, the fallback's link to its re-issue, cache changes as ticks, each mark's
record as its SVG tooltip), the outbound requests per host and, for audit mode, the conformance
table. No network, no external asset, no script.

Its parts, beside it: log (reading a log into a run), facts (what a run's records say, its
header), timeline (lanes, marks, links, aggregation for large logs), conformance (the audit's
table), text (how records and times read, secrets cut); this module lays them out on the page,
with the template report.html.j2.
"""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from ..decisions import CACHE, INJECTED_BUT_SENT, ORDER
from .facts import Facts, facts_of, findings, header_options, summary_chips
from .log import OPTIONS, Run, load_run, read_run
from .text import clock
from .timeline import (
    LANE_H,
    MAX_BUCKETS,
    MAX_DETAILED,
    MAX_LANES,
    PLOT_W,
    PLOT_X,
    ROW_Y,
    SVG_W,
    bucket_width,
    choose_detail,
    fold,
    lanes_of,
    place,
    timeline,
)

__all__ = [
    "MAX_BUCKETS",
    "MAX_DETAILED",
    "MAX_LANES",
    "OPTIONS",
    "PLOT_W",
    "PLOT_X",
    "LogSource",
    "Run",
    "load_run",
    "read_run",
    "render",
    "write_report",
]


def hosts_table(runs: Sequence[Run], all_facts: Sequence[Facts]) -> dict[str, Any]:
    """The outbound requests per host (as mitmproxy counts them), per run, and the CP re-issues."""
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
    # Only what the proxy answered in the server's place was never sent (`delay`, `cut` were).
    injected = sum(n for f in all_facts for kind, n in f.injected.items() if kind not in INJECTED_BUT_SENT)
    return {"rows": rows, "injected": injected, "runs": len(runs)}


_ENV: jinja2.Environment | None = None


def environment() -> jinja2.Environment:
    global _ENV
    if _ENV is None:
        _ENV = jinja2.Environment(
            loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent),
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
            "audit": facts.conformance.table() if "audit" in facts.modes else None,
            "decisions": facts.decisions,
        })  # fmt: skip
    decisions = [d for d in ORDER if any(f.decisions[d] for f in all_facts)]
    decisions += sorted({d for f in all_facts for d in f.decisions if d not in ORDER})
    aggregated = any(not lane.detailed for lane in every_lane)
    return environment().get_template("report.html.j2").render(
        title=title or "Browser routing QA report",
        generated=clock(now if now is not None else datetime.datetime.now(datetime.UTC).timestamp()),
        runs=views,
        hosts=hosts_table(runs, all_facts),
        decisions=decisions,
        flow_decisions=[d for d in ORDER if d not in CACHE],
        cache_decisions=CACHE,
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
    partial = target.with_name(f".{target.name}.partial")
    partial.write_text(render(runs, title), encoding="utf-8")
    partial.replace(target)  # a reader never sees half a page
    return target
