"""The conformance runner's parts that need no proxy: secrets out of HAR and curl files, the
--expect file, what each CLIENT argument means and where it is cached, the verdict of a case from
the violations it owns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conformance import clients
from conformance.caserun import CaseRun
from conformance.cases import Case, Outcome, catalog
from conformance.judge import Expected, Verdict, apply_expected, decide, read_expected
from conformance.scrub import REDACTED, Scrubber

API_KEY = "sk-live-0123456789abcdef"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzZXNzaW9uIjp7ImlkIjoieCJ9fQ.c2ln+/x="
JWT_IN_URL = "eyJhbGciOiJIUzI1NiJ9.eyJzZXNzaW9uIjp7ImlkIjoieCJ9fQ.c2ln%2B%2Fx%3D"


def test_the_har_keeps_no_api_key_and_no_jwt(tmp_path: Path) -> None:
    har = {
        "log": {
            "entries": [
                {
                    "request": {
                        "url": f"https://vm.example/browser/kernel/telemetry/events?limit=2&jwt={JWT_IN_URL}",
                        "headers": [{"name": "Authorization", "value": f"Bearer {API_KEY}"}],
                        "queryString": [{"name": "limit", "value": "2"}, {"name": "jwt", "value": JWT}],
                    },
                    "response": {
                        "content": {
                            "text": json.dumps({"cdp_ws_url": f"wss://vm/cdp?jwt={JWT_IN_URL}", "jwt": JWT}),
                        }
                    },
                }
            ]
        }
    }
    path = tmp_path / "flows.har"
    path.write_text(json.dumps(har))
    Scrubber(API_KEY).har(path)
    text = path.read_text()
    assert API_KEY not in text and JWT not in text and JWT_IN_URL not in text and "c2ln" not in text
    entry = json.loads(text)["log"]["entries"][0]
    assert entry["request"]["url"].endswith(f"?limit=2&jwt={REDACTED}")
    assert entry["request"]["queryString"] == [
        {"name": "limit", "value": "2"},
        {"name": "jwt", "value": REDACTED},
    ]
    assert entry["request"]["headers"] == [{"name": "Authorization", "value": REDACTED}]


def test_the_curl_line_keeps_its_secrets_as_shell_variables(tmp_path: Path) -> None:
    path = tmp_path / "request.sh"
    path.write_text(f"curl -H 'Authorization: Bearer {API_KEY}' 'https://vm/x?limit=2&jwt={JWT_IN_URL}'\n")
    Scrubber(API_KEY).curl(path)
    assert path.read_text() == (
        "curl -H 'Authorization: Bearer '\"$KERNEL_API_KEY\"'' "
        "'https://vm/x?limit=2&jwt='\"$KERNEL_BROWSER_JWT\"''\n"
    )


def test_expect_lines_are_client_and_case_globs(tmp_path: Path) -> None:
    path = tmp_path / "expect"
    path.write_text("# known\n\nnode fallback_on_*   # no fallback yet\n* evicts_on_browser_gone\n")
    expected = read_expected(path)
    assert expected == [Expected("node", "fallback_on_*", 3), Expected("*", "evicts_on_browser_gone", 4)]
    verdicts = [Verdict("fallback_on_browser_gone", "fail"), Verdict("evicts_on_browser_gone", "pass")]
    assert apply_expected("node", verdicts, expected) == ["node evicts_on_browser_gone"]  # listed, passed
    assert [v.verdict for v in verdicts] == ["expected", "pass"]
    assert apply_expected("python", [v := Verdict("fallback_on_browser_gone", "fail")], expected) == []
    assert v.verdict == "fail"


def test_every_violation_of_the_audit_decides_some_case() -> None:
    cases = catalog()
    owned = {rule for case in cases.values() for rule in case.owns}
    assert owned == {
        "api_key_on_vm", "jwt_on_cp", "jwt_mismatch", "not_allowlisted", "not_routed",
        "missing_fallback", "stale_route", "unexpected_fallback", "repeated_fallback",
    }  # fmt: skip
    assert len(cases) == 22 and all(case.checks and case.reference for case in cases.values())


class Settled:
    """A settled case run: just its flows."""

    def __init__(self, flows: list[dict[str, object]]) -> None:
        self.flows = flows


def verdict_of(case: str, flows: list[dict[str, object]], problems: list[tuple[str, str | None]]) -> Verdict:
    run: CaseRun = Settled(flows)  # type: ignore[assignment]
    return decide(catalog()[case], run, problems, None)


def test_a_violation_another_case_owns_is_reported_but_does_not_decide() -> None:
    flows: list[dict[str, object]] = [
        {"flow_id": "a" * 36, "decision": "client_routed", "violations": ["missing_fallback"]},
        {"flow_id": "b" * 36, "decision": "client_cp", "violations": []},
    ]
    verdict = verdict_of("evicts_on_browser_gone", flows, [])
    assert (verdict.verdict, verdict.violations, verdict.others) == (
        "pass",
        [],
        [("missing_fallback", "a" * 36)],
    )
    assert verdict.why == "also seen: missing_fallback (flow aaaaaaaa, fallback_on_browser_gone)"
    failed = verdict_of("fallback_on_browser_gone", flows, [("the caller got HTTP 404", "a" * 36)])
    assert (failed.verdict, failed.failing_flow) == ("fail", "a" * 36)
    assert failed.why == "missing_fallback (flow aaaaaaaa); the caller got HTTP 404 (flow aaaaaaaa)"


def test_a_reporting_case_is_info_whatever_it_saw() -> None:
    case: Case = catalog()["vm_retries"]
    run: CaseRun = Settled([{"flow_id": "c" * 36, "violations": ["stale_route"]}])  # type: ignore[assignment]
    assert decide(case, run, [], "3 VM attempts").verdict == "info"
    assert isinstance(Outcome(info="x").info, str)


@pytest.mark.parametrize(
    ("spec", "want"),
    [("reference", "reference.py"), ("python", "python_sdk.py"), ("cmd=sh -c 'exit 0'", "sh")],
)
def test_clients_that_need_no_install(spec: str, want: str) -> None:
    client = clients.prepare(spec)
    assert client.spec == spec and any(part.endswith(want) for part in client.argv)


def test_a_local_path_is_cached_by_its_contents(tmp_path: Path) -> None:
    checkout = tmp_path / "sdk"
    (checkout / "src").mkdir(parents=True)
    (checkout / "src" / "a.py").write_text("x = 1\n")
    (checkout / ".git").mkdir()
    (checkout / ".git" / "HEAD").write_text("ref\n")
    before = clients.fingerprint(checkout)
    (checkout / ".git" / "HEAD").write_text("other ref\n")  # not the package's contents
    assert clients.fingerprint(checkout) == before
    (checkout / "src" / "a.py").write_text("x = 22\n")
    after = clients.fingerprint(checkout)
    assert after != before
    cache = tmp_path / "cache"
    old = clients.slot(cache, "python", str(checkout), before)
    old.mkdir(parents=True)
    new = clients.slot(cache, "python", str(checkout), after)
    assert new != old and not old.exists(), "the entry of the older contents is removed"
    assert (
        clients.slot(cache, "node", "@onkernel/sdk@0.84.0", None) == cache / "node" / "@onkernel_sdk@0.84.0"
    )


def test_the_cache_is_outside_the_repo_and_can_be_moved(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KERNEL_CONFORM_CACHE", str(tmp_path / "c"))
    assert clients.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("KERNEL_CONFORM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert clients.cache_dir() == tmp_path / "x" / "kernel-conform"
