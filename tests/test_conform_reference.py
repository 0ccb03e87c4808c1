"""scripts/conform with the project's reference client: it passes every case, and each of its
flawed variants (one rule broken on purpose) fails exactly the cases of that rule. Also the
runner's outputs (JUnit, JSON, HTML), its exit status and its usage errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conform_support import (
    ALL_CASES,
    INFO,
    Run,
    conform,
    failing,
    flawed,
)
from conformance import cli


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Run:
    folder = tmp_path_factory.mktemp("reference")
    return conform(folder, "reference", "--html", str(folder / "report.html"))


def test_reference_passes_every_case(reference: Run) -> None:
    verdicts = reference.verdicts("reference")
    assert list(verdicts) == ALL_CASES
    assert verdicts == {case: "info" if case in INFO else "pass" for case in verdicts}
    assert reference.client("reference")["label"].startswith("reference httpx")
    assert reference.status == 0


def test_junit_has_a_testsuite_per_client_and_a_testcase_per_case(reference: Run) -> None:
    root = reference.junit()
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ALL_CASES
    assert all(c.get("classname") == "conform.reference" and float(c.get("time", "x")) >= 0 for c in cases)
    assert all(c.find("error") is None and c.find("failure") is None for c in cases)
    assert suite.get("tests") == str(len(ALL_CASES)) and suite.get("errors") == "0"
    assert suite.get("failures") == "0" and suite.get("skipped") == "0"
    info = [c for c in cases if c.get("name") in INFO]
    assert all(c.find("system-out") is not None and c.find("system-out").text for c in info)  # type: ignore[union-attr]


def test_exit_status_follows_the_verdicts(reference: Run) -> None:
    """1 with a failure or an error (0 without: the bash driver's run in test_conform_live)."""
    failed = any(v in ("fail", "error") for v in reference.verdicts("reference").values())
    assert reference.status == (1 if failed else 0) == reference.report["exit_status"]


def test_the_html_report_holds_the_matrix_and_each_run(reference: Run) -> None:
    page = (reference.folder / "report.html").read_text()
    assert 'id="conformance"' in page and page.count('class="v v-') == len(ALL_CASES)
    assert 'id="run-1"' in page and "reference: reference httpx" in page


# --------------------------------------------------------------------------- flawed references

FLAWS = [
    ("api_key_on_vm", "routes_allowlisted,stream_is_live,cp_for_not_allowlisted,learns_from_retrieve",
     {"routes_allowlisted", "stream_is_live"}),
    ("jwt_on_cp", "fallback_on_browser_gone,evicts_on_browser_gone,cp_for_not_allowlisted",
     {"fallback_on_browser_gone"}),
    ("fallback_on_5xx", "no_fallback_on_5xx,no_fallback_on_plain_404", {"no_fallback_on_5xx"}),
    ("fallback_on_post", "no_fallback_on_post,no_fallback_on_ineligible_path", {"no_fallback_on_post"}),
    ("fallback_on_any_path", "no_fallback_on_ineligible_path,no_fallback_on_post",
     {"no_fallback_on_ineligible_path"}),
    ("two_reissues", "fallback_on_browser_gone,evicts_on_browser_gone", {"fallback_on_browser_gone"}),
    ("no_eviction", "evicts_on_browser_gone,fallback_on_browser_gone", {"evicts_on_browser_gone"}),
    ("buffered_stream", "stream_is_live,routes_allowlisted", {"stream_is_live"}),
]  # fmt: skip
VIOLATION = {
    "api_key_on_vm": "api_key_on_vm",
    "jwt_on_cp": "jwt_on_cp",
    "fallback_on_5xx": "unexpected_fallback",
    "fallback_on_post": "unexpected_fallback",
    "fallback_on_any_path": "unexpected_fallback",
    "two_reissues": "repeated_fallback",
    "no_eviction": "stale_route",
}


@pytest.mark.parametrize(("flaw", "cases", "fails"), FLAWS, ids=[f[0] for f in FLAWS])
def test_a_flawed_reference_fails_exactly_the_cases_of_its_flaw(
    flaw: str, cases: str, fails: set[str], tmp_path: Path
) -> None:
    client = flawed(flaw)
    run = conform(tmp_path, client, "--cases", cases)
    verdicts = run.verdicts(client)
    assert failing(verdicts) == fails and set(verdicts.values()) == {"pass", "fail"}, verdicts
    assert run.status == 1
    for case_id in fails:
        found = run.case(client, case_id)
        if flaw in VIOLATION:
            assert VIOLATION[flaw] in [v["rule"] for v in found["violations"]], found["why"]
        assert Path(found["repro"]["har"]).is_file() and Path(found["repro"]["curl"]).is_file()


# --------------------------------------------------------------------------- usage


@pytest.mark.parametrize(
    "args",
    [
        ["nonsense"],
        ["python==not a version"],
        ["cmd=/no/such/driver"],
        ["reference", "reference"],
        ["--cases", "no_such_case*"],
        ["--live"],
    ],
    ids=["client", "version", "cmd", "twice", "cases", "live-without-key"],
)
def test_a_usage_or_setup_error_exits_2_with_a_message(
    args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KERNEL_API_KEY", raising=False)
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("scripts/conform: ") and "Traceback" not in err


def test_a_bad_expect_file_exits_2_naming_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expect = tmp_path / "expect"
    expect.write_text("# known\npython fallback_on_browser_gone\njust-one-word\n")
    assert cli.main(["reference", "--expect", str(expect)]) == 2
    assert f"{expect}:3" in capsys.readouterr().err


# --------------------------------------------------------------------------- a driver that fails

DYING_DRIVER = """
import json, sys
for line in sys.stdin:
    request = json.loads(line)
    if request["op"] == "call":
        sys.stderr.write("driver: cannot go on\\n")
        sys.exit(3)
    answer = {"ok": True, "status": 200, "error": None, "session_id": "s-1"}
    if request["op"] == "hello":
        answer = {"ok": True, "client": "dying", "can": ["create", "call", "routing"]}
    print(json.dumps({**answer, "id": request["id"]}), flush=True)
"""


def test_a_driver_that_dies_makes_its_case_an_error_and_is_started_again(tmp_path: Path) -> None:
    driver = tmp_path / "dying.py"
    driver.write_text(DYING_DRIVER)
    client = f"cmd={sys.executable} {driver}"
    run = conform(tmp_path, client, "--cases", "routes_allowlisted,cp_for_not_allowlisted")
    assert run.verdicts(client) == {"routes_allowlisted": "error", "cp_for_not_allowlisted": "error"}
    why = run.case(client, "cp_for_not_allowlisted")["why"]
    assert "the driver exited during call (exit status 3" in why and "driver: cannot go on" in why
    assert run.status == 1
