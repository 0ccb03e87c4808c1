"""The decisions as a person reads them: one JSON-lines log line per final
decision and cache change, records that survive a save, mitmweb markers and comments, and no
API key or jwt in clear anywhere. mitmweb's own UI is in test_decisions_mitmweb.py."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from addon_harness import Harness, record, routed, secret_texts, wired
from flows import browser, cp_flow, gone_response, json_response
from known import API_KEY, CP, CP_HOST, JWT, JWT2, JWT_SECRET_PART, SID, SID2, VM_BASE
from mitmproxy import io as mitmio
from mitmproxy.utils.emoji import emoji

from addon.comments import MARKERS, comment, redact_url, summary
from addon.recorder import METADATA_KEY, JsonLinesLog
from addon.route_cache import redact

# --------------------------------------------------------------------------- the log


async def test_log_one_line_per_final_decision_and_cache_change(h: Harness) -> None:
    await h.learn(browser())  # route_cached + passthrough
    ok = await routed(h, f"/browsers/{SID}/fs/x")
    await h.respond(ok, json_response(200, {}))  # routed
    await h.exchange(cp_flow("GET", "/elsewhere", host="example.org"), json_response(200, {}))  # nothing
    gone = await routed(h)
    assert len(h.log()) == 3  # nothing logged before a decision is final
    await h.respond(gone, gone_response())  # route_evicted + reissue + fallback
    failed = await h.request(cp_flow("GET", f"/browsers/{SID}/fs/x"))  # passthrough no_route
    await h.fail(failed, "client disconnected")  # its final line
    lines = h.log()
    assert [(line["decision"], line["reason"]) for line in lines] == [
        ("route_cached", "create"),
        ("passthrough", "not_browser_subresource"),
        ("routed", None),
        ("route_evicted", "browser_gone"),
        ("reissue", None),
        ("fallback", None),
        ("passthrough", "no_route"),
    ]
    for line in lines:
        assert isinstance(line["ts"], float)
    copy = h.reissues.copies[0]
    assert lines[2]["flow_id"] == ok.id
    assert lines[2]["vm_status"] == 200
    assert lines[4]["flow_id"] == copy.id
    assert lines[4]["serves"] == gone.id
    assert lines[4]["cp_status"] == 200
    assert lines[5]["flow_id"] == gone.id
    assert lines[5]["reissue_flow"] == copy.id
    assert (lines[5]["vm_status"], lines[5]["cp_status"]) == (404, 200)
    assert lines[5]["url"] == f"{CP}/browsers/{SID}/telemetry/events"
    assert lines[5]["vm_url"] == f"{VM_BASE}/telemetry/events?jwt={redact(JWT)}"
    assert lines[3]["flow_id"] == gone.id


async def test_cache_changes_in_the_log_name_what_caused_them(tmp_path: Path) -> None:
    log = tmp_path / "decisions.jsonl"
    for script in wired(browserrouting_log=str(log)):
        await script.create("s1")
        script.tctx.command(script.commands.evict, "s1")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    cached, created, evicted = lines
    assert (cached["decision"], cached["reason"], cached["method"]) == ("route_cached", "create", "POST")
    assert cached["url"] == f"https://{CP_HOST}/browsers" and cached["flow_id"] == created["flow_id"]
    assert cached["jwt"] == JWT[:6] + "…" and JWT not in log.read_text()
    assert (evicted["decision"], evicted["reason"]) == ("route_evicted", "command")
    assert (evicted["method"], evicted["url"], evicted["flow_id"]) == (None, None, None)


def test_the_json_lines_log_writes_only_while_a_path_is_set(tmp_path: Path) -> None:
    log = JsonLinesLog()
    log.write({"decision": "lost"})  # off: nothing, no error
    path = tmp_path / "log.jsonl"
    log.open(str(path))
    log.write({"decision": "routed", "n": 1})
    log.write({"decision": "passthrough", "n": 2})
    log.open("")
    log.write({"decision": "lost"})
    log.close()
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [(line["decision"], line["n"]) for line in lines] == [("routed", 1), ("passthrough", 2)]
    assert all(isinstance(line["ts"], float) for line in lines)


def test_json_lines_log_bad_path_raises_and_keeps_old(tmp_path: Path) -> None:
    log = JsonLinesLog()
    good = tmp_path / "good.jsonl"
    log.open(str(good))
    with pytest.raises(OSError):
        log.open(str(tmp_path / "missing-dir" / "x.jsonl"))
    log.write({"decision": "kept"})
    log.close()
    assert json.loads(good.read_text(encoding="utf-8"))["decision"] == "kept"


# --------------------------------------------------------------------------- records, markers, comments


async def test_records_are_json_and_flows_can_be_saved(h: Harness) -> None:
    await h.learn(browser())
    ok = await routed(h, f"/browsers/{SID}/fs/x")
    await h.respond(ok, json_response(200, {}))
    gone = await routed(h)
    await h.respond(gone, gone_response())
    err = await routed(h, f"/browsers/{SID}/fs/y")
    await h.fail(err, "boom")
    flows = [*h.flows, *h.reissues.copies]
    for f in flows:
        rec = record(f)
        assert json.loads(json.dumps(rec)) == rec
        for key in ("decision", "reason", "session_id", "method", "url", "flow_id"):
            assert key in rec
        assert rec["flow_id"] == f.id
        assert f.marked in emoji
        assert f.comment.splitlines()[0].startswith(rec["decision"])
        f.copy()  # metadata must deep-copy
    buf = io.BytesIO()
    writer = mitmio.FlowWriter(buf)
    for f in flows:
        writer.add(f)
    buf.seek(0)
    read = list(mitmio.FlowReader(buf).stream())
    assert [f.metadata[METADATA_KEY]["decision"] for f in read] == [record(f)["decision"] for f in flows]


@pytest.mark.parametrize(
    ("scenario", "decision", "marker"),
    [
        ("passthrough", "passthrough", ":arrow_right:"),
        ("routed", "routed", ":rocket:"),
        ("fallback", "fallback", ":arrows_counterclockwise:"),
        ("no_fallback", "no_fallback", ":x:"),
    ],
)
async def test_each_decision_has_its_marker(h: Harness, scenario: str, decision: str, marker: str) -> None:
    if scenario == "passthrough":
        flow = await h.exchange(cp_flow("GET", "/browsers"), json_response(200, []))
    else:
        flow = await routed(h)
        responses = {
            "routed": json_response(200, {}),
            "fallback": gone_response(),
            "no_fallback": json_response(500, {}),
        }
        await h.respond(flow, responses[scenario])
    assert record(flow)["decision"] == decision
    assert flow.marked == marker
    assert marker in emoji
    if scenario == "fallback":
        assert h.reissues.copies[0].marked == ":leftwards_arrow_with_hook:"


def test_markers_are_mitmproxy_emoji_keys() -> None:
    assert set(MARKERS) == {"routed", "passthrough", "fallback", "no_fallback", "reissue"}
    for marker in MARKERS.values():
        assert marker in emoji


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (
            {"decision": "routed", "vm_host": "proxy.vm.test:8443", "vm_status": 200, "session_id": "s1"},
            "routed to VM proxy.vm.test:8443 (200) [s1]",
        ),
        (
            {"decision": "passthrough", "reason": "no_route", "cp_status": 200},
            "passthrough (no_route), CP 200",
        ),
        (
            {"decision": "fallback", "vm_status": 404, "cp_status": 200, "session_id": "s1"},
            "fallback: VM 404 browser_gone, CP re-issue 200 [s1]",
        ),
        ({"decision": "fallback", "vm_status": 404}, "fallback: VM 404 browser_gone, CP re-issue failed"),
        ({"decision": "no_fallback", "reason": "vm_error"}, "no_fallback (vm_error), VM no answer"),
        ({"decision": "no_fallback", "reason": "status", "vm_status": 502}, "no_fallback (status), VM 502"),
        ({"decision": "reissue", "serves": "f-1", "cp_status": 200}, "reissue for flow f-1, CP 200"),
    ],
)
def test_the_summary_line_says_the_decision_and_the_statuses(record: dict[str, Any], expected: str) -> None:
    assert summary(record) == expected


def test_comment_first_line_is_summary_then_fields() -> None:
    record = {
        "decision": "no_fallback",
        "reason": "status",
        "session_id": "s1",
        "method": "GET",
        "url": "https://api.example.test/browsers/s1/fs",
        "vm_status": 502,
        "error": None,
        "cache": [{"decision": "route_evicted", "session_id": "s1", "reason": "delete"}],
    }
    lines = comment(record).splitlines()
    assert lines[0] == summary(record)
    assert "· reason: status" in lines
    assert "· vm_status: 502" in lines
    assert "· cache: route_evicted s1 (delete)" in lines
    assert not any(line.startswith("· error:") for line in lines)


# --------------------------------------------------------------------------- secrets


async def test_no_api_key_or_jwt_in_clear_in_records_comments_or_logs(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    await h.learn(browser(), browser(SID2, jwt=JWT2, base_url="https://evil.example.test/x"))
    ok = await routed(h, f"/browsers/{SID}/fs/x?jwt={JWT}")
    await h.respond(ok, json_response(200, {}))
    gone = await routed(h)
    await h.respond(gone, gone_response())

    h.reissues.fail_with("refused")
    await h.learn(browser())
    bad = await routed(h)
    await h.respond(bad, gone_response())
    await h.exchange(cp_flow("DELETE", f"/browsers/{SID}"), json_response(200, browser()))
    texts = secret_texts(h, caplog.text)
    assert len(texts) > 10
    joined = "\n".join(texts)
    assert redact(JWT) in joined  # a short prefix is fine
    for secret in (API_KEY, JWT, JWT_SECRET_PART, JWT2):
        assert secret not in joined
    # the API key never reached the VM either
    assert "Authorization" not in ok.request.headers


def test_redact_keeps_only_a_short_prefix() -> None:
    assert redact(JWT) == JWT[:6] + "…"
    assert JWT not in redact(JWT)
    assert redact("") == ""


@pytest.mark.parametrize("secret", ["tok+x", "abcdef"])
def test_redact_short_secret_not_in_clear(secret: str) -> None:
    assert secret not in redact(secret)


def test_redact_url_cuts_jwt_keeps_others() -> None:
    url = f"https://proxy.vm.test/browser/kernel/fs?b=2&jwt={JWT}&a=1&b=3"
    out = redact_url(url)
    assert out == f"https://proxy.vm.test/browser/kernel/fs?b=2&jwt={redact(JWT)}&a=1&b=3"
    assert JWT not in out


def test_redact_url_encoded_key_and_value() -> None:
    out = redact_url("https://x.test/p?j%77t=eyJhbG%2BciOiJSUzI1NiJ9secretpart&x=%2F")
    assert "secretpart" not in out
    assert out.endswith("&x=%2F")
    assert out.startswith("https://x.test/p?j%77t=eyJhbG")


def test_redact_url_without_jwt_unchanged() -> None:
    for url in ("https://x.test/p", "https://x.test/p?a=1&jwtx=keep&xjwt=keep", "https://x.test/p?jwt"):
        assert redact_url(url) == url
