"""The simulator's control plane: SDK-valid browser and pool shapes, bearer auth, offset pages,
and a browser's subresource calls proxied to its VM (or sent straight to the VM by the SDK).

Other tests trust the simulator to behave like Kernel; these pin that behaviour.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import kernel
import pytest
import simulator_support as support
from kernel.lib.browser_routing.util import jwt_from_cdp_ws_url
from kernel.types import (
    BrowserCreateResponse,
    BrowserListResponse,
    BrowserPoolAcquireResponse,
    BrowserRetrieveResponse,
)
from kernel.types.browsers import ProcessExecResponse
from simulator import Simulator
from simulator_support import kernel_client, trust

# The fixtures of simulator_support, for this module's tests (a fresh simulator per test).
sim, cp, sdk = support.sim, support.cp, support.sdk


def test_urls_and_loopback_only(sim: Simulator) -> None:
    assert sim.cp_url == f"http://127.0.0.1:{sim.cp_port}"
    assert sim.vm_url == f"https://127.0.0.2:{sim.vm_port}"
    assert sim.base_url == f"https://127.0.0.2:{sim.vm_port}/browser/kernel"
    assert Path(sim.cert_path).is_file()
    with pytest.raises(ValueError):
        Simulator(vm_host="10.0.0.1")
    with pytest.raises(ValueError):
        Simulator(cp_host="0.0.0.0")


def test_cp_over_https_with_the_vms_ca() -> None:
    with Simulator(cp_tls=True) as tls_sim:
        assert tls_sim.cp_url == f"https://127.0.0.1:{tls_sim.cp_port}"
        auth = {"Authorization": "Bearer k"}
        with httpx.Client(verify=trust(tls_sim.cert_path), trust_env=False) as c:
            created = c.post(f"{tls_sim.cp_url}/browsers", json={}, headers=auth).json()
            assert created["base_url"] == tls_sim.base_url
            got = c.get(f"{tls_sim.cp_url}/browsers/{created['session_id']}", headers=auth)
            assert got.status_code == 200
        with httpx.Client(trust_env=False) as c, pytest.raises(httpx.HTTPError):
            c.get(f"http://127.0.0.1:{tls_sim.cp_port}/browsers", headers=auth)  # no plain HTTP there
        assert tls_sim.stats()["cp"]["count"] == 2


def test_sdk_create_list_get_delete(sim: Simulator, sdk: kernel.Kernel, cp: httpx.Client) -> None:
    created = sdk.browsers.create(name="alpha")
    assert isinstance(created, BrowserCreateResponse)
    assert created.name == "alpha"
    assert created.base_url == sim.base_url
    BrowserCreateResponse.model_validate(sim.browsers[created.session_id])

    # The jwt needs URL encoding; the cdp_ws_url carries it percent-encoded.
    jwt = jwt_from_cdp_ws_url(created.cdp_ws_url)
    assert jwt == sim.jwt_for("alpha")
    assert {"+", "/", "="} <= set(jwt)
    assert created.cdp_ws_url.startswith(f"wss://127.0.0.2:{sim.vm_port}/browser/cdp?jwt=tok%2B")

    raw = cp.post("/browsers", json={})
    assert raw.status_code == 200
    assert raw.headers["content-type"] == "application/json"
    other = BrowserCreateResponse.model_validate(raw.json())
    assert other.name is None

    page = sdk.browsers.list()
    assert all(isinstance(b, BrowserListResponse) for b in page.items)
    assert {b.session_id for b in page.items} == {created.session_id, other.session_id}
    assert page.has_more is False

    # Offset page: a plain JSON array plus X-Has-More / X-Next-Offset.
    first = cp.get("/browsers", params={"limit": 1})
    assert isinstance(first.json(), list) and len(first.json()) == 1
    assert (first.headers["x-has-more"], first.headers["x-next-offset"]) == ("true", "1")
    BrowserListResponse.model_validate(first.json()[0])
    assert len(list(sdk.browsers.list(limit=1))) == 2  # SDK auto-pagination follows the headers

    assert sdk.browsers.retrieve("alpha").session_id == created.session_id
    by_id = cp.get(f"/v1/browsers/{created.session_id}")  # optional /v1 prefix
    assert BrowserRetrieveResponse.model_validate(by_id.json()).name == "alpha"

    sdk.browsers.delete_by_id(created.session_id)  # typed -> None: the 204 body is ignored
    assert sim.stats()["cp"]["requests"][-1]["status"] == 204
    with pytest.raises(kernel.NotFoundError):
        sdk.browsers.retrieve(created.session_id)
    missing = cp.get(f"/browsers/{created.session_id}")
    assert (missing.status_code, missing.json()) == (
        404,
        {"code": "not_found", "message": "browser not found"},
    )
    assert cp.delete(f"/browsers/{created.session_id}").status_code == 404
    assert created.session_id not in sim.browsers
    assert cp.post("/browsers", json={"name": "alpha"}).status_code == 200  # the name is free again


def test_pool_acquire_release(sim: Simulator, sdk: kernel.Kernel) -> None:
    acquired = sdk.browser_pools.acquire("pool-a")
    assert isinstance(acquired, BrowserPoolAcquireResponse)
    assert acquired.pool is not None and acquired.pool.name == "pool-a"
    BrowserPoolAcquireResponse.model_validate(sim.browsers[acquired.session_id])
    sdk.browser_pools.release("pool-a", session_id=acquired.session_id)
    assert sim.stats()["cp"]["requests"][-1]["status"] == 204
    assert acquired.session_id not in sim.browsers
    with pytest.raises(kernel.NotFoundError):
        sdk.browser_pools.release("pool-a", session_id=acquired.session_id)


def test_cp_requires_bearer(sim: Simulator) -> None:
    with httpx.Client(base_url=sim.cp_url, trust_env=False) as c:
        for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic abc"}):
            r = c.get("/browsers", headers=headers)
            assert r.status_code == 401
            assert r.headers["content-type"] == "application/json"
            assert r.json()["code"] == "unauthorized"
    assert sim.stats()["cp"]["count"] == 3


def test_cp_proxies_subresources_to_vm(sim: Simulator, sdk: kernel.Kernel) -> None:
    b = sdk.browsers.create()
    sim.reset()
    result = sdk.browsers.process.exec(b.session_id, command="echo", args=["hi"])
    assert isinstance(result, ProcessExecResponse) and result.exit_code == 0
    echo = json.loads(base64.b64decode(result.stdout_b64 or ""))
    assert echo["json"] == {"command": "echo", "args": ["hi"]}

    data = sdk.browsers.fs.read_file(b.session_id, path="/tmp/a b").read()
    assert data.startswith(b"simulated file /tmp/a b\n") and data.endswith(bytes(range(256)))

    stats = sim.stats()
    assert stats["cp"]["count"] == 2 and stats["vm"]["count"] == 2
    for rec in stats["vm"]["requests"]:
        assert rec["via_cp"] is True
        assert "authorization" not in rec["headers"]
        assert rec["headers"]["x-sim-via"] == "control-plane"
        assert "jwt=tok%2B" in rec["query"]
    sent = stats["vm"]["requests"][0]
    assert (sent["body_sha256"], sent["body_len"]) == (echo["sha256"], echo["length"])
    assert (sent["body_sha256"], sent["body_len"]) == tuple(
        stats["cp"]["requests"][0][k] for k in ("body_sha256", "body_len")
    )

    # Historical telemetry is the CP's own: no VM request, CP-marked events.
    events = list(sdk.browsers.telemetry.events(b.session_id, limit=2))
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert {getattr(e, "source", None) for e in events} == {"control_plane"}
    assert sim.stats()["vm"]["count"] == 2

    streamed = list(sdk.browsers.telemetry.stream(b.session_id))
    assert [(e.seq, getattr(e, "source", None)) for e in streamed] == [(1, "vm"), (2, "vm"), (3, "vm")]


def test_sdk_direct_vm_routing(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    # Default SDK routing goes straight to base_url with the jwt and without Authorization.
    monkeypatch.delenv("KERNEL_BROWSER_ROUTING_SUBRESOURCES", raising=False)
    monkeypatch.delenv("KERNEL_BASE_URL", raising=False)
    with kernel_client(sim, httpx.Client(verify=trust(sim.cert_path), trust_env=False, timeout=10)) as client:
        b = client.browsers.create()
        result = client.browsers.process.exec(b.session_id, command="true")
    assert result.exit_code == 0
    stats = sim.stats()
    assert stats["cp"]["count"] == 1
    (rec,) = stats["vm"]["requests"]
    assert rec["path"] == "/browser/kernel/process/exec"
    assert rec["via_cp"] is False
    assert "authorization" not in rec["headers"]
