"""The object mitmproxy loads: it owns the addon's parts and hands each hook to the parts the
flow's decision concerns."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from mitmproxy import connection, ctx, http

from .audit import RoutingAudit
from .commands import RouteCommands
from .decisions import AUDIT, FALLBACK_JUDGES, Decision
from .fallback import ControlPlaneFallback
from .faults import CUT_ERROR, FaultInjection
from .recorder import METADATA_KEY, DecisionRecorder, record_of
from .router import Router
from .routes_file import RoutesFile

# mitmproxy reloads an edited `-s` script by running the entry file again; the modules it
# imports, this one included, stay loaded. The addon of a script being reloaded waits here
# for the new instance, whose parts take over their state.
_reloading: list[BrowserRouting] = []


class BrowserRouting:
    """The one addon mitmproxy walks. mitmproxy visits every addon for every event it
    dispatches, so the parts are not addons of their own: this object hands them their
    options, lifecycle and flow hooks, and `load` registers the commands."""

    def __init__(self) -> None:
        self.recorder = DecisionRecorder()
        self.injector = FaultInjection()
        self.router = Router(self.recorder, self.injector)
        self.routes_file = RoutesFile(self.router)
        self.fallback = ControlPlaneFallback(self.router, self.recorder)
        self.audit = RoutingAudit(self.router, self.fallback, self.injector, self.recorder)
        self.commands = RouteCommands(self.router, self.recorder, self.injector, self.audit)

    @classmethod
    def for_script(cls) -> BrowserRouting:
        """A new addon for the entry script; on a reload its parts go on with the old state."""
        addon = cls()
        if _reloading:
            old = _reloading.pop()
            for part, old_part in zip(addon.parts, old.parts, strict=True):
                part.take_over(old_part)
        return addon

    def done(self) -> None:
        for part in (*self.parts, self.commands):  # the commands log the summary
            if hasattr(part, "done"):
                part.done()
        if not ctx.master.should_exit.is_set():  # removed while mitmproxy runs on: a reload
            _reloading[:] = [self]

    @property
    def parts(self) -> tuple[Any, ...]:
        """In the order their options are declared and configured (the routes file loads after
        the router knows which VM hosts are allowed; the audit reads the parsed allowlist and
        registry) and their lifecycle runs (the recorder closes its log last)."""
        return (self.router, self.routes_file, self.fallback, self.audit, self.injector, self.recorder)

    def load(self, loader: Any) -> None:
        for part in self.parts:
            part.load(loader)
        loader.master.commands.collect_commands(self.commands)  # what mitmproxy does for the addons it walks

    def configure(self, updated: set[str]) -> None:
        for part in self.parts:
            part.configure(updated)

    def running(self) -> None:
        self.router.running()
        self.routes_file.running()

    # The flow hooks, one call each for every part: mitmproxy charges for every addon that has
    # a hook. The order is the rule: the router decides before the fallback, the audit and the
    # injection act; the recorder logs last. A flow with no record is none of the addon's
    # business; one with a record goes to the parts its decision concerns.

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self.router.on_requestheaders(flow)
        if self.router.mode == "audit":
            self.audit.on_requestheaders(flow)
        elif self.injector.cp_rules:
            self.inject_into_reissue(flow)

    def inject_into_reissue(self, flow: http.HTTPFlow) -> None:
        """Route mode: `cp:` rules hit the fallback's own re-issue to the CP."""
        record = record_of(flow)
        if record is None or record["decision"] != Decision.REISSUE:
            return
        if fields := self.injector.apply_to_reissue(flow, record["session_id"]):
            self.recorder.decide(flow, Decision.REISSUE, **fields)

    # Hooks that exist only while the injection has flows for them: mitmproxy skips a hook that
    # is None, and charges every flow (or connection) for one that is not.

    @property
    def request(self) -> Callable[[http.HTTPFlow], Awaitable[None] | None] | None:
        """While a flow waits for an injected answer or hold."""
        return self.injector.on_request if self.injector.awaiting else None

    @property
    def client_disconnected(self) -> Callable[[connection.Client], None] | None:
        """While flows are held: a client that gives up lets its held flows go."""
        return self.injector.client_left if self.injector.holds else None

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        record = flow.metadata.get(METADATA_KEY)
        if record is None or flow.response is None:
            return
        decision = record["decision"]
        if decision in FALLBACK_JUDGES:
            self.fallback.on_responseheaders(flow, record)
        elif decision == Decision.CLIENT_ROUTED:
            self.audit.on_responseheaders(flow)
        else:  # the CP answers
            self.router.on_responseheaders(flow)
        if self.injector.cutting:
            self.injector.on_responseheaders(flow)
        if flow.response.stream:  # an answer read whole shows its comment when it ends
            self.recorder.on_responseheaders(flow, record)

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        record = flow.metadata.get(METADATA_KEY)
        if record is None:
            return None
        # Only the router learning a large page (a CP answer) or the fallback re-issuing to the
        # CP (a VM answer) has work to wait for: only then is the hook async.
        if record["decision"] in FALLBACK_JUDGES:
            pending = self.fallback.on_response(flow, record)
        else:
            pending = self.router.on_response(flow, record)
        if pending is not None:
            return self.after(pending, flow, record)
        self.finish(flow, record)
        return None

    async def after(self, pending: Awaitable[None], flow: http.HTTPFlow, record: dict[str, Any]) -> None:
        await pending
        self.finish(flow, record)

    def finish(self, flow: http.HTTPFlow, record: dict[str, Any]) -> None:
        cut = bool(self.injector.cutting) and self.injector.end_cut(flow)
        if cut:
            self.recorder.decide(flow, record["decision"], record["reason"], error=CUT_ERROR)
        if record["decision"] in AUDIT:
            self.audit.answered(flow)
        self.recorder.final(flow, record)
        if cut:  # last: a killed flow is no longer live, and a live one is what the recorder counts as sent
            flow.kill()

    def error(self, flow: http.HTTPFlow) -> None:
        record = flow.metadata.get(METADATA_KEY)
        if record is None:
            return
        if record["decision"] in FALLBACK_JUDGES:
            self.fallback.on_error(flow, record)
        self.injector.forget(flow)  # ended before its injected step was done
        self.finish(flow, record)
