"""Fault injection: the proxy answers a VM request itself, so that any VM behaviour can be
produced on demand. `rules` parses and matches the rules (pure); `responder` is the part that
owns the option and answers the flows."""

from .responder import FaultInjection

__all__ = ["FaultInjection"]
