"""One case against one client: the driver's ops, each with the flows it caused, and the fault
rules. A case runs its steps, calls `settle()`, then judges from each op's flows (the audit's
records) and answer (what the caller got)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .driver import Driver, Hello
from .proxy import AuditProxy, Record, RuleRefused
from .service import Service

CALL_TIMEOUT_MS = 10000  # what a driver gives the SDK for one call, unless a case says otherwise
SETTLE_TIMEOUT = 5  # seconds to wait for the proxy to log the flows of a case
WINDOW_SLACK = 0.3  # seconds past the audit window, for its timer to fire and the log to be written


class NotApplicable(Exception):
    """The client never reached the case's situation, or its driver cannot do a step."""


class CaseError(Exception):
    """The case could not be run (a set-up step failed, the proxy refused a rule)."""


@dataclass
class Op:
    """One request to the driver: what the caller got, and the flows it caused."""

    what: str
    started: float  # time.time() when it was sent
    answer: dict[str, Any] = field(default_factory=dict)
    flows: list[Record] = field(default_factory=list)  # the latest record of each, in request order
    cache: list[Record] = field(default_factory=list)  # the route cache changes its flows caused

    @property
    def status(self) -> int | None:
        status = self.answer.get("status")
        return status if isinstance(status, int) else None

    @property
    def error_kind(self) -> str | None:
        error = self.answer.get("error")
        return str(error.get("kind")) if isinstance(error, dict) else None

    @property
    def events(self) -> list[dict[str, Any]]:
        events = self.answer.get("events")
        return [e for e in events if isinstance(e, dict)] if isinstance(events, list) else []

    def got(self) -> str:
        """What the caller got, in words."""
        if self.status is not None:
            text = f"HTTP {self.status}"
            if self.events:
                text += f" and {len(self.events)} events"
            elif isinstance(body := self.answer.get("json"), dict) and "code" in body:
                text += f" {body['code']}"
            return text
        return {"timeout": "a timeout", "connection": "a connection error"}.get(
            self.error_kind or "", f"an error ({self.error_kind})"
        )


@dataclass
class ClientContext:
    """What every case of one client shares."""

    driver: Driver
    hello: Hello
    proxy: AuditProxy
    service: Service
    window_ms: int


class CaseRun:
    def __init__(self, ctx: ClientContext, wait_window: bool) -> None:
        self.ctx = ctx
        self.wait_window = wait_window  # a browser_gone may need the audit window to end to be judged
        self.started = time.time()
        self.ops: list[Op] = []
        self.flows: list[Record] = []  # every flow of the case, once settled
        self.web_flows: dict[str, dict[str, Any]] = {}  # mitmweb's view of them, by id

    @property
    def service(self) -> Service:
        return self.ctx.service

    def need(self, capability: str) -> None:
        if (why := self.ctx.hello.why_not(capability)) is not None:
            raise NotApplicable(why)

    def op(self, name: str, what: str = "", **fields: Any) -> Op:
        self.need(name)
        op = Op(what or name, time.time())
        self.ops.append(op)
        timeout_ms = int(fields.setdefault("timeout_ms", CALL_TIMEOUT_MS))
        # The SDKs try a call up to three times, with backoff: the driver answers after all.
        op.answer = self.ctx.driver.ask(name, 3 * timeout_ms / 1000 + 15, **fields)
        return op

    def browser(self, name: str, **fields: Any) -> str:
        """create or acquire: the new browser's session id (CaseError when there is none)."""
        op = self.op(name, **fields)
        session_id = op.answer.get("session_id")
        if not op.answer.get("ok") or not isinstance(session_id, str):
            raise CaseError(f"{name} failed: the caller got {op.got()}")
        return session_id

    def create(self) -> str:
        return self.browser("create")

    def acquire(self) -> str:
        if self.service.pool is None:
            raise NotApplicable("live: set KERNEL_CONFORM_POOL to a browser pool to run it")
        return self.browser("acquire", pool=self.service.pool)

    def step(self, name: str, **fields: Any) -> Op:
        """retrieve, list, delete or release, which must succeed."""
        if name == "release":
            fields["pool"] = self.service.pool
        op = self.op(name, **fields)
        if not op.answer.get("ok"):
            raise CaseError(f"{name} failed: the caller got {op.got()}")
        return op

    def call(
        self, session_id: str, method: str, path: str, query: tuple[tuple[str, str], ...] = (),
        body: Any = None, stream: bool = False, timeout_ms: int = CALL_TIMEOUT_MS,
    ) -> Op:  # fmt: skip
        if stream:
            self.need("stream")
        what = f"{method} {path}" + ("?" + "&".join(f"{k}={v}" for k, v in query) if query else "")
        return self.op(
            "call", what, session_id=session_id, method=method, path=path, query=[list(p) for p in query],
            body=body, stream=stream, max_events=3, timeout_ms=timeout_ms,
        )  # fmt: skip

    def inject(self, rule: str, session: str) -> None:
        try:
            self.ctx.proxy.inject(rule, session)
        except RuleRefused as e:
            raise CaseError(str(e)) from None

    def settle(self) -> None:
        """Wait for the proxy to log the case's flows (past the audit window when the case needs
        it: a missing fallback is settled then), and give each op the flows it caused."""
        if self.wait_window:
            time.sleep(self.ctx.window_ms / 1000 + WINDOW_SLACK)
        flows = self.ctx.proxy.settled(self.started, SETTLE_TIMEOUT)
        self.web_flows = {f["id"]: f for f in flows}
        latest: dict[str, Record] = {}
        cache: list[Record] = []
        for record in self.ctx.proxy.read_log():
            if str(record.get("decision", "")).startswith("client_"):
                latest[record["flow_id"]] = record
            elif str(record.get("decision", "")).startswith("route_"):
                cache.append(record)
        starts = [(f["request"]["timestamp_start"], f["id"]) for f in flows if f["id"] in latest]
        self.flows = [latest[flow_id] for _, flow_id in starts]
        bounds = [op.started for op in self.ops[1:]] + [float("inf")]
        for op, end in zip(self.ops, bounds, strict=True):
            op.flows = [latest[flow_id] for start, flow_id in starts if op.started <= start < end]
            ids = {r["flow_id"] for r in op.flows}
            op.cache = [r for r in cache if r.get("flow_id") in ids]

    def request_headers(self, flow_id: str) -> dict[str, str]:
        """The headers of a flow's request as the proxy received them, names in lower case."""
        request = self.web_flows.get(flow_id, {}).get("request") or {}
        return {str(k).lower(): str(v) for k, v in request.get("headers") or []}
