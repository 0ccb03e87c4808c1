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
by the X-Bench-Proxy header each request carries), in consecutive windows of one continuous
run, so machine noise hits the three proxies alike: the table gives the median [min-max] of
the per-window ratios.

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
import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, quote, urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mitmdump_runner import Mitmdump
from simulator import Simulator

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent

WRK_SCRIPT = SCRIPTS / "bench_wrk.lua"
EMPTY_HOOKS = SCRIPTS / "empty_hooks.py"
API_KEY = "sk-bench"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
PROXY_HEADER = "x-bench-proxy"
SUBRESOURCES = "telemetry,process,fs,curl"
JWT_LENGTH = 175
PAGE = 250  # browsers per CP list page
NAMES = ("plain", "empty", "addon")
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


# -- the request mix ----------------------------------------------------------------------


def request_mix(cp: str, session_id: str) -> list[tuple[str, str, str]]:
    """Twenty requests (method, absolute URL, JSON body or ""): 16 non-browser API calls
    (10 GET, 6 POST), 1 browser metadata GET, 1 non-allowlisted subresource, 2 routed."""
    browser = f"{cp}/browsers/{session_id}"
    return [
        ("GET", f"{cp}/apps", ""),
        ("POST", f"{cp}/invocations", '{"app_name":"bench","action_name":"run","payload":"{}"}'),
        ("GET", browser, ""),
        ("GET", f"{cp}/deployments?limit=20", ""),
        ("GET", f"{browser}/fs/read_file?path=/tmp/bench.txt", ""),
        ("POST", f"{cp}/deployments", '{"entrypoint_rel_path":"main.py","region":"aws.us-east-1a"}'),
        ("GET", f"{cp}/invocations/inv_bench", ""),
        ("GET", f"{cp}/profiles", ""),
        ("POST", f"{cp}/profiles", '{"name":"bench"}'),
        ("GET", f"{browser}/replays", ""),
        ("GET", f"{cp}/apps?app_name=bench", ""),
        ("GET", f"{cp}/proxies", ""),
        ("POST", f"{browser}/process/exec", '{"command":"true","args":[]}'),
        ("POST", f"{cp}/invocations", '{"app_name":"bench","action_name":"check","payload":"{}"}'),
        ("GET", f"{cp}/extensions", ""),
        ("GET", f"{cp}/deployments/dep_bench", ""),
        ("POST", f"{cp}/apps", '{"name":"bench","version":"1"}'),
        ("GET", f"{cp}/invocations?limit=20", ""),
        ("POST", f"{cp}/proxies", '{"type":"datacenter","name":"bench"}'),
        ("GET", f"{cp}/apps/bench", ""),
    ]


def raw_request(method: str, url: str, body: str, name: str) -> bytes:
    """The absolute-form HTTP/1.1 request a client sends to a proxy, as bench_wrk.lua renders it."""
    head = [
        f"{method} {url} HTTP/1.1",
        f"Host: {urlsplit(url).netloc}",
        f"Authorization: Bearer {API_KEY}",
        f"X-Bench-Proxy: {name}",
    ]
    if body:
        head += ["Content-Type: application/json", f"Content-Length: {len(body.encode())}"]
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode()


# -- where things run ---------------------------------------------------------------------


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


def rss_mib(proxy: Mitmdump) -> float:
    assert proxy.process is not None
    for line in Path(f"/proc/{proxy.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


# -- load generators ----------------------------------------------------------------------


class LoadGenerator:
    """One process sending the mix to one proxy over `connections` keep-alive connections."""

    def __init__(self, kind: str, proxy: Mitmdump, name: str, mix_file: Path, seconds: int, conns: int):
        if kind == "wrk":
            cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", "-s", str(WRK_SCRIPT)]
            cmd += [proxy.url, "--", str(mix_file), name]
        else:
            cmd = [sys.executable, __file__, "--load-child", str(proxy.port), str(mix_file), name]
            cmd += [str(seconds), str(conns)]
        self.name = name
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def result(self) -> int:
        """Requests the generator completed, by its own count."""
        out, _ = self.process.communicate(timeout=120)
        found = re.search(r"bench_(?:wrk|load): requests=(\d+)", out)
        if self.process.returncode != 0 or found is None:
            raise RuntimeError(f"load generator for {self.name} failed:\n{out}")
        return int(found.group(1))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


async def _load_connection(
    port: int, requests: list[bytes], deadline: float, done: list[int], index: int
) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    while time.monotonic() < deadline:
        if writer is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert reader is not None
        writer.write(requests[index % len(requests)])
        index += 1
        try:
            head = await asyncio.wait_for(
                reader.readuntil(b"\r\n\r\n"), max(0.1, deadline - time.monotonic())
            )
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            writer = None
            continue
        headers = head.decode("latin-1").lower()
        length = re.search(r"\r\ncontent-length: *(\d+)", headers)
        if length:
            await reader.readexactly(int(length.group(1)))
        elif "transfer-encoding: chunked" in headers:
            while size := int((await reader.readline()).split(b";")[0], 16):
                await reader.readexactly(size + 2)
            await reader.readuntil(b"\r\n")
        done[0] += 1
        if "\r\nconnection: close" in headers:
            writer.close()
            writer = None
    if writer is not None:
        writer.close()


async def _load(port: int, requests: list[bytes], seconds: float, conns: int) -> int:
    done = [0]
    deadline = time.monotonic() + seconds
    # Connections start at different points of the mix.
    starts = (i * len(requests) // conns for i in range(conns))
    await asyncio.gather(*(_load_connection(port, requests, deadline, done, i) for i in starts))
    return done[0]


def load_child(port: str, mix_file: str, name: str, seconds: str, conns: str) -> int:
    """The Python load generator (when wrk is missing): prints `bench_load: requests=N`."""
    requests = []
    for line in Path(mix_file).read_text().splitlines():
        method, url, *body = line.split(" ", 2)
        requests.append(raw_request(method, url, body[0] if body else "", name))
    count = asyncio.run(_load(int(port), requests, float(seconds), int(conns)))
    print(f"bench_load: requests={count}", flush=True)
    return 0


# -- figures and the table ----------------------------------------------------------------


@dataclass
class Figure:
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
            return f"{v:.1f}" if self.unit == "MB" else f"{v:.3f}"

        unit = {"x": "", "ms": " ms", "MB": " MB"}[self.unit]
        if len(self.values) == 1:
            return fmt(self.value) + unit
        return f"{fmt(self.value)}{unit} [{fmt(min(self.values))}-{fmt(max(self.values))}]"

    @property
    def verdict(self) -> str:
        return "PASS" if self.check(self.value) else "FAIL"


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


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def ms_vs(rounds: list[list[float]]) -> str:
    """`A ms vs B ms`: the medians over the rounds of the first two measures."""
    return f"{median_ms([r[0] for r in rounds]):.2f} ms vs {median_ms([r[1] for r in rounds]):.2f} ms"


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def quiet_dropped_connections() -> None:
    """A load generator that stops drops its connections: the servers print no traceback for that."""
    handle_error = socketserver.BaseServer.handle_error

    def quiet(self: socketserver.BaseServer, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            handle_error(self, request, client_address)

    socketserver.BaseServer.handle_error = quiet  # type: ignore[method-assign]


# -- the simulator side: throughput and latency ------------------------------------------


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


@dataclass
class Setup:
    quick: bool
    windows: int
    window_seconds: float
    connections: int
    load: str  # "wrk" or "python"
    rounds: int
    samples: int
    routes: int
    file_routes: int
    pinning: Pinning
    notes: list[str] = field(default_factory=list)


def throughput(setup: Setup, sim: Simulator, proxies: dict[str, Mitmdump], sid: str) -> list[Figure]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-mix-"))
    mix_file = workdir / "mix.txt"
    mix_file.write_text("".join(f"{m} {u} {b}".rstrip() + "\n" for m, u, b in request_mix(sim.cp_url, sid)))
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
        "requests/s per proxy (median window): "
        + ", ".join(f"{n} {per_proxy[n]:.0f}" for n in NAMES)
        + f"; {setup.load} count / server count: "
        + ", ".join(f"{n} {counted[n] / max(1, totals[n]):.3f}" for n in NAMES)
    )
    routed_share = {n: direct_total[n] / max(1, sum(c[n] for c in windows)) for n in NAMES}
    setup.notes.append(
        "share of requests the VM got directly (the mix routes 10%): "
        + ", ".join(f"{n} {routed_share[n]:.1%}" for n in NAMES)
    )
    label = f"({setup.windows} windows of {setup.window_seconds:g} s)"
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
        for _ in range(5):  # connections and routes set up outside the samples
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


# -- the bench's own CP and VM: many routes ----------------------------------------------


def session_id(i: int) -> str:
    return f"{i:024x}"


def jwt(i: int) -> str:
    """A jwt-shaped token of JWT_LENGTH characters, unique per browser."""
    head = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    body = f"eyJzZXNzaW9uX2lkIjoi{i:024x}".ljust(94, "Q")
    return f"{head}.{body}.".ljust(JWT_LENGTH, "x")


def browser(i: int, vm: str) -> dict[str, Any]:
    token = jwt(i)
    return {
        "session_id": session_id(i),
        "created_at": "2026-01-01T00:00:00.000Z",
        "cdp_ws_url": f"wss://{vm}/browser/cdp?jwt={token}",
        "browser_live_view_url": f"https://{vm}/browser/live?jwt={token}",
        "base_url": f"http://{vm}/browser/kernel",
        "headless": False,
        "stealth": False,
        "timeout_seconds": 60,
    }


class _BenchHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _BenchServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        split = urlsplit(self.path)
        status, body, headers = self.server.answer(split.path, parse_qs(split.query))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


class _BenchServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, host: str, answer: Callable[[str, dict[str, list[str]]], Any]) -> None:
        self.answer = answer
        self.host = host
        super().__init__((host, 0), _BenchHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def server_bind(self) -> None:  # no reverse DNS lookup
        socketserver.TCPServer.server_bind(self)

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class Fleet:
    """A CP on 127.0.0.1 listing as many browsers as asked (`/browsers?offset&limit`), all on
    a VM at 127.0.0.2 that answers any request with 200 and counts them."""

    def __init__(self) -> None:
        self.vm_hits = 0
        self.vm = _BenchServer("127.0.0.2", self._vm)
        self.vm_netloc = self.vm.origin.removeprefix("http://")
        self.cp = _BenchServer("127.0.0.1", self._cp)

    def _vm(self, path: str, query: dict[str, list[str]]) -> tuple[int, bytes, dict[str, str]]:
        self.vm_hits += 1
        return 200, b'{"ok":true}', {}

    def _cp(self, path: str, query: dict[str, list[str]]) -> tuple[int, bytes, dict[str, str]]:
        if path != "/browsers":
            return 404, b'{"code":"not_found","message":"route not found"}', {}
        offset, limit = int(query["offset"][0]), int(query["limit"][0])
        return 200, self.page(offset, limit), {"X-Has-More": "true", "X-Next-Offset": str(offset + limit)}

    def page(self, offset: int, limit: int) -> bytes:
        return json.dumps([browser(i, self.vm_netloc) for i in range(offset, offset + limit)]).encode()

    def options(self, vm_hosts: str, **extra: str) -> dict[str, str]:
        return {
            "browserrouting_control_plane": self.cp.origin,
            "browserrouting_vm_hosts": vm_hosts,
            "browserrouting_subresources": SUBRESOURCES,
            "browserrouting_log": "",
            **extra,
        }

    def feed(self, proxy: Mitmdump, count: int, start: int = 0) -> None:
        with httpx.Client(proxy=proxy.url, headers=AUTH, timeout=300, trust_env=False) as c:
            for offset in range(start, start + count, PAGE):
                c.get(f"{self.cp.origin}/browsers", params={"offset": offset, "limit": min(PAGE, count)})

    def routes(self, proxy: Mitmdump, *indexes: int) -> int:
        """How many of these browsers' routed requests reach the VM through `proxy`."""
        before = self.vm_hits
        with httpx.Client(proxy=proxy.url, headers=AUTH, timeout=60, trust_env=False) as c:
            for i in indexes:
                c.get(f"{self.cp.origin}/browsers/{session_id(i)}/fs/read_file?path=/x")
        return self.vm_hits - before

    def write_routes_file(self, path: Path, count: int) -> None:
        """A routes file holding `count` browsers' routes, written as the addon writes it."""
        objects = [browser(i, self.vm_netloc) for i in range(count)]
        try:
            sys.path.insert(0, str(ROOT))
            from addon.routes import dump_routes, route_from_object

            text = dump_routes(
                [r for o in objects if (r := route_from_object(cast(dict[object, object], o)))]
            )
        except (ImportError, AttributeError, TypeError):
            entries = [{"session_id": o["session_id"], "base_url": o["base_url"], "jwt": jwt(i)} for i, o in
                       enumerate(objects)]  # fmt: skip
            text = json.dumps({"routes": entries})
        path.write_text(text)
        path.chmod(0o600)

    def close(self) -> None:
        self.cp.close()
        self.vm.close()


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


def memory_figures(setup: Setup, fleet: Fleet) -> list[Figure]:
    n = setup.routes
    learner = Mitmdump(fleet.options("127.0.0.2"))
    control = Mitmdump(fleet.options("127.0.0.9"))  # the same pages, every base_url refused
    few = Mitmdump(fleet.options("127.0.0.2"))
    with started(setup.pinning, learner, control, few):
        before = rss_mib(learner), rss_mib(control)
        fleet.feed(learner, n)
        fleet.feed(control, n)
        fleet.feed(few, 10)
        time.sleep(1)
        after = rss_mib(learner), rss_mib(control)
        if fleet.routes(learner, 0, n - 1) != 2 or fleet.routes(control, 0, n - 1) != 0:
            raise RuntimeError("the addon did not learn the routes it was fed, or the control did")
        extra = (after[0] - after[1]) * 2**20  # bytes
        scaled = "" if n == 100_000 else f", scaled from {n:,} routes"
        memory = Figure(
            "memory, 100k routes: RSS addon - control",
            [extra * 100_000 / n / 1e6],
            "MB",
            "<= 40 MB",
            lambda v: v <= 40,
            detail=f"{extra / n:.0f} B a route; RSS {after[0]:.1f} vs "
            f"{after[1]:.1f} MiB (before feeding {before[0]:.1f} vs {before[1]:.1f}){scaled}",
        )
        routed = [session_id(i) for i in range(0, n, max(1, n // 97))]
        urls = [f"{fleet.cp.origin}/browsers/{s}/fs/read_file?path=/x" for s in routed]
        small = [f"{fleet.cp.origin}/browsers/{session_id(i)}/fs/read_file?path=/x" for i in range(10)]
        many_c = httpx.Client(proxy=learner.url, headers=AUTH, timeout=60, trust_env=False)
        few_c = httpx.Client(proxy=few.url, headers=AUTH, timeout=60, trust_env=False)
        with many_c, few_c:
            for url in small:
                many_c.get(url).raise_for_status()
                few_c.get(url).raise_for_status()
            count = iter(range(10**9))
            hits = fleet.vm_hits
            rounds = interleaved(
                setup.rounds,
                setup.samples,
                lambda: timed(lambda: many_c.get(urls[next(count) % len(urls)]).raise_for_status()),
                lambda: timed(lambda: few_c.get(small[next(count) % 10]).raise_for_status()),
            )
            if fleet.vm_hits - hits != 2 * setup.rounds * setup.samples:
                raise RuntimeError("not every lookup request was routed")
    lookup = Figure(
        f"lookup, {n // 1000}k routes / 10 routes",
        [m / f for m, f in rounds],
        "x",
        *keep("lookup"),
        detail=ms_vs(rounds),
    )
    return [memory, lookup]


def routes_file_figure(setup: Setup, fleet: Fleet) -> Figure:
    """What the routes file adds to a page of 250 new browsers, per changed route: an addon
    whose routes file holds n routes against one without a file that learned the same n
    routes from pages. A full rewrite a change costs tens of ms a change at 10k routes."""
    n = setup.file_routes
    workdir = Path(tempfile.mkdtemp(prefix="bench-routes-"))
    routes_file = workdir / "routes.json"
    fleet.write_routes_file(routes_file, n)
    with_file = Mitmdump(fleet.options("127.0.0.2", browserrouting_routes_file=str(routes_file)))
    without = Mitmdump(fleet.options("127.0.0.2"))
    notes = []
    try:
        with started(setup.pinning, with_file, without):
            fleet.feed(without, n)
            if fleet.routes(with_file, n - 1) != 1 or fleet.routes(without, n - 1) != 1:
                raise RuntimeError("the routes file was not loaded, or the pages not learned")
            rounds = []
            for r in range(2 if setup.quick else 3):
                offset = n + r * PAGE
                filed, note = page_and_stall(with_file, fleet, offset, routes_file)
                notes += [note] if note and note not in notes else []
                rounds.append((filed, page_and_stall(without, fleet, offset, None)[0]))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return Figure(
        f"routes file, {n // 1000}k routes: extra time a changed route",
        [(f - p) * 1000 / PAGE for f, p in rounds],
        "ms",
        "<= 1 ms (not O(routes) a change)",
        lambda v: v <= 1,
        detail=f"a page of {PAGE} new browsers: {median_ms([r[0] for r in rounds]):.0f} ms with the file vs "
        f"{median_ms([r[1] for r in rounds]):.0f} ms without (page + longest stall until saved)"
        + "".join(f"; {x}" for x in notes),
        digits=2,
    )


def page_and_stall(proxy: Mitmdump, fleet: Fleet, offset: int, routes_file: Path | None) -> tuple[float, str]:
    """Seconds one page of new browsers takes to pass, plus the longest time a small request
    waits afterwards, until the routes file (if any) or a file beside it (a journal) holds the
    page's last browser, or 15 s."""
    last = session_id(offset + PAGE - 1)

    def saved() -> bool:
        if routes_file is None:
            return True
        files = [f for f in routes_file.parent.iterdir() if f.name.startswith(routes_file.name)]
        return any(last in f.read_text(errors="replace") for f in files if f.is_file())

    with httpx.Client(proxy=proxy.url, headers=AUTH, timeout=300, trust_env=False) as c:
        probe = f"{fleet.cp.origin}/apps"
        c.get(probe)
        start = time.perf_counter()
        c.get(f"{fleet.cp.origin}/browsers", params={"offset": offset, "limit": PAGE}).raise_for_status()
        page = time.perf_counter() - start
        stall, deadline = 0.0, time.monotonic() + 15
        while True:
            stall = max(stall, timed(lambda: c.get(probe)))
            if saved():
                return page + stall, ""
            if time.monotonic() > deadline:
                return page + stall, "not saved within 15 s"
            time.sleep(0.02)


# -- main ----------------------------------------------------------------------------------


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
        description=(__doc__ or "").split("\n\n")[0],
        epilog="See the top of scripts/bench.py for how each figure is measured.",
    )
    parser.add_argument("--quick", action="store_true", help="a short run (fewer windows, samples, routes)")
    parser.add_argument("--windows", type=int, help="throughput windows (default 30; quick 5)")
    parser.add_argument("--window-seconds", type=float, help="seconds a window (default 2; quick 1)")
    parser.add_argument("--connections", type=int, default=10, help="connections per proxy (default 10)")
    parser.add_argument(
        "--load", choices=("auto", "wrk", "python"), default="auto",
        help="load generator: wrk, the Python fallback, or wrk when installed (default)",
    )  # fmt: skip
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    parser.add_argument("--load-child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load_child:
        return load_child(*args.load_child)
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
    sim_options = {"ssl_verify_upstream_trusted_ca": ""}
    with Simulator() as sim:
        sim_options["ssl_verify_upstream_trusted_ca"] = sim.cert_path
        addon_options = {
            "browserrouting_control_plane": sim.cp_url,
            "browserrouting_vm_hosts": sim.vm_host,
            "browserrouting_subresources": SUBRESOURCES,
            "browserrouting_log": "",
            **sim_options,
        }
        proxies = {
            "plain": Mitmdump(sim_options, with_addon=False),
            "empty": Mitmdump(sim_options, with_addon=False, extra_args=("-s", str(EMPTY_HOOKS))),
            "addon": Mitmdump(addon_options),
        }
        with started(setup.pinning, *proxies.values()):
            with httpx.Client(proxy=proxies["addon"].url, headers=AUTH, trust_env=False) as c:
                sid = c.post(f"{sim.cp_url}/browsers", json={}).json()["session_id"]  # learns its route
            progress(f"throughput: {setup.windows} windows of {setup.window_seconds:g} s, load from {load}")
            figures += throughput(setup, sim, proxies, sid)
            progress("latency: routed, fallback, SSE, 50 concurrent fallbacks")
            figures += latency_figures(setup, sim, proxies["plain"], proxies["addon"], sid)
    fleet = Fleet()
    try:
        progress(f"memory and lookup: {setup.routes:,} routes")
        figures += memory_figures(setup, fleet)
        progress(f"routes file: {setup.file_routes:,} routes")
        figures.append(routes_file_figure(setup, fleet))
        progress("done")
    finally:
        fleet.close()
    order = ["throughput, addon", "throughput, empty", "memory", "routes file", "routed", "fallback", "50 "]
    figures.sort(key=lambda f: next((i for i, p in enumerate(order) if f.name.startswith(p)), len(order)))
    mode = "quick run" if quick else "full run"
    print_table(figures, [*header, f"{mode}; ratios are what to read"], setup.notes)
    return 1 if args.strict and any(f.verdict == "FAIL" for f in figures) else 0


if __name__ == "__main__":
    raise SystemExit(main())
