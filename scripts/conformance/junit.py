"""The run as JUnit XML, which CI systems read: a testsuite per client, a testcase per case; a
failure names the violations, the wrong results and the flows; `n/a` and `expected` are skipped;
an `info` case passes with what the client does as its output."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from .cases import catalog
from .judge import Verdict
from .runner import ClientResult, slug
from .scrub import Scrubber


def body(v: Verdict) -> str:
    """A failure's full text: what the case checks, every finding with its full flow id, the repro."""
    case = catalog()[v.case]
    lines = [f"the case checks: {case.checks}", f"the reference's rule: {case.reference}"]
    lines += [f"violation {rule} on flow {flow}" for rule, flow in v.violations]
    lines += [
        f"wrong result: {problem}" + (f" (flow {flow})" if flow else "") for problem, flow in v.problems
    ]
    lines += [f"also seen (decided by another case): {rule} on flow {flow}" for rule, flow in v.others]
    lines += [f"repro {kind}: {path}" for kind, path in v.repro.items()]
    lines += [f"flows of the case: {', '.join(v.flows)}"] if v.flows else []
    return "\n".join(lines)


def testcase(parent: ET.Element, classname: str, v: Verdict, scrub: Scrubber) -> None:
    element = ET.SubElement(parent, "testcase", name=v.case, classname=classname, time=f"{v.seconds:.3f}")
    why = scrub.text(v.why)
    if v.verdict == "fail":
        kind = v.violations[0][0] if v.violations else "wrong_result"
        ET.SubElement(element, "failure", message=why, type=kind).text = scrub.text(body(v))
    elif v.verdict == "error":
        ET.SubElement(element, "error", message=why, type="error").text = scrub.text(body(v))
    elif v.verdict in ("n/a", "expected"):
        ET.SubElement(element, "skipped", message=f"{v.verdict}: {why}")
    elif v.verdict == "info":
        ET.SubElement(element, "system-out").text = why


def junit(results: list[ClientResult], scrub: Scrubber) -> str:
    root = ET.Element("testsuites", name="conform")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    seconds = 0.0
    for r in results:
        counts = {
            "tests": len(r.verdicts),
            "failures": sum(v.verdict == "fail" for v in r.verdicts),
            "errors": sum(v.verdict == "error" for v in r.verdicts),
            "skipped": sum(v.verdict in ("n/a", "expected") for v in r.verdicts),
        }
        spent = sum(v.seconds for v in r.verdicts)
        attributes = {"name": r.client.spec, "time": f"{spent:.3f}"} | {k: str(n) for k, n in counts.items()}
        suite = ET.SubElement(root, "testsuite", attributes)
        properties = ET.SubElement(suite, "properties")
        ET.SubElement(properties, "property", name="client", value=r.label)
        ET.SubElement(properties, "property", name="decision_log", value=str(r.folder / "decisions.jsonl"))
        classname = "conform." + slug(r.client.spec).replace(".", "_")
        for v in r.verdicts:
            testcase(suite, classname, v, scrub)
        for key, n in counts.items():
            totals[key] += n
        seconds += spent
    for key, n in totals.items():
        root.set(key, str(n))
    root.set("time", f"{seconds:.3f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
