"""The instructions a request costs each proxy, counted by valgrind's callgrind over the bench's
mix sent one request at a time: a reading of the throughput figure that does not move between
runs, where the live ratio moves by several percent on a small machine (`bench.py --instructions`)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx
from bench_base import AUTH, Figure
from bench_load import request_mix
from mitmdump_runner import Mitmdump
from simulator import Simulator

ROUNDS = 10  # of the 20-request mix, counted after one round of warm-up
START_TIMEOUT = 180.0  # seconds: mitmproxy starts slowly under valgrind


def counted(proxy: Mitmdump, sim: Simulator, out: Path) -> float:
    """Instructions per request of `proxy` (started under callgrind, counting off) over the mix."""
    assert proxy.process is not None
    pid = str(proxy.process.pid)
    with httpx.Client(proxy=proxy.url, headers=AUTH, trust_env=False, timeout=60) as client:
        sid = client.post(f"{sim.cp_url}/browsers", json={}).json()["session_id"]  # the addon learns it
        mix = request_mix(sim.cp_url, sid)

        def send(rounds: int) -> None:
            for _ in range(rounds):
                for method, url, body in mix:
                    json_body = {"Content-Type": "application/json"} if body else {}
                    client.request(method, url, content=body.encode() or None, headers=json_body)

        send(1)
        subprocess.run(["callgrind_control", "--instr=on", pid], check=True, capture_output=True)
        send(ROUNDS)
        subprocess.run(["callgrind_control", "--instr=off", pid], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "--dump", pid], check=True, capture_output=True)
    totals = [
        int(line.split()[1])
        for dump in out.parent.glob(out.name + "*")
        for line in dump.read_text().splitlines()
        if line.startswith(("summary:", "totals:"))
    ]
    return max(totals) / (ROUNDS * len(mix))


def instruction_figures(sim: Simulator, addon_options: dict[str, str], empty_hooks: Path) -> list[Figure]:
    """Plain mitmdump, the empty-hook script and the addon, one after the other."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise RuntimeError("valgrind is not installed (scripts/setup --bench installs it)")
    trust = {"ssl_verify_upstream_trusted_ca": sim.cert_path}
    workdir = Path(tempfile.mkdtemp(prefix="bench-callgrind-"))

    def under_callgrind(name: str) -> tuple[Mitmdump, Path]:
        out = workdir / f"{name}.out"
        wrapper = ("valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}")
        if name == "addon":
            return Mitmdump(addon_options, wrapper=wrapper), out
        script = ("-s", str(empty_hooks)) if name == "empty" else ()
        return Mitmdump(trust, with_addon=False, extra_args=script, wrapper=wrapper), out

    per_request = {}
    try:
        for name in ("plain", "empty", "addon"):
            proxy, out = under_callgrind(name)
            try:
                per_request[name] = counted(proxy.start(timeout=START_TIMEOUT), sim, out)
            finally:
                proxy.cleanup()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    detail = ", ".join(f"{n} {v / 1e6:.2f} M" for n, v in per_request.items()) + " instructions a request"
    return [
        Figure(
            "instructions, plain / addon (callgrind, one client)",
            [per_request["plain"] / per_request["addon"]],
            "x",
            ">= 0.97",
            lambda v: v >= 0.97,
            detail,
        ),
        Figure(
            "instructions, plain / empty hooks (callgrind, one client)",
            [per_request["plain"] / per_request["empty"]],
            "x",
            "~0.99 (reference: 0.96-1.02)",
            lambda v: 0.96 <= v <= 1.02,
        ),
    ]
