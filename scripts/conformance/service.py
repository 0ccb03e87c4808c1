"""What the clients talk to: the embedded simulator (one per client), or with --live the real
service, both through the same audit proxy. The runner's own calls (a browser created behind the
client's back, the clean-up) go straight to the service, never through the proxy.

Every browser a run creates is deleted (a pool's is released) when the client's run ends, also
when it is interrupted: those the runner created, those the driver said it created, and those
the proxy saw created (its decision log), in case a driver died before it could say.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from simulator import Simulator

from .clients import SetupError

log = logging.getLogger(__name__)

SIM_API_KEY = "sk-conform-simulated"  # what the drivers send the simulator; no secret
SIM_POOL = "conform"
SIM_SSE_INTERVAL = 0.15  # seconds between the simulator's stream events; a live stream shows them apart
LIVE_BASE_URL = "https://api.onkernel.com"
TIMEOUT = 20


@dataclass
class Service:
    base_url: str  # the CP, as the drivers get it in KERNEL_BASE_URL
    api_key: str
    proxy_options: dict[str, str]  # what points the audit proxy at this service
    pool: str | None  # the browser pool the pool cases acquire from (None: they are n/a)
    sse_interval: float | None  # seconds between stream events when known (the simulator's)
    simulator: Simulator | None = None
    verify: ssl.SSLContext | bool = True  # how the runner's own calls check the service's TLS
    created: set[str] = field(default_factory=set)
    acquired: set[tuple[str, str]] = field(default_factory=set)  # (pool, session id)

    @property
    def is_live(self) -> bool:
        return self.simulator is None

    def http(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        return httpx.Client(base_url=self.base_url, headers=headers, verify=self.verify, trust_env=False,
                            timeout=TIMEOUT)  # fmt: skip

    def outside_browser(self) -> str:
        """A browser the client does not know of: created by the runner, not through the proxy."""
        with self.http() as http:
            answer = http.post("/browsers", json={})
        if not answer.is_success:
            raise RuntimeError(f"the runner could not create a browser: HTTP {answer.status_code}")
        session_id = str(answer.json()["session_id"])
        self.created.add(session_id)
        return session_id

    def note_created(self, records: list[dict[str, Any]]) -> None:
        """The browsers the proxy saw created or acquired (route_cached lines of its log)."""
        for r in records:
            if r.get("decision") != "route_cached" or not isinstance(r.get("session_id"), str):
                continue
            if r.get("reason") == "create":
                self.created.add(r["session_id"])
            elif r.get("reason") == "pool_acquire" and (pool := pool_of(str(r.get("url") or ""))):
                self.acquired.add((pool, r["session_id"]))

    def clean_up(self) -> list[str]:
        """Delete what the run created, release what it acquired; the ones that could not be."""
        left = []
        with self.http() as http:
            for session_id in sorted(self.created):
                left += self._gone(
                    http, "DELETE", f"/browsers/{quote(session_id, safe='')}", None, session_id
                )
            for pool, session_id in sorted(self.acquired):
                path = f"/browser_pools/{quote(pool, safe='')}/release"
                left += self._gone(http, "POST", path, {"session_id": session_id}, session_id)
        self.created.clear()
        self.acquired.clear()
        return left

    def _gone(self, http: httpx.Client, method: str, path: str, body: object, session_id: str) -> list[str]:
        try:
            answer = http.request(method, path, json=body)
        except httpx.HTTPError as e:
            return [f"{session_id} ({method} {path}: {type(e).__name__})"]
        if answer.is_success or answer.status_code == 404:  # 404: the case deleted it already
            return []
        return [f"{session_id} ({method} {path}: HTTP {answer.status_code})"]

    def stop(self) -> None:
        if self.simulator is not None:
            self.simulator.stop()


def pool_of(url: str) -> str | None:
    parts = urlsplit(url).path.strip("/").split("/")
    return parts[-2] if len(parts) >= 3 and parts[-1] == "acquire" else None


def simulated() -> Service:
    sim = Simulator(sse_interval=SIM_SSE_INTERVAL).start()
    options = {
        "browserrouting_control_plane": sim.cp_url,
        "browserrouting_vm_hosts": sim.vm_host,
        "ssl_verify_upstream_trusted_ca": sim.cert_path,
    }
    return Service(sim.cp_url, SIM_API_KEY, options, SIM_POOL, sim.sse_interval, sim)


def live() -> Service:
    """The real service from the environment: KERNEL_API_KEY, and optionally KERNEL_BASE_URL,
    KERNEL_CONFORM_POOL (a browser pool for the pool cases), KERNEL_CONFORM_VM_HOSTS (default
    *.onkernel.com) and KERNEL_CONFORM_UPSTREAM_CA (a CA the service's TLS is checked against)."""
    api_key = os.environ.get("KERNEL_API_KEY", "").strip()
    if not api_key:
        raise SetupError("--live needs KERNEL_API_KEY in the environment")
    base_url = os.environ.get("KERNEL_BASE_URL", "").strip() or LIVE_BASE_URL
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SetupError(f"KERNEL_BASE_URL {base_url!r} is not an http(s) URL")
    options = {
        "browserrouting_control_plane": f"{parts.scheme}://{parts.netloc}",
        "browserrouting_vm_hosts": os.environ.get("KERNEL_CONFORM_VM_HOSTS", "").strip() or "*.onkernel.com",
    }
    verify: ssl.SSLContext | bool = True
    if ca := os.environ.get("KERNEL_CONFORM_UPSTREAM_CA", "").strip():
        if not Path(ca).is_file():
            raise SetupError(f"KERNEL_CONFORM_UPSTREAM_CA {ca!r} is not a file")
        options["ssl_verify_upstream_trusted_ca"] = ca
        verify = ssl.create_default_context(cafile=ca)
    pool = os.environ.get("KERNEL_CONFORM_POOL", "").strip() or None
    return Service(base_url.rstrip("/"), api_key, options, pool, None, verify=verify)
