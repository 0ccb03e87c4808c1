"""The audit proxy of one client: a real `mitmweb -s addon/browser_routing.py` in audit mode, used
only from the outside: its options, its commands (`browserrouting.inject`, `...inject.list`,
`...inject.clear`, `save.har`, `export.file`) through mitmweb's HTTP API, its flow list, and its
JSON-lines decision log."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
from mitmdump_runner import CommandFailed, Mitmdump

from .service import Service

Record = dict[str, Any]
FALLBACK_REGISTRY = "telemetry/events"  # the reference's fallback-eligible paths


class RuleRefused(Exception):
    """The proxy did not take a fault rule as the runner meant it."""


class AuditProxy:
    def __init__(self, service: Service, allowlist: str, window_ms: int, log_path: Path) -> None:
        options = {
            **service.proxy_options,
            "browserrouting_mode": "audit",
            "browserrouting_subresources": allowlist,
            "browserrouting_fallback": FALLBACK_REGISTRY,
            "browserrouting_audit_window": str(window_ms),
            "browserrouting_log": str(log_path),
        }
        self.options = options
        self.mitm = Mitmdump(options, tool="mitmweb")
        self.log_path = log_path
        self.records: list[Record] = []  # every line of the decision log so far
        self._read = 0  # bytes of the log already parsed
        self._web: httpx.Client | None = None

    def start(self) -> AuditProxy:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.write_text("")
        self.mitm.start()
        web = httpx.URL(self.mitm.web_url)
        self._web = httpx.Client(
            base_url=f"{web.scheme}://{web.host}:{web.port}", params={"token": web.params["token"]},
            trust_env=False, timeout=20,
        )  # fmt: skip
        return self

    def stop(self) -> None:
        if self._web is not None:
            self._web.close()
            self._web = None
        self.mitm.cleanup()

    @property
    def url(self) -> str:
        return self.mitm.url

    @property
    def ca_cert(self) -> Path:
        return self.mitm.ca_cert

    # -- fault rules --------------------------------------------------------------------------

    def inject(self, rule: str, session: str) -> None:
        """Add a rule for `session`, and check that the proxy read it so: a proxy that takes
        `cp:SID/...` for a browser named "cp:SID" would never apply it."""
        try:
            self.mitm.command("browserrouting.inject", rule)
        except CommandFailed as e:
            raise RuleRefused(f"the proxy refused the fault rule {rule!r}: {e}") from None
        rules = json.loads(self.mitm.command("browserrouting.inject.list"))
        got = rules[-1].get("session") if rules and isinstance(rules[-1], dict) else None
        if got != session:
            self.clear()
            raise RuleRefused(
                f"the proxy read the fault rule {rule!r} as one for browser {got!r}, not {session!r}"
            )

    def clear(self) -> None:
        self.mitm.command("browserrouting.inject.clear")

    # -- what it saw --------------------------------------------------------------------------

    def read_log(self) -> list[Record]:
        """Every decision-log line so far (each complete line parsed once)."""
        with self.log_path.open("rb") as f:
            f.seek(self._read)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._read += len(complete)
        self.records += [json.loads(line) for line in complete.splitlines() if line.strip()]
        return self.records

    def flows(self, since: float) -> list[dict[str, Any]]:
        """mitmweb's flows whose request began at or after `since` (time.time()), oldest first."""
        assert self._web is not None
        got = self._web.get("/flows").raise_for_status().json()
        flows = [f for f in got if (f.get("request") or {}).get("timestamp_start", 0) >= since]
        return sorted(flows, key=lambda f: f["request"]["timestamp_start"])

    def settled(self, since: float, timeout: float) -> list[dict[str, Any]]:
        """The flows since `since` once each has its decision logged (or `timeout` passed)."""
        deadline = time.monotonic() + timeout
        while True:
            flows = self.flows(since)
            logged = {r.get("flow_id") for r in self.read_log()}
            if all(f["id"] in logged for f in flows) or time.monotonic() > deadline:
                return flows
            time.sleep(0.03)

    def response_body(self, flow_id: str) -> bytes | None:
        """The body of a flow's answer as the proxy holds it (None when it streamed through)."""
        assert self._web is not None
        got = self._web.get(f"/flows/{flow_id}/response/content.data")
        return got.content if got.is_success else None

    def save_har(self, flow_ids: list[str], path: Path) -> None:
        """mitmproxy's own HAR export (`save.har`) of these flows."""
        self.mitm.command("save.har", "@" + ",".join(flow_ids), str(path))

    def export_curl(self, flow_id: str, path: Path) -> None:
        """mitmproxy's own curl export (`export.file curl`) of one flow."""
        self.mitm.command("export.file", "curl", "@" + flow_id, str(path))
