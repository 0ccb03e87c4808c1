"""Real clients through a real proxy to the simulator (httpx, curl, the official Node SDK), what
each side saw, and what the proxy logged and shows (its decision log, mitmweb's API, its output)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from mitmdump_runner import Mitmdump
from simulator import Simulator

API_KEY = "sk-test-secret-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CACHE_CHANGES = ("route_cached", "route_evicted", "route_refused")
# The clients speak plain HTTP to the CP through the proxy; one TLS context, built once, keeps
# each new httpx client cheap (loading the CA bundle costs tens of milliseconds).
TLS = ssl.create_default_context()
NODE_DIR = Path(__file__).resolve().parent / "node"
NODE = shutil.which("node")
ROUTING_ENV = "KERNEL_BROWSER_ROUTING_SUBRESOURCES"


def wait_until(predicate: Callable[[], bool], timeout: float = 10, step: float = 0.05) -> bool:
    """Polls `predicate` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


# --------------------------------------------------------------------------- clients


def client(proxy: Mitmdump, timeout: float = 10) -> httpx.Client:
    """httpx through the proxy, with the API key."""
    return httpx.Client(proxy=proxy.url, headers=AUTH, timeout=timeout, verify=TLS)


def create_browser(proxy: Mitmdump, sim: Simulator, name: str | None = None) -> dict[str, Any]:
    """A browser created through the proxy, so that the addon learns its route."""
    with client(proxy) as c:
        browser: dict[str, Any] = c.post(f"{sim.cp_url}/browsers", json={"name": name} if name else {}).json()
    return browser


def new_browser(proxy: Mitmdump, sim: Simulator, name: str | None = None) -> str:
    """The session id of a browser created through the proxy."""
    sid: str = create_browser(proxy, sim, name)["session_id"]
    return sid


def gone_browser(proxy: Mitmdump, sim: Simulator) -> str:
    """A browser created through the proxy (its route learned), then killed on the VM: the VM now
    answers 404 browser_gone. The simulator's counts start again at zero."""
    sid = new_browser(proxy, sim)
    sim.kill_on_vm(sid)
    sim.reset()
    return sid


def url(sim: Simulator, key: str, tail: str) -> str:
    return f"{sim.cp_url}/browsers/{key}/{tail}"


def events_url(sim: Simulator, session_id: str) -> str:
    return f"{sim.cp_url}/browsers/{session_id}/telemetry/events?limit=2&offset=0"


@dataclass
class Answer:
    status: int | None  # None: the connection closed with no answer
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str = ""

    def json(self) -> Any:
        return json.loads(self.body)


def send(
    client_name: str, proxy: Mitmdump, url: str, method: str = "GET", body: bytes = b"", timeout: float = 10
) -> Answer:
    """One request through the proxy with the API key, by httpx or by curl, which give up after
    `timeout` seconds."""
    if client_name == "httpx":
        with client(proxy, timeout) as c:
            try:
                got = c.request(method, url, content=body)
            except httpx.TransportError as e:
                return Answer(None, error=type(e).__name__)
        return Answer(got.status_code, {k.lower(): v for k, v in got.headers.items()}, got.content)
    args = ["curl", "-sS", "-i", "-x", proxy.url, "-H", f"Authorization: {AUTH['Authorization']}"]
    args += ["-X", method, "--max-time", str(timeout)]
    args += ["--data-binary", "@-"] if body else []
    out = subprocess.run([*args, url], input=body, capture_output=True, timeout=timeout + 10)
    if out.returncode != 0:
        return Answer(None, error=f"curl exit {out.returncode}: {out.stderr.decode().strip()}")
    head, _, content = out.stdout.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return Answer(int(lines[0].split()[1]), headers, content)


def require_node() -> None:
    """Skips the calling test when the Node SDK driver cannot run here."""
    if NODE is None:
        pytest.skip("node is not installed: the Node SDK driver needs Node 20")
    if not (NODE_DIR / "node_modules" / "@onkernel" / "sdk").is_dir():
        pytest.skip("tests/node/node_modules is missing: scripts/setup installs it when node and npm exist")


def node_sdk(
    proxy: Mitmdump,
    sim: Simulator,
    steps: list[dict[str, Any]],
    routing: str | None = None,
    api_key: str = API_KEY,
) -> dict[str, Any]:
    """Runs tests/node/sdk_client.mjs (the official Node SDK) through the proxy; its JSON output.
    `routing` sets the SDK's KERNEL_BROWSER_ROUTING_SUBRESOURCES (None: its defaults)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("KERNEL_") and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
    }
    env["NODE_EXTRA_CA_CERTS"] = str(proxy.ca_cert)
    if routing is not None:
        env[ROUTING_ENV] = routing
    spec = {"proxy": proxy.url, "base_url": sim.cp_url, "api_key": api_key, "steps": steps}
    assert NODE is not None
    done = subprocess.run(
        [NODE, str(NODE_DIR / "sdk_client.mjs"), json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=NODE_DIR,
    )
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout)
    return out


# --------------------------------------------------------------------------- what each side saw


def requests_to(sim: Simulator, side: str, path_part: str) -> list[dict[str, Any]]:
    """Every request the simulator's "cp" or "vm" side received whose path holds `path_part`."""
    return [r for r in sim.stats()[side]["requests"] if path_part in r["path"]]


def vm_hits(sim: Simulator, path_part: str = "") -> list[dict[str, Any]]:
    """What the client's own requests brought to the VM (not the CP's forwarding)."""
    return [r for r in requests_to(sim, "vm", path_part) if not r["via_cp"]]


def cp_hits(sim: Simulator, path_part: str) -> list[dict[str, Any]]:
    return requests_to(sim, "cp", path_part)


def vm_requests(sim: Simulator, jwt: str) -> list[dict[str, Any]]:
    """What the VM received with this jwt, directly from a client (not forwarded by the CP)."""
    return [r for r in vm_hits(sim) if parse_qs(r["query"]).get("jwt") == [jwt]]


def cp_requests(sim: Simulator, session_id: str) -> list[dict[str, Any]]:
    return cp_hits(sim, f"/browsers/{session_id}")


# --------------------------------------------------------------------------- what the proxy logged


def flow_records(
    proxy: Mitmdump, sid: str | None, count: int, timeout: float = 5, url_part: str = ""
) -> list[dict[str, Any]]:
    """The session's flow records (no cache changes) whose URL holds `url_part`, in log order,
    once `count` are in."""
    found: list[dict[str, Any]] = []

    def enough() -> bool:
        found[:] = [
            r
            for r in proxy.records(None, sid, wait_for=0)
            if r["decision"] not in CACHE_CHANGES and url_part in (r.get("url") or "")
        ]
        return len(found) >= count

    wait_until(enough, timeout)
    return found


def cache_changes(proxy: Mitmdump, session_id: str) -> list[str]:
    """The decisions of every cache change the log has for a session."""
    return [
        r["decision"] for r in proxy.records(None, session_id, wait_for=0) if r["decision"] in CACHE_CHANGES
    ]


def web_api(proxy: Mitmdump, path: str) -> Any:
    """A GET of mitmweb's HTTP API (tool="mitmweb"), with its access token: `/flows`, `/options`."""
    base = httpx.URL(proxy.web_url)
    with httpx.Client(trust_env=False) as web:
        got = web.get(
            f"{base.scheme}://{base.host}:{base.port}{path}", params={"token": base.params["token"]}
        )
    return got.raise_for_status().json()


def interrupt(proxy: Mitmdump) -> str:
    """Stop mitmdump as a user does (Ctrl-C) and return everything it printed."""
    assert proxy.process is not None
    proxy.process.send_signal(signal.SIGINT)
    assert proxy.process.wait(10) == 0
    return "".join(proxy.output)
