#!/usr/bin/env python3
"""Soak: many mixed requests through a real mitmdump with the addon, against the simulator.

Sends N requests (routed GETs and POSTs, SSE streams, CP passthroughs, fallbacks of fresh
routes whose browser the VM no longer knows, VM faults and injected faults) from C client
threads, then prints what each server received against what the mix should have brought it,
misroutes (an API key at the VM, a jwt at the CP), wrong answers (each answer is checked
against what the simulator or the injection rule sends), errors, the decisions logged, and
the growth of mitmdump's memory. Exits non-zero on any misroute, wrong answer, error or
count that differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mitmdump_runner import Mitmdump
from simulator import CP_EVENT_COUNT, Simulator, _file_bytes

AUTH = {"Authorization": "Bearer sk-soak"}
# Kind of request -> share of the mix.
MIX = {
    "routed_get": 28, "routed_post": 14, "sse": 10, "passthrough": 10, "passthrough_forwarded": 10,
    "fallback": 10, "vm_fault": 6, "injected_502": 6, "injected_reset": 6,
}  # fmt: skip
INJECTED_502 = {"code": "bad_gateway", "message": "browser unavailable"}
SSE_COUNT = 3
# What each kind brings to each server: (CP, VM directly, VM through the CP's own forwarding).
LOAD = {
    "routed_get": (0, 1, 0), "routed_post": (0, 1, 0), "sse": (0, 1, 0), "passthrough": (1, 0, 0),
    "passthrough_forwarded": (1, 0, 1), "fallback": (2, 1, 0), "vm_fault": (0, 1, 0),
    "injected_502": (0, 0, 0), "injected_reset": (0, 0, 0),
}  # fmt: skip
# The final decisions each kind's flows are logged with.
DECISIONS = {
    "routed_get": ["routed"], "routed_post": ["routed"], "sse": ["routed"],
    "passthrough": ["passthrough"], "passthrough_forwarded": ["passthrough"],
    "fallback": ["passthrough", "fallback", "reissue"], "vm_fault": ["no_fallback"],
    "injected_502": ["no_fallback"], "injected_reset": ["no_fallback"],
}  # fmt: skip


@dataclass
class Outcome:
    kind: str
    wrong: str = ""  # what was wrong with the answer
    error: str = ""  # an exception where an answer was due


@dataclass
class Soak:
    sim: Simulator
    proxy: Mitmdump
    sessions: list[str]
    injected: dict[str, str]  # kind -> the session its rule answers for
    local: threading.local = field(default_factory=threading.local)

    def client(self) -> httpx.Client:
        if not hasattr(self.local, "client"):
            self.local.client = httpx.Client(proxy=self.proxy.url, headers=AUTH, timeout=30, trust_env=False)
        client: httpx.Client = self.local.client
        return client

    def url(self, sid: str, tail: str) -> str:
        return f"{self.sim.cp_url}/browsers/{sid}/{tail}"

    def run(self, n: int, kind: str, rng: random.Random) -> Outcome:
        sid = rng.choice(self.sessions)
        try:
            return Outcome(kind, wrong=getattr(self, kind)(n, sid))
        except httpx.HTTPError as e:
            return Outcome(kind, error=f"{type(e).__name__}: {e}")

    # -- each kind: returns "" when the answer is right, else what is wrong

    def routed_get(self, n: int, sid: str) -> str:
        got = self.client().get(self.url(sid, "fs/read_file"), params={"path": f"/soak/{n}"})
        return expect(got, 200, _file_bytes(f"/soak/{n}"))

    def routed_post(self, n: int, sid: str) -> str:
        body = json.dumps({"command": "echo", "args": [str(n)]}).encode()
        got = self.client().post(self.url(sid, "process/exec"), content=body)
        if got.status_code != 200:
            return f"status {got.status_code}"
        echo = got.json().get("sim_echo", {})
        return "" if echo.get("sha256") == hashlib.sha256(body).hexdigest() else f"echo {echo}"

    def sse(self, n: int, sid: str) -> str:
        with self.client().stream("GET", self.url(sid, "telemetry/stream")) as got:
            text = got.read().decode()
        ids = [json.loads(line[6:])["id"] for line in text.splitlines() if line.startswith("data: ")]
        want = [f"vm-{sid}-{seq}" for seq in range(1, SSE_COUNT + 1)]
        return "" if got.status_code == 200 and ids == want else f"status {got.status_code}, events {ids}"

    def passthrough(self, n: int, sid: str) -> str:
        got = self.client().get(f"{self.sim.cp_url}/browsers/{sid}")
        ok = got.status_code == 200 and got.json().get("session_id") == sid
        return "" if ok else f"status {got.status_code}"

    def passthrough_forwarded(self, n: int, sid: str) -> str:
        got = self.client().get(self.url(sid, "replays"), params={"n": n})
        echo = got.json() if got.status_code == 200 else {}
        ok = echo.get("sim") == "echo" and echo.get("path") == "/browser/kernel/replays"
        return "" if ok else f"status {got.status_code}, {echo}"

    def fallback(self, n: int, sid: str) -> str:
        fresh = self.client().post(f"{self.sim.cp_url}/browsers", json={}).json()["session_id"]
        self.sim.kill_on_vm(fresh)  # the proxy keeps the route; the VM says browser_gone
        got = self.client().get(self.url(fresh, "telemetry/events"))
        ids = [e.get("id") for e in got.json()] if got.status_code == 200 else []
        want = [f"cp-{fresh}-{seq}" for seq in range(1, CP_EVENT_COUNT + 1)]
        return "" if ids == want else f"status {got.status_code}, events {ids}"

    def vm_fault(self, n: int, sid: str) -> str:
        got = self.client().get(self.url(sid, "fs/soak-fault"))
        return expect(got, 503, b"simulated 503 Service Unavailable\n")

    def injected_502(self, n: int, sid: str) -> str:
        got = self.client().get(
            self.url(self.injected["injected_502"], "fs/read_file"), params={"path": "/x"}
        )
        return "" if got.status_code == 502 and got.json() == INJECTED_502 else f"status {got.status_code}"

    def injected_reset(self, n: int, sid: str) -> str:
        try:
            got = self.client().get(
                self.url(self.injected["injected_reset"], "fs/read_file"), params={"path": "/x"}
            )
        except httpx.RemoteProtocolError:
            return ""  # closed with no answer: what a reset is
        return f"an answer ({got.status_code}) where the connection should close"


def expect(got: httpx.Response, status: int, body: bytes) -> str:
    if got.status_code != status:
        return f"status {got.status_code}"
    return "" if got.content == body else f"body of {len(got.content)} bytes differs"


def misroutes(stats: dict[str, Any]) -> dict[str, int]:
    """Requests a server must never see: the API key at a VM, a jwt at the CP."""
    return {
        "api_key_at_vm": sum("authorization" in r["headers"] for r in stats["vm"]["requests"]),
        "jwt_at_cp": sum(
            "jwt" in parse_qs(r["query"], keep_blank_values=True) for r in stats["cp"]["requests"]
        ),
    }


def expected_load(kinds: Counter[str]) -> dict[str, int]:
    load = [sum(LOAD[k][i] * n for k, n in kinds.items()) for i in range(3)]
    return {"cp": load[0], "vm_direct": load[1], "vm_via_cp": load[2]}


def actual_load(stats: dict[str, Any]) -> dict[str, int]:
    vm = stats["vm"]["requests"]
    return {
        "cp": len(stats["cp"]["requests"]),
        "vm_direct": sum(not r["via_cp"] for r in vm),
        "vm_via_cp": sum(bool(r["via_cp"]) for r in vm),
    }


def expected_decisions(kinds: Counter[str]) -> dict[str, int]:
    want: Counter[str] = Counter()
    for kind, n in kinds.items():
        for decision in DECISIONS[kind]:
            want[decision] += n
    return dict(sorted(want.items()))


def rss_mb(proxy: Mitmdump) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak) of the proxy process, in MB."""
    assert proxy.process is not None
    status = Path(f"/proc/{proxy.process.pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {name: int(fields[name].split()[0]) / 1024 for name in ("VmRSS", "VmHWM")}


def flow_decisions(proxy: Mitmdump, skip: int, count: int) -> dict[str, int]:
    """Final decisions of the flows logged after the first `skip` lines, once `count` are in."""
    lines = proxy.records(wait_for=skip + count, timeout=10)[skip:]
    return dict(
        sorted(Counter(r["decision"] for r in lines if not r["decision"].startswith("route_")).items())
    )


PROXY_OPTIONS = {
    "browserrouting_subresources": "telemetry,process,fs,curl",
    # Rules name browsers: their ids are not known before the proxy learns them.
    "browserrouting_inject": "soak-502/fs=502,soak-reset/fs=reset",
}


def make_browsers(proxy: Mitmdump, sim: Simulator, count: int) -> Soak:
    """Browsers created through the proxy (so it learns their routes), one routed warm-up call."""
    with httpx.Client(proxy=proxy.url, headers=AUTH, timeout=30, trust_env=False) as client:
        made = [client.post(f"{sim.cp_url}/browsers", json={}).json()["session_id"] for _ in range(count)]
        injected = {
            kind: client.post(f"{sim.cp_url}/browsers", json={"name": name}).json()["session_id"]
            for kind, name in (("injected_502", "soak-502"), ("injected_reset", "soak-reset"))
        }
        client.get(f"{sim.cp_url}/browsers/{made[0]}/fs/read_file", params={"path": "/warm"})
    proxy.records("routed", made[0], wait_for=1)  # the warm-up's line is in: what follows is the soak's
    return Soak(sim, proxy, made, injected)


def soak(requests: int, concurrency: int, browsers: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    plan = rng.choices(list(MIX), weights=list(MIX.values()), k=requests)
    jobs = [(n, kind, random.Random(rng.randrange(1 << 30))) for n, kind in enumerate(plan)]
    kinds = Counter(plan)
    want_decisions = expected_decisions(kinds)
    with Simulator(sse_interval=0.01, sse_count=SSE_COUNT) as sim:
        options = {
            "browserrouting_control_plane": sim.cp_url,
            "browserrouting_vm_hosts": sim.vm_host,
            "ssl_verify_upstream_trusted_ca": sim.cert_path,
            **PROXY_OPTIONS,
        }
        with Mitmdump(options) as proxy:
            runner = make_browsers(proxy, sim, browsers)
            skip = len(proxy.records(wait_for=0))
            sim.reset()  # the servers count the soak's requests only
            sim.set_fault(503, path_contains="soak-fault", side="vm")
            rss_start, started = rss_mb(proxy), time.monotonic()
            with ThreadPoolExecutor(concurrency) as pool:
                outcomes = list(pool.map(lambda job: runner.run(*job), jobs))
            elapsed = time.monotonic() - started
            decided = flow_decisions(proxy, skip, sum(want_decisions.values()))
            rss_end, stats = rss_mb(proxy), sim.stats()
            crashed = [line.strip() for line in proxy.output if "Addon error" in line or "Traceback" in line]

    def count(kind: str, what: str) -> int:
        return sum(1 for o in outcomes if o.kind == kind and getattr(o, what))

    return {
        "requests": requests,
        "concurrency": concurrency,
        "seconds": round(elapsed, 1),
        "kinds": {
            k: {"sent": kinds[k], "wrong": count(k, "wrong"), "errors": count(k, "error")} for k in MIX
        },
        "servers": {"expected": expected_load(kinds), "got": actual_load(stats), "by_host": stats["by_host"]},
        "decisions": {"expected": want_decisions, "got": decided},
        "misroutes": misroutes(stats),
        "wrong_answers": sum(1 for o in outcomes if o.wrong),
        "errors": sum(1 for o in outcomes if o.error),
        "examples": [f"{o.kind}: {o.wrong or o.error}" for o in outcomes if o.wrong or o.error][:10],
        "addon_errors": crashed[:10],
        "rss_mb": {
            "start": round(rss_start["VmRSS"], 1),
            "end": round(rss_end["VmRSS"], 1),
            "growth": round(rss_end["VmRSS"] - rss_start["VmRSS"], 1),
            "peak": round(rss_end["VmHWM"], 1),
        },
    }


def failures(report: dict[str, Any]) -> list[str]:
    found = []
    if sum(report["misroutes"].values()):
        found.append(f"misroutes {report['misroutes']}")
    if report["wrong_answers"]:
        found.append(f"{report['wrong_answers']} wrong answers")
    if report["errors"]:
        found.append(f"{report['errors']} errors")
    if report["servers"]["expected"] != report["servers"]["got"]:
        found.append("server counts differ from the mix")
    if report["decisions"]["expected"] != report["decisions"]["got"]:
        found.append("decisions differ from the mix")
    if report["addon_errors"]:
        found.append("the addon raised")
    return found


def render(report: dict[str, Any]) -> str:
    r = report
    rate = r["requests"] / r["seconds"] if r["seconds"] else 0
    lines = [f"soak: {r['requests']} requests, concurrency {r['concurrency']}, {r['seconds']} s", ""]
    lines[0] += f" ({rate:.0f} requests/s)"
    lines.append(f"{'kind':<24}{'sent':>7}{'wrong':>7}{'errors':>8}")
    lines += [f"{k:<24}{v['sent']:>7}{v['wrong']:>7}{v['errors']:>8}" for k, v in r["kinds"].items()]
    lines += ["", f"{'server':<24}{'expected':>9}{'got':>7}"]
    names = {"cp": "CP", "vm_direct": "VM (from the proxy)", "vm_via_cp": "VM (via the CP)"}
    for key, name in names.items():
        lines.append(f"{name:<24}{r['servers']['expected'][key]:>9}{r['servers']['got'][key]:>7}")
    lines += ["", f"{'decision':<24}{'expected':>9}{'got':>7}"]
    decisions = sorted(set(r["decisions"]["expected"]) | set(r["decisions"]["got"]))
    for d in decisions:
        lines.append(f"{d:<24}{r['decisions']['expected'].get(d, 0):>9}{r['decisions']['got'].get(d, 0):>7}")
    m, mem = r["misroutes"], r["rss_mb"]
    lines += [
        "",
        f"misroutes: {sum(m.values())} "
        f"(Authorization at the VM: {m['api_key_at_vm']}, jwt at the CP: {m['jwt_at_cp']})",
        f"wrong answers: {r['wrong_answers']}",
        f"errors: {r['errors']}",
        f"mitmdump RSS: {mem['start']} MB -> {mem['end']} MB ({mem['growth']:+} MB), peak {mem['peak']} MB",
    ]
    lines += [f"  e.g. {e}" for e in r["examples"]] + [f"  addon: {e}" for e in r["addon_errors"]]
    found = failures(r)
    lines.append("result: " + ("PASS" if not found else "FAIL: " + "; ".join(found)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1000, help="how many requests (default 1000)")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads (default 8)")
    parser.add_argument("--browsers", type=int, default=8, help="browsers the routed requests spread over")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mix (default 0)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON line as well")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.browsers < 1:
        parser.error("--requests, --concurrency and --browsers must be 1 or more")
    report = soak(args.requests, args.concurrency, args.browsers, args.seed)
    print(render(report))
    if args.json:
        print(json.dumps(report))
    return 1 if failures(report) else 0


if __name__ == "__main__":
    sys.exit(main())
