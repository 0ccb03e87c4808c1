"""The simulator's controls and records: stats per side and per host, faults, latency, reset,
and its command line (--help, the ready line, controls over HTTP, redacted request log).

Other tests trust the simulator to behave like Kernel; these pin that behaviour.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import simulator_support as support
from kernel.lib.browser_routing.util import jwt_from_cdp_ws_url
from simulator import Simulator
from simulator_support import BAD_GATEWAY, ROOT, trust, vm_get

# The fixtures of simulator_support, for this module's tests (a fresh simulator per test).
sim, cp, vm = support.sim, support.cp, support.vm


def test_stats_per_host_and_records(sim: Simulator, cp: httpx.Client, vm: httpx.Client) -> None:
    b = sim.create_browser()
    jwt = sim.jwt_for(b["session_id"])
    cp.get("/browsers")
    cp.get(f"/browsers/{b['session_id']}")
    for _ in range(3):
        vm_get(vm, sim, "telemetry/events", jwt)
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
    assert vm_get(vm, sim, "telemetry/events", jwt).status_code == 502
    assert cp.post(exec_path, json={"command": "ls"}).status_code == 502  # relayed by the CP
    assert cp.get("/browsers").status_code == 200  # VM-side fault only

    sim.set_fault(503, path_contains="/process/")
    assert vm_get(vm, sim, "telemetry/events", jwt).status_code == 200
    assert cp.post(exec_path, json={"command": "ls"}).status_code == 503

    sim.set_fault(504, times=1)
    assert [vm_get(vm, sim, "telemetry/events", jwt).status_code for _ in range(2)] == [504, 200]

    assert cp.post("/_sim/fault", json={"reset": True}).status_code == 200
    with pytest.raises(httpx.TransportError):
        vm_get(vm, sim, "telemetry/events", jwt)
    broken = cp.post(exec_path, json={"command": "ls"})
    assert (broken.status_code, broken.json()["code"]) == (502, "bad_gateway")

    sim.set_fault(None, reset=True, side="cp")
    with pytest.raises(httpx.TransportError):
        cp.get("/browsers")

    # A GET the CP relays to a VM that drops it once: one attempt, the client's 502 (no
    # silent retry of an idempotent request behind the client's back).
    assert cp.post("/_sim/reset").status_code == 200
    sim.set_fault(None, reset=True, path_contains="fs/read_file", times=1)
    relayed = cp.get(f"/browsers/{b['session_id']}/fs/read_file", params={"path": "/x"})
    assert relayed.status_code == 502 and sim.stats()["vm"]["count"] == 1

    assert cp.post("/_sim/reset").status_code == 200
    assert vm_get(vm, sim, "telemetry/events", jwt).status_code == 200
    assert cp.get("/browsers").status_code == 200
    assert sim.stats()["vm"]["count"] == 1


def test_max_in_flight_under_latency(sim: Simulator, vm: httpx.Client) -> None:
    jwt = sim.jwt_for(sim.create_browser()["session_id"])
    sim.set_latency(vm=0.3)
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=10) as pool:
        codes = list(pool.map(lambda _: vm_get(vm, sim, "telemetry/events", jwt).status_code, range(10)))
    elapsed = time.monotonic() - t0
    assert codes == [200] * 10
    stats = sim.stats()["vm"]
    assert stats["max_in_flight"] > 1 and stats["count"] == 10
    assert elapsed < 2.5  # 10 x 0.3 s would be 3 s if serialised


def test_cli(tmp_path: Path) -> None:
    script = str(ROOT / "scripts" / "simulator")  # the package, run by its __main__.py
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
        with httpx.Client(verify=trust(ready["ca_cert"]), trust_env=False, timeout=10) as c:
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
