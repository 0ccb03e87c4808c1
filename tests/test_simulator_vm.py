"""The simulator's VM proxy: jwt auth, its certificate, the answer for a deleted or killed
browser (404 browser_gone or 502, gzip), and SSE streams (flushed per event, held, relayed).

Other tests trust the simulator to behave like Kernel; these pin that behaviour.
"""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
import time

import httpx
import kernel
import pytest
import simulator_support as support
from kernel.types.browsers import TelemetryEventsResponse
from simulator import Simulator
from simulator_support import BAD_GATEWAY, GONE, trust, vm_get

# The fixtures of simulator_support, for this module's tests (a fresh simulator per test).
sim, cp, vm, sdk = support.sim, support.cp, support.vm, support.sdk


def test_vm_requires_jwt_and_records_authorization(sim: Simulator, vm: httpx.Client) -> None:
    b = sim.create_browser()
    jwt = sim.jwt_for(b["session_id"])
    assert vm_get(vm, sim, "telemetry/events", None).status_code == 401
    wrong = vm_get(vm, sim, "telemetry/events", "tok+nope/x=")
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
    gone = vm_get(vm, sim, "telemetry/stream", jwt)
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


def test_kill_on_vm(sim: Simulator, sdk: kernel.Kernel, cp: httpx.Client, vm: httpx.Client) -> None:
    b = sdk.browsers.create(name="doomed")
    jwt = sim.jwt_for("doomed")
    sim.kill_on_vm("doomed")

    gone = vm_get(vm, sim, "telemetry/events", jwt)
    assert gone.status_code == 404
    assert gone.content == b'{"code":"browser_gone","message":"browser not found"}'
    assert gone.headers["content-type"] == "application/json"
    assert vm_get(vm, sim, "anything/at/all", jwt).json() == GONE

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
    zipped = vm_get(vm, sim, "telemetry/events", sim.jwt_for(other["session_id"]))
    assert zipped.headers["content-encoding"] == "gzip"
    assert (zipped.status_code, zipped.json()) == (404, GONE)


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
        with httpx.Client(verify=trust(s.cert_path), trust_env=False, timeout=10) as v:
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
    bad = vm_get(vm, sim, "telemetry/events", jwt)
    assert (bad.status_code, bad.json(), bad.headers.get("content-encoding")) == (502, BAD_GATEWAY, None)
    for body in ({"answer": "404"}, {"answer": 502}, {}, ["502"], {"answer": None}):
        refused = cp.post("/_sim/deleted_browser", json=body)
        assert (refused.status_code, refused.json()["code"]) == (400, "bad_request")
    assert vm_get(vm, sim, "telemetry/events", jwt).status_code == 502  # refusals change nothing
    with pytest.raises(ValueError):
        sim.set_deleted_browser("404")
    with pytest.raises(ValueError):
        Simulator(deleted_browser="browser_gone")

    assert cp.post("/_sim/deleted_browser", json={"answer": "gone"}).status_code == 200
    assert vm_get(vm, sim, "telemetry/events", jwt).json() == GONE
    sim.set_deleted_browser("502")
    assert cp.post("/_sim/reset").status_code == 200  # restores the constructor's choice
    assert (vm_get(vm, sim, "telemetry/events", jwt).status_code, sim.stats()["vm"]["count"]) == (404, 1)
    with Simulator(deleted_browser="502") as s:
        sid = s.create_browser()["session_id"]
        killed = s.jwt_for(sid)
        s.kill_on_vm(sid)
        s.set_deleted_browser("gone")
        s.reset()
        with httpx.Client(verify=trust(s.cert_path), trust_env=False, timeout=10) as v:
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
        with httpx.Client(verify=trust(s.cert_path), trust_env=False, timeout=10) as c:
            t0 = time.monotonic()
            arrivals = []
            with c.stream("GET", f"{s.base_url}/telemetry/stream", params={"jwt": jwt}) as resp:
                for line in resp.iter_lines():
                    if line.startswith("data: "):
                        arrivals.append(time.monotonic() - t0)
    assert len(arrivals) == 3
    assert arrivals[2] - arrivals[0] >= 0.3  # flushed one by one, 0.2 s apart, not all at the end
