"""A mitmproxy script whose hooks do nothing: what mitmproxy charges any addon.

The bench (`scripts/bench`) runs it beside plain mitmdump and the routing addon, as the reference
for the addon's throughput (`mitmdump -s scripts/empty_hooks.py`).
"""

from __future__ import annotations

from typing import Any


class EmptyHooks:
    def requestheaders(self, flow: Any) -> None:
        pass

    def responseheaders(self, flow: Any) -> None:
        pass

    def response(self, flow: Any) -> None:
        pass


addons = [EmptyHooks()]
