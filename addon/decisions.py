"""The decision vocabulary: every decision a record can carry, and the groups the parts and
the report sort them by. Defined once here; pure, no mitmproxy import."""

from __future__ import annotations

from enum import StrEnum


class Decision(StrEnum):
    """A record's `decision`. A str, so records stay JSON-able and compare with plain strings."""

    ROUTED = "routed"
    PASSTHROUGH = "passthrough"
    FALLBACK = "fallback"
    NO_FALLBACK = "no_fallback"
    REISSUE = "reissue"
    CLIENT_ROUTED = "client_routed"
    CLIENT_CP = "client_cp"
    CLIENT_FALLBACK = "client_fallback"
    ROUTE_CACHED = "route_cached"
    ROUTE_EVICTED = "route_evicted"
    ROUTE_REFUSED = "route_refused"

    # Formatted as the str it is: Enum's own __format__ runs Python code on every comment line.
    __format__ = str.__format__  # type: ignore[assignment]  # the same signature, typed apart


ROUTE_MODE = frozenset(
    {Decision.ROUTED, Decision.PASSTHROUGH, Decision.FALLBACK, Decision.NO_FALLBACK, Decision.REISSUE}
)
AUDIT = frozenset({Decision.CLIENT_ROUTED, Decision.CLIENT_CP, Decision.CLIENT_FALLBACK})
CACHE = (Decision.ROUTE_CACHED, Decision.ROUTE_EVICTED, Decision.ROUTE_REFUSED)
ORDER: tuple[str, ...] = tuple(Decision)  # how the report lists them
# Which side a flow's request went to in the end.
VM_SIDE = frozenset({Decision.ROUTED, Decision.NO_FALLBACK, Decision.FALLBACK, Decision.CLIENT_ROUTED})
CP_SIDE = frozenset({Decision.PASSTHROUGH, Decision.REISSUE, Decision.CLIENT_CP, Decision.CLIENT_FALLBACK})
# The requests that went to the CP as the client sent them: the router learns from their answers.
CP_AS_SENT = frozenset({Decision.PASSTHROUGH, Decision.CLIENT_CP, Decision.CLIENT_FALLBACK})
# The flows whose answers come through the fallback: sent to the VM by the addon, or its CP re-issue.
FALLBACK_JUDGES = frozenset({Decision.ROUTED, Decision.REISSUE})
# Fault-injection kinds (a record's `injected`) whose request still went to its server, late or
# to have its answer cut: the proxy did not answer in its place, so they count as sent.
INJECTED_BUT_SENT = frozenset({"delay", "cut"})
