"""Real clients (httpx, curl) through a proxy to the simulator, and what each side saw."""

from __future__ import annotations

import json
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from conftest import API_KEY
from mitmdump_runner import Mitmdump
from simulator import Simulator

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CACHE_CHANGES = ("route_cached", "route_evicted", "route_refused")
# The clients speak plain HTTP to the CP through the proxy; one TLS context, built once, keeps
# each new httpx client cheap (loading the CA bundle costs tens of milliseconds).
TLS = ssl.create_default_context()


@dataclass
class Answer:
    status: int | None  # None: the connection closed with no answer
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str = ""

    def json(self) -> Any:
        return json.loads(self.body)


def send(client: str, proxy: Mitmdump, url: str, method: str = "GET", body: bytes = b"") -> Answer:
    """One request through the proxy with the API key, by httpx or by curl."""
    if client == "httpx":
        with httpx.Client(proxy=proxy.url, headers=AUTH, timeout=10, verify=TLS) as c:
            try:
                got = c.request(method, url, content=body)
            except httpx.TransportError as e:
                return Answer(None, error=type(e).__name__)
        return Answer(got.status_code, {k.lower(): v for k, v in got.headers.items()}, got.content)
    args = ["curl", "-sS", "-i", "-x", proxy.url, "-H", f"Authorization: {AUTH['Authorization']}"]
    args += ["-X", method]
    args += ["--data-binary", "@-"] if body else []
    out = subprocess.run([*args, url], input=body, capture_output=True, timeout=20)
    if out.returncode != 0:
        return Answer(None, error=f"curl exit {out.returncode}: {out.stderr.decode().strip()}")
    head, _, content = out.stdout.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return Answer(int(lines[0].split()[1]), headers, content)


def new_browser(proxy: Mitmdump, sim: Simulator, name: str | None = None) -> str:
    """A browser created through the proxy, so that the addon learns its route."""
    with httpx.Client(proxy=proxy.url, headers=AUTH, timeout=10, verify=TLS) as c:
        sid: str = c.post(f"{sim.cp_url}/browsers", json={"name": name} if name else {}).json()["session_id"]
    return sid


def url(sim: Simulator, key: str, tail: str) -> str:
    return f"{sim.cp_url}/browsers/{key}/{tail}"


def vm_hits(sim: Simulator, path_part: str = "") -> list[dict[str, Any]]:
    """What the client's own requests brought to the VM (not the CP's forwarding)."""
    return [r for r in sim.stats()["vm"]["requests"] if not r["via_cp"] and path_part in r["path"]]


def cp_hits(sim: Simulator, path_part: str) -> list[dict[str, Any]]:
    return [r for r in sim.stats()["cp"]["requests"] if path_part in r["path"]]


def flow_records(proxy: Mitmdump, sid: str | None, count: int, timeout: float = 5) -> list[dict[str, Any]]:
    """The session's flow records (no cache changes) in log order, once `count` are in."""
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in proxy.records(None, sid, wait_for=0) if r["decision"] not in CACHE_CHANGES]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)
