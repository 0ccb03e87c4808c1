"""Judging a client's own routing against the reference's rules: pure, no mitmproxy import.

The client (an SDK with its routing on) sends some requests to a VM and the rest to the
CP; the audit sees both, attributes each VM request to a session, pairs CP requests with
the VM answers they re-issue, and says which rule an exchange breaks.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .. import paths
from ..decisions import Decision
from ..paths import without_jwt
from ..route_cache import Route

RULES = (
    "api_key_on_vm", "jwt_on_cp", "jwt_mismatch", "not_allowlisted", "not_routed",
    "missing_fallback", "stale_route", "unexpected_fallback", "repeated_fallback",
)  # fmt: skip
NOTES = ("vm_retry", "auth_fallback", "gone_before", "injected")
# Evictions after which the client must not use the route again.
STALE_REASONS = frozenset({"browser_gone", "delete", "pool_release"})

Origin = tuple[str, str, int]
ExchangeKey = tuple[str, str, str, str]  # session, method, {subresource}{suffix}, query less jwt


def session_claim(jwt: str) -> str | None:
    """The `session.id` claim of a jwt's payload, read without verifying the signature."""
    parts = jwt.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        return None
    if not isinstance(payload, dict):
        return None
    session = payload.get("session")
    value = session.get("id") if isinstance(session, dict) else payload.get("session.id")
    return value.strip() if isinstance(value, str) and value.strip() else None


def origin_of(url: str) -> tuple[Origin, str] | None:
    """((scheme, host, port), path) of a base_url, or None when it has none."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return (parts.scheme, parts.hostname.lower(), port), parts.path.rstrip("/")


@dataclass(eq=False)
class VmExchange:
    """One VM request of the client and its answer: what a CP request may re-issue."""

    flow_id: str
    key: ExchangeKey
    eligible_get: bool
    sent_at: float
    status: int | None = None
    answered_at: float | None = None  # None while the VM has not answered (or failed)
    gone: bool = False
    fallbacks: list[str] = field(default_factory=list)  # the CP requests that re-issued it
    unanswered: set[str] = field(default_factory=set)  # re-issues the CP has not answered yet
    fallback_done: bool = False  # a re-issue was answered below 500: the fallback is done
    missing: bool = False  # browser_gone to an eligible GET, no fallback seen yet

    @property
    def allows_fallback(self) -> bool:
        return self.gone and self.eligible_get


@dataclass
class Verdict:
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    exchange: VmExchange | None = None  # for a VM request: its own; for a fallback: the one it serves


class Audit:
    def __init__(self) -> None:
        self.subresources: tuple[str, ...] = ()
        self.eligible: tuple[str, ...] = ()
        self.window = 5.0  # seconds
        self.sessions_by_jwt: dict[str, str] = {}
        self.base_paths: dict[Origin, set[str]] = {}
        self.evicted: dict[str, str] = {}  # session id -> why its route went
        self.gone_kept: set[str] = set()  # sessions whose VM said browser_gone where no fallback applies
        self.last_eviction: dict[str, tuple[float, str | None]] = {}  # session id -> (when, cause)
        self.exchanges: OrderedDict[ExchangeKey, VmExchange] = OrderedDict()  # the latest per key
        self.awaiting: dict[str, list[VmExchange]] = {}  # session -> browser_gone, no fallback yet
        self.checked: Counter[str] = Counter()
        self.broken: dict[str, list[str]] = {rule: [] for rule in RULES}
        self.notes: Counter[str] = Counter()

    # -- what the CP taught ---------------------------------------------------

    def route_cached(self, route: Route) -> None:
        self.sessions_by_jwt[route.jwt] = route.session_id
        if (where := origin_of(route.base_url)) is not None:
            self.base_paths.setdefault(where[0], set()).add(where[1])
        self.evicted.pop(route.session_id, None)
        self.gone_kept.discard(route.session_id)

    def route_evicted(self, route: Route, reason: str, now: float = 0.0, cause: str | None = None) -> None:
        """`cause`: the id of the flow whose answer evicted the route (a browser_gone, a delete)."""
        self.evicted[route.session_id] = reason
        self.last_eviction[route.session_id] = (now, cause)

    def vm_tail(self, origin: Origin, path: str) -> str | None:
        """`{subresource}{suffix}` of a request under a known route's base_url, or None."""
        for base in self.base_paths.get(origin, ()):
            if path.startswith(base + "/"):
                return path[len(base) + 1 :]
        return None

    def session_of(self, jwt: str | None) -> str | None:
        if not jwt:
            return None
        return self.sessions_by_jwt.get(jwt) or session_claim(jwt)

    # -- judging -------------------------------------------------------------

    def vm_request(
        self, flow_id: str, session: str | None, cached_jwt: str | None, jwt: str | None,
        has_api_key: bool, method: str, tail: str, query: str, now: float, retry_count: int | None = None,
    ) -> tuple[Verdict, list[VmExchange]]:  # fmt: skip
        """Judge a request the client sent to a VM. Also returns the exchanges whose missing
        fallback it settles: the client has moved on from them. `retry_count`: the request's
        `x-stainless-retry-count`, which says retry or new call better than timing can."""
        verdict = Verdict()
        stale = session is not None and self.evicted.get(session) in STALE_REASONS
        self.check(verdict, "api_key_on_vm", has_api_key, flow_id)
        self.check(verdict, "jwt_mismatch", not stale and (not jwt or jwt != cached_jwt), flow_id)
        self.check(verdict, "not_allowlisted", not paths.is_allowlisted(tail, self.subresources), flow_id)
        self.check(verdict, "stale_route", stale, flow_id)
        key = (session or "", method, paths.normalize_tail(tail), without_jwt(query))
        if session in self.gone_kept:
            self.note(verdict, "gone_before")
        previous = self.exchanges.get(key)
        if retry_count is not None:
            if retry_count > 0:
                self.note(verdict, "vm_retry")
        elif previous is not None and self.recent(previous, now) and (previous.status or 500) >= 500:
            self.note(verdict, "vm_retry")
        eligible_get = method == "GET" and paths.is_fallback_eligible(tail, self.eligible)
        verdict.exchange = VmExchange(flow_id, key, eligible_get, now)
        self.exchanges[key] = verdict.exchange
        self.exchanges.move_to_end(key)
        self.forget_old(now)
        return verdict, self.awaiting.pop(session, []) if session else []

    def vm_answered(self, exchange: VmExchange, status: int | None, gone: bool, now: float) -> bool:
        """Record the VM's answer; True when the reference evicts the route for it: only a
        browser_gone that allows a fallback does. Any other browser_gone keeps the route."""
        exchange.status, exchange.gone, exchange.answered_at = status, gone, now
        if exchange.allows_fallback:
            self.checked["missing_fallback"] += 1
            exchange.missing = True
            self.awaiting.setdefault(exchange.key[0], []).append(exchange)
            return True
        if gone and exchange.key[0]:
            self.gone_kept.add(exchange.key[0])
        return False

    def missing_fallback(self, exchange: VmExchange) -> bool:
        """Settle an exchange whose window ended: True when it broke `missing_fallback`."""
        if not exchange.missing:
            return False
        self.settle(exchange)
        self.broken["missing_fallback"].append(exchange.flow_id)
        return True

    def cp_request(
        self, flow_id: str, session: str | None, by_id: bool, cached: bool, has_jwt: bool,
        method: str, tail: str | None, query: str, now: float,
    ) -> tuple[str, Verdict]:  # fmt: skip
        """Judge a request the client sent to the CP; returns its decision and verdict.
        `tail` is None when the request is no browser subresource request."""
        verdict = Verdict()
        self.check(verdict, "jwt_on_cp", has_jwt, flow_id)
        served = None
        if session is not None and tail is not None:
            served = self.exchanges.get((session, method, paths.normalize_tail(tail), without_jwt(query)))
        if served is None or served.fallback_done or not self.recent(served, now) or self.moved_on(served):
            allowlisted = tail is not None and paths.is_allowlisted(tail, self.subresources)
            self.check(verdict, "not_routed", by_id and cached and allowlisted, flow_id)
            return Decision.CLIENT_CP, verdict
        verdict.exchange = served
        self.settle(served)
        stale_jwt = served.status in (401, 403)  # the SDKs' own rule: re-issue once on a stale jwt
        self.check(verdict, "unexpected_fallback", not served.allows_fallback and not stale_jwt, flow_id)
        # A second re-issue while the first is in flight; after a failed one, a retry is fine.
        self.check(verdict, "repeated_fallback", bool(served.unanswered), flow_id)
        if stale_jwt:
            self.note(verdict, "auth_fallback")
        served.fallbacks.append(flow_id)
        served.unanswered.add(flow_id)
        return Decision.CLIENT_FALLBACK, verdict

    def moved_on(self, exchange: VmExchange) -> bool:
        """Whether the session's route was evicted after the exchange for another reason (a
        delete, a release, another request's browser_gone): the client then follows the CP's
        word, and a CP request is no re-issue of that exchange."""
        when, cause = self.last_eviction.get(exchange.key[0], (None, None))
        if when is None or exchange.answered_at is None or when < exchange.answered_at:
            return False
        return cause != exchange.flow_id and cause not in exchange.fallbacks

    def fallback_answered(self, exchange: VmExchange, flow_id: str, cp_status: int | None) -> None:
        """A re-issue answered below 500 ends the fallback: an identical CP request after it is
        the caller's next call. One that failed (5xx, none) leaves room for a retry."""
        exchange.unanswered.discard(flow_id)
        if cp_status is not None and cp_status < 500:
            exchange.fallback_done = True

    # -- bookkeeping ---------------------------------------------------------

    def settle(self, exchange: VmExchange) -> None:
        """The exchange no longer waits for a fallback."""
        if exchange.missing:
            exchange.missing = False
            waiting = self.awaiting.get(exchange.key[0], [])
            if exchange in waiting:
                waiting.remove(exchange)
            if not waiting:
                self.awaiting.pop(exchange.key[0], None)

    def recent(self, exchange: VmExchange, now: float) -> bool:
        return exchange.answered_at is not None and now - exchange.answered_at <= self.window

    def forget_old(self, now: float) -> None:
        """Drop answered exchanges older than the window (oldest first), keeping memory flat."""
        while self.exchanges:
            oldest = next(iter(self.exchanges.values()))
            if oldest.missing or now - (oldest.answered_at or oldest.sent_at) <= self.window:
                return
            self.exchanges.popitem(last=False)

    def check(self, verdict: Verdict, rule: str, broken: bool, flow_id: str) -> None:
        self.checked[rule] += 1
        if broken:
            verdict.violations.append(rule)
            self.broken[rule].append(flow_id)

    def note(self, verdict: Verdict, note: str) -> None:
        verdict.notes.append(note)
        self.notes[note] += 1

    def table(self) -> dict[str, object]:
        """Each rule with how many exchanges it checked and the flows that broke it."""
        return {
            "rules": {r: {"checked": self.checked[r], "broken": list(self.broken[r])} for r in RULES},
            "notes": {n: self.notes[n] for n in NOTES},
        }
