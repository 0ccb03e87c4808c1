"""What the bench's parts share: the API key, the Figure each part returns and the targets it
keeps, the run's settings, the proxies compared and where they run, and the timing helpers."""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mitmdump_runner import Mitmdump

if TYPE_CHECKING:
    from simulator import Simulator

ROOT = Path(__file__).resolve().parents[2]  # the repository
API_KEY = "sk-bench"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
SUBRESOURCES = "telemetry,process,fs,curl"
EMPTY_HOOKS = ROOT / "scripts" / "empty_hooks.py"
# Figures to keep where they are: this bench's value for the addon before issue 9's work
# (commit 19d8b45, full run), issue 9's value (measured another way), and the PASS limit.
KEEP = {
    "routed": (0.96, "0.94", 1.00),
    "fallback": (1.23, "1.04", 1.30),
    "concurrent": (1.82, "1.24", 2.00),
    "sse": (2.3, "+8", 15.0),
    "lookup": (1.05, "1.02", 1.10),
}


def keep(figure: str) -> tuple[str, Callable[[float], bool]]:
    """The target text and check of a figure to keep."""
    before, issue, limit = KEEP[figure]
    if figure == "sse":
        return f"keep: <= +{limit:g} ms (before +{before:g}, issue {issue})", lambda v: v <= limit
    return f"keep: <= {limit:.2f} (before {before:.2f}, issue {issue})", lambda v: v <= limit


class Pinning:
    """The proxies on one core, this process (simulator, clients) and its other children on the rest."""

    def __init__(self) -> None:
        cores = sorted(os.sched_getaffinity(0))
        self.taskset = shutil.which("taskset")
        self.core: int | None = None
        if self.taskset is None:
            self.note = "taskset not found: the proxies run unpinned"
        elif len(cores) < 2:
            self.note = f"one core ({cores[0]}): proxies, simulator and load generator share it"
        else:
            self.core = cores[-1]
            os.sched_setaffinity(0, cores[:-1])  # threads and children started from now on inherit it
            others = ",".join(map(str, cores[:-1]))
            self.note = f"proxies pinned to core {self.core}; simulator, clients, load generator on {others}"

    def pin(self, proxy: Mitmdump) -> Mitmdump:
        if self.taskset is not None and self.core is not None and proxy.process is not None:
            cmd = [self.taskset, "-a", "-cp", str(self.core), str(proxy.process.pid)]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return proxy


@contextlib.contextmanager
def started(pinning: Pinning, *proxies: Mitmdump) -> Iterator[None]:
    """The proxies started (at once) and pinned; stopped and removed at the end."""
    try:
        with ThreadPoolExecutor(len(proxies)) as pool:
            for proxy in pool.map(Mitmdump.start, proxies):
                pinning.pin(proxy)
        yield
    finally:
        for proxy in proxies:
            proxy.cleanup()


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


@dataclass
class Figure:
    """One row of the table: the values measured (one per window or round) and their target."""

    name: str
    values: list[float]
    unit: str  # "x" (a ratio), "ms" (a difference) or "MB"
    target: str
    check: Callable[[float], bool]
    detail: str = ""
    digits: int = 1  # of a value in ms

    @property
    def value(self) -> float:
        return statistics.median(self.values)

    def text(self) -> str:
        def fmt(v: float) -> str:
            if self.unit == "ms":
                return f"{v:+.{self.digits}f}"
            if self.unit == "MB":
                return f"{v:.1f}"
            # One more digit where three would read as the other side of the target (0.9697).
            return f"{v:.3f}" if self.check(round(v, 3)) == self.check(v) else f"{v:.4f}"

        unit = {"x": "", "ms": " ms", "MB": " MB"}[self.unit]
        if len(self.values) == 1:
            return fmt(self.value) + unit
        return f"{fmt(self.value)}{unit} [{fmt(min(self.values))}-{fmt(max(self.values))}]"

    @property
    def verdict(self) -> str:
        return "PASS" if self.check(self.value) else "FAIL"


@dataclass
class Setup:
    """The run's settings, and the notes printed under the table."""

    quick: bool
    windows: int
    window_seconds: float
    starts: int  # of fresh proxies, the throughput windows spread over them
    connections: int
    load: str  # "wrk" or "python"
    rounds: int
    samples: int
    routes: int
    file_routes: int
    pinning: Pinning
    notes: list[str] = field(default_factory=list)


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def ms_vs(rounds: list[list[float]]) -> str:
    """`A ms vs B ms`: the medians over the rounds of the first two measures."""
    return f"{median_ms([r[0] for r in rounds]):.2f} ms vs {median_ms([r[1] for r in rounds]):.2f} ms"


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(rounds: int, samples: int, *fns: Callable[[], float]) -> list[list[float]]:
    """Per round, the median of `samples` calls of each fn, calls interleaved: [round][fn]."""
    out = []
    for _ in range(rounds):
        times: list[list[float]] = [[] for _ in fns]
        for _ in range(samples):
            for i, fn in enumerate(fns):
                times[i].append(fn())
        out.append([statistics.median(t) for t in times])
    return out
