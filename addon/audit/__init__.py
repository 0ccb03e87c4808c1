"""Audit mode: a client that routes by itself is watched and judged by the reference's rules.
`rules` holds the judgement (pure); `watcher` is the part that feeds it the client's flows."""

from .watcher import RoutingAudit

__all__ = ["RoutingAudit"]
