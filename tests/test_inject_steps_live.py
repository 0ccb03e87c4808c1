"""Fault injection beyond an answer at once, in route mode, through a real mitmweb / mitmdump with
httpx and curl: answers held back (`@MS`, `delay`), `hang` until the client gives up or the rules
are cleared, `cut` bodies, sequences, seeded chance, and `cp:` rules on the fallback's own CP
re-issue. A held request holds up no other flow. (Audit mode's `cp:` is in
test_audit_clients.py; the Python SDK's `hang` and `502*2>gone` in test_audit_sdk.py.)
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from typing import Any

import httpx
import inject_support
import pytest
from conftest import proxy_options
from inject_support import inject
from mitmdump_runner import CommandFailed, Mitmdump
from proxy_clients import (
    AUTH,
    TLS,
    Answer,
    client,
    cp_hits,
    events_url,
    flow_records,
    gone_browser,
    new_browser,
    send,
    url,
    vm_hits,
    wait_until,
    web_api,
)
from simulator import Simulator

from addon.faults import CUT_ERROR
from addon.faults import rules as inject_rules

mitmweb, web = inject_support.mitmweb, inject_support.web  # the module's fixtures

SIMULATOR_OPTIONS = {"sse_interval": 0.02}  # the module's simulator: a VM stream ends quickly
CLIENTS = ("httpx", "curl")
HOLD_MS = 300
NEW_BAD_RULES = ["s=502~0.5>gone", "s=delay", "s=hang@100", "s=600", "s=502*0", "s=502@x", "cp:=gone"]


def rule_list(proxy: Mitmdump) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = json.loads(proxy.command("browserrouting.inject.list"))
    return listed


def timed(client_name: str, proxy: Mitmdump, target: str, timeout: float = 10) -> tuple[Answer, float]:
    started = time.monotonic()
    got = send(client_name, proxy, target, timeout=timeout)
    return got, time.monotonic() - started


def vm_sent(proxy: Mitmdump) -> int:
    """Requests the proxy counts as sent to the simulator's VM (browserrouting.summary)."""
    outbound: dict[str, int] = json.loads(proxy.command("browserrouting.summary"))["outbound"]
    return sum(n for host, n in outbound.items() if host.startswith("127.0.0.2:"))


def held(proxy: Mitmdump) -> int:
    """Flows mitmweb shows with neither an answer nor an error: held by the proxy."""
    return sum(1 for f in web_api(proxy, "/flows") if "response" not in f and "error" not in f)


def decided(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["decision"], r["reason"], r.get("injected"), r.get("injected_delay_ms")) for r in records]


# --------------------------------------------------------------------------- answers held back


@pytest.mark.parametrize("client_name", CLIENTS)
def test_delay_sends_the_request_on_late_and_the_client_gets_the_real_answer(
    web: Mitmdump, fresh_sim: Simulator, client_name: str
) -> None:
    sid = new_browser(web, fresh_sim)
    sent = vm_sent(web)
    inject(web, f"{sid}/fs=delay@{HOLD_MS}")
    got, took = timed(client_name, web, url(fresh_sim, sid, "fs/read_file?path=/late"))
    assert got.status == 200 and got.body and took >= HOLD_MS / 1000
    assert [r["status"] for r in vm_hits(fresh_sim, "fs/read_file")] == [200], "the VM answered, late"
    [record] = flow_records(web, sid, 1)
    assert decided([record]) == [("routed", None, "delay", HOLD_MS)] and record["vm_status"] == 200
    assert vm_sent(web) == sent + 1, "a delayed request was sent: it counts as outbound"


@pytest.mark.parametrize(("client_name", "kind"), [("httpx", "502"), ("curl", "429")])
def test_an_answer_at_ms_comes_no_sooner_and_never_reaches_the_vm(
    web: Mitmdump, fresh_sim: Simulator, client_name: str, kind: str
) -> None:
    sid = new_browser(web, fresh_sim)
    sent = vm_sent(web)
    inject(web, f"{sid}/fs={kind}@{HOLD_MS}")
    got, took = timed(client_name, web, url(fresh_sim, sid, "fs/read_file?path=/a"))
    assert got.status == int(kind) and took >= HOLD_MS / 1000
    assert got.headers["content-type"] == "application/json" and set(got.json()) == {"code", "message"}
    assert vm_hits(fresh_sim) == [] and vm_sent(web) == sent
    [record] = flow_records(web, sid, 1)
    assert decided([record]) == [("no_fallback", "not_eligible", kind, HOLD_MS)]
    comment = next(f["comment"] for f in web_api(web, "/flows") if f["id"] == record["flow_id"])
    assert f"· injected: {kind}" in comment and f"· injected_delay_ms: {HOLD_MS}" in comment


def test_gone_at_ms_on_an_eligible_get_falls_back_after_the_wait(web: Mitmdump, fresh_sim: Simulator) -> None:
    sid = new_browser(web, fresh_sim)
    inject(web, f"{sid}/telemetry/events=gone@{HOLD_MS}:1")
    got, took = timed("httpx", web, events_url(fresh_sim, sid))
    assert got.status == 200 and [e["id"] for e in got.json()] == [f"cp-{sid}-1", f"cp-{sid}-2"]
    assert took >= HOLD_MS / 1000
    assert vm_hits(fresh_sim) == [] and len(cp_hits(fresh_sim, "telemetry/events")) == 1
    fallback = web.records("fallback", sid)[-1]
    assert (fallback["injected"], fallback["injected_delay_ms"], fallback["cp_status"]) == (
        "gone",
        HOLD_MS,
        200,
    )


@pytest.mark.parametrize("client_name", CLIENTS)
def test_reset_at_ms_closes_the_connection_after_the_wait(
    web: Mitmdump, fresh_sim: Simulator, client_name: str
) -> None:
    sid = new_browser(web, fresh_sim)
    inject(web, f"{sid}=reset@{HOLD_MS}")
    got, took = timed(client_name, web, url(fresh_sim, sid, "fs/read_file?path=/r"))
    assert got.status is None and took >= HOLD_MS / 1000
    assert "Empty reply" in got.error if client_name == "curl" else got.error == "RemoteProtocolError"
    assert vm_hits(fresh_sim) == []
    assert decided(flow_records(web, sid, 1)) == [("no_fallback", "vm_error", "reset", HOLD_MS)]


# --------------------------------------------------------------------------- hang


@pytest.mark.parametrize("client_name", CLIENTS)
def test_hang_holds_the_request_until_the_client_gives_up(
    web: Mitmdump, fresh_sim: Simulator, client_name: str
) -> None:
    sid = new_browser(web, fresh_sim)
    inject(web, f"{sid}/telemetry/events=hang")
    got, took = timed(client_name, web, events_url(fresh_sim, sid), timeout=0.5)
    assert got.status is None and 0.5 <= took < 5
    assert got.error == "ReadTimeout" if client_name == "httpx" else got.error.startswith("curl exit 28")
    [record] = flow_records(web, sid, 1)  # logged once the client left: its flow ended
    assert decided([record]) == [("no_fallback", "vm_error", "hang", None)]
    assert record["error"] == "Connection killed."
    assert vm_hits(fresh_sim) == [] and cp_hits(fresh_sim, "telemetry/events") == [], "no answer, no fallback"
    assert held(web) == 0
    assert rule_list(web)[0]["left"] is None, "a lone hang lasts until cleared"


@pytest.mark.parametrize("clear", ["command", "option"])
def test_clearing_the_rules_lets_each_hang_go_and_its_flow_ends_killed(
    web: Mitmdump, fresh_sim: Simulator, clear: str
) -> None:
    sid = new_browser(web, fresh_sim)
    web.command("set", "browserrouting_inject", f"{sid}/fs=hang")
    got: dict[str, tuple[Answer, float]] = {}
    threads = [
        threading.Thread(
            target=lambda c=c: got.update({c: timed(c, web, url(fresh_sim, sid, "fs/read_file"))})
        )
        for c in CLIENTS
    ]
    for thread in threads:
        thread.start()
    assert wait_until(lambda: held(web) == 2)
    time.sleep(0.2)
    assert held(web) == 2 and not got, "held until cleared"
    if clear == "command":
        web.command("browserrouting.inject.clear")
    else:
        web.command("set", "browserrouting_inject", "")
    for thread in threads:
        thread.join(5)
    assert got["httpx"][0].error == "RemoteProtocolError" and "Empty reply" in got["curl"][0].error
    assert all(took < 5 for _, took in got.values()), "let go when cleared, not at the client's timeout"
    assert decided(flow_records(web, sid, 2)) == [("no_fallback", "vm_error", "hang", None)] * 2
    assert held(web) == 0 and vm_hits(fresh_sim) == []


def test_a_hang_killed_in_mitmweb_ends_without_waiting_for_the_client(
    web: Mitmdump, fresh_sim: Simulator
) -> None:
    sid = new_browser(web, fresh_sim)
    inject(web, f"{sid}/fs=hang")
    got: list[tuple[Answer, float]] = []
    thread = threading.Thread(
        target=lambda: got.append(timed("curl", web, url(fresh_sim, sid, "fs/read_file")))
    )
    thread.start()
    assert wait_until(lambda: held(web) == 1)
    web.command("flow.kill", "@all")  # what mitmweb's kill button does to the flow
    thread.join(5)
    assert "Empty reply" in got[0][0].error and got[0][1] < 5
    assert decided(flow_records(web, sid, 1)) == [("no_fallback", "vm_error", "hang", None)]
    assert held(web) == 0 and rule_list(web)[0]["left"] is None, "the rule stays"


async def test_fifty_held_requests_hold_up_no_other_flow(web: Mitmdump, fresh_sim: Simulator) -> None:
    hung, other = new_browser(web, fresh_sim), new_browser(web, fresh_sim)
    inject(web, f"{hung}/fs=hang")
    limits = httpx.Limits(max_connections=60)
    async with (
        httpx.AsyncClient(proxy=web.url, headers=AUTH, verify=TLS, timeout=20, limits=limits) as hold,
        httpx.AsyncClient(proxy=web.url, headers=AUTH, verify=TLS, timeout=20) as free,
    ):
        holding = [
            asyncio.create_task(hold.get(url(fresh_sim, hung, f"fs/read_file?path=/{i}"))) for i in range(50)
        ]
        assert await asyncio.to_thread(wait_until, lambda: held(web) == 50, 20)
        times = []
        for i in range(20):
            started = time.monotonic()
            answer = await free.get(url(fresh_sim, other, f"fs/read_file?path=/{i}"))
            times.append(time.monotonic() - started)
            assert answer.status_code == 200
        assert not any(task.done() for task in holding), "all 50 still held"
        await asyncio.to_thread(web.command, "browserrouting.inject.clear")
        cleared = time.monotonic()
        ended = await asyncio.gather(*holding, return_exceptions=True)
    assert max(times) < 1 and sum(times) < 4, times
    assert all(isinstance(e, httpx.RemoteProtocolError) for e in ended), ended
    assert time.monotonic() - cleared < 5
    assert len(vm_hits(fresh_sim, "fs/read_file")) == 20, "only the others reached the VM"
    records = flow_records(web, hung, 50)
    assert decided(records) == [("no_fallback", "vm_error", "hang", None)] * 50
    assert await asyncio.to_thread(held, web) == 0


# --------------------------------------------------------------------------- cut


def test_cut_sends_the_real_status_and_headers_then_closes_before_the_body_ends(
    web: Mitmdump, fresh_sim: Simulator
) -> None:
    sid = new_browser(web, fresh_sim)
    sent = vm_sent(web)
    inject(web, f"{sid}/fs=cut:2")
    target = url(fresh_sim, sid, "fs/read_file?path=/cut")
    with client(web) as c, c.stream("GET", target) as streamed:
        assert streamed.status_code == 200 and int(streamed.headers["content-length"]) > 0
        with pytest.raises(httpx.RemoteProtocolError, match=r"incomplete|without sending complete"):
            streamed.read()
    out = subprocess.run(
        ["curl", "-sS", "-i", "-x", web.url, "-H", f"Authorization: {AUTH['Authorization']}", target],
        capture_output=True,
    )
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    length = int(
        next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")).split(b":")[
            1
        ]
    )
    assert out.returncode == 18 and b"transfer closed" in out.stderr
    assert head.startswith(b"HTTP/1.1 200") and 0 < len(body) < length
    whole = send("httpx", web, target)  # the rule is spent: the whole body again
    assert whole.status == 200 and len(whole.body) == length
    assert [r["status"] for r in vm_hits(fresh_sim, "fs/read_file")] == [200] * 3, "the VM answered each time"
    assert vm_sent(web) == sent + 3, "a cut request was sent: it counts as outbound"
    records = flow_records(web, sid, 3)
    assert [(r["decision"], r["vm_status"], r.get("injected"), r.get("error")) for r in records] == [
        ("routed", 200, "cut", CUT_ERROR),
        ("routed", 200, "cut", CUT_ERROR),
        ("routed", 200, None, None),
    ]


def test_a_cut_browser_gone_is_no_browser_gone_so_no_fallback(web: Mitmdump, fresh_sim: Simulator) -> None:
    sid = gone_browser(web, fresh_sim)
    inject(web, f"{sid}/telemetry/events=cut:1")
    got = send("curl", web, events_url(fresh_sim, sid))
    assert got.status is None and got.error.startswith("curl exit 18")
    assert [r["status"] for r in vm_hits(fresh_sim)] == [404] and cp_hits(fresh_sim, "telemetry/events") == []
    [record] = flow_records(web, sid, 1)
    assert (
        decided([record]) == [("no_fallback", "not_browser_gone", "cut", None)] and record["vm_status"] == 404
    )
    assert web.records("route_evicted", sid, wait_for=0) == []


# --------------------------------------------------------------------------- sequences and chance


def test_a_sequence_answers_each_request_with_the_next_step_then_is_spent(
    web: Mitmdump, fresh_sim: Simulator
) -> None:
    sid = new_browser(web, fresh_sim)
    inject(web, f"{sid}/fs=502*2>pass>429:1>delay@{HOLD_MS}")
    assert [rule_list(web)[0][k] for k in ("left", "kind", "spent")] == [5, "502", False]
    got, lefts = [], []
    for i in range(6):
        answer, took = timed(CLIENTS[i % 2], web, url(fresh_sim, sid, f"fs/read_file?path=/{i}"))
        got.append((answer.status, took >= HOLD_MS / 1000))
        lefts.append(rule_list(web)[0]["left"])
    assert got == [(502, False), (502, False), (200, False), (429, False), (200, True), (200, False)]
    assert lefts == [4, 3, 2, 1, 0, 0]
    [listed] = rule_list(web)
    assert listed["spent"] and [s["left"] for s in listed["steps"]] == [0, 0, 0, 0]
    assert [r.get("injected") for r in flow_records(web, sid, 6)] == [
        "502",
        "502",
        None,
        "429",
        "delay",
        None,
    ]
    assert len(vm_hits(fresh_sim, "fs/read_file")) == 3, "pass, delay, and after the rule was spent"


def test_chance_gives_the_same_pattern_under_the_same_seed_across_two_proxy_starts(sim: Simulator) -> None:
    rule = "*/fs=503~0.5"
    options = proxy_options(sim, browserrouting_inject=rule, browserrouting_inject_seed="11")
    patterns = []
    for _ in range(2):
        with Mitmdump(options) as dump:
            sid = new_browser(dump, sim)
            with client(dump) as c:
                patterns.append(
                    [c.get(url(sim, sid, f"fs/read_file?path=/{i}")).status_code for i in range(16)]
                )
    assert patterns[0] == patterns[1] and set(patterns[0]) == {200, 503}
    drawn = inject_rules.parse_rule(rule, 11)  # the rule's own generator, as the proxy seeds it
    assert patterns[0] == [503 if drawn.take().kind == "503" else 200 for _ in range(16)]


# --------------------------------------------------------------------------- cp: the fallback's re-issue


def test_a_cp_rule_fails_the_fallbacks_reissue_once_and_the_client_gets_that_answer(
    web: Mitmdump, fresh_sim: Simulator
) -> None:
    sid = new_browser(web, fresh_sim)
    inject(web, f"{sid}/telemetry/events=502*2>gone", f"cp:{sid}/telemetry/events=503:1")
    got = [send(c, web, events_url(fresh_sim, sid)) for c in ("httpx", "curl", "httpx", "curl")]
    assert [a.status for a in got] == [502, 502, 503, 200]
    assert got[2].json() == {"code": "service_unavailable", "message": "service unavailable"}
    assert vm_hits(fresh_sim) == [] and len(cp_hits(fresh_sim, "telemetry/events")) == 1, "only the last read"
    records = flow_records(web, sid, 5)
    assert [(r["decision"], r["reason"], r.get("injected"), r.get("cp_status")) for r in records] == [
        ("no_fallback", "status", "502", None),
        ("no_fallback", "status", "502", None),
        ("reissue", None, "503", 503),
        ("fallback", None, "gone", 503),
        ("passthrough", "no_route", None, 200),
    ]
    assert (
        records[2]["serves"] == records[3]["flow_id"] and records[3]["reissue_flow"] == records[2]["flow_id"]
    )
    assert [r["spent"] for r in rule_list(web)] == [True, True]


def test_a_cp_rule_names_the_browser_as_the_cp_path_does(web: Mitmdump, fresh_sim: Simulator) -> None:
    sid = new_browser(web, fresh_sim, "cp-rule-by-name")
    inject(web, "cp-rule-by-name/telemetry/events=gone:1", "cp:cp-rule-by-name/telemetry/events=500:1")
    got = send("curl", web, events_url(fresh_sim, "cp-rule-by-name"))
    assert got.status == 500 and got.json()["code"] == "internal_error"
    assert cp_hits(fresh_sim, "telemetry/events") == []
    assert [r["decision"] for r in web.records("reissue", sid)] == ["reissue"]


def test_cp_rules_never_touch_vm_requests_nor_the_clients_own_cp_calls(
    web: Mitmdump, fresh_sim: Simulator
) -> None:
    sid = new_browser(web, fresh_sim)
    inject(web, f"cp:{sid}=503", "cp:*=504")
    assert send("httpx", web, events_url(fresh_sim, sid)).status == 200  # routed: a VM request
    assert send("curl", web, url(fresh_sim, sid, "computer/screenshot")).status == 200  # not allowlisted: CP
    assert [r.get("injected") for r in flow_records(web, sid, 2)] == [None, None]
    assert [r["left"] for r in rule_list(web)] == [None, None]


# --------------------------------------------------------------------------- bad rules


@pytest.mark.parametrize("bad", NEW_BAD_RULES)
def test_a_bad_rule_of_the_new_grammar_is_refused_naming_it_and_the_rules_are_kept(
    web: Mitmdump, bad: str
) -> None:
    web.command("set", "browserrouting_inject", "kept=502*2>gone")
    inject(web, "cp:kept/telemetry=503:1")
    before = rule_list(web)
    with pytest.raises(CommandFailed, match=r"browserrouting\.inject: ") as refused:
        web.command("browserrouting.inject", bad)
    assert repr(bad) in str(refused.value)
    with pytest.raises(CommandFailed, match="browserrouting_inject") as refused:
        web.command("set", "browserrouting_inject", f"ok=gone@10,{bad}")
    assert repr(bad) in str(refused.value)
    assert rule_list(web) == before
