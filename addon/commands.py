"""Every command of the addon (route cache, fault injection, audit, report), from mitmproxy's
command bar, mitmweb's command API and scripts."""

from __future__ import annotations

import json
import logging

from mitmproxy import command, ctx, exceptions, types

from . import report as qa_report
from .audit.watcher import RoutingAudit
from .faults.responder import FaultInjection
from .recorder import DecisionRecorder
from .route_cache import Route, redact
from .router import Router

logger = logging.getLogger(__name__)


class RouteCommands:
    def __init__(
        self,
        router: Router,
        recorder: DecisionRecorder,
        injector: FaultInjection,
        audit: RoutingAudit,
    ) -> None:
        self.router = router
        self.recorder = recorder
        self.injector = injector
        self.audit = audit

    @command.command("browserrouting.routes")
    def routes(self) -> str:
        """The route cache as JSON, jwts redacted."""
        return json.dumps(
            [
                {"session_id": r.session_id, "name": r.name, "base_url": r.base_url, "jwt": redact(r.jwt)}
                for r in self.router.cache
            ],
            ensure_ascii=False,
        )

    @command.command("browserrouting.add")
    def add(self, session_id: str, base_url: str, jwt: str) -> None:
        """Add a route, with the same checks as a learned one (browserrouting_vm_hosts)."""
        route = Route(session_id.strip(), base_url.strip().rstrip("/"), jwt.strip())
        if not (route.session_id and route.base_url and route.jwt):
            raise exceptions.CommandError("browserrouting.add: SESSION, BASE_URL and JWT must not be empty")
        if refusal := self.router.add(route, "command"):
            raise exceptions.CommandError(f"browserrouting.add: {route.base_url} refused ({refusal})")

    @command.command("browserrouting.evict")
    def evict(self, session: str) -> None:
        """Forget the route of a session, found by id or by browser name."""
        if self.router.evict(session, "command") is None:
            raise exceptions.CommandError(f"browserrouting.evict: no route for {session!r}")

    @command.command("browserrouting.clear")
    def clear(self) -> None:
        """Forget every route."""
        for route in self.router.cache:
            self.router.evict(route.session_id, "clear")

    @command.command("browserrouting.summary")
    def summary(self) -> str:
        """Counts per decision and outbound requests per upstream host, as JSON."""
        return json.dumps(
            {
                "decisions": dict(sorted(self.recorder.decisions.items())),
                "outbound": {f"{h}:{p}": n for (h, p), n in sorted(self.recorder.outbound.items())},
                "routes": len(self.router.cache),
            }
        )

    @command.command("browserrouting.inject")
    def inject(self, rule: str) -> None:
        """Append a fault-injection rule [cp:]SESSION[/PREFIX]=STEP[>STEP...] (STEP:
        KIND[@MS][*N], KIND[@MS]:COUNT or KIND[@MS]~P)."""
        try:
            self.injector.add_rule(rule)
        except ValueError as e:
            raise exceptions.CommandError(f"browserrouting.inject: {e}") from None

    @command.command("browserrouting.inject.clear")
    def inject_clear(self) -> None:
        """Remove every fault-injection rule; requests held by `hang` end killed."""
        self.injector.clear()

    @command.command("browserrouting.inject.list")
    def inject_list(self) -> str:
        """The fault-injection rules, each with its steps and what is left of them, as JSON."""
        return self.injector.rules_json()

    @command.command("browserrouting.audit")
    def audit_table(self) -> str:
        """Audit mode: each rule with how many exchanges it checked and the flows that broke it, as JSON."""
        return self.audit.table()

    @command.command("browserrouting.report")
    def report(self, path: types.Path) -> str:
        """Write the QA report (one HTML page) of the decision log this proxy writes
        (browserrouting_log) to PATH, with this proxy's options; returns the page's path."""
        log = ctx.options.browserrouting_log
        if not log:
            raise exceptions.CommandError(
                "browserrouting.report: no decision log to report on: set browserrouting_log first"
            )
        options = {name: getattr(ctx.options, f"browserrouting_{name}", None) for name in qa_report.OPTIONS}
        options["subresources"] = ",".join(self.router.subresources)  # as parsed: the env default too
        try:
            written = qa_report.write_report([qa_report.LogSource(log, "", options)], path)
        except OSError as e:
            raise exceptions.CommandError(f"browserrouting.report: {e}") from e
        return str(written)

    def done(self) -> None:
        logger.info(f"browserrouting summary: {self.summary()}")
