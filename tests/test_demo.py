"""`scripts/demo`'s program (scripts/qa_demo), the README's first command, run as a user would run it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "scripts" / "qa_demo"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
STEPS = {
    "A": "(A) live browser",
    "B": "(B) browser killed on the VM",
    "C": "(C) telemetry events",
    "D": "(D) audit mode",
    "E": "(E) route mode, a VM that answers 502",
}


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    # Under a minute, as the README promises.
    return subprocess.run([PYTHON, str(DEMO), *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.fixture(scope="module")
def demo() -> subprocess.CompletedProcess[str]:
    return run_demo()


def section(out: str, step: str) -> str:
    """The output of one step: from its header to the next blank line."""
    match = re.search(rf"^{re.escape(STEPS[step])}.*?(?=^$)", out, re.MULTILINE | re.DOTALL)
    assert match, f"missing step header {STEPS[step]!r}"
    return match.group(0)


def passes(text: str) -> list[str]:
    return re.findall(r"^\s+PASS  (.*)$", text, re.MULTILINE)


def test_demo_replays_the_live_qa_and_passes(demo: subprocess.CompletedProcess[str]) -> None:
    out = demo.stdout
    assert demo.returncode == 0, out + demo.stderr
    for step in STEPS:
        assert passes(section(out, step)), f"step {step} checked nothing"
    assert "FAIL" not in out
    summary = re.search(r"^demo: (\d+) passed, (\d+) failed$", out, re.MULTILINE)
    assert summary and int(summary.group(1)) >= 30 and summary.group(2) == "0"
    assert len(passes(out)) == int(summary.group(1))
    # Secrets never show: the fake API key, or a jwt (the simulator's start with "tok+").
    assert "sk-demo" not in out and "tok+" not in out and "tok%2B" not in out


def test_demo_audits_the_sdks_own_routing_and_finds_no_browser_gone_fallback(
    demo: subprocess.CompletedProcess[str],
) -> None:
    d = section(demo.stdout, "D")
    assert "browserrouting_mode=audit" in d and "KERNEL_BROWSER_ROUTING_SUBRESOURCES=telemetry" in d
    assert len(passes(d)) >= 8 and "FAIL" not in d
    # Normal calls audit clean, the 502s show the SDK's retries on the VM.
    assert len(re.findall(r"^\s+client_routed\s+VM 200\s+ok\s", d, re.MULTILINE)) >= 2
    assert re.search(r"^\s+client_routed\s+VM 502\s+ok \[vm_retry, injected 502\]", d, re.MULTILINE)
    # The injected browser_gone: missing_fallback (logged again after the window), then stale_route.
    assert re.search(r"^\s+client_routed\s+VM 404\s+missing_fallback \[injected gone\]", d, re.MULTILINE)
    assert re.search(r"^\s+client_routed\s+VM 200\s+stale_route\s", d, re.MULTILINE)
    findings = [p for p in passes(d) if p.startswith("expected finding for kernel")]
    assert [("missing_fallback" in p, "stale_route" in p) for p in findings] == [(True, False), (False, True)]
    assert re.search(r"missing_fallback 1/1 .*stale_route \d+/1 ", d)
    # A browser_gone on the stream allows no fallback: the route is kept, the next read conforms.
    assert re.search(r"^\s+client_routed\s+VM 404\s+ok \[injected gone\]\s+GET \S+/telemetry/stream", d, re.M)
    assert re.search(r"^\s+client_routed\s+VM 200\s+ok \[gone_before\]\s+GET \S+/telemetry/stream", d, re.M)
    assert "notes: vm_retry 2, auth_fallback 0, gone_before 1," in d


def test_demo_on_a_live_like_vm_gets_the_502_and_falls_back_only_when_gone_is_injected(
    demo: subprocess.CompletedProcess[str],
) -> None:
    e = section(demo.stdout, "E")
    assert "502 bad_gateway for a deleted or killed browser" in e and "deleted at the CP directly" in e
    assert len(passes(e)) >= 10 and "FAIL" not in e
    assert re.search(r"^\s+no_fallback\s+status\s+502\s", e, re.MULTILINE)
    assert "client got InternalServerError 502" in e
    fallbacks = re.findall(r"^\s+fallback\s+-\s+404\s+(\d+)\s+.*\(injected gone\)$", e, re.MULTILINE)
    assert fallbacks == ["404", "200", "503"], (
        "the CP's answer for a deleted browser, a killed one, a failing CP"
    )
    assert len(re.findall(r"^\s+reissue\s", e, re.MULTILINE)) == 3, (
        "one re-issue per fallback, never a second"
    )
    assert re.search(r"client got a page of 5 events: cp-\{id2\}-1", e)


def test_demo_plays_a_vm_going_down_and_a_failing_reissue_with_one_rule_each(
    demo: subprocess.CompletedProcess[str],
) -> None:
    e = section(demo.stdout, "E")
    read4 = e[e.index("read 4:") :]
    assert ":browserrouting.inject {id3}/telemetry/events=502*2>gone" in read4
    assert ":browserrouting.inject cp:{id3}/telemetry/events=503:1" in read4
    decisions = re.findall(r"^\s+(no_fallback|route_evicted|reissue|fallback)\s+(.*)$", read4, re.MULTILINE)
    assert [(d, " ".join(rest.split())) for d, rest in decisions] == [
        ("no_fallback", "status 502 - GET /browsers/{id3}/telemetry/events (injected 502)"),
        ("no_fallback", "status 502 - GET /browsers/{id3}/telemetry/events (injected 502)"),
        ("route_evicted", "browser_gone - - route cache: {id3}"),
        ("reissue", "- - 503 GET /browsers/{id3}/telemetry/events (injected 503)"),
        ("fallback", "- 404 503 GET /browsers/{id3}/telemetry/events (injected gone)"),
    ], "no fallback on the 502s, one fallback, exactly one re-issue"
    calls = re.findall(r"^\s+call \d: client got (\w+ \d+)", read4, re.MULTILINE)
    assert calls == ["InternalServerError 502", "InternalServerError 502", "InternalServerError 503"]
    assert re.search(r"^\s+VM\s+\S+\s+0\s+-$", read4, re.MULTILINE)
    assert re.search(r"^\s+CP\s+\S+\s+0\s+-$", read4, re.MULTILINE)
    assert len(passes(read4)) == 4 and "FAIL" not in read4


def test_demo_help() -> None:
    done = run_demo("--help")
    assert done.returncode == 0 and "usage: scripts/demo" in done.stdout
