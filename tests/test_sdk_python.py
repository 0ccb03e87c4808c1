"""End to end: the official `kernel` SDK (and curl) through a real mitmdump with the addon.

The SDK's own direct-to-VM routing is off (`KERNEL_BROWSER_ROUTING_SUBRESOURCES=""`), so it
sends every call to the control plane origin, through the proxy: where a call lands is the
addon's doing. Each test checks what the simulator received on each side, what the client
got, and the addon's decision records for the session, in order. Each starts from a fresh
simulator (its records reset).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import kernel
import pytest
from mitmdump_runner import Mitmdump
from proxy_clients import API_KEY, requests_to
from simulator import GONE_BODY, Simulator

pytestmark = pytest.mark.usefixtures("fresh_sim")

BEARER = f"Bearer {API_KEY}"


@dataclass
class Sdk:
    client: kernel.Kernel
    sent: list[httpx.Request] = field(default_factory=list)  # what the SDK put on the wire

    def last_sent(self, path_part: str) -> httpx.Request:
        return [r for r in self.sent if path_part in r.url.path][-1]


@pytest.fixture
def sdk(monkeypatch: pytest.MonkeyPatch, sim: Simulator, proxy: Mitmdump) -> Iterator[Sdk]:
    # Read when the client is constructed: the SDK must not route by itself.
    monkeypatch.setenv("KERNEL_BROWSER_ROUTING_SUBRESOURCES", "")
    monkeypatch.delenv("KERNEL_BASE_URL", raising=False)
    monkeypatch.delenv("KERNEL_CUSTOM_HEADERS", raising=False)
    sent: list[httpx.Request] = []

    def remember(request: httpx.Request) -> None:
        request.read()
        sent.append(request)

    http_client = kernel.DefaultHttpxClient(proxy=proxy.url, timeout=10, event_hooks={"request": [remember]})
    # No SDK retries: every attempt the simulator counts is one the client made once.
    client = kernel.Kernel(api_key=API_KEY, base_url=sim.cp_url, http_client=http_client, max_retries=0)
    yield Sdk(client, sent)
    client.close()
    # Whatever happened in the test, the SDK itself only ever addressed the control plane.
    cp = httpx.URL(sim.cp_url)
    assert {(r.url.host, r.url.port) for r in sent} <= {(cp.host, cp.port)}


def decisions(proxy: Mitmdump, session_id: str, count: int) -> list[tuple[str, str | None]]:
    """(decision, reason) of every record about the session, in log order, once `count` are in."""
    return [(r["decision"], r["reason"]) for r in proxy.records(None, session_id, wait_for=count)]


def ids(items: list[Any]) -> list[str]:
    return [str(item.to_dict()["id"]) for item in items]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_create_retrieve_list_delete_and_delete_evicts_the_route(
    sim: Simulator, proxy: Mitmdump, sdk: Sdk
) -> None:
    browser = sdk.client.browsers.create()
    sid = browser.session_id
    assert browser.base_url == sim.base_url
    cp = sim.stats()["cp"]["requests"]
    assert [(r["method"], r["path"], r["status"]) for r in cp] == [("POST", "/browsers", 200)]
    assert cp[0]["headers"]["authorization"] == BEARER
    cached = proxy.records("route_cached", sid)[-1]
    assert cached["reason"] == "create" and cached["base_url"] == sim.base_url
    assert sim.jwt_for(sid) not in json.dumps(cached)

    assert sdk.client.browsers.retrieve(sid).session_id == sid
    assert sid in {b.session_id for b in sdk.client.browsers.list(limit=100).items}

    sim.reset()
    page = sdk.client.browsers.telemetry.events(sid, limit=2)
    assert ids(page.items) == [f"vm-{sid}-1", f"vm-{sid}-2"]
    vm = requests_to(sim, "vm", "telemetry/events")
    assert len(vm) == 1 and vm[0]["status"] == 200 and not vm[0]["via_cp"]
    assert "authorization" not in vm[0]["headers"]
    assert vm[0]["query"].startswith("limit=2&jwt=")
    assert sim.stats()["cp"]["count"] == 0

    sim.reset()
    sdk.client.browsers.delete_by_id(sid)
    cp = sim.stats()["cp"]["requests"]
    assert [(r["method"], r["path"], r["status"]) for r in cp] == [("DELETE", f"/browsers/{sid}", 204)]

    # The route is gone: the next subresource call goes to the CP (which no longer knows it).
    sim.reset()
    with pytest.raises(kernel.NotFoundError) as err:
        sdk.client.browsers.telemetry.events(sid)
    assert err.value.body == {"code": "not_found", "message": "browser not found"}
    assert sim.stats()["vm"]["count"] == 0
    assert [r["status"] for r in requests_to(sim, "cp", "telemetry/events")] == [404]
    assert decisions(proxy, sid, 4) == [
        ("route_cached", "create"),
        ("routed", None),
        ("route_evicted", "delete"),
        ("passthrough", "no_route"),
    ]


def test_retrieve_and_list_fill_the_route_cache(sim: Simulator, proxy: Mitmdump, sdk: Sdk) -> None:
    # Created behind the proxy's back: it has no route for either.
    first = sim.create_browser()["session_id"]
    second = sim.create_browser()["session_id"]

    page = sdk.client.browsers.telemetry.events(first, limit=1)
    assert ids(page.items) == [f"cp-{first}-1"]
    assert sim.stats()["vm"]["count"] == 0
    assert proxy.records("passthrough", first)[-1]["reason"] == "no_route"

    sdk.client.browsers.retrieve(first)
    sim.reset()
    assert ids(sdk.client.browsers.telemetry.events(first, limit=1).items) == [f"vm-{first}-1"]
    assert len(requests_to(sim, "vm", "telemetry/events")) == 1
    assert sim.stats()["cp"]["count"] == 0
    assert decisions(proxy, first, 3) == [
        ("passthrough", "no_route"),
        ("route_cached", "retrieve"),
        ("routed", None),
    ]

    sdk.client.browsers.list(limit=100)
    sim.reset()
    assert ids(sdk.client.browsers.telemetry.events(second, limit=1).items) == [f"vm-{second}-1"]
    assert len(requests_to(sim, "vm", "telemetry/events")) == 1
    assert sim.stats()["cp"]["count"] == 0
    assert decisions(proxy, second, 2) == [("route_cached", "list"), ("routed", None)]


def test_pool_acquire_caches_and_release_evicts(sim: Simulator, proxy: Mitmdump, sdk: Sdk) -> None:
    acquired = sdk.client.browser_pools.acquire("e2e-pool")
    assert acquired is not None and acquired.pool is not None and acquired.pool.name == "e2e-pool"
    sid = acquired.session_id

    sim.reset()
    assert ids(sdk.client.browsers.telemetry.events(sid, limit=1).items) == [f"vm-{sid}-1"]
    assert len(requests_to(sim, "vm", "telemetry/events")) == 1 and sim.stats()["cp"]["count"] == 0

    sim.reset()
    sdk.client.browser_pools.release("e2e-pool", session_id=sid)
    sent = sdk.last_sent("/release").content
    assert json.loads(sent) == {"session_id": sid}
    cp = sim.stats()["cp"]["requests"]
    assert [(r["path"], r["status"]) for r in cp] == [("/browser_pools/e2e-pool/release", 204)]
    assert (cp[0]["body_sha256"], cp[0]["body_len"]) == (sha256(sent), len(sent))

    sim.reset()
    with pytest.raises(kernel.NotFoundError):
        sdk.client.browsers.telemetry.events(sid)
    assert sim.stats()["vm"]["count"] == 0
    assert decisions(proxy, sid, 4) == [
        ("route_cached", "pool_acquire"),
        ("routed", None),
        ("route_evicted", "pool_release"),
        ("passthrough", "no_route"),
    ]


def test_telemetry_events_fall_back_to_the_cp_when_the_browser_is_gone(
    sim: Simulator, proxy: Mitmdump, sdk: Sdk
) -> None:
    sid = sdk.client.browsers.create().session_id
    assert ids(sdk.client.browsers.telemetry.events(sid, limit=2).items) == [f"vm-{sid}-1", f"vm-{sid}-2"]
    sim.kill_on_vm(sid)
    sim.reset()

    page = sdk.client.browsers.telemetry.events(sid, limit=2)
    assert ids(page.items) == [f"cp-{sid}-1", f"cp-{sid}-2"]
    assert page.has_more is True and page.next_offset == 2  # the CP's paging headers came through
    vm = requests_to(sim, "vm", "telemetry/events")
    assert len(vm) == 1 and vm[0]["status"] == 404 and "authorization" not in vm[0]["headers"]
    cp = requests_to(sim, "cp", "telemetry/events")
    assert len(cp) == 1, "exactly one control-plane re-issue"
    assert cp[0]["headers"]["authorization"] == BEARER and cp[0]["query"] == "limit=2"
    fallback = proxy.records("fallback", sid)[-1]
    reissue = proxy.records("reissue", sid)[-1]
    assert (fallback["vm_status"], fallback["cp_status"]) == (404, 200)
    assert reissue["serves"] == fallback["flow_id"] and fallback["reissue_flow"] == reissue["flow_id"]

    # The SDK pages on: the route was evicted, so the next read goes straight to the CP.
    nxt = page.get_next_page()
    assert ids(nxt.items) == [f"cp-{sid}-3", f"cp-{sid}-4"]
    assert len(requests_to(sim, "vm", "telemetry/events")) == 1
    cp = requests_to(sim, "cp", "telemetry/events")
    assert len(cp) == 2 and cp[1]["query"] == "limit=2&offset=2"
    assert decisions(proxy, sid, 6) == [
        ("route_cached", "create"),
        ("routed", None),
        ("route_evicted", "browser_gone"),
        ("reissue", None),
        ("fallback", None),
        ("passthrough", "no_route"),
    ]


def test_telemetry_stream_is_routed_and_delivers_events_live(
    sim: Simulator, proxy: Mitmdump, sdk: Sdk
) -> None:
    sid = sdk.client.browsers.create().session_id
    sim.reset()
    sim.hold_streams(True)
    try:
        with sdk.client.browsers.telemetry.stream(sid) as stream:
            first = next(stream)
            # The VM is holding the stream open after its first event: it arrived live.
            vm = requests_to(sim, "vm", "telemetry/stream")
            assert len(vm) == 1 and vm[0]["t_end"] is None
            sim.release_streams()
            rest = list(stream)
    finally:
        sim.release_streams()
    assert (first.seq, ids([first])) == (1, [f"vm-{sid}-1"])
    assert [e.seq for e in rest] == [2, 3] and ids(rest) == [f"vm-{sid}-2", f"vm-{sid}-3"]
    vm = requests_to(sim, "vm", "telemetry/stream")
    assert len(vm) == 1 and vm[0]["status"] == 200 and vm[0]["headers"]["accept"] == "text/event-stream"
    assert "authorization" not in vm[0]["headers"]
    assert sim.stats()["cp"]["count"] == 0
    assert proxy.records("routed", sid)[-1]["vm_status"] == 200


def test_stale_stream_gets_the_vms_404_and_no_cp_reissue(sim: Simulator, proxy: Mitmdump, sdk: Sdk) -> None:
    """The reference's live QA step B: the stream path is not fallback-eligible."""
    sid = sdk.client.browsers.create().session_id
    sim.kill_on_vm(sid)
    sim.reset()
    with pytest.raises(kernel.NotFoundError) as err, sdk.client.browsers.telemetry.stream(sid) as stream:
        list(stream)
    assert err.value.status_code == 404
    assert err.value.response.content == GONE_BODY, "the VM's answer, untouched"
    stats = sim.stats()
    assert stats["cp"]["count"] == 0, "zero control-plane re-issues"
    assert stats["by_host"] == {f"{sim.vm_host}:{sim.vm_port}": 1}
    assert [(r["path"], r["status"]) for r in stats["vm"]["requests"]] == [
        ("/browser/kernel/telemetry/stream", 404)
    ]
    record = proxy.records("no_fallback", sid)[-1]
    assert (record["reason"], record["vm_status"]) == ("not_eligible", 404)
    assert decisions(proxy, sid, 2) == [("route_cached", "create"), ("no_fallback", "not_eligible")]


def test_process_exec_body_is_delivered_intact_and_a_gone_post_is_not_reissued(
    sim: Simulator, proxy: Mitmdump, sdk: Sdk
) -> None:
    sid = sdk.client.browsers.create().session_id
    sim.reset()
    args = ["héllo wörld ✓", 'quote " and \\ backslash', "x" * 20_000]
    result = sdk.client.browsers.process.exec(sid, command="echo", args=args, env={"K": "v=1&2"})
    sent = sdk.last_sent("/process/exec").content
    assert json.loads(sent) == {"command": "echo", "args": args, "env": {"K": "v=1&2"}}
    vm = requests_to(sim, "vm", "process/exec")
    assert len(vm) == 1 and vm[0]["method"] == "POST" and vm[0]["status"] == 200
    assert (vm[0]["body_sha256"], vm[0]["body_len"]) == (sha256(sent), len(sent))
    assert "authorization" not in vm[0]["headers"]
    echo: Any = result.to_dict()["sim_echo"]
    assert (echo["sha256"], echo["length"]) == (sha256(sent), len(sent)) and result.exit_code == 0
    assert sim.stats()["cp"]["count"] == 0

    sim.kill_on_vm(sid)
    sim.reset()
    with pytest.raises(kernel.NotFoundError) as err:
        sdk.client.browsers.process.exec(sid, command="echo", args=args, env={"K": "v=1&2"})
    assert err.value.body == {"code": "browser_gone", "message": "browser not found"}
    vm = requests_to(sim, "vm", "process/exec")
    assert len(vm) == 1 and vm[0]["status"] == 404 and vm[0]["body_sha256"] == sha256(sent)
    assert sim.stats()["cp"]["count"] == 0, "a POST never falls back"
    assert decisions(proxy, sid, 3) == [
        ("route_cached", "create"),
        ("routed", None),
        ("no_fallback", "not_get"),
    ]


def curl(proxy: Mitmdump, *args: str) -> bytes:
    # NO_PROXY and friends would make curl skip the proxy for loopback addresses.
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", "-x", proxy.url, "-H", f"Authorization: {BEARER}", *args],
        capture_output=True,
        timeout=20,
        check=True,
        env=env,
    ).stdout


def test_curl_create_stream_exec_and_stale_stream(sim: Simulator, proxy: Mitmdump, tmp_path: Path) -> None:
    created = json.loads(
        curl(proxy, "-H", "Content-Type: application/json", "-d", "{}", f"{sim.cp_url}/browsers")
    )
    sid = created["session_id"]
    assert proxy.records("route_cached", sid)[-1]["reason"] == "create"

    sim.reset()
    out = curl(proxy, "-N", f"{sim.cp_url}/browsers/{sid}/telemetry/stream").decode()
    events = [
        json.loads(line.removeprefix("data: ")) for line in out.splitlines() if line.startswith("data: ")
    ]
    assert [e["id"] for e in events] == [f"vm-{sid}-{n}" for n in (1, 2, 3)]
    assert [r["status"] for r in requests_to(sim, "vm", "telemetry/stream")] == [200]
    assert sim.stats()["cp"]["count"] == 0
    assert proxy.records("routed", sid)[-1]["vm_status"] == 200

    sim.reset()
    body = (
        json.dumps({"command": "cat", "args": ["\u00e9\u2713", "\\x00\r\n"]}, ensure_ascii=False).encode()
        + b"\n"
    )
    payload = tmp_path / "exec.json"
    payload.write_bytes(body)
    got = json.loads(
        curl(
            proxy,
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            f"@{payload}",
            f"{sim.cp_url}/browsers/{sid}/process/exec",
        )
    )
    assert (got["sim_echo"]["sha256"], got["sim_echo"]["length"]) == (sha256(body), len(body))
    vm = requests_to(sim, "vm", "process/exec")
    assert len(vm) == 1 and (vm[0]["body_sha256"], vm[0]["body_len"]) == (sha256(body), len(body))
    assert sim.stats()["cp"]["count"] == 0
    proxy.records("routed", sid, wait_for=2)

    sim.kill_on_vm(sid)
    sim.reset()
    head, _, gone = (
        curl(proxy, "-i", f"{sim.cp_url}/browsers/{sid}/telemetry/stream")
        .replace(b"\r\n", b"\n")
        .partition(b"\n\n")
    )
    assert head.startswith(b"HTTP/1.1 404") and gone == GONE_BODY
    assert sim.stats()["cp"]["count"] == 0
    assert [r["status"] for r in requests_to(sim, "vm", "telemetry/stream")] == [404]
    assert decisions(proxy, sid, 4) == [
        ("route_cached", "create"),
        ("routed", None),
        ("routed", None),
        ("no_fallback", "not_eligible"),
    ]
