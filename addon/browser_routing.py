"""mitmproxy entry point: `mitmdump -s addon/browser_routing.py`.

Kept thin: mitmproxy runs this file before registering it as a module, so the
classes live in the `addon` package, found from this file's own location.
"""

import sys
from pathlib import Path

_root = str(Path(__file__).resolve().parent.parent)
if _root not in sys.path:
    sys.path.insert(0, _root)

from addon.recorder import DecisionRecorder  # noqa: E402
from addon.reissue import ControlPlaneFallback  # noqa: E402
from addon.router import BrowserRouting  # noqa: E402

recorder = DecisionRecorder()
router = BrowserRouting(recorder)

addons = [router, ControlPlaneFallback(router, recorder), recorder]
