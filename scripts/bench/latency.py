"""The latency figures against the simulator, requests one at a time and interleaved: routed,
fallback, 50 concurrent fallbacks, the SSE first event."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import quote

import httpx
from mitmdump_runner import Mitmdump
from simulator import Simulator

from .base import AUTH, Figure, Setup, interleaved, keep, median_ms, ms_vs, timed


def latency_figures(setup: Setup, sim: Simulator, plain: Mitmdump, addon: Mitmdump, sid: str) -> list[Figure]:
    sim.reset()
    plain_ca = str(plain.ca_cert)
    via_addon = httpx.Client(proxy=addon.url, headers=AUTH, timeout=60, trust_env=False)
    via_plain = httpx.Client(proxy=plain.url, headers=AUTH, timeout=60, verify=plain_ca, trust_env=False)
    direct = httpx.Client(verify=sim.cert_path, timeout=60, trust_env=False)
    with via_addon, via_plain, direct:
        vm = f"{sim.base_url}"
        jwt = quote(sim.jwt_for(sid), safe="")
        routed_url = f"{sim.cp_url}/browsers/{sid}/fs/read_file?path=/bench"
        vm_url = f"{vm}/fs/read_file?path=/bench&jwt={jwt}"
        via_addon.get(f"{sim.cp_url}/browsers/{sid}").raise_for_status()  # learns its route
        for _ in range(5):  # connections set up outside the samples
            via_addon.get(routed_url).raise_for_status()
            via_plain.get(vm_url).raise_for_status()
        if not sim.stats()["vm"]["count"] >= 10:
            raise RuntimeError("the routed requests did not reach the VM")
        rounds = interleaved(
            setup.rounds,
            setup.samples,
            lambda: timed(lambda: via_addon.get(routed_url).raise_for_status()),
            lambda: timed(lambda: via_plain.get(vm_url).raise_for_status()),
        )
        routed = Figure(
            "routed latency / same VM request via plain",
            [a / p for a, p in rounds],
            "x",
            *keep("routed"),
            detail=ms_vs(rounds),
        )

        # A fallback: the VM says browser_gone, the addon re-issues the request to the CP.
        gone = via_addon.post(f"{sim.cp_url}/browsers", json={}).json()["session_id"]
        sim.kill_on_vm(gone)
        gone_jwt = quote(sim.jwt_for(gone), safe="")
        events = f"{sim.cp_url}/browsers/{gone}/telemetry/events"

        def fallback() -> float:
            via_addon.get(f"{sim.cp_url}/browsers/{gone}").raise_for_status()  # learn the route again
            start = time.perf_counter()
            answer = via_addon.get(events)
            elapsed = time.perf_counter() - start
            if answer.status_code != 200 or not answer.json()[0]["id"].startswith("cp-"):
                raise RuntimeError(f"no fallback: {answer.status_code} {answer.text[:200]}")
            return elapsed

        rounds = interleaved(
            setup.rounds,
            setup.samples,
            fallback,
            lambda: timed(lambda: via_plain.get(f"{vm}/telemetry/events?jwt={gone_jwt}")),
            lambda: timed(lambda: via_plain.get(events).raise_for_status()),
        )
        fallback_fig = Figure(
            "fallback / (VM hop + CP hop via plain)",
            [f / (v + c) for f, v, c in rounds],
            "x",
            *keep("fallback"),
            detail=f"{median_ms([r[0] for r in rounds]):.2f} ms vs "
            f"{median_ms([r[1] for r in rounds]):.2f} + {median_ms([r[2] for r in rounds]):.2f} ms",
        )
        sse = sse_figure(setup, sim, via_addon, direct, sid)
    concurrent = concurrency_figure(setup, sim, addon, gone)
    return [routed, fallback_fig, concurrent, sse]


def concurrency_figure(setup: Setup, sim: Simulator, addon: Mitmdump, gone: str, n: int = 50) -> Figure:
    """n concurrent fallbacks of one gone browser against one; the CP answers in 0.5 s and
    the VM in 0.2 s, so that all n are routed before the first browser_gone."""
    events = f"{sim.cp_url}/browsers/{gone}/telemetry/events"

    async def fallbacks(count: int) -> float:
        async with httpx.AsyncClient(proxy=addon.url, headers=AUTH, timeout=60, trust_env=False) as c:
            (await c.get(f"{sim.cp_url}/browsers/{gone}")).raise_for_status()
        sim.reset()
        sim.set_latency(cp=0.5, vm=0.2)
        limits = httpx.Limits(max_connections=count + 10)
        async with httpx.AsyncClient(proxy=addon.url, headers=AUTH, timeout=60, limits=limits) as c:
            start = time.perf_counter()
            answers = await asyncio.gather(*(c.get(events) for _ in range(count)))
            elapsed = time.perf_counter() - start
        vm = sum(1 for r in sim.stats()["vm"]["requests"] if not r.get("via_cp"))
        sim.reset()
        if vm != count or any(a.status_code != 200 for a in answers):
            raise RuntimeError(f"{count} concurrent requests: {vm} reached the VM, not all fell back")
        return elapsed

    rounds = []
    for _ in range(max(2, setup.rounds // 2)):
        one = asyncio.run(fallbacks(1))
        many = asyncio.run(fallbacks(n))
        rounds.append((many, one))
    return Figure(
        f"{n} concurrent fallbacks / one",
        [m / o for m, o in rounds],
        "x",
        *keep("concurrent"),
        detail=f"{median_ms([r[0] for r in rounds]):.0f} ms vs {median_ms([r[1] for r in rounds]):.0f} ms "
        "(CP answers in 500 ms, VM in 200 ms)",
    )


def sse_figure(
    setup: Setup, sim: Simulator, via_addon: httpx.Client, direct: httpx.Client, sid: str
) -> Figure:
    """Time to the first event of telemetry/stream, routed by the addon against straight from
    the VM, each on a connection already set up (to the VM too)."""
    jwt = quote(sim.jwt_for(sid), safe="")
    routed_base = f"{sim.cp_url}/browsers/{sid}"
    direct_base = sim.base_url

    def first_event(client: httpx.Client, base: str, query: str) -> float:
        client.get(f"{base}/fs/read_file?path=/warm{query and '&' + query}").raise_for_status()
        start = time.perf_counter()
        with client.stream("GET", f"{base}/telemetry/stream{query and '?' + query}") as answer:
            answer.raise_for_status()
            for line in answer.iter_lines():
                if line.startswith("data:"):
                    return time.perf_counter() - start
        raise RuntimeError("the stream ended without an event")

    rounds = interleaved(
        setup.rounds,
        max(5, setup.samples // 10),
        lambda: first_event(via_addon, routed_base, ""),
        lambda: first_event(direct, direct_base, f"jwt={jwt}"),
    )
    return Figure(
        "SSE first event, routed - straight from the VM",
        [(a - d) * 1000 for a, d in rounds],
        "ms",
        *keep("sse"),
        detail=ms_vs(rounds),
    )
