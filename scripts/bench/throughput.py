"""The throughput figures: the three proxies under the same load at once, requests counted at
the simulator in consecutive windows, the per-window ratios to plain mitmdump. The windows are
spread over several starts of the three: how fast one process of the same code runs depends
by a few percent on where it landed in memory (and its hash seed), the same for every window
of that process, so windows of one start alone would read that luck as the addon's cost."""

from __future__ import annotations

import math
import shutil
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mitmdump_runner import Mitmdump
from simulator import Simulator

from .base import Figure, Setup, started
from .load import PROXY_HEADER, LoadGenerator, mix_text, request_mix

NAMES = ("plain", "empty", "addon")


def served_by_proxy(stats: dict[str, Any]) -> tuple[Counter[str], Counter[str]]:
    """Requests the servers answered for each proxy, and those that reached the VM directly.
    A request the CP passed on to the VM counts once, at the CP."""
    served: Counter[str] = Counter()
    direct: Counter[str] = Counter()
    for side in ("cp", "vm"):
        for rec in stats[side]["requests"]:
            if side == "vm" and rec.get("via_cp"):
                continue
            name = rec["headers"].get(PROXY_HEADER, "")
            served[name] += 1
            if side == "vm":
                direct[name] += 1
    return served, direct


def cp_label(sim: Simulator) -> str:
    return "CP over HTTPS" if sim.cp_tls else "CP over HTTP"


def throughput(
    setup: Setup, sim: Simulator, sid: str, three_proxies: Callable[[], dict[str, Mitmdump]]
) -> list[Figure]:
    """`setup.windows` windows over `setup.starts` starts of fresh proxies from `three_proxies`."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-mix-"))
    mix_file = workdir / "mix.txt"
    mix_file.write_text(mix_text(request_mix(sim.cp_url, sid)))
    per_start = [len(range(i, setup.windows, setup.starts)) for i in range(setup.starts)]
    windows: list[Counter[str]] = []
    direct: Counter[str] = Counter()
    counted: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    start_medians: list[float] = []
    try:
        for n in filter(None, per_start):
            proxies = three_proxies()
            with started(setup.pinning, *proxies.values()):
                these = run_windows(setup, sim, proxies, mix_file, n, direct, counted, totals)
            windows += these
            start_medians.append(statistics.median(c["addon"] / c["plain"] for c in these))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    per_proxy = {n: statistics.median(c[n] for c in windows) / setup.window_seconds for n in NAMES}
    setup.notes.append(
        f"{cp_label(sim)}: requests/s per proxy (median window): "
        + ", ".join(f"{n} {per_proxy[n]:.0f}" for n in NAMES)
        + f"; {setup.load} count / server count: "
        + ", ".join(f"{n} {counted[n] / max(1, totals[n]):.3f}" for n in NAMES)
    )
    routed_share = {n: direct[n] / max(1, sum(c[n] for c in windows)) for n in NAMES}
    setup.notes.append(
        f"{cp_label(sim)}: share of requests the VM got directly (the mix routes 10%): "
        + ", ".join(f"{n} {routed_share[n]:.1%}" for n in NAMES)
    )
    setup.notes.append(
        f"{cp_label(sim)}: addon / plain, median of each start's windows: "
        + ", ".join(f"{m:.3f}" for m in start_medians)
    )
    starts = f"{len(start_medians)} start{'s' if len(start_medians) > 1 else ''}"
    label = f"({cp_label(sim)}, {len(windows)} windows of {setup.window_seconds:g} s, {starts})"
    return [
        Figure(
            f"throughput, addon / plain {label}",
            [c["addon"] / c["plain"] for c in windows],
            "x",
            ">= 0.97",
            lambda v: v >= 0.97 and routed_share["addon"] > 0.05,
        ),
        Figure(
            f"throughput, empty hooks / plain {label}",
            [c["empty"] / c["plain"] for c in windows],
            "x",
            "~0.99 (reference: 0.96-1.02)",
            lambda v: 0.96 <= v <= 1.02,
        ),
    ]


def run_windows(
    setup: Setup,
    sim: Simulator,
    proxies: dict[str, Mitmdump],
    mix_file: Path,
    count: int,
    direct: Counter[str],
    counted: Counter[str],
    totals: Counter[str],
) -> list[Counter[str]]:
    """After a warm-up, `count` windows of the three proxies (started) under the load: the
    requests each served per window. Adds the VM's direct ones to `direct`, the generators'
    own counts to `counted` and every request the servers saw to `totals`."""
    warmup = 1.0 if setup.quick else 3.0
    seconds = math.ceil(warmup + count * setup.window_seconds + 0.5)
    sim.reset()
    generators = [
        LoadGenerator(setup.load, proxies[n], n, mix_file, seconds, setup.connections) for n in NAMES
    ]
    windows: list[Counter[str]] = []
    try:
        boundary = time.monotonic() + warmup
        for w in range(count + 1):
            time.sleep(max(0.0, boundary - time.monotonic()))
            stats = sim.stats()
            sim.reset()
            served, direct_now = served_by_proxy(stats)
            totals.update(served)
            if w > 0:  # the first slice is the warm-up
                windows.append(served)
                direct.update(direct_now)
            boundary += setup.window_seconds
        counted.update({g.name: g.result() for g in generators})
    finally:
        for g in generators:
            g.stop()
    totals.update(served_by_proxy(sim.stats())[0])
    sim.reset()
    if any(c["plain"] == 0 for c in windows):
        raise RuntimeError(f"plain mitmdump served nothing in a window: {windows}")
    return windows
