"""The throughput figures: the three proxies under the same load at once, requests counted at
the simulator in consecutive windows, the per-window ratios to plain mitmdump."""

from __future__ import annotations

import math
import shutil
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench_base import Figure, Setup
from bench_load import PROXY_HEADER, LoadGenerator, mix_text, request_mix
from mitmdump_runner import Mitmdump
from simulator import Simulator

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


def throughput(setup: Setup, sim: Simulator, proxies: dict[str, Mitmdump], sid: str) -> list[Figure]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-mix-"))
    mix_file = workdir / "mix.txt"
    mix_file.write_text(mix_text(request_mix(sim.cp_url, sid)))
    warmup = 1.0 if setup.quick else 3.0
    seconds = math.ceil(warmup + setup.windows * setup.window_seconds + 0.5)
    sim.reset()
    generators = [
        LoadGenerator(setup.load, proxies[n], n, mix_file, seconds, setup.connections) for n in NAMES
    ]
    totals: Counter[str] = Counter()
    direct_total: Counter[str] = Counter()
    windows: list[Counter[str]] = []
    try:
        boundary = time.monotonic() + warmup
        for w in range(setup.windows + 1):
            time.sleep(max(0.0, boundary - time.monotonic()))
            stats = sim.stats()
            sim.reset()
            served, direct = served_by_proxy(stats)
            totals.update(served)
            if w > 0:  # the first slice is the warm-up
                windows.append(served)
                direct_total.update(direct)
            boundary += setup.window_seconds
        counted = {g.name: g.result() for g in generators}
    finally:
        for g in generators:
            g.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    totals.update(served_by_proxy(sim.stats())[0])
    sim.reset()
    if any(c["plain"] == 0 for c in windows):
        raise RuntimeError(f"plain mitmdump served nothing in a window: {windows}")
    per_proxy = {n: statistics.median(c[n] for c in windows) / setup.window_seconds for n in NAMES}
    setup.notes.append(
        f"{cp_label(sim)}: requests/s per proxy (median window): "
        + ", ".join(f"{n} {per_proxy[n]:.0f}" for n in NAMES)
        + f"; {setup.load} count / server count: "
        + ", ".join(f"{n} {counted[n] / max(1, totals[n]):.3f}" for n in NAMES)
    )
    routed_share = {n: direct_total[n] / max(1, sum(c[n] for c in windows)) for n in NAMES}
    setup.notes.append(
        f"{cp_label(sim)}: share of requests the VM got directly (the mix routes 10%): "
        + ", ".join(f"{n} {routed_share[n]:.1%}" for n in NAMES)
    )
    label = f"({cp_label(sim)}, {setup.windows} windows of {setup.window_seconds:g} s)"
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
