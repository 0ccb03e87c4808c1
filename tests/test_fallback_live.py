"""The fallback through a real mitmdump, between real clients (httpx, curl) and the simulator:
each test asserts on what each side received (the simulator counts every request), not only on
what the client got."""

from __future__ import annotations

import asyncio
import json
import subprocess
from http import HTTPStatus

import httpx
import pytest
from conftest import proxy_options
from mitmdump_runner import Mitmdump, free_port
from proxy_clients import API_KEY, AUTH, client, create_browser, events_url, gone_browser, requests_to
from simulator import Simulator


def test_httpx_gets_the_cps_answer_after_one_reissue_when_the_browser_is_gone(
    fresh_sim: Simulator, proxy: Mitmdump
) -> None:
    sid = gone_browser(proxy, fresh_sim)

    with client(proxy) as c:
        got = c.get(events_url(fresh_sim, sid))
    assert got.status_code == 200
    assert got.headers["X-Next-Offset"] and got.headers["X-Has-More"] in ("true", "false")
    assert all(e["id"].startswith("cp-") for e in got.json())

    vm = requests_to(fresh_sim, "vm", "telemetry/events")
    cp = requests_to(fresh_sim, "cp", "telemetry/events")
    assert len(vm) == 1 and vm[0]["status"] == 404
    assert "authorization" not in vm[0]["headers"]
    assert "jwt=" in vm[0]["query"] and "limit=2&offset=0" in vm[0]["query"]
    assert len(cp) == 1, "exactly one control-plane re-issue"
    assert cp[0]["headers"]["authorization"] == f"Bearer {API_KEY}"
    assert cp[0]["query"] == "limit=2&offset=0", "no injected jwt, query kept in order"

    fallback = proxy.records("fallback", sid)[-1]
    reissue = proxy.records("reissue", sid)[-1]
    assert fallback["session_id"] == sid and fallback["vm_status"] == 404 and fallback["cp_status"] == 200
    assert fallback["reissue_flow"] == reissue["flow_id"] and reissue["serves"] == fallback["flow_id"]

    # The route is gone: the next read goes straight to the control plane.
    with client(proxy) as c:
        again = c.get(events_url(fresh_sim, sid))
    assert again.status_code == 200
    assert len(requests_to(fresh_sim, "vm", "telemetry/events")) == 1
    assert len(requests_to(fresh_sim, "cp", "telemetry/events")) == 2
    assert proxy.records("passthrough", sid)[-1]["reason"] == "no_route"


def test_curl_gets_the_cps_answer_after_one_reissue_when_the_browser_is_gone(
    fresh_sim: Simulator, proxy: Mitmdump
) -> None:
    sid = gone_browser(proxy, fresh_sim)
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-i",
            "-x",
            proxy.url,
            "-H",
            f"Authorization: Bearer {API_KEY}",
            events_url(fresh_sim, sid),
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout
    head, _, body = out.partition("\n\n")
    assert head.startswith("HTTP/1.1 200")
    assert "x-next-offset:" in head.lower()
    assert json.loads(body)[0]["id"].startswith("cp-")
    assert len(requests_to(fresh_sim, "vm", "telemetry/events")) == 1
    cp = requests_to(fresh_sim, "cp", "telemetry/events")
    assert len(cp) == 1 and "jwt" not in cp[0]["query"]


@pytest.mark.parametrize("status", [502, 503, 504])
def test_transient_5xx_is_returned_without_reissue(
    fresh_sim: Simulator, proxy: Mitmdump, status: int
) -> None:
    sid = create_browser(proxy, fresh_sim)["session_id"]
    fresh_sim.reset()
    fresh_sim.set_fault(status, path_contains="telemetry/events")
    with client(proxy) as c:
        got = c.get(events_url(fresh_sim, sid))
    assert got.status_code == status
    assert got.text == f"simulated {status} {HTTPStatus(status).phrase}\n"
    assert len(requests_to(fresh_sim, "vm", "telemetry/events")) == 1
    assert requests_to(fresh_sim, "cp", "telemetry/events") == []
    record = proxy.records("no_fallback", sid)[-1]
    assert record["reason"] == "status" and record["vm_status"] == status


def test_connection_error_is_not_reissued(fresh_sim: Simulator, proxy: Mitmdump) -> None:
    sid = create_browser(proxy, fresh_sim)["session_id"]
    fresh_sim.reset()
    fresh_sim.set_fault(None, reset=True, path_contains="telemetry/events")
    with client(proxy) as c:
        got = c.get(events_url(fresh_sim, sid))
    assert got.status_code == 502  # mitmproxy's own answer for a dead upstream
    assert requests_to(fresh_sim, "cp", "telemetry/events") == []
    assert proxy.records("no_fallback", sid)[-1]["reason"] == "vm_error"


def test_a_gzip_encoded_browser_gone_from_the_vm_still_falls_back(
    fresh_sim: Simulator, proxy: Mitmdump
) -> None:
    sid = gone_browser(proxy, fresh_sim)
    fresh_sim.set_gzip_gone(True)
    with client(proxy) as c:
        got = c.get(events_url(fresh_sim, sid))
    assert got.status_code == 200
    vm = requests_to(fresh_sim, "vm", "telemetry/events")
    assert len(vm) == 1 and vm[0]["status"] == 404
    assert len(requests_to(fresh_sim, "cp", "telemetry/events")) == 1


def test_post_body_is_delivered_intact_and_never_reissued(fresh_sim: Simulator, proxy: Mitmdump) -> None:
    sid = create_browser(proxy, fresh_sim)["session_id"]
    fresh_sim.reset()
    body = json.dumps({"command": "echo", "args": ["héllo", "x" * 5000]}).encode()
    with client(proxy) as c:
        got = c.post(
            f"{fresh_sim.cp_url}/browsers/{sid}/process/exec",
            content=body,
            headers={"Content-Type": "application/json"},
        )
    assert got.status_code == 200
    vm = requests_to(fresh_sim, "vm", "process/exec")
    assert len(vm) == 1 and vm[0]["method"] == "POST" and vm[0]["body_len"] == len(body)
    assert "authorization" not in vm[0]["headers"]
    fresh_sim.kill_on_vm(sid)
    with client(proxy) as c:
        gone = c.post(f"{fresh_sim.cp_url}/browsers/{sid}/process/exec", content=body)
    assert gone.status_code == 404 and gone.json()["code"] == "browser_gone"
    assert requests_to(fresh_sim, "cp", "process/exec") == []
    assert proxy.records("no_fallback", sid)[-1]["reason"] == "not_get"


def test_reissue_that_cannot_connect_gets_a_502_that_says_why(sim: Simulator) -> None:
    """A second CP origin shares the route cache; nothing listens on it, so the re-issue fails."""
    dead_cp = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    options = proxy_options(sim, browserrouting_control_plane=f"{sim.cp_url},{dead_cp}")
    with Mitmdump(options) as proxy:
        sid = create_browser(proxy, sim)["session_id"]
        sim.kill_on_vm(sid)
        with client(proxy) as c:
            got = c.get(f"{dead_cp}/browsers/{sid}/telemetry/events")
        assert got.status_code == 502
        assert got.json()["code"] == "fallback_failed"
        assert "fallback failed" in got.json()["message"]
        record = proxy.records("fallback", sid)[-1]
        assert record["error"] and "cp_status" not in record


def test_concurrent_fallbacks_do_not_queue(fresh_sim: Simulator, proxy: Mitmdump) -> None:
    sid = gone_browser(proxy, fresh_sim)
    # The VM is slow enough that all 20 are routed before the first browser_gone evicts the
    # route; the CP is slow enough that overlapping re-issues are visible at the server.
    fresh_sim.set_latency(cp=0.5, vm=0.3)

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(proxy=proxy.url, headers=AUTH, timeout=30) as c:
            return await asyncio.gather(*(c.get(events_url(fresh_sim, sid)) for _ in range(20)))

    responses = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * 20
    cp = fresh_sim.stats()["cp"]
    assert len(requests_to(fresh_sim, "vm", "telemetry/events")) == 20
    assert len(requests_to(fresh_sim, "cp", "telemetry/events")) == 20, "each request re-issued exactly once"
    assert cp["max_in_flight"] > 1, "re-issues overlapped at the control plane"
    fallbacks = proxy.records("fallback", sid, wait_for=20)
    served = {r["serves"] for r in proxy.records("reissue", sid, wait_for=20)}
    ours = {r["flow_id"] for r in fallbacks}
    assert len(ours) == 20 and ours <= served


def test_upstream_proxy_mode_carries_the_reissue(sim: Simulator) -> None:
    """The re-issue uses mitmproxy's upstream machinery: in upstream mode it goes via the upstream.

    The upstream is a second mitmdump whose addon routes nothing, so its decision log
    lists what passed through it; TLS to the VM is tunnelled through it untouched.
    """
    upstream_options = proxy_options(sim, browserrouting_subresources="", ignore_hosts="127.0.0.2")
    with Mitmdump(upstream_options) as upstream:
        with Mitmdump(proxy_options(sim), extra_args=("--mode", f"upstream:{upstream.url}")) as proxy:
            sid = create_browser(proxy, sim)["session_id"]
            sim.kill_on_vm(sid)
            with client(proxy) as c:
                got = c.get(events_url(sim, sid))
            assert got.status_code == 200
            assert proxy.records("fallback", sid)[-1]["cp_status"] == 200
        seen = upstream.records("passthrough", sid)
        assert [r["url"] for r in seen] == [events_url(sim, sid)]
