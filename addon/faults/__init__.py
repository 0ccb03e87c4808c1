"""Fault injection: the proxy answers, holds or cuts a VM request (or a CP one) itself, so that
any VM behaviour can be produced on demand. `steps` and `rules` parse and match the rules (pure);
`responder` is the part that owns the options and carries the steps out; `holding` holds
requests and cuts answers."""

from .responder import CUT_ERROR, FaultInjection

__all__ = ["CUT_ERROR", "FaultInjection"]
