"""Audit mode: watches a client that routes by itself and judges every exchange.

Rewrites nothing and re-issues nothing: what the client sends and gets is untouched,
except where a fault-injection rule answers a VM request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from mitmproxy import ctx, exceptions, http

from . import paths
from .audit import Audit, VmExchange
from .bodies import is_gone, may_be_gone
from .injector import FaultInjection
from .paths import jwt_of
from .recorder import DecisionRecorder, record_of
from .reissue import ControlPlaneFallback
from .router import BrowserRouting
from .routes import Route

logger = logging.getLogger(__name__)


class RoutingAudit:
    def __init__(
        self, router: BrowserRouting, fallback: ControlPlaneFallback,
        injector: FaultInjection, recorder: DecisionRecorder,
    ) -> None:  # fmt: skip
        self.router = router
        self.fallback = fallback
        self.injector = injector
        self.recorder = recorder
        self.audit = Audit()
        self.open: dict[str, VmExchange] = {}  # flow id -> the exchange it is, or re-issues
        self.waiting: dict[VmExchange, tuple[http.HTTPFlow, asyncio.TimerHandle]] = {}
        router.listeners.append(self.cache_changed)

    @property
    def active(self) -> bool:
        return self.router.mode == "audit"

    def load(self, loader: Any) -> None:
        loader.add_option(
            "browserrouting_audit_window", int, 5000,
            "Audit mode: milliseconds after a VM answer within which a CP request that repeats "
            "it counts as the client's fallback (and a browser_gone needs one).",
        )  # fmt: skip

    def configure(self, updated: set[str]) -> None:
        if "browserrouting_audit_window" in updated:
            if ctx.options.browserrouting_audit_window < 0:
                raise exceptions.OptionsError("browserrouting_audit_window: must be 0 or more milliseconds")
            self.audit.window = ctx.options.browserrouting_audit_window / 1000
        self.audit.subresources, self.audit.eligible = self.router.subresources, self.fallback.eligible
        if "browserrouting_mode" in updated and self.active:
            for route in self.router.cache:  # learned before the switch
                self.audit.route_cached(route)

    def cache_changed(self, change: str, route: Route, reason: str, cause: str | None) -> None:
        if not self.active:
            return
        if change == "route_cached":
            self.audit.route_cached(route)
        else:
            self.audit.route_evicted(route, reason, time.monotonic(), cause)

    # -- requests ------------------------------------------------------------

    def on_requestheaders(self, flow: http.HTTPFlow) -> None:
        if not self.active or flow.response or flow.error or not flow.live:
            return
        request = flow.request
        path, query = paths.split_path(request.path)
        if self.router.is_control_plane(request):
            self.cp_request(flow, path, query)
            return
        tail = self.audit.vm_tail((request.scheme, request.host.lower(), request.port), path)
        if tail is not None:
            self.vm_request(flow, tail, query)

    def vm_request(self, flow: http.HTTPFlow, tail: str, query: str) -> None:
        jwt = jwt_of(query)
        session = self.audit.session_of(jwt)
        route = self.router.cache.get(session) if session else None
        verdict, settled = self.audit.vm_request(
            flow.id, session, route.jwt if route else None, jwt, "authorization" in flow.request.headers,
            flow.request.method, tail, query, time.monotonic(),
        )  # fmt: skip
        for exchange in settled:
            self.report_missing(exchange)
        kind = self.injector.apply(flow, (session, route.name if route else None), tail) if session else None
        if kind is not None:
            self.audit.note(verdict, "injected")
        assert verdict.exchange is not None
        self.open[flow.id] = verdict.exchange
        self.recorder.decide(
            flow, "client_routed", session_id=session, vm_url=flow.request.url,
            violations=verdict.violations, notes=verdict.notes, injected=kind,
        )  # fmt: skip

    def cp_request(self, flow: http.HTTPFlow, path: str, query: str) -> None:
        sub = paths.parse_subresource_path(path)
        route = self.router.cache.get(sub.session_key) if sub else None
        session = route.session_id if route else sub.session_key if sub else None
        by_id = bool(sub and route and sub.session_key == route.session_id)
        decision, verdict = self.audit.cp_request(
            flow.id, session, by_id, route is not None, jwt_of(query) is not None,
            flow.request.method, sub.tail if sub else None, query, time.monotonic(),
        )  # fmt: skip
        served = verdict.exchange
        if served is not None:
            self.open[flow.id] = served
            self.forget_waiting(served)
            if "auth_fallback" in verdict.notes and route is not None:
                self.router.evict(route.session_id, "auth_fallback", flow)  # as the SDKs do on a stale jwt
        self.recorder.decide(
            flow, decision, session_id=session, violations=verdict.violations, notes=verdict.notes,
            serves=served.flow_id if served else None,
        )  # fmt: skip

    # -- answers -------------------------------------------------------------

    def on_responseheaders(self, flow: http.HTTPFlow) -> None:
        """A VM's answer to the client's own request: only a 404 is read (browser_gone?)."""
        assert flow.response is not None
        flow.response.stream = not may_be_gone(flow.response)

    def answered(self, flow: http.HTTPFlow) -> None:
        """An audited flow ended: answered, or not (an error, a stream that broke off)."""
        exchange = self.open.pop(flow.id, None)
        record = record_of(flow)
        if record is None or (exchange is None and record["decision"] != "client_cp"):
            return
        status = flow.response.status_code if flow.response else None
        error = flow.error.msg if flow.error else None
        if exchange is None:  # a plain CP request
            self.recorder.decide(flow, "client_cp", cp_status=status, error=error)
            return
        if record["decision"] == "client_routed":
            gone = flow.response is not None and flow.error is None and is_gone(flow.response)
            self.audit.vm_answered(exchange, status, gone, time.monotonic())
            if gone and record["session_id"]:
                self.router.evict(record["session_id"], "browser_gone", flow)
            if exchange.missing:
                self.await_fallback(exchange, flow)
            self.recorder.decide(flow, "client_routed", vm_status=status, error=error)
        else:
            self.audit.fallback_answered(exchange, status)
            self.recorder.decide(flow, record["decision"], cp_status=status, error=error)

    # -- missing fallbacks ---------------------------------------------------

    def await_fallback(self, exchange: VmExchange, flow: http.HTTPFlow) -> None:
        """A timer, so that a missing fallback shows when the window ends, without more traffic."""
        timer = asyncio.get_running_loop().call_later(self.audit.window, self.report_missing, exchange)
        self.waiting[exchange] = (flow, timer)

    def forget_waiting(self, exchange: VmExchange) -> None:
        if (waiting := self.waiting.pop(exchange, None)) is not None:
            waiting[1].cancel()

    def report_missing(self, exchange: VmExchange, redraw: bool = True) -> None:
        """The client moved on (window over, next VM request, shutdown) without falling back."""
        waiting = self.waiting.pop(exchange, None)
        if not self.audit.missing_fallback(exchange) or waiting is None:
            return
        flow, timer = waiting
        timer.cancel()
        record = record_of(flow)
        if record is not None:
            record["violations"] = [*record.get("violations", []), "missing_fallback"]
            self.recorder.refresh(flow, redraw)

    def table(self) -> str:
        """Each rule with how many exchanges it checked and the flows that broke it, as JSON."""
        return json.dumps(self.audit.table())

    def done(self) -> None:
        for exchange in list(self.waiting):
            self.report_missing(exchange, redraw=False)
        if self.active:
            logger.info(f"browserrouting audit: {self.table()}")
