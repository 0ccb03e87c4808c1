#!/usr/bin/env python3
"""What the routing addon costs, against plain mitmdump, on loopback; prints one table with targets.

Throughput: three proxies run at once against one simulator, pinned together on one core
(`taskset`; the simulator, the clients and the load generator on the other cores): plain
`mitmdump`, `mitmdump -s scripts/empty_hooks.py` (mitmproxy's charge for any addon) and
`mitmdump -s addon/browser_routing.py` (no decision log). Each gets the same mix, per 20
requests: 16 non-browser API calls (GET and POST; the simulator's CP answers 404 JSON), 1
browser metadata GET, 1 non-allowlisted browser subresource, 2 routed (a GET `fs/read_file`
and a POST `process/exec`). `wrk` with scripts/bench_wrk.lua sends it (`scripts/setup
--bench` installs wrk); without wrk, a Python load generator with the same mix and the same
keep-alive connections does. Requests are counted at the servers (the simulator's records,
by the X-Bench-Proxy header each request carries), in consecutive windows while all three
run, so machine noise hits the three proxies alike. The windows are spread over several fresh
starts of the three (`--starts`): one process of the same code runs a few percent faster or
slower than the next for as long as it lives (where it landed in memory, its hash seed), which
windows of a single start would read as the addon's cost. The table gives the median
[min-max] of the per-window ratios, the notes each start's median. It runs twice: against the
simulator's CP over plain HTTP, where a routed request costs the addon a TLS exchange with the
VM that plain mitmdump leaves to the CP, and against its CP over HTTPS (`cp_tls`, absolute-form
`https://` targets), as the live service is served, where both proxies pay TLS upstream for
every request.

Instructions (`--instructions`): each proxy under valgrind's callgrind, sent the mix over the
same number of kept-alive connections, 40 requests a connection to warm up, then 100 a
connection counted from the first sent to the last answered; the instructions counted divided
by the requests. The same code reads the same to within about 0.3 %, where the live ratio moves
by a few percent: the figure to compare commits by. It counts user-space instructions only,
not cache misses, which the live ratio pays for too.

Memory: RSS of mitmdump+addon fed 100,000 routes (400 CP list pages of 250 browsers whose
cdp_ws_url jwt is 175 characters, from a loopback CP of the bench's own) minus RSS of a
control mitmdump+addon fed the same bytes with the pages' base_url refused by
browserrouting_vm_hosts.

Latency figures (requests one at a time, interleaved, medians per round): a routed request
against the same VM request sent through plain mitmdump; a fallback against the VM hop plus
the CP hop through plain mitmdump; 50 concurrent fallbacks against one (the CP answering in
0.5 s, the VM in 0.2 s); the SSE first event routed against straight from the VM; a routed
request with 100,000 routes cached against 10. Their targets keep them where they were
before issue 9's work, as this bench measured them (KEEP below).

Routes file: with browserrouting_routes_file set and 10,000 routes cached, the time a list
page of 250 new browsers takes to pass, plus the longest stall of other requests until the
file holds them, against the same page through an addon without a routes file; the figure
is the difference per changed route (a full rewrite of the file a change costs ~100 ms).

Ratios are what to read: absolute times depend on the machine, ratios much less. `--quick`
is a short run with fewer windows and samples, the memory figure scaled from 10,000 routes
and the routes-file figure at 1,000 routes. Not a test: `--strict` exits 1 when a target fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_base import ROOT, SUBRESOURCES, Figure, Pinning, Setup, started
from bench_fleet import Fleet, quiet_dropped_connections
from bench_instructions import instruction_figures
from bench_latency import latency_figures
from bench_routes import memory_figures, routes_file_figure
from bench_throughput import cp_label, throughput
from mitmdump_runner import Mitmdump
from simulator import Simulator

EMPTY_HOOKS = Path(__file__).resolve().parent / "empty_hooks.py"
CPS = ("CP over HTTP", "CP over HTTPS")  # as cp_label names them


def print_table(figures: list[Figure], header: list[str], notes: list[str]) -> None:
    rows = [("figure", "value: median [min-max]", "target", "result")]
    rows += [(f.name, f.text(), f.target, f.verdict) for f in figures]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for line in header:
        print(line)
    print()
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3])
    print()
    for f in figures:
        if f.detail:
            print(f"  {f.name}: {f.detail}")
    for note in notes:
        print(f"  note: {note}")
    print(
        "  keep: before = this bench's figure for the addon before issue 9's work; issue = issue 9's figure"
    )


_START = time.monotonic()


def progress(what: str) -> None:
    print(f"bench: {time.monotonic() - _START:5.1f} s  {what}", file=sys.stderr, flush=True)


def describe(load: str, pinning: Pinning) -> list[str]:
    """Which addon, which tools, where: the header above the table."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", str(ROOT), *args], capture_output=True, text=True
            ).stdout.strip()
        except OSError:
            return ""

    from mitmproxy.version import VERSION

    rev = git("rev-parse", "--short", "HEAD") or "?"
    if git("status", "--porcelain", "--", "addon"):
        rev += " with uncommitted changes in addon/"
    busy = os.getloadavg()[0]
    return [
        f"bench: addon at {rev}, mitmproxy {VERSION}, load from {load}; {pinning.note}",
        f"load average before the run: {busy:.2f}"
        + (" (other work on this machine adds noise)" if busy > 0.7 else ""),
    ]


def addon_options(sim: Simulator) -> dict[str, str]:
    """The addon pointed at the simulator, with no decision log."""
    return {
        "browserrouting_control_plane": sim.cp_url,
        "browserrouting_vm_hosts": sim.vm_host,
        "browserrouting_subresources": SUBRESOURCES,
        "browserrouting_log": "",
        **trusting(sim),
    }


def trusting(sim: Simulator) -> dict[str, str]:
    """The options of a plain mitmdump that trusts the simulator's CA."""
    return {"ssl_verify_upstream_trusted_ca": sim.cert_path}


def three_proxies(sim: Simulator) -> dict[str, Mitmdump]:
    """Plain mitmdump, the empty-hook script and the addon, all trusting the simulator's CA."""
    trust = trusting(sim)
    return {
        "plain": Mitmdump(trust, with_addon=False),
        "empty": Mitmdump(trust, with_addon=False, extra_args=("-s", str(EMPTY_HOOKS))),
        "addon": Mitmdump(addon_options(sim)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        epilog="See the top of scripts/bench.py for how each figure is measured.",
    )
    parser.add_argument("--quick", action="store_true", help="a short run (fewer windows, samples, routes)")
    parser.add_argument("--windows", type=int, help="throughput windows (default 30; quick 5)")
    parser.add_argument("--window-seconds", type=float, help="seconds a window (default 2; quick 1)")
    parser.add_argument(
        "--starts", type=int,
        help="fresh starts of the proxies that the windows are spread over (default 6; quick 1)",
    )  # fmt: skip
    parser.add_argument("--connections", type=int, default=10, help="connections per proxy (default 10)")
    parser.add_argument(
        "--load", choices=("auto", "wrk", "python"), default="auto",
        help="load generator: wrk, the Python fallback, or wrk when installed (default)",
    )  # fmt: skip
    parser.add_argument(
        "--instructions", action="store_true",
        help="also count instructions a request under valgrind (slow; scripts/setup --bench installs it)",
    )  # fmt: skip
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    args = parser.parse_args(argv)
    load = args.load
    if load == "auto":
        load = "wrk" if shutil.which("wrk") else "python"
    elif load == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not installed (scripts/setup --bench installs it)")
    quick = args.quick
    quiet_dropped_connections()
    setup = Setup(
        quick=quick,
        windows=args.windows or (5 if quick else 30),
        window_seconds=args.window_seconds or (1.0 if quick else 2.0),
        starts=max(1, args.starts or (1 if quick else 6)),
        connections=args.connections,
        load=load,
        rounds=3 if quick else 8,
        samples=12 if quick else 50,
        routes=10_000 if quick else 100_000,
        file_routes=1_000 if quick else 10_000,
        pinning=Pinning(),
    )
    header = describe(load, setup.pinning)
    if load == "python" and args.load == "auto":
        setup.notes.append("wrk not found: the Python load generator sent the mix")
    figures: list[Figure] = []
    for cp_tls in (False, True):  # the CP as the simulator serves it, then over HTTPS as live
        with Simulator(cp_tls=cp_tls) as sim:
            sid = sim.create_browser()["session_id"]  # the addons learn its route from the mix
            windows = f"{setup.windows} windows of {setup.window_seconds:g} s over {setup.starts} start(s)"
            progress(f"throughput, {cp_label(sim)}: {windows}, load from {load}")
            figures += throughput(setup, sim, sid, lambda: three_proxies(sim))
            if not cp_tls:
                progress("latency: routed, fallback, SSE, 50 concurrent fallbacks")
                plain, addon = Mitmdump(trusting(sim), with_addon=False), Mitmdump(addon_options(sim))
                with started(setup.pinning, plain, addon):
                    figures += latency_figures(setup, sim, plain, addon, sid)
            if args.instructions:
                progress(f"instructions, {cp_label(sim)}: the three proxies under callgrind, the same mix")
                figures += instruction_figures(setup.connections, sim, three_proxies(sim), sid)
    fleet = Fleet()
    try:
        progress(f"memory and lookup: {setup.routes:,} routes")
        figures += memory_figures(setup, fleet)
        progress(f"routes file: {setup.file_routes:,} routes")
        figures.append(routes_file_figure(setup, fleet))
        progress("done")
    finally:
        fleet.close()
    order = [
        *(f"throughput, {who} / plain ({cp}," for cp in CPS for who in ("addon", "empty hooks")),
        *(f"instructions, plain / {who} ({cp}," for cp in CPS for who in ("addon", "empty hooks")),
        *("memory", "routes file", "routed", "fallback", "50 "),
    ]
    figures.sort(key=lambda f: next((i for i, p in enumerate(order) if f.name.startswith(p)), len(order)))
    mode = "quick run" if quick else "full run"
    print_table(figures, [*header, f"{mode}; ratios are what to read"], setup.notes)
    return 1 if args.strict and any(f.verdict == "FAIL" for f in figures) else 0


if __name__ == "__main__":
    raise SystemExit(main())
