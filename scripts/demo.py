#!/usr/bin/env python3
"""Replay the reference's live scoping QA, offline, through a real mitmdump with the addon.

Starts the local Kernel simulator (control plane + browser VM) and `mitmdump -s
addon/browser_routing.py` pointed at it (routing allowlist `telemetry`, fallback
registry at its default `telemetry/events`), then drives the official `kernel` SDK
through the proxy with the SDK's own routing turned off, so every routing decision is
the addon's:

  (A) create a browser and open its telemetry stream: routed to the VM host;
  (B) kill the browser on the VM only and re-open the stream on the stale route: the
      client gets the VM's 404 browser_gone, with zero control-plane re-issues;
  (C) read the killed browser's telemetry events: falls back to the control plane
      once, the route is evicted, and the next read goes straight to the control plane.

Then the live QA that the live service needs today (scripts/demo_live_qa.py), each with
its own `mitmweb -s addon/browser_routing.py`, driven through mitmweb's command API:

  (D) audit mode (`browserrouting_mode=audit`): the SDK routes by itself
      (KERNEL_BROWSER_ROUTING_SUBRESOURCES=telemetry) and the proxy judges each exchange:
      normal calls are clean; an injected 502 shows the SDK's retries on the VM; an
      injected browser_gone is reported as missing_fallback and the next call as
      stale_route, the expected findings for an SDK without a browser_gone fallback;
  (E) route mode against a second simulator whose VM answers 502 for a deleted browser,
      as the live VM proxy does: a browser deleted at the CP behind the proxy's back gives
      the VM's 502 and no fallback; with browser_gone injected the addon falls back once
      and the client gets the CP's answer (its 404 for the deleted browser; its page for a
      browser killed on the VM only, which the CP still serves).

Each step prints the addon's decision records for its flows, the outbound attempts per
host as the simulator counted them, and PASS/FAIL per expectation. At the end the demo
writes the QA report of its run (scripts/report.py: one HTML page from its decision logs)
and prints its path. Exits 1 if any
expectation fails, 2 if a simulator, mitmdump or mitmweb cannot start, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar
from urllib.parse import quote

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))

import demo_live_qa  # noqa: E402
import kernel  # noqa: E402
import report  # noqa: E402
from mitmdump_runner import Mitmdump  # noqa: E402
from simulator import Simulator  # noqa: E402

API_KEY = "sk-demo"  # fake; never printed
SUBRESOURCES = "telemetry"  # as the reference QA's KERNEL_BROWSER_ROUTING_SUBRESOURCES=telemetry
HEADERS = {
    "A": "(A) live browser: its telemetry stream is routed to the VM host",
    "B": "(B) browser killed on the VM: re-opening the stream on the stale route does not fall back",
    "C": "(C) telemetry events of the killed browser fall back to the control plane",
    "D": "(D) audit mode: the SDK routes by itself, the proxy judges every exchange",
    "E": "(E) route mode, a VM that answers 502 for a gone browser: an injected browser_gone falls back",
}
Record = dict[str, Any]
T = TypeVar("T")


class Demo:
    def __init__(self, sim: Simulator, proxy: Mitmdump, client: kernel.Kernel) -> None:
        self.sim = sim
        self.proxy = proxy
        self.client = client
        self.sid = ""
        self.labels: dict[str, str] = {}  # session id -> how the output shows it
        self.jwts: list[str] = []  # of every browser the demo created, never to be printed
        self.logs = [proxy.log_path]
        self.passed = 0
        self.failed: list[str] = []
        self.printed: list[str] = []
        self._mark = 0
        self.use(sim, proxy, client)

    def use(self, sim: Simulator, proxy: Mitmdump, client: kernel.Kernel) -> None:
        """Point the next steps at a simulator, a proxy (its decision log) and a client."""
        self.sim, self.proxy, self.client = sim, proxy, client
        self.hosts = {
            f"{sim.vm_host}:{sim.vm_port}": "VM",
            f"{sim.cp_host}:{sim.cp_port}": "CP",
        }
        if proxy.log_path not in self.logs:
            self.logs.append(proxy.log_path)

    def remember(self, session_id: str, label: str = "{id}") -> None:
        """A browser the demo created: shown as `label`, its jwt checked for in no_secrets()."""
        self.labels[session_id] = label
        self.jwts.append(self.sim.jwt_for(session_id))

    # -- output ------------------------------------------------------------

    def say(self, line: str = "") -> None:
        self.printed.append(line)
        print(line, flush=True)

    def check(self, ok: bool, what: str, got: object = None) -> None:
        if ok:
            self.passed += 1
            self.say(f"    PASS  {what}")
        else:
            self.failed.append(what)
            self.say(f"    FAIL: {what}" + (f" (got {got})" if got is not None else ""))

    def short(self, text: str) -> str:
        for session_id, label in self.labels.items():
            text = text.replace(session_id, label)
        return text

    # -- decision log ------------------------------------------------------

    def _log(self) -> list[Record]:
        path = self.proxy.log_path
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def mark(self) -> None:
        """Start a new window of decision records and simulator counts."""
        self.sim.reset()  # counters only: browsers are kept
        self._mark = len(self._log())

    def records(self, until: Callable[[list[Record]], bool], timeout: float = 5) -> list[Record]:
        """Records logged since mark(), once `until` holds for them (or the timeout passes)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self._log()[self._mark :]
            if until(found) or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def observe(self, call: Callable[[], T], decision: str) -> tuple[T, list[Record], dict[str, int]]:
        """One client call in a fresh window: what it returned, its records (once one with
        `decision` is logged; shown) and the attempts per side."""
        self.mark()
        result = call()
        recs = self.records(lambda rs: any(r["decision"] == decision for r in rs))
        self.show(recs)
        return result, recs, self.attempts()

    def show(self, records: list[Record]) -> None:
        self.say(f"    {'decision':<15}{'reason':<14}{'vm_status':<11}{'cp_status':<11}flow")
        for r in records:
            if r["decision"].startswith("route_"):
                flow = f"route cache: {r['session_id']}"
            else:
                flow = f"{r['method']} /{r['url'].split('//', 1)[-1].split('/', 1)[-1]}"
                flow += f" (injected {r['injected']})" if r.get("injected") else ""
            reason, vm, cp = r.get("reason") or "-", r.get("vm_status", "-"), r.get("cp_status", "-")
            self.say(f"    {r['decision']:<15}{reason:<14}{vm!s:<11}{cp!s:<11}{self.short(flow)}")

    # -- simulator counts --------------------------------------------------

    def attempts(self) -> dict[str, int]:
        """Outbound attempts per side, as the simulator counted them since mark(); printed per host."""
        stats = self.sim.stats()
        counts = {}
        self.say(f"    {'attempts':<15}{'host':<20}{'n':<4}requests")
        for host, side in self.hosts.items():
            reqs = stats[side.lower()]["requests"]
            counts[side] = stats["by_host"].get(host, 0)
            lines = [
                f"{r['method']} {self.short(r['path'])} -> {r['status'] or 'no answer'}"
                + (" (forwarded by the CP)" if r.get("via_cp") else "")
                for r in reqs
            ]
            self.say(f"    {side:<15}{host:<20}{counts[side]:<4}{lines[0] if lines else '-'}")
            for line in lines[1:]:
                self.say(f"    {'':<39}{line}")
        return counts

    # -- steps -------------------------------------------------------------

    def step_a(self) -> None:
        self.say(HEADERS["A"])
        self.mark()
        browser = self.client.browsers.create()
        self.sid = browser.session_id
        self.remember(self.sid)
        cached = self.records(lambda rs: any(r["decision"] == "route_cached" for r in rs))
        self.say(f"    browser {self.sid} created through the proxy (shown as {{id}} below)")
        self.check(
            [
                (r["decision"], r["reason"], r["session_id"])
                for r in cached
                if r["decision"].startswith("route_")
            ]
            == [("route_cached", "create", self.sid)],
            "the create response filled the route cache",
        )

        self.mark()
        with self.client.browsers.telemetry.stream(self.sid) as stream:
            events = [str(event.to_dict().get("id")) for event in stream]
        recs = self.records(lambda rs: any(r["decision"] == "routed" and "vm_status" in r for r in rs))
        self.show(recs)
        counts = self.attempts()
        self.say(f"    client got {len(events)} events: {', '.join(self.short(e) for e in events)}")
        got = [(r["decision"], r.get("vm_status")) for r in recs]
        self.check(got == [("routed", 200)], "decision routed, the VM answered 200", got)
        self.check(counts == {"VM": 1, "CP": 0}, "every outbound attempt went to the VM host", counts)
        self.check(
            len(events) == self.sim.sse_count and all(e.startswith(f"vm-{self.sid}-") for e in events),
            f"the stream delivered the VM's {self.sim.sse_count} events",
            events,
        )

    def step_b(self) -> None:
        self.say(HEADERS["B"])
        self.sim.kill_on_vm(self.sid)
        self.say("    browser {id} killed on the VM only; the route is still cached (stale)")
        self.mark()
        error: kernel.APIStatusError | None = None
        try:
            with self.client.browsers.telemetry.stream(self.sid) as stream:
                for _ in stream:
                    pass
        except kernel.APIStatusError as exc:
            error = exc
        recs = self.records(lambda rs: any(r["decision"] == "no_fallback" for r in rs))
        self.show(recs)
        counts = self.attempts()
        body = error.body if error is not None else None
        desc = f"{type(error).__name__} {error.status_code} {json.dumps(body)}" if error else "no error"
        self.say(f"    client got {desc}")
        self.check(
            isinstance(error, kernel.NotFoundError)
            and isinstance(body, dict)
            and body.get("code") == "browser_gone",
            "the client got the VM's 404 browser_gone (kernel.NotFoundError)",
        )
        got = [(r["decision"], r["reason"], r.get("vm_status")) for r in recs]
        self.check(
            got == [("no_fallback", "not_eligible", 404)],
            "decision no_fallback (not_eligible), no eviction",
            got,
        )
        self.check(
            counts == {"VM": 1, "CP": 0}, "zero control-plane re-issues: every attempt went to the VM", counts
        )

    def step_c(self) -> None:
        self.say(HEADERS["C"])
        self.say("    read 1: the stale route is used, the VM says browser_gone")
        page, recs, counts = self.observe(lambda: self.client.browsers.telemetry.events(self.sid), "fallback")
        ids = [str(item.to_dict().get("id")) for item in page.items]
        self.say(f"    client got a page of {len(ids)} events: {', '.join(self.short(i) for i in ids)}")
        self.check(
            bool(ids) and all(i.startswith(f"cp-{self.sid}-") for i in ids), "the client got the CP's page"
        )
        cp = self.sim.stats()["cp"]["requests"]
        reissued = (
            counts == {"VM": 1, "CP": 1}
            and cp[0]["headers"].get("authorization") == f"Bearer {API_KEY}"
            and "jwt" not in cp[0]["query"]
        )
        self.check(reissued, "exactly one CP re-issue, with the API key restored and no jwt", counts)
        by = {r["decision"]: r for r in recs}
        fallback, reissue, evicted = (
            by.get("fallback", {}),
            by.get("reissue", {}),
            by.get("route_evicted", {}),
        )
        linked = (
            (fallback.get("vm_status"), fallback.get("cp_status")) == (404, 200)
            and reissue.get("serves") == fallback.get("flow_id")
            and len(recs) == 3
        )
        self.check(linked, "decision fallback (VM 404, CP 200), linked to its re-issue")
        self.check(
            (evicted.get("reason"), evicted.get("session_id")) == ("browser_gone", self.sid),
            "the route was evicted (route_evicted, browser_gone)",
        )

        self.say("    read 2: no route any more, straight to the control plane")
        page, recs, counts = self.observe(
            lambda: self.client.browsers.telemetry.events(self.sid), "passthrough"
        )
        again = [str(item.to_dict().get("id")) for item in page.items]
        self.say(f"    client got a page of {len(again)} events from the CP")
        got = [(r["decision"], r["reason"], r.get("cp_status")) for r in recs]
        self.check(got == [("passthrough", "no_route", 200)], "decision passthrough (no_route)", got)
        self.check(counts == {"VM": 0, "CP": 1}, "zero VM attempts, one CP request", counts)

    def no_secrets(self) -> None:
        logs = [path.read_text() for path in self.logs if path.exists()]
        secrets = [API_KEY, *self.jwts, *(quote(jwt, safe="") for jwt in self.jwts)]
        seen = [s for s in secrets if any(s in text for text in (*logs, *self.printed))]
        self.check(not seen, "no jwt or API key in clear in this output, the decision logs or the report")


def proxy_options(sim: Simulator) -> dict[str, str]:
    """What QA would pass to mitmdump to point the addon at the simulator."""
    return {
        "browserrouting_control_plane": sim.cp_url,
        "browserrouting_vm_hosts": sim.vm_host,
        "browserrouting_subresources": SUBRESOURCES,
        "ssl_verify_upstream_trusted_ca": sim.cert_path,
    }


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
    try:
        sim.start()
    except OSError as exc:
        print(f"demo: the simulator did not start: {exc}", file=sys.stderr)
        return 2
    proxy = Mitmdump(proxy_options(sim))
    stack.callback(proxy.cleanup)
    try:
        proxy.start()
    except RuntimeError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    os.environ.pop("KERNEL_BASE_URL", None)
    # The SDK itself routes nothing, the proxy does. No SDK retries: every attempt the
    # simulator counts is one the client made once.
    client = demo_live_qa.sdk_client(API_KEY, sim.cp_url, routing="", proxy=proxy, max_retries=0)
    stack.callback(client.close)
    try:
        live = demo_live_qa.LiveQa.start(stack, sim, proxy_options, API_KEY)
    except (OSError, RuntimeError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2

    demo = Demo(sim, proxy, client)
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
        demo_live_qa.audit_sdk_routing(demo, live)

    def step_e() -> None:
        demo.say(HEADERS["E"])
        demo_live_qa.live_like_route_mode(demo, live)

    # An unexpected error fails its step and the steps of its group after it.
    for group in ((demo.step_a, demo.step_b, demo.step_c), (step_d,), (step_e,)):
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


if __name__ == "__main__":
    sys.exit(main())
