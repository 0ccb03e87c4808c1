"""Fault-injection rules (`[cp:]SESSION[/PREFIX]=STEP[>STEP...]`): parsing, matching, and the
sequence each rule steps through. Pure, no mitmproxy import.

Live, the VM does not say browser_gone yet, and neither a slow VM nor a failing fallback can be
had on demand; a rule makes the proxy produce them for the requests it matches.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from .. import paths
from .steps import PASS, Step, parse_step

CP_PREFIX = "cp:"  # the rule hits the CP requests for the browser instead of its VM requests
GRAMMAR = "[cp:]SESSION[/PREFIX]=STEP[>STEP...]"


@dataclass
class InjectRule:
    session: str  # a session id, a browser name, or "*"
    prefix: str  # normalised subresource prefix; "" matches every path
    steps: tuple[Step, ...]
    cp: bool = False
    at: int = field(default=0, compare=False)  # the step that answers the next matching request
    used: int = field(default=0, compare=False)  # matching requests that step has had
    draws: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __str__(self) -> str:
        target = f"{self.session}/{self.prefix}" if self.prefix else self.session
        return (CP_PREFIX if self.cp else "") + target + "=" + ">".join(map(str, self.steps))

    @property
    def spent(self) -> bool:
        return self.at >= len(self.steps)

    @property
    def kind(self) -> str:
        """The kind of the step that answers next (the last one's once the rule is spent)."""
        return self.steps[min(self.at, len(self.steps) - 1)].kind

    def step_left(self, index: int) -> int | None:
        """Matching requests step `index` still covers; None: no end."""
        if index < self.at:
            return 0
        times = self.steps[index].times
        if times is None:
            return None
        return times - self.used if index == self.at else times

    @property
    def left(self) -> int | None:
        """Matching requests the rule still answers (passes included); None: until cleared."""
        lefts = [self.step_left(i) for i in range(len(self.steps))]
        return None if None in lefts else sum(n or 0 for n in lefts)

    def seed(self, seed: int) -> None:
        """Each rule draws from its own generator, so that its pattern depends only on the seed
        and the requests it matches, not on what other rules see."""
        self.draws.seed(f"{seed}/{self}")

    def matches(self, keys: Iterable[str | None], tail: str) -> bool:
        if self.spent:
            return False
        if self.session != "*" and self.session not in keys:
            return False
        return not self.prefix or paths.is_allowlisted(tail, (self.prefix,))

    def take(self) -> Step:
        """The step for one matching request; the sequence moves on."""
        step = self.steps[self.at]
        if step.chance is not None:
            return step if self.draws.random() < step.chance else PASS
        self.used += 1
        if step.times is not None and self.used >= step.times:
            self.at, self.used = self.at + 1, 0
        return step

    def as_json(self) -> dict[str, object]:
        steps = [
            {"step": str(s), "kind": s.kind, "delay_ms": s.ms, "times": s.times, "chance": s.chance,
             "left": self.step_left(i)}
            for i, s in enumerate(self.steps)
        ]  # fmt: skip
        return {"rule": str(self), "cp": self.cp, "session": self.session, "prefix": self.prefix or None,
                "kind": self.kind, "left": self.left, "spent": self.spent, "steps": steps}  # fmt: skip


def parse_rule(text: str, seed: int = 0) -> InjectRule:
    """One rule, its draws seeded; ValueError names it and says what is wrong."""
    text = text.strip()
    cp = text.startswith(CP_PREFIX)
    target, eq, action = text.removeprefix(CP_PREFIX).rpartition("=")
    session, _, prefix = target.partition("/")
    session = session.strip()
    if not eq or not session or any(c.isspace() or c == "," for c in session):
        raise ValueError(f"{text!r} is not an injection rule (want {GRAMMAR})")
    pieces = action.split(">")
    steps = []
    for piece in pieces:
        try:
            steps.append(parse_step(piece, alone=len(pieces) == 1))
        except ValueError as e:
            where = f"step {piece!r}: " if len(pieces) > 1 else ""
            raise ValueError(f"{text!r}: {where}{e}") from None
    if any(step.chance is not None for step in steps[:-1]):
        raise ValueError(f"{text!r}: a ~P step has no end, so only the last step may have one")
    if prefix:
        try:
            entries = paths.parse_path_entries(prefix)
        except ValueError:
            entries = ()
        if len(entries) != 1:
            raise ValueError(f"{text!r}: {prefix!r} is not a subresource path prefix")
        prefix = entries[0]
    rule = InjectRule(session, prefix, tuple(steps), cp)
    rule.seed(seed)
    return rule


def parse_rules(value: str, seed: int = 0) -> list[InjectRule]:
    return [parse_rule(entry, seed) for entry in paths.parse_list(value)]


def take(rules: Iterable[InjectRule], keys: Iterable[str | None], tail: str) -> Step | None:
    """The step the first matching rule gives this request (PASS: it goes on untouched), or
    None when no rule matches."""
    keys = tuple(keys)
    for rule in rules:
        if rule.matches(keys, tail):
            return rule.take()
    return None
