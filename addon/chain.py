"""The addon's parts, wired together in the order mitmproxy must call them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mitmproxy import ctx

from .auditor import RoutingAudit
from .commands import RouteCommands
from .injector import FaultInjection
from .persistence import RoutesFile
from .recorder import DecisionRecorder
from .reissue import ControlPlaneFallback
from .router import BrowserRouting

# mitmproxy reloads an edited `-s` script by running the entry file again; the modules it
# imports, this one included, stay loaded. The parts of a script being reloaded wait here
# for the new instance, which takes over their state.
_reloading: list[Parts] = []


@dataclass
class Parts:
    recorder: DecisionRecorder = field(default_factory=DecisionRecorder)
    injector: FaultInjection = field(default_factory=FaultInjection)

    def __post_init__(self) -> None:
        self.router = BrowserRouting(self.recorder, self.injector)
        self.routes_file = RoutesFile(self.router)
        self.fallback = ControlPlaneFallback(self.router, self.recorder)
        self.audit = RoutingAudit(self.router, self.fallback, self.injector, self.recorder)
        self.commands = RouteCommands(self.router, self.recorder)

    @classmethod
    def for_script(cls) -> Parts:
        """New parts for the entry script; on a reload they go on with the old parts' state."""
        parts = cls()
        if _reloading:
            parts.take_over(_reloading.pop())
        return parts

    def take_over(self, old: Parts) -> None:
        """The routes, the per-flow state of flows in progress (pending fallbacks, audited
        exchanges), the counters, the injection rules and the log carry over."""
        self.router.cache, self.router.originals = old.router.cache, old.router.originals
        self.recorder.decisions, self.recorder.outbound = old.recorder.decisions, old.recorder.outbound
        self.recorder.log = old.recorder.log  # reopened by configure; old in-flight work writes to it too
        self.injector.rules, self.injector.applied = old.injector.rules, old.injector.applied
        self.audit.audit, self.audit.open = old.audit.audit, old.audit.open
        self.audit.waiting = old.audit.waiting

    def done(self) -> None:
        if not ctx.master.should_exit.is_set():  # removed while mitmproxy runs on: a reload
            _reloading[:] = [self]

    @property
    def chain(self) -> list[Any]:
        """Order matters: the router decides before the fallback, the audit and the injection
        act; the routes file loads after the router knows which VM hosts are allowed; the audit
        reads the parsed allowlist and registry; the recorder logs last."""
        return [
            self.router, self.routes_file, self.fallback, self.audit,
            self.injector, self.commands, self.recorder, self,
        ]  # fmt: skip
