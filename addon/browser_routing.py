"""mitmproxy entry point: `mitmdump -s addon/browser_routing.py`.

Kept thin: mitmproxy runs this file before registering it as a module, so the
classes live in the `addon` package, found from this file's own location.
"""

import sys
from pathlib import Path

_root = str(Path(__file__).resolve().parent.parent)
if _root not in sys.path:
    sys.path.insert(0, _root)

from addon.commands import RouteCommands  # noqa: E402
from addon.persistence import RoutesFile  # noqa: E402
from addon.recorder import DecisionRecorder  # noqa: E402
from addon.reissue import ControlPlaneFallback  # noqa: E402
from addon.router import BrowserRouting  # noqa: E402

recorder = DecisionRecorder()
router = BrowserRouting(recorder)

# Order matters: the router decides before the fallback acts, the routes file loads
# after the router knows which VM hosts are allowed, and the recorder logs last.
addons = [
    router,
    RoutesFile(router),
    ControlPlaneFallback(router, recorder),
    RouteCommands(router, recorder),
    recorder,
]
