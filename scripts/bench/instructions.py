"""The instructions a request costs each proxy, counted by valgrind's callgrind: the mix over
the throughput figure's number of kept-alive connections, a warm-up, then a fixed number of
requests counted from the first sent to the last answered (`--instructions`). A count
does not depend on what else the machine runs, nor on where the process landed in memory; the
same code reads the same to within about 0.3 %, so it is the figure to compare
between commits."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

from mitmdump_runner import Mitmdump
from simulator import Simulator

from .base import Figure
from .load import exchange, mix_text, raw_mix, request_mix, starts
from .throughput import NAMES, cp_label, served_by_proxy

WARMUP = 40  # requests a connection before counting: valgrind translates the code paths first
COUNTED = 100  # requests a connection counted: five times through the mix
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
        with ThreadPoolExecutor(len(proxies)) as pool:
            list(pool.map(lambda proxy: proxy.start(timeout=START_TIMEOUT), proxies.values()))
        yield outs


async def counted_load(
    proxy: Mitmdump, requests: list[bytes], connections: int, warmup: int, counted: int
) -> None:
    """`warmup` then `counted` requests on each of `connections` kept-alive connections, one
    at a time on each; callgrind counts only the second part."""
    opened = [await asyncio.open_connection("127.0.0.1", proxy.port) for _ in range(connections)]

    async def send(n: int) -> None:
        async def on(conn: int, index: int) -> None:
            reader, writer = opened[conn]
            for i in range(index, index + n):
                if not await exchange(reader, writer, requests[i % len(requests)]):
                    raise RuntimeError(f"the proxy closed a connection: {requests[i % len(requests)]!r}")

        await asyncio.gather(*(on(c, i) for c, i in enumerate(starts(requests, connections))))

    try:
        await send(warmup)
        await asyncio.to_thread(callgrind, _pid(proxy), "--instr=on")
        await send(counted)
        await asyncio.to_thread(callgrind, _pid(proxy), "--instr=off")
        await asyncio.to_thread(callgrind, _pid(proxy), "--dump")
    finally:
        for _, writer in opened:
            writer.close()


def instruction_figures(
    connections: int, sim: Simulator, proxies: dict[str, Mitmdump], sid: str
) -> list[Figure]:
    """`proxies` (plain, empty, addon; not started) under callgrind, each sent the mix over
    `connections` connections; the three at once (a count does not depend on the others)."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise RuntimeError("valgrind is not installed (scripts/setup --bench installs it)")
    workdir = Path(tempfile.mkdtemp(prefix="bench-callgrind-"))
    mix_file = workdir / "mix.txt"
    mix_file.write_text(mix_text(request_mix(sim.cp_url, sid)))
    counted = COUNTED * connections
    try:
        with under_callgrind(proxies, workdir) as outs:
            sim.reset()

            async def all_three() -> None:
                await asyncio.gather(
                    *(
                        counted_load(proxies[n], raw_mix(mix_file, n), connections, WARMUP, COUNTED)
                        for n in NAMES
                    )
                )

            asyncio.run(all_three())
            served = served_by_proxy(sim.stats())[0]
            per_request = {n: total_instructions(outs[n]) / counted for n in NAMES}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    expected = (WARMUP + COUNTED) * connections
    if any(served[n] != expected for n in NAMES):  # each answer came from the servers, none twice
        raise RuntimeError(f"the servers saw {dict(served)} requests, not {expected} from each proxy")
    label = f"({cp_label(sim)}, callgrind)"
    detail = ", ".join(f"{n} {v / 1e6:.3f} M" for n, v in per_request.items())
    detail += f" instructions a request; {counted} requests counted of each"
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
