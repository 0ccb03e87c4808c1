"""scripts/conform with the pinned official SDKs (`kernel` 0.131.0, `@onkernel/sdk` 0.84.0): neither
falls back on browser_gone, so each fails exactly `fallback_on_browser_gone` and
`evicts_on_browser_gone` and passes the negatives; a failure names its violation and writes a
repro with no secret in it; `--expect` turns the known failures into `expected`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conform_support import ALL_CASES, INFO, Run, conform, failing
from conformance.service import SIM_API_KEY
from proxy_clients import NODE, NODE_DIR

FALLBACK_CASES = {"fallback_on_browser_gone", "evicts_on_browser_gone"}
SDK_WINDOW_MS = 1500  # the runner's default: the SDKs' retries come up to a second apart
NODE_READY = NODE is not None and (NODE_DIR / "node_modules" / "@onkernel" / "sdk").is_dir()
SIM_JWT = re.compile(r"tok(\+|%2B)[0-9a-f]{6}")  # the simulator's jwts, as they are or URL-encoded


@pytest.fixture(scope="module")
def sdks(tmp_path_factory: pytest.TempPathFactory) -> Run:
    folder = tmp_path_factory.mktemp("sdks")
    expect = folder / "expect"
    expect.write_text(
        "# the pinned Node SDK has no browser_gone fallback yet\nnode fallback_on_*\nnode evicts_on_*\n"
    )
    clients = ["python", "node"] if NODE_READY else ["python"]
    judged = ",".join(case for case in ALL_CASES if case not in INFO)  # the reporting cases cannot fail
    report = str(folder / "report.html")
    return conform(
        folder,
        *clients,
        "--cases",
        judged,
        "--expect",
        str(expect),
        "--html",
        report,
        window_ms=SDK_WINDOW_MS,
    )


# A client that never re-issues has no re-issue to fail.
NOT_REACHED = {"single_reissue_when_cp_fails": "n/a"}


def judged(run: Run, client: str) -> dict[str, str]:
    """The verdicts but the cases the client never reaches."""
    verdicts = run.verdicts(client)
    assert {case: verdicts[case] for case in NOT_REACHED} == NOT_REACHED
    return {case: v for case, v in verdicts.items() if case not in NOT_REACHED}


def test_pinned_python_sdk_fails_exactly_the_two_fallback_cases(sdks: Run) -> None:
    verdicts = judged(sdks, "python")
    assert list(sdks.verdicts("python")) == [case for case in ALL_CASES if case not in INFO]
    assert failing(verdicts) == FALLBACK_CASES
    assert {v for case, v in verdicts.items() if case not in FALLBACK_CASES} == {"pass"}
    assert sdks.client("python")["label"] == "kernel 0.131.0"
    gone = sdks.case("python", "fallback_on_browser_gone")
    assert [v["rule"] for v in gone["violations"]] == ["missing_fallback"]
    assert "not re-issued to the control plane" in gone["why"]
    evicts = sdks.case("python", "evicts_on_browser_gone")
    assert [v["rule"] for v in evicts["violations"]] == ["stale_route"]
    assert [v["rule"] for v in evicts["others"]] == ["missing_fallback"]  # reported, decided elsewhere
    assert sdks.status == 1


@pytest.mark.skipif(not NODE_READY, reason="node and the pinned @onkernel/sdk (scripts/setup) are needed")
def test_pinned_node_sdk_fails_the_two_fallback_cases_listed_as_expected(sdks: Run) -> None:
    verdicts = judged(sdks, "node")
    assert {case for case, v in verdicts.items() if v == "expected"} == FALLBACK_CASES
    assert {v for case, v in verdicts.items() if case not in FALLBACK_CASES} == {"pass"}
    assert sdks.client("node")["label"] == "@onkernel/sdk 0.84.0"
    (suite,) = [s for s in sdks.junit().findall("testsuite") if s.get("name") == "node"]
    skipped = {c.get("name"): c.find("skipped") for c in suite.findall("testcase")}
    assert {name for name, s in skipped.items() if s is not None} == FALLBACK_CASES | set(NOT_REACHED)
    assert all((skipped[name].get("message") or "").startswith("expected: ") for name in FALLBACK_CASES)  # type: ignore[union-attr]
    assert (skipped["single_reissue_when_cp_fails"].get("message") or "").startswith("n/a: ")  # type: ignore[union-attr]


def test_pinned_sdks_never_fall_back_on_a_hanging_vm_or_a_cut_body(sdks: Run) -> None:
    for client in ("python", "node") if NODE_READY else ("python",):
        verdicts = sdks.verdicts(client)
        assert (verdicts["no_fallback_on_timeout"], verdicts["no_fallback_on_cut_body"]) == ("pass", "pass")
        assert "never re-issued" in sdks.case(client, "single_reissue_when_cp_fails")["why"]


def test_a_failure_writes_a_har_and_a_curl_line_without_secrets(sdks: Run) -> None:
    gone = sdks.case("python", "fallback_on_browser_gone")
    har_text = Path(gone["repro"]["har"]).read_text()
    entries = json.loads(har_text)["log"]["entries"]
    assert [e["request"]["method"] for e in entries] == ["POST", "GET"]  # the create, the events read
    assert "/browser/kernel/telemetry/events" in entries[1]["request"]["url"]
    assert {"name": "jwt", "value": "REDACTED"} in entries[1]["request"]["queryString"]
    curl = Path(gone["repro"]["curl"]).read_text()
    assert curl.startswith("# The failing request") and "\ncurl " in curl
    assert "/browser/kernel/telemetry/events?limit=2&jwt='\"$KERNEL_BROWSER_JWT\"'" in curl
    written = [
        har_text,
        curl,
        *((sdks.folder / name).read_text() for name in ("run.json", "run.xml", "report.html")),
    ]
    for text in written:
        assert SIM_API_KEY not in text and not SIM_JWT.search(text)


def test_the_html_report_links_a_failure_to_its_flows_and_repro(sdks: Run) -> None:
    page = (sdks.folder / "report.html").read_text()
    gone = sdks.case("python", "fallback_on_browser_gone")
    flow = gone["violations"][0]["flow"]
    assert (
        'href="#v-python-fallback_on_browser_gone"' in page
        and 'id="v-python-fallback_on_browser_gone"' in page
    )
    assert f'href="#flow-{flow}"' in page and f'id="flow-{flow}"' in page  # its mark on the timeline
    assert 'href="out/python/fallback_on_browser_gone/flows.har"' in page
