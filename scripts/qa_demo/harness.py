"""What the demo's steps share: the fake API key, the addon's options, the official SDK built
for a step, and `Demo`, through which every step prints (decision records, attempts per host
as the simulator counted them, PASS/FAIL per expectation) so that the output reads as one."""

from __future__ import annotations

import json
import os
import ssl
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

import kernel
from mitmdump_runner import Mitmdump
from simulator import Simulator

API_KEY = "sk-demo"  # fake; never printed
SUBRESOURCES = "telemetry"  # as the reference QA's KERNEL_BROWSER_ROUTING_SUBRESOURCES=telemetry
# The steps' headers, as the output shows them and the report labels the logs of (D) and (E).
HEADERS = {
    "A": "(A) live browser: its telemetry stream is routed to the VM host",
    "B": "(B) browser killed on the VM: re-opening the stream on the stale route does not fall back",
    "C": "(C) telemetry events of the killed browser fall back to the control plane",
    "D": "(D) audit mode: the SDK routes by itself, the proxy judges every exchange",
    "E": "(E) route mode, a VM that answers 502 for a gone browser: an injected browser_gone falls back",
}
ROUTING_ENV = "KERNEL_BROWSER_ROUTING_SUBRESOURCES"  # the SDK's own allowlist, read by sdk_client
Record = dict[str, Any]
T = TypeVar("T")


class Demo:
    """The run's output and tally: what a step prints, its checks, the decision records and the
    simulator's counts since `mark()`, on the simulator, proxy and client of `use()`."""

    def __init__(self, sim: Simulator, proxy: Mitmdump, client: kernel.Kernel) -> None:
        self.sim = sim
        self.proxy = proxy
        self.client = client
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

    # -- the run's end -----------------------------------------------------

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


def sdk_client(
    api_key: str, base_url: str, *, routing: str, proxy: Mitmdump | None, max_retries: int
) -> kernel.Kernel:
    """The official SDK. `routing` is its KERNEL_BROWSER_ROUTING_SUBRESOURCES, read when the
    client is built; with no proxy the client talks to the CP directly."""
    previous = os.environ.get(ROUTING_ENV)
    os.environ[ROUTING_ENV] = routing
    try:
        if proxy is None:
            http_client = kernel.DefaultHttpxClient(trust_env=False)
        else:  # the VM speaks HTTPS: through the proxy, trust mitmproxy's CA
            tls = ssl.create_default_context(cafile=str(proxy.ca_cert))
            http_client = kernel.DefaultHttpxClient(proxy=proxy.url, verify=tls)
        return kernel.Kernel(
            api_key=api_key, base_url=base_url, http_client=http_client, timeout=10, max_retries=max_retries
        )
    finally:
        if previous is None:
            os.environ.pop(ROUTING_ENV, None)
        else:
            os.environ[ROUTING_ENV] = previous
