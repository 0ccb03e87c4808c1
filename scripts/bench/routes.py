"""The figures of many routes, on the bench's own CP and VM: memory of 100,000 routes, a
lookup among them, and what the routes file adds to a page of new browsers."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import httpx
from mitmdump_runner import Mitmdump

from .base import AUTH, Figure, Setup, interleaved, keep, median_ms, ms_vs, started, timed
from .fleet import PAGE, Fleet, session_id


def rss_mib(proxy: Mitmdump) -> float:
    assert proxy.process is not None
    for line in Path(f"/proc/{proxy.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


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
