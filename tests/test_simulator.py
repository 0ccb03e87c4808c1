"""The Kernel CP/VM simulator itself: SDK-valid shapes, routing, controls and stats.

Other tests trust the simulator to behave like Kernel; these pin that behaviour.
"""

from __future__ import annotations

import base64
import json
import queue
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import kernel
import pytest
from kernel.lib.browser_routing.util import jwt_from_cdp_ws_url
from kernel.types import (
    BrowserCreateResponse,
    BrowserListResponse,
    BrowserPoolAcquireResponse,
    BrowserRetrieveResponse,
)
from kernel.types.browsers import ProcessExecResponse, TelemetryEventsResponse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from simulator import Simulator  # noqa: E402

GONE = {"code": "browser_gone", "message": "browser not found"}


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(sse_interval=0.05) as s:
        yield s


@pytest.fixture
def cp(sim: Simulator) -> Iterator[httpx.Client]:
    headers = {"Authorization": "Bearer test-token"}
    with httpx.Client(base_url=sim.cp_url, headers=headers, trust_env=False, timeout=10) as c:
        yield c


@pytest.fixture
def vm(sim: Simulator) -> Iterator[httpx.Client]:
    with httpx.Client(verify=_trust(sim.cert_path), trust_env=False, timeout=10) as c:
        yield c


def _trust(cert_path: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cert_path)


def _kernel(sim: Simulator, http_client: httpx.Client) -> kernel.Kernel:
    return kernel.Kernel(api_key="k", base_url=sim.cp_url, max_retries=0, http_client=http_client)


@pytest.fixture
def sdk(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[kernel.Kernel]:
    # Empty: the SDK sends every call to the CP, which must proxy to the VM itself.
    monkeypatch.setenv("KERNEL_BROWSER_ROUTING_SUBRESOURCES", "")
    monkeypatch.delenv("KERNEL_BASE_URL", raising=False)
    monkeypatch.delenv("KERNEL_CUSTOM_HEADERS", raising=False)
    client = _kernel(sim, httpx.Client(trust_env=False, timeout=10))
    yield client
    client.close()


def _vm_get(vm: httpx.Client, sim: Simulator, sub: str, jwt: str | None) -> httpx.Response:
    params = {} if jwt is None else {"jwt": jwt}
    return vm.get(f"{sim.base_url}/{sub}", params=params)


def test_urls_and_loopback_only(sim: Simulator) -> None:
    assert sim.cp_url == f"http://127.0.0.1:{sim.cp_port}"
    assert sim.vm_url == f"https://127.0.0.2:{sim.vm_port}"
    assert sim.base_url == f"https://127.0.0.2:{sim.vm_port}/browser/kernel"
    assert Path(sim.cert_path).is_file()
    with pytest.raises(ValueError):
        Simulator(vm_host="10.0.0.1")
    with pytest.raises(ValueError):
        Simulator(cp_host="0.0.0.0")


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


def test_vm_requires_jwt_and_records_authorization(sim: Simulator, vm: httpx.Client) -> None:
    b = sim.create_browser()
    jwt = sim.jwt_for(b["session_id"])
    assert _vm_get(vm, sim, "telemetry/events", None).status_code == 401
    wrong = _vm_get(vm, sim, "telemetry/events", "tok+nope/x=")
    assert (wrong.status_code, wrong.json()["code"]) == (401, "unauthorized")
    # An unencoded '+' decodes to a space, as on the real server.
    assert vm.get(f"{sim.base_url}/telemetry/events?jwt={jwt}").status_code == 401

    ok = vm.get(
        f"{sim.base_url}/telemetry/events", params={"jwt": jwt}, headers={"Authorization": "Bearer x"}
    )
    assert ok.status_code == 200
    assert (ok.headers["x-has-more"], ok.headers["x-next-offset"]) == ("false", "0")
    events = [TelemetryEventsResponse.model_validate(e) for e in ok.json()]
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert all(e["source"] == "vm" and e["id"].startswith("vm-") for e in ok.json())
    # Served anyway, but recorded so tests can assert it was never sent.
    assert sim.stats()["vm"]["requests"][-1]["headers"]["authorization"] == "Bearer x"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_deleted_browser_is_gone_on_the_vm(sim: Simulator, cp: httpx.Client, vm: httpx.Client) -> None:
    """As the reference says of Kernel's VM proxy: a deleted browser answers 404 browser_gone."""
    b = sim.create_browser()
    jwt = sim.jwt_for(b["session_id"])
    assert cp.delete(f"/browsers/{b['session_id']}").status_code == 204
    gone = _vm_get(vm, sim, "telemetry/stream", jwt)
    assert (gone.status_code, gone.json()) == (404, GONE)
    assert cp.get(f"/browsers/{b['session_id']}").status_code == 404


def test_cert_trusted_by_openssl_curl(sim: Simulator) -> None:
    jwt = sim.jwt_for(sim.create_browser()["session_id"])
    cmd = ["curl", "-sS", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code}", "-G"]
    cmd += [f"{sim.base_url}/telemetry/events", "--data-urlencode", f"jwt={jwt}"]
    trusted = subprocess.run([*cmd, "--cacert", sim.cert_path], capture_output=True, text=True, timeout=10)
    assert (trusted.returncode, trusted.stdout) == (0, "200")
    untrusted = subprocess.run([*cmd, "--capath", "/nonexistent"], capture_output=True, text=True, timeout=10)
    assert untrusted.returncode == 60  # peer certificate cannot be authenticated


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
    with _kernel(sim, httpx.Client(verify=_trust(sim.cert_path), trust_env=False, timeout=10)) as client:
        b = client.browsers.create()
        result = client.browsers.process.exec(b.session_id, command="true")
    assert result.exit_code == 0
    stats = sim.stats()
    assert stats["cp"]["count"] == 1
    (rec,) = stats["vm"]["requests"]
    assert rec["path"] == "/browser/kernel/process/exec"
    assert rec["via_cp"] is False
    assert "authorization" not in rec["headers"]


def test_kill_on_vm(sim: Simulator, sdk: kernel.Kernel, cp: httpx.Client, vm: httpx.Client) -> None:
    b = sdk.browsers.create(name="doomed")
    jwt = sim.jwt_for("doomed")
    sim.kill_on_vm("doomed")

    gone = _vm_get(vm, sim, "telemetry/events", jwt)
    assert gone.status_code == 404
    assert gone.content == b'{"code":"browser_gone","message":"browser not found"}'
    assert gone.headers["content-type"] == "application/json"
    assert _vm_get(vm, sim, "anything/at/all", jwt).json() == GONE

    # The CP still knows it: lists it, serves it and its historical telemetry.
    assert cp.get("/browsers/doomed").status_code == 200
    assert b.session_id in {x["session_id"] for x in cp.get("/browsers").json()}
    hist = cp.get(f"/browsers/{b.session_id}/telemetry/events")
    assert hist.status_code == 200 and hist.json()[0]["source"] == "control_plane"
    assert "x-has-more" in hist.headers and "x-next-offset" in hist.headers

    # Proxied calls relay the VM's answer.
    relayed = cp.post(f"/browsers/{b.session_id}/process/exec", json={"command": "true"})
    assert (relayed.status_code, relayed.json()) == (404, GONE)
    with pytest.raises(kernel.NotFoundError) as err:
        sdk.browsers.process.exec(b.session_id, command="true")
    assert err.value.body == GONE

    # HTTP controls: kill another one, then gzip the browser_gone bodies.
    other = sim.create_browser()
    assert cp.post("/_sim/kill", json={"session": other["session_id"]}).json() == {"ok": True}
    assert cp.post("/_sim/kill", json={"session": "nope"}).status_code == 404
    assert cp.post("/_sim/gzip_gone", json={"enabled": True}).status_code == 200
    zipped = _vm_get(vm, sim, "telemetry/events", sim.jwt_for(other["session_id"]))
    assert zipped.headers["content-encoding"] == "gzip"
    assert (zipped.status_code, zipped.json()) == (404, GONE)


BAD_GATEWAY = {"code": "bad_gateway", "message": "browser unavailable"}


@pytest.mark.parametrize("answer", ["gone", "502"])
def test_deleted_browser_answer(answer: str) -> None:
    """A deleted (CP delete, pool release) or VM-killed browser: 404 browser_gone, or the live 502."""
    with Simulator(deleted_browser=answer) as s:
        deleted, released, killed = s.create_browser(), s.create_browser(pool="p"), s.create_browser()
        jwts = [s.jwt_for(b["session_id"]) for b in (deleted, released, killed)]
        auth = {"Authorization": "Bearer test-token"}
        with httpx.Client(base_url=s.cp_url, headers=auth, trust_env=False, timeout=10) as c:
            assert c.delete(f"/browsers/{deleted['session_id']}").status_code == 204
            assert c.post("/browser_pools/p/release", json={"session_id": released["session_id"]}).is_success
            s.kill_on_vm(killed["session_id"])
            relayed = c.get(f"/browsers/{killed['session_id']}/telemetry/stream")  # the CP relays it
        with httpx.Client(verify=_trust(s.cert_path), trust_env=False, timeout=10) as v:
            answers = [v.get(f"{s.base_url}/telemetry/stream", params={"jwt": j}) for j in jwts]
    want = (404, GONE) if answer == "gone" else (502, BAD_GATEWAY)
    for r in [*answers, relayed]:
        assert (r.status_code, r.json()) == want
        assert r.headers["content-type"] == "application/json"


def test_deleted_browser_controls(sim: Simulator, cp: httpx.Client, vm: httpx.Client) -> None:
    jwt = sim.jwt_for(sim.create_browser(name="d")["session_id"])
    sim.kill_on_vm("d")
    assert cp.post("/_sim/deleted_browser", json={"answer": "502"}).json() == {"ok": True}
    cp.post("/_sim/gzip_gone", json={"enabled": True})  # applies to browser_gone bodies only
    bad = _vm_get(vm, sim, "telemetry/events", jwt)
    assert (bad.status_code, bad.json(), bad.headers.get("content-encoding")) == (502, BAD_GATEWAY, None)
    for body in ({"answer": "404"}, {"answer": 502}, {}, ["502"], {"answer": None}):
        refused = cp.post("/_sim/deleted_browser", json=body)
        assert (refused.status_code, refused.json()["code"]) == (400, "bad_request")
    assert _vm_get(vm, sim, "telemetry/events", jwt).status_code == 502  # refusals change nothing
    with pytest.raises(ValueError):
        sim.set_deleted_browser("404")
    with pytest.raises(ValueError):
        Simulator(deleted_browser="browser_gone")

    assert cp.post("/_sim/deleted_browser", json={"answer": "gone"}).status_code == 200
    assert _vm_get(vm, sim, "telemetry/events", jwt).json() == GONE
    sim.set_deleted_browser("502")
    assert cp.post("/_sim/reset").status_code == 200  # restores the constructor's choice
    assert (_vm_get(vm, sim, "telemetry/events", jwt).status_code, sim.stats()["vm"]["count"]) == (404, 1)
    with Simulator(deleted_browser="502") as s:
        sid = s.create_browser()["session_id"]
        killed = s.jwt_for(sid)
        s.kill_on_vm(sid)
        s.set_deleted_browser("gone")
        s.reset()
        with httpx.Client(verify=_trust(s.cert_path), trust_env=False, timeout=10) as v:
            r = v.get(f"{s.base_url}/telemetry/events", params={"jwt": killed})
        assert (r.status_code, r.json()) == (502, BAD_GATEWAY)


def _reader(resp: httpx.Response, out: queue.Queue[str | None]) -> None:
    for line in resp.iter_lines():
        if line.startswith("data: "):
            out.put(line)
    out.put(None)


def test_sse_first_event_while_held_via_cp(sim: Simulator, cp: httpx.Client) -> None:
    b = sim.create_browser()
    sim.hold_streams(True)
    events: queue.Queue[str | None] = queue.Queue()
    with cp.stream("GET", f"/browsers/{b['session_id']}/telemetry/stream") as resp:
        assert resp.headers["content-type"] == "text/event-stream"
        reader = threading.Thread(target=_reader, args=(resp, events), daemon=True)
        reader.start()
        first = events.get(timeout=5)
        assert first is not None and json.loads(first[len("data: ") :])["seq"] == 1
        with pytest.raises(queue.Empty):
            events.get(timeout=0.3)  # held: nothing more yet
        stream_rec = sim.stats()["vm"]["requests"][-1]
        assert stream_rec["path"].endswith("/telemetry/stream") and stream_rec["t_end"] is None
        assert cp.post("/_sim/hold", json={"hold": False}).status_code == 200
        rest = [events.get(timeout=5) for _ in range(3)]
        reader.join(timeout=5)
    assert [json.loads(x[len("data: ") :])["seq"] for x in rest if x] == [2, 3]
    assert rest[-1] is None


def test_sse_direct_default_interval(vm: httpx.Client) -> None:
    with Simulator() as s:  # defaults: 3 events, 0.2 s apart
        jwt = s.jwt_for(s.create_browser()["session_id"])
        with httpx.Client(verify=_trust(s.cert_path), trust_env=False, timeout=10) as c:
            t0 = time.monotonic()
            arrivals = []
            with c.stream("GET", f"{s.base_url}/telemetry/stream", params={"jwt": jwt}) as resp:
                for line in resp.iter_lines():
                    if line.startswith("data: "):
                        arrivals.append(time.monotonic() - t0)
    assert len(arrivals) == 3
    assert arrivals[2] - arrivals[0] >= 0.3  # flushed one by one, 0.2 s apart, not all at the end


def test_stats_per_host_and_records(sim: Simulator, cp: httpx.Client, vm: httpx.Client) -> None:
    b = sim.create_browser()
    jwt = sim.jwt_for(b["session_id"])
    cp.get("/browsers")
    cp.get(f"/browsers/{b['session_id']}")
    for _ in range(3):
        _vm_get(vm, sim, "telemetry/events", jwt)
    cp.post(f"/browsers/{b['session_id']}/process/exec", json={"command": "ls"})
    cp.post("/_sim/latency", json={"cp": 0, "vm": 0})  # controls are never counted
    stats = cp.get("/_sim/stats").json()
    assert stats["by_host"] == {f"127.0.0.1:{sim.cp_port}": 3, f"127.0.0.2:{sim.vm_port}": 4}
    assert (stats["cp"]["count"], stats["vm"]["count"]) == (3, 4)
    assert [r["via_cp"] for r in stats["vm"]["requests"]] == [False, False, False, True]
    rec: dict[str, Any] = stats["cp"]["requests"][-1]
    assert {"method", "path", "query", "headers", "body_sha256", "body_len", "t_start", "t_end"} <= set(rec)
    assert rec["method"] == "POST" and rec["body_len"] == len(b'{"command":"ls"}')
    assert rec["headers"]["authorization"] == "Bearer test-token"
    assert rec["t_end"] >= rec["t_start"]

    assert cp.post("/_sim/reset").status_code == 200
    stats = sim.stats()
    assert (stats["cp"]["count"], stats["vm"]["count"], stats["by_host"]) == (0, 0, {})
    assert b["session_id"] in sim.browsers  # browsers survive reset()


def test_faults_and_reset(sim: Simulator, cp: httpx.Client, vm: httpx.Client) -> None:
    b = sim.create_browser()
    jwt = sim.jwt_for(b["session_id"])
    exec_path = f"/browsers/{b['session_id']}/process/exec"

    assert cp.post("/_sim/fault", json={"status": 502}).status_code == 200
    assert _vm_get(vm, sim, "telemetry/events", jwt).status_code == 502
    assert cp.post(exec_path, json={"command": "ls"}).status_code == 502  # relayed by the CP
    assert cp.get("/browsers").status_code == 200  # VM-side fault only

    sim.set_fault(503, path_contains="/process/")
    assert _vm_get(vm, sim, "telemetry/events", jwt).status_code == 200
    assert cp.post(exec_path, json={"command": "ls"}).status_code == 503

    sim.set_fault(504, times=1)
    assert [_vm_get(vm, sim, "telemetry/events", jwt).status_code for _ in range(2)] == [504, 200]

    assert cp.post("/_sim/fault", json={"reset": True}).status_code == 200
    with pytest.raises(httpx.TransportError):
        _vm_get(vm, sim, "telemetry/events", jwt)
    broken = cp.post(exec_path, json={"command": "ls"})
    assert (broken.status_code, broken.json()["code"]) == (502, "bad_gateway")

    sim.set_fault(None, reset=True, side="cp")
    with pytest.raises(httpx.TransportError):
        cp.get("/browsers")

    assert cp.post("/_sim/reset").status_code == 200
    assert _vm_get(vm, sim, "telemetry/events", jwt).status_code == 200
    assert cp.get("/browsers").status_code == 200
    assert sim.stats()["vm"]["count"] == 1


def test_max_in_flight_under_latency(sim: Simulator, vm: httpx.Client) -> None:
    jwt = sim.jwt_for(sim.create_browser()["session_id"])
    sim.set_latency(vm=0.3)
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=10) as pool:
        codes = list(pool.map(lambda _: _vm_get(vm, sim, "telemetry/events", jwt).status_code, range(10)))
    elapsed = time.monotonic() - t0
    assert codes == [200] * 10
    stats = sim.stats()["vm"]
    assert stats["max_in_flight"] > 1 and stats["count"] == 10
    assert elapsed < 2.5  # 10 x 0.3 s would be 3 s if serialised


def test_cli(tmp_path: Path) -> None:
    script = str(ROOT / "scripts" / "simulator.py")
    helped = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=30)
    assert helped.returncode == 0 and "--sse-count" in helped.stdout
    assert "--deleted-browser {gone,502}" in helped.stdout and "/_sim/deleted_browser" in helped.stdout
    refused = subprocess.run(
        [sys.executable, script, "--deleted-browser", "404"], capture_output=True, text=True, timeout=30
    )
    assert refused.returncode == 2 and "invalid choice" in refused.stderr

    proc = subprocess.Popen(
        [sys.executable, script, "--cert-dir", str(tmp_path), "--sse-count", "1", "--deleted-browser", "502"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert set(ready) == {"cp_url", "vm_url", "base_url", "ca_cert"}
        assert ready["ca_cert"] == str(tmp_path / "vm-cert.pem")
        with httpx.Client(trust_env=False, timeout=10) as c:
            created = c.post(f"{ready['cp_url']}/_sim/create", json={"name": "cli"}).json()
            jwt = jwt_from_cdp_ws_url(created["cdp_ws_url"])
            assert jwt is not None
        with httpx.Client(verify=_trust(ready["ca_cert"]), trust_env=False, timeout=10) as c:
            r = c.get(f"{ready['base_url']}/telemetry/events", params={"jwt": jwt})
            assert r.status_code == 200
            killed = httpx.post(f"{ready['cp_url']}/_sim/kill", json={"session": "cli"}, trust_env=False)
            assert killed.status_code == 200
            r = c.get(f"{ready['base_url']}/telemetry/events", params={"jwt": jwt})
            assert (r.status_code, r.json()) == (502, BAD_GATEWAY)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "/browser/kernel/telemetry/events" in err  # one line per request
    assert jwt[6:] not in err and "jwt=tok%2B..." in err  # redacted to 6 chars
