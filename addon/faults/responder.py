"""Carries out fault-injection rules on the flows they match: answers in the VM's (or the CP's)
place, holds, closes or cuts."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any

from mitmproxy import connection, ctx, exceptions, http

from .. import paths
from . import rules as inject
from .holding import CutBody, Holds
from .steps import Step, answer, is_answer

logger = logging.getLogger(__name__)

CUT_ERROR = "cut by fault injection: the connection closed before the body's end"


class FaultInjection:
    """Owns `browserrouting_inject`, `browserrouting_inject_seed` and the rule list. The router
    (route mode) or the audit (audit mode) calls `apply` for each request bound to a VM for a
    known session, and for the CP requests `cp:` rules may hit."""

    def __init__(self) -> None:
        self.rules: list[inject.InjectRule] = []
        # The rules by side, in order: a request is matched against its side's only.
        self.vm_rules: tuple[inject.InjectRule, ...] = ()
        self.cp_rules: tuple[inject.InjectRule, ...] = ()
        self.seed = 0
        self.applied = ""  # the option value the rules came from
        self.refused = False  # the last value set was refused: mitmproxy now rolls back to `applied`
        self.reloaded = False  # took over from the script's previous load: every option comes again
        # Per flow in progress: the step its `request` hook carries out, the flows held there,
        # the flows whose answer is cut.
        self.awaiting: dict[str, Step] = {}
        self.holds = Holds()
        self.cutting: set[str] = set()

    def take_over(self, old: FaultInjection) -> None:
        """On a reload: the rules (added by command, counts spent) and the flows in progress."""
        self.applied, self.seed, self.awaiting = old.applied, old.seed, old.awaiting
        self.holds, self.cutting = old.holds, old.cutting
        self.set_rules(old.rules)
        self.reloaded = True

    def load(self, loader: Any) -> None:
        loader.add_option(
            "browserrouting_inject", str, "",
            "Comma-separated fault-injection rules [cp:]SESSION[/PREFIX]=STEP[>STEP...], STEP "
            "KIND[@MS][*N|:COUNT|~P]: the proxy answers, holds or cuts matching VM requests "
            "(cp: the CP requests for that browser); KIND gone, reset, pass, delay, hang, cut or "
            "a status 400-599; SESSION an id, a browser name or *.",
        )  # fmt: skip
        loader.add_option(
            "browserrouting_inject_seed", int, 0,
            "Seed of the draws of fault-injection steps given a chance (~P): the same seed "
            "gives the same pattern.",
        )  # fmt: skip

    def configure(self, updated: set[str]) -> None:
        # After a reload, or mitmproxy's rollback of a refused value, an option set to what it
        # was leaves the rules as they are: added by command, counts spent, draws drawn, hangs held.
        reloaded, self.reloaded = self.reloaded, False
        seed = ctx.options.browserrouting_inject_seed
        if "browserrouting_inject_seed" in updated and not (reloaded and seed == self.seed):
            self.seed = seed
            for rule in self.rules:
                rule.seed(seed)
        if "browserrouting_inject" not in updated:
            return
        value = ctx.options.browserrouting_inject
        if (self.refused or reloaded) and value == self.applied:
            self.refused = False
            return
        try:
            rules = inject.parse_rules(value, self.seed)
        except ValueError as e:
            self.refused = True
            raise exceptions.OptionsError(f"browserrouting_inject: {e}") from None
        self.applied, self.refused = value, False
        self.replace(rules)

    # -- the rule list ---------------------------------------------------------

    def set_rules(self, rules: Sequence[inject.InjectRule]) -> None:
        self.rules = list(rules)
        self.vm_rules = tuple(rule for rule in self.rules if not rule.cp)
        self.cp_rules = tuple(rule for rule in self.rules if rule.cp)

    def replace(self, rules: Sequence[inject.InjectRule]) -> None:
        """A new rule list: the hangs of the old one let go (their flows end killed)."""
        self.set_rules(rules)
        self.holds.release(lambda held: held.step.kind == "hang", "the rules were cleared")

    def add_rule(self, rule: str) -> None:
        """Append a rule; ValueError names it when it is bad (the rules stay as they were)."""
        self.set_rules([*self.rules, inject.parse_rule(rule, self.seed)])
        logger.info(f"injection rule added: {self.rules[-1]}")

    def rules_json(self) -> str:
        return json.dumps([rule.as_json() for rule in self.rules], ensure_ascii=False)

    # -- picking flows ---------------------------------------------------------

    def apply(
        self, flow: http.HTTPFlow, keys: Iterable[str | None], tail: str, cp: bool = False
    ) -> dict[str, Any]:
        """The record fields of the step a rule gives this request ({} for none, or `pass`).
        `reset` kills the flow now; answers, holds and `cut` are carried out by the hooks that
        follow."""
        step = inject.take(self.cp_rules if cp else self.vm_rules, keys, tail)
        if step is None or step.kind == "pass":
            return {}
        if step.kind == "cut":
            self.cutting.add(flow.id)
        if step.kind == "reset" and not step.holds:
            flow.kill()
        elif step.holds or is_answer(step.kind):
            flow.request.stream = False  # mitmproxy can neither hold nor answer a request it streams upstream
            self.awaiting[flow.id] = step
        return {"injected": step.kind, "injected_delay_ms": step.ms}

    def apply_to_reissue(self, flow: http.HTTPFlow, session_id: str | None) -> dict[str, Any]:
        """`cp:` rules in route mode: the fallback's re-issue, the client's own CP request (its
        session by the id or name it used, or the id the route had)."""
        sub = paths.parse_subresource_path(paths.split_path(flow.request.path)[0])
        return self.apply(flow, (sub.session_key, session_id), sub.tail, cp=True) if sub else {}

    # -- carrying out ----------------------------------------------------------

    def on_request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """The `request` hook of a flow `apply` picked, once its body has arrived: an answer
        now, or an awaitable that holds it first."""
        step = self.awaiting.pop(flow.id, None)
        if step is None or flow.response is not None or flow.error is not None:
            return None
        if flow.request.stream:  # a chunked upload outgrew stream_large_bodies: already on its way
            logger.warning(f"could not inject {step} into flow {flow.id}: its body was streamed on")
            self.cutting.discard(flow.id)
            return None
        if step.holds:
            return self.carry_out_late(flow, step)
        self.carry_out(flow, step)
        return None

    async def carry_out_late(self, flow: http.HTTPFlow, step: Step) -> None:
        if await self.holds.hold(flow, step):
            self.carry_out(flow, step)

    def carry_out(self, flow: http.HTTPFlow, step: Step) -> None:
        """After a hold: `reset` kills, an answer kind answers; `delay` and `cut` go on."""
        if step.kind == "reset":
            flow.kill()
        elif is_answer(step.kind):
            status, body = answer(step.kind)
            flow.response = http.Response.make(status, body, {"Content-Type": "application/json"})

    def on_responseheaders(self, flow: http.HTTPFlow) -> None:
        """A `cut` flow's real answer: stream it, cut short (after the parts chose streaming)."""
        if flow.id in self.cutting and flow.response is not None:
            flow.response.stream = CutBody()

    def end_cut(self, flow: http.HTTPFlow) -> bool:
        """Whether a flow ending now had its answer cut: it has had all the body it gets, and
        the caller kills it, which closes the client's connection before the body's end."""
        if flow.id not in self.cutting:
            return False
        self.cutting.discard(flow.id)
        return flow.killable and flow.response is not None and isinstance(flow.response.stream, CutBody)

    def forget(self, flow: http.HTTPFlow) -> None:
        """A flow ended early (an error): none of its per-flow state stays."""
        self.awaiting.pop(flow.id, None)
        self.cutting.discard(flow.id)

    # -- letting held flows go -------------------------------------------------

    def clear(self) -> None:
        self.replace([])

    def client_left(self, client: connection.Client) -> None:
        """The `client_disconnected` hook, while flows are held: the client gave up on them."""
        self.holds.release(lambda held: held.flow.client_conn.id == client.id, "the client left")
