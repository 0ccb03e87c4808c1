"""The addon in a real mitmdump, between real clients (httpx, curl) and real loopback servers.

Each test asserts on what the servers received (the simulator counts every request
per side), not only on what the client got.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import API_KEY, proxy_options
from mitmdump_runner import Mitmdump
from mitmproxy import http, io
from simulator import Simulator

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def client(proxy: Mitmdump) -> httpx.Client:
    return httpx.Client(proxy=proxy.url, headers=AUTH, timeout=10)


def create_browser(proxy: Mitmdump, sim: Simulator) -> dict[str, Any]:
    """Create a browser through the proxy, so that the addon learns its route."""
    with client(proxy) as c:
        browser: dict[str, Any] = c.post(f"{sim.cp_url}/browsers", json={}).json()
    return browser


def requests_to(sim: Simulator, side: str, path_part: str) -> list[dict[str, Any]]:
    return [r for r in sim.stats()[side]["requests"] if path_part in r["path"]]


def events_url(sim: Simulator, session_id: str) -> str:
    return f"{sim.cp_url}/browsers/{session_id}/telemetry/events?limit=2&offset=0"


def test_positive_fallback_httpx(fresh_sim: Simulator, proxy: Mitmdump) -> None:
    browser = create_browser(proxy, fresh_sim)
    sid = browser["session_id"]
    fresh_sim.kill_on_vm(sid)
    fresh_sim.reset()

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


def test_positive_fallback_curl(fresh_sim: Simulator, proxy: Mitmdump) -> None:
    sid = create_browser(proxy, fresh_sim)["session_id"]
    fresh_sim.kill_on_vm(sid)
    fresh_sim.reset()
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


def test_gzip_encoded_browser_gone_still_falls_back(fresh_sim: Simulator, proxy: Mitmdump) -> None:
    sid = create_browser(proxy, fresh_sim)["session_id"]
    fresh_sim.kill_on_vm(sid)
    fresh_sim.reset()
    fresh_sim.set_gzip_gone(True)
    with client(proxy) as c:
        got = c.get(events_url(fresh_sim, sid))
    assert got.status_code == 200
    vm = requests_to(fresh_sim, "vm", "telemetry/events")
    assert len(vm) == 1 and vm[0]["status"] == 404
    assert len(requests_to(fresh_sim, "cp", "telemetry/events")) == 1


def test_reissue_that_cannot_connect_gets_a_502_that_says_why(sim: Simulator) -> None:
    """A second CP origin shares the route cache; nothing listens on it, so the re-issue fails."""
    with socket_port() as dead_port:
        dead_cp = f"http://127.0.0.1:{dead_port}"
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


def test_routed_sse_delivers_first_event_while_the_stream_is_open(
    fresh_sim: Simulator, proxy: Mitmdump
) -> None:
    sid = create_browser(proxy, fresh_sim)["session_id"]
    fresh_sim.reset()
    fresh_sim.hold_streams(True)
    try:
        with (
            client(proxy) as c,
            c.stream("GET", f"{fresh_sim.cp_url}/browsers/{sid}/telemetry/stream") as response,
        ):
            assert response.status_code == 200
            lines = response.iter_lines()
            first = next(line for line in lines if line.startswith("data:"))
            # The server is still holding the stream open: nothing else has been sent yet.
            vm = requests_to(fresh_sim, "vm", "telemetry/stream")
            assert len(vm) == 1 and vm[0]["t_end"] is None
            fresh_sim.release_streams()
            rest = [line for line in lines if line.startswith("data:")]
        assert json.loads(first.removeprefix("data:"))["id"] == f"vm-{sid}-1"
        assert len(rest) == 2
    finally:
        fresh_sim.release_streams()
    assert requests_to(fresh_sim, "cp", "telemetry/stream") == []
    assert proxy.records("routed", sid)[-1]["vm_status"] == 200


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


def test_concurrent_fallbacks_do_not_queue(fresh_sim: Simulator, proxy: Mitmdump) -> None:
    sid = create_browser(proxy, fresh_sim)["session_id"]
    fresh_sim.kill_on_vm(sid)
    fresh_sim.reset()
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


def test_api_key_never_reaches_the_vm_and_jwt_never_reaches_the_cp(
    fresh_sim: Simulator, proxy: Mitmdump
) -> None:
    sid = create_browser(proxy, fresh_sim)["session_id"]
    jwt = fresh_sim.jwt_for(sid)
    with client(proxy) as c:
        c.get(f"{fresh_sim.cp_url}/browsers/{sid}/fs/read_file", params={"path": "/tmp/x"})
        c.get(f"{fresh_sim.cp_url}/browsers/{sid}/telemetry/events")
    fresh_sim.kill_on_vm(sid)
    with client(proxy) as c:
        c.get(events_url(fresh_sim, sid))
    stats = fresh_sim.stats()
    assert all("authorization" not in r["headers"] for r in stats["vm"]["requests"] if not r["via_cp"])
    assert all("jwt" not in r["query"] for r in stats["cp"]["requests"])
    log = proxy.log_path.read_text()
    assert API_KEY not in log and jwt not in log and sid in log


def test_bad_option_is_refused_at_start_naming_the_option(sim: Simulator) -> None:
    for name, value in [
        ("browserrouting_control_plane", "api.onkernel.com"),
        ("browserrouting_subresources", "telemetry/str eam"),
        ("browserrouting_fallback", "telemetry/events?x"),
    ]:
        proxy = Mitmdump(proxy_options(sim, **{name: value}))
        with pytest.raises(RuntimeError, match=name):
            proxy.start(timeout=15)
        assert proxy.stop() not in (0, None)


class socket_port:
    """A loopback port that nothing listens on once the block exits."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        port: int = self.sock.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


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


def test_reissue_is_a_flow_of_its_own_in_saved_flows(sim: Simulator, tmp_path: Path) -> None:
    """What the view and `-w` see: the re-issue is its own flow, linked both ways."""
    flows_file = tmp_path / "flows.mitm"
    with Mitmdump(proxy_options(sim, save_stream_file=str(flows_file))) as proxy:
        sid = create_browser(proxy, sim)["session_id"]
        sim.kill_on_vm(sid)
        with client(proxy) as c:
            assert c.get(events_url(sim, sid)).status_code == 200
        proxy.records("fallback", sid)
    with flows_file.open("rb") as f:
        flows = [fl for fl in io.FlowReader(f).stream() if isinstance(fl, http.HTTPFlow)]
    by_decision = {fl.metadata["browserrouting"]["decision"]: fl for fl in flows}
    original, reissue = by_decision["fallback"], by_decision["reissue"]
    assert reissue.id != original.id and reissue.is_replay == "request"
    assert reissue.metadata["browserrouting"]["serves"] == original.id
    assert original.metadata["browserrouting"]["reissue_flow"] == reissue.id
    assert reissue.request.url == events_url(sim, sid)
    assert reissue.request.headers["authorization"] == f"Bearer {API_KEY}"
    assert original.response is not None and original.response.status_code == 200
    assert original.marked == ":arrows_counterclockwise:" and reissue.marked == ":leftwards_arrow_with_hook:"


def test_streamed_request_bodies_are_routed_too(sim: Simulator) -> None:
    """With stream_large_bodies, mitmproxy connects upstream before the `request` hook runs:
    the route must be chosen on the headers, and the body must arrive whole."""
    with Mitmdump(proxy_options(sim, stream_large_bodies="1k")) as proxy:
        sid = create_browser(proxy, sim)["session_id"]
        sim.reset()
        body = json.dumps({"command": "cat", "stdin": "z" * 200_000}).encode()
        with client(proxy) as c:
            got = c.post(f"{sim.cp_url}/browsers/{sid}/process/exec", content=body)
        assert got.status_code == 200
        vm = requests_to(sim, "vm", "process/exec")
        assert len(vm) == 1 and vm[0]["body_len"] == len(body) and "authorization" not in vm[0]["headers"]
        assert requests_to(sim, "cp", "process/exec") == []
        assert proxy.records("routed", sid)[-1]["vm_status"] == 200


def test_api_key_added_by_modify_headers_never_reaches_the_vm(sim: Simulator) -> None:
    """QA may let mitmproxy add the key; mitmproxy's own addons run after this script."""
    injected = "Bearer sk-injected-by-mitmproxy"
    options = proxy_options(sim, modify_headers=f"|~q|Authorization|{injected}")
    with Mitmdump(options) as proxy, httpx.Client(proxy=proxy.url, timeout=10) as c:  # no key here
        sid = c.post(f"{sim.cp_url}/browsers", json={}).json()["session_id"]
        sim.reset()
        assert c.get(f"{sim.cp_url}/browsers/{sid}/fs/read_file?path=/k").status_code == 200
        sim.kill_on_vm(sid)
        assert c.get(events_url(sim, sid)).status_code == 200
    vm = [r for r in sim.stats()["vm"]["requests"] if not r["via_cp"]]
    assert len(vm) == 2 and all("authorization" not in r["headers"] for r in vm)
    cp = requests_to(sim, "cp", "telemetry/events")
    assert len(cp) == 1 and cp[0]["headers"]["authorization"] == injected


def test_fallback_answer_is_whole_with_stream_large_bodies_set(sim: Simulator) -> None:
    """mitmproxy streams bodies over stream_large_bodies midway; the re-issue's must not be."""
    with Mitmdump(proxy_options(sim, stream_large_bodies="1k")) as proxy:
        sid = create_browser(proxy, sim)["session_id"]  # a browser object is under 1k
        sim.kill_on_vm(sid)
        with client(proxy) as c:
            got = c.get(f"{sim.cp_url}/browsers/{sid}/telemetry/events")
        assert got.status_code == 200 and len(got.content) > 1024
        assert got.json()[0]["id"] == f"cp-{sid}-1"
        assert proxy.records("fallback", sid)[-1]["cp_status"] == 200


def test_an_sse_stream_the_cp_serves_is_live_too(sim: Simulator) -> None:
    """Not routed (not allowlisted here), the stream goes through the CP, and still live."""
    with Mitmdump(proxy_options(sim, browserrouting_subresources="process")) as proxy:
        sid = create_browser(proxy, sim)["session_id"]
        sim.hold_streams(True)
        try:
            with (
                client(proxy) as c,
                c.stream("GET", f"{sim.cp_url}/browsers/{sid}/telemetry/stream") as response,
            ):
                lines = response.iter_lines()
                first = next(line for line in lines if line.startswith("data:"))
                assert requests_to(sim, "cp", "telemetry/stream")[-1]["t_end"] is None  # still open
                sim.release_streams()
                assert len([line for line in lines if line.startswith("data:")]) == 2
        finally:
            sim.release_streams()
        assert json.loads(first.removeprefix("data:"))["id"] == f"vm-{sid}-1"
        assert proxy.records("passthrough", sid)[-1]["reason"] == "not_allowlisted"
