#!/usr/bin/env python3
"""Speed and memory of the addon, as ratios against mitmdump without it, on loopback.

Runs the simulator and real mitmdumps, drives httpx through them and prints, per measure,
the ratio and the target it should stay under. Not a test: numbers vary with the machine,
ratios much less. `--requests N` sets the sample size.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mitmdump_runner import Mitmdump
from simulator import Simulator

AUTH = {"Authorization": "Bearer sk-bench"}


def options(sim: Simulator) -> dict[str, str]:
    return {
        "browserrouting_control_plane": sim.cp_url,
        "browserrouting_vm_hosts": sim.vm_host,
        "browserrouting_subresources": "telemetry,fs",
        "ssl_verify_upstream_trusted_ca": sim.cert_path,
    }


def median_seconds(proxy: Mitmdump, urls: list[str]) -> float:
    """Median wall time of sequential GETs on one keep-alive connection through `proxy`."""
    times = []
    with httpx.Client(proxy=proxy.url, headers=AUTH, timeout=30) as c:
        c.get(urls[0])  # connection set up outside the sample
        for url in urls:
            start = time.perf_counter()
            c.get(url).raise_for_status()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def rss_kib(proxy: Mitmdump) -> int:
    assert proxy.process is not None
    for line in Path(f"/proc/{proxy.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def concurrent_fallbacks(proxy: Mitmdump, sim: Simulator, n: int, cp_delay: float) -> float:
    """Wall time of n concurrent fallbacks of one gone browser, in units of one CP answer."""
    with httpx.Client(proxy=proxy.url, headers=AUTH) as c:
        sid = c.post(f"{sim.cp_url}/browsers", json={}).json()["session_id"]
    sim.kill_on_vm(sid)
    sim.set_latency(cp=cp_delay, vm=0.2)  # all n are routed before the first browser_gone
    async with httpx.AsyncClient(proxy=proxy.url, headers=AUTH, timeout=60) as c:
        start = time.perf_counter()
        await asyncio.gather(*(c.get(f"{sim.cp_url}/browsers/{sid}/telemetry/events") for _ in range(n)))
        elapsed = time.perf_counter() - start
    sim.reset()
    return (elapsed - 0.2) / cp_delay


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per sample (default 300)")
    n = parser.parse_args().requests
    rows: list[tuple[str, float, float, str]] = []  # measure, ratio, target, absolute figures
    with (
        Simulator() as sim,
        Mitmdump(options(sim), with_addon=False) as plain,
        Mitmdump(options(sim)) as routing,
    ):
        sim.create_browser()  # the list below carries a browser, as real lists do
        with httpx.Client(proxy=routing.url, headers=AUTH) as c:
            sid = c.post(f"{sim.cp_url}/browsers", json={}).json()["session_id"]
        list_urls = [f"{sim.cp_url}/browsers"] * n
        fs_urls = [f"{sim.cp_url}/browsers/{sid}/fs/read_file?path=/bench{i}" for i in range(n)]

        without, with_ = median_seconds(plain, list_urls), median_seconds(routing, list_urls)
        ms = f"{with_ * 1000:.2f} ms vs {without * 1000:.2f} ms"
        rows.append(("CP call left alone, addon / no addon (latency)", with_ / without, 1.5, ms))
        via_cp = median_seconds(plain, fs_urls)  # the CP proxies it to the VM
        direct = median_seconds(routing, fs_urls)  # the addon sends it to the VM
        ms = f"{direct * 1000:.2f} ms vs {via_cp * 1000:.2f} ms"
        rows.append(("subresource call, routed / via the CP (latency)", direct / via_cp, 1.0, ms))
        mib = f"{rss_kib(routing) / 1024:.1f} MiB vs {rss_kib(plain) / 1024:.1f} MiB"
        rows.append(
            (f"RSS after {2 * n} requests, addon / no addon", rss_kib(routing) / rss_kib(plain), 1.25, mib)
        )
        units = asyncio.run(concurrent_fallbacks(routing, sim, 20, 0.5))
        rows.append(("20 concurrent fallbacks, wall time / one CP answer", units, 2.0, "CP answers in 0.5 s"))
    width = max(len(row[0]) for row in rows)
    print(f"{'measure'.ljust(width)}  ratio  target")
    for name, ratio, target, figures in rows:
        verdict = "ok  " if ratio <= target else "OVER"
        print(f"{name.ljust(width)}  {ratio:5.2f}  <= {target:<4}  {verdict}  ({figures})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
