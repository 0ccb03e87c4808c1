"""The demo's command line: starts the simulators, mitmdump and the mitmwebs, runs steps
(A)-(E), writes the QA report of the run and prints the tally."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType

import kernel
import report
from mitmdump_runner import Mitmdump
from simulator import Simulator

from .harness import API_KEY, HEADERS, SUBRESOURCES, Demo, proxy_options, sdk_client
from .live_qa_steps import LiveQa, audit_sdk_routing, live_like_route_mode
from .route_steps import RouteSteps


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the cleanup in run()


def write_report(demo: Demo, runs: list[tuple[Mitmdump, str]], folder: Path | None) -> None:
    """The QA report of this run (scripts/report.py's page), its decision logs beside it; the
    page is checked for secrets with the logs."""
    folder = folder or Path(tempfile.mkdtemp(prefix="browserrouting-demo-"))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        sources = []
        for number, (proxy, label) in enumerate(runs, 1):
            if proxy.log_path.exists():
                log = folder / f"{number}-decisions.jsonl"
                shutil.copyfile(proxy.log_path, log)
                sources.append(
                    report.LogSource(log, label, {"browserrouting_mode": "route", **proxy.options})
                )
        page = report.write_report(sources, folder / "report.html", "scripts/demo: the live QA, replayed")
    except Exception as exc:  # the demo's own checks stand; say why the page is missing
        demo.check(False, f"the report of this run was written to {folder}", exc)
        return
    demo.logs.append(page)
    demo.say(f"demo: report of this run: {page} (its decision logs beside it)")


def run(report_dir: Path | None = None) -> int:
    stack = contextlib.ExitStack()
    try:
        return steps(stack, report_dir)
    finally:
        # Ctrl-C or SIGTERM must not cut the cleanup short (and leave mitmdump running):
        # hold them until everything is stopped, then let them through.
        stopping = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stopping)
        try:
            stack.close()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stopping)


def steps(stack: contextlib.ExitStack, report_dir: Path | None = None) -> int:
    """Start everything (registering its cleanup on `stack` first), then run the steps."""
    sim = Simulator()
    stack.callback(sim.stop)
    try:  # each part's cleanup is registered before it starts
        sim.start()
        proxy = Mitmdump(proxy_options(sim))
        stack.callback(proxy.cleanup)
        proxy.start()
        live = LiveQa.start(stack, sim, proxy_options, API_KEY)
    except (OSError, RuntimeError) as exc:
        print(f"demo: could not start: {exc}", file=sys.stderr)
        return 2
    os.environ.pop("KERNEL_BASE_URL", None)
    # The SDK itself routes nothing, the proxy does. No SDK retries: every attempt the
    # simulator counts is one the client made once.
    client = sdk_client(API_KEY, sim.cp_url, routing="", proxy=proxy, max_retries=0)
    stack.callback(client.close)

    demo = Demo(sim, proxy, client)
    route = RouteSteps(demo)
    demo.say(f"demo: simulator   CP {sim.cp_url}   VM {sim.vm_url}")
    demo.say(f"demo: mitmdump -s addon/browser_routing.py on {proxy.url}")
    demo.say(
        f"      subresources={SUBRESOURCES}, fallback=telemetry/events (default), vm_hosts={sim.vm_host}"
    )
    demo.say(
        f"demo: kernel SDK {kernel.__version__} through the proxy, "
        "its own routing off (KERNEL_BROWSER_ROUTING_SUBRESOURCES=)"
    )

    def step_d() -> None:
        demo.say(HEADERS["D"])
        audit_sdk_routing(demo, live)

    def step_e() -> None:
        demo.say(HEADERS["E"])
        live_like_route_mode(demo, live)

    # An unexpected error fails its step and the steps of its group after it.
    for group in ((route.step_a, route.step_b, route.step_c), (step_d,), (step_e,)):
        for step in group:
            demo.say()
            try:
                step()
            except Exception as exc:
                demo.check(False, f"{step.__name__} raised {type(exc).__name__}: {demo.short(str(exc))}")
                break
    demo.say()
    write_report(
        demo,
        [(proxy, "(A)-(C) route mode: routed, a stale route, the fallback"), (live.audit, HEADERS["D"]),
         (live.route, HEADERS["E"])],
        report_dir,
    )  # fmt: skip
    demo.no_secrets()
    print(f"demo: {demo.passed} passed, {len(demo.failed)} failed", flush=True)
    return 1 if demo.failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/demo",
        description=(
            "Replay the reference's live scoping QA (steps A and B, plus the browser_gone "
            "fallback C) offline: the local Kernel simulator, a real mitmdump with the addon, "
            "and the official kernel SDK through it; then (D) audit the SDK's own routing and "
            "(E) reach the fallback on a VM that answers 502, as live, by fault injection, each "
            "through a mitmweb. Exits non-zero if any expectation fails."
        ),
    )
    parser.add_argument(
        "--report-dir",
        type=Path,
        help="where to write the report of the run (report.html) and its decision logs "
        "(default: a new temporary folder)",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return run(args.report_dir)
    except KeyboardInterrupt:
        print("\ndemo: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
