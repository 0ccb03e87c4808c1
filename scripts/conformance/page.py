"""The run as the project's QA report page (`addon.report`), one run per client's decision log,
with the matrix on top: each verdict other than a pass links to what it says, each failure to its
flows on the timelines below and to its repro files."""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

from addon.report import LogSource, write_report

from .cases import catalog
from .outputs import by_case, cell
from .runner import ClientResult, slug
from .scrub import Scrubber

STYLE = """<style>
.conform table { width: auto; }
.conform td.v { text-align: center; font-weight: 600; }
.conform .v-pass { color: #2f9e44; } .conform .v-fail, .conform .v-error { background: #e03131; }
.conform .v-fail a, .conform .v-error a { color: #fff; }
.conform .v-expected { color: #7a5a00; } .conform .v-n\\/a, .conform .v-info { color: #5c636a; }
.conform dt { margin-top: 6px; font-family: ui-monospace, Menlo, monospace; }
.conform dd { margin-left: 16px; }
</style>"""
MARK = re.compile(r'<g class="([^"]*)" data-flow="([0-9a-f-]{36})"')


def anchor(client: str, case: str) -> str:
    return f"v-{slug(client)}-{case}"


def section(
    results: list[ClientResult], runs: dict[str, int], case_ids: list[str], here: Path, scrub: Scrubber
) -> str:
    """The matrix and its notes; `runs` gives each client's run number on the page."""
    head = "".join(
        f"<th>{html.escape(r.client.spec)}<br><span class=sub>{html.escape(r.label)}</span></th>"
        for r in results
    )
    rows = []
    for case_id in case_ids:
        cells = []
        for r in results:
            verdict = by_case(r).get(case_id)
            text = html.escape(cell(verdict.verdict)) if verdict else "-"
            if verdict and verdict.verdict != "pass":
                text = f'<a href="#{anchor(r.client.spec, case_id)}">{text}</a>'
            kind = html.escape(verdict.verdict) if verdict else "none"
            cells.append(f'<td class="v v-{kind}">{text}</td>')
        checks = html.escape(catalog()[case_id].checks)
        rows.append(f'<tr><td class=mono title="{checks}">{case_id}</td>{"".join(cells)}</tr>')
    notes = []
    for r in results:
        run = runs.get(r.client.spec)
        for v in r.verdicts:
            if v.verdict == "pass":
                continue
            flows = ", ".join(f'<a href="#flow-{f}" class=mono>{f[:8]}</a>' for f in v.flows)
            files = " ".join(
                f'<a href="{html.escape(os.path.relpath(path, here))}">{kind}</a>'
                for kind, path in v.repro.items()
            )
            notes.append(
                f'<dt id="{anchor(r.client.spec, v.case)}">{html.escape(r.client.spec)} · {v.case} · '
                f"{html.escape(cell(v.verdict))}</dt><dd>{html.escape(scrub.text(v.why))}"
                + (f'<br>flows (<a href="#run-{run}">run {run}</a>): {flows}' if flows and run else "")
                + (f"<br>repro: {files}" if files else "")
                + "</dd>"
            )
    return (
        f'{STYLE}<section class="box conform" id="conformance"><h2>Conformance: cases × clients</h2>'
        f"<table><thead><tr><th>case</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f"<dl>{''.join(notes)}</dl></section>"
    )


def anchor_flows(page: str) -> str:
    """An id on each flow's first mark in the timelines, so that a link can point at it."""
    seen: set[str] = set()

    def mark(found: re.Match[str]) -> str:
        classes, flow = found.group(1), found.group(2)
        if flow in seen:
            return found.group(0)
        seen.add(flow)
        return f'<g id="flow-{flow}" class="{classes}" data-flow="{flow}"'

    return MARK.sub(mark, page)


def write_page(results: list[ClientResult], case_ids: list[str], out: Path, scrub: Scrubber) -> Path:
    logs = [r for r in results if (r.folder / "decisions.jsonl").is_file()]
    sources = [
        LogSource(r.folder / "decisions.jsonl", f"{r.client.spec}: {r.label}", r.log_options) for r in logs
    ]
    target = write_report(sources, out, "Conformance run")
    page = anchor_flows(target.read_text(encoding="utf-8"))
    runs = {r.client.spec: index for index, r in enumerate(logs, 1)}
    matrix = section(results, runs, case_ids, target.parent.resolve(), scrub)
    at = page.find('<div class="page">')
    at = at if at >= 0 else page.find("<body>") + len("<body>")
    target.write_text(page[:at] + matrix + page[at:], encoding="utf-8")
    return target
