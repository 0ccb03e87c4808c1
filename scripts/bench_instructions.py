"""The instructions a request costs each proxy, counted by valgrind's callgrind under the
throughput figure's own load (the mix, the same generator and connections; one proxy at a
time), requests counted at the servers: a reading of the throughput ratio that moves far less
between runs than the live ratio does on a small machine (`bench.py --instructions`)."""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench_base import Figure
from bench_load import LoadGenerator, mix_text, request_mix
from bench_throughput import cp_label, served_by_proxy
from mitmdump_runner import Mitmdump
from simulator import Simulator

NAMES = ("plain", "empty", "addon")
WARMUP = 8.0  # seconds of load before counting: valgrind translates the code paths first
COUNTED = 40.0  # seconds counted: some 500 requests under valgrind, enough that the requests
# in flight when counting starts and stops weigh little
START_TIMEOUT = 180.0  # seconds: mitmproxy starts slowly under valgrind


def callgrind(pid: int, *switch: str) -> None:
    subprocess.run(["callgrind_control", *switch, str(pid)], check=True, capture_output=True)


def total_instructions(out: Path) -> int:
    """Instructions counted while counting was on: the largest total of the dumps."""
    return max(
        int(line.split()[1])
        for dump in out.parent.glob(out.name + "*")
        for line in dump.read_text().splitlines()
        if line.startswith(("summary:", "totals:"))
    )


@contextmanager
def under_callgrind(proxies: dict[str, Mitmdump], workdir: Path) -> Iterator[dict[str, Path]]:
    """The proxies started under callgrind with counting off; where each writes its counts."""
    outs = {name: workdir / f"{name}.out" for name in proxies}
    with ExitStack() as stack:
        for name, proxy in proxies.items():
            proxy.wrapper = (
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={outs[name]}",
            )
            stack.callback(proxy.cleanup)
            proxy.start(timeout=START_TIMEOUT)
        yield outs


def instruction_figures(
    load: str, connections: int, sim: Simulator, proxies: dict[str, Mitmdump], sid: str
) -> list[Figure]:
    """`proxies` (plain, empty, addon; not started) under callgrind, loaded as the throughput is:
    `load` (wrk or python) over `connections` connections each."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise RuntimeError("valgrind is not installed (scripts/setup --bench installs it)")
    workdir = Path(tempfile.mkdtemp(prefix="bench-callgrind-"))
    mix_file = workdir / "mix.txt"
    mix_file.write_text(mix_text(request_mix(sim.cp_url, sid)))
    seconds = math.ceil(WARMUP + COUNTED + 5)
    per_request: dict[str, float] = {}
    served: dict[str, int] = {}
    try:
        with under_callgrind(proxies, workdir) as outs:
            for name in NAMES:  # one at a time: a loaded proxy under valgrind takes a core
                pid = _pid(proxies[name])
                generator = LoadGenerator(load, proxies[name], name, mix_file, seconds, connections)
                try:
                    time.sleep(WARMUP)
                    callgrind(pid, "--instr=on")
                    sim.reset()
                    time.sleep(COUNTED)
                    served[name] = served_by_proxy(sim.stats())[0][name]
                    callgrind(pid, "--instr=off")
                    callgrind(pid, "--dump")
                finally:
                    generator.stop()
                per_request[name] = total_instructions(outs[name]) / max(1, served[name])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    label = f"({cp_label(sim)}, callgrind)"
    detail = ", ".join(f"{n} {v / 1e6:.2f} M" for n, v in per_request.items())
    detail += " instructions a request; requests " + ", ".join(f"{n} {served[n]}" for n in NAMES)
    return [
        Figure(
            f"instructions, plain / addon {label}",
            [per_request["plain"] / per_request["addon"]],
            "x",
            ">= 0.97",
            lambda v: v >= 0.97,
            detail,
        ),
        Figure(
            f"instructions, plain / empty hooks {label}",
            [per_request["plain"] / per_request["empty"]],
            "x",
            "~0.99 (reference: 0.96-1.02)",
            lambda v: 0.96 <= v <= 1.02,
        ),
    ]


def _pid(proxy: Mitmdump) -> int:
    assert proxy.process is not None
    return proxy.process.pid
