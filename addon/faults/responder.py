"""Answers VM requests from the proxy itself when a fault-injection rule says so."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from mitmproxy import ctx, exceptions, http

from . import rules as inject

logger = logging.getLogger(__name__)


class FaultInjection:
    """Owns `browserrouting_inject` and the rule list. The router (route mode) or the audit
    (audit mode) calls `apply` for each request bound to a VM for a known session."""

    def __init__(self) -> None:
        self.rules: list[inject.InjectRule] = []
        self.applied = ""  # the option value the rules came from
        self.refused = False  # the last value set was refused: mitmproxy now rolls back to `applied`
        self.awaiting: set[str] = set()  # ids of the flows `apply` picked, until `on_request` answers

    def take_over(self, old: FaultInjection) -> None:
        """On a reload: the rules (added by command, counts spent) and the flows awaiting an answer."""
        self.rules, self.applied, self.awaiting = old.rules, old.applied, old.awaiting

    def load(self, loader: Any) -> None:
        loader.add_option(
            "browserrouting_inject", str, "",
            "Comma-separated fault-injection rules SESSION[/PREFIX]=KIND[:COUNT]: the proxy "
            "answers matching VM requests itself (KIND: gone, 404, 401, 403, 500, 502, 503, "
            "504, reset); SESSION is an id, a browser name or *.",
        )  # fmt: skip

    def configure(self, updated: set[str]) -> None:
        if "browserrouting_inject" not in updated:
            return
        value = ctx.options.browserrouting_inject
        if self.refused and value == self.applied:
            self.refused = False  # the rollback: the rules (added by command, counts spent) stay
            return
        try:
            rules = inject.parse_rules(value)
        except ValueError as e:
            self.refused = True
            raise exceptions.OptionsError(f"browserrouting_inject: {e}") from None
        self.rules, self.applied, self.refused = rules, value, False

    def apply(self, flow: http.HTTPFlow, keys: Iterable[str | None], tail: str) -> str | None:
        """The kind injected for this VM request, if a rule matches. `reset` kills the flow
        now; other kinds answer in the `request` hook, once the body has arrived."""
        kind = inject.take(self.rules, keys, tail)
        if kind == "reset":
            flow.kill()
        elif kind is not None:
            flow.request.stream = False  # mitmproxy cannot answer a request it streams upstream
            self.awaiting.add(flow.id)
        return kind

    def on_request(self, flow: http.HTTPFlow, kind: str) -> None:
        """Answer a flow `apply` picked, once its body has arrived (`reset` was killed already)."""
        self.awaiting.discard(flow.id)
        if kind == "reset" or flow.response is not None or flow.error is not None:
            return
        if flow.request.stream:  # a chunked upload outgrew stream_large_bodies: already on its way
            logger.warning(f"could not inject {kind} into flow {flow.id}: its body was streamed to the VM")
            return
        status, body = inject.answer(kind)
        flow.response = http.Response.make(status, body, {"Content-Type": "application/json"})

    def add_rule(self, rule: str) -> None:
        """Append a rule; ValueError names it when it is bad (the rules stay as they were)."""
        self.rules.append(inject.parse_rule(rule))
        logger.info(f"injection rule added: {self.rules[-1]}")

    def rules_json(self) -> str:
        return json.dumps([rule.as_json() for rule in self.rules], ensure_ascii=False)
