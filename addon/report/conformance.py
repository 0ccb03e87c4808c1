"""The QA report's conformance table of an audit-mode run, approximated from its records: each
rule counts the audited flows of the kind it applies to as checked. Pure, no mitmproxy import."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..audit.rules import NOTES, RULES
from ..decisions import Decision
from .log import Record, notes_of, violations_of

MAX_FLOW_IDS = 20  # flow ids listed per broken rule


@dataclass
class Conformance:
    """Per rule, the audited flows it was checked on and the ones that broke it; the notes."""

    broken: dict[str, list[str]] = field(default_factory=lambda: {rule: [] for rule in RULES})
    checked: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)

    def count(self, flow_id: str, record: Record, gone_flows: set[str]) -> None:
        """One audited flow (`client_*`); `gone_flows` are those whose answer evicted a route
        as browser_gone."""
        decision = record["decision"]
        if decision == Decision.CLIENT_ROUTED:
            for rule in ("api_key_on_vm", "jwt_mismatch", "not_allowlisted", "stale_route"):
                self.checked[rule] += 1
            gone = flow_id in gone_flows or any(
                c.get("reason") == "browser_gone" for c in record.get("cache") or () if isinstance(c, dict)
            )
            if gone or "missing_fallback" in violations_of(record):
                self.checked["missing_fallback"] += 1
        else:
            self.checked["jwt_on_cp"] += 1
            if decision == Decision.CLIENT_CP:
                self.checked["not_routed"] += 1
            else:
                self.checked["unexpected_fallback"] += 1
                self.checked["repeated_fallback"] += 1
        for rule in violations_of(record):
            self.broken.setdefault(rule, []).append(flow_id)
        for note in notes_of(record):
            self.notes[note] += 1

    def table(self) -> dict[str, Any]:
        """The table's rows: the reference's rules, then any other rule the records name."""
        rules = []
        for rule in (*RULES, *(r for r in self.broken if r not in RULES)):
            broken = self.broken.get(rule, [])
            rules.append({
                "rule": rule,
                "checked": self.checked[rule],
                "broken": len(broken),
                "flows": broken[:MAX_FLOW_IDS],
                "more": max(0, len(broken) - MAX_FLOW_IDS),
            })  # fmt: skip
        notes = [(n, self.notes[n]) for n in (*NOTES, *(n for n in self.notes if n not in NOTES))]
        return {"rules": rules, "notes": notes}
