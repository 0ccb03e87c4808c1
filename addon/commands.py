"""Every command of the addon (route cache, fault injection, audit, report), from mitmproxy's
command bar, mitmweb's command API and scripts."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from mitmproxy import command, ctx, exceptions, types
from mitmproxy.log import ALERT

from . import report as qa_report
from .audit import RoutingAudit
from .faults import FaultInjection
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
        self.reports: set[asyncio.Task[None]] = set()  # pages being written

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
        (browserrouting_log) to PATH, with this proxy's options. It renders in the background,
        so the proxy keeps answering: returns the page's path at once; the page appears there
        when complete, and the event log says so."""
        log = ctx.options.browserrouting_log
        if not log:
            raise exceptions.CommandError(
                "browserrouting.report: no decision log to report on: set browserrouting_log first"
            )
        options = {name: getattr(ctx.options, f"browserrouting_{name}", None) for name in qa_report.OPTIONS}
        options["subresources"] = ",".join(self.router.subresources)  # as parsed: the env default too
        target = Path(path).expanduser().absolute()
        task = asyncio.get_running_loop().create_task(
            self.write_report(qa_report.LogSource(log, "", options), target)
        )
        self.reports.add(task)  # held until done: the loop keeps only a weak reference
        task.add_done_callback(self.reports.discard)
        return str(target)

    async def write_report(self, log: qa_report.LogSource, target: Path) -> None:
        try:  # a large log takes seconds to render: in a thread, off the event loop
            await asyncio.to_thread(qa_report.write_report, [log], target)
        except OSError as e:
            logger.error(f"browserrouting.report: {e}")
        else:
            logger.log(ALERT, f"browserrouting.report: wrote {target}")

    def done(self) -> None:
        logger.info(f"browserrouting summary: {self.summary()}")
