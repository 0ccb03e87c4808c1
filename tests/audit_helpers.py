"""Shared by the audit-mode tests: options, reading the audit's records, clients that route by themselves.

In audit mode the client routes by itself; these helpers build such clients (the official Python
and Node SDKs, plain httpx) pointed at the simulator through a real mitmdump or mitmweb, and read
back what the audit decided for each flow.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import kernel
from conftest import proxy_options
from mitmdump_runner import Mitmdump
from proxy_clients import API_KEY, AUTH, ROUTING_ENV, node_sdk, wait_until
from simulator import Simulator


def audit_options(sim: Simulator, subresources: str, window_ms: int, **extra: str) -> dict[str, str]:
    """Audit mode against the simulator, expecting the client's own allowlist."""
    return proxy_options(
        sim,
        browserrouting_mode="audit",
        browserrouting_subresources=subresources,
        browserrouting_audit_window=str(window_ms),
        **extra,
    )


# --------------------------------------------------------------------------- the decision log


def latest_by_flow(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last logged record of each flow (a record is logged again when it changes later),
    in the order the flows were first logged."""
    flows: dict[str, dict[str, Any]] = {}
    for record in records:
        if record["decision"].startswith("client_"):
            flows[record["flow_id"]] = record
    return flows


def of_session(record: dict[str, Any], session_id: str) -> bool:
    """Whether a record is about the session: attributed to it, or a CP call that names it in its
    path (a retrieve or a delete is no subresource call, so its record names no session)."""
    path = urlsplit(record["url"]).path
    return record["session_id"] == session_id or f"/browsers/{session_id}/" in path + "/"


def audited(proxy: Mitmdump, session_id: str, count: int, timeout: float = 10) -> list[dict[str, Any]]:
    """The audited flows of a session (latest record each), once `count` of them are logged."""
    flows: list[dict[str, Any]] = []

    def enough() -> bool:
        mine = [r for r in proxy.records(wait_for=0) if r["url"] and of_session(r, session_id)]
        flows[:] = latest_by_flow(mine).values()
        return len(flows) >= count

    wait_until(enough, timeout)
    return flows


def flow_lines(proxy: Mitmdump, flow_id: str) -> list[dict[str, Any]]:
    """Every audit line logged for one flow, in order."""
    return [r for r in proxy.records(wait_for=0) if r["flow_id"] == flow_id and "violations" in r]


def wait_flow(
    proxy: Mitmdump, flow_id: str, until: Callable[[dict[str, Any]], bool], timeout: float = 10
) -> dict[str, Any]:
    """The flow's latest record once `until` holds for it (the last one seen otherwise)."""
    lines: list[dict[str, Any]] = []

    def done() -> bool:
        lines[:] = flow_lines(proxy, flow_id)
        return bool(lines) and until(lines[-1])

    wait_until(done, timeout)
    assert lines, f"flow {flow_id} was never logged"
    return lines[-1]


def summary(flows: list[dict[str, Any]]) -> list[tuple[str, str, Any, list[str]]]:
    """(decision, method, VM or CP status, violations) of each audited flow, for one-line asserts."""
    return [
        (f["decision"], f["method"], f.get("vm_status", f.get("cp_status")), f["violations"]) for f in flows
    ]


def audit_table(proxy: Mitmdump) -> dict[str, Any]:
    table: dict[str, Any] = json.loads(proxy.command("browserrouting.audit"))
    return table


def broken_by(table: dict[str, Any], flows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The rules the audit table says these flows broke, with the flows that broke each."""
    ids = {f["flow_id"] for f in flows}
    broken = {rule: sorted(ids & set(v["broken"])) for rule, v in table["rules"].items()}
    return {rule: flows for rule, flows in broken.items() if flows}


def exit_table(proxy: Mitmdump) -> dict[str, Any]:
    """The audit table mitmdump logs when it exits (after `proxy.stop()`)."""
    line = next(x for x in reversed(proxy.output) if "browserrouting audit: " in x)
    table: dict[str, Any] = json.loads(line.split("browserrouting audit: ", 1)[1])
    return table


# --------------------------------------------------------------------------- clients


def tls_context(proxy: Mitmdump) -> ssl.SSLContext:
    """Trusts mitmproxy's CA: the proxy intercepts TLS to the VM."""
    return ssl.create_default_context(cafile=str(proxy.ca_cert))


@contextmanager
def python_sdk(proxy: Mitmdump, sim: Simulator, subresources: str, **options: Any) -> Iterator[kernel.Kernel]:
    """The official `kernel` SDK with its own routing on (`subresources`, read at construction),
    through the proxy, with its default retries and timeout unless `options` (`timeout`,
    `max_retries`) say otherwise."""
    before = os.environ.get(ROUTING_ENV)
    os.environ[ROUTING_ENV] = subresources
    try:
        http_client = kernel.DefaultHttpxClient(proxy=proxy.url, verify=tls_context(proxy), timeout=10)
        client = kernel.Kernel(api_key=API_KEY, base_url=sim.cp_url, http_client=http_client, **options)
    finally:
        if before is None:
            del os.environ[ROUTING_ENV]
        else:
            os.environ[ROUTING_ENV] = before
    try:
        yield client
    finally:
        client.close()


def run_node(
    proxy: Mitmdump, sim: Simulator, steps: list[dict[str, Any]], routing: str | None = None
) -> list[dict[str, Any]]:
    """The step results of the official Node SDK (0.84.0) run through the proxy (`node_sdk`)."""
    out = node_sdk(proxy, sim, steps, routing)
    assert out["sdk_version"] == "0.84.0"
    results: list[dict[str, Any]] = out["steps"]
    return results


@dataclass(frozen=True)
class Route:
    session_id: str
    base_url: str
    jwt: str


class RawClient:
    """httpx through the proxy: sends exactly what a test says, to the CP or to a VM."""

    def __init__(self, proxy: Mitmdump, sim: Simulator) -> None:
        self.sim = sim
        self.http = httpx.Client(proxy=proxy.url, verify=tls_context(proxy), timeout=10, trust_env=False)

    def close(self) -> None:
        self.http.close()

    def cp(self, method: str, path: str, *, auth: bool = True, **kwargs: Any) -> httpx.Response:
        headers = {**(AUTH if auth else {}), **kwargs.pop("headers", {})}
        return self.http.request(method, self.sim.cp_url + path, headers=headers, **kwargs)

    def vm(
        self,
        method: str,
        route: Route,
        tail: str,
        *,
        jwt: str | None = None,
        auth: bool = False,
        **kwargs: Any,
    ) -> httpx.Response:
        """A request to the route's VM, with the route's jwt (or `jwt`) appended to `params`."""
        params = [*kwargs.pop("params", []), ("jwt", route.jwt if jwt is None else jwt)]
        headers = {**(AUTH if auth else {}), **kwargs.pop("headers", {})}
        return self.http.request(method, f"{route.base_url}/{tail}", params=params, headers=headers, **kwargs)

    def create(self) -> Route:
        """Creates a browser at the CP and learns its route from the answer, as the SDKs do."""
        return route_of(self.cp("POST", "/browsers", json={}).raise_for_status().json())


def route_of(browser: dict[str, Any]) -> Route:
    jwt = parse_qs(urlsplit(browser["cdp_ws_url"]).query)["jwt"][0]
    return Route(browser["session_id"], browser["base_url"].rstrip("/"), jwt)


def secret_forms(secret: str) -> set[str]:
    """A secret as it could leak: as is, URL-encoded, and its random core (the simulator's jwts
    look like `tok+<hex>/x=`)."""
    forms = {secret, quote(secret, safe="")}
    if secret.startswith("tok+"):
        forms.add(secret[4:-3])
    return forms
