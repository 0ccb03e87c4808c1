"""The addon's parts, wired together in the order mitmproxy must call them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .auditor import RoutingAudit
from .commands import RouteCommands
from .injector import FaultInjection
from .persistence import RoutesFile
from .recorder import DecisionRecorder
from .reissue import ControlPlaneFallback
from .router import BrowserRouting


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

    @property
    def chain(self) -> list[Any]:
        """Order matters: the router decides before the fallback, the audit and the injection
        act; the routes file loads after the router knows which VM hosts are allowed; the audit
        reads the parsed allowlist and registry; the recorder logs last."""
        return [
            self.router, self.routes_file, self.fallback, self.audit,
            self.injector, self.commands, self.recorder,
        ]  # fmt: skip
