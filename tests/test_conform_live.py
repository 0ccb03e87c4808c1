"""scripts/conform --live, with the simulator standing in for the service's URL: the cases run the
same, and every browser the run created is deleted at its end, also when it is interrupted. And a
`cmd=` driver in another form (bash, curl and jq) that routes nothing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conform_support import ALL_CASES, conform
from conformance.clients import ROOT
from proxy_clients import wait_until
from simulator import Simulator

LIVE_CASES = (
    "routes_allowlisted,learns_from_retrieve,learns_from_acquire,evicts_on_release,fallback_on_browser_gone"
)


@pytest.fixture
def stand_in() -> Iterator[tuple[Simulator, dict[str, str], str]]:
    """The simulator as "the live service", the environment --live reads, and a browser the run
    did not create (it must survive the clean-up)."""
    with Simulator() as sim:
        env = {
            "KERNEL_API_KEY": "sk-live-stand-in",
            "KERNEL_BASE_URL": sim.cp_url,
            "KERNEL_CONFORM_VM_HOSTS": sim.vm_host,
            "KERNEL_CONFORM_UPSTREAM_CA": sim.cert_path,
            "KERNEL_CONFORM_POOL": "qa-pool",
        }
        yield sim, env, sim.create_browser()["session_id"]


def test_live_runs_the_cases_and_deletes_every_browser_it_created(
    stand_in: tuple[Simulator, dict[str, str], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim, env, kept = stand_in
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    run = conform(tmp_path, "reference", "--live", "--cases", LIVE_CASES, monkeypatch=monkeypatch)
    assert set(run.verdicts("reference").values()) == {"pass"} and run.status == 0
    assert run.report["service"] == f"the live service at {sim.cp_url}"
    assert list(sim.browsers) == [kept]
    cleanup = [
        r for r in sim.stats()["cp"]["requests"] if r["method"] == "DELETE" or r["path"].endswith("/release")
    ]
    assert cleanup and all(r["headers"]["authorization"] == "Bearer sk-live-stand-in" for r in cleanup)


def test_an_interrupted_live_run_deletes_its_browsers_too(
    stand_in: tuple[Simulator, dict[str, str], str], tmp_path: Path
) -> None:
    sim, env, kept = stand_in
    runner = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "scripts" / "conformance"),
            "reference",
            "--live",
            "--keep",
            str(tmp_path),
        ],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert wait_until(lambda: len(sim.browsers) >= 4, timeout=30), "the run created no browsers"
        runner.send_signal(signal.SIGINT)  # Ctrl-C
        output, _ = runner.communicate(timeout=60)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode == 1 and "interrupted" in output and "Traceback" not in output
    assert list(sim.browsers) == [kept]


BASH_DRIVER = r"""#!/usr/bin/env bash
# A driver in another form: bash, curl and jq. A client that routes nothing: every call goes to
# the control plane, as a curl user's does.
set -u
send() {  # METHOD URL [JSON BODY]: prints the body, then the HTTP status (000: none) on its own line
  local args=(-sS -x "$KERNEL_CONFORM_PROXY" -H "Authorization: Bearer $KERNEL_API_KEY")
  args+=(-X "$1" -w '\n%{http_code}')
  [ $# -ge 3 ] && args+=(-H 'Content-Type: application/json' --data-binary "$3")
  curl "${args[@]}" "$2" || printf '\n000'
}
answer() {  # ID OUTPUT-OF-SEND: what the caller got, as the protocol's answer
  local status=$((10#${2##*$'\n'})) body=${2%$'\n'*}
  jq -cn --argjson id "$1" --argjson status "$status" --arg body "$body" '
    ($status >= 200 and $status < 300) as $ok
    | {id: $id, ok: $ok, status: (if $status == 0 then null else $status end), body: $body,
       json: ($body | fromjson? // null),
       error: (if $ok then null elif $status == 0 then {kind: "connection", message: "curl failed"}
               else {kind: "status", message: "HTTP \($status)"} end)}
    | if .json | type == "object" and has("session_id") then .session_id = .json.session_id else . end'
}
while IFS= read -r line; do
  id=$(jq '.id' <<<"$line")
  case $(jq -r '.op' <<<"$line") in
    hello) jq -cn --argjson id "$id" '{id: $id, ok: true, client: "curl", version: "bash",
             can: ["create", "call"],
             cannot: {routing: "curl routes nothing: every call goes to the control plane"}}' ;;
    create) answer "$id" "$(send POST "$KERNEL_BASE_URL/browsers" '{}')" ;;
    call)
      url="$KERNEL_BASE_URL/browsers/$(jq -r '.session_id | @uri' <<<"$line")/$(jq -r '.path' <<<"$line")"
      query=$(jq -r '[.query[]? | "\(.[0] | @uri)=\(.[1] | @uri)"] | join("&")' <<<"$line")
      body=$(jq -c '.body // empty' <<<"$line")
      answer "$id" "$(send "$(jq -r '.method' <<<"$line")" "$url${query:+?$query}" ${body:+"$body"})" ;;
    close) jq -cn --argjson id "$id" '{id: $id, ok: true}'; exit 0 ;;
    *) jq -cn --argjson id "$id" '{id: $id, driver_error: "unknown op"}' ;;
  esac
done
"""


@pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("bash", "curl", "jq")), reason="needs bash, curl, jq"
)
def test_a_cmd_driver_in_bash_with_curl_is_judged_too(tmp_path: Path) -> None:
    driver = tmp_path / "driver.sh"
    driver.write_text(BASH_DRIVER)
    client = f"cmd=bash {driver}"
    run = conform(tmp_path, client)
    verdicts = run.verdicts(client)
    assert list(verdicts) == ALL_CASES and run.client(client)["label"] == "curl bash"
    assert verdicts.pop("cp_for_not_allowlisted") == "pass"
    assert set(verdicts.values()) == {"n/a"}
    assert {c["why"] for c in run.client(client)["cases"] if c["verdict"] == "n/a"} == {
        "curl routes nothing: every call goes to the control plane"
    }
    assert run.status == 0
    (suite,) = run.junit().findall("testsuite")
    assert (suite.get("tests"), suite.get("skipped"), suite.get("failures")) == (
        str(len(ALL_CASES)),
        str(len(ALL_CASES) - 1),
        "0",
    )
