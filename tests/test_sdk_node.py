"""The official Node SDK (tests/node) through a plain mitmdump: where its own routing sends requests.

tests/node/sdk_client.mjs drives `@onkernel/sdk` through mitmdump (no addon) to the simulator; the
simulator's records show where each request arrived and with which credentials.
"""

from __future__ import annotations

from urllib.parse import parse_qs

import pytest
from mitmdump_runner import Mitmdump
from proxy_clients import NODE, NODE_DIR, node_sdk, wait_until
from simulator import Simulator

API_KEY = "sk-node-sdk-test"

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not installed: the Node SDK driver needs Node 20"),
    pytest.mark.skipif(
        not (NODE_DIR / "node_modules" / "@onkernel" / "sdk").is_dir(),
        reason="tests/node/node_modules is missing: scripts/setup installs it when node and npm exist",
    ),
]


def test_node_sdk_routes_the_stream_to_the_vm_through_the_proxy() -> None:
    with (
        Simulator(sse_interval=0.05) as sim,
        Mitmdump({"ssl_verify_upstream_trusted_ca": sim.cert_path}, with_addon=False) as proxy,
    ):
        out = node_sdk(proxy, sim, [{"op": "create"}, {"op": "stream", "max_events": 2}], api_key=API_KEY)
        stats = sim.stats()
        cp_port, vm_port, jwts = sim.cp_port, sim.vm_port, {b: sim.jwt_for(b) for b in sim.browsers}
        wait_until(lambda: "telemetry/stream" in "".join(proxy.output), timeout=5)  # printed as it ends
        proxied = "".join(proxy.output)

    assert out["sdk_version"] == "0.84.0"
    assert out["routing_subresources"] == ["curl", "telemetry/stream"]  # the SDK's default allowlist
    create, stream = out["steps"]
    assert (create["ok"], create["status"], create["route_cached"]) == (True, 200, True)
    session_id = create["id"]
    assert (stream["ok"], stream["status"], stream["events"], stream["ended"]) == (True, 200, 2, "max_events")
    assert stream["event_ids"] == [f"vm-{session_id}-1", f"vm-{session_id}-2"]  # the VM's own events
    (sent,) = stream["requests"]
    assert (sent["to"], sent["authorization"], sent["jwt"]) == ("vm", False, True)

    # What arrived where, by the simulator's records.
    (created,) = stats["cp"]["requests"]
    assert (created["method"], created["path"], created["status"]) == ("POST", "/browsers", 200)
    assert created["headers"]["authorization"] == f"Bearer {API_KEY}"
    (streamed,) = stats["vm"]["requests"]
    assert (streamed["method"], streamed["path"]) == ("GET", "/browser/kernel/telemetry/stream")
    assert streamed["via_cp"] is False and streamed["status"] == 200
    assert "authorization" not in streamed["headers"]
    assert parse_qs(streamed["query"])["jwt"] == [jwts[session_id]]  # the route's jwt, from cdp_ws_url
    assert stats["by_host"] == {f"127.0.0.1:{cp_port}": 1, f"127.0.0.2:{vm_port}": 1}

    # Both went through mitmdump.
    assert f"POST http://127.0.0.1:{cp_port}/browsers" in proxied
    assert f"GET https://127.0.0.2:{vm_port}/browser/kernel/telemetry/stream" in proxied
