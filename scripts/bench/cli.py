"""The bench's command line: runs each part, prints the table with its targets."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

from mitmdump_runner import Mitmdump
from simulator import Simulator

import bench

from .base import ROOT, Figure, Pinning, Setup, addon_options, started, three_proxies, trusting
from .fleet import Fleet, quiet_dropped_connections
from .instructions import instruction_figures
from .latency import latency_figures
from .routes import memory_figures, routes_file_figure
from .throughput import cp_label, throughput

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description=(bench.__doc__ or "").split("\n\n")[0],
        epilog="See scripts/bench/__init__.py for how each figure is measured.",
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
