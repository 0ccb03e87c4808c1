"""scripts/bench: the quick bench prints its table with every figure as a number, and both
load generators send the same request mix. The values are machine-dependent: not checked."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from bench import load
from bench.base import API_KEY
from mitmdump_runner import Mitmdump
from simulator import Simulator

ROOT = Path(__file__).resolve().parent.parent
FIGURES = (
    "throughput, addon / plain (CP over HTTP,",
    "throughput, empty hooks / plain (CP over HTTP,",
    "throughput, addon / plain (CP over HTTPS,",
    "throughput, empty hooks / plain (CP over HTTPS,",
    "memory, 100k routes",
    "routes file,",
    "routed latency",
    "fallback /",
    "50 concurrent fallbacks",
    "SSE first event",
    "lookup,",
)
NUMBER = r"[+-]?\d+\.\d+"
VALUE = re.compile(rf"  ({NUMBER})(?: ms| MB)?(?: \[({NUMBER})-({NUMBER})\])?  ")


def bench(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def quick_run() -> str:
    done = bench("--quick", "--starts", "2", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def table_rows(output: str) -> list[str]:
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("figure "))
    end = lines.index("", start)
    return lines[start + 1 : end]


def test_quick_bench_prints_every_figure_with_a_number_a_target_and_a_verdict(quick_run: str) -> None:
    rows = table_rows(quick_run)
    assert len(rows) == len(FIGURES), rows
    for prefix in FIGURES:
        row = next((r for r in rows if r.startswith(prefix)), None)
        assert row is not None, f"no figure {prefix!r} in\n{quick_run}"
        value = VALUE.search(row)
        assert value is not None, f"no number in {row!r}"
        if value.group(2) is not None:  # repeated: median within [min-max]
            low, mid, high = float(value.group(2)), float(value.group(1)), float(value.group(3))
            assert low <= mid <= high, row
        assert re.search(r"(>=|<=|~)", row[value.end() :]), f"no target in {row!r}"
        assert row.rstrip().endswith(("PASS", "FAIL")), row


@pytest.mark.parametrize("cp", ["CP over HTTP", "CP over HTTPS"])
def test_quick_bench_measures_a_routing_addon_against_proxies_that_route_nothing(
    quick_run: str, cp: str
) -> None:
    shares = re.search(
        rf"{cp}: share .*the VM got directly.*: plain ([\d.]+)%, empty ([\d.]+)%, addon ([\d.]+)%", quick_run
    )
    assert shares is not None, quick_run
    plain, empty, addon = map(float, shares.groups())
    assert plain == empty == 0.0
    assert 9.0 <= addon <= 11.0  # 2 routed in each 20 requests
    counts = re.search(
        rf"{cp}: .*count / server count: plain ([\d.]+), empty ([\d.]+), addon ([\d.]+)", quick_run
    )
    assert counts is not None, quick_run
    assert all(0.9 <= float(c) <= 1.1 for c in counts.groups()), counts.group(0)


@pytest.mark.parametrize("cp", ["CP over HTTP", "CP over HTTPS"])
def test_quick_bench_spreads_the_windows_over_fresh_starts_of_the_proxies(quick_run: str, cp: str) -> None:
    row = next(r for r in table_rows(quick_run) if r.startswith(f"throughput, addon / plain ({cp},"))
    assert f"({cp}, 5 windows of 1 s, 2 starts)" in row
    per_start = re.search(rf"{cp}: addon / plain, median of each start's windows: (.*)", quick_run)
    assert per_start is not None, quick_run
    medians = [float(m) for m in per_start.group(1).split(", ")]
    assert len(medians) == 2 and all(0.5 < m < 1.5 for m in medians), medians


def test_a_ratio_just_under_its_target_does_not_print_as_meeting_it() -> None:
    from bench.base import Figure

    def at_least(v: float) -> bool:
        return v >= 0.97

    assert Figure("r", [0.9697, 0.95, 0.99], "x", ">= 0.97", at_least).text() == "0.9697 [0.950-0.990]"
    assert Figure("r", [0.9751], "x", ">= 0.97", at_least).text() == "0.975"


def test_bench_help_names_its_options() -> None:
    done = bench("--help", timeout=60)
    assert done.returncode == 0
    for option in ("--quick", "--windows", "--starts", "--load", "--instructions", "--strict"):
        assert option in done.stdout


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind not installed")
def test_instruction_counts_are_per_request_of_a_fixed_count_all_answered_by_the_servers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bench import instructions
    from bench.base import three_proxies

    monkeypatch.setattr(instructions, "WARMUP", 4)
    monkeypatch.setattr(instructions, "COUNTED", 10)
    with Simulator() as sim:
        sid = sim.create_browser()["session_id"]
        addon, empty = instructions.instruction_figures(4, sim, three_proxies(sim), sid)
    found = re.fullmatch(
        r"plain ([\d.]+) M, empty ([\d.]+) M, addon ([\d.]+) M instructions a request; "
        r"(\d+) requests counted of each",
        addon.detail,
    )
    assert found is not None, addon.detail
    millions = [float(x) for x in found.groups()[:3]]
    assert int(found.group(4)) == 40  # 10 on each of 4 connections
    assert all(3 < m < 30 for m in millions), "a proxied request takes millions of instructions"
    assert addon.value == pytest.approx(millions[0] / millions[2], abs=0.002)
    assert empty.value == pytest.approx(millions[0] / millions[1], abs=0.002)
    assert "CP over HTTP, callgrind" in addon.name


GENERATORS = [
    "python",
    pytest.param("wrk", marks=pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")),
]


def answered_records(sim: Simulator, name: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The CP's records of the requests this generator sent, once none is in flight: when the
    generator exits, the proxy may still be sending the last requests' bodies. A request the
    proxy gave up on mid-way finishes without a status (no answer): left out."""
    deadline = time.monotonic() + timeout
    while True:
        records = [r for r in sim.stats()["cp"]["requests"] if r["headers"].get("x-bench-proxy") == name]
        if all(r["t_end"] is not None for r in records) or time.monotonic() > deadline:
            return [r for r in records if r["t_end"] is not None and r["status"] is not None]
        time.sleep(0.05)


@pytest.mark.parametrize("kind", GENERATORS)
def test_load_generator_sends_the_mix_in_equal_shares_with_bodies_and_api_key(
    kind: str, tmp_path: Path
) -> None:
    with (
        Simulator() as sim,
        Mitmdump({"ssl_verify_upstream_trusted_ca": sim.cert_path}, with_addon=False) as plain,
    ):
        cp = sim.cp_url
        session = sim.create_browser()["session_id"]
        mix = load.request_mix(cp, session)
        mix_file = tmp_path / "mix.txt"
        mix_file.write_text(load.mix_text(mix))
        connections = 4
        counted = load.LoadGenerator(kind, plain, f"gen-{kind}", mix_file, 2, connections).result()
        records = answered_records(sim, f"gen-{kind}")
    assert counted >= 40
    assert counted <= len(records) <= counted + connections  # the servers count the last ones in flight too
    sent = Counter(
        (r["method"], cp + r["path"] + (f"?{r['query']}" if r["query"] else ""), r["body_sha256"])
        for r in records
    )
    assert set(sent) == {(m, u, hashlib.sha256(b.encode()).hexdigest()) for m, u, b in mix}
    share = len(records) / len(mix)
    assert all(abs(n - share) <= connections + 1 for n in sent.values()), sent
    for r in records:
        assert r["headers"]["authorization"] == f"Bearer {API_KEY}"
        assert r["headers"]["host"] == cp.removeprefix("http://")
