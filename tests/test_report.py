"""The QA report (addon/report/, scripts/report.py, `browserrouting.report`): one page a person
reads. Unit tests on small hand-made logs; the command through a real mitmweb; the demo's own
report in headless Chromium (screenshot in `artifacts/`); a 100,000-record log in bounded time
and size."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import proxy_options
from mitmdump_runner import ROOT, CommandFailed, Mitmdump
from proxy_clients import API_KEY, client
from simulator import Simulator

from addon import report
from addon.report import log as report_log
from addon.report import timeline as report_timeline

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "artifacts"
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else sys.executable
CP, VM = "https://api.onkernel.com", "https://proxy.iad.onkernel.com:8443/browser/kernel"
# A jwt of the simulator in any form but its redacted prefix (`tok+3c…`).
SIM_JWT = re.compile(r"tok(\+|%2B|&#43;)[0-9a-f]{3}")


def rec(
    decision: str, flow: str | None, ts: float, session: str | None = "s1", **fields: Any
) -> dict[str, Any]:
    tail = fields.pop("tail", "telemetry/events")
    url = fields.pop("url", f"{CP}/browsers/{session}/{tail}")
    return {"ts": ts, "decision": decision, "reason": None, "session_id": session, "method": "GET",
            "url": url, "flow_id": flow, **fields}  # fmt: skip


def page_of(*records: dict[str, Any], options: dict[str, str] | None = None) -> str:
    return report.render([report_log.read_run(map(json.dumps, records), "t.jsonl", options=options)])


def lanes(html: str) -> list[str]:
    return re.findall(r'<g class="lane" data-kind="session" data-session="([^"]*)"', html)


def attr_rows(html: str, cls: str, key: str) -> dict[str, dict[str, str]]:
    """{data-<key>: every data-* attribute} of the elements of class `cls`."""
    rows = {}
    for tag in re.findall(rf'<\w+ class="{cls}[^"]*"[^>]*>', html):
        attrs = dict(re.findall(r'data-([\w-]+)="([^"]*)"', tag))
        if key in attrs:  # not the legend's samples
            rows[attrs[key]] = attrs
    return rows


def mark_x(html: str, flow: str) -> float:
    found = re.search(rf'data-flow="{flow}" data-decision="\w+" transform="translate\(([\d.]+),', html)
    assert found, f"no mark for {flow}"
    return float(found.group(1))


FALLBACK = (
    rec("route_cached", "c", 10.0, reason="create", base_url=VM, jwt="eyJhbG…", url=f"{CP}/browsers"),
    rec("passthrough", "c", 10.0, None, reason="not_browser_subresource", url=f"{CP}/browsers", method="POST",
        cp_status=200, cache=[{"decision": "route_cached", "reason": "create", "session_id": "s1"}]),
    rec("routed", "r", 10.5, vm_url=f"{VM}/telemetry/stream?jwt=eyJhbG…", tail="telemetry/stream",
        vm_status=200),
    rec("route_evicted", "f", 11.0, reason="browser_gone", base_url=VM, jwt="eyJhbG…"),
    rec("reissue", "ri", 11.2, serves="f", cp_status=200),
    rec("fallback", "f", 11.3, vm_url=f"{VM}/telemetry/events?jwt=eyJhbG…", vm_status=404, cp_status=200,
        reissue_flow="ri"),
    rec("passthrough", "p", 12.0, reason="no_route", cp_status=200),
)  # fmt: skip


def test_fallback_is_linked_from_the_vm_answer_to_its_reissue_and_the_create_is_on_its_session_lane() -> None:
    html = page_of(*FALLBACK)
    assert lanes(html) == ["s1"], "one session, one lane; the create is attributed by the route it cached"
    assert 'data-kind="no-session"' not in html
    assert re.search(r'<path class="link" data-from="f" data-to="ri" d="M', html)
    # The fallback's VM answer is placed at its eviction, before the re-issue it caused.
    assert mark_x(html, "f") < mark_x(html, "ri") < mark_x(html, "p")
    assert "fallback on s1: VM 404 browser_gone → CP re-issue 200" in html
    assert attr_rows(html, "tick", "decision").keys() == {"route_cached", "route_evicted"}


def test_outbound_per_host_counts_final_records_and_not_what_injection_answered() -> None:
    injected = rec("fallback", "g", 13.0, vm_url=f"{VM}/telemetry/events?jwt=x…", vm_status=404,
                   cp_status=200, injected="gone", reissue_flow="gr")  # fmt: skip
    html = page_of(*FALLBACK, injected, rec("reissue", "gr", 12.9, serves="g", cp_status=200))
    hosts = attr_rows(html, "host", "host")
    assert {h: int(a["total"]) for h, a in hosts.items()} == {
        "proxy.iad.onkernel.com:8443": 2,  # routed, fallback (the injected one was never sent)
        "api.onkernel.com:443": 4,  # create, two re-issues, passthrough
    }
    assert "1 request answered by fault injection was never sent" in html


def test_a_delayed_or_cut_request_was_sent_and_the_findings_name_the_step() -> None:
    sent = [
        rec("routed", "d", 13.0, vm_url=f"{VM}/fs?jwt=x…", tail="fs", vm_status=200, injected="delay",
            injected_delay_ms=300),
        rec("routed", "k", 13.5, vm_url=f"{VM}/fs?jwt=x…", tail="fs", vm_status=200, injected="cut",
            error="cut by fault injection"),
        rec("no_fallback", "n", 14.0, vm_url=f"{VM}/fs?jwt=x…", tail="fs", reason="status", vm_status=502,
            injected="502", injected_delay_ms=250),
    ]  # fmt: skip
    html = page_of(*FALLBACK, *sent)
    hosts = attr_rows(html, "host", "host")
    assert int(hosts["proxy.iad.onkernel.com:8443"]["total"]) == 4, (
        "routed, fallback, the delayed one, the cut one"
    )
    assert "1 request answered by fault injection was never sent" in html
    assert "no_fallback (status) on s1: VM 502 (injected 502@250) kept" in html
    assert "injected: 502 ×1, cut ×1, delay ×1" in html


def test_a_flow_logged_again_counts_once_the_last_record_wins_placed_where_it_first_ended() -> None:
    vm_url = f"{VM}/telemetry/events?jwt=e…"
    gone = rec("client_routed", "v", 20.0, url=vm_url, vm_url=vm_url, vm_status=404, violations=[],
               notes=["injected"], injected="gone")  # fmt: skip
    relogged = {**gone, "ts": 21.5, "violations": ["missing_fallback"]}
    stale = rec("client_routed", "w", 21.6, url=gone["url"], vm_url=gone["vm_url"], vm_status=200,
                violations=["stale_route"], notes=[])  # fmt: skip
    html = page_of(rec("route_cached", "c", 19.0, base_url=VM, url=f"{CP}/browsers"), gone, relogged, stale)
    assert re.search(r'<tr data-decision="client_routed"><td>client_routed</td><td class="n">2</td>', html)
    rules = attr_rows(html, "rule", "rule")
    assert (rules["missing_fallback"]["checked"], rules["missing_fallback"]["broken"]) == ("1", "1")
    assert (rules["stale_route"]["checked"], rules["stale_route"]["broken"]) == ("2", "1")
    assert len(re.findall(r'class="mark[^"]*" data-flow="v"', html)) == 1 and mark_x(html, "v") < mark_x(
        html, "w"
    )
    assert re.search(r'<line class="window" data-flow="v"', html)
    assert "≈ 1500 (the longest wait for a missing fallback)" in html, "the audit window, inferred"
    assert "1 logged again, counted once" in html


def test_conformance_table_counts_checked_by_the_kind_of_flow_each_rule_applies_to() -> None:
    vm: dict[str, Any] = {
        "url": f"{VM}/fs/x?jwt=a…",
        "vm_url": f"{VM}/fs/x?jwt=a…",
        "vm_status": 200,
        "notes": [],
    }
    html = page_of(
        rec("route_cached", "c", 1.0, base_url=VM, url=f"{CP}/browsers"),
        rec("client_routed", "a", 2.0, violations=["not_allowlisted"], **vm),
        rec("client_routed", "b", 3.0, violations=["api_key_on_vm", "jwt_mismatch"], **vm),
        rec("client_cp", "c2", 4.0, tail="fs/x", violations=["not_routed"], notes=[], cp_status=200),
        rec("client_fallback", "d", 5.0, violations=["unexpected_fallback"], notes=["vm_retry"], serves="a"),
    )
    rules = {k: (int(v["checked"]), int(v["broken"])) for k, v in attr_rows(html, "rule", "rule").items()}
    assert rules == {
        "api_key_on_vm": (2, 1), "jwt_on_cp": (2, 0), "jwt_mismatch": (2, 1), "not_allowlisted": (2, 1),
        "not_routed": (1, 1), "missing_fallback": (0, 0), "stale_route": (2, 0),
        "unexpected_fallback": (1, 1), "repeated_fallback": (1, 0),
    }  # fmt: skip
    assert re.search(r'<path class="link" data-from="a" data-to="d"', html), "client_fallback serves flow a"
    assert "checked is approximated" in html and "vm_retry 1" in html
    assert "covers " in html and "not fs/x" in html, "the allowlist, inferred from a not_allowlisted flow"


def test_options_given_are_shown_plain_and_the_rest_says_inferred() -> None:
    html = page_of(
        *FALLBACK, options={"browserrouting_mode": "route", "control_plane": CP, "ssl_insecure": "x"}
    )
    given = re.findall(r"<dt>([^<]+)</dt><dd>([^<]+)</dd>", html)
    inferred = dict(re.findall(r'<dt>([^<]+)</dt><dd class="inferred"[^>]*>([^<]+) <', html))
    assert given == [("mode", "route"), ("CP origins", CP)]
    assert inferred["allowlist"] == "covers telemetry/events, telemetry/stream"
    assert inferred["fallback registry"] == "includes telemetry/events"
    assert inferred["VM hosts"] == "seen: proxy.iad.onkernel.com:8443"
    names = [name for name, _ in given] + list(inferred)
    assert "audit window (ms)" not in names, "no audit window for a route-mode run"


def test_everything_is_escaped_and_no_secret_is_shown_in_clear() -> None:
    evil = "<script>alert(1)</script>"
    html = page_of(
        rec("passthrough", "x", 1.0, evil, reason="no_route",
            url=f"{CP}/browsers/{evil}/fs?jwt=eyJhbGciOiJI.p.sig"),
        rec("no_fallback", "y", 2.0, reason="vm_error", vm_url=f"{VM}/fs?jwt=tok+3c…",
            error="Bearer sk-live-123456"),
    )  # fmt: skip
    assert "<script" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "eyJhbGciOiJI.p.sig" not in html and "sk-live-123456" not in html
    assert "jwt=eyJhbG…" in html and "jwt=tok+3c…" in html, "cut to a prefix; a redacted one stays as logged"


def test_lines_that_are_no_record_are_skipped_and_flows_of_no_session_share_a_lane() -> None:
    lines = ["not json", "[1, 2]", '{"no": "decision"}', "", json.dumps(FALLBACK[2])]
    lines += [json.dumps(rec("passthrough", f"n{i}", 3.0 + i, None, url=f"{CP}/browsers")) for i in range(2)]
    run = report_log.read_run(lines, "t.jsonl")
    assert (run.skipped, list(run.flows)) == (3, ["r", "n0", "n1"])
    html = report.render([run])
    assert "3 lines that are no record skipped" in html and lanes(html) == ["s1"]
    assert len(re.findall(r'data-kind="no-session"', html)) == 1 and ">(no session)<" in html


def test_cli_writes_one_page_for_several_logs_and_refuses_bad_options(tmp_path: Path) -> None:
    logs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    logs[0].write_text("".join(json.dumps(r) + "\n" for r in FALLBACK))
    logs[1].write_text(json.dumps(rec("client_cp", "k", 5.0, "s2", violations=[], notes=[])) + "\n")
    out = tmp_path / "out" / "r.html"
    cli = [PYTHON, str(ROOT / "scripts" / "report.py"), *map(str, logs), "-o", str(out)]
    done = subprocess.run(
        [*cli, "--label", "first", "--options", "2:mode=audit"], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.strip() == str(out), done.stderr
    html = out.read_text()
    assert lanes(html) == ["s1", "s2"] and "</span> first</h2>" in html and "<dd>audit</dd>" in html
    for bad in (
        ["--options", "nope=1"],
        ["--options", "3:mode=audit"],
        ["--label", "a", "--label", "b", "--label", "c"],
    ):
        refused = subprocess.run([*cli, *bad], capture_output=True, text=True)
        assert refused.returncode == 2 and "scripts/report.py" in refused.stderr, bad
    missing = subprocess.run([*cli[:2], str(tmp_path / "none.jsonl")], capture_output=True, text=True)
    assert missing.returncode == 2 and "none.jsonl" in missing.stderr


def synthetic_log(path: Path, count: int) -> int:
    """`count` lines of route- and audit-mode records over 3,000 sessions; returns the cache changes."""
    changes, t = 0, 1_700_000_000.0
    with path.open("w") as out:
        for i in range(count):
            t += 0.004
            s, kind = f"sess{i * 7919 % 3000:04d}", i % 20
            if kind == 0:
                changes += 1
                r = rec("route_evicted", f"f{i + 1}", t, s, reason="browser_gone", base_url=VM, jwt="eyJhbG…")
            elif kind == 1:
                r = rec("fallback", f"f{i}", t, s, vm_url=f"{VM}/telemetry/events?jwt=e…", vm_status=404,
                        cp_status=200, reissue_flow=f"f{i}r")  # fmt: skip
            elif kind < 4:
                r = rec("passthrough", f"f{i}", t, s, reason="no_route", cp_status=200)
            elif kind < 8:
                r = rec("client_routed", f"f{i}", t, s, url=f"{VM}/fs?jwt=e…", vm_url=f"{VM}/fs?jwt=e…",
                        vm_status=200, violations=["stale_route"] if kind == 4 else [], notes=[])  # fmt: skip
            else:
                r = rec("routed", f"f{i}", t, s, vm_url=f"{VM}/telemetry/stream?jwt=e…", vm_status=200)
            out.write(json.dumps(r) + "\n")
    return changes


def test_a_100000_record_log_renders_in_under_10_s_with_every_record_accounted_for(tmp_path: Path) -> None:
    log = tmp_path / "big.jsonl"
    changes = synthetic_log(log, 100_000)
    started = time.monotonic()
    page = report.write_report([report.LogSource(log)], tmp_path / "big.html")
    took = time.monotonic() - started
    html = page.read_text()
    assert took < 10, f"{took:.1f} s"
    assert len(html) < 8_000_000, "the page's size is bounded"
    assert len(re.findall(r'<g class="lane"', html)) == report_timeline.MAX_LANES
    assert 'data-kind="folded"' in html and "more sessions" in html
    marks = len(re.findall(r'<g class="(?:mark|tick)[^"]*" data-flow', html))  # not the legend's
    buckets = [int(n) for n in re.findall(r'class="bucket [^"]*"[^>]*data-count="(\d+)"', html)]
    assert marks <= report_timeline.MAX_DETAILED and len(buckets) <= report_timeline.MAX_BUCKETS and buckets
    assert marks + sum(buckets) == 100_000, "each flow and cache change is a mark or in a bucket's count"
    xs = [int(x) for x in re.findall(r'class="bucket [^"]*" x="(\d+)"', html)]
    assert min(xs) >= report_timeline.PLOT_X and max(xs) < report_timeline.PLOT_X + report_timeline.PLOT_W, (
        "buckets on the time axis"
    )
    assert changes == 5000 and "route_evicted 5000" in html


@pytest.fixture
def web(sim: Simulator) -> Iterator[Mitmdump]:
    with Mitmdump(proxy_options(sim), tool="mitmweb") as proxy:
        yield proxy


def test_report_command_writes_the_running_proxys_log_with_its_options(
    web: Mitmdump, sim: Simulator, tmp_path: Path
) -> None:
    with client(web) as c:
        sid = c.post(f"{sim.cp_url}/browsers", json={}).json()["session_id"]
        assert c.get(f"{sim.cp_url}/browsers/{sid}/fs/read_file", params={"path": "/x"}).is_success
    web.records("routed", sid)
    written = Path(web.command("browserrouting.report", str(tmp_path / "r.html")))
    html = wait_for_page(written)
    assert (
        lanes(html) == [sid]
        and f"<dd>{sim.cp_url}</dd>" in html
        and "<dd>telemetry,process,fs,curl</dd>" in html
    )
    assert API_KEY not in html and not SIM_JWT.search(html), "no API key, no jwt in clear"
    web.command("set", "browserrouting_log", "")
    with pytest.raises(CommandFailed, match=r"browserrouting\.report: no decision log .*browserrouting_log"):
        web.command("browserrouting.report", str(tmp_path / "none.html"))


def wait_for_page(page: Path, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while not page.exists():
        assert time.monotonic() < deadline, f"no page at {page}"
        time.sleep(0.05)
    return page.read_text()


def test_report_command_renders_off_the_event_loop_while_the_proxy_keeps_answering(
    sim: Simulator, tmp_path: Path
) -> None:
    log, page = tmp_path / "big.jsonl", tmp_path / "big.html"
    synthetic_log(log, 100_000)
    with (
        Mitmdump({**proxy_options(sim), "browserrouting_log": str(log)}, tool="mitmweb") as web,
        client(web) as c,
    ):
        assert web.command("browserrouting.report", str(page)) == str(page)
        assert not page.exists(), "the command returned before the page was rendered"
        answered = 0
        while not page.exists():  # the proxy answers while the page renders
            c.get(f"{sim.cp_url}/browsers").raise_for_status()
            answered += 1
        html = wait_for_page(page)
        deadline = time.monotonic() + 10
        while "wrote " + str(page) not in "".join(web.output):  # the event log says so
            assert time.monotonic() < deadline, "no word of the page in the event log"
            time.sleep(0.05)
    assert answered >= 5, f"only {answered} answers while the page rendered"
    assert html.rstrip().endswith("</html>") and "route_evicted 5000" in html
    assert not list(tmp_path.glob(".*.partial")), "written whole, then moved into place"


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("demo-report")
    done = subprocess.run([PYTHON, str(ROOT / "scripts" / "qa_demo"), "--report-dir", str(folder)],
                          capture_output=True, text=True, timeout=90, cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"demo: report of this run: {folder / 'report.html'}" in done.stdout
    return folder


def demo_records(folder: Path) -> list[list[dict[str, Any]]]:
    return [
        [json.loads(x) for x in log.read_text().splitlines()]
        for log in sorted(folder.glob("*-decisions.jsonl"))
    ]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (scripts/setup installs it)")
def test_demo_report_tells_the_story_in_chromium(demo_report: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    logs = demo_records(demo_report)
    assert len(logs) == 3
    sessions = {r["session_id"] for log in logs for r in log if r.get("session_id")}
    final = [{r["flow_id"]: r for r in log if not r["decision"].startswith("route_")} for log in logs]
    fallbacks = [r for flows in final for r in flows.values() if r["decision"] == "fallback"]
    hosts: Counter[str] = Counter()  # outbound, as mitmproxy counts it: what was sent, once per flow
    for r in (r for flows in final for r in flows.values() if not r.get("injected")):
        hosts[re.sub(r"^\w+://([^/]+).*", r"\1", r.get("vm_url") or r["url"])] += 1
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--no-first-run"])  # fmt: skip
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto((demo_report / "report.html").as_uri())
        page.screenshot(path=str(ARTIFACTS / "report-demo.png"))
        page.screenshot(path=str(ARTIFACTS / "report-demo-full.png"), full_page=True)
        assert requested == [(demo_report / "report.html").as_uri()], (
            "self-contained: nothing else is fetched"
        )

        # At a glance: the three runs (A)-(C), (D), (E) and their timelines fit one 1600x900 screen.
        for heading in ("(A)-(C) route mode", "(D) audit mode", "(E) route mode"):
            run = page.locator("section.run", has_text=heading)
            expect(run.locator("svg.timeline")).to_be_visible()
            box = run.locator("svg.timeline").bounding_box()
            assert box and box["y"] + box["height"] <= 900, f"{heading} timeline below the fold"
        for session in sessions:
            expect(page.locator(f'g.lane[data-session="{session}"]')).to_be_visible()
        assert page.locator('g.lane[data-kind="session"]').count() == len(sessions)

        assert len(fallbacks) == 4  # (C); (E) reads 2, 3 and 4
        for r in fallbacks:
            link = page.locator(f'path.link[data-from="{r["flow_id"]}"][data-to="{r["reissue_flow"]}"]')
            expect(link).to_be_visible()
            mark = page.locator(f'g.mark[data-flow="{r["flow_id"]}"]')
            mark.hover()
            tip = mark.locator("title").text_content() or ""
            assert (
                tip.startswith("fallback")
                and r["flow_id"] in tip
                and '"vm_status": 404' in tip
                and "…" in tip
            )

        shown = {row.get_attribute("data-host"): int(row.get_attribute("data-total") or -1)
                 for row in page.locator("tr.host").all()}  # fmt: skip
        assert shown == dict(hosts)
        for host, n in hosts.items():
            expect(page.locator(f'tr.host[data-host="{host}"] td.n').last).not_to_have_text("")
            assert str(n) in page.locator(f'tr.host[data-host="{host}"]').inner_text()

        missing = page.locator('tr.rule[data-rule="missing_fallback"]')
        expect(missing).to_have_attribute("data-broken", "1")
        expect(page.locator('tr.rule[data-rule="stale_route"]')).to_have_attribute("data-broken", "1")
        expect(page.locator("line.window[data-flow]")).to_have_count(1)

        html, text = page.content(), page.inner_text("body")
        for content in (html, text):
            assert "sk-demo" not in content and not SIM_JWT.search(content), "no API key, no jwt in clear"
        browser.close()
