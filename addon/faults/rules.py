"""Fault-injection rules (`SESSION[/PREFIX]=KIND[:COUNT]`): pure, no mitmproxy import.

Live, the VM does not say browser_gone yet; a rule makes the proxy answer a VM request
itself, so that any VM behaviour can be produced on demand.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from .. import paths

GONE_BODY = {"code": "browser_gone", "message": "browser not found"}
# The answer of each kind but `reset`, which closes the connection without one.
ANSWERS: dict[str, tuple[int, dict[str, str]]] = {
    "gone": (404, GONE_BODY),
    "404": (404, {"code": "not_found", "message": "not found"}),
    "401": (401, {"code": "unauthorized", "message": "invalid or expired token"}),
    "403": (403, {"code": "forbidden", "message": "forbidden"}),
    "500": (500, {"code": "internal_error", "message": "internal error"}),
    "502": (502, {"code": "bad_gateway", "message": "browser unavailable"}),
    "503": (503, {"code": "service_unavailable", "message": "service unavailable"}),
    "504": (504, {"code": "gateway_timeout", "message": "gateway timeout"}),
}
KINDS = (*ANSWERS, "reset")


@dataclass
class InjectRule:
    session: str  # a session id, a browser name, or "*"
    prefix: str  # normalised subresource prefix; "" matches every path
    kind: str
    left: int | None  # answers left before the rule is spent; None: until cleared

    def __str__(self) -> str:
        target = f"{self.session}/{self.prefix}" if self.prefix else self.session
        return f"{target}={self.kind}" + (f":{self.left}" if self.left is not None else "")

    def matches(self, keys: Iterable[str | None], tail: str) -> bool:
        if self.left == 0:
            return False
        if self.session != "*" and self.session not in keys:
            return False
        return not self.prefix or paths.is_allowlisted(tail, (self.prefix,))

    def as_json(self) -> dict[str, object]:
        return {"rule": str(self), "session": self.session, "prefix": self.prefix or None,
                "kind": self.kind, "left": self.left}  # fmt: skip


def parse_rule(text: str) -> InjectRule:
    """One rule; ValueError names it and says what is wrong."""
    text = text.strip()
    target, eq, action = text.rpartition("=")
    kind, colon, count = action.partition(":")
    session, _, prefix = target.partition("/")
    session = session.strip()
    if not eq or not session or any(c.isspace() or c == "," for c in session):
        raise ValueError(f"{text!r} is not an injection rule (want SESSION[/PREFIX]=KIND[:COUNT])")
    if kind not in KINDS:
        raise ValueError(f"{text!r}: unknown kind {kind!r} (want one of {', '.join(KINDS)})")
    left = None
    if colon:
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"{text!r}: COUNT must be a whole number of at least 1")
        left = int(count)
    if prefix:
        try:
            entries = paths.parse_path_entries(prefix)
        except ValueError:
            entries = ()
        if len(entries) != 1:
            raise ValueError(f"{text!r}: {prefix!r} is not a subresource path prefix")
        prefix = entries[0]
    return InjectRule(session, prefix, kind, left)


def parse_rules(value: str) -> list[InjectRule]:
    return [parse_rule(entry) for entry in paths.parse_list(value)]


def take(rules: list[InjectRule], keys: Iterable[str | None], tail: str) -> str | None:
    """The kind of the first rule that matches (one answer of its count used), or None."""
    keys = tuple(keys)
    for rule in rules:
        if rule.matches(keys, tail):
            if rule.left is not None:
                rule.left -= 1
            return rule.kind
    return None


def answer(kind: str) -> tuple[int, bytes]:
    """Status and JSON body of an injected answer (`reset` has none)."""
    status, body = ANSWERS[kind]
    return status, json.dumps(body).encode()
